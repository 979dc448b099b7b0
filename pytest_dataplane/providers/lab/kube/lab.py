"""KubeLab: boots a real Kubernetes cluster in network namespaces and removes all of it.

Boot order (each step waits on the component's own readiness signal, never on a sleep):

1. credentials (:mod:`.pki`), a tmpfs for etcd, the namespaces and links (:mod:`.topology`);
2. etcd (``/health``) and kube-apiserver (``/readyz``) in the control-plane namespace;
3. kube-controller-manager and kube-scheduler (``/healthz``), and one node agent per node
   (its Node object Ready);
4. kube-proxy per node once its Node exists (kube-proxy reads its node IPs from the Node
   and polls for it only once a second), ready at its first completed rule sync, with the
   iptables binaries of the chosen backend first on its PATH and its configuration published
   as ConfigMap kube-system/kube-proxy; or, for ``ebpf``, no kube-proxy but the eBPF service
   controller (:mod:`.ebpfctl`) in node 0's namespace, ready once it has programmed the
   Services and EndpointSlices it listed into the load balancer on :attr:`client_cgroup`;
5. the forwarder that lets the root namespace's kubectl reach the API server on loopback.

:meth:`KubeLab.stop` undoes everything — on success, on a failure part-way through
:meth:`KubeLab.start` and on Ctrl-C/SIGTERM (turned into KeyboardInterrupt on the main
thread) — and ``python -m pytest_dataplane cleanup`` finds what a SIGKILLed owner left (every
name carries the session prefix; every process sits in the session's cgroup and dies with
its parent).

Over 500 lines, on purpose: :class:`KubeLab` is one cluster's life, and its boot and its stop
mirror each other over the same record of what was started (processes, mounts, namespaces,
cgroups), which is what lets a failure at any step undo exactly what exists. The parts that
stand alone live beside it: the address plan and command lines (:mod:`.plan`), namespaces and
links (:mod:`.topology`), credentials (:mod:`.pki`), processes (:mod:`.process`), readiness
probes (:mod:`.probe`), the kubectl forwarder (:mod:`.forward`) and cgroups
(:mod:`.._cgroup`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from ....errors import DataplaneError, DataplaneUnavailable
from .. import _proc
from .._cgroup import attached_programs, kill_cgroup, remove_cgroup
from .._session import Session
from . import pki, plan, probe
from .forward import Forwarder
from .plan import Files, KubePlan
from .process import Process, kill_all, stop_all
from .topology import POD_BRIDGE, KubeTopology

ETCD_TMPFS_SIZE = "1g"
AGENT_STOP_TIMEOUT = 30.0  # the agent stops its pods (their grace periods) before exiting
EBPFCTL_STOP_TIMEOUT = 10.0  # the eBPF controller detaches and unmounts on SIGTERM
EBPFCTL = "ebpf-controller"  # the controller's process (and cgroup) name
CLIENT_CGROUP = "client"  # the clients' cgroup, under the cluster's
# The control plane's nice value (and its sessions' autogroup nice): about a tenth of the
# CPU weight of the nodes' processes when both want the CPU (see _spawn_control_plane).
CONTROL_PLANE_NICE = 10


def detect_iptables_backend() -> str:
    """``nft`` or ``legacy``: what this machine's ``iptables --version`` reports."""
    path = shutil.which("iptables", path=_proc.sbin_path())
    if path is None:
        raise DataplaneUnavailable("iptables not found: apt-get install iptables")
    version = _proc.run([path, "--version"]).stdout
    return "nft" if "nf_tables" in version else "legacy"


def ipvs_available() -> bool:
    """Whether the kernel has IP_VS (built in or loaded): kube-proxy's ipvs mode needs it."""
    return Path("/proc/sys/net/ipv4/vs").is_dir() or Path("/proc/net/ip_vs").exists()


class KubeLab:
    """One lab Kubernetes cluster: control plane, ``nodes`` nodes, a client namespace.

    ``with KubeLab(dataplane="iptables") as lab: ...`` boots it and removes it. With
    ``session`` given, the cluster lives inside that session under ``tag`` (names
    ``<session prefix>-<tag>-...``); without, it makes a session of its own and removes the
    session on :meth:`stop`.

    ``min_sync_period`` (seconds; None: kube-proxy's default, 1 s) is kube-proxy's own
    minimum sync period flag; ``iptables_backend`` ("auto", "legacy", "nft") chooses the
    iptables binaries kube-proxy's PATH finds ("auto": what the machine's ``iptables`` is).
    On ``ebpf`` no kube-proxy runs: the eBPF service controller (:mod:`.ebpfctl`) serves
    ClusterIPs to the processes of :attr:`client_cgroup`.
    """

    def __init__(
        self,
        *,
        dataplane: str = "iptables",
        nodes: int = 1,
        session: Session | None = None,
        tag: str | None = None,
        block: int | None = None,
        node_prefix: str = "node",
        kube_bin_dir: str | os.PathLike[str] | None = None,
        forward_port: int = 0,
        boot_timeout: float = 90.0,
        progress: Callable[[str], None] | None = None,
        min_sync_period: float | None = None,
        iptables_backend: str = "auto",
    ) -> None:
        self.dataplane = plan.check_dataplane(dataplane)
        self.nodes = plan.check_nodes(nodes)
        self.min_sync_period = plan.check_min_sync_period(min_sync_period)
        self.requested_iptables_backend = plan.check_iptables_backend(iptables_backend)
        if tag is not None and (not tag.isalnum() or len(tag) > 8):
            raise ValueError(f"tag: {tag!r} is not accepted; accepted: 1-8 letters or digits")
        if session is not None and tag is None:
            tag = "kube"
        self.tag = tag
        self.block = block
        if not node_prefix or not all(c.isalnum() or c == "-" for c in node_prefix):
            raise ValueError(
                f"node_prefix: {node_prefix!r} is not accepted; accepted: letters, digits, '-'"
            )
        self.node_prefix = node_prefix
        self.kube_bin_dir = kube_bin_dir
        self.forward_port = forward_port
        self.boot_timeout = boot_timeout
        self._progress = progress or (lambda message: None)
        self._session = session
        self._own_session = session is None
        self.plan: KubePlan | None = None
        self.files: Files | None = None
        self.binaries: Any = None
        self.pki: pki.Pki | None = None
        self.topology: KubeTopology | None = None
        self.forwarder: Forwarder | None = None
        self.processes: dict[str, Process] = {}
        self.cgroup: Path | None = None
        self.timings: dict[str, float] = {}
        self.proxy_config: str | None = None  # the published KubeProxyConfiguration (YAML)
        self._iptables_backend: str | None = None
        self._client_cgroup: Path | None = None
        self._mounted: Path | None = None
        self._started = False
        self._stopped = False
        self._stopping = False
        self._pending: list[int] = []
        self._old_sigterm: Any = None

    def __repr__(self) -> str:
        where = self.plan.prefix if self.plan else "not started"
        return f"<KubeLab {self.dataplane} {self.nodes} node(s) {where}>"

    # ------------------------------------------------------------------ context manager

    def __enter__(self) -> KubeLab:
        self._interrupt_on_sigterm()
        try:
            return self.start()
        except BaseException:
            self._restore_sigterm()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.stop()
        finally:
            self._restore_sigterm()

    def _interrupt_on_sigterm(self) -> None:
        # SIGTERM would end the process without unwinding; as KeyboardInterrupt it runs
        # stop() like Ctrl-C does.
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:

            def interrupt(signum: int, frame: FrameType | None) -> None:
                raise KeyboardInterrupt(f"signal {signum}")

            self._old_sigterm = signal.signal(signal.SIGTERM, interrupt)

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # ------------------------------------------------------------------ public view

    def _require(self) -> tuple[KubePlan, Files]:
        if self.plan is None or self.files is None:
            raise DataplaneError("the lab cluster is not started")
        return self.plan, self.files

    @property
    def prefix(self) -> str:
        return self._require()[0].prefix

    @property
    def session(self) -> Session:
        if self._session is None:
            raise DataplaneError("the lab cluster is not started")
        return self._session

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (server ``https://127.0.0.1:<port>`` in the root namespace)."""
        return self._require()[1].admin_kubeconfig

    @property
    def components_kubeconfig(self) -> Path:
        """The kubeconfig of the components (server: the API server's cp address)."""
        return self._require()[1].components_kubeconfig

    @property
    def client_netns(self) -> str:
        return self._require()[0].client_netns

    @property
    def cp_netns(self) -> str:
        return self._require()[0].cp_netns

    def node_netns(self, index: int = 0) -> str:
        return self._require()[0].node_netns(index)

    @property
    def node_names(self) -> list[str]:
        plan_ = self._require()[0]
        return [plan_.node_name(i) for i in range(plan_.nodes)]

    def agent_netns_prefix(self, node: str) -> str:
        """What the names of the pod namespaces the agent of ``node`` makes start with."""
        return f"{self.session.prefix}-pod-{node}-"

    @property
    def runs_kube_proxy(self) -> bool:
        return self.dataplane in plan.PROXY_MODES

    @property
    def iptables_backend(self) -> str | None:
        """``legacy`` or ``nft``: the iptables binaries kube-proxy's PATH finds (None before
        start and on ``ebpf``, where no kube-proxy runs)."""
        return self._iptables_backend

    @property
    def client_cgroup(self) -> Path | None:
        """``ebpf``: the cgroup v2 directory whose processes' ``connect()`` calls the eBPF
        load balancer serves; the load generator (and any prober) must join it. None for the
        kube-proxy dataplanes, where the client namespace's routes suffice."""
        return self._client_cgroup

    @property
    def ebpf_state_dir(self) -> Path:
        """The eBPF controller's directory: bpffs pins, ``ready.json``, ``programming.jsonl``."""
        return self._require()[1].root / "ebpf"

    def dataplane_cgroups(self, index: int = 0) -> list[Path]:
        """The cgroup v2 directories whose ``cpu.stat`` ``usage_usec``, summed, is the
        dataplane's CPU on node ``index``: kube-proxy's (the iptables-restore / nft it runs
        are its children, in the same cgroup), or on ``ebpf`` the eBPF controller's, which
        runs on node 0 only (other nodes have no dataplane process: an empty list)."""
        kube_plan = self._require()[0]
        name = kube_plan.node_name(index)
        wanted = f"kube-proxy-{name}" if self.runs_kube_proxy else (EBPFCTL if index == 0 else "")
        process = self.processes.get(wanted)
        return [] if process is None or process.cgroup is None else [process.cgroup]

    def ebpf_programming(self) -> list[dict[str, Any]]:
        """``ebpf``: one record per endpoint change the controller programmed, oldest first:
        ``service`` (ns/name), ``port`` (service port name), ``endpoint`` (ip:port),
        ``change`` (added/removed), ``trigger`` (wall seconds: the EndpointSlice's
        last-change-trigger-time, which the API keeps to the second, or when the controller
        saw the change, see ``trigger_source``), ``programmed`` (wall seconds when the map
        write returned), ``seconds`` (programmed - trigger). Empty for other dataplanes."""
        if self.dataplane != "ebpf":
            return []
        from .ebpfctl import RECORDS_FILE

        try:
            text = (self.ebpf_state_dir / RECORDS_FILE).read_text()
        except FileNotFoundError:
            return []
        # A line still being written has no newline yet: it is read next time.
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line]

    def ebpf_programmed(self) -> dict[tuple[str, int, str], list[str]]:
        """``ebpf``: what the load balancer's maps hold now, ``(vip, port, protocol) ->
        ["ip:port", ...]``, read from the controller's pinned maps."""
        from ..ebpf import read_pinned

        return read_pinned(self.ebpf_state_dir)

    def kubectl(self) -> list[str]:
        """The command prefix of the matching kubectl on the admin kubeconfig."""
        return [*self.binaries.argv("kubectl"), f"--kubeconfig={self.kubeconfig}"]

    def env(self) -> list[tuple[str, str]]:
        """What ``lab up`` exports: KUBECONFIG, PATH (kubectl first), DATAPLANE_NETNS..."""
        out = [("KUBECONFIG", str(self.kubeconfig))]
        if self.binaries is not None and self.binaries.kubectl_dir is not None:
            out.append(("PATH", f"{self.binaries.kubectl_dir}{os.pathsep}$PATH"))
        out.append(("DATAPLANE_NETNS", self.client_netns))
        if self._client_cgroup is not None:
            # ebpf: a client must also join this cgroup for ClusterIPs to be served.
            out.append(("DATAPLANE_CGROUP", str(self._client_cgroup)))
        out.append(("DATAPLANE_LAB", self.prefix))
        return out

    def logs(self, lines: int = 25) -> dict[str, str]:
        """The last ``lines`` of every component's log (for failure reports)."""
        return {name: p.tail(lines) for name, p in self.processes.items()}

    # ------------------------------------------------------------------ boot

    def start(self) -> KubeLab:
        """Boot the cluster; on any failure (or interrupt) remove what was made, then raise."""
        if self._started:
            raise DataplaneError("this KubeLab was started already; make a new one")
        self._started = True
        began = time.monotonic()
        with self._signals_deferred():
            try:
                self._boot()
                self._raise_pending()
            except BaseException:
                try:
                    self._stop()
                except Exception as exc:  # the boot failure is the news; report both
                    self._progress(f"cleanup after the failed boot incomplete: {exc}")
                raise
        self.timings["boot"] = time.monotonic() - began
        self._progress(f"cluster ready in {self.timings['boot']:.1f} s")
        return self

    @contextlib.contextmanager
    def _signals_deferred(self) -> Iterator[None]:
        """Hold SIGINT and SIGTERM while booting or stopping, to act on them at safe points.

        A KeyboardInterrupt raised straight from a signal handler can land anywhere, even in
        the at-fork handlers subprocess runs while starting a component, where Python reports
        it as "ignored" and carries on booting. Here the handler only records the signal;
        :meth:`_raise_pending` raises it where a boot can stop cleanly (between steps, while
        waiting), and stop() finishes its work whatever arrives meanwhile.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def record(signum: int, frame: FrameType | None) -> None:
            self._pending.append(signum)

        previous = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _raise_pending(self) -> None:
        if self._pending and not self._stopping:
            raise KeyboardInterrupt(f"signal {self._pending[0]}")

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        self._raise_pending()
        began = time.monotonic()
        yield
        self.timings[name] = time.monotonic() - began

    def _boot(self) -> None:
        from ..kubebin import locate

        if self.dataplane == "ipvs" and not ipvs_available():
            raise DataplaneUnavailable(
                "kube-proxy's ipvs mode needs the kernel's IP_VS, which this kernel lacks "
                "(no /proc/sys/net/ipv4/vs); use iptables or nftables"
            )
        if self.dataplane == "ebpf":
            from ..ebpf import ebpf_unavailable_reason

            reason = ebpf_unavailable_reason()
            if reason is not None:
                raise DataplaneUnavailable(reason)
        self.binaries = locate(self.kube_bin_dir)
        if self._session is None:
            self._session = Session.new()
        session = self._session
        prefix = session.prefix if self.tag is None else f"{session.prefix}-{self.tag}"
        block = self.block
        if block is None:
            block = int(hashlib.sha256(prefix.encode()).hexdigest(), 16) % (plan.MAX_BLOCK + 1)
        self.plan = kube_plan = KubePlan(prefix, block, self.nodes, self.node_prefix)
        self.files = files = Files(session.state_dir / (self.tag or "kube"))
        files.root.mkdir(parents=True, exist_ok=True)
        files.logs.mkdir(parents=True, exist_ok=True)
        if session.cgroup is not None:
            self.cgroup = session.cgroup / (self.tag or "kube")
            self.cgroup.mkdir(parents=True, exist_ok=True)
        if self.dataplane == "ebpf":
            if self.cgroup is None:
                raise DataplaneUnavailable(
                    "the ebpf dataplane needs a cgroup v2 hierarchy for the clients' cgroup"
                )
            self._client_cgroup = self.cgroup / CLIENT_CGROUP
            self._client_cgroup.mkdir(exist_ok=True)
        proxy_env: dict[str, str] | None = None
        if self.runs_kube_proxy:
            proxy_env = self._proxy_env(files)
        self._progress(
            f"lab {prefix}: {self.dataplane}, {self.nodes} node(s), {self.binaries.source}"
        )

        with self._phase("pki"):
            self.forwarder = Forwarder(
                kube_plan.cp_netns, ("127.0.0.1", plan.APISERVER_PORT), port=self.forward_port
            )
            self.pki = credentials = pki.generate(
                ips=kube_plan.serving_ips(), dns_names=kube_plan.serving_dns_names()
            )
            pki.write(
                credentials,
                files,
                {
                    "admin": f"https://127.0.0.1:{self.forwarder.port}",
                    "components": kube_plan.apiserver_url,
                },
                cluster=f"lab-{prefix}",
            )
        with self._phase("network"):
            files.etcd_data.mkdir(parents=True, exist_ok=True)
            _proc.run(
                [
                    "mount",
                    "-t",
                    "tmpfs",
                    "-o",
                    f"size={ETCD_TMPFS_SIZE},mode=0700",
                    f"pytest-dataplane-{prefix}",
                    str(files.etcd_data),
                ]
            )
            self._mounted = files.etcd_data
            self.topology = KubeTopology(kube_plan)
            self.topology.create()

        self._progress("starting etcd and kube-apiserver")
        with self._phase("control_plane"):
            etcd = self._spawn_control_plane("etcd", plan.etcd_args(files))
            apiserver = self._spawn_control_plane(
                "kube-apiserver", plan.apiserver_args(kube_plan, files)
            )
            self._wait(
                etcd,
                lambda: (
                    probe.get_json(
                        kube_plan.cp_netns, f"http://127.0.0.1:{plan.ETCD_CLIENT_PORT}/health"
                    )
                    in ({"health": "true"}, {"health": "true", "reason": ""})
                ),
                timeout=self.boot_timeout,
                what="healthy",
            )
            self.timings["etcd"] = time.monotonic() - etcd.started_at
            self.timings["apiserver"] = self._wait(
                apiserver,
                lambda: self._api_ok("/readyz"),
                timeout=self.boot_timeout,
                what="ready (/readyz)",
            )
            if self.runs_kube_proxy:
                self._publish_proxy_config(apiserver)

        self._progress("starting controller-manager, scheduler and node agents")
        with self._phase("components"):
            cm = self._spawn_control_plane(
                "kube-controller-manager", plan.controller_manager_args(files)
            )
            scheduler = self._spawn_control_plane("kube-scheduler", plan.scheduler_args(files))
            agents = [self._spawn_agent(i) for i in range(self.nodes)]
            controller = self._spawn_ebpfctl() if self.dataplane == "ebpf" else None
            proxies: list[Process] = []
            for index, agent in enumerate(agents):
                name = kube_plan.node_name(index)
                self._wait(
                    agent,
                    lambda n=name: self._api_ok(f"/api/v1/nodes/{n}"),  # type: ignore[misc]
                    timeout=self.boot_timeout,
                    what=f"registered (Node {name})",
                )
                if self.runs_kube_proxy:
                    proxies.append(
                        self._spawn(
                            f"kube-proxy-{name}",
                            [
                                *self.binaries.argv("kube-proxy"),
                                *plan.proxy_args(
                                    kube_plan,
                                    files,
                                    index,
                                    plan.PROXY_MODES[self.dataplane],
                                    min_sync_period=self.min_sync_period,
                                ),
                            ],
                            kube_plan.node_netns(index),
                            raw=True,
                            env=proxy_env,
                        )
                    )
            self._wait(
                cm,
                lambda: probe.ok(
                    kube_plan.cp_netns,
                    f"https://127.0.0.1:{plan.CONTROLLER_MANAGER_PORT}/healthz",
                ),
                timeout=self.boot_timeout,
                what="healthy (/healthz)",
            )
            self._wait(
                scheduler,
                lambda: probe.ok(
                    kube_plan.cp_netns, f"https://127.0.0.1:{plan.SCHEDULER_PORT}/healthz"
                ),
                timeout=self.boot_timeout,
                what="healthy (/healthz)",
            )
            for index, agent in enumerate(agents):
                name = kube_plan.node_name(index)
                self._wait(
                    agent,
                    lambda n=name: self._node_ready(n),  # type: ignore[misc]
                    timeout=self.boot_timeout,
                    what=f"Ready (Node {name})",
                )
            for index, proxy in enumerate(proxies):
                self._wait(
                    proxy,
                    lambda i=index: self.proxy_synced(i),  # type: ignore[misc]
                    timeout=self.boot_timeout,
                    what="synced (kubeproxy_sync_proxy_rules_last_timestamp_seconds)",
                )
            if controller is not None:
                self.timings["ebpf_controller"] = self._wait(
                    controller,
                    self._ebpfctl_ready,
                    timeout=self.boot_timeout,
                    what="ready (ready.json: the listed services programmed)",
                )
        self.forwarder.start()

    def _wait(
        self, process: Process, condition: Callable[[], bool], *, timeout: float, what: str
    ) -> float:
        """``process.wait_until(condition)``, failing at once if any component has exited."""

        def check() -> bool:
            self._raise_pending()
            for other in self.processes.values():
                status = other.exited()
                if status is not None and other is not process:
                    raise DataplaneError(
                        f"{other.name} exited with status {status} while waiting for "
                        f"{process.name} to be {what}; log {other.log_path}, last lines:\n"
                        f"{other.tail()}"
                    )
            return condition()

        return process.wait_until(check, timeout=timeout, what=what)

    def _spawn(
        self,
        name: str,
        args: list[str],
        netns: str,
        *,
        raw: bool = False,
        env: dict[str, str] | None = None,
        deathsig: int = signal.SIGKILL,
        nice: int = 0,
    ) -> Process:
        """Start component ``name`` (``args`` are its flags, or its whole argv if ``raw``)."""
        self._raise_pending()
        _, files = self._require()
        argv = args if raw else [*self.binaries.argv(name), *args]
        process = Process(
            name,
            argv,
            netns=netns,
            log_path=files.logs / f"{name}.log",
            cgroup=None if self.cgroup is None else self.cgroup / name,
            env=self._env() if env is None else env,
            deathsig=deathsig,
            nice=nice,
        )
        self.processes[name] = process
        process.start()
        return process

    def _spawn_control_plane(self, name: str, args: list[str]) -> Process:
        """Start a control-plane component in the control-plane namespace, at a low CPU weight.

        A real cluster runs its control plane on machines of its own; here it shares the
        cores with the nodes' work (pods, kube-proxy or the eBPF controller, the clients). At
        nice 0 its bursts during a rollout (the API server, etcd and the controllers all
        answering at once) took the CPU from the load generator for up to 0.1 s; at
        :data:`CONTROL_PLANE_NICE` it runs on whatever the node's work leaves, as on a
        machine of its own, and still gets every idle cycle.
        """
        return self._spawn(name, args, self._require()[0].cp_netns, nice=CONTROL_PLANE_NICE)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        env["PATH"] = _proc.sbin_path()
        return env

    # ------------------------------------------------------------------ kube-proxy's setup

    def _proxy_env(self, files: Files) -> dict[str, str]:
        """kube-proxy's environment: a bin directory of this session first on its PATH, whose
        ``iptables``, ``iptables-save``, ``iptables-restore`` (and ip6tables) are links to the
        chosen backend's binaries (as the iptables wrapper of kube-proxy's image picks them)."""
        backend = self.requested_iptables_backend
        if backend == "auto":
            backend = detect_iptables_backend()
        search = _proc.sbin_path()
        bin_dir = files.root / "bin"
        bin_dir.mkdir(exist_ok=True)
        for name, binary in plan.iptables_links(backend).items():
            target = shutil.which(binary, path=search)
            if target is None:
                # ip6tables too: a missing link would let the PATH find the machine's own
                # ip6tables, of the other backend.
                raise DataplaneUnavailable(
                    f"{binary} not found (iptables backend {backend!r}): apt-get install "
                    "iptables, or choose the other backend (accepted: auto, legacy, nft)"
                )
            (bin_dir / name).symlink_to(target)
        self._iptables_backend = backend
        env = self._env()
        env["PATH"] = f"{bin_dir}{os.pathsep}{search}"
        return env

    def _publish_proxy_config(self, apiserver: Process) -> None:
        """Write the KubeProxyConfiguration kube-proxy's flags make (kube-proxy's own
        ``--write-config-to``) and publish it as ConfigMap kube-system/kube-proxy, key
        config.conf, as kubeadm does: tools that meet the cluster read the mode there."""
        kube_plan, files = self._require()
        out = files.root / "kube-proxy.conf"
        argv = [
            *self.binaries.argv("kube-proxy"),
            *plan.proxy_config_args(
                kube_plan,
                files,
                plan.PROXY_MODES[self.dataplane],
                out,
                min_sync_period=self.min_sync_period,
            ),
        ]
        _proc.run(argv)
        self.proxy_config = out.read_text()
        namespace, name, key = plan.KUBE_PROXY_CONFIGMAP
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": "kube-proxy"}},
            "data": {key: self.proxy_config},
        }

        def published() -> bool:
            # kube-system appears shortly after /readyz: until then the answer is 404.
            status, _ = self._api_send("POST", f"/api/v1/namespaces/{namespace}/configmaps", body)
            return status in (201, 409)

        self._wait(
            apiserver, published, timeout=self.boot_timeout, what="publishing kube-proxy's config"
        )

    # ------------------------------------------------------------------ the eBPF controller

    def _spawn_ebpfctl(self) -> Process:
        kube_plan, files = self._require()
        if self._client_cgroup is None:
            raise DataplaneError("the clients' cgroup was not made")
        state = self.ebpf_state_dir
        state.mkdir(parents=True, exist_ok=True)
        argv = plan.ebpfctl_argv(
            sys.executable,
            kubeconfig=files.components_kubeconfig,
            cgroup=self._client_cgroup,
            state_dir=state,
        )
        # SIGTERM at the owner's death: the controller detaches its program and unmounts.
        return self._spawn(
            EBPFCTL, argv, kube_plan.node_netns(0), raw=True, deathsig=signal.SIGTERM
        )

    def _ebpfctl_ready(self) -> bool:
        from .ebpfctl import READY_FILE

        return (self.ebpf_state_dir / READY_FILE).is_file()

    def _spawn_agent(self, index: int) -> Process:
        self._raise_pending()
        kube_plan, files = self._require()
        name = kube_plan.node_name(index)
        from dataclasses import asdict

        from .agent import NodeConfig  # validates the values before the agent sees them

        config = NodeConfig(
            name=name,
            netns=kube_plan.node_netns(index),
            bridge=POD_BRIDGE,
            gateway=kube_plan.pod_gateway(index),
            internal_ip=kube_plan.node_ip(index),
            pod_cidr=kube_plan.pod_cidr(index),
            # The agent names pod namespaces "<session prefix>-pod-<node>-...": found by
            # `cleanup` through the session prefix, and by stop() through agent_netns_prefix.
            prefix=self.session.prefix,
            run_dir=str(files.root / "pods" / name),
        )
        path = files.root / f"node-config-{name}.json"
        path.write_text(json.dumps(asdict(config), indent=2))
        Path(config.run_dir).mkdir(parents=True, exist_ok=True)
        argv = plan.agent_argv(sys.executable, files.components_kubeconfig, path)
        process = Process(
            f"agent-{name}",
            argv,
            netns=kube_plan.node_netns(index),
            log_path=files.logs / f"agent-{name}.log",
            cgroup=None if self.cgroup is None else self.cgroup / f"agent-{name}",
            env=self._env(),
            # SIGTERM, not SIGKILL: the agent removes its pods' namespaces on the way out.
            deathsig=signal.SIGTERM,
        )
        self.processes[process.name] = process
        process.start()
        return process

    # ------------------------------------------------------------------ readiness checks

    def api_get(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` of the API server from the control-plane namespace, as the admin."""
        kube_plan, files = self._require()
        if self.pki is None:
            raise DataplaneError("the lab cluster is not started")
        return probe.get(
            kube_plan.cp_netns,
            f"https://127.0.0.1:{plan.APISERVER_PORT}{path}",
            token=self.pki.admin.token,
            ca_file=str(files.ca_cert),
        )

    def _api_send(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        """``method`` ``path`` with a JSON ``body``, from the control-plane namespace."""
        kube_plan, files = self._require()
        if self.pki is None:
            raise DataplaneError("the lab cluster is not started")
        return probe.send(
            kube_plan.cp_netns,
            method,
            f"https://127.0.0.1:{plan.APISERVER_PORT}{path}",
            body=body,
            token=self.pki.admin.token,
            ca_file=str(files.ca_cert),
        )

    def _api_ok(self, path: str) -> bool:
        return self.api_get(path)[0] == 200

    def _node_ready(self, name: str) -> bool:
        status, body = self.api_get(f"/api/v1/nodes/{name}")
        if status != 200:
            return False
        try:
            conditions = json.loads(body).get("status", {}).get("conditions", [])
        except ValueError:
            return False
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def proxy_metrics(self, index: int = 0) -> str:
        """kube-proxy's /metrics text on node ``index`` ("" when it does not answer)."""
        status, body = probe.get(self.node_netns(index), f"http://{plan.PROXY_METRICS}/metrics")
        return body.decode(errors="replace") if status == 200 else ""

    def proxy_synced(self, index: int = 0) -> bool:
        """Whether kube-proxy on node ``index`` has completed a rule sync."""
        value = probe.metric(
            self.proxy_metrics(index), "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
        )
        return value is not None and value > 0

    # ------------------------------------------------------------------ teardown

    def stop(self) -> None:
        """Stop every process and remove the namespaces, mounts, cgroups and files.

        Ctrl-C and SIGTERM arriving meanwhile wait until it is done.
        """
        with self._signals_deferred():
            self._stop()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stopping = True
        errors: list[str] = []
        processes = list(self.processes.values())
        agents = [p for p in processes if p.name.startswith("agent-")]
        proxies = [p for p in processes if p.name.startswith("kube-proxy-")]
        cp = [p for p in processes if p.name in ("kube-controller-manager", "kube-scheduler")]
        # Agents first, with SIGTERM: they delete their pods through the API and remove the
        # pods' namespaces. Everything else holds nothing worth a graceful exit (etcd's data
        # is on a tmpfs about to go, kube-proxy's rules live in a namespace about to go), and
        # the controller-manager's graceful shutdown can take longer than the whole boot:
        # SIGKILL, clients of the API server before the API server, etcd last.
        killed = stop_all(agents, timeout=AGENT_STOP_TIMEOUT)
        # The eBPF controller detaches its program and unmounts its bpffs on SIGTERM.
        killed += stop_all(
            [p for p in processes if p.name == EBPFCTL], timeout=EBPFCTL_STOP_TIMEOUT
        )
        if killed:
            errors.append(f"had to SIGKILL {', '.join(killed)} (did not stop in time)")
        for group in (
            proxies + cp,
            [p for p in processes if p.name == "kube-apiserver"],
            [p for p in processes if p.name == "etcd"],
        ):
            kill_all(group)
        if self.forwarder is not None:
            self.forwarder.close()
        if self.cgroup is not None:
            kill_cgroup(self.cgroup)  # whatever the agents left (pods), clients
        if self.files is not None and self.dataplane == "ebpf":
            errors += self._remove_ebpf_leftovers()
        if self.topology is not None:
            errors += self.topology.destroy(
                tuple(self.agent_netns_prefix(name) for name in self.node_names)
            )
        if self._mounted is not None:
            done = _proc.run(["umount", str(self._mounted)], check=False)
            if done.returncode != 0:
                errors.append(f"umount {self._mounted}: {done.stderr.strip()}")
            else:
                self._mounted = None
        if self.cgroup is not None:
            errors += remove_cgroup(self.cgroup)
        if self.files is not None and self._mounted is None:
            shutil.rmtree(self.files.root, ignore_errors=True)
        if self._own_session and self._session is not None:
            from ..cleanup import remove_session

            remove_session(self._session.prefix)
        if errors:
            raise DataplaneError("lab cluster cleanup incomplete: " + "; ".join(errors))

    def _remove_ebpf_leftovers(self) -> list[str]:
        """What a controller that could not exit cleanly left: its bpffs mount (the pins) and
        its program's attachment to the clients' cgroup."""
        from ..ebpf import remove_leftovers

        errors: list[str] = []
        try:
            remove_leftovers(self.ebpf_state_dir)
        except DataplaneError as exc:
            errors.append(str(exc))
        cgroup = self._client_cgroup
        if cgroup is not None and cgroup.is_dir():
            for program, attach_type in attached_programs(cgroup):
                done = _proc.run(
                    ["bpftool", "cgroup", "detach", str(cgroup), attach_type, "id", str(program)],
                    check=False,
                )
                if done.returncode != 0:
                    errors.append(f"detach BPF program {program}: {done.stderr.strip()}")
        return errors


def run_kubectl(
    lab: KubeLab, *args: str, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the lab's kubectl with ``args`` on the admin kubeconfig (for tools and tests)."""
    done = subprocess.run(
        [*lab.kubectl(), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise DataplaneError(f"kubectl {' '.join(args)} failed: {done.stderr.strip()}")
    return done
