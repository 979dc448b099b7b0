"""``cilium-dbg bpf lb list`` parsing, on samples of every format the supported releases print.

The samples in tests/data/cilium/ are built from Cilium's own printer and map-key code at each
release (provenance in tests/data/README.md): 1.14 to 1.16 key every row by frontend and slot,
1.17 and 1.18 add the protocol, 1.12 and 1.13 group a frontend's entries under one key, and
older releases print no slot in the entries at all.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_dataplane.providers.k8s.cilium import LbList, parse_lb_list
from pytest_dataplane.providers.kind.versions import SUPPORTED_CILIUM

DATA = Path(__file__).parent.parent / "data" / "cilium"

# Six frontends (kubernetes, kube-dns 53 and 9153, one ClusterIP service with three
# endpoints, and its NodePort on the node address and on the wildcard address): 6 master
# entries and 1 + 2 + 2 + 3 + 3 + 3 = 14 backend slots.
SIX = LbList(frontends=6, entries=20, backends=14)
# From 1.17 kube-dns's TCP and UDP port 53 are two frontends (+1 master, +2 slots), and one
# 9153 slot names a backend missing from the backends map.
SEVEN = LbList(frontends=7, entries=23, backends=15, missing_backends=1)

SAMPLES = {
    "1.14": ("bpf-lb-list-1.14-1.16.txt", SIX),
    "1.15": ("bpf-lb-list-1.14-1.16.txt", SIX),
    "1.16": ("bpf-lb-list-1.14-1.16.txt", SIX),
    "1.17": ("bpf-lb-list-1.17-1.18.txt", SEVEN),
    "1.18": ("bpf-lb-list-1.17-1.18.txt", SEVEN),
}


def test_every_supported_line_has_a_sample() -> None:
    (low_major, low), (high_major, high) = SUPPORTED_CILIUM
    assert low_major == high_major == 1
    assert set(SAMPLES) == {f"1.{minor}" for minor in range(low, high + 1)}


@pytest.mark.parametrize("line", sorted(SAMPLES))
def test_table_of_each_supported_release(line: str) -> None:
    name, expected = SAMPLES[line]
    assert parse_lb_list((DATA / name).read_text()) == expected


def test_json_output() -> None:
    text = (DATA / "bpf-lb-list-1.17-1.18.json").read_text()
    assert parse_lb_list(text) == SEVEN
    # keys carry the slot; frontends are counted without it
    assert len(json.loads(text)) == SEVEN.entries


@pytest.mark.parametrize("name", ["bpf-lb-list-1.13.txt", "bpf-lb-list-no-slot.txt"])
def test_grouped_tables_of_older_releases(name: str) -> None:
    # Existing clusters (the kubeconfig provider) may run them; kind refuses them.
    assert parse_lb_list((DATA / name).read_text()) == SIX


def test_entries_without_slot() -> None:
    # The lines of the audit: a backend and a master entry printed without the slot.
    text = (
        "SERVICE ADDRESS          BACKEND ADDRESS\n"
        "100.64.9.10:8000         0.0.0.0:0 (14) [ClusterIP]\n"
        "                         100.64.5.159:8000 (14)\n"
        "[fd00:10:96::a]:53       [::]:0 (9) [ClusterIP, non-routable]\n"
        "                         [fd00:10:244::5]:53 (9)\n"
    )
    assert parse_lb_list(text) == LbList(frontends=2, entries=4, backends=2)


def test_empty_map() -> None:
    assert parse_lb_list("SERVICE ADDRESS   BACKEND ADDRESS (REVNAT_ID) (SLOT)\n") == LbList(
        0, 0, 0
    )
    assert parse_lb_list("") == LbList(0, 0, 0)


@pytest.mark.parametrize(
    "bad",
    [
        "                 10.0.0.1:80 (1) (1)\n",
        "10.96.0.1:443   garbage here\n",
        "10.96.0.1:443 (0)\n",
    ],
)
def test_unreadable_output_is_an_error(bad: str) -> None:
    with pytest.raises(ValueError, match="cilium bpf lb list"):
        parse_lb_list(bad)
