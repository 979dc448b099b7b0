"""The terminal summary: one table per session, a row per test × dataplane. Pure text."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from .. import _format as fmt
from .. import stats
from .._format import table
from ..config import DATAPLANES

__all__ = ["compact_lines", "order", "summary_lines", "table", "verdict_lines"]

_NA = "n/a"
#: Verdict lines shown per test at the default verbosity (a loop of assertions makes many).
VERDICTS_SHOWN = 5


def order(payloads: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Payloads sorted by test, then dataplane in the usual order (deterministic under xdist)."""

    def key(p: dict[str, Any]) -> tuple[str, int, str]:
        dataplane = p.get("dataplane") or ""
        rank = DATAPLANES.index(dataplane) if dataplane in DATAPLANES else len(DATAPLANES)
        return (p.get("test", ""), rank, p.get("nodeid", ""))

    return sorted(payloads, key=key)


# --------------------------------------------------------------------------- cells


def latency_unit(payloads: Iterable[dict[str, Any]]) -> tuple[str, float]:
    """One unit for every latency column: the one that suits the typical p95."""
    p95s = sorted(
        entry["estimate"]
        for p in payloads
        for load in p.get("loads", [])
        if (entry := load.get("latency", {}).get("p95")) and entry.get("estimate") is not None
    )
    typical = p95s[len(p95s) // 2] if p95s else 1e-3
    if typical < 1e-3:
        return "µs", 1e6
    if typical < 1.0:
        return "ms", 1e3
    return "s", 1.0


def _number(value: float) -> str:
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def quantile_cell(entry: dict[str, Any] | None, scale: float, q: str) -> str:
    """``"5.32 [5.01-5.70]"``; ``"5.32 [n<72]"`` when too few samples bound it; n/a when none."""
    if not entry or entry.get("estimate") is None:
        return _NA
    text = _number(entry["estimate"] * scale)
    if entry.get("low") is None or entry.get("high") is None:
        minimum = stats.min_samples_for_quantile(
            float(q.lstrip("p")) / 100, entry.get("confidence") or 0.95
        )
        return f"{text} [n<{minimum}]"
    return f"{text} [{_number(entry['low'] * scale)}-{_number(entry['high'] * scale)}]"


def rate_cell(load: dict[str, Any]) -> str:
    """Achieved / target requests per second; ``!`` marks a saturated load generator."""
    achieved, target = load.get("achieved_rate"), load.get("target_rate")
    text = f"{_rate(achieved)}/{_rate(target)}" if achieved is not None and target else _NA
    return text + ("!" if load.get("saturated") else "")


def peak_cell(load: dict[str, Any], scale: float) -> str:
    """The highest p99 of one time bin and when (``"52.1 @7.5s"``): the spike of a rollout
    that the whole run's p99 averages away. Bins of fewer than 20 requests are left out (their
    p99 is their maximum)."""
    bins = load.get("bins") or {}
    best: tuple[float, float] | None = None
    for t, n, p99 in zip(
        bins.get("t") or [], bins.get("n") or [], bins.get("p99") or [], strict=False
    ):
        if p99 is None or n < 20:
            continue
        if best is None or p99 > best[1]:
            best = (t, p99)
    if best is None:
        return _NA
    return f"{_number(best[1] * scale)} @{best[0]:g}s"


def lag_cell(load: dict[str, Any]) -> str:
    """How late the generator sent (p99) and its own CPU share of a core: ``"6.15ms 23%"``;
    ``!`` when the guard found the generator itself to be the bottleneck."""
    generator = load.get("generator") or {}
    lag = (generator.get("send_lag") or {}).get("p99")
    if lag is None:
        lag = load.get("send_lag_p99")
    if lag is None:
        return _NA
    text = fmt.seconds(float(lag)).replace(" ", "")
    cpu = generator.get("cpu")
    if cpu is not None:
        text += f" {cpu * 100:.0f}%"
    return text + ("!" if load.get("saturated") else "")


def _rate(value: float | None) -> str:
    if value is None:
        return _NA
    return fmt.rate(value).removesuffix("/s")


def errors_cell(load: dict[str, Any], *, limit: int = 2) -> str:
    """Error count and the largest kinds: ``"12: reset 10, read_timeout 2"``."""
    errors = load.get("errors")
    if errors is None:
        return _NA
    kinds = sorted((load.get("error_kinds") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    if not errors or not kinds:
        return fmt.count(int(errors))
    shown = ", ".join(f"{kind} {count:,}" for kind, count in kinds[:limit])
    more = ", ..." if len(kinds) > limit else ""
    return f"{errors:,}: {shown}{more}"


def rules_cell(cluster: dict[str, Any] | None) -> str:
    """``KUBE-`` rule lines of the test's cluster."""
    count = (cluster or {}).get("rule_count")
    return fmt.count(int(count["total"])) if count else _NA


def programming_cell(cluster: dict[str, Any] | None) -> str:
    """p95 network-programming latency."""
    latency = (cluster or {}).get("programming_latency")
    if not latency or latency.get("p95") is None:
        return _NA
    return fmt.seconds(latency["p95"])


def cpu_total_cell(cluster: dict[str, Any] | None) -> str:
    """CPU seconds the dataplane spent during the test (kube-proxy with its restores, or the
    eBPF controller)."""
    cpu = (cluster or {}).get("cpu")
    if not cpu or cpu.get("total") is None:
        return _NA
    return fmt.seconds(float(cpu["total"]))


def cpu_cell(cluster: dict[str, Any] | None) -> str:
    """p95 dataplane CPU seconds per endpoint change."""
    cpu = (cluster or {}).get("cpu")
    if not cpu or not cpu.get("per_change"):
        return _NA
    if not cpu["per_change"].get("n"):
        return "-"  # measured, but no endpoint change happened
    return fmt.seconds(cpu["per_change"]["p95"])


def verdicts_cell(verdicts: Sequence[dict[str, Any]]) -> str:
    """``"2 pass, 1 fail"`` (``-`` when the test asserted nothing)."""
    if not verdicts:
        return "-"
    counts = {o: sum(v.get("outcome") == o for v in verdicts) for o in ("pass", "fail")}
    counts["inconclusive"] = sum(v.get("outcome") not in ("pass", "fail") for v in verdicts)
    return ", ".join(f"{n} {o}" for o, n in counts.items() if n)


def _observed(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return _NA
    if unit == "s":
        return fmt.seconds(value)
    if unit == "fraction":
        return fmt.percent(value)
    if unit == "ratio":
        return f"{value:+.1%}"
    if unit == "count":
        return fmt.count(int(value))
    return f"{value:g}"


def _short_names(payloads: Sequence[dict[str, Any]]) -> dict[str, str]:
    full = [p.get("nodeid", "") for p in payloads]
    short = [nodeid.split("::", 1)[-1] for nodeid in full]
    if len(set(short)) < len(set(full)):
        return {nodeid: nodeid for nodeid in full}
    return dict(zip(full, short, strict=True))


# --------------------------------------------------------------------------- sections

_HEADERS = (
    "test",
    "dataplane",
    "rate/s",
    "n",
    "p50 [95% CI]",
    "p95 [95% CI]",
    "p99 [95% CI]",
    "peak p99",
    "errors",
    "send lag p99",
    "KUBE- rules",
    "prog p95",
    "dataplane CPU",
    "CPU/change p95",
    "verdicts",
)
_RIGHT = (
    False, False, True, True, True, True, True, True, False, True, True, True, True, True, False
)  # fmt: skip


def summary_lines(payloads: Sequence[dict[str, Any]], *, verbose: bool = False) -> list[str]:
    """The table (default verbosity): one row per test × dataplane, a continuation row per
    further load of a test, then the verdict of each assertion and the footnotes."""
    payloads = order(payloads)
    unit, scale = latency_unit(payloads)
    names = _short_names(payloads)
    rows: list[list[str]] = []
    saturated = False
    for payload in payloads:
        cluster = payload.get("cluster")
        loads = payload.get("loads") or [{}]
        for i, load in enumerate(loads):
            first = i == 0
            label = load.get("label") or ""
            name = names[payload.get("nodeid", "")] if first else f"  + {label or 'load'}"
            if first and label and len(loads) == 1:
                name = f"{name} ({label})"
            saturated = saturated or bool(load.get("saturated"))
            latency = load.get("latency") or {}
            has_load = bool(load)
            rows.append(
                [
                    name,
                    (payload.get("dataplane") or "-") if first else "",
                    rate_cell(load) if has_load else "-",
                    fmt.count(int(load["completed"])) if has_load else "-",
                    *(
                        quantile_cell(latency.get(q), scale, q) if has_load else "-"
                        for q in ("p50", "p95", "p99")
                    ),
                    peak_cell(load, scale) if has_load else "-",
                    errors_cell(load) if has_load else "-",
                    lag_cell(load) if has_load else "-",
                    rules_cell(cluster) if first else "",
                    programming_cell(cluster) if first else "",
                    cpu_total_cell(cluster) if first else "",
                    cpu_cell(cluster) if first else "",
                    verdicts_cell(payload.get("verdicts") or []) if first else "",
                ]
            )
    lines = [
        f"latencies in {unit}, from each request's intended send time; rate/s = achieved/target "
        "requests per second; peak p99 = the highest p99 of one time bin, @ when; send lag "
        "p99 = how late the load generator sent, with its own CPU in % of a core; dataplane "
        "CPU = CPU seconds of kube-proxy (with its restores) or the eBPF controller"
    ]
    lines += table(_HEADERS, rows, _RIGHT)
    lines += verdict_lines(payloads, names, limit=None if verbose else VERDICTS_SHOWN)
    notes = []
    if saturated:
        notes.append(
            "! the load generator itself was the bottleneck (saturated): its assertions refused"
        )
    notes += _lateness_notes(payloads, names)
    if any("[n<" in cell for row in rows for cell in row):
        notes.append(
            "[n<K]: too few samples for a confidence interval of that percentile (K needed)"
        )
    unavailable = sorted(
        {
            f"{method} on {payload.get('dataplane') or '-'}: {reason}"
            for payload in payloads
            for method, reason in ((payload.get("cluster") or {}).get("unavailable") or {}).items()
        }
    )
    if unavailable:
        notes.append("n/a because: " + "; ".join(unavailable))
    if verbose:
        lines += _heaviest_lines(payloads, names)
    return lines + notes


def _lateness_notes(payloads: Sequence[dict[str, Any]], names: dict[str, str]) -> list[str]:
    """Why sends were late, for every whole-run load whose sends were (p99 over 1 ms) or
    whose generator was refused."""
    lines = []
    for payload in payloads:
        for load in payload.get("loads") or []:
            if load.get("window"):
                continue
            generator = load.get("generator") or {}
            lag = (generator.get("send_lag") or {}).get("p99") or 0.0
            if not (lag > 1e-3 or load.get("saturated")):
                continue
            name = names.get(payload.get("nodeid", ""), payload.get("nodeid", ""))
            label = f" ({load['label']})" if load.get("label") else ""
            why = load.get("saturation_reason") if load.get("saturated") else ""
            text = generator.get("lateness") or f"send lag p99 {fmt.seconds(lag)}"
            lines.append(f"  {name}{label}: {text}" + (f"; refused: {why}" if why else ""))
    return ["late sends:", *lines] if lines else []


def verdict_lines(
    payloads: Sequence[dict[str, Any]], names: dict[str, str], *, limit: int | None = None
) -> list[str]:
    """One line per assertion verdict: outcome, assertion, observed value with its CI, n.

    With ``limit``, at most that many per test (failures first), then a count of the rest.
    """
    lines: list[str] = []
    for payload in payloads:
        verdicts = payload.get("verdicts") or []
        shown = verdicts
        if limit is not None and len(verdicts) > limit:
            rank = {"fail": 0, "inconclusive": 1}
            shown = sorted(verdicts, key=lambda v: rank.get(v.get("outcome"), 2))[:limit]
        for verdict in shown:
            unit = verdict.get("unit", "")
            observed = _observed(verdict.get("observed"), unit)
            low, high = verdict.get("low"), verdict.get("high")
            interval = (
                f" [{_observed(low, unit)}, {_observed(high, unit)}]"
                if low is not None and high is not None
                else ""
            )
            n = verdict.get("n")
            finding = (
                f"observed {observed}{interval}"
                if verdict.get("observed") is not None
                else f"not evaluated ({verdict.get('method') or 'no observation'})"
            )
            lines.append(
                f"  {verdict.get('outcome', '?').upper():<12} "
                f"{names.get(payload.get('nodeid', ''), payload.get('nodeid', ''))}: "
                f"{verdict.get('assertion', '?')}: {finding}"
                + (f", n={n:,}" if isinstance(n, int) else "")
            )
        if len(shown) < len(verdicts):
            lines.append(
                f"  {'':<12} ... and {len(verdicts) - len(shown)} more verdicts of "
                f"{names.get(payload.get('nodeid', ''), payload.get('nodeid', ''))} "
                "(all with -v or in --dataplane-json)"
            )
    return ["verdicts:", *lines] if lines else []


def _heaviest_lines(payloads: Sequence[dict[str, Any]], names: dict[str, str]) -> list[str]:
    lines = []
    for payload in payloads:
        cpu = (payload.get("cluster") or {}).get("cpu") or {}
        heaviest = cpu.get("heaviest") or []
        if heaviest:
            shown = ", ".join(f"{h['change']} ({fmt.seconds(h['seconds'])})" for h in heaviest)
            lines.append(f"  heaviest changes {names.get(payload['nodeid'])}: {shown}")
    return lines


def compact_lines(payloads: Sequence[dict[str, Any]]) -> list[str]:
    """``-q``: one line per test × dataplane with the key numbers."""
    payloads = order(payloads)
    names = _short_names(payloads)
    lines = []
    for payload in payloads:
        cluster = payload.get("cluster")
        loads = payload.get("loads") or []
        parts = [f"{names[payload.get('nodeid', '')]}:"]
        if loads:
            load = loads[0]
            latency = load.get("latency") or {}
            parts.append(f"rate={rate_cell(load)}/s n={fmt.count(int(load['completed']))}")
            for q in ("p50", "p95", "p99"):
                entry = latency.get(q) or {}
                value = entry.get("estimate")
                parts.append(f"{q}={fmt.seconds(value) if value is not None else _NA}")
            parts.append(f"errors={load.get('errors', _NA)}")
            parts.append(f"send_lag_p99={lag_cell(load).replace(' ', '/cpu=')}")
        if cluster:
            parts.append(f"KUBE-={rules_cell(cluster)}")
            parts.append(f"prog_p95={programming_cell(cluster)}")
            parts.append(f"cpu_p95={cpu_cell(cluster)}")
        verdicts = payload.get("verdicts") or []
        if verdicts:
            parts.append(f"verdicts={verdicts_cell(verdicts)}")
        lines.append(" ".join(parts))
    return lines
