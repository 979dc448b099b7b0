"""Reading Cilium's load-balancer map from ``cilium-dbg bpf lb list``. Pure.

The format is the one Cilium's CLI prints (``cilium-dbg/cmd/bpf_lb_list.go``, before 1.15
``cilium/cmd/bpf_lb_list.go``, through its ``TablePrinter``): a header ``SERVICE ADDRESS
BACKEND ADDRESS (REVNAT_ID) (SLOT)``, then one row per entry of the services map. It has
changed over the releases, and every form below is read:

- 1.14 to 1.18 key each row by frontend *and* slot (``10.96.0.1:443 (0)``; from 1.17 with the
  protocol, ``10.96.0.1:443/TCP (0)``), one entry per row, rows in map order (a frontend's
  rows are not adjacent);
- 1.12 and 1.13 print a frontend once (``10.96.0.1:443``) and its entries on the following
  rows with that column blank;
- older releases print no slot at all in the entries (header ``BACKEND ADDRESS``).

An entry is a frontend's master entry (``0.0.0.0:0 (1) (0) [ClusterIP, non-routable]``: slot
0, or without a slot the wildcard address ``0.0.0.0:0`` / ``[::]:0``), a backend
(``10.244.1.5:8080/TCP (1) (1)``, slot 1..n, or without a slot any other address), or
``backend N not found``. ``-o json`` prints the same data as ``{key: [entry, ...]}``, which
:func:`parse_lb_list` also accepts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .versions import Version

__all__ = ["LbList", "cilium_cli", "parse_lb_list"]

# The agent's debug CLI was renamed from ``cilium`` to ``cilium-dbg`` in 1.15.
_CILIUM_DBG_SINCE: Final = (1, 15)

_ENTRY: Final = re.compile(
    r"^(?P<address>\S+)\s+\((?P<revnat>\d+)\)(?:\s+\((?P<slot>\d+)\))?(?:\s|$)"
)
# A table row: the key (frontend, with the slot from 1.14 on), then the entry.
_ROW: Final = re.compile(r"^(?P<frontend>\S+)(?:\s+\((?P<slot>\d+)\))?\s+(?P<entry>\S.*)$")
_KEY_SLOT: Final = re.compile(r"\s+\(\d+\)$")
_MASTER_ADDRESSES: Final = frozenset({"0.0.0.0:0", "[::]:0"})
_HEADER: Final = "SERVICE ADDRESS"


@dataclass(frozen=True)
class LbList:
    """What one agent's services map holds.

    ``entries`` is the number of map elements (master entries plus backend slots: the map's
    size), ``frontends`` the number of service addresses, ``backends`` the backend slots, and
    ``missing_backends`` the slots whose backend id was not found in the backends map.
    """

    frontends: int
    entries: int
    backends: int
    missing_backends: int = 0


def _is_backend(entry: str) -> bool:
    match = _ENTRY.match(entry)
    if match is None:
        raise ValueError(f"cilium bpf lb list: cannot read entry {entry!r}")
    if match["slot"] is not None:
        return int(match["slot"]) > 0
    # Releases that print no slot: the master entry is the wildcard address.
    return match["address"] not in _MASTER_ADDRESSES


def _count(groups: Mapping[str, Sequence[str]]) -> LbList:
    entries = backends = missing = 0
    for rows in groups.values():
        for row in rows:
            text = row.strip()
            if not text:
                continue
            entries += 1
            if text.startswith("backend ") and text.endswith("not found"):
                missing += 1
            elif _is_backend(text):
                backends += 1
    return LbList(len(groups), entries, backends, missing)


def _frontend(key: str) -> str:
    """The frontend a map key belongs to: the key without its `` (slot)`` suffix."""
    return _KEY_SLOT.sub("", key.strip())


def parse_lb_list(text: str) -> LbList:
    """Count the frontends and entries of ``cilium-dbg bpf lb list`` (table or ``-o json``).

    Raises ValueError on text that is neither, naming the offending line.
    """
    stripped = text.strip()
    if not stripped:
        return LbList(0, 0, 0)
    groups: dict[str, list[str]] = {}
    if stripped.startswith("{"):
        data = json.loads(stripped)
        if not isinstance(data, dict):
            raise ValueError("cilium bpf lb list -o json: expected an object of lists")
        for key, values in data.items():
            groups.setdefault(_frontend(str(key)), []).extend(str(v) for v in values)
        return _count(groups)
    current: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(_HEADER):
            continue
        if line[0].isspace():
            if current is None:
                raise ValueError(f"cilium bpf lb list: entry before any frontend: {line!r}")
            groups[current].append(line.strip())
            continue
        row = _ROW.match(line.rstrip())
        if row is None:
            raise ValueError(f"cilium bpf lb list: cannot read row {line!r}")
        current = row["frontend"]
        groups.setdefault(current, []).append(row["entry"])
    return _count(groups)


def cilium_cli(version: Version) -> str:
    """Name of the debug CLI inside the cilium-agent container at ``version``."""
    return "cilium-dbg" if version.minor_version >= _CILIUM_DBG_SINCE else "cilium"
