"""The lab's node agent: it plays the kubelet for one node of a lab Kubernetes cluster.

Run as ``python -m pytest_dataplane.providers.lab.kube.agent --kubeconfig PATH --node-config
PATH`` (the control plane starts one per node, in that node's network namespace). It

- registers the Node (InternalIP, capacity, podCIDR, a Ready condition with heartbeats) and
  renews its Lease in ``kube-node-lease`` as a kubelet does (every 10 s, for 40 s);
- watches the pods bound to the node (a field selector), resuming from the last
  resourceVersion and relisting when the API answers 410 Gone;
- runs each pod in a network namespace of its own on the node's bridge, with an address from
  the node's pod CIDR, each container as the lab backend process
  (:mod:`pytest_dataplane.providers.lab.backend`), whose version label comes from the image
  (``backend:v2`` answers ``X-Version: v2``); the Kubernetes e2e image ``agnhost`` running
  ``netexec`` (what the kind and kubeconfig providers deploy) runs as the same backend, which
  answers ``/hostname`` and every other path with the pod's name, as netexec's ``/hostname``
  does, on netexec's ``--http-port``, keeping netexec's ``--delay-shutdown``; the pod is
  Ready once every backend listens
  (each prints ``READY`` on its stdout when its socket accepts connections); two spare
  backends wait ready-imported (``backend --spare``), so a pod does not wait for an
  interpreter to start;
- restarts containers that exit as the pod's restart policy says, with the kubelet's back-off;
- on deletion keeps the pod serving through its grace period (or its preStop sleep), then
  stops the processes (SIGTERM, SIGKILL when the time is up), removes the pod's namespace and
  deletes the Pod, as a kubelet finalises it.

The computing part (images, container plans, addresses, statuses, schedules) is pure and
unit-tested; the I/O part is one thread per purpose, each with its own API client: the
heartbeats (Node status and Lease), the pod watch, and one worker per pod that owns the pod's
processes and namespace and writes its status.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ipaddress
import json
import logging
import math
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from ....config import ServiceTime
from ....errors import DataplaneError

__all__ = [
    "ACCEPTED_IMAGES",
    "ContainerPlan",
    "ContainerView",
    "NodeConfig",
    "PodAddresses",
    "PodConfigError",
    "StopSchedule",
    "image_ref",
    "image_version",
    "lease_body",
    "lift_not_ready_taint",
    "main",
    "netexec_args",
    "node_body",
    "node_status",
    "plan_container",
    "pod_phase",
    "pod_status",
    "restart_delay",
    "stop_schedule",
]

log = logging.getLogger("pytest_dataplane.lab.agent")

LEASE_NAMESPACE: Final = "kube-node-lease"
LEASE_DURATION: Final = 40  # seconds, the kubelet's default
LEASE_RENEW: Final = 10.0  # a quarter of the duration, as the kubelet renews
NODE_STATUS_PERIOD: Final = 60.0  # heartbeats in the Node's conditions (the Lease is the beat)
WATCH_TIMEOUT: Final = 300  # seconds a watch request lasts before it is renewed
REQUEST_TIMEOUT: Final = (5.0, 30.0)  # connect, read: no API call may hang a thread forever
MIN_KILL_GRACE: Final = 2.0  # the kubelet's minimum time between SIGTERM and SIGKILL
DEFAULT_GRACE: Final = 30.0
DEFAULT_PORT: Final = 80
SPARES: Final = 2  # backends kept started, waiting to become the next pods
BACKOFF_FIRST: Final = 10.0
BACKOFF_MAX: Final = 300.0
BACKOFF_RESET: Final = 600.0  # a container running this long starts a fresh back-off
IMAGE_NAME: Final = "backend"
AGNHOST_NAME: Final = "agnhost"
ACCEPTED_IMAGES: Final = (
    "backend:<version> (e.g. backend:v1, answering X-Version: v1) or agnhost:<version> "
    "running netexec (registry.k8s.io/e2e-test-images/agnhost:2.53), optionally behind a "
    "registry path (registry.local/lab/backend:v2); no tag means :latest"
)
ACCEPTED_ARGS: Final = "--service-time SPEC, --seed N, --drain SECONDS"
ACCEPTED_NETEXEC_ARGS: Final = (
    "netexec followed by --http-port=N, --delay-shutdown=SECONDS, --udp-port=-1, "
    "--sctp-port=-1 (the lab backend serves HTTP only)"
)
NETEXEC_PORT: Final = 8080  # netexec's default --http-port
_AGNHOST_COMMANDS: Final = (["/agnhost"], ["agnhost"])
CONTAINER_ID_SCHEME: Final = "lab"
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PREFIX_RE = re.compile(r"^[a-z0-9]{1,10}$")
_IFNAMSIZ = 15
_SLEEP_BINARIES = ("sleep", "/bin/sleep", "/usr/bin/sleep")
_SHELLS = ("sh", "/bin/sh", "bash", "/bin/bash")
_PR_SET_PDEATHSIG = 1


# ====================================================================== configuration


@dataclass(frozen=True)
class NodeConfig:
    """What one agent needs to know about its node (the ``--node-config`` JSON file)."""

    name: str  # the Node object's name
    netns: str  # the node's network namespace (with its bridge)
    bridge: str  # the bridge in the node namespace that pod veths attach to
    gateway: str  # the bridge's address: the pods' default route (inside pod_cidr)
    internal_ip: str  # the node's InternalIP
    pod_cidr: str  # the node's pod CIDR (IPv4): the agent allocates pod addresses in it
    prefix: str  # the session prefix: every namespace and veth the agent makes starts with it
    run_dir: str  # where pod logs go
    max_pods: int | None = None  # the Node's pod capacity; None: every address of pod_cidr

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name != "max_pods" and (not isinstance(value, str) or not value):
                raise ValueError(f"node config: {item.name} must be a non-empty string")
        if not _PREFIX_RE.match(self.prefix):
            raise ValueError(
                f"node config: prefix {self.prefix!r} is not accepted; accepted: 1-10 lower-case "
                "letters or digits (veth names are the prefix, 'v' and 5 hex digits: at most "
                f"{_IFNAMSIZ} characters)"
            )
        try:
            network = ipaddress.IPv4Network(self.pod_cidr)
        except ValueError:
            raise ValueError(
                f"node config: pod_cidr {self.pod_cidr!r} is not accepted; accepted: an IPv4 "
                "network such as 10.64.0.0/24"
            ) from None
        if not 12 <= network.prefixlen <= 30:
            raise ValueError(
                f"node config: pod_cidr {self.pod_cidr!r} is not accepted; accepted: a prefix "
                "length from /12 to /30"
            )
        try:
            gateway = ipaddress.IPv4Address(self.gateway)
            ipaddress.ip_address(self.internal_ip)
        except ValueError as exc:
            raise ValueError(f"node config: {exc}") from None
        if gateway not in network:
            raise ValueError(
                f"node config: gateway {self.gateway} is outside pod_cidr {self.pod_cidr}; the "
                "pods' default route must be on their own subnet"
            )
        if self.max_pods is not None and (
            isinstance(self.max_pods, bool) or not isinstance(self.max_pods, int)
        ):
            raise ValueError(f"node config: max_pods {self.max_pods!r} must be an integer")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NodeConfig:
        """Read a node config JSON file; a clear ValueError for a bad one."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"node config {os.fspath(path)!r}: cannot read it: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> NodeConfig:
        """A config from its JSON form, naming unknown and missing keys."""
        if not isinstance(data, dict):
            raise ValueError("node config: expected a JSON object")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"node config: unknown keys {unknown}; accepted: {', '.join(sorted(known))}"
            )
        required = {item.name for item in fields(cls) if item.name != "max_pods"}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"node config: missing keys {missing}")
        return cls(**data)

    def to_json(self) -> str:
        """The JSON form :meth:`load` reads."""
        return json.dumps(asdict(self), indent=2)

    def pod_netns(self, pod_name: str, uid: str) -> str:
        """The network namespace of one pod: ``<prefix>-pod-<node>-<pod>-<uid[:8]>``.

        The uid part keeps a re-created pod of the same name (a StatefulSet's) apart from
        the one still terminating.
        """
        return f"{self.prefix}-pod-{self.name}-{pod_name[:100]}-{uid[:8]}"


class PodConfigError(DataplaneError):
    """A container the agent cannot run as specified. ``reason`` is what its status says
    (``ErrImagePull``, ``CreateContainerConfigError``, ``RunContainerError``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ====================================================================== images and containers


def image_version(image: str) -> str:
    """The backend version an image selects: ``backend:v2`` -> ``"v2"``,
    ``registry.k8s.io/e2e-test-images/agnhost:2.53`` -> ``"2.53"``.

    Any registry path in front of ``backend`` or ``agnhost`` is accepted; no tag means
    ``latest``, as for a container runtime. Anything else raises :class:`PodConfigError`
    (``ErrImagePull``): the lab has no images, only its backend.
    """
    return image_ref(image)[1]


def image_ref(image: str) -> tuple[str, str]:
    """``(name, version)`` of a lab image: name ``backend`` or ``agnhost``; raises
    :class:`PodConfigError` as :func:`image_version` does."""
    ref = image.strip() if isinstance(image, str) else ""
    if not ref:
        raise PodConfigError(
            "InvalidImageName", f"image {image!r} is empty; accepted: {ACCEPTED_IMAGES}"
        )
    if "@" in ref:
        raise PodConfigError(
            "ErrImagePull",
            f"image {image!r}: digests are not accepted in the lab; accepted: {ACCEPTED_IMAGES}",
        )
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    repository, tag = (ref[:colon], ref[colon + 1 :]) if colon > slash else (ref, "latest")
    name = repository.rsplit("/", 1)[-1]
    if name not in (IMAGE_NAME, AGNHOST_NAME) or not _TAG_RE.match(tag):
        raise PodConfigError(
            "ErrImagePull",
            f"image {image!r} is not a lab image (the lab runs only its HTTP backend); "
            f"accepted: {ACCEPTED_IMAGES}",
        )
    return name, tag


@dataclass(frozen=True)
class ContainerPlan:
    """How one container of a pod runs as the lab backend."""

    name: str
    image: str
    version: str
    port: int = DEFAULT_PORT
    service_time: str | None = None
    seed: int | None = None
    drain: float | None = None
    prestop_sleep: float | None = None  # seconds of a preStop sleep hook
    prestop_unsupported: str | None = None  # a preStop hook the lab cannot run, described
    # Seconds the application keeps serving after SIGTERM (netexec's --delay-shutdown; 0 for
    # netexec without it, which exits on SIGTERM). None: the lab backend's own behaviour,
    # an application serving through its grace period.
    shutdown_delay: float | None = None

    def argv(self, pod_name: str, parent: int) -> list[str]:
        """The backend's command line (without the namespace entry)."""
        argv = [
            sys.executable,
            "-m",
            "pytest_dataplane.providers.lab.backend",
            "--name",
            pod_name,
            "--port",
            str(self.port),
            "--version",
            self.version,
            "--parent",
            str(parent),
        ]
        if self.service_time is not None:
            argv += ["--service-time", self.service_time]
        if self.seed is not None:
            argv += ["--seed", str(self.seed)]
        if self.drain is not None:
            argv += ["--drain", repr(self.drain)]
        return argv

    def spare_line(self, pod_name: str, netns_path: str, log_path: str) -> bytes:
        """What a spare backend (``--spare``) reads to become this container."""
        spec = {
            "netns": netns_path,
            "log": log_path,
            "name": pod_name,
            "port": self.port,
            "version": self.version,
            "service_time": self.service_time,
            "seed": self.seed,
            "drain": self.drain,
        }
        return json.dumps(spec).encode() + b"\n"


def _container_port(container: Mapping[str, Any]) -> int:
    for port in container.get("ports") or []:
        if (port.get("protocol") or "TCP") == "TCP" and port.get("containerPort"):
            return int(port["containerPort"])
    return DEFAULT_PORT


def _seconds_arg(name: str, flag: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise PodConfigError(
            "CreateContainerConfigError",
            f"container {name}: {flag} {value!r} is not accepted; accepted: seconds >= 0",
        )
    return seconds


def netexec_args(name: str, words: Sequence[Any]) -> tuple[int, float]:
    """``(http port, shutdown delay)`` of an ``agnhost netexec`` command line (``words``
    without ``/agnhost``); :class:`PodConfigError` names what the lab cannot serve."""
    tokens = [str(w) for w in words]
    if not tokens or tokens[0] != "netexec":
        raise PodConfigError(
            "RunContainerError",
            f"container {name}: agnhost {' '.join(tokens) or '(no subcommand)'!s} cannot run: "
            f"the lab runs agnhost's netexec only; accepted: {ACCEPTED_NETEXEC_ARGS}",
        )
    port, delay = NETEXEC_PORT, 0.0
    i = 1
    while i < len(tokens):
        key, has_value, value = tokens[i].partition("=")
        if key not in ("--http-port", "--delay-shutdown", "--udp-port", "--sctp-port"):
            raise PodConfigError(
                "CreateContainerConfigError",
                f"container {name}: netexec argument {tokens[i]!r} is not accepted by the lab "
                f"backend; accepted: {ACCEPTED_NETEXEC_ARGS}",
            )
        if not has_value:
            if i + 1 >= len(tokens):
                raise PodConfigError(
                    "CreateContainerConfigError", f"container {name}: {key} needs a value"
                )
            i += 1
            value = tokens[i]
        if key == "--http-port":
            if not value.isdigit() or not 1 <= int(value) <= 65535:
                raise PodConfigError(
                    "CreateContainerConfigError",
                    f"container {name}: --http-port {value!r} is not accepted; accepted: 1 "
                    "to 65535",
                )
            port = int(value)
        elif key == "--delay-shutdown":
            delay = _seconds_arg(name, key, value)
        elif value != "-1":
            raise PodConfigError(
                "CreateContainerConfigError",
                f"container {name}: {key} {value!r} is not accepted: the lab backend serves "
                f"HTTP only; accepted: {key}=-1",
            )
        i += 1
    return port, delay


def _backend_args(name: str, args: Sequence[Any]) -> dict[str, str]:
    options: dict[str, str] = {}
    tokens = [str(a) for a in args]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        key, has_value, value = token.partition("=")
        if key not in ("--service-time", "--seed", "--drain"):
            raise PodConfigError(
                "CreateContainerConfigError",
                f"container {name}: argument {token!r} is not accepted by the lab backend; "
                f"accepted: {ACCEPTED_ARGS}",
            )
        if not has_value:
            if i + 1 >= len(tokens):
                raise PodConfigError(
                    "CreateContainerConfigError", f"container {name}: {key} needs a value"
                )
            i += 1
            value = tokens[i]
        options[key] = value
        i += 1
    return options


def prestop_sleep(container: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """The seconds a container's preStop hook sleeps, or a description of a hook the lab
    cannot run (``(None, "...")``); ``(None, None)`` without a hook.

    Accepted: the ``sleep`` action (``preStop: {sleep: {seconds: N}}``) and an exec hook that
    only sleeps (``sleep N``, ``/bin/sleep N``, ``sh -c "sleep N"``).
    """
    hook = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if not hook:
        return None, None
    if "sleep" in hook:
        return float((hook["sleep"] or {}).get("seconds", 0)), None
    command = [str(c) for c in ((hook.get("exec") or {}).get("command") or [])]
    if len(command) == 3 and command[0] in _SHELLS and command[1] == "-c":
        command = shlex.split(command[2])
    if len(command) == 2 and command[0] in _SLEEP_BINARIES:
        text = command[1].removesuffix("s")
        try:
            seconds = float(text)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds) and seconds >= 0:
            return seconds, None
    kind = next(iter(hook))
    return None, f"preStop {kind} hook {json.dumps(hook[kind])} (the lab runs only sleeps)"


def plan_container(container: Mapping[str, Any]) -> ContainerPlan:
    """How a pod spec's container runs as the lab backend; :class:`PodConfigError` if it
    cannot (the message names the value and what is accepted)."""
    name = str(container.get("name") or "")
    image = str(container.get("image") or "")
    kind, version = image_ref(image)
    command = [str(c) for c in container.get("command") or []]
    port: int | None = None
    shutdown_delay: float | None = None
    if kind == AGNHOST_NAME:
        # agnhost's entrypoint is /agnhost; a command naming it is the same program.
        if command and command[:1] not in _AGNHOST_COMMANDS:
            raise PodConfigError(
                "RunContainerError",
                f"container {name}: command {container['command']!r} cannot run: the lab "
                f"runs agnhost's netexec only; accepted: {ACCEPTED_NETEXEC_ARGS}",
            )
        port, shutdown_delay = netexec_args(name, [*command[1:], *(container.get("args") or [])])
        options: dict[str, str] = {}
    else:
        if command:
            raise PodConfigError(
                "RunContainerError",
                f"container {name}: command {container['command']!r} cannot run: the lab "
                f"image runs only the lab backend; leave command unset and pass "
                f"{ACCEPTED_ARGS} as args",
            )
        options = _backend_args(name, container.get("args") or [])
    for env in container.get("env") or []:
        if env.get("name") == "SERVICE_TIME" and "--service-time" not in options:
            if env.get("value") is None:
                raise PodConfigError(
                    "CreateContainerConfigError",
                    f"container {name}: SERVICE_TIME must be a plain value (valueFrom is not "
                    "supported in the lab)",
                )
            options["--service-time"] = str(env["value"])
    service_time = options.get("--service-time")
    seed = drain = None
    try:
        if service_time is not None:
            ServiceTime.parse(service_time)
        if "--seed" in options:
            seed = int(options["--seed"])
        if "--drain" in options:
            drain = float(options["--drain"])
            if not math.isfinite(drain) or drain < 0:
                raise ValueError(f"--drain {options['--drain']!r} must be >= 0 seconds")
    except ValueError as exc:
        raise PodConfigError("CreateContainerConfigError", f"container {name}: {exc}") from None
    sleep, unsupported = prestop_sleep(container)
    return ContainerPlan(
        name=name,
        image=image,
        version=version,
        port=_container_port(container) if port is None else port,
        service_time=service_time,
        seed=seed,
        drain=drain,
        prestop_sleep=sleep,
        prestop_unsupported=unsupported,
        shutdown_delay=shutdown_delay,
    )


# ====================================================================== addresses


class PodAddresses:
    """Pod addresses of a node's pod CIDR, handed out round-robin as host-local IPAM does
    (an address just freed is the last to be reused), without the network, broadcast and
    gateway addresses."""

    def __init__(self, cidr: str, gateway: str) -> None:
        self.network = ipaddress.IPv4Network(cidr)
        self._base = int(self.network.network_address)
        self._size = self.network.num_addresses
        self._excluded = {0, self._size - 1, int(ipaddress.IPv4Address(gateway)) - self._base}
        self._used: set[int] = set()
        self._next = 1

    @property
    def prefixlen(self) -> int:
        return self.network.prefixlen

    @property
    def capacity(self) -> int:
        """How many pod addresses the CIDR holds."""
        return self._size - len(self._excluded)

    @property
    def in_use(self) -> int:
        return len(self._used)

    def offset(self, ip: str) -> int:
        """The address's position in the CIDR (for names derived from it)."""
        return int(ipaddress.IPv4Address(ip)) - self._base

    def allocate(self) -> str:
        """The next free address; DataplaneError when the CIDR is full."""
        for step in range(self._size):
            candidate = (self._next + step) % self._size
            if candidate not in self._excluded and candidate not in self._used:
                self._used.add(candidate)
                self._next = (candidate + 1) % self._size
                return str(ipaddress.IPv4Address(self._base + candidate))
        raise DataplaneError(
            f"pod CIDR {self.network} is full: all {self.capacity} pod addresses are in use"
        )

    def reserve(self, ip: str) -> bool:
        """Take ``ip`` if it is a free pod address of the CIDR (a pod keeping its address)."""
        try:
            address = ipaddress.IPv4Address(ip)
        except ValueError:
            return False
        offset = int(address) - self._base
        if address not in self.network or offset in self._excluded or offset in self._used:
            return False
        self._used.add(offset)
        return True

    def release(self, ip: str) -> None:
        """Give ``ip`` back."""
        self._used.discard(self.offset(ip))


def veth_name(prefix: str, offset: int) -> str:
    """The node-side veth of the pod at ``offset`` in the pod CIDR: ``<prefix>v<hex>``."""
    name = f"{prefix}v{offset:x}"
    if len(name) > _IFNAMSIZ:
        raise DataplaneError(f"veth name {name!r} is longer than {_IFNAMSIZ} characters")
    return name


# ====================================================================== schedules


@dataclass(frozen=True)
class StopSchedule:
    """When a deleted pod's container gets SIGTERM and SIGKILL, in seconds from the moment
    the agent saw the deletion."""

    term_after: float
    kill_after: float


def pod_grace(pod: Mapping[str, Any]) -> float:
    """The pod's grace period: the deletion's own, else the spec's, else 30 s."""
    meta = pod.get("metadata") or {}
    if meta.get("deletionGracePeriodSeconds") is not None:
        return max(0.0, float(meta["deletionGracePeriodSeconds"]))
    spec_grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    return max(0.0, float(spec_grace)) if spec_grace is not None else DEFAULT_GRACE


def stop_schedule(
    grace: float, prestop: float | None, shutdown_delay: float | None = None
) -> StopSchedule:
    """When to stop a container of a deleted pod.

    With a preStop sleep, the container serves while the hook sleeps (cut at the grace
    period), then gets SIGTERM, and SIGKILL when the grace period is over, but no sooner
    than 2 s after SIGTERM (the kubelet's minimum). Without a hook the lab backend stands
    for an application that keeps serving through its grace period: SIGTERM when it ends
    (the backend then refuses new connections and finishes what it serves), SIGKILL 2 s later.

    ``shutdown_delay`` is an application's own delay after SIGTERM (netexec's
    ``--delay-shutdown``: it serves that long, then exits): the backend gets its SIGTERM that
    much later, so it stops serving when netexec would (cut at the grace period).
    """
    grace = max(0.0, grace)
    if shutdown_delay is None:
        term = grace if prestop is None else min(max(0.0, prestop), grace)
    else:
        term = min(max(0.0, prestop or 0.0) + max(0.0, shutdown_delay), grace)
    return StopSchedule(term, max(grace, term + MIN_KILL_GRACE))


def restart_delay(crashes: int) -> float:
    """The kubelet's back-off before restarting a container that exited ``crashes`` times in
    a row: at once after the first exit, then 10 s doubling up to 5 minutes."""
    if crashes <= 1:
        return 0.0
    return float(min(BACKOFF_FIRST * 2 ** (crashes - 2), BACKOFF_MAX))


def should_restart(policy: str, exit_code: int) -> bool:
    """Whether a container that exited with ``exit_code`` restarts under ``policy``."""
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


# ====================================================================== statuses


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
        return "Running" if any(c.terminated is None for c in containers) else _end(containers)
    return _end(containers)


def _end(containers: Sequence[ContainerView]) -> str:
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
            "containerRuntimeVersion": "pytest-dataplane-lab://1",
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


# ====================================================================== the API


class ApiError(DataplaneError):
    """The API server refused a request; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


class _Api:
    """One API client for one purpose (STYLE.md: watch and REST calls never share one).

    Requests go through the ``kubernetes`` client's configuration, authentication and
    connection pool, but bodies are plain JSON dicts both ways: the agent reads a handful of
    fields, and turning every pod event into the client's validated models costs CPU that
    the node's two cores need for the pods.
    """

    def __init__(self, kubeconfig: str, purpose: str) -> None:
        from kubernetes import client, config

        load: Any = config.load_kube_config
        configuration = client.Configuration()
        load(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = 16
        self.purpose = purpose
        self.client: Any = client.ApiClient(configuration)
        self.client.user_agent = f"pytest-dataplane-lab-agent/{purpose}"

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None,
        body: Any,
        content_type: str,
        timeout: tuple[float, float],
    ) -> Any:
        method, url, headers, body, _ = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query.items()) if query else None,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.rest_client.request(
                method, url, headers=headers, body=body, _request_timeout=timeout
            )
        except Exception as exc:  # connection refused, timeouts: no answer
            raise ApiError(0, f"{method} {path}: {exc}") from None
        raw = response.response
        if not 200 <= raw.status <= 299:
            try:
                detail = json.loads(raw.data).get("message", "")
            except (ValueError, AttributeError):
                detail = ""
            finally:
                raw.release_conn()
            raise ApiError(raw.status, f"{method} {path}: {raw.status} {detail}".strip())
        return raw

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        """Send one request and return the JSON answer; :class:`ApiError` if refused."""
        raw = self._send(
            method, path, query=query, body=body, content_type=content_type, timeout=timeout
        )
        try:
            data = raw.data
        finally:
            raw.release_conn()
        return json.loads(data) if data else {}

    def watch(self, path: str, query: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """Watch events of ``path`` (``query`` carries the resourceVersion to resume from)."""
        from kubernetes.watch import watch as client_watch

        iter_resp_lines: Any = client_watch.iter_resp_lines

        params = {**query, "watch": "true", "allowWatchBookmarks": "true"}
        params["timeoutSeconds"] = str(WATCH_TIMEOUT)
        timeout = (REQUEST_TIMEOUT[0], WATCH_TIMEOUT + 30.0)
        raw = self._send(
            "GET", path, query=params, body=None, content_type="application/json", timeout=timeout
        )
        try:
            for line in iter_resp_lines(raw):
                if line and not line.isspace():
                    yield json.loads(line)
        finally:
            raw.release_conn()

    def close(self) -> None:
        self.client.close()


def _pod_path(namespace: str, name: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"


# ====================================================================== containers and pods


@dataclass
class _Container:
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
        return f"{CONTAINER_ID_SCHEME}://{uid[:8]}-{self.spec_name}-{self.generation}"

    def view(self, uid: str) -> ContainerView:
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


class _PodWorker:
    """Owns one pod: its namespace, address, processes and status, on one thread.

    Everything that happens to the pod (a new version of the object, a backend ready or
    exited, the pod gone, the agent stopping) arrives as a message on its queue; timers
    (back-offs, SIGTERM and SIGKILL deadlines, retries) are the queue's wait timeout. The
    processes are started from this thread, which lives until they are gone: their parent-
    death signal follows the thread that forked them.
    """

    def __init__(self, agent: Agent, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        self.agent = agent
        self.pod = pod
        self.uid = str(meta["uid"])
        self.name = str(meta["name"])
        self.namespace = str(meta.get("namespace") or "default")
        self.key = f"{self.namespace}/{self.name}"
        self.messages: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.netns: str | None = None
        self.ip: str | None = None
        self.start_wall = time.time()
        self.seen = time.monotonic()  # for the start-up timings in the log
        self.sandbox_seconds: float | None = None
        self.containers: list[_Container] = []
        self.conditions: dict[str, tuple[bool, float]] = {}
        self.last_status: dict[str, Any] | None = None
        self.status_retry_at: float | None = None
        self.sandbox_error: str | None = None
        self.sandbox_retry_at: float | None = None
        self.sandbox_failures = 0
        self.terminating = False
        self.deletion_seen: float | None = None
        self.grace: float | None = None
        self.api_gone = False  # the Pod object is gone (or the agent is stopping): no API calls
        self.delete_retry_at: float | None = None
        self.passive = False  # an ended pod found at start: never write its status
        self.warned_images: set[str] = set()
        self.done = False
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.key}", daemon=True)

    # ------------------------------------------------------------------ messages

    def start(self) -> None:
        self.thread.start()

    def post(self, *message: Any) -> None:
        self.messages.put(message)

    def _run(self) -> None:
        try:
            self._begin()
            while True:
                self._tick()
                if self.done:
                    break
                deadline = self._next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    message = self.messages.get(timeout=timeout)
                except queue.Empty:
                    continue
                self._handle(message)
                while True:  # take what queued meanwhile: one status write for all of it
                    try:
                        self._handle(self.messages.get_nowait())
                    except queue.Empty:
                        break
        except Exception:
            log.exception("pod %s: worker failed; stopping its processes", self.key)
            self._kill_all(signal.SIGKILL)
            self._remove_sandbox()
        finally:
            self.agent._worker_done(self)

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "pod":
            self.pod = message[1]
            if (self.pod.get("metadata") or {}).get("deletionTimestamp"):
                self._begin_termination()
            images = {
                str(c.get("name")): str(c.get("image") or "")
                for c in (self.pod.get("spec") or {}).get("containers") or []
            }
            for each in self.containers:
                image = images.get(each.spec_name, each.spec_image)
                if image != each.spec_image and image not in self.warned_images:
                    # Deployments roll images with new pods; an image changed in place on a
                    # running pod is a case the lab does not handle: say so, once.
                    self.warned_images.add(image)
                    log.warning(
                        "pod %s: image of %s changed to %s in place; the lab agent keeps "
                        "running %s (replace the pod instead)",
                        self.key,
                        each.spec_name,
                        image,
                        each.spec_image,
                    )
        elif kind in ("gone", "shutdown"):
            self.api_gone = True
            self._begin_termination(immediate=True)
        elif kind == "ready":
            container = self._container(message[1], message[2])
            if container is not None and container.process is not None:
                container.ready = True
                log.info(
                    "pod %s: %s ready %.0f ms after the pod was seen (namespace %.0f ms)",
                    self.key,
                    container.spec_name,
                    1000 * (time.monotonic() - self.seen),
                    1000 * (self.sandbox_seconds or 0.0),
                )
        elif kind == "exited":
            container = self._container(message[1], message[2])
            if container is not None:
                self._exited(container, int(message[3]), float(message[4]))

    def _container(self, name: str, generation: int) -> _Container | None:
        for container in self.containers:
            if container.spec_name == name and container.generation == generation:
                return container
        return None  # a message about a run that has been replaced

    # ------------------------------------------------------------------ life cycle

    def _begin(self) -> None:
        spec = self.pod.get("spec") or {}
        meta = self.pod.get("metadata") or {}
        previous = {
            str(s.get("name")): int(s.get("restartCount") or 0)
            for s in (self.pod.get("status") or {}).get("containerStatuses") or []
        }
        for container in spec.get("containers") or []:
            name = str(container.get("name"))
            plan: ContainerPlan | None = None
            error: PodConfigError | None = None
            try:
                plan = plan_container(container)
            except PodConfigError as exc:
                error = exc
                log.warning("pod %s: container %s cannot run: %s", self.key, name, exc)
            self.containers.append(
                _Container(
                    name,
                    str(container.get("image") or ""),
                    plan,
                    error,
                    restart_count=previous.get(name, 0),
                )
            )
        if spec.get("initContainers"):
            for container in self.containers:
                container.plan = None
                container.error = PodConfigError(
                    "CreateContainerConfigError",
                    "init containers are not supported by the lab node agent",
                )
        phase = (self.pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            # A pod that has ended runs nothing again; its status stays as written, and it
            # is removed from the API when it is deleted.
            self.passive = True
        if meta.get("deletionTimestamp"):
            self._begin_termination()
        if self.passive or self.terminating:
            return
        self._create_sandbox()
        if self.netns is not None:
            for container in self.containers:
                if container.plan is not None:
                    self._start(container)

    def _create_sandbox(self) -> None:
        from .. import netns

        agent = self.agent
        previous_ip = (self.pod.get("status") or {}).get("podIP")
        try:
            with agent.lock:
                if previous_ip and agent.addresses.reserve(str(previous_ip)):
                    ip = str(previous_ip)
                else:
                    ip = agent.addresses.allocate()
            self.ip = ip
            name = agent.config.pod_netns(self.name, self.uid)
            netns.delete(name)  # left by an agent that was killed: start clean
            netns.add_pod_netns(
                name,
                node_netns=agent.config.netns,
                bridge=agent.config.bridge,
                veth=veth_name(agent.config.prefix, agent.addresses.offset(ip)),
                ip=ip,
                prefixlen=agent.addresses.prefixlen,
                gateway=agent.config.gateway,
            )
            self.netns = name
            self.sandbox_seconds = time.monotonic() - self.seen
            self.sandbox_error = None
            self.sandbox_retry_at = None
        except (OSError, DataplaneError) as exc:
            self.sandbox_failures += 1
            self.sandbox_error = f"failed to create the pod's network namespace: {exc}"
            log.error("pod %s: %s", self.key, self.sandbox_error)
            self._remove_sandbox()
            delay = min(2.0 ** (self.sandbox_failures - 1), 30.0)
            self.sandbox_retry_at = time.monotonic() + delay

    def _remove_sandbox(self) -> None:
        from .. import netns

        name = self.netns or self.agent.config.pod_netns(self.name, self.uid)
        try:
            netns.delete(name)
        except (OSError, DataplaneError) as exc:
            log.error("pod %s: could not remove namespace %s: %s", self.key, name, exc)
            self.agent.cleanup_errors.append(f"{name}: {exc}")
        self.netns = None
        if self.ip is not None:
            with self.agent.lock:
                self.agent.addresses.release(self.ip)
            self.ip = None

    def _start(self, container: _Container) -> None:
        plan = container.plan
        if plan is None or self.netns is None:  # pragma: no cover - checked by callers
            return
        from .. import _proc

        container.generation += 1
        container.ready = False
        container.terminated = None
        container.restart_at = None
        log_dir = Path(self.agent.config.run_dir) / f"{self.namespace}_{self.name}_{self.uid}"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{plan.name}.log"
        process = self.agent.spares.take()
        if process is not None and process.stdin is not None:
            try:
                netns_path = f"{_proc.NETNS_DIR}/{self.netns}"
                process.stdin.write(plan.spare_line(self.name, netns_path, str(log_path)))
                process.stdin.close()
            except OSError:  # it died meanwhile: start one the slow way
                process.kill()
                process.wait()
                if process.stdout is not None:
                    process.stdout.close()
                process = None
        if process is None:
            argv = _proc.in_netns(self.netns, plan.argv(self.name, os.getpid()))
            try:
                with open(log_path, "ab") as log_file:
                    process = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=log_file,
                        start_new_session=True,
                    )
            except OSError as exc:
                container.error = PodConfigError("RunContainerError", f"cannot start: {exc}")
                return
        container.process = process
        container.started_at = time.time()
        container.started_mono = time.monotonic()
        threading.Thread(
            target=self._follow,
            args=(container.spec_name, container.generation, process),
            name=f"out-{self.key}/{container.spec_name}",
            daemon=True,
        ).start()

    def _follow(self, name: str, generation: int, process: subprocess.Popen[bytes]) -> None:
        stdout = process.stdout
        if stdout is None:  # pragma: no cover - PIPE given
            return
        if stdout.readline().startswith(b"READY"):
            self.post("ready", name, generation)
        stdout.read()  # until the backend exits
        stdout.close()
        code = process.wait()
        self.post("exited", name, generation, code, time.time())

    def _exited(self, container: _Container, code: int, finished: float) -> None:
        exit_code = 128 - code if code < 0 else code  # killed by signal N: 128 + N
        run = Terminated(
            exit_code=exit_code,
            reason="Completed" if exit_code == 0 else "Error",
            started_at=container.started_at or finished,
            finished_at=finished,
            container_id=container.container_id(self.uid),
        )
        container.process = None
        container.ready = False
        policy = str((self.pod.get("spec") or {}).get("restartPolicy") or "Always")
        if self.terminating or not should_restart(policy, exit_code):
            container.terminated = run
            if not self.terminating:
                log.info("pod %s: container %s exited %d", self.key, container.spec_name, code)
            return
        if time.monotonic() - container.started_mono > BACKOFF_RESET:
            container.crashes = 0
        container.crashes += 1
        container.restart_count += 1
        container.last_terminated = run
        delay = restart_delay(container.crashes)
        log.warning(
            "pod %s: container %s exited %d; restart %d in %g s",
            self.key,
            container.spec_name,
            exit_code,
            container.restart_count,
            delay,
        )
        container.restart_at = time.monotonic() + delay

    def _begin_termination(self, *, immediate: bool = False) -> None:
        now = time.monotonic()
        grace = 0.0 if immediate else pod_grace(self.pod)
        if self.terminating and self.grace is not None and grace >= self.grace:
            return  # a later deletion may only shorten the grace period
        if not self.terminating:
            self.deletion_seen = now
            if immediate:
                log.info("pod %s: stopping now (gone from the API, or the agent stops)", self.key)
            else:
                log.info("pod %s: deleted, grace %g s", self.key, grace)
        self.terminating = True
        self.grace = grace
        seen = now if immediate else (self.deletion_seen or now)
        for container in self.containers:
            container.restart_at = None
            if immediate:
                schedule = StopSchedule(0.0, MIN_KILL_GRACE)
            else:
                plan = container.plan
                if plan is not None and plan.prestop_unsupported:
                    log.warning(
                        "pod %s: %s not run: %s",
                        self.key,
                        container.spec_name,
                        plan.prestop_unsupported,
                    )
                schedule = stop_schedule(
                    grace,
                    plan.prestop_sleep if plan else None,
                    plan.shutdown_delay if plan else None,
                )
            term_at, kill_at = seen + schedule.term_after, seen + schedule.kill_after
            container.term_at = min(term_at, container.term_at or term_at)
            container.kill_at = min(kill_at, container.kill_at or kill_at)

    def _kill_all(self, sig: int) -> None:
        for container in self.containers:
            if container.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    container.process.send_signal(sig)

    def _tick(self) -> None:
        """Act on every deadline that has passed, then write the status if it changed."""
        now = time.monotonic()
        if self.sandbox_retry_at is not None and now >= self.sandbox_retry_at:
            if self.terminating:
                self.sandbox_retry_at = None
            else:
                self._create_sandbox()
                if self.netns is not None:
                    for container in self.containers:
                        if container.plan is not None:
                            self._start(container)
        for container in self.containers:
            restart_due = container.restart_at is not None and now >= container.restart_at
            if restart_due and self.netns is not None and not self.terminating:
                self._start(container)
            process = container.process
            if process is None:
                continue
            kill_due = container.kill_at is not None and now >= container.kill_at
            term_due = container.term_at is not None and now >= container.term_at
            if kill_due and not container.kill_sent:
                container.kill_sent = True
                process.kill()
            elif term_due and not container.term_sent:
                container.term_sent = True
                # The backend stops accepting connections on SIGTERM: no longer ready.
                container.ready = False
                process.terminate()
        if self.terminating and all(c.process is None for c in self.containers):
            self._finish()
            return
        self._write_status()

    def _next_deadline(self) -> float | None:
        deadlines = [self.sandbox_retry_at, self.status_retry_at, self.delete_retry_at]
        for container in self.containers:
            deadlines.append(container.restart_at)
            if container.process is not None:
                if not container.term_sent:
                    deadlines.append(container.term_at)
                if not container.kill_sent:
                    deadlines.append(container.kill_at)
        pending = [d for d in deadlines if d is not None]
        return min(pending) if pending else None

    # ------------------------------------------------------------------ status and deletion

    def _views(self) -> list[ContainerView]:
        return [c.view(self.uid) for c in self.containers]

    def _status_body(self, phase: str | None = None) -> dict[str, Any]:
        status = self.pod.get("status") or {}
        conditions = {str(c.get("type")): c for c in status.get("conditions") or []}
        gates = [
            str(g.get("conditionType"))
            for g in (self.pod.get("spec") or {}).get("readinessGates") or []
        ]
        views = self._views()
        body = pod_status(
            containers=views,
            restart_policy=str((self.pod.get("spec") or {}).get("restartPolicy") or "Always"),
            pod_ip=self.ip,
            host_ip=self.agent.config.internal_ip,
            start_time=self.start_wall,
            wall=time.time(),
            previous=self.conditions,
            sandbox_ready=self.netns is not None,
            scheduled="PodScheduled" in conditions,
            readiness_gates=gates,
            gate_status={g: conditions.get(g, {}).get("status") == "True" for g in gates},
            phase=phase,
        )
        if self.sandbox_error:
            for container in body["containerStatuses"]:
                waiting = container["state"].get("waiting")
                if waiting is not None and waiting.get("reason") == "ContainerCreating":
                    waiting["message"] = self.sandbox_error
        return body

    def _write_status(self, phase: str | None = None) -> None:
        if self.api_gone or self.passive:
            return
        if self.status_retry_at is not None and time.monotonic() < self.status_retry_at:
            return
        body = self._status_body(phase)
        if body == self.last_status:
            return
        patch = {"metadata": {"uid": self.uid}, "status": body}
        try:
            self.agent.status_api.request(
                "PATCH",
                _pod_path(self.namespace, self.name) + "/status",
                body=patch,
                content_type="application/strategic-merge-patch+json",
            )
        except ApiError as exc:
            code = _status(exc)
            if code in (404, 409, 422):
                # Gone, or a different pod of the same name now: this one is no more.
                log.info("pod %s: status write refused (%s); treating it as gone", self.key, code)
                self.post("gone")
                return
            log.warning("pod %s: status write failed (%s); retrying in 1 s", self.key, exc)
            self.status_retry_at = time.monotonic() + 1.0
            return
        self.status_retry_at = None
        self.last_status = body
        wall = time.time()
        for condition in body["conditions"]:
            ok = condition["status"] == "True"
            before = self.conditions.get(condition["type"])
            if before is None or before[0] != ok:
                self.conditions[condition["type"]] = (ok, wall)

    def _finish(self) -> None:
        """Every process is gone: write the final status, remove the namespace, delete the Pod."""
        if not self.api_gone and self.delete_retry_at is None:
            views = self._views()
            self._write_status(phase=_end(views) if views else "Failed")
        if self.netns is not None or self.ip is not None:
            self._remove_sandbox()
        if self.api_gone:
            self.done = True
            return
        if self.delete_retry_at is not None and time.monotonic() < self.delete_retry_at:
            return
        try:
            self.agent.status_api.request(
                "DELETE",
                _pod_path(self.namespace, self.name),
                # Options in the body, which the API server reads instead of the query.
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}},
            )
        except ApiError as exc:
            if _status(exc) not in (404, 409):
                log.warning("pod %s: delete failed (%s); retrying in 1 s", self.key, exc)
                self.delete_retry_at = time.monotonic() + 1.0
                return
        log.info("pod %s: removed", self.key)
        self.done = True


class _Spares:
    """Backends started ahead of need (``backend --spare``): each has done its imports and
    waits on stdin for the pod it will be, so a new pod does not wait for an interpreter.

    They are forked by one thread that lives as long as the agent: a child's parent-death
    signal follows the thread that forked it, and a pod's backend must outlive the worker
    that asked for it no more than the agent.
    """

    def __init__(self, count: int, run_dir: str) -> None:
        self.count = count
        self.run_dir = run_dir
        self.ready: queue.SimpleQueue[subprocess.Popen[bytes]] = queue.SimpleQueue()
        self.requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.lock = threading.Lock()  # close() and a spawn never interleave
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="spares", daemon=True)

    def start(self) -> None:
        for _ in range(self.count):
            self.requests.put(True)
        self.thread.start()

    def _run(self) -> None:
        argv = [
            sys.executable,
            "-m",
            "pytest_dataplane.providers.lab.backend",
            "--spare",
            "--parent",
            str(os.getpid()),
        ]
        Path(self.run_dir).mkdir(parents=True, exist_ok=True)
        while self.requests.get():
            with self.lock:
                if self.closed:
                    break
                try:
                    with open(Path(self.run_dir) / "spares.log", "ab") as log_file:
                        process = subprocess.Popen(
                            argv,
                            stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            stderr=log_file,
                            start_new_session=True,
                        )
                except OSError as exc:
                    log.warning("cannot start a spare backend: %s", exc)
                    continue
                self.ready.put(process)
        # Stay alive until the agent exits: the spares and the pods they became are
        # children of this thread (see the class docstring).
        threading.Event().wait()

    def take(self) -> subprocess.Popen[bytes] | None:
        """A waiting spare (and a replacement ordered), or None if none is ready."""
        while not self.closed:
            try:
                process = self.ready.get_nowait()
            except queue.Empty:
                return None
            self.requests.put(True)
            if process.poll() is None:
                return process
        return None

    def close(self) -> None:
        """Let the unused spares go (their stdin closes: they exit)."""
        with self.lock:
            self.closed = True
        self.requests.put(False)
        while True:
            try:
                process = self.ready.get_nowait()
            except queue.Empty:
                break
            with contextlib.suppress(OSError):
                if process.stdin is not None:
                    process.stdin.close()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


# ====================================================================== the agent


class Agent:
    """The node agent: registration, heartbeats, the pod watch and the pod workers."""

    def __init__(self, config: NodeConfig, kubeconfig: str) -> None:
        self.config = config
        self.kubeconfig = kubeconfig
        self.addresses = PodAddresses(config.pod_cidr, config.gateway)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.workers: dict[str, _PodWorker] = {}
        self.finished: set[str] = set()
        self.cleanup_errors: list[str] = []
        self.node_api = _Api(kubeconfig, "node")
        self.watch_api = _Api(kubeconfig, "watch")
        self.status_api = _Api(kubeconfig, "pods")
        self.spares = _Spares(SPARES, config.run_dir)
        self.spares.start()
        # Imported now rather than by the first pod, whose start it would delay by ~0.1 s.
        from pyroute2 import IPRoute  # noqa: F401

        from .. import _proc, netns  # noqa: F401

        self.node_uid: str | None = None
        self.ready_since = time.time()
        self.version = ""

    # ------------------------------------------------------------------ node and lease

    def register(self) -> None:
        """Create the Node (or take over the existing one) and write its status."""
        api = self.node_api
        self.version = str(api.request("GET", "/version").get("gitVersion") or "")
        pods = self.config.max_pods or self.addresses.capacity
        body = node_body(self.config, pods=pods, wall=time.time(), version=self.version)
        path = f"/api/v1/nodes/{quote(self.config.name)}"
        try:
            node = api.request("POST", "/api/v1/nodes", body=body)
            log.info("registered node %s", self.config.name)
        except ApiError as exc:
            if exc.status != 409:
                raise
            node = api.request("GET", path)
            cidr = (node.get("spec") or {}).get("podCIDR")
            if cidr and cidr != self.config.pod_cidr:
                raise DataplaneError(
                    f"node {self.config.name} exists with podCIDR {cidr}, not "
                    f"{self.config.pod_cidr}"
                ) from None
            self._patch_node_status()
            log.info("took over existing node %s", self.config.name)
        self.node_uid = str(node["metadata"]["uid"])
        while (patch := lift_not_ready_taint(node)) is not None:
            try:
                api.request("PATCH", path, body=patch, content_type="application/merge-patch+json")
                log.info("lifted the %s taint (the node is Ready)", NOT_READY_TAINT)
                break
            except ApiError as exc:
                if exc.status != 409:
                    raise
                node = api.request("GET", path)  # changed meanwhile: look again

    def _patch_node_status(self) -> None:
        api = self.node_api
        status = node_status(
            self.config,
            pods=self.config.max_pods or self.addresses.capacity,
            wall=time.time(),
            ready_since=self.ready_since,
            version=self.version,
        )
        api.request(
            "PATCH",
            f"/api/v1/nodes/{quote(self.config.name)}/status",
            body={"status": status},
            content_type="application/strategic-merge-patch+json",
        )

    def _renew_lease(self, lease: dict[str, Any] | None) -> dict[str, Any]:
        api = self.node_api
        leases = f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases"
        path = f"{leases}/{quote(self.config.name)}"
        if lease is None:
            try:
                lease = api.request("GET", path)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                body = lease_body(self.config.name, self.node_uid, wall=time.time())
                return api.request("POST", leases, body=body)
        lease["spec"]["holderIdentity"] = self.config.name
        lease["spec"]["leaseDurationSeconds"] = LEASE_DURATION
        lease["spec"]["renewTime"] = micro_time(time.time())
        # An update carrying the resourceVersion read: a conflict means someone else wrote it.
        return api.request("PUT", path, body=lease)

    def _heartbeats(self) -> None:
        lease: dict[str, Any] | None = None
        next_status = time.monotonic() + NODE_STATUS_PERIOD
        while not self.stopping.is_set():
            try:
                lease = self._renew_lease(lease)
            except Exception as exc:
                log.warning("lease renewal failed: %s", exc)
                lease = None  # read it again: it may have changed or gone
            if time.monotonic() >= next_status:
                next_status = time.monotonic() + NODE_STATUS_PERIOD
                try:
                    self._patch_node_status()
                except Exception as exc:
                    log.warning("node status update failed: %s", exc)
            self.stopping.wait(LEASE_RENEW if lease is not None else 1.0)

    # ------------------------------------------------------------------ pods

    def _selector(self) -> str:
        return f"spec.nodeName={self.config.name}"

    def _list(self) -> str:
        query = {"fieldSelector": self._selector()}
        data = self.watch_api.request("GET", "/api/v1/pods", query=query)
        pods = data.get("items") or []
        present = {str(p["metadata"]["uid"]) for p in pods}
        with self.lock:
            vanished = [w for uid, w in self.workers.items() if uid not in present]
        for worker in vanished:
            worker.post("gone")
        for pod in pods:
            self._dispatch("MODIFIED", pod)
        return str((data.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self) -> None:
        resource_version = ""
        failures = 0
        while not self.stopping.is_set():
            try:
                if not resource_version:
                    resource_version = self._list()
                query = {"fieldSelector": self._selector(), "resourceVersion": resource_version}
                for event in self.watch_api.watch("/api/v1/pods", query):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            log.info("pod watch expired (410 Gone); relisting")
                            resource_version = ""
                            break
                        raise DataplaneError(f"pod watch error: {obj.get('message')}")
                    resource_version = str(
                        (obj.get("metadata") or {}).get("resourceVersion") or resource_version
                    )
                    if kind != "BOOKMARK":
                        self._dispatch(str(kind), obj)
                failures = 0
            except Exception as exc:
                if self.stopping.is_set():
                    return
                if _status(exc) == 410:
                    log.info("pod watch expired (410 Gone); relisting")
                    resource_version = ""
                    continue
                failures += 1
                log.warning("pod watch failed (%s); again in %d s", exc, min(failures, 5))
                self.stopping.wait(min(failures, 5))

    def _dispatch(self, kind: str, pod: dict[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        with self.lock:
            if self.stopping.is_set():
                return
            worker = self.workers.get(uid)
            if worker is None:
                if kind == "DELETED" or uid in self.finished:
                    return
                worker = _PodWorker(self, pod)
                self.workers[uid] = worker
                worker.start()
                return
        worker.post("gone" if kind == "DELETED" else "pod", pod)

    def _worker_done(self, worker: _PodWorker) -> None:
        with self.lock:
            self.workers.pop(worker.uid, None)
            self.finished.add(worker.uid)

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        """Register, start the heartbeats and the pod watch, and serve until :meth:`stop`."""
        delay = 0.2
        while not self.stopping.is_set():
            try:
                self.register()
                break
            except ApiError as exc:  # the API server is not up (or not ready) yet
                log.warning("cannot register node %s yet: %s", self.config.name, exc)
                self.stopping.wait(delay)
                delay = min(delay * 2, 5.0)
        threading.Thread(target=self._heartbeats, name="heartbeats", daemon=True).start()
        threading.Thread(target=self._watch, name="pod-watch", daemon=True).start()
        self.stopping.wait()
        return self.shutdown()

    def stop(self) -> None:
        """Ask :meth:`run` to stop every pod and return."""
        self.stopping.set()

    def shutdown(self) -> int:
        """Stop every pod (SIGTERM, SIGKILL 2 s later) and remove its namespace; 0 if all
        went, 1 if something could not be removed."""
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.post("shutdown")
        for worker in workers:
            worker.thread.join(MIN_KILL_GRACE + 10.0)
            if worker.thread.is_alive():
                self.cleanup_errors.append(f"pod {worker.key}: did not stop")
        self.spares.close()
        for api in (self.node_api, self.watch_api, self.status_api):
            with contextlib.suppress(Exception):  # closing pools cannot matter now
                api.close()
        for error in self.cleanup_errors:
            log.error("cleanup: %s", error)
        return 1 if self.cleanup_errors else 0


def _die_with_parent(parent: int | None) -> bool:
    """Ask for SIGTERM when the parent dies; False if it is gone already."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return parent is None or os.getppid() == parent


def main(argv: list[str] | None = None) -> int:
    """The agent's command line."""
    parser = argparse.ArgumentParser(description="pytest-dataplane lab node agent")
    parser.add_argument("--kubeconfig", required=True, help="Kubeconfig of the node's identity")
    parser.add_argument("--node-config", required=True, help="The node config JSON file")
    parser.add_argument("--parent", type=int, default=None, help="Exit if this pid is gone")
    parser.add_argument("--log-level", default="INFO", help="Logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
        stream=sys.stderr,
    )
    if not _die_with_parent(args.parent):
        return 0
    try:
        config = NodeConfig.load(args.node_config)
    except ValueError as exc:
        parser.error(str(exc))
    agent = Agent(config, args.kubeconfig)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    try:
        return agent.run()
    except DataplaneError as exc:
        log.error("%s", exc)
        agent.shutdown()
        return 1


if __name__ == "__main__":
    sys.exit(main())
