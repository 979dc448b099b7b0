"""Helpers of the lab-cluster tests: the root namespace's state, binaries, kubectl, waits."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_dataplane.errors import DataplaneError
from pytest_dataplane.providers.lab._session import CGROUP_DIR, STATE_ROOT, cgroup2_mount, running

# Counters of the kernel's own bookkeeping, which move with every process on the machine.
_VOLATILE_SYSCTLS = (
    "fs.dentry-state",
    "fs.file-nr",
    "fs.inode-nr",
    "fs.inode-state",
    "fs.aio-nr",
    "kernel.ns_last_pid",
    "kernel.pty.nr",
    "kernel.random.",
    "net.netfilter.nf_conntrack_count",
)


def _run(argv: list[str]) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return done.stdout


def root_state() -> dict[str, str]:
    """The root namespace's firewall, routes, addresses, links and sysctls, without counters
    and other values that move by themselves."""
    state = {}
    for name, argv in (
        ("iptables-legacy", ["iptables-legacy-save"]),
        ("iptables-nft", ["iptables-nft-save"]),
        ("ip6tables-legacy", ["ip6tables-legacy-save"]),
        ("ip6tables-nft", ["ip6tables-nft-save"]),
    ):
        text = re.sub(r"^# (Generated|Completed) .*$", "", _run(argv), flags=re.M)
        state[name] = re.sub(r"\[\d+:\d+\]", "[]", text)
    state["nft"] = re.sub(
        r"counter packets \d+ bytes \d+", "counter", _run(["nft", "list", "ruleset"])
    )
    state["routes"] = _run(["ip", "route", "show", "table", "all"])
    state["routes6"] = _run(["ip", "-6", "route", "show", "table", "all"])
    state["rules"] = _run(["ip", "rule", "show"])
    state["addresses"] = _run(["ip", "-o", "addr", "show"])
    # Link lines without their statistics-bearing parts: names, flags, mtu, state, master.
    state["links"] = "\n".join(
        sorted(line.split(" link/")[0] for line in _run(["ip", "-o", "link", "show"]).splitlines())
    )
    state["sysctl"] = "\n".join(
        line
        for line in _run(["sysctl", "-a"]).splitlines()
        if not line.startswith(_VOLATILE_SYSCTLS)
    )
    return state


def state_diff(
    before: dict[str, str], after: dict[str, str]
) -> dict[str, tuple[list[str], list[str]]]:
    """What changed per part: (lines gone, lines new)."""
    changed = {}
    for key, text in before.items():
        old, new = set(text.splitlines()), set(after[key].splitlines())
        if old != new:
            changed[key] = (sorted(old - new), sorted(new - old))
    return changed


def session_objects(prefix: str) -> set[str]:
    """Everything on the machine carrying session ``prefix``: namespaces, state, cgroups,
    mounts, processes whose command line names it."""
    found: set[str] = set()
    if os.path.isdir("/run/netns"):
        found |= {f"netns:{n}" for n in os.listdir("/run/netns") if n.startswith(prefix)}
    if (STATE_ROOT / prefix).exists():
        found.add(f"state:{prefix}")
    mount = cgroup2_mount()
    if mount is not None and (mount / f"{CGROUP_DIR}{prefix}").exists():
        found.add(f"cgroup:{CGROUP_DIR}{prefix}")
    with open("/proc/mounts") as mounts:
        found |= {f"mount:{line.split()[1]}" for line in mounts if prefix in line}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if prefix.encode() in cmdline:
                found.add(f"process:{entry.name}:{cmdline[:80]!r}")
    return found


def binaries_or_skip() -> Any:
    """The Kubernetes binaries, or skip the test saying why there are none."""
    if os.geteuid() != 0:
        pytest.skip("the lab cluster needs root to create network namespaces")
    from pytest_dataplane.providers.lab.kubebin import locate

    try:
        return locate(os.environ.get("DATAPLANE_KUBE_BIN") or None)
    except DataplaneError as exc:
        pytest.skip(f"Kubernetes binaries not built: {exc}")


def ended(pid: int | str) -> bool:
    """Whether a process has exited: gone, or a zombie, as cleanup counts it (a zombie holds
    no namespace, file or memory; reaping it is the job of whatever adopted it, PID 1 or a CI
    runner's subreaper, which may be slow to do it or never do it while the run lasts)."""
    return not running(int(pid))


def wait_for(condition: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll ``condition`` until it returns something true; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not {what} after {timeout:g} s")
        time.sleep(0.05)


def in_netns(netns: str, *argv: str, check: bool = True, timeout: float = 60) -> str:
    """Run a command in a namespace; its stdout."""
    done = subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} in {netns}: {done.returncode} {done.stderr}")
    return done.stdout
