"""The kubeconfig provider: run the same tests against an existing cluster (staging).

The dataplane is detected (:mod:`.detect`); everything the tests create lives in one
labelled session namespace (:mod:`.session`), removed at the end of the session and by
``python -m pytest_dataplane cleanup --kubeconfig PATH``; node-level numbers come from a
privileged agent DaemonSet only when ``--dataplane-node-access`` is given (:mod:`.agent`).
The Kubernetes side is the shared layer :mod:`pytest_dataplane.providers.k8s`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .provider import KubeconfigProvider

__all__ = ["KubeconfigProvider"]


def __getattr__(name: str) -> Any:
    # The plugin's option table reads this package's defaults at start-up (pytest --help
    # included): importing a module of it must not import the provider and its clients.
    if name == "KubeconfigProvider":
        from .provider import KubeconfigProvider

        return KubeconfigProvider
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
