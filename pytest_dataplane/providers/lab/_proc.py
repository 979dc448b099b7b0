"""Running tools inside the lab's namespaces, measuring wall time and CPU per invocation."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# Re-exported: the lab's Kubernetes nodes still read the namespace directory from here.
from ..._host import NETNS_DIR as NETNS_DIR  # noqa: PLC0414
from ...errors import DataplaneError

#: prctl(2): the signal a process gets when the thread that forked it ends.
PR_SET_PDEATHSIG: Final = 1


@dataclass(frozen=True)
class Completed:
    """A finished command: its output, exit status, wall seconds and CPU seconds (user+sys)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    wall: float
    cpu: float


def in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    """``argv`` prefixed so that it runs in network namespace ``netns`` (None: here)."""
    if netns is None:
        return list(argv)
    return ["nsenter", f"--net={NETNS_DIR}/{netns}", "--", *argv]


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    input: str | bytes | None = None,
    check: bool = True,
    timeout: float = 300.0,
) -> Completed:
    """Run a command (in ``netns``), wait for it, and measure it.

    CPU time comes from the child's own rusage (``wait4``), so concurrent work elsewhere in
    this process is not counted. A non-zero exit raises DataplaneError with the command and
    its stderr when ``check`` is true.
    """
    full = in_netns(netns, argv)
    data = input.encode() if isinstance(input, str) else input
    started = time.perf_counter()
    try:
        process = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise DataplaneError(f"cannot run {full[0]!r}: {exc.strerror}") from None
    stdout, stderr, returncode, cpu = _communicate_measured(process, data, timeout, full)
    result = Completed(
        tuple(full),
        returncode,
        stdout.decode(errors="replace"),
        stderr.decode(errors="replace"),
        time.perf_counter() - started,
        cpu,
    )
    if check and result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip()
        shown = " ".join(full[:6]) + (" ..." if len(full) > 6 else "")
        raise DataplaneError(
            f"{shown} failed with exit status {result.returncode}: {detail[:2000]}"
        )
    return result


def _communicate_measured(
    process: subprocess.Popen[bytes], data: bytes | None, timeout: float, argv: Sequence[str]
) -> tuple[bytes, bytes, int, float]:
    # Popen.communicate() reaps the child without its rusage; reading the pipes ourselves and
    # reaping with wait4 gives this one child's CPU time, unaffected by other threads' children.
    out: list[bytes] = []
    err: list[bytes] = []
    if process.stdout is None or process.stderr is None:  # pragma: no cover - PIPE given
        raise DataplaneError(f"{argv[0]}: no pipes to read")
    readers = [
        threading.Thread(target=lambda: out.append(process.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err.append(process.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for reader in readers:
        reader.start()
    if process.stdin is not None:
        try:
            if data:
                process.stdin.write(data)
            process.stdin.close()
        except BrokenPipeError:
            pass
    deadline = time.monotonic() + timeout
    for reader in readers:
        reader.join(max(0.0, deadline - time.monotonic()))
    timed_out = any(reader.is_alive() for reader in readers)
    if timed_out:
        process.kill()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    process.stdout.close()
    process.stderr.close()
    if timed_out:
        raise DataplaneError(f"{' '.join(argv)} did not finish in {timeout:g} s")
    return b"".join(out), b"".join(err), process.returncode, usage.ru_utime + usage.ru_stime


def which(name: str) -> str | None:
    """Path of a tool, looking in the sbin directories too (root tools live there)."""
    return shutil.which(name) or shutil.which(
        name, path=os.pathsep.join(("/usr/sbin", "/sbin", "/usr/local/sbin"))
    )


def sbin_path() -> str:
    """``$PATH`` with the sbin directories appended where missing: root's tools (iptables,
    nft, ip) live there, and a non-login shell's PATH may lack them."""
    parts = os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
    for extra in ("/usr/local/sbin", "/usr/sbin", "/sbin"):
        if extra not in parts:
            parts.append(extra)
    return os.pathsep.join(parts)


def die_with_parent(sig: int, parent: int | None = None) -> bool:
    """Have the kernel send ``sig`` to this process when its parent (the thread that forked
    it) ends. False if ``parent`` (a pid) is gone already: then the signal would never come,
    and the process should exit at once."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    return parent is None or os.getppid() == parent
