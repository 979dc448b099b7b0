"""``python -m pytest_dataplane cleanup --kubeconfig PATH``: delete the namespaces killed runs
left on an existing cluster (those labelled ``app.kubernetes.io/managed-by=pytest-dataplane``)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from ..k8s.api import KubeApi
from .session import cleanup

__all__ = ["main"]


def main(
    *,
    kubeconfig: str,
    context: str | None = None,
    dry_run: bool = False,
    api_factory: Callable[[], KubeApi] | None = None,
) -> int:
    """Run the cleanup; 0 when done, 2 when the cluster cannot be reached."""
    try:
        if api_factory is not None:
            api = api_factory()
        else:
            from ..k8s.api import KubernetesApi

            api = KubernetesApi(kubeconfig=kubeconfig, context=context)
        api.server_version()
    except Exception as exc:
        print(
            f"cleanup: cannot reach a cluster through {kubeconfig} (context "
            f"{context or 'current'}): {type(exc).__name__}: {str(exc).strip()[:300]}",
            file=sys.stderr,
        )
        return 2
    try:
        cleanup(api, dry_run=dry_run)
    finally:
        api.close()
    return 0
