"""The address plan, names and command lines of a lab Kubernetes cluster (pure: no I/O).

::

    cp ns  <p>-cp        kbr0 10.N.0.1/24 (bridge)    etcd 127.0.0.1:2379, kube-apiserver :6443,
                          vn<i> ports of the bridge    controller-manager, scheduler (loopback)
                              |
    node ns <p>-node<i>  eth0 10.N.0.(10+i)/24        kube-proxy, node agent
                          cbr0 10.P.i.1/24 (pods)      routes: other nodes' pod /24s via them
                          vc0  169.254.1.1/32 (node 0 only: the client's link)
                              |
    client ns <p>-client eth0 10.P.250.1/32           default via 169.254.1.1 (node 0)

N = 192 + block (the node network), P = 64 + block (the cluster CIDR 10.P.0.0/16; node i's
pods use 10.P.i.0/24), services 10.(128 + block).0.0/16. The client is a "pod" of node 0 in
a block of its own (10.P.250.0/24): its traffic to a ClusterIP is DNATed by node 0's
kube-proxy without masquerade (its source is inside the cluster CIDR, as a pod's is), and
every node routes the client block back through node 0, so replies from pods on other nodes
return through the node that translated the request. Nothing of this is in the root namespace.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ....config import DATAPLANES as PLUGIN_DATAPLANES
from ....errors import DataplaneError

MAX_NODES = 200
MAX_BLOCK = 63
APISERVER_PORT = 6443
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_METRICS_PORT = 2381
CONTROLLER_MANAGER_PORT = 10257
SCHEDULER_PORT = 10259
PROXY_METRICS = "127.0.0.1:10249"
PROXY_HEALTHZ = "127.0.0.1:10256"
CLIENT_GATEWAY = "169.254.1.1"
# The lab boots every dataplane the plugin knows (ipvs only where the kernel has IP_VS).
DATAPLANES = PLUGIN_DATAPLANES
# kube-proxy's modes per lab dataplane; ebpf runs no kube-proxy.
PROXY_MODES = {"iptables": "iptables", "nftables": "nftables", "ipvs": "ipvs"}
# "auto": the backend the machine's own `iptables` is (its --version says nf_tables or legacy).
IPTABLES_BACKENDS = ("auto", "legacy", "nft")
MAX_MIN_SYNC_PERIOD = 30.0  # kube-proxy's sync period: its minimum may not exceed it
# Where kubeadm publishes kube-proxy's configuration, which existing-cluster tools read.
KUBE_PROXY_CONFIGMAP = ("kube-system", "kube-proxy", "config.conf")
# The controllers the lab needs: Deployments roll ReplicaSets, ReplicaSets make pods,
# EndpointSlices follow ready pods, deletions cascade, namespaces terminate, and every
# namespace gets its default ServiceAccount. Node IPAM is off (the lab assigns pod CIDRs) and
# so is the node lifecycle controller (no taint/eviction machinery for namespaces that never
# lose power).
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "garbage-collector-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "service-cidr-controller",
)


def check_dataplane(dataplane: str) -> str:
    """``dataplane`` if the lab cluster knows it, else a ValueError naming the choices."""
    if dataplane not in DATAPLANES:
        raise ValueError(
            f"dataplane: {dataplane!r} is not accepted; accepted: {', '.join(DATAPLANES)}"
        )
    return dataplane


def check_nodes(nodes: int) -> int:
    """``nodes`` if it is a node count the plan has room for, else a ValueError."""
    if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"nodes: {nodes!r} is not accepted; accepted: 1 to {MAX_NODES}")
    return nodes


@dataclass(frozen=True)
class KubePlan:
    """Names and addresses of one lab Kubernetes cluster, from its prefix and block (0-63)."""

    prefix: str
    block: int = 0
    nodes: int = 1
    node_prefix: str = "node"  # Node names: <node_prefix>-<index>

    def __post_init__(self) -> None:
        if not 0 <= self.block <= MAX_BLOCK:
            raise ValueError(f"block: {self.block!r} is not accepted; accepted: 0 to {MAX_BLOCK}")
        check_nodes(self.nodes)

    # ------------------------------------------------------------------ namespaces

    @property
    def cp_netns(self) -> str:
        return f"{self.prefix}-cp"

    @property
    def client_netns(self) -> str:
        return f"{self.prefix}-client"

    def node_netns(self, index: int) -> str:
        return f"{self.prefix}-node{self._node(index)}"

    def node_name(self, index: int) -> str:
        """The Node object's name."""
        return f"{self.node_prefix}-{self._node(index)}"

    # ------------------------------------------------------------------ addresses

    @property
    def node_network(self) -> str:
        return f"10.{192 + self.block}.0.0/24"

    @property
    def cp_ip(self) -> str:
        """The API server's advertised address, on the node network."""
        return f"10.{192 + self.block}.0.1"

    def node_ip(self, index: int) -> str:
        """Node ``index``'s InternalIP."""
        return f"10.{192 + self.block}.0.{10 + self._node(index)}"

    @property
    def cluster_cidr(self) -> str:
        return f"10.{64 + self.block}.0.0/16"

    def pod_cidr(self, index: int) -> str:
        return f"10.{64 + self.block}.{self._node(index)}.0/24"

    def pod_gateway(self, index: int) -> str:
        """The address of node ``index``'s pod bridge: its pods' default route."""
        return f"10.{64 + self.block}.{self._node(index)}.1"

    @property
    def client_cidr(self) -> str:
        return f"10.{64 + self.block}.250.0/24"

    @property
    def client_ip(self) -> str:
        return f"10.{64 + self.block}.250.1"

    @property
    def service_cidr(self) -> str:
        return f"10.{128 + self.block}.0.0/16"

    @property
    def kubernetes_service_ip(self) -> str:
        """The first address of the service CIDR: the ``kubernetes`` Service's ClusterIP."""
        return str(ipaddress.ip_network(self.service_cidr).network_address + 1)

    @property
    def apiserver_url(self) -> str:
        """Where nodes and control-plane components reach the API server."""
        return f"https://{self.cp_ip}:{APISERVER_PORT}"

    def serving_ips(self) -> tuple[str, ...]:
        """IP SANs of the API server's certificate."""
        return (self.cp_ip, self.kubernetes_service_ip, "127.0.0.1")

    @staticmethod
    def serving_dns_names() -> tuple[str, ...]:
        """DNS SANs of the API server's certificate."""
        return (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )

    def _node(self, index: int) -> int:
        if not 0 <= index < self.nodes:
            raise DataplaneError(f"node index {index} out of range (0-{self.nodes - 1})")
        return index


# ---------------------------------------------------------------------- command lines


@dataclass(frozen=True)
class Files:
    """Where a cluster's files live (all under its state directory)."""

    root: Path

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def ca_cert(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def serving_cert(self) -> Path:
        return self.pki / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.pki / "apiserver.key"

    @property
    def sa_key(self) -> Path:
        return self.pki / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.pki / "sa.pub"

    @property
    def token_file(self) -> Path:
        return self.pki / "tokens.csv"

    @property
    def admin_kubeconfig(self) -> Path:
        """For people and tests in the root namespace (through the forwarder)."""
        return self.root / "admin.kubeconfig"

    @property
    def components_kubeconfig(self) -> Path:
        """For the controller-manager, scheduler, kube-proxy and node agents."""
        return self.root / "components.kubeconfig"

    @property
    def etcd_data(self) -> Path:
        """The tmpfs mount point of etcd's data."""
        return self.root / "etcd"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def component_dir(self, name: str) -> Path:
        return self.root / "run" / name


def etcd_args(files: Files) -> list[str]:
    """etcd: one member, data on the session's tmpfs, listening only on the cp loopback."""
    local = "http://127.0.0.1"
    return [
        "--name=cp",
        f"--data-dir={files.etcd_data / 'data'}",
        f"--listen-client-urls={local}:{ETCD_CLIENT_PORT}",
        f"--advertise-client-urls={local}:{ETCD_CLIENT_PORT}",
        f"--listen-peer-urls={local}:{ETCD_PEER_PORT}",
        f"--initial-advertise-peer-urls={local}:{ETCD_PEER_PORT}",
        f"--initial-cluster=cp={local}:{ETCD_PEER_PORT}",
        f"--listen-metrics-urls={local}:{ETCD_METRICS_PORT}",
        "--initial-cluster-state=new",
        # The data lives on tmpfs and dies with the session: syncing it buys nothing.
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver_args(plan: KubePlan, files: Files) -> list[str]:
    """kube-apiserver for the lab: token authentication, Node,RBAC authorization."""
    return [
        f"--etcd-servers=http://127.0.0.1:{ETCD_CLIENT_PORT}",
        "--bind-address=0.0.0.0",  # every address of the cp namespace, none of the root's
        f"--secure-port={APISERVER_PORT}",
        f"--advertise-address={plan.cp_ip}",
        f"--service-cluster-ip-range={plan.service_cidr}",
        f"--tls-cert-file={files.serving_cert}",
        f"--tls-private-key-file={files.serving_key}",
        f"--client-ca-file={files.ca_cert}",
        f"--token-auth-file={files.token_file}",
        f"--service-account-key-file={files.sa_pub}",
        f"--service-account-signing-key-file={files.sa_key}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        "--authorization-mode=Node,RBAC",
        # Without the ServiceAccount admission plugin a pod needs no ServiceAccount object or
        # token: `kubectl create deployment` works from the first second, and the lab's pods
        # (processes, not containers) mount nothing anyway. TaintNodesByCondition would give
        # every new Node a not-ready NoSchedule taint that only the node lifecycle controller
        # lifts; the lab runs no such controller (its agents report Ready themselves).
        "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition",
        # The CA the controller-manager and scheduler look up in the
        # extension-apiserver-authentication ConfigMap (they log errors without it); no
        # front proxy is configured, so no client is trusted through it.
        f"--requestheader-client-ca-file={files.ca_cert}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--enable-priority-and-fairness=false",
        "--profiling=false",
        f"--cert-dir={files.component_dir('kube-apiserver')}",
        "--v=1",
    ]


def _component_common(name: str, files: Files, port: int) -> list[str]:
    kubeconfig = files.components_kubeconfig
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={files.component_dir(name)}",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_args(files: Files) -> list[str]:
    """kube-controller-manager with the lab's controllers, no leader election, no node IPAM."""
    return [
        *_component_common("kube-controller-manager", files, CONTROLLER_MANAGER_PORT),
        f"--controllers={','.join(CONTROLLERS)}",
        "--allocate-node-cidrs=false",
        # Endpoint changes reach kube-proxy at once, as the story's rollout needs.
        "--endpointslice-updates-batch-period=0s",
    ]


def scheduler_args(files: Files) -> list[str]:
    """kube-scheduler without leader election."""
    return _component_common("kube-scheduler", files, SCHEDULER_PORT)


def check_min_sync_period(value: float | None) -> float | None:
    """``value`` (seconds, or None for kube-proxy's default) if kube-proxy accepts it as its
    minimum sync period, else a ValueError naming what is accepted."""
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= MAX_MIN_SYNC_PERIOD
    ):
        raise ValueError(
            f"min_sync_period: {value!r} is not accepted; accepted: None (kube-proxy's "
            f"default, 1 s) or seconds from 0 to {MAX_MIN_SYNC_PERIOD:g} (its sync period)"
        )
    return float(value)


def check_iptables_backend(value: str) -> str:
    """``value`` if it names an iptables backend choice, else a ValueError."""
    if value not in IPTABLES_BACKENDS:
        raise ValueError(
            f"iptables_backend: {value!r} is not accepted; accepted: {', '.join(IPTABLES_BACKENDS)}"
        )
    return value


def go_duration(seconds: float) -> str:
    """``seconds`` as a Go duration string (``1s``, ``250ms``, ``0s``) for kube-proxy's flags."""
    micros = round(seconds * 1_000_000)
    if micros % 1_000_000 == 0:
        return f"{micros // 1_000_000}s"
    if micros % 1000 == 0:
        return f"{micros // 1000}ms"
    return f"{micros}us"


def iptables_links(backend: str) -> dict[str, str]:
    """The names kube-proxy runs (``iptables``, ``iptables-restore``...) and the binaries of
    ``backend`` ("legacy" or "nft") they must stand for, e.g. iptables -> iptables-nft."""
    if backend not in ("legacy", "nft"):
        raise ValueError(f"backend: {backend!r} is not accepted; accepted: legacy, nft")
    links = {}
    for family in ("iptables", "ip6tables"):
        for suffix in ("", "-save", "-restore"):
            links[f"{family}{suffix}"] = f"{family}-{backend}{suffix}"
    return links


def _proxy_flags(files: Files, mode: str, min_sync_period: float | None) -> list[str]:
    if mode not in PROXY_MODES.values():
        raise ValueError(
            f"mode: {mode!r} is not accepted; accepted: {', '.join(PROXY_MODES.values())}"
        )
    flags = [f"--kubeconfig={files.components_kubeconfig}", f"--proxy-mode={mode}"]
    if check_min_sync_period(min_sync_period) is not None:
        # kube-proxy's own flag (the iptables one serves the nftables mode as well).
        name = "ipvs" if mode == "ipvs" else "iptables"
        flags.append(f"--{name}-min-sync-period={go_duration(min_sync_period or 0.0)}")
    return flags


def proxy_config_args(
    plan: KubePlan,
    files: Files,
    mode: str,
    out: Path,
    *,
    min_sync_period: float | None = None,
) -> list[str]:
    """kube-proxy's flags (as :func:`proxy_args` gives them, without the node's name) plus
    ``--write-config-to=out``: kube-proxy writes the KubeProxyConfiguration those flags make
    and exits. The lab publishes that file as ConfigMap kube-system/kube-proxy.

    kube-proxy runs on flags rather than on ``--config``: a config file cannot say a minimum
    sync period of 0 (the v1alpha1 defaulting turns 0 into 1 s), the flag can.
    """
    args = proxy_args(plan, files, 0, mode, min_sync_period=min_sync_period)
    kept = [a for a in args if not a.startswith("--hostname-override=")]
    return [*kept, f"--write-config-to={out}"]


def proxy_args(
    plan: KubePlan,
    files: Files,
    index: int,
    mode: str,
    *,
    min_sync_period: float | None = None,
) -> list[str]:
    """kube-proxy for node ``index``.

    Every conntrack knob is 0 ("leave as is"): nf_conntrack_max and the hash size are global
    (writable only from the root namespace), and the lab changes no sysctl there.
    kube-proxy acts on a conntrack setting only when its value is positive.
    ``min_sync_period`` (seconds) is its ``--iptables-min-sync-period`` (``--ipvs-...`` in ipvs
    mode); None leaves its default (1 s).
    """
    return [
        *_proxy_flags(files, mode, min_sync_period),
        f"--hostname-override={plan.node_name(index)}",
        # NodePorts only on the node's InternalIP (read from its Node object).
        "--nodeport-addresses=primary",
        f"--cluster-cidr={plan.cluster_cidr}",
        f"--metrics-bind-address={PROXY_METRICS}",
        f"--healthz-bind-address={PROXY_HEALTHZ}",
        "--conntrack-max-per-core=0",
        "--conntrack-min=0",
        "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--conntrack-udp-timeout=0",
        "--conntrack-udp-timeout-stream=0",
        "--profiling=false",
        "--v=1",
    ]


def agent_argv(python: str, kubeconfig: Path, node_config: Path) -> list[str]:
    """The node agent's command line (see kube/agent/)."""
    return [
        python,
        "-m",
        "pytest_dataplane.providers.lab.kube.agent",
        "--kubeconfig",
        str(kubeconfig),
        "--node-config",
        str(node_config),
    ]


def ebpfctl_argv(
    python: str,
    *,
    kubeconfig: Path,
    cgroup: Path,
    state_dir: Path,
    cache_dir: Path | None = None,
) -> list[str]:
    """The eBPF controller's command line (see kube/ebpfctl.py)."""
    argv = [
        python,
        "-m",
        "pytest_dataplane.providers.lab.kube.ebpfctl",
        "--kubeconfig",
        str(kubeconfig),
        "--cgroup",
        str(cgroup),
        "--state-dir",
        str(state_dir),
    ]
    if cache_dir is not None:
        argv += ["--cache-dir", str(cache_dir)]
    return argv


def shell_exports(env: Sequence[tuple[str, str]]) -> str:
    """``export K='v'; ...`` lines a POSIX shell can eval, values quoted."""
    import shlex

    return "".join(f"export {key}={shlex.quote(value)};\n" for key, value in env)
