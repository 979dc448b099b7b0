"""Rule counts from what nodes print: the same parsers as the lab, on real tool output.

The dump script runs for real with ``sh`` in a network namespace of ours into which the
recorded rule sets of ``tests/data`` were restored, and must count what those files hold.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_dataplane.providers.k8s.nodes import (
    DUMP_SCRIPT,
    rules_from_dump,
    split_sections,
)
from pytest_dataplane.providers.rules import summarize

DATA = Path(__file__).parent.parent / "data"
MARK = "### pytest-dataplane "


def test_split_sections() -> None:
    text = f"{MARK}iptables-legacy-save\n*nat\nCOMMIT\n{MARK}nft\n{MARK}iptables-nft-save\n-A X\n"
    assert split_sections(text) == {
        "iptables-legacy-save": "*nat\nCOMMIT\n",
        "nft": "",
        "iptables-nft-save": "-A X\n",
    }


def test_rules_from_recorded_lab_outputs() -> None:
    legacy = (DATA / "iptables-legacy-save.txt").read_text()
    nft_save = (DATA / "iptables-nft-save.txt").read_text()
    table = (DATA / "nft-list-table-kube-proxy.txt").read_text()
    dump = (
        f"{MARK}iptables-legacy-save\n{legacy}{MARK}iptables-nft-save\n{nft_save}{MARK}nft\n{table}"
    )
    parts, chains = rules_from_dump("kind-worker", dump)
    by_place = {(p.backend, p.table): p.lines for p in parts}
    kube = lambda text, table: sum(  # noqa: E731
        "KUBE-" in line
        for line in text.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0].splitlines()
    )
    assert by_place[("iptables-legacy", "nat")] == kube(legacy, "nat")
    assert by_place[("iptables-legacy", "filter")] == kube(legacy, "filter")
    assert by_place[("nftables", "kube-proxy")] == sum(
        1 for line in table.splitlines() if line.strip()
    )
    assert {p.node for p in parts} == {"kind-worker"}
    # web has 3 endpoints: its service chain holds 3 jumps (+ the masquerade rule)
    assert max(chains.values()) >= 3


def test_plain_iptables_save_when_no_variant_exists() -> None:
    legacy = (DATA / "iptables-legacy-save.txt").read_text()
    parts, _ = rules_from_dump("n", f"{MARK}iptables-save\n{legacy}")
    assert {p.backend for p in parts} == {"iptables"}


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    name = f"dpt{secrets.token_hex(3)[:5]}kind"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert name not in listed.stdout


def _kube_lines(save: str, table: str) -> int:
    body = save.split(f"*{table}\n", 1)[1].split("COMMIT", 1)[0]
    return sum("KUBE-" in line for line in body.splitlines())


def test_dump_script_counts_restored_rules(netns: str) -> None:
    expected: dict[tuple[str, str], int] = {}
    for backend in ("legacy", "nft"):
        restore = shutil.which(f"iptables-{backend}-restore")
        if restore is None:
            continue
        save = (DATA / f"iptables-{backend}-save.txt").read_text()
        subprocess.run(["ip", "netns", "exec", netns, restore], input=save, text=True, check=True)
        for table in ("nat", "filter"):
            expected[(f"iptables-{backend}", table)] = _kube_lines(save, table)
    if shutil.which("nft"):
        table = (DATA / "nft-list-table-kube-proxy.txt").read_text()
        subprocess.run(
            ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=table, text=True, check=True
        )
        expected[("nftables", "kube-proxy")] = sum(1 for line in table.splitlines() if line.strip())
    if not expected:
        pytest.skip("no iptables or nft tools here")
    dump = subprocess.run(
        ["ip", "netns", "exec", netns, "sh", "-c", DUMP_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    parts, chains = rules_from_dump("node", dump, kubelet=False)
    ours = summarize(parts, chains)
    assert {(p.backend, p.table): p.lines for p in ours.parts} == expected
    assert ours.total == sum(expected.values())
    # web has 3 endpoints: its service chain holds 3 jumps (+ the masquerade rule)
    assert max(chains.values()) >= 3
