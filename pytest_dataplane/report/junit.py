"""Scalar test-case properties for JUnit XML (what ``record_property`` would write).

pytest's ``--junitxml`` writes ``item.user_properties`` as ``<property name=... value=...>``
on each test case, so CI systems show them. Only scalars go there; the structured payload
travels as an attribute of the teardown report and never reaches the XML.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PREFIX", "properties"]

#: Every property name starts with this.
PREFIX = "dataplane"


def properties(payload: dict[str, Any]) -> list[tuple[str, object]]:
    """``(name, value)`` pairs for one test: its dataplane, the first load's rates, sample size,
    p50/p95/p99 (seconds) with the p95 interval, errors, then rule count, programming latency
    and CPU per change (seconds) where the cluster gave them, and the verdict counts."""
    out: list[tuple[str, object]] = []

    def put(name: str, value: object) -> None:
        if isinstance(value, float):
            value = float(f"{value:.6g}")  # CI pages show these; 17 digits are noise
        if value is not None:
            out.append((f"{PREFIX}.{name}" if name else PREFIX, value))

    put("", payload.get("dataplane"))
    loads = payload.get("loads") or []
    if loads:
        load = loads[0]
        put("rate.target", load.get("target_rate"))
        put("rate.achieved", load.get("achieved_rate"))
        put("n", load.get("completed"))
        latency = load.get("latency") or {}
        for q in ("p50", "p95", "p99"):
            put(f"{q}_s", (latency.get(q) or {}).get("estimate"))
        p95 = latency.get("p95") or {}
        put("p95_low_s", p95.get("low"))
        put("p95_high_s", p95.get("high"))
        put("errors", load.get("errors"))
        kinds = load.get("error_kinds") or {}
        if kinds:
            put("error_kinds", ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
        if load.get("saturated"):
            put("saturated", load.get("saturation_reason") or True)
    cluster = payload.get("cluster") or {}
    put("kube_rules", (cluster.get("rule_count") or {}).get("total"))
    put("programming_p95_s", (cluster.get("programming_latency") or {}).get("p95"))
    put("cpu_per_change_p95_s", ((cluster.get("cpu") or {}).get("per_change") or {}).get("p95"))
    put("cpu_total_s", (cluster.get("cpu") or {}).get("total"))
    verdicts = payload.get("verdicts") or []
    if verdicts:
        counts = dict.fromkeys(("pass", "fail", "inconclusive"), 0)
        for verdict in verdicts:
            outcome = verdict.get("outcome")
            counts[outcome if outcome in counts else "inconclusive"] += 1
        put("verdicts", " ".join(f"{o}={n}" for o, n in counts.items()))
    return out
