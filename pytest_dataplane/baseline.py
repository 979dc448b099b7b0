"""Saved runs and regression comparisons against them.

A baseline is a JSON report document (``--dataplane-save-baseline`` writes the same format
as ``--dataplane-json``). :func:`compare` matches each test × dataplane × load of a candidate
run with the baseline's and decides with the semantics of
:func:`~pytest_dataplane.assertions.assert_no_regression`: a regression is reported only
when the one-sided ``1 - alpha`` lower confidence bound of the relative change of the
quantile exceeds ``max_increase``. The samples are the latency subsamples the report keeps
(up to :data:`pytest_dataplane.report.collect.SAMPLE_CAP` per load).

Runs are compared only when their fingerprints agree on what changes performance: the CPU
count, the provider, the dataplane and every fact of the cluster's ``fingerprint()``
(kernel dataplane backend, Kubernetes / Cilium / kind versions...). Otherwise the pair is
"not compared" and the difference is reported, unless ``force`` is set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

from . import _format as fmt
from . import stats
from ._format import table
from .assertions import regression_advice
from .config import parse_fraction

__all__ = [
    "Comparison",
    "PairComparison",
    "compare",
    "comparison_lines",
    "fingerprint_differences",
]

Status = Literal["ok", "regression", "not compared", "new", "missing"]
_ABSENT: Final = "(absent)"


@dataclass(frozen=True)
class PairComparison:
    """One test × dataplane × load compared (or not) with its baseline.

    ``change``/``low``/``high`` are the relative change of the quantile and its two-sided
    ``1 - 2 alpha`` interval (``low`` is the one-sided ``1 - alpha`` lower bound that decides).
    ``reason`` says why a pair was not compared, or what was decided.
    """

    test: str
    dataplane: str | None
    label: str
    status: Status
    baseline: float | None = None
    candidate: float | None = None
    change: float | None = None
    low: float | None = None
    high: float | None = None
    n_baseline: int = 0
    n_candidate: int = 0
    pvalue: float | None = None
    reason: str = ""

    @property
    def name(self) -> str:
        """``test[dataplane]`` plus the load's label, for messages."""
        name = f"{self.test} [{self.dataplane}]" if self.dataplane else self.test
        return f"{name} ({self.label})" if self.label else name

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "test": self.test,
            "dataplane": self.dataplane,
            "label": self.label,
            "status": self.status,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "change": self.change,
            "low": self.low,
            "high": self.high,
            "n_baseline": self.n_baseline,
            "n_candidate": self.n_candidate,
            "pvalue": self.pvalue,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Comparison:
    """The comparison of a candidate run with a baseline.

    ``mismatches`` names the pairs left out because their fingerprints differ (each with the
    differences); ``notes`` lists differences that do not block a comparison (kernel, CPU
    model, plugin version) but may explain a change.
    """

    pairs: tuple[PairComparison, ...]
    quantile: float
    max_increase: float
    alpha: float
    mismatches: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    forced: bool = False

    @property
    def regressions(self) -> tuple[PairComparison, ...]:
        """The pairs whose quantile grew by more than ``max_increase`` (with evidence)."""
        return tuple(p for p in self.pairs if p.status == "regression")

    @property
    def compared(self) -> tuple[PairComparison, ...]:
        """The pairs that were compared (ok or regression)."""
        return tuple(p for p in self.pairs if p.status in ("ok", "regression"))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "quantile": self.quantile,
            "max_increase": self.max_increase,
            "alpha": self.alpha,
            "forced": self.forced,
            "regressions": len(self.regressions),
            "mismatches": list(self.mismatches),
            "notes": list(self.notes),
            "pairs": [p.to_dict() for p in self.pairs],
        }


# --------------------------------------------------------------------------- fingerprints


def _show(value: Any) -> str:
    return _ABSENT if value is None else str(value)


def fingerprint_differences(
    baseline_env: dict[str, Any],
    baseline: dict[str, Any],
    candidate_env: dict[str, Any],
    candidate: dict[str, Any],
) -> list[str]:
    """What differs, between two results, among the facts that make them comparable.

    ``*_env`` are the documents' environments, ``baseline``/``candidate`` two results
    (payloads). Returns ``["cpu_count: 2 -> 4", ...]``; empty when comparable.
    """
    differences = []

    def check(name: str, a: Any, b: Any) -> None:
        if a != b:
            differences.append(f"{name}: {_show(a)} -> {_show(b)}")

    check("cpu_count", baseline_env.get("cpu_count"), candidate_env.get("cpu_count"))
    a_cluster, b_cluster = baseline.get("cluster") or {}, candidate.get("cluster") or {}
    check(
        "provider",
        a_cluster.get("provider") or baseline_env.get("provider"),
        b_cluster.get("provider") or candidate_env.get("provider"),
    )
    check("dataplane", baseline.get("dataplane"), candidate.get("dataplane"))
    a_facts, b_facts = a_cluster.get("fingerprint"), b_cluster.get("fingerprint")
    if (a_facts is None) != (b_facts is None):
        check(
            "cluster fingerprint",
            "given" if a_facts is not None else None,
            "given" if b_facts is not None else None,
        )
    elif a_facts is not None and b_facts is not None:
        for key in sorted(set(a_facts) | set(b_facts)):
            check(key, a_facts.get(key), b_facts.get(key))
    return differences


def _notes(baseline_env: dict[str, Any], candidate_env: dict[str, Any]) -> list[str]:
    notes = []
    for key in ("kernel", "cpu_model", "plugin_version", "python"):
        a, b = baseline_env.get(key), candidate_env.get(key)
        if a != b:
            notes.append(f"{key}: {_show(a)} -> {_show(b)}")
    return notes


# --------------------------------------------------------------------------- comparing


_Key = tuple[str, str | None, str]


def _pairs(document: dict[str, Any]) -> dict[_Key, tuple[dict[str, Any], dict[str, Any]]]:
    out: dict[_Key, tuple[dict[str, Any], dict[str, Any]]] = {}
    for result in document.get("results", []):
        for load in result.get("loads") or []:
            key = (result["test"], result.get("dataplane"), load.get("label") or "")
            out.setdefault(key, (result, load))
    return out


def _estimate(load: dict[str, Any], quantile: float) -> float | None:
    """The load's own estimate of the quantile, shown where no comparison was made."""
    entry = (load.get("latency") or {}).get(f"p{quantile:g}") or {}
    value = entry.get("estimate")
    return float(value) if isinstance(value, (int, float)) else None


def _decide(
    key: _Key,
    base_load: dict[str, Any],
    cand_load: dict[str, Any],
    *,
    quantile: float,
    max_increase: float,
    alpha: float,
) -> PairComparison:
    test, dataplane, label = key
    base = PairComparison(
        test,
        dataplane,
        label,
        "not compared",
        baseline=_estimate(base_load, quantile),
        candidate=_estimate(cand_load, quantile),
    )
    a = [v for v in (base_load.get("sample") or {}).get("latencies") or [] if v is not None]
    b = [v for v in (cand_load.get("sample") or {}).get("latencies") or [] if v is not None]
    for side, load in (("baseline", base_load), ("candidate", cand_load)):
        if load.get("saturated"):
            return replace(
                base,
                n_baseline=len(a),
                n_candidate=len(b),
                reason=f"the {side}'s load generator was saturated: "
                f"{load.get('saturation_reason') or 'it could not hold its schedule'}",
            )
    minimum = stats.min_samples_for_quantile(quantile / 100, 1 - 2 * alpha)
    for side, sample in (("baseline", a), ("candidate", b)):
        if len(sample) < minimum:
            return replace(
                base,
                n_baseline=len(a),
                n_candidate=len(b),
                reason=f"the {side} has {len(sample)} latencies; the p{quantile:g} needs at "
                f"least {minimum} for a one-sided bound at alpha={alpha:g}",
            )
    try:
        check = stats.regression_check(a, b, quantile / 100, max_increase=max_increase, alpha=alpha)
    except ValueError as exc:
        return replace(base, reason=str(exc))
    change, shift, regressed = check.change, check.shift, check.regressed
    reason = regression_advice(check, f"p{quantile:g}")
    return replace(
        base,
        status="regression" if regressed else "ok",
        baseline=change.baseline,
        candidate=change.candidate,
        change=change.change,
        low=change.low,
        high=change.high,
        n_baseline=change.n_baseline,
        n_candidate=change.n_candidate,
        pvalue=shift.pvalue,
        reason=reason,
    )


def compare(
    baseline: dict[str, Any],
    candidate: dict[str, Any],
    *,
    quantile: float = 95,
    max_increase: float | str = 0.10,
    alpha: float = 0.01,
    force: bool = False,
    include_missing: bool = True,
) -> Comparison:
    """Compare every test × dataplane × load of ``candidate`` with ``baseline`` (documents).

    Pairs whose fingerprints differ are "not compared" (and listed in ``mismatches``) unless
    ``force``; loads only in the candidate are "new", only in the baseline "missing" (left
    out when ``include_missing`` is false, as in a pytest run that selected fewer tests).
    """
    stats.check_alpha_quantile(alpha, quantile)
    floor = parse_fraction(max_increase, name="max_increase")
    base_env = baseline.get("environment") or {}
    cand_env = candidate.get("environment") or {}
    base_pairs, cand_pairs = _pairs(baseline), _pairs(candidate)
    pairs: list[PairComparison] = []
    mismatches: list[str] = []
    for key, (cand_result, cand_load) in cand_pairs.items():
        test, dataplane, label = key
        if key not in base_pairs:
            pairs.append(
                PairComparison(test, dataplane, label, "new", reason="not in the baseline")
            )
            continue
        base_result, base_load = base_pairs[key]
        differences = fingerprint_differences(base_env, base_result, cand_env, cand_result)
        if differences and not force:
            pair = PairComparison(
                test,
                dataplane,
                label,
                "not compared",
                baseline=_estimate(base_load, quantile),
                candidate=_estimate(cand_load, quantile),
                reason="fingerprints differ: " + "; ".join(differences),
            )
            mismatches.append(f"{pair.name}: {'; '.join(differences)}")
            pairs.append(pair)
            continue
        pairs.append(
            _decide(key, base_load, cand_load, quantile=quantile, max_increase=floor, alpha=alpha)
        )
    if include_missing:
        for key in base_pairs.keys() - cand_pairs.keys():
            pairs.append(PairComparison(*key, status="missing", reason="not in the candidate run"))
    pairs.sort(key=lambda p: (p.test, p.dataplane or "", p.label))
    return Comparison(
        pairs=tuple(pairs),
        quantile=float(quantile),
        max_increase=floor,
        alpha=alpha,
        mismatches=tuple(mismatches),
        notes=tuple(_notes(base_env, cand_env)),
        forced=force,
    )


# --------------------------------------------------------------------------- text


def _cell(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else fmt.seconds(value)


def _status_cell(pair: PairComparison, floor: float) -> str:
    if pair.status == "regression":
        return f"REGRESSION (> +{fmt.percent(floor)})"
    return pair.status


def comparison_lines(comparison: Comparison) -> list[str]:
    """The comparison as a table, then the reasons of what was not compared, then notes."""
    q = f"p{comparison.quantile:g}"
    confidence = 1 - 2 * comparison.alpha
    headers = (
        "test",
        "dataplane",
        "load",
        f"baseline {q}",
        f"candidate {q}",
        f"change [{confidence:.0%} CI]",
        "n (base/cand)",
        "result",
    )
    rows: list[Sequence[str]] = []
    for pair in comparison.pairs:
        change = (
            f"{pair.change:+.1%} [{pair.low:+.1%}, {pair.high:+.1%}]"
            if pair.change is not None and pair.low is not None and pair.high is not None
            else "-"
        )
        counts = (
            f"{fmt.count(pair.n_baseline)}/{fmt.count(pair.n_candidate)}"
            if pair.n_baseline or pair.n_candidate
            else "-"
        )
        rows.append(
            (
                pair.test,
                pair.dataplane or "-",
                pair.label or "-",
                _cell(pair.baseline),
                _cell(pair.candidate),
                change,
                counts,
                _status_cell(pair, comparison.max_increase),
            )
        )
    regressions = len(comparison.regressions)
    lines = [
        f"{q} latency vs baseline: regression when the one-sided "
        f"{1 - comparison.alpha:.0%} lower bound of the change exceeds "
        f"+{fmt.percent(comparison.max_increase)}"
        + (" (fingerprint check overridden by force)" if comparison.forced else ""),
        *table(headers, rows, (False, False, False, True, True, True, True, False)),
    ]
    for pair in comparison.pairs:
        if pair.status in ("not compared", "regression"):
            lines.append(f"  {pair.status}: {pair.name}: {pair.reason}")
    for note in comparison.notes:
        lines.append(f"  note: environments differ (not blocking): {note}")
    lines.append(
        f"{regressions} regression{'s' if regressions != 1 else ''} in "
        f"{len(comparison.compared)} compared"
        + (
            f", {sum(p.status == 'not compared' for p in comparison.pairs)} not compared"
            if any(p.status == "not compared" for p in comparison.pairs)
            else ""
        )
    )
    return lines
