"""Regression gates: fail a build when latency got worse, by evidence, not by noise.

Two ways, both with ``assert_no_regression`` semantics (a one-sided confidence bound of the
relative change of the p95, with an effect-size floor so that a real but tiny change on a
huge sample does not fail builds):

* Whole session against a saved run (the CI way)::

      pytest examples/test_regression_gate.py --dataplane-save-baseline=baseline.json  # on main
      pytest examples/test_regression_gate.py --dataplane-baseline=baseline.json       # on a PR

  The session fails when a test x dataplane regressed, and refuses to compare runs from
  different machines or versions unless ``--dataplane-baseline-force`` is given.

* Inside a test, between two measurements of the same session, as below: the latency of a
  service before and after a rollout of the same image, and two versions of a service
  measured side by side with ``load.duet`` (here a new image with a slower code path).
"""

from __future__ import annotations

import pytest

from pytest_dataplane import DataplaneAssertionError, ServiceTime, assert_no_regression

FAST = ServiceTime.lognormal(p50="4ms", sigma=0.4)


def test_latency_is_stable_across_a_rollout(dataplane, load):
    backend = dataplane.deploy("backend", replicas=3, service_time=FAST)
    with load(backend, rate=300, duration="8s") as before:
        pass
    backend.rollout(grace="2s")  # the same image again: nothing should change
    with load(backend, rate=300, duration="8s") as after:
        pass
    assert_no_regression(before.result, after.result, quantile=95, max_increase="15%")


def test_a_slower_release_is_caught(dataplane, load):
    fast = dataplane.deploy("fast", replicas=3, service_time=FAST)
    # A release whose new code path takes three times as long (an extra query per request).
    slow = dataplane.deploy("slow", replicas=3, service_time=ServiceTime.lognormal("12ms", 0.4))
    # Both versions on one schedule, interleaved request by request: both see the same
    # moments of the machine (a busy CI runner's stalls land on both), and the comparison is
    # paired, window by window.
    with load.duet(fast, slow, rate=300, duration="8s") as run:
        pass
    # 4 ms -> 12 ms: every request pays for the new code path, so the median shows it
    # plainly; the p95 of a busy CI machine is its scheduling stalls as much as the service
    # (in one of four main-job runs on a loaded 2-core machine, +22 % [-24 %, +76 %] at the p95
    # while the median had more than doubled). Gate on the median for a slower code path, on
    # the p95 for tail effects.
    with pytest.raises(DataplaneAssertionError, match="regressed by more than 15"):
        assert_no_regression(run.result, quantile=50, max_increase="15%")
