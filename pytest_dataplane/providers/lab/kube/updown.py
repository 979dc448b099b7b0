"""``python -m pytest_dataplane lab up`` / ``lab down``: a lab cluster that outlives the command.

``lab up`` starts a supervisor process (this module run with ``--supervise``) in a session
of its own, detached from the terminal; the supervisor creates the session (so it is the
session's recorded owner), moves itself into the session's cgroup, boots a
:class:`~.lab.KubeLab` and reports progress and the result over a pipe. ``lab up`` relays the
progress to stderr and, once the cluster is ready, prints shell ``export`` lines on stdout
and returns, so ``eval "$(python -m pytest_dataplane lab up)"`` works like ``ssh-agent``.
The supervisor keeps the cluster (and the loopback forwarder to its API server) until it
gets SIGTERM or SIGINT — which ``lab down`` sends — and then removes it all. If it is
SIGKILLed instead, its components die with it (parent-death signal) and
``python -m pytest_dataplane cleanup`` removes the rest.

Each running lab has a state file ``/run/pytest-dataplane/<prefix>/lab.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ....errors import DataplaneError
from .._session import STATE_ROOT, Session, _start_time
from . import plan

STATE_FILE = "lab.json"
UP_TIMEOUT = 300.0
DOWN_TIMEOUT = 90.0


@dataclass(frozen=True)
class RunningLab:
    """What a state file says about one running lab."""

    name: str
    prefix: str
    pid: int
    start: str | None
    dataplane: str
    nodes: int
    kubeconfig: str
    exports: list[tuple[str, str]]
    path: Path

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start


def running_labs(root: Path = STATE_ROOT) -> list[RunningLab]:
    """Every lab with a state file (alive or not), sorted by name."""
    labs: list[RunningLab] = []
    if not root.is_dir():
        return labs
    for path in sorted(root.glob(f"*/{STATE_FILE}")):
        try:
            data = json.loads(path.read_text())
            labs.append(
                RunningLab(
                    name=str(data["name"]),
                    prefix=str(data["prefix"]),
                    pid=int(data["pid"]),
                    start=data.get("start"),
                    dataplane=str(data["dataplane"]),
                    nodes=int(data["nodes"]),
                    kubeconfig=str(data["kubeconfig"]),
                    exports=[(str(k), str(v)) for k, v in data["exports"]],
                    path=path,
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(labs, key=lambda lab: lab.name)


def _check_name(name: str) -> str:
    if not name or len(name) > 40 or not all(c.isalnum() or c in "-_." for c in name):
        raise ValueError(
            f"name: {name!r} is not accepted; accepted: 1-40 letters, digits, '-', '_', '.'"
        )
    return name


def _exports_text(exports: Sequence[tuple[str, str]]) -> str:
    import shlex

    lines = []
    for key, value in exports:
        if key == "PATH" and value.endswith("$PATH"):
            # "$PATH" must expand in the user's shell, the directory must not.
            head = value[: -len("$PATH")]
            lines.append(f'export PATH={shlex.quote(head)}"$PATH";\n')
        else:
            lines.append(f"export {key}={shlex.quote(value)};\n")
    return "".join(lines)


# ---------------------------------------------------------------------- lab up


def check_proxy_settings(
    dataplane: str, min_sync_period: str | float | None, iptables_backend: str
) -> float | None:
    """``--min-sync-period`` (a duration; None: kube-proxy's default) in seconds, after checking
    it and ``--iptables-backend`` against ``dataplane``; a ValueError names a bad value."""
    if iptables_backend not in plan.IPTABLES_BACKENDS:
        raise ValueError(
            f"--iptables-backend: {iptables_backend!r} is not accepted; accepted: "
            f"{', '.join(plan.IPTABLES_BACKENDS)}"
        )
    if dataplane == "ebpf" and iptables_backend != "auto":
        raise ValueError(
            f"--iptables-backend {iptables_backend}: --dataplane ebpf runs no kube-proxy; "
            "accepted with iptables, nftables, ipvs"
        )
    if min_sync_period is None:
        return None
    from ....config import parse_duration

    accepted = f"durations from 0s to {plan.MAX_MIN_SYNC_PERIOD:g}s (kube-proxy's sync period)"
    try:
        seconds = parse_duration(min_sync_period, name="--min-sync-period")
    except ValueError:
        raise ValueError(
            f"--min-sync-period: {min_sync_period!r} is not accepted; accepted: {accepted}, "
            "e.g. 250ms, 2s"
        ) from None
    if seconds > plan.MAX_MIN_SYNC_PERIOD:
        raise ValueError(
            f"--min-sync-period: {min_sync_period!r} is not accepted; accepted: {accepted}"
        )
    if dataplane == "ebpf":
        raise ValueError(
            "--min-sync-period: --dataplane ebpf runs no kube-proxy (its controller applies "
            "changes at once); accepted with iptables, nftables, ipvs"
        )
    return seconds


def up(
    *,
    dataplane: str,
    nodes: int,
    name: str | None,
    kube_bin_dir: str | None,
    min_sync_period: str | float | None = None,
    iptables_backend: str = "auto",
    stdout: IO[str] = sys.stdout,
    stderr: IO[str] = sys.stderr,
) -> int:
    """Start a supervised lab; print its exports on ``stdout`` once it is ready.

    ``min_sync_period`` (a duration such as ``"250ms"``; None: kube-proxy's default, 1 s) is
    kube-proxy's minimum sync period; ``iptables_backend`` (auto, legacy, nft) the iptables
    binaries it runs.
    """
    plan.check_dataplane(dataplane)
    plan.check_nodes(nodes)
    seconds = check_proxy_settings(dataplane, min_sync_period, iptables_backend)
    if name is not None:
        _check_name(name)
        if any(lab.name == name and lab.alive() for lab in running_labs()):
            raise DataplaneError(f"a lab named {name!r} is running already; pick another name")
    from ..kubebin import locate

    locate(kube_bin_dir)  # fail here, with the build command, rather than in the supervisor
    if os.geteuid() != 0:
        raise DataplaneError("lab up needs root (it creates network namespaces)")
    read_fd, write_fd = os.pipe()
    argv = [
        sys.executable,
        "-m",
        "pytest_dataplane.providers.lab.kube.updown",
        "--supervise",
        f"--status-fd={write_fd}",
        f"--dataplane={dataplane}",
        f"--nodes={nodes}",
        f"--iptables-backend={iptables_backend}",
    ]
    if seconds is not None:
        argv.append(f"--min-sync-period={seconds!r}")
    if name is not None:
        argv.append(f"--name={name}")
    if kube_bin_dir is not None:
        argv.append(f"--kube-bin={kube_bin_dir}")
    supervisor = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        # Nothing of the supervisor may hold the caller's stdout: `$(...)` waits for every
        # writer of its pipe to close. It logs to a file in its state directory.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(write_fd,),
        start_new_session=True,
    )
    os.close(write_fd)
    try:
        result = _relay(read_fd, stderr, supervisor)
    except KeyboardInterrupt:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(DOWN_TIMEOUT)
        raise
    finally:
        os.close(read_fd)
    if result is None:
        status = supervisor.wait(DOWN_TIMEOUT)
        print(f"lab up failed (supervisor exit status {status})", file=stderr)
        return 1
    stdout.write(_exports_text(result["exports"]))
    stdout.write(
        f"# lab {result['name']} is up; remove it with: python -m pytest_dataplane lab "
        f"down {result['name']}\n"
    )
    stdout.flush()
    return 0


def _relay(fd: int, stderr: IO[str], supervisor: subprocess.Popen[bytes]) -> Any:
    """Copy the supervisor's progress lines to ``stderr`` until it says ready (its result)
    or failed/gone (None)."""
    buffer = b""
    deadline = time.monotonic() + UP_TIMEOUT
    while True:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            supervisor.send_signal(signal.SIGTERM)
            print(f"lab up: no ready cluster after {UP_TIMEOUT:g} s; stopped it", file=stderr)
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            kind, _, text = line.decode(errors="replace").partition(" ")
            if kind == "ready":
                return json.loads(text)
            if kind in ("progress", "error"):
                print(f"lab: {text}", file=stderr, flush=True)


# ---------------------------------------------------------------------- supervisor


def supervise(
    *,
    status_fd: int,
    dataplane: str,
    nodes: int,
    name: str | None,
    kube_bin_dir: str | None,
    min_sync_period: float | None = None,
    iptables_backend: str = "auto",
) -> int:
    """Own a lab until SIGTERM/SIGINT: boot it, publish its state file, then wait."""
    from .lab import KubeLab

    status = os.fdopen(status_fd, "w", buffering=1)

    def say(kind: str, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            status.write(f"{kind} {' '.join(text.splitlines()) if kind != 'ready' else text}\n")

    stop = {"signal": 0}

    def on_signal(signum: int, frame: Any) -> None:
        if stop["signal"]:
            return  # already stopping: a second signal must not cut the cleanup short
        stop["signal"] = signum
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    session = Session.new()
    log = open(session.state_dir / "supervisor.log", "a", buffering=1)  # noqa: SIM115
    os.dup2(log.fileno(), 2)
    if session.cgroup is not None:
        session.cgroup.mkdir(parents=True, exist_ok=True)
        (session.cgroup / "supervisor").mkdir(exist_ok=True)
        (session.cgroup / "supervisor" / "cgroup.procs").write_text(str(os.getpid()))

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        say("progress", message)

    lab = KubeLab(
        dataplane=dataplane,
        nodes=nodes,
        session=session,
        kube_bin_dir=kube_bin_dir,
        min_sync_period=min_sync_period,
        iptables_backend=iptables_backend,
        progress=progress,
    )
    lab_name = name or session.prefix
    try:
        try:
            lab.start()
        except KeyboardInterrupt:
            say("error", "interrupted while booting; removed what was made")
            return 1
        except Exception as exc:
            say("error", str(exc))
            print(f"boot failed: {exc}", file=sys.stderr)
            return 1
        state = {
            "name": lab_name,
            "prefix": session.prefix,
            "pid": os.getpid(),
            "start": _start_time(os.getpid()),
            "dataplane": dataplane,
            "nodes": nodes,
            "min_sync_period": lab.min_sync_period,
            "iptables_backend": lab.iptables_backend,
            "kubeconfig": str(lab.kubeconfig),
            "exports": lab.env(),
            "boot_seconds": lab.timings.get("boot"),
            "timings": lab.timings,
            "processes": {n: p.pid for n, p in lab.processes.items()},
        }
        path = session.state_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(path)
        say("ready", json.dumps({"name": lab_name, "exports": lab.env()}))
        with contextlib.suppress(OSError):
            status.close()
        try:
            while True:
                signal.pause()
        except KeyboardInterrupt:
            pass
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("stopping the lab", file=sys.stderr, flush=True)
        try:
            lab.stop()
        except Exception as exc:
            print(f"stop: {exc}", file=sys.stderr, flush=True)
        from .._session import cgroup2_mount
        from ..cleanup import remove_session

        # Out of the session's cgroup first: a cgroup holding a process cannot be removed.
        mount = cgroup2_mount()
        if mount is not None and session.cgroup is not None:
            with contextlib.suppress(OSError):
                (mount / "cgroup.procs").write_text(str(os.getpid()))
        remove_session(session.prefix)


# ---------------------------------------------------------------------- lab down


def down(*, name: str | None, stderr: IO[str] = sys.stderr) -> int:
    """Stop the running lab called ``name`` (or the only one) and wait until it is gone."""
    labs = running_labs()
    if name is not None:
        chosen = [lab for lab in labs if name in (lab.name, lab.prefix)]
        if not chosen:
            known = ", ".join(lab.name for lab in labs) or "none"
            raise DataplaneError(f"no lab named {name!r}; running labs: {known}")
    elif len(labs) > 1:
        known = ", ".join(lab.name for lab in labs)
        raise DataplaneError(f"{len(labs)} labs are running ({known}); name the one to remove")
    elif not labs:
        print("lab down: no lab is running", file=stderr)
        return 0
    else:
        chosen = labs
    lab = chosen[0]
    if lab.alive():
        print(f"lab down: stopping {lab.name} (supervisor pid {lab.pid})", file=stderr, flush=True)
        _wait_gone(lab.pid, signal.SIGTERM, DOWN_TIMEOUT)
    from ..cleanup import remove_session

    # The supervisor removed everything if it could; this catches what a dead one left.
    remove_session(lab.prefix)
    print(f"lab down: {lab.name} removed", file=stderr, flush=True)
    return 0


def _wait_gone(pid: int, sig: int, timeout: float) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        os.kill(pid, sig)
        ready, _, _ = select.select([pidfd], [], [], timeout)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            select.select([pidfd], [], [], 10)
    except ProcessLookupError:
        pass
    finally:
        os.close(pidfd)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the supervisor process (``--supervise``)."""
    parser = argparse.ArgumentParser(prog="pytest_dataplane.providers.lab.kube.updown")
    parser.add_argument("--supervise", action="store_true", required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--dataplane", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--kube-bin", default=None)
    parser.add_argument("--min-sync-period", type=float, default=None)
    parser.add_argument("--iptables-backend", default="auto")
    args = parser.parse_args(argv)
    return supervise(
        status_fd=args.status_fd,
        dataplane=args.dataplane,
        nodes=args.nodes,
        name=args.name,
        kube_bin_dir=args.kube_bin,
        min_sync_period=args.min_sync_period,
        iptables_backend=args.iptables_backend,
    )


if __name__ == "__main__":
    sys.exit(main())
