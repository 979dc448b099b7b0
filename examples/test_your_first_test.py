"""A first test, as a new user writes it from the README: a backend on a cluster of 2,000
services, scaled and rolled out under 300 req/s, with a p95 threshold.

Run on the dataplanes to compare::

    pytest examples/test_your_first_test.py --dataplane=iptables,ebpf

The threshold has a real margin: the backend answers in microseconds and the service path
adds a few milliseconds, so 50 ms is about ten times the p95 measured on a busy 2-core
machine — what the test catches is a rollout that breaks things (refused connections,
requests lost with old pods), not the normal cost of an endpoint change. That cost is in the
summary table all the same: on iptables the rollout's endpoint changes make kube-proxy
rewrite its rule set, and the table's "peak p99" column shows the spike next to the
"dataplane CPU" the rewrites burned; on ebpf both stay small. When the host is busy for other
reasons and the load generator sends late, the table's "send lag p99" column and the
"late sends:" note say how late and why; the verdict is judged from the intended send times
and refused only where the lateness alone could decide it.
"""

from __future__ import annotations

import pytest

from pytest_dataplane import assert_error_rate_below, assert_p95_below


@pytest.mark.dataplane("iptables", "ebpf")
def test_rollout_keeps_p95_under_50ms(dataplane, load):
    dataplane.add_background_services(2000, endpoints=3)  # a busy cluster first
    backend = dataplane.deploy("backend", replicas=3)
    with load(backend, rate=300, duration="20s") as run:
        backend.scale(6)
        # Old pods keep serving 5 s after leaving the endpoints (a preStop sleep, as in
        # production): kube-proxy on a busy node may take more than the default second.
        backend.rollout(grace="5s")
    assert_error_rate_below(run.result, 0.001)
    assert_p95_below(run.result, "50ms")
