"""The on-demand benchmark scripts still run against the lab. Nothing else in the suite calls
them, and a script that breaks after its 5,000 background services are created costs an hour
before anyone sees it (calibration.py once called a method the lab's cluster no longer had)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kubekit import binaries_or_skip

from pytest_dataplane.providers.lab import LabProvider

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root")


def test_calibration_collects_a_busy_cycle_and_analyzes_it(tmp_path: Path) -> None:
    binaries_or_skip()
    reason = LabProvider().availability("iptables")
    if reason is not None:
        pytest.skip(f"iptables unavailable here: {reason}")
    script = [sys.executable, str(ROOT / "benchmarks" / "calibration.py"), "--data", str(tmp_path)]
    # One cycle of the busy setting, small: its rollout between the sequential runs included.
    collect = subprocess.run(
        [*script, "collect", "busy", "--cycles", "1", "--background", "5", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert collect.returncode == 0, collect.stderr[-3000:]
    assert "# busy cycle 0: " in collect.stderr
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["cycle-0000.npz"]
    analyze = subprocess.run(
        [*script, "analyze"], capture_output=True, text=True, timeout=120, check=False
    )
    assert analyze.returncode == 0, analyze.stderr[-3000:]
    assert "| busy | sequential A/A (after vs before) |" in analyze.stdout
    assert "| busy | duet A/A | paired over 10 shared windows" in analyze.stdout
