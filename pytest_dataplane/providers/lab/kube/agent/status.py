"""What the agent writes to the API: pod statuses, the Node and its Lease: pure.

:class:`ContainerRun` is a container as a pod worker runs it (its plan, its process, its
restarts); :meth:`ContainerRun.view` is what its status says (:class:`ContainerView`), and
:func:`pod_status` the pod's status with the kubelet's phases and conditions.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from ....k8s.resources import LAB_RUNTIME
from .config import NodeConfig
from .containers import IMAGE_NAME, ContainerPlan, PodConfigError, image_ref, restart_delay

__all__ = [
    "ContainerRun",
    "ContainerView",
    "Terminated",
    "ended_phase",
    "lease_body",
    "lift_not_ready_taint",
    "micro_time",
    "node_body",
    "node_status",
    "pod_phase",
    "pod_status",
    "rfc3339",
]

LEASE_NAMESPACE: Final = "kube-node-lease"
LEASE_DURATION: Final = 40  # seconds, the kubelet's default
CONTAINER_ID_SCHEME: Final = "lab"


def rfc3339(wall: float) -> str:
    """An API ``Time`` (seconds, UTC)."""
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(wall: float) -> str:
    """An API ``MicroTime`` (microseconds, UTC)."""
    return datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Terminated:
    """How a container run ended."""

    exit_code: int
    reason: str
    started_at: float
    finished_at: float
    container_id: str

    def as_api(self) -> dict[str, Any]:
        return {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": rfc3339(self.started_at),
            "finishedAt": rfc3339(self.finished_at),
            "containerID": self.container_id,
        }


@dataclass(frozen=True)
class ContainerView:
    """One container's state, as its status reports it. ``state`` is ``waiting``,
    ``running`` or ``terminated``; times are wall-clock seconds."""

    name: str
    image: str
    state: str
    version: str | None = None
    reason: str | None = None
    message: str | None = None
    started_at: float | None = None
    ready: bool = False
    restart_count: int = 0
    container_id: str | None = None
    terminated: Terminated | None = None  # the current run's end, when state == terminated
    last_terminated: Terminated | None = None

    def as_api(self) -> dict[str, Any]:
        if self.state == "running":
            state: dict[str, Any] = {"running": {"startedAt": rfc3339(self.started_at or 0.0)}}
        elif self.state == "terminated" and self.terminated is not None:
            state = {"terminated": self.terminated.as_api()}
        else:
            waiting: dict[str, Any] = {"reason": self.reason or "ContainerCreating"}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        status: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": f"{CONTAINER_ID_SCHEME}://{_image_name(self.image)}:{self.version}"
            if self.version
            else "",
            "ready": self.ready,
            "started": self.state == "running",
            "restartCount": self.restart_count,
            "state": state,
            "lastState": (
                {"terminated": self.last_terminated.as_api()} if self.last_terminated else {}
            ),
        }
        if self.container_id and self.state != "waiting":
            status["containerID"] = self.container_id
        return status


def _image_name(image: str) -> str:
    try:
        return image_ref(image)[0]
    except PodConfigError:
        return IMAGE_NAME


def pod_phase(containers: Sequence[ContainerView], restart_policy: str) -> str:
    """The pod phase the kubelet derives from its containers' states."""
    if not containers:
        return "Pending"
    if any(c.state == "waiting" and c.last_terminated is None for c in containers):
        return "Pending"
    if any(c.state == "running" for c in containers):
        return "Running"
    if any(c.state == "waiting" for c in containers):
        return "Running"  # restarting, after a back-off
    if restart_policy == "Always":
        return (
            "Running" if any(c.terminated is None for c in containers) else ended_phase(containers)
        )
    return ended_phase(containers)


def ended_phase(containers: Sequence[ContainerView]) -> str:
    """The phase of a pod whose containers all ended: Succeeded if every one exited 0."""
    codes = [c.terminated.exit_code if c.terminated else 1 for c in containers]
    return "Succeeded" if all(code == 0 for code in codes) else "Failed"


def _condition(
    kind: str, ok: bool, wall: float, previous: Mapping[str, tuple[bool, float]], **extra: str
) -> dict[str, Any]:
    before = previous.get(kind)
    since = before[1] if before is not None and before[0] == ok else wall
    condition: dict[str, Any] = {
        "type": kind,
        "status": "True" if ok else "False",
        "lastProbeTime": None,
        "lastTransitionTime": rfc3339(since),
    }
    if not ok:
        condition.update(extra)
    return condition


def pod_status(
    *,
    containers: Sequence[ContainerView],
    restart_policy: str,
    pod_ip: str | None,
    host_ip: str,
    start_time: float,
    wall: float,
    previous: Mapping[str, tuple[bool, float]],
    sandbox_ready: bool,
    scheduled: bool,
    readiness_gates: Sequence[str] = (),
    gate_status: Mapping[str, bool] | None = None,
    phase: str | None = None,
) -> dict[str, Any]:
    """The ``status`` the agent writes for a pod (a strategic-merge patch body).

    ``previous`` maps condition types to (status, last transition time) from the last
    status written, so that transition times move only on transitions. ``scheduled`` says
    whether the pod already carries a PodScheduled condition (the scheduler's); if not (a pod
    created with ``nodeName``), the agent adds it, as the kubelet does. Conditions of other
    writers (readiness gates, disruption targets) are left alone by the merge.
    """
    unready = [c.name for c in containers if not c.ready]
    containers_ready = bool(containers) and not unready
    gates = gate_status or {}
    open_gates = [g for g in readiness_gates if not gates.get(g, False)]
    not_ready_detail = {
        "reason": "ContainersNotReady",
        "message": f"containers with unready status: [{' '.join(unready)}]",
    }
    ready_detail = dict(not_ready_detail)
    if containers_ready and open_gates:
        ready_detail = {
            "reason": "ReadinessGatesNotReady",
            "message": f"corresponding condition of pod readiness gate {open_gates[0]!r} "
            "does not exist or is not True",
        }
    conditions = [
        _condition("PodReadyToStartContainers", sandbox_ready, wall, previous),
        _condition("Initialized", True, wall, previous),
        _condition("ContainersReady", containers_ready, wall, previous, **not_ready_detail),
        _condition("Ready", containers_ready and not open_gates, wall, previous, **ready_detail),
    ]
    if not scheduled:
        conditions.append(_condition("PodScheduled", True, wall, previous))
    status: dict[str, Any] = {
        "phase": phase or pod_phase(containers, restart_policy),
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "startTime": rfc3339(start_time),
        "containerStatuses": [c.as_api() for c in containers],
    }
    if pod_ip is not None:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return status


def _memory_kib() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def node_body(config: NodeConfig, *, pods: int, wall: float, version: str) -> dict[str, Any]:
    """The Node object the agent registers (with its status: nodes accept it on create)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": config.name,
            "labels": {
                "kubernetes.io/hostname": config.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": _arch(),
                "node.pytest-dataplane.io/lab": "true",
            },
        },
        "spec": {"podCIDR": config.pod_cidr, "podCIDRs": [config.pod_cidr]},
        "status": node_status(config, pods=pods, wall=wall, ready_since=wall, version=version),
    }


NOT_READY_TAINT: Final = "node.kubernetes.io/not-ready"


def lift_not_ready_taint(node: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch that lifts the not-ready taint from a Node, or None if it has none.

    The API server's TaintNodesByCondition admission puts ``node.kubernetes.io/not-ready``
    on every new Node; in a cluster the node lifecycle controller lifts it once the node
    reports Ready. The lab runs no such controller, so the agent lifts it itself when it
    reports Ready (harmless where the controller runs: both want the same). The patch carries
    the resourceVersion read, so it fails rather than drop a taint someone added meanwhile.
    """
    taints = list((node.get("spec") or {}).get("taints") or [])
    kept = [t for t in taints if t.get("key") != NOT_READY_TAINT]
    if len(kept) == len(taints):
        return None
    return {
        "metadata": {"resourceVersion": (node.get("metadata") or {}).get("resourceVersion")},
        "spec": {"taints": kept or None},
    }


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def node_status(
    config: NodeConfig, *, pods: int, wall: float, ready_since: float, version: str
) -> dict[str, Any]:
    """The Node's status: addresses, capacity, and conditions with ``wall`` as heartbeat."""
    resources = {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{_memory_kib()}Ki",
        "pods": str(pods),
    }

    def condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True" if ok else "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": rfc3339(wall),
            "lastTransitionTime": rfc3339(ready_since),
        }

    return {
        "addresses": [
            {"type": "InternalIP", "address": config.internal_ip},
            {"type": "Hostname", "address": config.name},
        ],
        "capacity": dict(resources),
        "allocatable": dict(resources),
        "conditions": [
            condition("MemoryPressure", False, "KubeletHasSufficientMemory", "no memory pressure"),
            condition("DiskPressure", False, "KubeletHasNoDiskPressure", "no disk pressure"),
            condition("PIDPressure", False, "KubeletHasSufficientPID", "no PID pressure"),
            condition("Ready", True, "KubeletReady", "the lab node agent is posting ready status"),
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
        "nodeInfo": {
            "architecture": _arch(),
            "bootID": _boot_id(),
            "containerRuntimeVersion": f"{LAB_RUNTIME}1",
            "kernelVersion": os.uname().release,
            "kubeProxyVersion": "",
            "kubeletVersion": version,
            "machineID": "",
            "operatingSystem": "linux",
            "osImage": "pytest-dataplane lab node",
            "systemUUID": "",
        },
    }


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def lease_body(node: str, node_uid: str | None, *, wall: float) -> dict[str, Any]:
    """The node's Lease in ``kube-node-lease``, owned by the Node (so it goes with it)."""
    metadata: dict[str, Any] = {"name": node, "namespace": LEASE_NAMESPACE}
    if node_uid:
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
        ]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_DURATION,
            "renewTime": micro_time(wall),
        },
    }


@dataclass
@dataclass
class ContainerRun:
    """One container of a pod worker: its plan (or why it cannot run) and its runs."""

    spec_name: str
    spec_image: str
    plan: ContainerPlan | None
    error: PodConfigError | None
    process: subprocess.Popen[bytes] | None = None
    generation: int = 0
    started_at: float | None = None  # wall clock of the current run
    started_mono: float = 0.0
    ready: bool = False
    restart_count: int = 0
    crashes: int = 0
    terminated: Terminated | None = None
    last_terminated: Terminated | None = None
    restart_at: float | None = None  # monotonic, while backing off
    term_at: float | None = None  # monotonic SIGTERM / SIGKILL deadlines while terminating
    kill_at: float | None = None
    term_sent: bool = False
    kill_sent: bool = False

    def container_id(self, uid: str) -> str:
        """The container ID of the current run, as its status reports it."""
        return f"{CONTAINER_ID_SCHEME}://{uid[:8]}-{self.spec_name}-{self.generation}"

    def view(self, uid: str) -> ContainerView:
        """The container's state as its status reports it."""
        version = self.plan.version if self.plan else None
        if self.error is not None:
            return ContainerView(
                self.spec_name,
                self.spec_image,
                "waiting",
                reason=self.error.reason,
                message=str(self.error),
                restart_count=self.restart_count,
                last_terminated=self.last_terminated,
            )
        if self.process is not None:
            return ContainerView(
                self.spec_name,
                self.spec_image,
                "running",
                version=version,
                started_at=self.started_at,
                ready=self.ready,
                restart_count=self.restart_count,
                container_id=self.container_id(uid),
                last_terminated=self.last_terminated,
            )
        if self.terminated is not None:
            return ContainerView(
                self.spec_name,
                self.spec_image,
                "terminated",
                version=version,
                restart_count=self.restart_count,
                container_id=self.terminated.container_id,
                terminated=self.terminated,
                last_terminated=self.last_terminated,
            )
        if self.restart_at is not None:
            delay = restart_delay(self.crashes)
            return ContainerView(
                self.spec_name,
                self.spec_image,
                "waiting",
                version=version,
                reason="CrashLoopBackOff",
                message=f"back-off {delay:g}s restarting failed container={self.spec_name}",
                restart_count=self.restart_count,
                last_terminated=self.last_terminated,
            )
        return ContainerView(
            self.spec_name,
            self.spec_image,
            "waiting",
            version=version,
            reason="ContainerCreating",
            restart_count=self.restart_count,
            last_terminated=self.last_terminated,
        )
