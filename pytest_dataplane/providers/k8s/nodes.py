"""Running commands on cluster nodes, and reading the dataplane's rules from what they print.

:class:`NodeAccess` is the one thing a provider supplies to reach nodes: on kind a node is a
container (``docker exec``, :class:`~pytest_dataplane.providers.kind.docker.DockerNodes`); on an
existing cluster it is reached through the privileged node agent
(:class:`~pytest_dataplane.providers.kubeconfig.agent.AgentNodes`). Every provider runs the
same shell snippets, so the parsing below is shared and pure, and :func:`count_rules` is the
one rule-count collector over any node access.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from ..base import RuleCountPart
from ..rules import (
    count_iptables_save,
    count_nft_table,
    iptables_chain_sizes,
    kubelet_iptables_save,
    nft_chain_sizes,
)

__all__ = [
    "DUMP_SCRIPT",
    "NodeAccess",
    "NodeRules",
    "count_rules",
    "kubelet_from_dump",
    "rules_from_dump",
    "split_sections",
]

_MARK: Final = "### pytest-dataplane "
# Both iptables backends (kind nodes carry both; kube-proxy uses whichever its wrapper picks),
# a plain iptables-save where neither variant exists, then kube-proxy's own nftables table.
DUMP_SCRIPT: Final = (
    "found=0; "
    "for t in iptables-legacy-save iptables-nft-save; do "
    f'if command -v $t >/dev/null 2>&1; then found=1; echo "{_MARK}$t"; $t 2>/dev/null; fi; '
    "done; "
    "if [ $found = 0 ] && command -v iptables-save >/dev/null 2>&1; then "
    f'echo "{_MARK}iptables-save"; iptables-save 2>/dev/null; fi; '
    f'if command -v nft >/dev/null 2>&1; then echo "{_MARK}nft"; '
    "nft list table ip kube-proxy 2>/dev/null; fi; true"
)
_BACKENDS: Final = {
    "iptables-legacy-save": "iptables-legacy",
    "iptables-nft-save": "iptables-nft",
    "iptables-save": "iptables",
}


class NodeAccess(Protocol):
    """Runs shell snippets on the cluster's nodes."""

    def nodes(self) -> list[str]:
        """Names of the nodes (as Kubernetes names them)."""

    def run(self, node: str, script: str, *, timeout: float = 60.0) -> str:
        """Run ``script`` with ``sh -c`` on ``node`` (in its root namespaces); its stdout."""


def split_sections(text: str) -> dict[str, str]:
    """Split :data:`DUMP_SCRIPT` output into ``{tool: its output}``."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if line.startswith(_MARK):
            current = line[len(_MARK) :].strip()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
    return {name: "\n".join(lines) + ("\n" if lines else "") for name, lines in sections.items()}


def rules_from_dump(
    node: str, text: str, *, kubelet: bool = True
) -> tuple[list[RuleCountPart], Counter[str]]:
    """Rule-count parts and chain sizes of one node's :data:`DUMP_SCRIPT` output, counted by
    the same parsers as the lab's. On nodes that run a kubelet (``kubelet``) its own chains
    are left out (:func:`kubelet_from_dump` returns their lines); on the lab's nodes, which
    run none, every KUBE- line is kube-proxy's (it writes a KUBE-FIREWALL chain too)."""
    parts: list[RuleCountPart] = []
    chains: Counter[str] = Counter()
    for tool, output in split_sections(text).items():
        if tool == "nft":
            parts += count_nft_table(output, node=node)
            chains.update(nft_chain_sizes(output))
        elif tool in _BACKENDS:
            parts += count_iptables_save(
                output, node=node, backend=_BACKENDS[tool], exclude_kubelet=kubelet
            )
            chains.update(iptables_chain_sizes(output, exclude_kubelet=kubelet))
    return parts, chains


def kubelet_from_dump(node: str, text: str) -> list[RuleCountPart]:
    """The lines of kubelet's own chains in one node's :data:`DUMP_SCRIPT` output (what
    :func:`rules_from_dump` leaves out of the count), per backend and table."""
    parts: list[RuleCountPart] = []
    for tool, output in split_sections(text).items():
        if tool in _BACKENDS:
            parts += kubelet_iptables_save(output, node=node, backend=_BACKENDS[tool])
    return parts


def merge_chains(per_node: Mapping[str, Counter[str]]) -> Counter[str]:
    """Chain sizes summed over nodes (totals are summed over nodes too)."""
    total: Counter[str] = Counter()
    for chains in per_node.values():
        total.update(chains)
    return total


@dataclass(frozen=True)
class NodeRules:
    """What :func:`count_rules` read: the counted parts, kubelet's own (uncounted) parts, and
    chain sizes summed over nodes."""

    parts: tuple[RuleCountPart, ...]
    kubelet_parts: tuple[RuleCountPart, ...]
    chains: Counter[str]


def count_rules(nodes: NodeAccess, *, kubelet: bool = True) -> NodeRules:
    """Run :data:`DUMP_SCRIPT` on every node and count its ``KUBE-`` lines (kubelet's own
    chains apart when the nodes run a kubelet)."""
    parts: list[RuleCountPart] = []
    kubelet_parts: list[RuleCountPart] = []
    chains: dict[str, Counter[str]] = {}
    for node in nodes.nodes():
        dump = nodes.run(node, DUMP_SCRIPT)
        node_parts, node_chains = rules_from_dump(node, dump, kubelet=kubelet)
        parts += node_parts
        if kubelet:
            kubelet_parts += kubelet_from_dump(node, dump)
        chains[node] = node_chains
    return NodeRules(tuple(parts), tuple(kubelet_parts), merge_chains(chains))
