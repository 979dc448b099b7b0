"""The kubeconfig provider: run the same tests against an existing cluster (staging).

The dataplane is detected (:mod:`.detect`); everything the tests create lives in one
labelled session namespace (:mod:`.session`), removed at the end of the session and by
``python -m pytest_dataplane cleanup --kubeconfig PATH``; node-level numbers come from a
privileged agent DaemonSet only when ``--dataplane-node-access`` is given (:mod:`.agent`).
The Kubernetes side is the shared layer :mod:`pytest_dataplane.providers.k8s`.
"""

from __future__ import annotations

from .provider import KubeconfigProvider

__all__ = ["KubeconfigProvider"]
