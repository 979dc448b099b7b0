"""The cluster's long-running processes: started in a namespace and a cgroup, logged, probed.

Each process is started through ``nsenter --net=<netns>`` (which execs the program, so the
pid is the program's), in a new session (a Ctrl-C in the terminal is the lab's to handle,
not every component's), in its own cgroup under the session's (for ``cleanup`` and for CPU
accounting), and with a parent-death signal so that a SIGKILLed owner takes it along.

The parent-death signal fires when the *thread* that forked the child exits, so processes
must be started from a thread that lives as long as the cluster (the main thread, in
practice), never from the short-lived threads :func:`netns.in_netns` uses.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ....errors import DataplaneError
from .. import _proc

POLL = 0.05  # seconds between two looks at a readiness condition


def child_setup(cgroup: Path | None, deathsig: int, nice: int = 0) -> Callable[[], None]:
    """A ``preexec_fn``: the child gets ``deathsig`` when the forking thread ends and joins
    ``cgroup`` (if given) before it runs anything.

    A positive ``nice`` lowers the child's CPU weight: its nice value, and its session's
    (the kernel's autogroup, which is what weighs one session against another where
    autogroup is on; the child must start a new session for that to touch only it).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    procs = None if cgroup is None else str(cgroup / "cgroup.procs")
    if nice < 0:
        raise ValueError(f"nice={nice}: only a lower weight (0 to 19) is asked of a child")
    weight = str(nice).encode()

    def setup() -> None:
        # Runs in the child between fork and exec: only async-signal-safe work (raw writes).
        libc.prctl(_proc.PR_SET_PDEATHSIG, deathsig, 0, 0, 0)
        if procs is not None:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            try:  # absent on kernels without autogroup: the nice value above is all there is
                fd = os.open("/proc/self/autogroup", os.O_WRONLY)
            except OSError:
                return
            try:
                os.write(fd, weight)
            except OSError:
                pass  # autogroup disabled at boot (noautogroup): the nice value still holds
            finally:
                os.close(fd)

    return setup


class Process:
    """One component of the cluster (etcd, kube-apiserver, kube-proxy on node 0, an agent...)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        netns: str | None,
        log_path: Path,
        cgroup: Path | None,
        env: Mapping[str, str] | None = None,
        deathsig: int = signal.SIGKILL,
        nice: int = 0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.netns = netns
        self.log_path = log_path
        self.cgroup = cgroup
        self.env = dict(env) if env is not None else None
        self.deathsig = deathsig
        self.nice = nice
        self.popen: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def __repr__(self) -> str:
        state = "not started" if self.popen is None else f"pid {self.popen.pid}"
        return f"<Process {self.name} {state}>"

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def start(self) -> None:
        """Start the program; its stdout and stderr go to :attr:`log_path`."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.cgroup is not None:
            self.cgroup.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            try:
                self.popen = subprocess.Popen(
                    _proc.in_netns(self.netns, self.argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,
                    preexec_fn=child_setup(self.cgroup, self.deathsig, self.nice),  # noqa: PLW1509
                )
            except OSError as exc:
                raise DataplaneError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from None

    def exited(self) -> int | None:
        """The exit status if the process has ended, else None."""
        return None if self.popen is None else self.popen.poll()

    def tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        kept = text.rstrip().splitlines()[-lines:]
        return "\n".join(kept) if kept else "(empty log)"

    def wait_until(self, condition: Callable[[], bool], *, timeout: float, what: str) -> float:
        """Wait until ``condition()`` holds; returns the seconds since start.

        Raises DataplaneError with the log's tail when the process exits first or
        ``timeout`` passes.
        """
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return time.monotonic() - self.started_at
            status = self.exited()
            if status is not None:
                raise DataplaneError(
                    f"{self.name} exited with status {status} before {what}; log "
                    f"{self.log_path}, last lines:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                raise DataplaneError(
                    f"{self.name}: not {what} after {timeout:g} s; log {self.log_path}, last "
                    f"lines:\n{self.tail()}"
                )
            time.sleep(POLL)

    def signal(self, sig: int) -> None:
        """Send ``sig`` if the process is still running."""
        if self.popen is not None and self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)


def stop_all(processes: Sequence[Process], *, timeout: float) -> list[str]:
    """SIGTERM every process, wait up to ``timeout`` for all, SIGKILL the rest; returns the
    names of those that had to be killed."""
    for process in processes:
        process.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    killed = []
    for process in processes:
        if process.popen is None:
            continue
        try:
            process.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed.append(process.name)
            process.popen.kill()
            process.popen.wait()
    return killed


def kill_all(processes: Sequence[Process]) -> None:
    """SIGKILL every process and reap it."""
    for process in processes:
        process.signal(signal.SIGKILL)
    for process in processes:
        if process.popen is not None:
            process.popen.wait()
