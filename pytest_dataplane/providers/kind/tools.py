"""Finding the command-line tools the kind provider drives; nothing is ever downloaded.

A missing tool makes every test that needs a kind cluster skip with a reason that names the
tool and how to install it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Final

from ...errors import DataplaneUnavailable
from ..k8s.versions import Version

__all__ = [
    "INSTALL_HINTS",
    "Tools",
    "docker_engine_problem",
    "find_tools",
    "kind_version",
    "missing_tools_reason",
    "parse_kind_version",
]

INSTALL_HINTS: Final = {
    "docker": "install Docker Engine (docs.docker.com/engine/install) and start dockerd",
    "kind": "install kind (kind.sigs.k8s.io/docs/user/quick-start: a release binary, or "
    "`go install sigs.k8s.io/kind@latest`)",
    "kubectl": "install kubectl (kubernetes.io/docs/tasks/tools)",
    "helm": "install Helm 3 (helm.sh/docs/intro/install; needed to install Cilium for ebpf)",
}


@dataclass(frozen=True)
class Tools:
    """Absolute paths of the tools found (None: not found)."""

    docker: str | None
    kind: str | None
    kubectl: str | None
    helm: str | None

    def needed(self, dataplane: str) -> dict[str, str | None]:
        """Tools ``dataplane`` needs, name -> path."""
        needed = {"docker": self.docker, "kind": self.kind, "kubectl": self.kubectl}
        if dataplane == "ebpf":
            needed["helm"] = self.helm
        return needed

    def missing(self, name: str) -> DataplaneUnavailable:
        """DataplaneUnavailable naming tool ``name`` and how to install it, for a step that
        needs a tool the availability check should already have reported missing."""
        return DataplaneUnavailable(
            f"{name} not found on PATH (nothing is downloaded at test time): {INSTALL_HINTS[name]}"
        )


def _which(name: str, override: str | None) -> str | None:
    if override:
        return shutil.which(override)
    return shutil.which(name)


def find_tools(*, kind_bin: str | None = None, kubectl_bin: str | None = None) -> Tools:
    """Look the tools up on PATH (``kind_bin``/``kubectl_bin`` override the names, as
    pytest-kind's ``--kind-bin``/``--kind-kubectl-bin`` do)."""
    return Tools(
        docker=_which("docker", None),
        kind=_which("kind", kind_bin),
        kubectl=_which("kubectl", kubectl_bin),
        helm=_which("helm", None),
    )


def missing_tools_reason(tools: Tools, dataplane: str) -> str | None:
    """Reason naming every missing tool ``dataplane`` needs and how to install it, or None."""
    missing = [name for name, path in tools.needed(dataplane).items() if path is None]
    if not missing:
        return None
    hints = "; ".join(f"{name}: {INSTALL_HINTS[name]}" for name in missing)
    return f"{', '.join(missing)} not found on PATH (nothing is downloaded at test time): {hints}"


def docker_engine_problem(docker: str, *, timeout: float = 20.0) -> str | None:
    """Why the docker client cannot use an engine here (e.g. no dockerd running), or None."""
    try:
        done = subprocess.run(
            [docker, "info", "--format", "{{.ServerVersion}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer in {timeout:g} s; is the Docker engine healthy?"
    except OSError as exc:
        return f"cannot run {docker}: {exc.strerror}"
    if done.returncode != 0 or not done.stdout.strip():
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        first = detail[0] if detail else f"exit status {done.returncode}"
        return (
            f"the docker client found no Docker engine ({first}); start dockerd or point "
            "DOCKER_HOST at one"
        )
    return None


_KIND_VERSION_RE: Final = re.compile(r"\bv?(\d+\.\d+\.\d+(?:-[0-9A-Za-z.]+)?)")


def parse_kind_version(text: str) -> Version | None:
    """The version in ``kind version`` output (``kind v0.24.0 go1.22.6 linux/amd64``)."""
    for token in text.split():
        if token.startswith(("v", "0", "1")) and not token.startswith("go"):
            match = _KIND_VERSION_RE.fullmatch(token)
            if match:
                return Version.parse(match.group(1))
    return None


def kind_version(kind: str, *, timeout: float = 20.0) -> Version | None:
    """Ask the kind binary its version (needs no Docker); None if it does not say."""
    try:
        done = subprocess.run(
            [kind, "version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_kind_version(done.stdout) if done.returncode == 0 else None
