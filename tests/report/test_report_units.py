"""Unit tests of the computing parts of reporting: payloads, bins, cells, comparisons."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import numpy as np
import pytest

from pytest_dataplane import DataplaneAssertionError, assert_no_regression
from pytest_dataplane._collect import TestRecord as Record
from pytest_dataplane._snapshot import FAILED, ClusterSnapshot, SnapshotError, take
from pytest_dataplane.baseline import compare, comparison_lines, fingerprint_differences
from pytest_dataplane.errors import DataplaneError, DataplaneUnavailable
from pytest_dataplane.events import Event
from pytest_dataplane.load import OUTCOMES, LoadResult, Timeline
from pytest_dataplane.providers.base import CpuUsage, RuleCount
from pytest_dataplane.report import collect, document, junit, terminal
from pytest_dataplane.report.environment import cpu_model, git_commit
from pytest_dataplane.report.plot import file_name, plot_test

RESET = OUTCOMES.index("reset")
DROPPED = OUTCOMES.index("dropped")


def make_result(
    n: int = 2000,
    *,
    rate: float = 200.0,
    factor: float = 1.0,
    seed: int = 1,
    errors: int = 0,
    events: tuple[Event, ...] = (),
    start: float = 100.0,
) -> LoadResult:
    rng = np.random.default_rng(seed)
    send = np.arange(n) / rate
    latency = (rng.lognormal(np.log(0.003), 0.4, n) * factor).astype(np.float32)
    outcome = np.zeros(n, np.uint8)
    outcome[: errors * 7 : 7] = RESET
    return LoadResult.build(
        Timeline(send, latency, np.full(n, 1e-5, np.float32), outcome),
        start=start,
        target_rate=rate,
        duration=n / rate,
        events=events,
    )


class Cluster:
    """A cluster whose methods answer, raise, or are missing, as a test needs."""

    provider = "fake"

    def __init__(self, name: str = "iptables", **answers: Any) -> None:
        self.name = name
        self.events: list[Event] = answers.pop("events", [])
        self.answers = answers

    def __getattr__(self, method: str) -> Any:
        answers = self.__dict__["answers"]
        if method not in answers:
            raise AttributeError(method)
        answer = answers[method]

        def call() -> Any:
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return call


def snap(cluster: Any) -> ClusterSnapshot:
    """The snapshot the dataplane fixture would take of ``cluster`` after a test."""
    snapshot, error = take(cluster)
    assert error is None
    return snapshot


# --------------------------------------------------------------------------- collect


@pytest.mark.parametrize(
    ("nodeid", "callspec", "plane", "expected"),
    [
        ("t.py::test_a[iptables]", "iptables", "iptables", "t.py::test_a"),
        ("t.py::test_a[iptables-300]", "iptables-300", "iptables", "t.py::test_a[300]"),
        ("t.py::test_a[300-ebpf]", "300-ebpf", "ebpf", "t.py::test_a[300]"),
        ("t.py::test_a[x]", "x", "ebpf", "t.py::test_a[x]"),
        ("t.py::test_a", None, None, "t.py::test_a"),
    ],
)
def test_test_key(nodeid: str, callspec: str | None, plane: str | None, expected: str) -> None:
    assert collect.test_key(nodeid, callspec, plane) == expected


def test_clean_makes_plain_json() -> None:
    value = {
        "a": np.float32(1.5),
        "b": math.nan,
        "c": (np.int64(3), math.inf),
        1: np.array([1.0, math.nan]),
        "d": Path("/x"),
    }
    assert collect.clean(value) == {
        "a": 1.5,
        "b": None,
        "c": [3, None],
        "1": [1.0, None],
        "d": "/x",
    }
    json.dumps(collect.clean(value), allow_nan=False)


def test_time_bins_match_a_direct_computation() -> None:
    rng = np.random.default_rng(7)
    n = 3000
    send = np.sort(rng.uniform(0, 10, n))
    latency = rng.exponential(0.01, n).astype(np.float32)
    outcome = np.zeros(n, np.uint8)
    outcome[rng.choice(n, 40, replace=False)] = RESET
    outcome[rng.choice(n, 10, replace=False)] = DROPPED
    bins = collect.time_bins(send, latency, outcome, duration=10.0, width=0.5)
    assert bins["width"] == 0.5 and len(bins["t"]) == 20
    assert sum(bins["n"]) == int((outcome == 0).sum())
    assert sum(bins["errors"]) == int((outcome == RESET).sum())
    assert sum(bins["dropped"]) == int((outcome == DROPPED).sum())
    for b in (0, 7, 19):
        inside = (send >= b * 0.5) & (send < (b + 1) * 0.5) & (outcome == 0)
        expected = np.percentile(latency[inside].astype(np.float64), 95)
        assert bins["p95"][b] == pytest.approx(expected, rel=1e-5)
        assert bins["n"][b] == int(inside.sum())


def test_time_bins_leave_empty_bins_empty() -> None:
    send = np.array([0.1, 0.2, 3.5])
    bins = collect.time_bins(
        send,
        np.array([0.01, 0.02, 0.03], np.float32),
        np.zeros(3, np.uint8),
        duration=4.0,
        width=1.0,
    )
    assert bins["n"] == [2, 0, 0, 1]
    assert bins["p50"][1] is None and bins["p50"][3] == pytest.approx(0.03)


@pytest.mark.parametrize(
    ("duration", "rate", "expected"),
    [(10.0, 400.0, 0.25), (30.0, 300.0, 0.5), (10.0, 10.0, 0.5), (3600.0, 1000.0, 30.0)],
)
def test_bin_width(duration: float, rate: float, expected: float) -> None:
    width = collect.bin_width(duration, rate)
    assert width == expected
    assert duration / width <= collect.MAX_BINS


def test_latency_sample_is_capped_deterministic_and_uniform() -> None:
    values = np.arange(1, 20_001, dtype=np.float64) / 1e4
    first = collect.latency_sample(values)
    assert first == collect.latency_sample(values)
    assert first["n"] == 20_000 and first["subsampled"] is True
    kept = np.array(first["latencies"])
    assert kept.size == collect.SAMPLE_CAP
    assert np.median(kept) == pytest.approx(np.median(values), rel=0.05)
    small = collect.latency_sample(values[:100])
    assert small["subsampled"] is False and len(small["latencies"]) == 100


def test_load_summary_has_cis_where_n_allows_and_events_relative() -> None:
    marks = (Event("rollout-start", 104.0), Event("rollout-end", 106.5))
    result = make_result(events=marks, errors=5)
    cluster_events = [Event("endpoint-added", 105.0, {"endpoint": "10.0.0.1:80"}), marks[0]]
    summary = collect.load_summary(result, cluster_events=cluster_events)
    for q in ("p50", "p95", "p99"):
        entry = summary["latency"][q]
        assert entry["low"] <= entry["estimate"] <= entry["high"]
    assert summary["latency"]["p95"]["n"] == result.completed
    assert [(e["name"], e["t"]) for e in summary["events"]] == [
        ("rollout-start", 4.0),
        ("endpoint-added", 5.0),
        ("rollout-end", 6.5),
    ]
    assert summary["errors"] == 5 and summary["error_kinds"] == {"reset": 5}
    small = collect.load_summary(make_result(n=50))
    assert small["latency"]["p95"]["low"] is None
    assert small["latency"]["p95"]["estimate"] == pytest.approx(make_result(n=50).percentile(95))


def test_events_are_capped_keeping_rare_marks() -> None:
    many = [Event("endpoint-added", 100.0 + i * 0.001) for i in range(2000)]
    many.append(Event("scale", 101.0))
    summary = collect.load_summary(make_result(), cluster_events=many)
    names = [e["name"] for e in summary["events"]]
    assert len(names) == collect.MAX_EVENTS and "scale" in names


def test_window_results_are_labelled_and_come_after_the_whole_run() -> None:
    result = make_result()
    record = Record(results=[("", result.window(2.0, 5.0)), ("", result)])
    payload = collect.build_payload(record, nodeid="t.py::a", test="t.py::a", dataplane=None)
    assert payload is not None
    assert [load["label"] for load in payload["loads"]] == ["", "window 2.0-5.0 s"]
    assert payload["loads"][1]["window"] == [2.0, 5.0]
    # A window's rate is per second of the window, not of the run so far.
    assert payload["loads"][1]["achieved_rate"] == pytest.approx(result.target_rate, rel=0.05)


def test_between_windows_are_named_after_their_events() -> None:
    result = make_result()
    events = (Event("rollout-start", result.start + 1.0), Event("rollout-end", result.start + 3.0))
    result = dataclasses.replace(result, events=events, label="backend")
    record = Record(
        results=[("backend", result), ("", result.between("rollout-start", "rollout-end"))]
    )
    payload = collect.build_payload(record, nodeid="t.py::a", test="t.py::a", dataplane=None)
    assert payload is not None
    assert payload["loads"][1]["label"] == "backend: rollout-start to rollout-end"


def test_empty_record_has_no_payload() -> None:
    assert collect.build_payload(Record(), nodeid="a", test="a", dataplane=None) is None


def test_snapshot_keeps_what_it_read_and_names_each_failure() -> None:
    broken = DataplaneError("nft list failed")
    cluster = Cluster(
        "nftables",
        rule_count=broken,
        programming_latencies=NotImplementedError(),
        cpu_seconds=RuntimeError("boom"),
        # fingerprint is missing altogether
    )
    snapshot, error = take(cluster)
    facts = collect.cluster_facts(snapshot)
    assert facts["rule_count"] is None and facts["cpu"] is None
    assert facts["fingerprint"] is None and facts["programming_latency"] is None
    assert facts["unavailable"] == {
        "rule_count": FAILED,
        "programming_latencies": "not implemented",
        "cpu_seconds": FAILED,
        "fingerprint": "not provided by this provider",
    }
    # The failures (not what the provider cannot give by design) make one error, caused by
    # the first of them, for the fixture to raise.
    assert isinstance(error, SnapshotError)
    assert error.figures == ("rule_count", "cpu_seconds")
    assert error.__cause__ is broken
    assert str(error) == (
        "the nftables cluster (fake) could not report its figures after the test: "
        "rule_count(): DataplaneError: nft list failed; cpu_seconds(): RuntimeError: boom"
    )


def test_snapshot_of_a_figure_unavailable_here_is_no_error() -> None:
    cluster = Cluster(
        cpu_seconds=DataplaneUnavailable("no cgroup v2"), rule_count=RuleCount(total=4)
    )
    snapshot, error = take(cluster)
    assert error is None
    assert snapshot.unavailable["cpu_seconds"] == "DataplaneUnavailable: no cgroup v2"
    assert snapshot.rule_count is not None and snapshot.rule_count["total"] == 4


def test_cluster_facts_place_cpu_changes_in_time() -> None:
    usage = CpuUsage(
        total=1.0,
        per_change=(0.2, 0.5, 0.1),
        changes=(
            "backend: removed 10.0.0.7",
            "backend: added 10.0.0.7",
            "other: added 10.9.9.9",
        ),
        times=(104.0, 103.0, 106.5),
    )
    cluster = Cluster(
        cpu_seconds=usage,
        rule_count=RuleCount(total=37),
        programming_latencies=np.array([0.1, 0.3]),
        fingerprint={"backend": "legacy"},
    )
    facts = collect.cluster_facts(snap(cluster), origin=100.0)
    cpu = facts["cpu"]
    assert cpu["timeline"] == [[4.0, 0.2], [3.0, 0.5], [6.5, 0.1]]
    assert cpu["heaviest"][0] == {"change": "backend: added 10.0.0.7", "seconds": 0.5}
    assert cpu["per_change"]["n"] == 3 and cpu["per_change"]["max"] == 0.5
    assert facts["rule_count"]["total"] == 37
    assert facts["programming_latency"]["p95"] == pytest.approx(np.percentile([0.1, 0.3], 95))
    # A provider that does not say when its changes happened gets no CPU timeline.
    untimed = SimpleNamespace(total=0.3, per_change=(0.1, 0.2), changes=("a", "b"))
    facts = collect.cluster_facts(snap(Cluster(cpu_seconds=untimed)), origin=100.0)
    assert facts["cpu"]["timeline"] == []
    assert facts["cpu"]["per_change"]["n"] == 2


# --------------------------------------------------------------------------- outputs


def payload(
    dataplane: str = "iptables", *, factor: float = 1.0, n: int = 2000, **cluster: Any
) -> dict[str, Any]:
    result = make_result(n=n, factor=factor)
    record = Record(results=[("", result)], snapshots=[snap(Cluster(dataplane, **cluster))])
    built = collect.build_payload(
        record, nodeid=f"t.py::test_a[{dataplane}]", test="t.py::test_a", dataplane=dataplane
    )
    assert built is not None
    return built


def doc(*payloads: dict[str, Any], cpu_count: int = 2) -> dict[str, Any]:
    environment = {
        "kernel": "6.1",
        "machine": "x86_64",
        "cpu_model": "cpu",
        "cpu_count": cpu_count,
        "python": "3.11",
        "pytest": "9",
        "plugin_version": "0.1.0",
        "provider": "lab",
        "git_commit": None,
        "time": "2024-01-01T00:00:00Z",
    }
    return document.build(environment, list(payloads))


def test_document_validates_and_round_trips(tmp_path: Path) -> None:
    built = doc(payload(rule_count=RuleCount(total=5)), payload("ebpf"))
    jsonschema.validate(built, document.schema())
    path = tmp_path / "sub" / "r.json"
    document.write(path, built)
    assert document.read(path) == built
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "no such file"),
        ("{", "not JSON"),
        ('{"format": "x"}', "not a pytest-dataplane report"),
        (
            '{"format": "pytest-dataplane-report", "schema_version": 99}',
            "schema_version 99 is not readable",
        ),
        (
            '{"format": "pytest-dataplane-report", "schema_version": 1, "results": [1]}',
            "must be a list of results",
        ),
    ],
)
def test_document_read_errors_name_the_file(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "r.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        document.read(path)
    assert str(path) in str(info.value)


def test_terminal_cells() -> None:
    entry = {"estimate": 0.0123, "low": 0.0119, "high": 0.0131, "n": 900, "confidence": 0.95}
    assert terminal.quantile_cell(entry, 1e3, "p95") == "12.3 [11.9-13.1]"
    assert terminal.quantile_cell({**entry, "low": None, "high": None}, 1e3, "p99") == (
        "12.3 [n<368]"
    )
    assert terminal.quantile_cell(None, 1e3, "p50") == "n/a"
    load = {"errors": 12, "error_kinds": {"reset": 9, "read_timeout": 2, "http_5xx": 1}}
    assert terminal.errors_cell(load) == "12: reset 9, read_timeout 2, ..."
    assert terminal.rate_cell({"achieved_rate": 297.4, "target_rate": 300, "saturated": True}) == (
        "297.4/300!"
    )
    verdicts = [{"outcome": "pass"}, {"outcome": "fail"}, {"outcome": "inconclusive"}]
    assert terminal.verdicts_cell(verdicts) == "1 pass, 1 fail, 1 inconclusive"
    assert terminal.cpu_cell({"cpu": {"per_change": {"n": 0, "p95": None}}}) == "-"
    assert terminal.cpu_cell({"cpu": None}) == "n/a"


def test_summary_and_compact_lines_have_a_row_per_payload() -> None:
    payloads = [
        payload("ebpf", rule_count=RuleCount(total=3)),
        payload("iptables", rule_count=RuleCount(total=37)),
    ]
    lines = terminal.summary_lines(payloads)
    assert lines[0].startswith("latencies in ms")
    rows = [line for line in lines if line.startswith("test_a[")]
    assert [r.split()[0] for r in rows] == ["test_a[iptables]", "test_a[ebpf]"]  # usual order
    assert rows[0].split()[-5] == "37"
    compact = terminal.compact_lines(payloads)
    assert len(compact) == 2 and compact[0].startswith("test_a[iptables]: rate=200/200/s")


def test_junit_properties_are_scalars() -> None:
    props = dict(junit.properties(payload(rule_count=RuleCount(total=37))))
    assert props["dataplane"] == "iptables"
    assert props["dataplane.kube_rules"] == 37
    assert props["dataplane.n"] == 2000
    assert all(isinstance(v, (str, int, float, bool)) for v in props.values())
    assert "dataplane.cpu_per_change_p95_s" not in props  # the cluster had no CPU figures


# --------------------------------------------------------------------------- baselines


@pytest.mark.parametrize("factor", [1.0, 1.04, 1.2, 1.5])
def test_compare_decides_like_assert_no_regression(factor: float) -> None:
    base, cand = payload(), payload(factor=factor)
    comparison = compare(doc(base), doc(cand))
    (pair,) = comparison.pairs
    a = base["loads"][0]["sample"]["latencies"]
    b = cand["loads"][0]["sample"]["latencies"]
    try:
        verdict = assert_no_regression(a, b)
        expected = "ok"
    except DataplaneAssertionError as exc:
        verdict = exc.verdict
        expected = "regression"
    assert pair.status == expected
    assert pair.low == pytest.approx(verdict.low)
    assert pair.change == pytest.approx(factor - 1, abs=1e-6)
    assert (pair.status == "regression") == (factor >= 1.2)


def test_compare_fingerprints_block_unless_forced() -> None:
    base = payload(fingerprint={"cilium_version": "1.15.0"})
    cand = payload(factor=1.5, fingerprint={"cilium_version": "1.16.3"})
    blocked = compare(doc(base), doc(cand))
    assert [p.status for p in blocked.pairs] == ["not compared"]
    assert blocked.mismatches == ("t.py::test_a [iptables]: cilium_version: 1.15.0 -> 1.16.3",)
    assert not blocked.regressions
    forced = compare(doc(base), doc(cand), force=True)
    assert [p.status for p in forced.pairs] == ["regression"]
    cpu = compare(doc(base), doc(payload(fingerprint={"cilium_version": "1.15.0"}), cpu_count=8))
    assert cpu.mismatches == ("t.py::test_a [iptables]: cpu_count: 2 -> 8",)


def test_fingerprint_differences() -> None:
    env = {"cpu_count": 2, "provider": "lab"}
    a = {"dataplane": "iptables", "cluster": {"provider": "lab", "fingerprint": {"x": 1}}}
    assert fingerprint_differences(env, a, env, a) == []
    b = {"dataplane": "iptables", "cluster": {"provider": "kind", "fingerprint": None}}
    assert fingerprint_differences(env, a, env, b) == [
        "provider: lab -> kind",
        "cluster fingerprint: given -> (absent)",
    ]


def test_compare_new_missing_small_and_saturated() -> None:
    base = doc(payload("iptables"), payload("ebpf", n=50))
    cand_small = payload("ebpf", n=50)
    saturated = payload("nftables")
    saturated["loads"][0]["saturated"] = True
    saturated["loads"][0]["saturation_reason"] = "send lag p99 3 ms > 1 ms"
    base["results"].append(payload("nftables"))
    comparison = compare(base, doc(cand_small, saturated, payload("ipvs")))
    status = {p.dataplane: (p.status, p.reason) for p in comparison.pairs}
    assert status["iptables"] == ("missing", "not in the candidate run")
    assert status["ipvs"] == ("new", "not in the baseline")
    assert status["ebpf"][0] == "not compared" and "needs at least" in status["ebpf"][1]
    assert status["nftables"] == (
        "not compared",
        "the candidate's load generator was saturated: send lag p99 3 ms > 1 ms",
    )
    lines = comparison_lines(comparison)
    assert lines[-1] == "0 regressions in 0 compared, 2 not compared"
    without = compare(base, doc(cand_small), include_missing=False)
    assert [p.dataplane for p in without.pairs] == ["ebpf"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantile": 100}, "quantile: 100 is not accepted"),
        ({"alpha": 0.7}, "alpha: 0.7 is not accepted"),
        ({"max_increase": "ten"}, "max_increase: cannot parse 'ten'"),
    ],
)
def test_compare_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compare(doc(), doc(), **kwargs)


# --------------------------------------------------------------------------- environment, plots


def test_cpu_model_parsing() -> None:
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert cpu_model("Hardware\t: BCM2835\n") == "BCM2835"


def test_git_commit(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "m"], check=True)
    commit = git_commit(tmp_path)
    assert commit is not None and len(commit) == 40
    (tmp_path / "f").write_text("2")
    assert git_commit(tmp_path) == f"{commit}+dirty"


@pytest.mark.parametrize(
    ("test", "expected"),
    [
        ("tests/test_x.py::test_a", "test_x.test_a.png"),
        ("tests/test_x.py::TestK::test_a[300]", "test_x.TestK.test_a_300.png"),
    ],
)
def test_plot_file_name(test: str, expected: str) -> None:
    assert file_name(test) == expected


def test_plot_without_loads_writes_nothing(tmp_path: Path) -> None:
    assert plot_test(tmp_path, "t.py::a", [{"test": "t.py::a", "loads": []}]) is None
    assert not list(tmp_path.iterdir())


def test_plot_log_scale_and_errors(tmp_path: Path) -> None:
    slow = payload("iptables", factor=200.0)
    fast = payload("ebpf")
    slow["loads"][0]["bins"]["errors"][3] = 4
    path = plot_test(tmp_path, "t.py::test_a", [fast, slow])
    assert path == tmp_path / "t.test_a.png"
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_objects_with_latencies_that_are_not_loads_are_skipped() -> None:
    verdict = SimpleNamespace(to_dict=lambda: {"assertion": "a", "outcome": "pass"})
    record = Record(results=[("", SimpleNamespace(latencies=[0.1]))], verdicts=[verdict])
    # Verdicts on numbers the test brought itself, with no load and no cluster: no row.
    assert collect.build_payload(record, nodeid="t.py::a", test="t.py::a", dataplane=None) is None
    cluster = SimpleNamespace(name="ebpf")
    record = Record(
        results=[("", SimpleNamespace(latencies=[0.1]))],
        verdicts=[verdict],
        snapshots=[snap(cluster)],
    )
    built = collect.build_payload(record, nodeid="t.py::a", test="t.py::a", dataplane=None)
    assert built is not None
    assert built["loads"] == [] and built["verdicts"] == [{"assertion": "a", "outcome": "pass"}]


def test_document_write_honours_the_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        document.write(tmp_path / "r.json", doc())
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_verdict_lines_are_capped_failures_first() -> None:
    verdicts = [
        {"assertion": f"a{i}", "outcome": "pass", "observed": 0.1, "unit": "s"} for i in range(9)
    ]
    verdicts.append({"assertion": "bad", "outcome": "fail", "observed": None, "method": "guard"})
    row = {"nodeid": "t.py::x", "verdicts": verdicts}
    lines = terminal.verdict_lines([row], {"t.py::x": "x"}, limit=3)
    assert lines[1] == "  FAIL         x: bad: not evaluated (guard)"
    assert len(lines) == 1 + 3 + 1
    assert lines[-1].strip() == "... and 7 more verdicts of x (all with -v or in --dataplane-json)"
    assert len(terminal.verdict_lines([row], {"t.py::x": "x"})) == 11


def test_compare_command_json_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_dataplane._cli import main

    base, slow = tmp_path / "a.json", tmp_path / "b.json"
    document.write(base, doc(payload()))
    document.write(slow, doc(payload(factor=1.5)))
    assert main(["compare", str(base), str(slow), "--json"]) == 1
    printed = json.loads(capsys.readouterr().out)
    assert printed["regressions"] == 1 and printed["pairs"][0]["status"] == "regression"
    assert main(["compare", str(base), str(slow), "--max-increase", "60%"]) == 0
    out = capsys.readouterr().out
    assert "0 regressions in 1 compared" in out
    assert main(["compare", str(base), str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err


def test_compare_command_runs_as_a_module(tmp_path: Path) -> None:
    import sys

    base = tmp_path / "a.json"
    document.write(base, doc(payload()))
    done = subprocess.run(
        [sys.executable, "-m", "pytest_dataplane", "compare", str(base), str(base)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "0 regressions in 1 compared" in done.stdout
