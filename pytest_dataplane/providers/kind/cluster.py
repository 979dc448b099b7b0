"""Creating, reusing and deleting one kind cluster, through pytest-kind's ``KindCluster``.

The tools are the ones found on PATH (``kind_path``/``kubectl_path`` are always given, so
pytest-kind never downloads a binary). pytest-kind keeps its per-cluster directory under
``.pytest-kind/`` in the working directory; we build it with the state directory as working
directory instead, so nothing lands in the project being tested.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from ...errors import DataplaneError, PytestDataplaneWarning
from ..k8s.api import KubeApi, NotFound
from ..k8s.versions import Version
from .config import KindSettings, cluster_name, helm_install_argv, kind_config, preload_images
from .tools import Tools

__all__ = ["KindClusterSetup", "state_root"]

log = logging.getLogger(__name__)

MARKER: Final = "pytest-dataplane"  # ConfigMap in kube-system written when setup completed
_CWD_LOCK = threading.Lock()


def state_root() -> Path:
    """Where kind clusters' kubeconfigs and configs live: ``$PYTEST_DATAPLANE_STATE`` or
    ``$XDG_CACHE_HOME/pytest-dataplane`` (``~/.cache/pytest-dataplane``), then ``kind/``."""
    explicit = os.environ.get("PYTEST_DATAPLANE_STATE")
    if explicit:
        return Path(explicit) / "kind"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "pytest-dataplane" / "kind"


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 1200.0) -> str:
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired:
        raise DataplaneError(f"{' '.join(argv[:4])} did not finish in {timeout:g} s") from None
    if done.returncode != 0:
        raise DataplaneError(
            f"{' '.join(argv[:6])} failed with exit status {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    return done.stdout


class KindClusterSetup:
    """One kind cluster for one dataplane: create or reuse it, load images, install Cilium."""

    def __init__(
        self,
        *,
        dataplane: str,
        settings: KindSettings,
        tools: Tools,
        kind_version: Version | None,
        root: Path | None = None,
        api_factory: Callable[[Path], KubeApi] | None = None,
        timeout: float = 600.0,
    ) -> None:
        if tools.kind is None or tools.docker is None or tools.kubectl is None:
            raise DataplaneError("kind, docker and kubectl are needed to create a kind cluster")
        self.dataplane = dataplane
        self.settings = settings
        self.tools = tools
        self.kind_version = kind_version
        self.name = cluster_name(dataplane, settings, kind_version)
        self.dir = (root or state_root()) / self.name
        self.kubeconfig = self.dir / "kubeconfig"
        self.config_path = self.dir / "kind-config.yaml"
        self.timeout = timeout
        self.reused = False
        self._api_factory = api_factory or _real_api
        self._kind_cluster: Any = None
        self.log: list[str] = []

    # -- steps -----------------------------------------------------------------------------

    def _step(self, text: str) -> None:
        self.log.append(text)
        log.info("kind %s: %s", self.name, text)

    def existing_clusters(self) -> list[str]:
        """Names ``kind get clusters`` lists."""
        if self.tools.kind is None:
            raise self.tools.missing("kind")
        out = _run([self.tools.kind, "get", "clusters"], timeout=60.0)
        return [line.strip() for line in out.splitlines() if line.strip()]

    def _make_kind_cluster(self) -> Any:
        from pytest_kind.cluster import KindCluster

        if self.tools.kind is None:
            raise self.tools.missing("kind")
        if self.tools.kubectl is None:
            raise self.tools.missing("kubectl")
        self.dir.mkdir(parents=True, exist_ok=True)
        # KindCluster.__init__ creates .pytest-kind/<name> under the working directory.
        with _CWD_LOCK:
            previous = os.getcwd()
            os.chdir(self.dir.parent)
            try:
                cluster = KindCluster(
                    self.name,
                    self.kubeconfig,
                    image=self.settings.node_image,
                    kind_path=Path(self.tools.kind),
                    kubectl_path=Path(self.tools.kubectl),
                )
            finally:
                os.chdir(previous)
        cluster.path = self.dir.parent / ".pytest-kind" / self.name
        return cluster

    def _setup_complete(self, api: KubeApi) -> bool:
        try:
            marker = api.get("v1", "ConfigMap", MARKER, "kube-system")
        except NotFound:
            return False
        return (marker.get("data") or {}).get("cluster") == self.name

    def ensure(self) -> KubeApi:
        """Make the cluster exist and be ready; returns an API client for it."""
        import yaml

        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            yaml.safe_dump(kind_config(self.dataplane, self.settings), sort_keys=False)
        )
        exists = self.name in self.existing_clusters()
        if exists:
            self._step("reuse: cluster exists")
            if self.tools.kind is None:
                raise self.tools.missing("kind")
            _run(
                [
                    self.tools.kind,
                    "export",
                    "kubeconfig",
                    "--name",
                    self.name,
                    "--kubeconfig",
                    str(self.kubeconfig),
                ],
                timeout=120.0,
            )
            existing = self._api_factory(self.kubeconfig)
            if self._setup_complete(existing):
                self.reused = True
                self._kind_cluster = self._make_kind_cluster()
                return existing
            existing.close()
            self._step("reuse refused: setup never completed; deleting it")
            self.delete()
        self._step("create cluster")
        self._kind_cluster = self._make_kind_cluster()
        api: KubeApi | None = None
        try:
            self._kind_cluster.create(config_file=self.config_path)
            api = self._api_factory(self.kubeconfig)
            for image in preload_images(self.dataplane, self.settings):
                self._preload(image)
            if self.dataplane == "ebpf":
                self._install_cilium()
            self._wait_ready(api)
            api.create(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": MARKER, "namespace": "kube-system"},
                    "data": {
                        "cluster": self.name,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    },
                }
            )
        except BaseException as exc:
            if api is not None:
                api.close()
            # A half-built cluster is of no use to anyone (its setup marker was never written,
            # so no later run would reuse it): delete it now, Ctrl-C included.
            self._delete_after_failure(exc)
            raise
        self._step("ready")
        return api

    def _delete_after_failure(self, exc: BaseException) -> None:
        try:
            self.delete()
        except Exception as problem:
            self._step(f"delete after the failure failed too: {problem}")
            log.warning("kind %s: could not delete the half-built cluster: %s", self.name, problem)
            note = getattr(exc, "add_note", None)
            if note is not None:
                note(
                    f"the half-built kind cluster {self.name} could not be deleted ({problem}); "
                    f"remove it with `kind delete cluster --name {self.name}`"
                )

    def _preload(self, image: str) -> None:
        """Put ``image`` on every node, as ``kind load docker-image`` does, or warn.

        ``kind load docker-image`` runs ``docker save`` without a platform; under Docker's
        containerd image store (Docker Desktop's default, and Docker 29's for new installs)
        that exports the whole multi-arch index of an image whose other platforms were never
        pulled, and the nodes' import fails with "content digest ... not found". The fallback
        saves only the engine's own platform (``docker save --platform``, Docker 28 and
        newer) and loads that archive. If both fail the image is left for the nodes to pull
        (every pod we create uses ``imagePullPolicy: IfNotPresent``), with a warning.
        """
        if self.tools.docker is None:
            raise self.tools.missing("docker")
        if self.tools.kind is None:
            raise self.tools.missing("kind")
        inspect = subprocess.run(
            [self.tools.docker, "image", "inspect", image],
            capture_output=True,
            text=True,
            check=False,
        )
        if inspect.returncode != 0:
            # The node would pull it anyway; pulling once on the host lets every node share it.
            self._step(f"docker pull {image}")
            _run([self.tools.docker, "pull", image])
        # Run by us rather than through pytest-kind's load_docker_image, which lets the error
        # go to the terminal: the fallback below needs to know that (and why) it failed.
        self._step(f"kind load docker-image {image}")
        try:
            _run([self.tools.kind, "load", "docker-image", "--name", self.name, image])
            return
        except DataplaneError as exc:
            first = str(exc)
        platform = "linux/<unknown>"
        try:
            platform = _run(
                [self.tools.docker, "version", "--format", "{{.Server.Os}}/{{.Server.Arch}}"],
                timeout=60.0,
            ).strip()
            self._step(
                f"kind load docker-image failed; fallback: docker save --platform {platform} "
                f"{image} | kind load image-archive"
            )
            self.dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.dir, prefix="image-") as scratch:
                archive = str(Path(scratch) / "image.tar")
                _run([self.tools.docker, "save", "--platform", platform, "-o", archive, image])
                _run([self.tools.kind, "load", "image-archive", "--name", self.name, archive])
            return
        except DataplaneError as exc:
            second = str(exc)
        message = (
            f"kind cluster {self.name}: could not preload {image}: `kind load docker-image` "
            f"failed ({first[-500:]}), and so did `docker save --platform {platform}` with "
            f"`kind load image-archive` ({second[-500:]}); the nodes will pull the image "
            "themselves (imagePullPolicy IfNotPresent), which needs registry access from the nodes"
        )
        self._step(f"preload skipped: {image}")
        log.warning("%s", message)
        warnings.warn(PytestDataplaneWarning(message), stacklevel=2)

    def _install_cilium(self) -> None:
        if self.tools.helm is None:
            raise DataplaneError("helm is needed to install Cilium")
        argv = helm_install_argv(
            self.settings, self.name, kubeconfig=str(self.kubeconfig), helm=self.tools.helm
        )
        self._step(" ".join(argv))
        _run(argv, env={**os.environ, "KUBECONFIG": str(self.kubeconfig)})

    def _wait_ready(self, api: KubeApi) -> None:
        deadline = time.monotonic() + self.timeout
        waiting = "nodes"
        while time.monotonic() < deadline:
            nodes, _ = api.list_items("v1", "Node")
            ready = [n for n in nodes if _node_ready(n)]
            if nodes and len(ready) == len(nodes):
                waiting = "dataplane DaemonSet"
                selector = "k8s-app=cilium" if self.dataplane == "ebpf" else "k8s-app=kube-proxy"
                sets, _ = api.list_items(
                    "apps/v1", "DaemonSet", "kube-system", label_selector=selector
                )
                if sets and all(_daemonset_ready(ds) for ds in sets):
                    return
            time.sleep(2.0)
        raise DataplaneError(f"kind cluster {self.name}: {waiting} not ready in {self.timeout:g} s")

    def node_names(self, api: KubeApi) -> list[str]:
        """Kubernetes node names (kind names the node containers the same)."""
        nodes, _ = api.list_items("v1", "Node")
        return sorted(n["metadata"]["name"] for n in nodes)

    def delete(self) -> None:
        """``kind delete cluster`` (what pytest-kind's ``delete`` runs)."""
        if self.tools.kind is None:
            raise self.tools.missing("kind")
        self._step("delete cluster")
        _run(
            [
                self.tools.kind,
                "delete",
                "cluster",
                f"--name={self.name}",
                f"--kubeconfig={self.kubeconfig}",
            ],
            timeout=300.0,
        )

    def kubectl(self, *args: str) -> str:
        """Run kubectl against the cluster (used for human-readable diagnostics)."""
        if self.tools.kubectl is None:
            raise self.tools.missing("kubectl")
        return _run([self.tools.kubectl, "--kubeconfig", str(self.kubeconfig), *args], timeout=60.0)


def _node_ready(node: dict[str, Any]) -> bool:
    for condition in node.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def _daemonset_ready(ds: dict[str, Any]) -> bool:
    status = ds.get("status") or {}
    wanted = status.get("desiredNumberScheduled", 0)
    return bool(
        wanted
        and status.get("numberReady", 0) == wanted
        and status.get("updatedNumberScheduled", wanted) == wanted
    )


def _real_api(kubeconfig: Path) -> KubeApi:
    from ..k8s.api import KubernetesApi

    return KubernetesApi(kubeconfig=str(kubeconfig))
