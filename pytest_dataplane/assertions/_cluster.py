"""What a cluster's dataplane costs: its KUBE- rules, its programming latency, its CPU per
endpoint change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _collect, stats
from .. import _format as fmt
from ..config import parse_duration
from ..errors import DataplaneAssertionError, InsufficientDataError
from ._core import (
    OnInconclusive,
    Outcome,
    Verdict,
    _assert_quantile_below,
    _check_on_inconclusive,
    _check_percentile,
    _conclude,
)

if TYPE_CHECKING:
    from ..providers.base import Cluster, RuleCount


def _rule_count(cluster_or_count: Any) -> tuple[int, str]:
    if isinstance(cluster_or_count, bool):
        raise TypeError("cluster_or_count: expected a cluster, a RuleCount or an int, got bool")
    if isinstance(cluster_or_count, int):
        return cluster_or_count, ""
    count = cluster_or_count
    if hasattr(count, "rule_count"):
        _collect.record_cluster(count)
        count = count.rule_count()
    if hasattr(count, "total"):
        describe = getattr(count, "describe", None)
        return int(count.total), describe() if callable(describe) else ""
    raise TypeError(
        "cluster_or_count: expected a cluster (with rule_count()), a RuleCount or an int, "
        f"got {type(cluster_or_count).__name__}"
    )


def assert_kube_rules_at_most(cluster_or_count: Cluster | RuleCount | int, n: int) -> Verdict:
    """Assert that the dataplane holds at most ``n`` ``KUBE-`` rule lines.

    Counts what the motivating story counts: ``iptables-save`` lines (nat and filter, legacy
    and nft backends) containing ``KUBE-``, plus the lines of the ``kube-proxy`` nftables
    table, summed over nodes. ``cluster_or_count`` is a cluster, a RuleCount or an int; the
    failure message shows the breakdown by node, backend and table and the largest chains.

    Only what the dataplane wrote counts: on nodes that run a kubelet (kind, existing
    clusters), the lines of kubelet's own chains (``KUBE-FIREWALL`` with its DROP rule,
    ``KUBE-KUBELET-CANARY`` and the jumps to them, about six per node whatever the dataplane)
    are excluded by name, not by subtracting a baseline taken after the cluster was created,
    and shown apart in the breakdown (``RuleCount.kubelet_parts``).
    """
    __tracebackhide__ = True
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n: {n!r} is not accepted; accepted: an integer >= 0")
    total, breakdown = _rule_count(cluster_or_count)
    outcome: Outcome = "pass" if total <= n else "fail"
    verdict = Verdict(
        assertion=f"KUBE- rule lines at most {n:,}",
        outcome=outcome,
        observed=float(total),
        low=None,
        high=None,
        n=1,
        threshold=float(n),
        unit="count",
        method="iptables-save lines containing KUBE- plus kube-proxy nftables table lines",
        advice=""
        if outcome == "pass"
        else "a dataplane without per-service rules (eBPF) keeps this flat as services grow",
    )
    message = (
        f"the dataplane holds more KUBE- rule lines than allowed\n"
        f"  ACTUAL:    {total:,} KUBE- rule lines\n"
        f"  DESIRED:   at most {n:,}\n"
        + (
            f"  breakdown: {breakdown.replace(chr(10), chr(10) + '             ')}\n"
            if breakdown
            else ""
        )
        + f"  method:    {verdict.method}"
    )
    return _conclude(verdict, message, "fail")


def _cluster_sample(cluster: Any, method: str) -> np.ndarray:
    if not hasattr(cluster, method):
        raise TypeError(
            f"cluster: expected a cluster with {method}(), got {type(cluster).__name__}"
        )
    _collect.record_cluster(cluster)
    return stats.as_sample(getattr(cluster, method)(), name=method)


def _assert_every_below(
    sample: np.ndarray, limit: float, *, what: str, unit_name: str, labels: Any = None
) -> Verdict:
    __tracebackhide__ = True
    if sample.size == 0:
        raise InsufficientDataError(f"{what}: no {unit_name} recorded", n=0, minimum=1)
    worst = int(np.argmax(sample))
    outcome: Outcome = "pass" if sample[worst] < limit else "fail"
    over = int(np.count_nonzero(sample >= limit))
    verdict = Verdict(
        assertion=f"every {what} below {fmt.seconds(limit)}",
        outcome=outcome,
        observed=float(sample[worst]),
        low=None,
        high=None,
        n=int(sample.size),
        threshold=limit,
        unit="s",
        method=f"maximum over the {unit_name} observed (quantile=100)",
    )
    name = f" ({labels[worst]})" if labels is not None and len(labels) > worst else ""
    message = (
        f"{over} of {sample.size} {unit_name} took {fmt.seconds(limit)} or more\n"
        f"  ACTUAL:    max {what} = {fmt.seconds(float(sample[worst]))}{name}\n"
        f"  DESIRED:   every {what} < {fmt.seconds(limit)}\n"
        f"  method:    {verdict.method}"
    )
    return _conclude(verdict, message, "fail")


def assert_programming_latency_below(
    cluster: Cluster,
    threshold: float | str,
    *,
    quantile: float = 95,
    confidence: float = 0.95,
    on_inconclusive: OnInconclusive = "fail",
) -> Verdict:
    """Assert that network-programming latency stays below ``threshold``.

    Programming latency is measured per endpoint change, as in Kubernetes' SLI: from the
    change to the moment the dataplane reflects it. The ``quantile`` (0-100) is decided with
    the same distribution-free CI and three outcomes as the latency assertions, which needs
    enough changes (72 for the p95); ``quantile=100`` instead checks every observed change
    (the maximum), with no statistical claim beyond the changes seen.
    """
    __tracebackhide__ = True
    on_inconclusive = _check_on_inconclusive(on_inconclusive)
    limit = parse_duration(threshold, name="threshold")
    sample = _cluster_sample(cluster, "programming_latencies")
    if quantile == 100:
        return _assert_every_below(
            sample, limit, what="network-programming latency", unit_name="endpoint changes"
        )
    return _assert_quantile_below(
        sample,
        _check_percentile(quantile, "quantile"),
        limit,
        what="network-programming latency",
        confidence=confidence,
        on_inconclusive=on_inconclusive,
        unit_name="endpoint changes",
    )


def assert_dataplane_cpu_below(
    cluster: Cluster,
    seconds_per_change: float | str,
    *,
    quantile: float = 95,
    confidence: float = 0.95,
    on_inconclusive: OnInconclusive = "fail",
) -> Verdict:
    """Assert that applying an endpoint change costs the dataplane less than
    ``seconds_per_change`` of CPU (user + system) at the given ``quantile``.

    The CPU comes from ``cluster.cpu_seconds()``: in the lab, the cgroup of kube-proxy (with
    the iptables-restore / nft it runs) or of the eBPF controller; on kind, the kube-proxy or
    cilium-agent container's cgroup; shared among the endpoint changes.
    Same three outcomes as the latency assertions; ``quantile=100`` checks every change. A
    failure names the heaviest changes.
    """
    __tracebackhide__ = True
    on_inconclusive = _check_on_inconclusive(on_inconclusive)
    limit = parse_duration(seconds_per_change, name="seconds_per_change")
    if not hasattr(cluster, "cpu_seconds"):
        raise TypeError(
            f"cluster: expected a cluster with cpu_seconds(), got {type(cluster).__name__}"
        )
    _collect.record_cluster(cluster)
    usage = cluster.cpu_seconds()
    sample = stats.as_sample(usage.per_change, name="cpu per change")
    labels = list(usage.changes)
    try:
        if quantile == 100:
            return _assert_every_below(
                sample,
                limit,
                what="CPU per endpoint change",
                unit_name="endpoint changes",
                labels=labels,
            )
        return _assert_quantile_below(
            sample,
            _check_percentile(quantile, "quantile"),
            limit,
            what="dataplane CPU per endpoint change",
            confidence=confidence,
            on_inconclusive=on_inconclusive,
            unit_name="endpoint changes",
        )
    except DataplaneAssertionError as exc:
        order = np.argsort(sample)[::-1][:3]
        heaviest = ", ".join(
            f"{labels[i] if i < len(labels) else f'change {i}'} ({fmt.seconds(float(sample[i]))})"
            for i in order
        )
        raise DataplaneAssertionError(
            f"{exc}\n  heaviest:  {heaviest}\n  total:     {fmt.seconds(usage.total)} of CPU "
            f"over {len(sample)} changes and every sync",
            verdict=exc.verdict,
        ) from None
