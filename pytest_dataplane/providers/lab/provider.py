"""LabProvider: creates lab clusters, one session (prefix, state, cgroup) per provider.

Each dataplane gets one real Kubernetes cluster in network namespaces (:class:`~.kube.lab.KubeLab`,
tagged by dataplane inside the session), booted when a test first asks for it, and seen
through the same :class:`~pytest_dataplane.providers.k8s.cluster.KubeCluster` as kind and an
existing cluster; what differs in the lab (its nodes are namespaces, its client a namespace
and a cgroup, its CPU and eBPF records read directly) comes from :mod:`.kube.access`.
"""

from __future__ import annotations

import atexit
import platform
import signal
import threading
from collections.abc import Callable
from typing import Any

from ...errors import DataplaneError, DataplaneUnavailable
from . import doctor
from ._session import Session
from .kube import plan

__all__ = ["LabProvider"]

_TAGS = {"iptables": "ipt", "nftables": "nft", "ebpf": "bpf", "ipvs": "ipvs"}
DEFAULT_MIN_SYNC_PERIOD = 1.0  # kube-proxy's --min-sync-period default
# The image the lab's node agent runs as its backend (version v1), which honours SERVICE_TIME.
BACKEND_IMAGE = "backend:v1"
IPVS_REFUSAL = "the lab runs no ipvs kube-proxy; use --dataplane-provider=kind"


def _tool_version(argv: list[str]) -> str:
    from . import _proc

    if _proc.which(argv[0]) is None:
        return "absent"
    done = _proc.run(argv, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


class LabProvider:
    """Creates lab clusters; one session (prefix, state directory, cgroup) per provider.

    Each dataplane runs on real Kubernetes (:class:`~.kube.lab.KubeLab`: etcd, kube-apiserver,
    kube-controller-manager, kube-scheduler and kube-proxy from the build of ``kube/``, or the
    lab's eBPF controller for ``ebpf``) behind a
    :class:`~pytest_dataplane.providers.k8s.cluster.KubeCluster`. ``iptables_backend`` (auto,
    legacy, nft) chooses the iptables binaries kube-proxy finds on its PATH;
    ``min_sync_period`` (seconds) is kube-proxy's own flag; ``kube_bin`` a directory of official
    binaries to run instead of the build.
    """

    name = "lab"

    def __init__(
        self,
        *,
        iptables_backend: str = "auto",
        min_sync_period: float = DEFAULT_MIN_SYNC_PERIOD,
        kube_bin: str | None = None,
    ) -> None:
        # The same checks (and messages) as KubeLab's, but before any cluster boots.
        self.iptables_backend = plan.check_iptables_backend(iptables_backend)
        checked = plan.check_min_sync_period(min_sync_period)
        self.min_sync_period = DEFAULT_MIN_SYNC_PERIOD if checked is None else checked
        self.kube_bin = kube_bin
        self._session: Session | None = None
        self._clusters: list[Any] = []
        self._kube_reason: tuple[str, ...] | None = None  # () once the binaries are found
        self._lock = threading.Lock()

    @classmethod
    def from_options(cls, option: Callable[[str], Any]) -> LabProvider:
        """Build from the plugin's resolved options."""
        return cls(
            iptables_backend=option("dataplane_iptables_backend"),
            min_sync_period=option("dataplane_min_sync_period"),
            kube_bin=option("dataplane_kube_bin"),
        )

    def availability(self, dataplane: str) -> str | None:
        reason = doctor.unavailable_reason(dataplane, self.iptables_backend)
        if reason is not None:
            return reason
        if dataplane == "ipvs":
            return IPVS_REFUSAL
        with self._lock:
            if self._kube_reason is None:
                # Once per provider: each check runs every component with --version. kubectl
                # is optional (the lab's clusters run without it).
                found = doctor.kube_checks(self.kube_bin)
                missing = [c for c in found if not c.ok and c.what != "kubectl"]
                fix = f" (fix: {missing[0].fix})" if missing and missing[0].fix else ""
                self._kube_reason = (
                    (f"{missing[0].what}: {missing[0].detail}{fix}",) if missing else ()
                )
            return self._kube_reason[0] if self._kube_reason else None

    def _ensure_session(self) -> Session:
        with self._lock:
            if self._session is None:
                self._session = Session.new()
                atexit.register(self.close)
                _interrupt_on_sigterm()
            return self._session

    def create(self, dataplane: str) -> Any:
        reason = self.availability(dataplane)
        if reason is not None:
            raise DataplaneUnavailable(f"{dataplane} cannot run in the lab here: {reason}")
        from ..k8s import resources
        from ..k8s.api import KubernetesApi
        from ..k8s.cluster import KubeCluster
        from ..k8s.dataplane import DataplanePods
        from ..k8s.hooks import ClusterHooks
        from .kube import access
        from .kube.lab import KubeLab
        from .kube.nftmon import NftProgramming

        if plan.check_dataplane(dataplane) == "ipvs":
            raise DataplaneUnavailable(IPVS_REFUSAL)
        session = self._ensure_session()
        tag = _TAGS[dataplane]
        lab = KubeLab(
            dataplane=dataplane,
            session=session,
            tag=tag,
            # Pod namespaces are named after their node within the session: one set of node
            # names per cluster.
            node_prefix=f"{tag}-node",
            kube_bin_dir=self.kube_bin,
            min_sync_period=None if dataplane == "ebpf" else self.min_sync_period,
            iptables_backend=self.iptables_backend,
        )
        with self._lock:
            self._clusters.append(lab)  # stopped by close() whatever happens next
        lab.start()
        api = KubernetesApi(kubeconfig=str(lab.kubeconfig))
        traffic: access.LabTrafficPath | None = None
        programming: Any = None
        try:
            namespace = f"dpt-{session.prefix}"
            api.create(resources.namespace(namespace, session.prefix))
            traffic = access.LabTrafficPath(
                lab, prober_cgroup=None if lab.cgroup is None else lab.cgroup / "client-prober"
            )
            if dataplane == "ebpf":
                programming = access.EbpfProgramming(lab, namespace)
            elif dataplane == "nftables":
                programming = NftProgramming(
                    {name: lab.node_netns(i) for i, name in enumerate(lab.node_names)},
                    namespace,
                    None if lab.cgroup is None else lab.cgroup / "nft-monitor",
                )
            cluster = KubeCluster(
                api=api,
                provider="lab",
                dataplane=dataplane,
                namespace=namespace,
                session=session.prefix,
                backend_image=BACKEND_IMAGE,
                traffic=traffic,
                dataplane_pods=DataplanePods.for_dataplane(dataplane),
                node_access=access.LabNodes(lab),
                facts=self._kube_facts(dataplane, lab),
                on_close=_closer(lab, api, traffic, programming),
                hooks=ClusterHooks(
                    backend="lab",
                    cpu_source=access.LabCpuSource(lab),
                    programming=programming,
                    proxy_histogram=dataplane != "ebpf",
                    service_map=(lambda: access.ebpf_service_entries(lab))
                    if dataplane == "ebpf"
                    else None,
                    nodes_run_kubelet=False,  # the node agent writes no rules
                    diagnostics=lambda since: access.dataplane_logs(lab),
                    settle=lambda timeout: access.wait_settled(
                        lab, timeout=timeout, cluster_ips=lambda: access.service_ips(api)
                    ),
                    # The lab is discarded at close: background services stay between tests.
                    disposable=True,
                    handle=lab,
                ),
            )
        except BaseException:
            if programming is not None and hasattr(programming, "close"):
                programming.close()
            if traffic is not None:
                traffic.close()
            api.close()
            raise
        with self._lock:
            self._clusters.remove(lab)
            self._clusters.append(cluster)
        return cluster

    def _kube_facts(self, dataplane: str, lab: Any) -> dict[str, Any]:
        binaries = lab.binaries
        facts: dict[str, Any] = {
            "kernel": platform.release(),
            "lab": "kube",
            "kubernetes": binaries.version("kube-apiserver") or "unknown",
            "kube_binaries": binaries.source,
            "nodes": len(lab.node_names),
        }
        if dataplane == "ebpf":
            facts["ebpf_controller"] = "lab cgroup/connect4 (watches Services, EndpointSlices)"
            facts["bpftool"] = _tool_version(["bpftool", "version"])
            facts["clang"] = _tool_version(["clang", "--version"])
        else:
            facts["kube_proxy_mode"] = dataplane
            facts["min_sync_period"] = self.min_sync_period
            facts["nft"] = _tool_version(["nft", "--version"])
            if dataplane == "iptables":
                facts["iptables_backend"] = lab.iptables_backend
                facts["iptables"] = _tool_version(["iptables", "--version"])
        return facts

    def close(self) -> None:
        """Close every cluster and remove the session's remains."""
        with self._lock:
            clusters, self._clusters = self._clusters, []
            session, self._session = self._session, None
        errors = []
        for cluster in clusters:
            try:
                # A KubeCluster closes its lab; a lab whose cluster was never made stops.
                stop = cluster.close if hasattr(cluster, "close") else cluster.stop
                stop()
            except Exception as exc:  # keep closing the others
                errors.append(str(exc))
        if session is not None:
            from .cleanup import remove_session

            remove_session(session.prefix)
            atexit.unregister(self.close)
        if errors:
            raise DataplaneError("; ".join(errors))


def _closer(lab: Any, api: Any, traffic: Any, programming: Any = None) -> Callable[[], None]:
    def close() -> None:
        # Every step runs whatever the one before did; the lab's stop() removes it all.
        problems: list[str] = []
        for what, step in (
            ("nft monitor", getattr(programming, "close", None) or (lambda: None)),
            ("client prober", traffic.close),
            ("API client", api.close),
            ("lab cluster", lab.stop),
        ):
            try:
                step()
            except Exception as exc:
                problems.append(f"{what}: {exc}")
        if problems:
            raise DataplaneError("; ".join(problems))

    return close


def _interrupt_on_sigterm() -> None:
    # pytest tears fixtures down on KeyboardInterrupt but dies silently on SIGTERM; turning
    # SIGTERM into an interrupt lets `kill <pytest>` clean the lab up too.
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

        def interrupt(signum: int, frame: object) -> None:
            raise KeyboardInterrupt(f"signal {signum}")

        signal.signal(signal.SIGTERM, interrupt)
