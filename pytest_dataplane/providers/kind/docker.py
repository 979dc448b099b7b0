"""kind nodes are containers: the Kubernetes layer's node access through ``docker exec``."""

from __future__ import annotations

import subprocess

from ...errors import DataplaneError

__all__ = ["DockerNodes"]


class DockerNodes:
    """kind nodes: containers named as their Kubernetes nodes, reached with ``docker exec``
    (a :class:`~pytest_dataplane.providers.k8s.nodes.NodeAccess`)."""

    def __init__(self, docker: str, names: list[str]) -> None:
        self.docker = docker
        self._names = list(names)

    def nodes(self) -> list[str]:
        return list(self._names)

    def run(self, node: str, script: str, *, timeout: float = 60.0) -> str:
        argv = [self.docker, "exec", node, "sh", "-c", script]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise DataplaneError(f"docker exec {node} did not finish in {timeout:g} s") from None
        if done.returncode != 0:
            raise DataplaneError(
                f"docker exec {node} failed with exit status {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[:2000]}"
            )
        return done.stdout
