"""kube-proxy's histogram, cgroup CPU counters, and CPU attribution to endpoint changes."""

from __future__ import annotations

import math
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pytest_dataplane._host import read_mounts
from pytest_dataplane.providers.k8s.metrics import (
    attribute_cpu,
    cgroup_find_script,
    cgroup_read_script,
    container_id,
    diff_histogram,
    histogram_samples,
    metrics_script,
    parse_cgroup_find,
    parse_cgroup_read,
    parse_histogram,
)

# Prometheus text as kube-proxy's /metrics serves it (HELP/TYPE lines, then cumulative buckets).
BEFORE = """\
# HELP kubeproxy_network_programming_duration_seconds [ALPHA] In Cluster Network Programming
# TYPE kubeproxy_network_programming_duration_seconds histogram
kubeproxy_network_programming_duration_seconds_bucket{le="0.25"} 2
kubeproxy_network_programming_duration_seconds_bucket{le="0.5"} 5
kubeproxy_network_programming_duration_seconds_bucket{le="1"} 6
kubeproxy_network_programming_duration_seconds_bucket{le="2"} 6
kubeproxy_network_programming_duration_seconds_bucket{le="+Inf"} 6
kubeproxy_network_programming_duration_seconds_sum 2.1
kubeproxy_network_programming_duration_seconds_count 6
kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"} 3
"""
AFTER = BEFORE.replace('le="0.25"} 2', 'le="0.25"} 3').replace('le="0.5"} 5', 'le="0.5"} 9')
AFTER = AFTER.replace('le="1"} 6', 'le="1"} 10').replace('le="2"} 6', 'le="2"} 11')
AFTER = AFTER.replace('le="+Inf"} 6', 'le="+Inf"} 12')


def test_parse_histogram_reads_only_the_programming_metric() -> None:
    assert parse_histogram(BEFORE) == {0.25: 2, 0.5: 5, 1.0: 6, 2.0: 6, math.inf: 6}
    labelled = 'kubeproxy_network_programming_duration_seconds_bucket{node="w1",le="0.5"} 4\n'
    assert parse_histogram(labelled) == {0.5: 4}


def test_new_observations_at_their_upper_bounds() -> None:
    new = diff_histogram(parse_histogram(BEFORE), parse_histogram(AFTER))
    samples = histogram_samples(new)
    # 1 in (0, 0.25], 3 in (0.25, 0.5], 0 in (0.5, 1], 1 in (1, 2], 1 above 2 s
    np.testing.assert_array_equal(samples, [0.25, 0.5, 0.5, 0.5, 2.0, math.inf])


def test_restarted_kube_proxy_counts_from_zero() -> None:
    assert diff_histogram({0.5: 10.0}, {0.5: 3.0}) == {0.5: 3.0}


def test_metrics_script_greps_the_histogram() -> None:
    script = metrics_script()
    assert "http://127.0.0.1:10249/metrics" in script
    assert "grep '^kubeproxy_network_programming_duration_seconds_bucket'" in script


def test_container_ids_and_scripts() -> None:
    assert container_id("containerd://0123456789abcdef0123") == "0123456789abcdef0123"
    with pytest.raises(ValueError, match="container id"):
        cgroup_find_script(["abc; rm -rf /"])
    assert parse_cgroup_find("aaaaaaaaaaaa /sys/fs/cgroup/x\naaaaaaaaaaaa /other\n") == {
        "aaaaaaaaaaaa": "/sys/fs/cgroup/x"
    }
    assert parse_cgroup_read("/a usage_usec 2500000\n/b usage_ns 1000000000\n/c missing\n") == {
        "/a": 2.5,
        "/b": 1.0,
        "/c": None,
    }


def _cgroup2_mount() -> Path | None:
    for mount in read_mounts():
        if mount.fstype == "cgroup2":
            return Path(mount.target)
    return None


def test_scripts_read_a_real_cgroup(tmp_path: Path) -> None:
    # A cgroup of our own, named like a container's, with a process burning CPU in it: the
    # same shell the nodes run finds it and reads a counter that grows.
    mount = _cgroup2_mount()
    if os.geteuid() != 0 or mount is None:
        pytest.skip("needs root and a cgroup v2 mount")
    cid = secrets.token_hex(16)
    group = mount / f"dpt{cid[:5]}-cri-containerd-{cid}.scope"
    try:
        group.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {mount}: {exc}")
    child = None
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.readline()\nwhile True: pass"],
            stdin=subprocess.PIPE,
        )
        (group / "cgroup.procs").write_text(str(child.pid))
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.flush()
        found = parse_cgroup_find(
            subprocess.run(
                ["sh", "-c", cgroup_find_script([cid])], capture_output=True, text=True, check=True
            ).stdout
        )
        assert found == {cid: str(group)}
        read = ["sh", "-c", cgroup_read_script([found[cid]])]
        first = parse_cgroup_read(
            subprocess.run(read, capture_output=True, text=True, check=True).stdout
        )
        time.sleep(0.3)
        second = parse_cgroup_read(
            subprocess.run(read, capture_output=True, text=True, check=True).stdout
        )
        assert first[str(group)] is not None
        assert second[str(group)] is not None
        assert second[str(group)] > first[str(group)]  # type: ignore[operator]
    finally:
        if child is not None:
            child.kill()
            child.wait()
            assert child.stdin is not None
            child.stdin.close()
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.05)
    assert not group.exists()
    gone = parse_cgroup_read(
        subprocess.run(
            ["sh", "-c", cgroup_read_script([str(group)])],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert gone == {str(group): None}


def test_attribute_cpu_between_changes_with_horizon() -> None:
    # 1 CPU-second per second of steady work from t=12 to t=20, flat otherwise.
    samples = [(float(t), float(max(0, min(t, 20) - 12))) for t in range(31)]
    result = attribute_cpu(samples, [12.0, 14.0, 25.0], start=0.0, end=30.0, horizon=5.0)
    assert result.per_change == pytest.approx((2.0, 5.0, 0.0))
    assert result.total == pytest.approx(8.0)
    # The quiet stretch 0..12 s has no CPU at all.
    assert result.background_rate == pytest.approx(0.0)


def test_attribute_cpu_shares_one_sync_between_simultaneous_changes() -> None:
    samples = [(0.0, 0.0), (1.0, 0.0), (2.0, 0.9), (10.0, 0.9)]
    result = attribute_cpu(samples, [1.0, 1.01, 1.02], start=0.0, end=10.0, horizon=5.0)
    assert result.per_change == pytest.approx((0.3, 0.3, 0.3))


def test_attribute_cpu_ignores_changes_outside_the_window() -> None:
    samples = [(0.0, 0.0), (10.0, 10.0)]
    result = attribute_cpu(samples, [-1.0, 5.0, 11.0], start=0.0, end=10.0, horizon=1.0)
    assert result.per_change == pytest.approx((1.0,))
    assert result.total == pytest.approx(10.0)
    assert result.background_rate == pytest.approx(1.0)
    assert attribute_cpu([], [], start=0.0, end=1.0).background_rate is None
