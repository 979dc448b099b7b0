"""Counting dataplane rules from the text real tools print; shared by every provider.

Counts follow the motivating story: ``iptables-save | grep KUBE- | wc -l`` (per table, per
backend) plus the lines of ``nft list table ip kube-proxy``. Pure functions of text.

Where a kubelet runs (kind and existing clusters), the lines of its own chains are left out of
the count and reported apart (``exclude_kubelet=True``). On every Kubernetes node kubelet writes
the same few ``KUBE-`` lines whatever the dataplane (``pkg/kubelet/kubelet_network_linux.go``:
the ``KUBE-FIREWALL`` chain with its localnet DROP rule and the INPUT/OUTPUT jumps to it, and
the ``KUBE-KUBELET-CANARY`` chain it re-creates in every table); they do not grow with
services, and counting them would make a node with no service rules at all (Cilium replacing
kube-proxy) show about six. kube-proxy in iptables mode keeps an identical copy of that one
``KUBE-FIREWALL`` rule (``iptables-save`` shows a single copy), so the chain is left out on
every dataplane alike. The lab has no kubelet and counts every ``KUBE-`` line (the default).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from .base import RuleCount, RuleCountPart

__all__ = [
    "COUNTED_TABLES",
    "KUBELET_CHAINS",
    "count_iptables_save",
    "count_nft_table",
    "iptables_chain_sizes",
    "is_kubelet_line",
    "kubelet_iptables_save",
    "nft_chain_sizes",
    "summarize",
]

_NFT_CHAIN = re.compile(r"^\s*chain\s+(\S+)\s*\{")
_NFT_MAP = re.compile(r"^\s*(?:map|set)\s+(\S+)\s*\{")
_KUBE_NAME = re.compile(r"KUBE-[A-Za-z0-9_-]*")

# Chains kubelet owns (pkg/kubelet/kubelet_network_linux.go): the firewall chain with the
# localnet DROP rule, the canary it re-creates in mangle, nat and filter to notice a flush, and
# the hint chain in mangle (not a counted table; listed for completeness). Kubelets before
# Kubernetes 1.27 also wrote KUBE-MARK-DROP, KUBE-MARK-MASQ and KUBE-POSTROUTING, which
# kube-proxy owns too and writes itself; those cannot be told apart and stay counted.
KUBELET_CHAINS = frozenset({"KUBE-FIREWALL", "KUBE-KUBELET-CANARY", "KUBE-IPTABLES-HINT"})


COUNTED_TABLES = ("nat", "filter")


def is_kubelet_line(line: str) -> bool:
    """Whether an ``iptables-save`` line containing ``KUBE-`` belongs to kubelet: every
    ``KUBE-`` name on it is one of :data:`KUBELET_CHAINS` (the chain's declaration, its rules,
    and jumps to it from the built-in chains)."""
    names = _KUBE_NAME.findall(line)
    return bool(names) and all(name in KUBELET_CHAINS for name in names)


def _split_iptables_save(
    text: str, tables: tuple[str, ...], exclude_kubelet: bool
) -> tuple[Counter[str], Counter[str]]:
    counted: Counter[str] = Counter()
    kubelet: Counter[str] = Counter()
    table = "?"
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif "KUBE-" in line and table in tables:
            (kubelet if exclude_kubelet and is_kubelet_line(line) else counted)[table] += 1
    return counted, kubelet


def count_iptables_save(
    text: str,
    *,
    node: str,
    backend: str,
    tables: tuple[str, ...] = COUNTED_TABLES,
    exclude_kubelet: bool = False,
) -> list[RuleCountPart]:
    """Lines containing ``KUBE-`` per table of an ``iptables-save`` dump.

    Only the nat and filter tables count (where kube-proxy's service rules live; kubelet's
    canary chains in mangle do not grow with services). Tables without such lines are left
    out; ``backend`` is ``iptables-legacy`` or ``iptables-nft`` (whichever tool printed the
    text). ``exclude_kubelet`` leaves kubelet's own chains out (nodes with a kubelet; see
    :func:`kubelet_iptables_save`).
    """
    counted, _ = _split_iptables_save(text, tables, exclude_kubelet)
    return [RuleCountPart(node, backend, t, n) for t, n in counted.items() if n]


def kubelet_iptables_save(
    text: str, *, node: str, backend: str, tables: tuple[str, ...] = COUNTED_TABLES
) -> list[RuleCountPart]:
    """The ``KUBE-`` lines of kubelet's own chains (:data:`KUBELET_CHAINS`) per table of an
    ``iptables-save`` dump: what :func:`count_iptables_save` leaves out with
    ``exclude_kubelet``."""
    _, kubelet = _split_iptables_save(text, tables, True)
    return [RuleCountPart(node, backend, t, n) for t, n in kubelet.items() if n]


def count_nft_table(text: str, *, node: str, table: str = "kube-proxy") -> list[RuleCountPart]:
    """Non-blank lines of ``nft list table ip kube-proxy`` (empty text: no table, no part)."""
    lines = sum(1 for line in text.splitlines() if line.strip())
    return [RuleCountPart(node, "nftables", table, lines)] if lines else []


def iptables_chain_sizes(
    text: str, *, tables: tuple[str, ...] = COUNTED_TABLES, exclude_kubelet: bool = False
) -> Counter[str]:
    """Number of ``-A`` rules per ``KUBE-`` chain (nat and filter) in an ``iptables-save`` dump
    (kubelet's chains left out with ``exclude_kubelet``)."""
    sizes: Counter[str] = Counter()
    table = "?"
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A KUBE-") and table in tables:
            chain = line.split(None, 2)[1]
            if not (exclude_kubelet and chain in KUBELET_CHAINS):
                sizes[chain] += 1
    return sizes


def nft_chain_sizes(text: str) -> Counter[str]:
    """Rules per chain, and elements per map or set, of an ``nft list table`` listing.

    Map elements are counted one per ``:`` (key : verdict) and set elements one per item, so a
    verdict map of 5,000 services counts 5,000 however ``nft`` wraps its lines.
    """
    sizes: Counter[str] = Counter()
    current: str | None = None
    kind = ""
    in_elements = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        header = _NFT_CHAIN.match(raw) or _NFT_MAP.match(raw)
        if header:
            current, kind, in_elements = header.group(1), line.split()[0], False
            sizes[current] += 0
            continue
        if current is None:
            continue
        if line == "}" and not in_elements:
            current = None
            continue
        if kind == "chain":
            if not line.startswith(("type ", "policy ", "comment ")):
                sizes[current] += 1
            continue
        if line.startswith("elements = {"):
            in_elements, line = True, line[len("elements = {") :]
        if in_elements:
            body = line.rstrip("}").strip().rstrip(",").strip()
            if body:
                sizes[current] += body.count(":") if kind == "map" else body.count(",") + 1
            if line.endswith("}"):
                in_elements = False
    return sizes


def summarize(
    parts: Iterable[RuleCountPart],
    chain_sizes: Counter[str] | None = None,
    *,
    service_map_entries: int | None = None,
    kubelet_parts: Iterable[RuleCountPart] = (),
    top: int = 5,
) -> RuleCount:
    """Combine parts (from every node and backend) into a :class:`RuleCount`; kubelet's lines
    (``kubelet_parts``) are carried along, outside the total."""
    parts = tuple(parts)
    largest = tuple(chain_sizes.most_common(top)) if chain_sizes else ()
    return RuleCount(
        total=sum(p.lines for p in parts),
        parts=parts,
        largest_chains=largest,
        service_map_entries=service_map_entries,
        kubelet_parts=tuple(kubelet_parts),
    )
