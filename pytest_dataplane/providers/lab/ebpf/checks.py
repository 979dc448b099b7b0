"""Whether the ``ebpf`` dataplane can run here: root, clang, bpftool, headers, cgroup v2, bpffs.

Each check answers with what is missing and the command that installs it, so that the
doctor, the provider's skip reasons and the proxier's own errors say the same thing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Final

from ...._host import cgroup2_mounts, read_mounts
from ....errors import DataplaneError, DataplaneUnavailable
from .. import _proc

__all__ = [
    "INCLUDE_ROOTS",
    "INSTALL_BPFTOOL",
    "INSTALL_TOOLCHAIN",
    "bpf_mounts_under",
    "cgroup2_mounts",
    "ebpf_unavailable_reason",
    "include_dirs",
]

INSTALL_TOOLCHAIN: Final = "apt-get install clang llvm libbpf-dev"
INSTALL_BPFTOOL: Final = (
    "apt-get install bpftool (Debian 12 and later; on Ubuntu: apt-get install "
    "linux-tools-common linux-tools-$(uname -r))"
)
#: Where the libbpf headers (``bpf/bpf_helpers.h``) are looked for.
INCLUDE_ROOTS: Final = (Path("/usr/include"), Path("/usr/local/include"))


def bpf_mounts_under(directory: Path) -> list[Path]:
    """The bpf filesystems mounted at or below ``directory``, in mount-table order."""
    found = []
    for mount in read_mounts():
        if mount.fstype == "bpf":
            point = Path(mount.target)
            if point == directory or directory in point.parents:
                found.append(point)
    return found


def include_dirs() -> list[Path]:
    """``-I`` directories clang needs beyond its defaults, or DataplaneUnavailable."""
    helpers = [root / "bpf" / "bpf_helpers.h" for root in INCLUDE_ROOTS]
    if not any(path.is_file() for path in helpers):
        raise DataplaneUnavailable(
            f"BPF headers not found ({' or '.join(map(str, helpers))}): {INSTALL_TOOLCHAIN}"
        )
    if not (Path("/usr/include/linux/bpf.h")).is_file():
        raise DataplaneUnavailable(
            "kernel UAPI headers not found (/usr/include/linux/bpf.h): "
            "apt-get install linux-libc-dev"
        )
    # linux/types.h includes <asm/types.h>, which Debian-style systems keep under a
    # multiarch directory that clang -target bpf does not search by itself.
    if Path("/usr/include/asm/types.h").is_file():
        return []
    multiarch = sysconfig.get_config_var("MULTIARCH")
    candidates = [Path("/usr/include") / multiarch] if multiarch else []
    candidates += sorted(Path("/usr/include").glob("*-linux-gnu*"))
    for candidate in candidates:
        if (candidate / "asm" / "types.h").is_file():
            return [candidate]
    raise DataplaneUnavailable(
        "asm/types.h not found in /usr/include or a multiarch directory under it: "
        "apt-get install linux-libc-dev (and gcc-multilib on some systems)"
    )


def _probe_bpffs() -> str | None:
    probe = Path(tempfile.mkdtemp(prefix="dpt-bpffs-probe-"))
    try:
        done = _proc.run(["mount", "-t", "bpf", "bpf", str(probe)], check=False)
        if done.returncode != 0:
            return (
                f"cannot mount a bpf filesystem ({done.stderr.strip() or done.returncode}): the "
                "kernel needs CONFIG_BPF_SYSCALL and this process CAP_SYS_ADMIN in the initial "
                "mount namespace"
            )
        _proc.run(["umount", str(probe)], check=False)
        return None
    except DataplaneError as exc:
        return f"cannot mount a bpf filesystem: {exc}"
    finally:
        with contextlib.suppress(OSError):
            probe.rmdir()


def ebpf_unavailable_reason(*, probe_mount: bool = True) -> str | None:
    """None when the ``ebpf`` dataplane can run here, else why not and how to fix it.

    Checks root, clang, bpftool, the BPF headers, a cgroup v2 mount and (unless
    ``probe_mount`` is false) that a bpf filesystem can be mounted.
    """
    if not sys.platform.startswith("linux"):
        return f"the eBPF dataplane needs Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return (
            "the eBPF dataplane needs root (loading BPF programs, mounting bpffs, attaching to "
            "a cgroup): run pytest as root"
        )
    if _proc.which("clang") is None:
        return f"clang not found: {INSTALL_TOOLCHAIN}"
    if _proc.which("bpftool") is None:
        return f"bpftool not found: {INSTALL_BPFTOOL}"
    try:
        include_dirs()
    except DataplaneUnavailable as exc:
        return str(exc)
    if not cgroup2_mounts():
        return (
            "no cgroup v2 hierarchy is mounted (no cgroup2 line in /proc/mounts): mount one, "
            "e.g. mount -t cgroup2 none /sys/fs/cgroup/unified"
        )
    if probe_mount:
        return _probe_bpffs()
    return None
