"""``python -m pytest_dataplane.providers.lab.kube.agent``: the node agent's command line."""

import sys

from .node import main

sys.exit(main())
