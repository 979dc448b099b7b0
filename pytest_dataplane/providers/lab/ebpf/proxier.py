"""The ``ebpf`` proxier: programs services into the cgroup/connect4 load balancer's maps.

It builds (or reuses) the object, mounts a private bpffs, loads, pins and attaches the
program with bpftool, and writes the maps with bpf(2) in batches along a
:func:`~.plan.plan_sync` plan.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Final

from ....errors import DataplaneError, DataplaneUnavailable
from ...base import RuleCount, RuleCountPart
from ...rules import count_iptables_save, count_nft_table, iptables_chain_sizes, nft_chain_sizes
from ...rules import summarize as summarize_rules
from .. import _bpf, _proc
from .._types import ServiceSpec, SyncResult
from .build import BpfObject, build_object, default_cache_dir
from .checks import INSTALL_BPFTOOL, bpf_mounts_under, cgroup2_mounts
from .plan import BE_KEY, BE_VAL, SVC_KEY, SVC_VAL, Live, SyncPlan, decode_maps, plan_sync

__all__ = [
    "BACKENDS_MAP",
    "BPFFS_DIR",
    "SERVICES_MAP",
    "EbpfProxier",
    "read_pinned",
    "remove_leftovers",
]

SERVICES_MAP: Final = "dpt_services"
BACKENDS_MAP: Final = "dpt_backends"
BPFFS_DIR: Final = "bpffs"


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
        self._live: dict[str, Live] = {}
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
            raise DataplaneUnavailable(f"bpftool not found: {INSTALL_BPFTOOL}")
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
            self._services = self._open_map(SERVICES_MAP, SVC_KEY.size, SVC_VAL.size)
            self._backends = self._open_map(BACKENDS_MAP, BE_KEY.size, BE_VAL.size)
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
            plan = plan_sync(self._live, self._owners, services, names, self._next_rev)
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

    def _strays(self, plan: SyncPlan) -> tuple[list[bytes], list[bytes]]:
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
        backends = [key for key, _ in be_map.items() if BE_KEY.unpack(key)[0] not in known_revs]
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
            svc_map, be_map = self._maps()
            return decode_maps(svc_map.items(), be_map.items())

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
            for mount in reversed(bpf_mounts_under(Path(os.path.realpath(self.bpffs)))):
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
        return decode_maps(opened[0].items(), opened[1].items())
    finally:
        for bpf_map in opened:
            bpf_map.close()


def remove_leftovers(state_dir: Path) -> list[str]:
    """Unmount every bpffs under ``state_dir`` (what a killed session leaves); returns them.

    Unmounting drops the pins; the program's cgroup attachment goes with the cgroup.
    """
    removed = []
    for mount in reversed(bpf_mounts_under(Path(os.path.realpath(state_dir)))):
        _proc.run(["umount", "-l", str(mount)])
        removed.append(str(mount))
    return removed
