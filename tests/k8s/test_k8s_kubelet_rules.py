"""kubelet's own KUBE- lines are left out of a kind node's rule count and shown apart.

The Cilium-node sample (tests/data/iptables-nft-save-kind-cilium-node.txt, provenance in
tests/data/README.md) holds only what kubelet and Cilium write: it counts 0 dataplane lines.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_dataplane import DataplaneAssertionError, assert_kube_rules_at_most
from pytest_dataplane.providers import rules
from pytest_dataplane.providers.base import RuleCountPart
from pytest_dataplane.providers.k8s.nodes import kubelet_from_dump, rules_from_dump
from pytest_dataplane.providers.rules import summarize

DATA = Path(__file__).parent.parent / "data"
MARK = "### pytest-dataplane "
CILIUM_NODE = (DATA / "iptables-nft-save-kind-cilium-node.txt").read_text()


def dump(nft_save: str) -> str:
    """A node's DUMP_SCRIPT output: kind nodes carry both iptables variants; kubelet and the
    dataplane used the nft one, and there is no kube-proxy nftables table."""
    return f"{MARK}iptables-legacy-save\n{MARK}iptables-nft-save\n{nft_save}{MARK}nft\n"


def grep_kube(text: str) -> int:
    """``iptables-save | grep KUBE- | wc -l`` over nat and filter: the story's raw count."""
    count, table = 0, ""
    for line in text.splitlines():
        table = line[1:] if line.startswith("*") else table
        count += table in ("nat", "filter") and "KUBE-" in line
    return count


def test_a_cilium_node_counts_zero_dataplane_lines() -> None:
    parts, chains = rules_from_dump("kind-worker", dump(CILIUM_NODE))
    assert parts == []
    assert not chains
    kubelet = kubelet_from_dump("kind-worker", dump(CILIUM_NODE))
    # kubelet: filter :KUBE-FIREWALL, :KUBE-KUBELET-CANARY, the DROP rule and the INPUT and
    # OUTPUT jumps; nat :KUBE-KUBELET-CANARY. mangle (its canary and hint chain) is not counted.
    assert kubelet == [
        RuleCountPart("kind-worker", "iptables-nft", "filter", 5),
        RuleCountPart("kind-worker", "iptables-nft", "nat", 1),
    ]
    assert grep_kube(CILIUM_NODE) == 6  # what a plain grep would have counted


def test_nodes_without_a_kubelet_count_every_kube_line() -> None:
    """The lab's nodes run no kubelet: a KUBE-FIREWALL chain there is kube-proxy's own, and
    the count is the story's plain grep."""
    parts, chains = rules_from_dump("node0", dump(CILIUM_NODE), kubelet=False)
    assert sum(p.lines for p in parts) == grep_kube(CILIUM_NODE) == 6
    assert chains["KUBE-FIREWALL"] > 0


def test_the_default_two_node_cluster_passes_the_ebpf_story() -> None:
    nodes = ("dpt-ebpf-control-plane", "dpt-ebpf-worker")
    parts = [p for n in nodes for p in rules_from_dump(n, dump(CILIUM_NODE))[0]]
    kubelet = [p for n in nodes for p in kubelet_from_dump(n, dump(CILIUM_NODE))]
    count = summarize(parts, kubelet_parts=kubelet)
    assert count.total == 0
    assert count.kubelet_lines == 12  # the "12 on the default two-node cluster"
    assert_kube_rules_at_most(count, 10)
    described = count.describe()
    assert "0 KUBE- rule lines in total" in described
    assert "kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY; not counted): 12" in described
    assert "dpt-ebpf-worker iptables-nft filter: 5" in described
    data = count.to_dict()
    assert data["total"] == 0 and data["kubelet_lines"] == 12
    assert len(data["kubelet_parts"]) == 4


def kubelet_lines() -> dict[str, list[str]]:
    """The lines kubelet wrote in the sample, per counted table."""
    found: dict[str, list[str]] = {"nat": [], "filter": []}
    table = ""
    for line in CILIUM_NODE.splitlines():
        table = line[1:] if line.startswith("*") else table
        if table in found and "KUBE-" in line:
            found[table].append(line)
    return found


@pytest.mark.parametrize("backend", ["legacy", "nft"])
def test_kube_proxy_lines_still_count_next_to_kubelet_lines(backend: str) -> None:
    # The lab's real kube-proxy capture with kubelet's lines added, as on a kind node in
    # iptables mode: the count is exactly kube-proxy's.
    proxy = (DATA / f"iptables-{backend}-save.txt").read_text()
    extra = kubelet_lines()
    merged = []
    table = ""
    for line in proxy.splitlines():
        table = line[1:] if line.startswith("*") else table
        if line == "COMMIT" and table in extra:
            merged += extra[table]
        merged.append(line)
    node = "\n".join(merged) + "\n"
    plain = rules.count_iptables_save(proxy, node="n", backend=f"iptables-{backend}")
    counted = rules.count_iptables_save(
        node, node="n", backend=f"iptables-{backend}", exclude_kubelet=True
    )
    assert sorted(map(vars, counted), key=str) == sorted(map(vars, plain), key=str)
    assert grep_kube(node) == grep_kube(proxy) + 6
    assert rules.iptables_chain_sizes(node, exclude_kubelet=True) == rules.iptables_chain_sizes(
        proxy
    )
    # The lab (no kubelet) counts every KUBE- line, as before.
    assert sum(p.lines for p in rules.count_iptables_save(node, node="n", backend="b")) == (
        grep_kube(node)
    )


@pytest.mark.parametrize(
    ("line", "kubelet"),
    [
        ("-A INPUT -j KUBE-FIREWALL", True),
        (":KUBE-KUBELET-CANARY - [0:0]", True),
        ("-A KUBE-PROXY-FIREWALL -j DROP", False),  # kube-proxy's load-balancer firewall
        (":KUBE-PROXY-CANARY - [0:0]", False),  # kube-proxy's own canary
        ("-A KUBE-SERVICES -j KUBE-FIREWALL", False),  # a service chain is kube-proxy's
        ("-A KUBE-FW-ABCDEF -j KUBE-MARK-DROP", False),
    ],
)
def test_which_lines_are_kubelets(line: str, kubelet: bool) -> None:
    assert rules.is_kubelet_line(line) is kubelet


def test_a_failure_message_shows_kubelet_lines_apart() -> None:
    proxy = (DATA / "iptables-nft-save.txt").read_text()
    text = dump(proxy.replace("COMMIT", "\n".join(kubelet_lines()["filter"]) + "\nCOMMIT", 1))
    parts, chains = rules_from_dump("kind-worker", text)
    count = summarize(parts, chains, kubelet_parts=kubelet_from_dump("kind-worker", text))
    with pytest.raises(DataplaneAssertionError) as info:
        assert_kube_rules_at_most(count, 10)
    message = str(info.value)
    assert f"ACTUAL:    {grep_kube(proxy)} KUBE- rule lines" in message
    assert "kubelet's own chains (KUBE-FIREWALL, KUBE-KUBELET-CANARY; not counted): 5" in message
    assert "KUBE-FIREWALL (" not in message  # not among the largest chains
