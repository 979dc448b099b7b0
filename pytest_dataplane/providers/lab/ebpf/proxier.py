"""The lab's ``ebpf`` dataplane: a cgroup/connect4 socket load balancer.

A small BPF program (``bpf/lb4.c``) rewrites the destination of every ``connect()`` that a
process in the client's cgroup makes to a service VIP:port, picking one endpoint at random
from two hash maps (services, backends). No ``KUBE-`` rules exist, whatever the number of
services; endpoint changes are map updates, written in batches with bpf(2).

Life cycle, as the lab drives it: :func:`ebpf_unavailable_reason` (doctor, provider),
``EbpfProxier(cgroup=..., state_dir=..., node_netns=...)``, :meth:`EbpfProxier.start`
(compile or reuse the object, mount a private bpffs under ``state_dir``, load, pin, attach),
any number of :meth:`EbpfProxier.sync`, :meth:`EbpfProxier.close` (detach, unpin, unmount).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import socket
import struct
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..._host import parse_mounts, read_mounts
from ...errors import DataplaneError, DataplaneUnavailable
from ..base import RuleCount, RuleCountPart
from ..rules import count_iptables_save, count_nft_table, iptables_chain_sizes, nft_chain_sizes
from ..rules import summarize as summarize_rules
from . import _bpf, _proc
from ._types import Endpoint, ServiceSpec, SyncResult

__all__ = [
    "BpfObject",
    "EbpfProxier",
    "build_object",
    "cgroup2_mounts",
    "ebpf_unavailable_reason",
    "read_pinned",
    "remove_leftovers",
]

SOURCE: Final = Path(__file__).parent / "bpf" / "lb4.c"
CLANG_FLAGS: Final = ("-O2", "-g", "-Wall", "-target", "bpf")
SERVICES_MAP: Final = "dpt_services"
BACKENDS_MAP: Final = "dpt_backends"
BPFFS_DIR: Final = "bpffs"

_INSTALL_TOOLCHAIN: Final = "apt-get install clang llvm libbpf-dev"
_INSTALL_BPFTOOL: Final = (
    "apt-get install bpftool (Debian 12 and later; on Ubuntu: apt-get install "
    "linux-tools-common linux-tools-$(uname -r))"
)
_PROTOCOLS: Final = {"tcp": 6, "udp": 17}
_INCLUDE_ROOTS: Final = (Path("/usr/include"), Path("/usr/local/include"))

# Map layouts, mirroring the structs in lb4.c (native endianness for revision and count,
# network order for addresses and ports, as the socket address carries them).
_SVC_KEY: Final = struct.Struct("=4s2sBx")  # vip, port, protocol, pad
_SVC_VAL: Final = struct.Struct("=II")  # revision, endpoint count
_BE_KEY: Final = struct.Struct("=II")  # revision, slot
_BE_VAL: Final = struct.Struct("=4s2sxx")  # ip, port, pad


# --------------------------------------------------------------------------------------------
# Environment checks


def cgroup2_mounts(mounts: str | None = None) -> list[Path]:
    """Mount points of the cgroup v2 hierarchy, from ``/proc/mounts`` (or ``mounts`` text).

    Hybrid hosts mount it at ``/sys/fs/cgroup/unified``, unified ones at ``/sys/fs/cgroup``;
    nothing here assumes either.
    """
    table = read_mounts() if mounts is None else parse_mounts(mounts)
    return [Path(mount.target) for mount in table if mount.fstype == "cgroup2"]


def _bpf_mounts_under(directory: Path) -> list[Path]:
    found = []
    for mount in read_mounts():
        if mount.fstype == "bpf":
            point = Path(mount.target)
            if point == directory or directory in point.parents:
                found.append(point)
    return found


def _include_dirs() -> list[Path]:
    """``-I`` directories clang needs beyond its defaults, or DataplaneUnavailable."""
    helpers = [root / "bpf" / "bpf_helpers.h" for root in _INCLUDE_ROOTS]
    if not any(path.is_file() for path in helpers):
        raise DataplaneUnavailable(
            f"BPF headers not found ({' or '.join(map(str, helpers))}): {_INSTALL_TOOLCHAIN}"
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
        return f"clang not found: {_INSTALL_TOOLCHAIN}"
    if _proc.which("bpftool") is None:
        return f"bpftool not found: {_INSTALL_BPFTOOL}"
    try:
        _include_dirs()
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


# --------------------------------------------------------------------------------------------
# Building the object, cached by content


@dataclass(frozen=True)
class BpfObject:
    """A compiled BPF object: its path, whether it came from the cache, what building cost."""

    path: Path
    cached: bool
    wall: float = 0.0
    cpu: float = 0.0


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-dataplane/bpf`` (``~/.cache/...`` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pytest-dataplane" / "bpf"


def _file_identity(path: Path) -> bytes:
    # Path, size and modification time stand for the version: they change when the package
    # is upgraded, and reading them costs no process (a cache hit must not run clang at all).
    real = Path(os.path.realpath(path))
    stat = real.stat()
    return f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode()


def build_object(*, source: Path | None = None, cache_dir: Path | None = None) -> BpfObject:
    """Compile ``source`` (default: the packaged ``lb4.c``) with clang, or reuse the cache.

    The cache key hashes the source, the flags, and the identity of clang and of the libbpf
    headers. Concurrent builders are safe: each compiles into its own temporary file in the
    cache directory and renames it into place (rename is atomic), so a reader sees either no
    object or a complete one.
    """
    source = SOURCE if source is None else source
    clang = _proc.which("clang")
    if clang is None:
        raise DataplaneUnavailable(f"clang not found: {_INSTALL_TOOLCHAIN}")
    includes = _include_dirs()
    flags = [*CLANG_FLAGS, *(f"-I{d}" for d in includes)]
    try:
        text = source.read_bytes()
    except OSError as exc:
        raise DataplaneError(f"cannot read the BPF source {source}: {exc.strerror}") from None
    digest = hashlib.sha256()
    digest.update(text)
    digest.update("\0".join(flags).encode())
    digest.update(_file_identity(Path(clang)))
    for root in _INCLUDE_ROOTS:
        header = root / "bpf" / "bpf_helper_defs.h"
        if header.is_file():
            digest.update(_file_identity(header))
    cache = default_cache_dir() if cache_dir is None else cache_dir
    target = cache / f"{source.stem}-{digest.hexdigest()[:32]}.o"
    with contextlib.suppress(OSError), target.open("rb") as existing:
        if existing.read(4) == b"\x7fELF":
            return BpfObject(target, cached=True)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(dir=cache, prefix=f".{source.stem}-", suffix=".tmp")
    except OSError as exc:
        raise DataplaneError(f"cannot write to the BPF object cache {cache}: {exc}") from None
    os.close(handle)
    temp = Path(temp_name)
    try:
        done = _proc.run([clang, *flags, "-c", str(source), "-o", str(temp)], check=False)
        if done.returncode != 0:
            raise DataplaneError(
                f"clang could not compile {source} (exit status {done.returncode}):\n"
                f"{done.stderr.strip()[:4000]}"
            )
        os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    return BpfObject(target, cached=False, wall=done.wall, cpu=done.cpu)


# --------------------------------------------------------------------------------------------
# Planning a sync: pure, no kernel


@dataclass(frozen=True)
class _Live:
    """A service as programmed: its service-map key, live revision and endpoints."""

    key: bytes
    rev: int
    endpoints: tuple[Endpoint, ...]


@dataclass
class _Plan:
    """Map operations for one sync, to be applied in this order."""

    backend_writes: list[tuple[bytes, bytes]] = field(default_factory=list)
    service_writes: list[tuple[bytes, bytes]] = field(default_factory=list)
    service_deletes: list[bytes] = field(default_factory=list)
    backend_deletes: list[bytes] = field(default_factory=list)
    changes: dict[str, _Live | None] = field(default_factory=dict)
    next_rev: int = 1

    @property
    def entries(self) -> int:
        return (
            len(self.backend_writes)
            + len(self.service_writes)
            + len(self.service_deletes)
            + len(self.backend_deletes)
        )


def _ipv4(value: str, what: str) -> bytes:
    # inet_pton accepts only the dotted quad (unlike inet_aton) and is ~20x faster than
    # ipaddress, which matters when a sync validates 20,000 addresses.
    try:
        return socket.inet_pton(socket.AF_INET, value)
    except (OSError, TypeError):
        raise ValueError(f"{what}: {value!r} is not an IPv4 address (accepted: a.b.c.d)") from None


def _port(value: int, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{what}: {value!r} is not a port (accepted: an int in 1..65535)")
    return value.to_bytes(2, "big")


def _service_key(spec: ServiceSpec) -> bytes:
    proto = _PROTOCOLS.get(spec.protocol.lower())
    if proto is None:
        raise ValueError(
            f"service {spec.name!r}: protocol {spec.protocol!r} is not supported by the eBPF "
            f"load balancer (accepted: {', '.join(_PROTOCOLS)})"
        )
    return _SVC_KEY.pack(
        _ipv4(spec.vip, f"service {spec.name!r} vip"),
        _port(spec.port, f"service {spec.name!r} port"),
        proto,
    )


def _backend_value(spec: ServiceSpec, endpoint: Endpoint) -> bytes:
    return _BE_VAL.pack(
        _ipv4(endpoint.ip, f"service {spec.name!r} endpoint ip"),
        _port(endpoint.port, f"service {spec.name!r} endpoint {endpoint} port"),
    )


def _plan(
    live: Mapping[str, _Live],
    owners: Mapping[bytes, str],
    services: Mapping[str, ServiceSpec],
    names: Iterable[str] | None,
    next_rev: int,
) -> _Plan:
    """Map operations that take the maps from ``live`` to ``services``.

    ``names`` are the services to look at (None: every one, rewritten even if unchanged: a
    full sync); ``owners`` maps each live service-map key to its service name. Changed
    services get a fresh revision: their backends are written first, the service entry is
    switched next, and the old revision's backends are deleted last, so that a connect never
    pairs a count with slots of another revision.
    """
    full = names is None
    touched = set(live) | set(services) if names is None else set(names)
    plan = _Plan(next_rev=next_rev)
    claimed: dict[bytes, str] = {}
    for name in sorted(touched):
        spec = services.get(name)
        have = live.get(name)
        if spec is None:
            if have is not None:
                plan.changes[name] = None
            continue
        key = _service_key(spec)
        values = [_backend_value(spec, endpoint) for endpoint in spec.endpoints]
        if key in claimed:
            raise ValueError(
                f"services {claimed[key]!r} and {name!r} both use {spec.vip}:{spec.port}/"
                f"{spec.protocol}; a VIP, port and protocol belong to one service"
            )
        claimed[key] = name
        if not full and have is not None and have.key == key and have.endpoints == spec.endpoints:
            continue
        rev = plan.next_rev
        plan.next_rev = rev % 0xFFFFFFFF + 1
        plan.backend_writes.extend(
            (_BE_KEY.pack(rev, slot), value) for slot, value in enumerate(values)
        )
        plan.service_writes.append((key, _SVC_VAL.pack(rev, len(values))))
        plan.changes[name] = _Live(key, rev, spec.endpoints)
    # A key may only be claimed by a service outside this sync if that service keeps it.
    for key, name in claimed.items():
        owner = owners.get(key)
        if owner is not None and owner != name and owner not in touched:
            spec = services[name]
            raise ValueError(
                f"services {owner!r} and {name!r} both use {spec.vip}:{spec.port}/"
                f"{spec.protocol}; a VIP, port and protocol belong to one service"
            )
    for name, new in plan.changes.items():
        old = live.get(name)
        if old is None:
            continue
        if (new is None or new.key != old.key) and old.key not in claimed:
            plan.service_deletes.append(old.key)
        plan.backend_deletes.extend(_BE_KEY.pack(old.rev, s) for s in range(len(old.endpoints)))
    return plan


# --------------------------------------------------------------------------------------------
# The proxier


class EbpfProxier:
    """The ``ebpf`` proxier: programs services into a cgroup/connect4 load balancer.

    ``cgroup`` is a cgroup v2 directory (not a hierarchy's root) holding the clients: only
    ``connect()`` calls made by processes in it (or its descendants) are load balanced.
    ``state_dir`` is a per-session directory where a private bpffs is mounted for the pins;
    ``node_netns`` is where rule counts are read (``iptables-save``, ``nft``; None: here).
    ``cache_dir`` overrides where compiled objects are cached.
    """

    name = "ebpf"

    def __init__(
        self,
        *,
        cgroup: str | os.PathLike[str],
        state_dir: str | os.PathLike[str],
        node_netns: str | None,
        cache_dir: Path | None = None,
    ) -> None:
        self.cgroup = Path(cgroup)
        self.state_dir = Path(state_dir)
        self.node_netns = node_netns
        self.cache_dir = cache_dir
        self.bpffs = self.state_dir / BPFFS_DIR
        self.object: BpfObject | None = None
        self.prog_id: int | None = None
        self.start_cpu = 0.0
        self._services: _bpf.BpfMap | None = None
        self._backends: _bpf.BpfMap | None = None
        self._mounted = False
        self._attached = False
        self._live: dict[str, _Live] = {}
        self._owners: dict[bytes, str] = {}
        self._backend_entries = 0  # sum of len(endpoints) over _live, kept as it changes
        self._next_rev = 1
        self._batch_unsupported: str | None = None
        self._lock = threading.Lock()

    @property
    def prog_path(self) -> Path:
        """Where the program is pinned."""
        return self.bpffs / "prog"

    @property
    def maps_dir(self) -> Path:
        """Where the maps are pinned (one file per map, named as in ``lb4.c``)."""
        return self.bpffs / "maps"

    @property
    def map_ids(self) -> tuple[int, ...]:
        """Kernel ids of the service and backend maps (empty before start)."""
        return tuple(m.info.id for m in (self._services, self._backends) if m is not None)

    def _check_cgroup(self) -> None:
        roots = cgroup2_mounts()
        resolved = Path(os.path.realpath(self.cgroup))
        if not (resolved / "cgroup.procs").is_file():
            raise DataplaneError(
                f"cgroup {self.cgroup} does not exist or is not a cgroup directory (no "
                "cgroup.procs); create it under the cgroup v2 mount "
                f"({', '.join(map(str, roots)) or 'none mounted'})"
            )
        if resolved in roots:
            raise ValueError(
                f"cgroup: {self.cgroup} is the root of the cgroup v2 hierarchy; attaching there "
                "would load-balance every process on the host (accepted: a cgroup below it)"
            )
        if not any(root in resolved.parents for root in roots):
            raise ValueError(
                f"cgroup: {self.cgroup} is not inside a cgroup v2 hierarchy (accepted: a "
                f"directory under {', '.join(map(str, roots)) or 'a cgroup2 mount'})"
            )

    def start(self) -> None:
        """Build (or reuse) the object, mount bpffs, load and pin, attach to the cgroup."""
        if self._mounted or self._services is not None:
            raise DataplaneError(f"the eBPF proxier on {self.cgroup} is already started")
        started = time.thread_time()
        tools = 0.0
        bpftool = _proc.which("bpftool")
        if bpftool is None:
            raise DataplaneUnavailable(f"bpftool not found: {_INSTALL_BPFTOOL}")
        self._check_cgroup()
        self.object = build_object(cache_dir=self.cache_dir)
        tools += self.object.cpu
        try:
            self.bpffs.mkdir(parents=True, exist_ok=True)
            tools += _proc.run(["mount", "-t", "bpf", "bpf", str(self.bpffs)]).cpu
            self._mounted = True
            load = ("prog", "load", str(self.object.path), str(self.prog_path))
            pins = ("type", "cgroup/connect4", "pinmaps", str(self.maps_dir))
            tools += _proc.run([bpftool, *load, *pins]).cpu
            tools += self._refuse_taken_cgroup(bpftool)
            attach = ("cgroup", "attach", str(self.cgroup), "connect4")
            tools += _proc.run([bpftool, *attach, "pinned", str(self.prog_path)]).cpu
            self._attached = True
            self.prog_id = _bpf.prog_id(str(self.prog_path))
            self._services = self._open_map(SERVICES_MAP, _SVC_KEY.size, _SVC_VAL.size)
            self._backends = self._open_map(BACKENDS_MAP, _BE_KEY.size, _BE_VAL.size)
        except BaseException:
            with contextlib.suppress(DataplaneError):
                self.close()
            raise
        self.start_cpu = time.thread_time() - started + tools

    def _refuse_taken_cgroup(self, bpftool: str) -> float:
        # Attaching without flags replaces a program already attached there: never do that to
        # someone else's load balancer (or a second proxier's) silently.
        done = _proc.run([bpftool, "-j", "cgroup", "show", str(self.cgroup)])
        attached = json.loads(done.stdout) if done.stdout.strip() else []
        # bpftool names the hook "connect4" or, with newer libbpf, "cgroup_inet4_connect".
        hooks = {"connect4", "cgroup_inet4_connect"}
        taken = [entry for entry in attached if entry.get("attach_type") in hooks]
        if taken:
            names = ", ".join(f"id {e.get('id')} ({e.get('name') or 'unnamed'})" for e in taken)
            raise DataplaneError(
                f"cgroup {self.cgroup} already has a connect4 program attached ({names}); "
                "give each eBPF proxier a cgroup of its own"
            )
        return done.cpu

    def _open_map(self, name: str, key_size: int, value_size: int) -> _bpf.BpfMap:
        bpf_map = _bpf.BpfMap(str(self.maps_dir / name))
        if (bpf_map.info.key_size, bpf_map.info.value_size) != (key_size, value_size):
            bpf_map.close()
            raise DataplaneError(
                f"BPF map {name} has {bpf_map.info.key_size}-byte keys and "
                f"{bpf_map.info.value_size}-byte values, expected {key_size} and {value_size}: "
                "the object does not match this version of pytest-dataplane (clear the cache "
                f"{self.cache_dir or default_cache_dir()})"
            )
        return bpf_map

    def _maps(self) -> tuple[_bpf.BpfMap, _bpf.BpfMap]:
        if self._services is None or self._backends is None:
            raise DataplaneError("the eBPF proxier is not started (call start() first)")
        return self._services, self._backends

    def sync(
        self, services: Mapping[str, ServiceSpec], changed: Collection[str] | None
    ) -> SyncResult:
        """Make the maps match ``services``; returns once the kernel maps reflect it.

        ``changed`` names the services to look at (added and removed services are found by
        comparing names); None rewrites every service and removes whatever else the maps hold.
        """
        with self._lock:
            wall_start = time.perf_counter()
            cpu_start = time.thread_time()
            svc_map, be_map = self._maps()
            syscalls_before = svc_map.syscalls + be_map.syscalls
            full = changed is None
            names: set[str] | None = None
            if changed is not None:
                names = set(changed)
                # Added or removed services count as changed even when not named; comparing
                # the key sets first is ~3x cheaper than building both differences.
                if services.keys() != self._live.keys():
                    names |= services.keys() - self._live.keys()
                    names |= self._live.keys() - services.keys()
            plan = _plan(self._live, self._owners, services, names, self._next_rev)
            stale_services: list[bytes] = []
            stale_backends: list[bytes] = []
            if full:
                stale_services, stale_backends = self._strays(plan)
            capacity = be_map.info.max_entries
            in_use = self._backend_entries + len(stale_backends)
            if in_use + len(plan.backend_writes) > capacity:
                raise DataplaneError(
                    f"the eBPF backend map holds {capacity:,} entries; this sync needs "
                    f"{in_use + len(plan.backend_writes):,} at once (live endpoints plus the new "
                    "revisions); sync fewer services at a time"
                )
            self._write(be_map, plan.backend_writes)
            self._write(svc_map, plan.service_writes)
            self._delete(svc_map, plan.service_deletes + stale_services)
            self._delete(be_map, plan.backend_deletes + stale_backends)
            for name, new in plan.changes.items():
                old = self._live.pop(name, None)
                if old is not None:
                    self._backend_entries -= len(old.endpoints)
                    if self._owners.get(old.key) == name:
                        del self._owners[old.key]
                if new is not None:
                    self._live[name] = new
                    self._backend_entries += len(new.endpoints)
            for name, new in plan.changes.items():
                if new is not None:
                    self._owners[new.key] = name
            self._next_rev = plan.next_rev
            wall = time.perf_counter() - wall_start
            syscalls = svc_map.syscalls + be_map.syscalls - syscalls_before
            written = plan.entries + len(stale_services) + len(stale_backends)
            mode = (
                f"per-element updates ({self._batch_unsupported})"
                if self._batch_unsupported
                else "batched map updates"
            )
            detail = (
                f"{mode}: {syscalls} bpf syscalls; {len(plan.service_writes)} services and "
                f"{len(plan.backend_writes)} backends written, "
                f"{len(plan.service_deletes) + len(stale_services)} services and "
                f"{len(plan.backend_deletes) + len(stale_backends)} backends deleted"
            )
            return SyncResult(
                wall=wall,
                cpu=time.thread_time() - cpu_start,
                written=written,
                full=full,
                detail=detail,
            )

    def _strays(self, plan: _Plan) -> tuple[list[bytes], list[bytes]]:
        # A full sync also removes what the maps hold beyond our record of them, so that it
        # repairs any drift rather than trusting this process's memory.
        svc_map, be_map = self._maps()
        keep_keys = {live.key for name, live in self._live.items() if name not in plan.changes}
        keep_keys.update(live.key for live in plan.changes.values() if live is not None)
        # Revisions this sync writes are not strays even if an old leftover shares the number.
        known_revs = {live.rev for live in self._live.values()}
        known_revs.update(live.rev for live in plan.changes.values() if live is not None)
        planned = set(plan.service_deletes)
        services = [
            key for key, _ in svc_map.items() if key not in keep_keys and key not in planned
        ]
        backends = [key for key, _ in be_map.items() if _BE_KEY.unpack(key)[0] not in known_revs]
        return services, backends

    def _write(self, bpf_map: _bpf.BpfMap, entries: list[tuple[bytes, bytes]]) -> None:
        if not entries:
            return
        if self._batch_unsupported is None:
            try:
                bpf_map.update_batch([k for k, _ in entries], [v for _, v in entries])
                return
            except _bpf.BpfSyscallError as exc:
                if exc.errno not in _bpf.BATCH_UNSUPPORTED:
                    raise
                self._batch_unsupported = f"BPF_MAP_UPDATE_BATCH unsupported: {exc}"
        for key, value in entries:
            bpf_map.update(key, value)

    def _delete(self, bpf_map: _bpf.BpfMap, keys: list[bytes]) -> None:
        if not keys:
            return
        if self._batch_unsupported is None:
            try:
                bpf_map.delete_batch(keys)
                return
            except _bpf.BpfSyscallError as exc:
                if exc.errno not in _bpf.BATCH_UNSUPPORTED:
                    raise
                self._batch_unsupported = f"BPF_MAP_DELETE_BATCH unsupported: {exc}"
        for key in keys:
            bpf_map.delete(key)

    def programmed(self) -> dict[tuple[str, int, str], list[str]]:
        """What the kernel maps hold: ``(vip, port, protocol) -> ["ip:port", ...]``."""
        with self._lock:
            return _decode_maps(*self._maps())

    def rule_count(self) -> RuleCount:
        """``KUBE-`` lines in the node namespace (expected: none) and the service map's size."""
        node = self.node_netns or "host"
        parts: list[RuleCountPart] = []
        chains: Counter[str] = Counter()
        savers: list[tuple[str, str]] = []
        for tool, backend in (
            ("iptables-legacy-save", "iptables-legacy"),
            ("iptables-nft-save", "iptables-nft"),
            ("iptables-save", "iptables"),  # only where the two above do not exist
        ):
            path = _proc.which(tool)
            if path is not None and (backend != "iptables" or not savers):
                savers.append((path, backend))
        for path, backend in savers:
            done = _proc.run([path], netns=self.node_netns, check=False)
            if done.returncode == 0:
                parts += count_iptables_save(done.stdout, node=node, backend=backend)
                chains.update(iptables_chain_sizes(done.stdout))
        nft = _proc.which("nft")
        if nft is not None:
            done = _proc.run(
                [nft, "list", "table", "ip", "kube-proxy"], netns=self.node_netns, check=False
            )
            if done.returncode == 0:  # a missing table is an error exit: nothing to count
                parts += count_nft_table(done.stdout, node=node)
                chains.update(nft_chain_sizes(done.stdout))
        entries: int | None = None
        with self._lock:
            if self._services is not None:
                entries = self._services.count()
        return summarize_rules(parts, chains, service_map_entries=entries)

    def close(self) -> None:
        """Detach, unpin and unmount; safe to call twice and after a failed start."""
        with self._lock:
            problems: list[str] = []
            for bpf_map in (self._services, self._backends):
                if bpf_map is not None:
                    bpf_map.close()
            self._services = self._backends = None
            bpftool = _proc.which("bpftool")
            if self._attached and bpftool is not None and self.cgroup.is_dir():
                # A cgroup that is already gone took its attachments with it.
                detach = ("cgroup", "detach", str(self.cgroup), "connect4")
                done = _proc.run([bpftool, *detach, "pinned", str(self.prog_path)], check=False)
                if done.returncode != 0 and self.cgroup.is_dir():
                    problems.append(f"bpftool cgroup detach: {done.stderr.strip()}")
            self._attached = False
            if self._mounted or self.bpffs.is_dir():
                for pin in (*self.maps_dir.glob("*"), self.prog_path):
                    with contextlib.suppress(FileNotFoundError):
                        pin.unlink()
                with contextlib.suppress(FileNotFoundError, OSError):
                    self.maps_dir.rmdir()
            for mount in reversed(_bpf_mounts_under(Path(os.path.realpath(self.bpffs)))):
                done = _proc.run(["umount", str(mount)], check=False)
                if done.returncode != 0:
                    problems.append(f"umount {mount}: {done.stderr.strip()}")
            self._mounted = False
            with contextlib.suppress(FileNotFoundError):
                self.bpffs.rmdir()
            self._live.clear()
            self._owners.clear()
            self._backend_entries = 0
            self.prog_id = None
            if problems:
                raise DataplaneError(
                    "the eBPF proxier could not remove everything: " + "; ".join(problems)
                )


def _decode_maps(
    svc_map: _bpf.BpfMap, be_map: _bpf.BpfMap
) -> dict[tuple[str, int, str], list[str]]:
    protocols = {number: name for name, number in _PROTOCOLS.items()}
    backends: dict[tuple[int, int], str] = {}
    for key, value in be_map.items():
        ip, port = _BE_VAL.unpack(value)
        backends[_BE_KEY.unpack(key)] = f"{ipaddress.IPv4Address(ip)}:{int.from_bytes(port, 'big')}"
    result: dict[tuple[str, int, str], list[str]] = {}
    for key, value in svc_map.items():
        vip, port, proto = _SVC_KEY.unpack(key)
        rev, count = _SVC_VAL.unpack(value)
        result[
            (
                str(ipaddress.IPv4Address(vip)),
                int.from_bytes(port, "big"),
                protocols.get(proto, str(proto)),
            )
        ] = [backends.get((rev, slot), "?") for slot in range(count)]
    return result


def read_pinned(state_dir: str | os.PathLike[str]) -> dict[tuple[str, int, str], list[str]]:
    """What the maps pinned by an :class:`EbpfProxier` with this ``state_dir`` hold, read by
    another process (the proxier may run elsewhere, e.g. in the lab's eBPF controller):
    ``(vip, port, protocol) -> ["ip:port", ...]``. DataplaneError when nothing is pinned."""
    maps_dir = Path(state_dir) / BPFFS_DIR / "maps"
    opened: list[_bpf.BpfMap] = []
    try:
        for name in (SERVICES_MAP, BACKENDS_MAP):
            path = maps_dir / name
            if not path.exists():
                raise DataplaneError(f"no eBPF map is pinned at {path} (is the proxier running?)")
            opened.append(_bpf.BpfMap(str(path)))
        return _decode_maps(opened[0], opened[1])
    finally:
        for bpf_map in opened:
            bpf_map.close()


def remove_leftovers(state_dir: Path) -> list[str]:
    """Unmount every bpffs under ``state_dir`` (what a killed session leaves); returns them.

    Unmounting drops the pins; the program's cgroup attachment goes with the cgroup.
    """
    removed = []
    for mount in reversed(_bpf_mounts_under(Path(os.path.realpath(state_dir)))):
        _proc.run(["umount", "-l", str(mount)])
        removed.append(str(mount))
    return removed
