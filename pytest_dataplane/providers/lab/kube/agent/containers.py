"""How a pod's containers run as the lab backend, and when they stop and restart: pure.

The lab has no images: a container runs the lab backend
(:mod:`pytest_dataplane.providers.lab.backend`), whose version comes from the image
(``backend:v2``); the Kubernetes e2e image ``agnhost`` running ``netexec`` runs as the same
backend on netexec's port. :func:`plan_container` turns a pod spec's container into a
:class:`ContainerPlan` or a :class:`PodConfigError` that names what the lab cannot run;
:func:`stop_schedule` and :func:`restart_delay` are the kubelet's timings.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .....config import ServiceTime
from .....errors import DataplaneError

__all__ = [
    "ACCEPTED_IMAGES",
    "ContainerPlan",
    "PodConfigError",
    "StopSchedule",
    "image_ref",
    "image_version",
    "netexec_args",
    "plan_container",
    "pod_grace",
    "prestop_sleep",
    "restart_delay",
    "should_restart",
    "stop_schedule",
]

MIN_KILL_GRACE: Final = 2.0  # the kubelet's minimum time between SIGTERM and SIGKILL
DEFAULT_GRACE: Final = 30.0
DEFAULT_PORT: Final = 80
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
_BACKEND_KEYS: Final = ("--service-time", "--seed", "--drain")
_NETEXEC_KEYS: Final = ("--http-port", "--delay-shutdown", "--udp-port", "--sctp-port")
_AGNHOST_COMMANDS: Final = (["/agnhost"], ["agnhost"])
_TAG_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_SLEEP_BINARIES: Final = ("sleep", "/bin/sleep", "/usr/bin/sleep")
_SHELLS: Final = ("sh", "/bin/sh", "bash", "/bin/bash")


class PodConfigError(DataplaneError):
    """A container the agent cannot run as specified. ``reason`` is what its status says
    (``ErrImagePull``, ``CreateContainerConfigError``, ``RunContainerError``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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
    for key, value in _options(
        name, tokens[1:], _NETEXEC_KEYS, "netexec argument", ACCEPTED_NETEXEC_ARGS
    ):
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
    return port, delay


def _options(
    name: str, tokens: Sequence[str], keys: Collection[str], what: str, accepted: str
) -> list[tuple[str, str]]:
    """The ``(--key, value)`` pairs of a container's arguments, in order: ``--key=value`` or
    ``--key value``; :class:`PodConfigError` for a key not in ``keys`` (``what`` and
    ``accepted`` word the message) or a key without its value."""
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        key, has_value, value = tokens[i].partition("=")
        if key not in keys:
            raise PodConfigError(
                "CreateContainerConfigError",
                f"container {name}: {what} {tokens[i]!r} is not accepted by the lab backend; "
                f"accepted: {accepted}",
            )
        if not has_value:
            if i + 1 >= len(tokens):
                raise PodConfigError(
                    "CreateContainerConfigError", f"container {name}: {key} needs a value"
                )
            i += 1
            value = tokens[i]
        pairs.append((key, value))
        i += 1
    return pairs


def _backend_args(name: str, args: Sequence[Any]) -> dict[str, str]:
    tokens = [str(a) for a in args]
    return dict(_options(name, tokens, _BACKEND_KEYS, "argument", ACCEPTED_ARGS))


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
