"""Turn what one test produced (a :class:`~pytest_dataplane._collect.TestRecord`) into a payload.

The payload is a compact, JSON-serialisable dict that travels with the test report (through
pytest-xdist too) and is what every output is made from: the terminal table, the JSON file,
the JUnit properties, the plots and the baselines. It never carries whole timelines: loads
are pre-aggregated into time bins (per-bin p50/p95/p99, errors) for the plots, plus a capped
uniform subsample of latencies for baseline comparisons.

Everything here is computation on data: the cluster's figures come from the
:class:`~pytest_dataplane._snapshot.ClusterSnapshot` the ``dataplane`` fixture took after the
test; a figure the snapshot lacks is None with its reason in ``cluster["unavailable"]``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from .. import stats

if TYPE_CHECKING:
    from .._snapshot import ClusterSnapshot, CpuFigures

__all__ = [
    "BIN_WIDTHS",
    "MAX_BINS",
    "MAX_EVENTS",
    "MIN_BINS",
    "QUANTILES",
    "SAMPLE_CAP",
    "build_payload",
    "clean",
    "cluster_facts",
    "load_summary",
    "test_key",
    "time_bins",
]

#: Percentiles shown with confidence intervals (the table shows p50, p95, p99).
QUANTILES: Final = (50.0, 95.0, 99.0)
#: Confidence level of the percentile intervals in the report.
CONFIDENCE: Final = 0.95
#: Latencies kept per load for baseline comparisons (a uniform subsample when more).
SAMPLE_CAP: Final = 5000
#: Candidate bin widths (seconds) of the plots; the smallest that gives at most MAX_BINS.
BIN_WIDTHS: Final = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
MAX_BINS: Final = 240
MIN_BINS: Final = 20
BIN_REQUESTS: Final = 100
#: Events kept per load (a rollout of a few pods has tens; 5,000 background services would
#: have 15,000 endpoint events, which no plot can show).
MAX_EVENTS: Final = 400
#: Heaviest changes named in the CPU summary.
HEAVIEST: Final = 3
# Slack around the load window for cluster events (a scale just before the load starts).
_EVENT_MARGIN: Final = 1.0
# Deterministic subsample: the same run always gives the same baseline.
_SEED: Final = 20240607


def clean(value: Any) -> Any:
    """``value`` as plain JSON data: NaN and infinities become None, numpy scalars Python
    numbers, tuples and arrays lists, mapping keys strings; anything else its ``str``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [clean(v) for v in value]
    return str(value)


def _short(value: float) -> float:
    # Six significant digits: sub-microsecond resolution for latencies, half the JSON size.
    return float(f"{value:.6g}")


def test_key(nodeid: str, callspec_id: str | None, dataplane: str | None) -> str:
    """The node id without the dataplane's part of the parametrization id.

    ``test_x.py::test_a[iptables]`` -> ``test_x.py::test_a``;
    ``test_x.py::test_a[iptables-300]`` -> ``test_x.py::test_a[300]``. The plots group the
    dataplanes of one test under this key.
    """
    if not callspec_id or not dataplane or not nodeid.endswith(f"[{callspec_id}]"):
        return nodeid
    base = nodeid[: -len(callspec_id) - 2]
    parts = callspec_id.split("-")
    if dataplane not in parts:
        return nodeid
    parts.remove(dataplane)
    return f"{base}[{'-'.join(parts)}]" if parts else base


# --------------------------------------------------------------------------- loads


def _quantile(sample: npt.NDArray[np.float64], q: float, estimate: float) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "estimate": estimate,
        "low": None,
        "high": None,
        "n": int(sample.size),
        "confidence": CONFIDENCE,
    }
    if sample.size >= stats.min_samples_for_quantile(q / 100, CONFIDENCE):
        ci = stats.quantile_ci(sample, q / 100, confidence=CONFIDENCE)
        entry["low"], entry["high"] = ci.low, ci.high
        if math.isnan(estimate):
            entry["estimate"] = ci.estimate
    return entry


def bin_width(duration: float, rate: float = 0.0) -> float:
    """The plot bin width for a run of ``duration`` seconds at ``rate`` requests per second.

    The smallest of :data:`BIN_WIDTHS` that gives at most :data:`MAX_BINS` bins and about
    :data:`BIN_REQUESTS` requests per bin (a per-bin p99 of 20 requests is just their
    maximum), unless that would leave fewer than :data:`MIN_BINS` bins.
    """
    for width in BIN_WIDTHS:
        bins = duration / width
        if bins <= MAX_BINS and (rate * width >= BIN_REQUESTS or bins <= MIN_BINS):
            return width
    return BIN_WIDTHS[-1]


def time_bins(
    send: npt.NDArray[np.float64],
    latency: npt.NDArray[Any],
    outcome: npt.NDArray[Any],
    *,
    duration: float,
    width: float | None = None,
) -> dict[str, Any]:
    """Per-bin request counts, latency p50/p95/p99/max of completed requests, and errors.

    ``send`` is the intended send time (seconds since the run's start), ``outcome`` the codes
    of :data:`pytest_dataplane.load.OUTCOMES` (0 = ok, the last one = dropped). Bins with no
    completed request have None percentiles. ``t`` is each bin's start.
    """
    from ..load import OUTCOMES

    ok_code, dropped_code = OUTCOMES.index("ok"), OUTCOMES.index("dropped")
    end = max(float(duration), float(send.max()) if send.size else 0.0)
    width = bin_width(end, send.size / end if end > 0 else 0.0) if width is None else width
    count = max(1, math.ceil(end / width - 1e-9)) if end > 0 else 1
    index = np.clip((send / width).astype(np.int64), 0, count - 1)
    ok = outcome == ok_code
    errors = (outcome != ok_code) & (outcome != dropped_code)
    n = np.bincount(index[ok], minlength=count)
    error_count = np.bincount(index[errors], minlength=count)
    dropped = np.bincount(index[outcome == dropped_code], minlength=count)
    percentiles: dict[str, list[float | None]] = {"p50": [], "p95": [], "p99": [], "max": []}
    order = np.argsort(index[ok], kind="stable")
    values = latency[ok].astype(np.float64)[order]
    edges = np.concatenate(([0], np.cumsum(n)))
    for b in range(count):
        chunk = values[edges[b] : edges[b + 1]]
        if chunk.size == 0:
            for series in percentiles.values():
                series.append(None)
            continue
        p50, p95, p99 = np.percentile(chunk, (50, 95, 99))
        percentiles["p50"].append(_short(p50))
        percentiles["p95"].append(_short(p95))
        percentiles["p99"].append(_short(p99))
        percentiles["max"].append(_short(chunk.max()))
    return {
        "width": width,
        "t": [round(b * width, 6) for b in range(count)],
        "n": n.tolist(),
        **percentiles,
        "errors": error_count.tolist(),
        "dropped": dropped.tolist(),
    }


def latency_sample(latencies: npt.NDArray[np.float64], cap: int = SAMPLE_CAP) -> dict[str, Any]:
    """Up to ``cap`` latencies (a seeded uniform subsample when there are more), for baselines."""
    n = int(latencies.size)
    if n > cap:
        rng = np.random.default_rng(_SEED)
        chosen = np.sort(rng.choice(n, size=cap, replace=False))
        kept = latencies[chosen]
    else:
        kept = latencies
    return {
        "n": n,
        "subsampled": n > cap,
        "latencies": [_short(v) for v in kept.tolist()],
    }


def _detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    return {
        str(k): v if isinstance(v, (str, int, float, bool)) or v is None else str(v)
        for k, v in detail.items()
    }


def _events(events: Iterable[Any], origin: float, low: float, high: float) -> list[dict[str, Any]]:
    """Events as ``{"name", "t", "detail"}`` relative to ``origin``, within ``[low, high]``."""
    seen: set[tuple[str, float]] = set()
    out: list[dict[str, Any]] = []
    for event in sorted(events, key=lambda e: float(getattr(e, "time", 0.0))):
        name = str(getattr(event, "name", "?"))
        t = float(getattr(event, "time", math.nan)) - origin
        key = (name, round(t, 6))
        if not (low <= t <= high) or key in seen:
            continue
        seen.add(key)
        out.append(
            {"name": name, "t": round(t, 6), "detail": _detail(getattr(event, "detail", {}))}
        )
    if len(out) > MAX_EVENTS:
        # Keep every kind visible: the rare marks (scale, rollout) before the many.
        counts: dict[str, int] = {}
        for entry in out:
            counts[entry["name"]] = counts.get(entry["name"], 0) + 1
        out.sort(key=lambda e: (counts[e["name"]], e["t"]))
        out = sorted(out[:MAX_EVENTS], key=lambda e: e["t"])
    return out


def _window(result: Any) -> Any:
    return (getattr(result, "extra", None) or {}).get("window")


def _result_label(label: str, result: Any) -> str:
    base = label or str(getattr(result, "label", "") or "")
    window = _window(result)
    if not window:
        return base
    between = (getattr(result, "extra", None) or {}).get("between")
    span = (
        f"{between[0]} to {between[1]}"
        if between
        else f"{float(window[0]):.1f}-{float(window[1]):.1f} s"
    )
    return f"{base}: {span}" if base else f"window {span}"


def load_summary(
    result: Any, *, label: str = "", cluster_events: Sequence[Any] = ()
) -> dict[str, Any]:
    """The payload of one LoadResult: its counters, percentiles with CIs, bins, sample, events."""
    summary = result.to_dict()
    summary.pop("latency", None)
    summary.pop("events", None)
    summary.pop("label", None)
    latencies = np.asarray(result.latencies, dtype=np.float64)
    sample = latencies[np.isfinite(latencies)]
    timeline = result.timeline
    duration = float(result.duration)
    window = _window(result)
    events = _events(
        [*result.events, *cluster_events],
        float(result.start),
        -_EVENT_MARGIN,
        max(duration, float(timeline.send.max()) if len(timeline) else 0.0) + _EVENT_MARGIN,
    )
    return {
        "label": _result_label(label, result),
        **summary,
        "window": [float(window[0]), float(window[1])] if window else None,
        "latency": {
            f"p{q:g}": _quantile(sample, q, result.percentile(q) if result.completed else math.nan)
            for q in QUANTILES
        },
        "bins": time_bins(
            np.asarray(timeline.send, dtype=np.float64),
            np.asarray(timeline.latency),
            np.asarray(timeline.outcome),
            duration=duration,
        ),
        "sample": latency_sample(sample),
        "events": events,
    }


# --------------------------------------------------------------------------- clusters


def _distribution(values: npt.NDArray[np.float64]) -> dict[str, Any]:
    if values.size == 0:
        return {"n": 0, "p50": None, "p95": None, "max": None, "mean": None}
    p50, p95 = np.percentile(values, (50, 95))
    return {
        "n": int(values.size),
        "p50": float(p50),
        "p95": float(p95),
        "max": float(values.max()),
        "mean": float(values.mean()),
    }


def _programming(latencies: Sequence[float]) -> dict[str, Any]:
    values = np.asarray(latencies, dtype=np.float64).reshape(-1)
    return _distribution(values[np.isfinite(values)])


def _cpu(usage: CpuFigures, origin: float | None) -> dict[str, Any]:
    per_change = np.asarray(usage.per_change, dtype=np.float64)
    order = np.argsort(per_change)[::-1][:HEAVIEST]
    heaviest = [
        {
            "change": usage.changes[i] if i < len(usage.changes) else f"change {i + 1}",
            "seconds": float(per_change[i]),
        }
        for i in order
    ]
    timeline = (
        [
            [round(t - origin, 6), float(s)]
            for t, s in zip(usage.times, usage.per_change, strict=True)
        ]
        if origin is not None and usage.times is not None
        else []
    )
    return {
        "total": float(usage.total),
        "per_change": _distribution(per_change),
        "heaviest": heaviest,
        "detail": dict(usage.detail),
        "timeline": timeline,
    }


def cluster_facts(snapshot: ClusterSnapshot, *, origin: float | None = None) -> dict[str, Any]:
    """The report's form of what a cluster said about itself after a test.

    ``origin`` (a monotonic time, the load's start) makes CPU change times relative to it;
    without it the per-change timeline is left out.
    """
    return {
        "name": snapshot.name,
        "provider": snapshot.provider,
        "fingerprint": clean(dict(snapshot.fingerprint))
        if snapshot.fingerprint is not None
        else None,
        "rule_count": dict(snapshot.rule_count) if snapshot.rule_count is not None else None,
        "programming_latency": _programming(snapshot.programming_latencies)
        if snapshot.programming_latencies is not None
        else None,
        "cpu": _cpu(snapshot.cpu, origin) if snapshot.cpu is not None else None,
        "unavailable": dict(snapshot.unavailable),
    }


# --------------------------------------------------------------------------- one test


def build_payload(
    record: Any,
    *,
    nodeid: str,
    test: str,
    dataplane: str | None,
) -> dict[str, Any] | None:
    """The payload of one test from its record, or None when it ran no load and no cluster.

    Loads are ordered whole runs first (in the order they were recorded), then windows of
    them (``result.window(...)`` / ``between(...)``); verdicts keep their order. The first
    cluster snapshot whose ``name`` is the test's dataplane (else the first one) is described.
    """
    # Assertions record whatever has ``latencies``; only LoadResults are loads.
    results = [
        (label, r)
        for label, r in getattr(record, "results", ()) or ()
        if hasattr(r, "timeline") and hasattr(r, "to_dict")
    ]
    verdicts = list(getattr(record, "verdicts", ()) or ())
    snapshots: list[ClusterSnapshot] = list(getattr(record, "snapshots", ()) or ())
    # A row needs something measured here: a load or a cluster. Assertions on numbers a test
    # brought itself (unit tests of helpers, say) are not a dataplane run.
    if not (results or snapshots):
        return None
    snapshot = next(
        (s for s in snapshots if dataplane and s.name == dataplane),
        snapshots[0] if snapshots else None,
    )
    events = list(snapshot.events) if snapshot is not None else []
    whole = [(label, r) for label, r in results if not _window(r)]
    windows = [(label, r) for label, r in results if _window(r)]
    loads = [load_summary(r, label=label, cluster_events=events) for label, r in whole + windows]
    origin = float((whole + windows)[0][1].start) if results else None
    payload = {
        "test": test,
        "nodeid": nodeid,
        "dataplane": dataplane
        if dataplane is not None
        else (snapshot.name if snapshot is not None else None),
        "loads": loads,
        "verdicts": [v.to_dict() if hasattr(v, "to_dict") else dict(v) for v in verdicts],
        "cluster": cluster_facts(snapshot, origin=origin) if snapshot is not None else None,
    }
    result: dict[str, Any] = clean(payload)
    return result
