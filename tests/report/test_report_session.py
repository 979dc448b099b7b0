"""End-to-end tests of reporting: pytester runs of a small suite, under xdist too."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from pytest_dataplane._cli import main as cli_main
from pytest_dataplane.report.document import schema

TWO = "--dataplane=iptables,ebpf"


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _lines(result: pytest.RunResult) -> list[str]:
    return result.stdout.str().splitlines()


def test_xdist_run_gives_one_table_json_junit_and_plot(suite: pytest.Pytester) -> None:
    result = suite.runpytest(
        TWO,
        "-n",
        "2",
        "--dataplane-json=out/report.json",
        "--junitxml=out/junit.xml",
        "--dataplane-plot=out/plots",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=5)
    out = result.stdout.str()
    assert out.count("dataplane summary") == 1
    result.stdout.fnmatch_lines(
        [
            "*dataplane summary*",
            "latencies in ms*",
            "test * dataplane * rate/s * n * p50 ?95% CI? * p95 ?95% CI? * p99 ?95% CI? *"
            "errors * KUBE- rules * prog p95 * CPU/change p95 * verdicts",
        ]
    )
    rows = [line for line in _lines(result) if line.startswith("test_rollout[")]
    assert len(rows) == 2, rows
    iptables, ebpf = rows
    # iptables: the synthetic rollout lost every 97th request of the rollout window to resets.
    assert iptables.split()[:4] == ["test_rollout[iptables]", "iptables", "400/400", "3,987"]
    assert "13: reset 13" in iptables and "2 pass" in iptables
    assert ebpf.split()[:4] == ["test_rollout[ebpf]", "ebpf", "400/400", "4,000"]
    # ebpf's fake cluster has no CPU accounting: n/a, and the reason is given.
    assert ebpf.split()[-3:] == ["n/a", "2", "pass"]
    assert "n/a because: cpu_seconds on ebpf: not implemented: no CPU accounting here" in out
    result.stdout.fnmatch_lines(
        ["verdicts:", "  PASS * test_rollout?iptables?: error rate below 5%*"]
    )

    # JSON: valid against the shipped schema, one result per test x dataplane with data.
    document = read_json(suite.path / "out/report.json")
    jsonschema.validate(document, schema())
    assert document["schema_version"] == 1
    environment = document["environment"]
    assert environment["cpu_count"] >= 1 and environment["kernel"]
    assert environment["plugin_version"] == "0.1.0"
    by_node = {r["nodeid"]: r for r in document["results"]}
    assert sorted(by_node) == [
        "test_suite.py::test_no_load[ebpf]",
        "test_suite.py::test_no_load[iptables]",
        "test_suite.py::test_rollout[ebpf]",
        "test_suite.py::test_rollout[iptables]",
    ]
    rollout = by_node["test_suite.py::test_rollout[iptables]"]
    assert rollout["test"] == "test_suite.py::test_rollout"
    assert rollout["cluster"]["fingerprint"] == {
        "iptables_backend": "legacy",
        "fake_version": "1.0",
    }
    load = rollout["loads"][0]
    assert load["completed"] == 3987 and load["sample"]["n"] == 3987
    assert len(load["sample"]["latencies"]) == 3987
    names = [e["name"] for e in load["events"]]
    assert names.count("endpoint-added") == 6 and "rollout-start" in names
    # Per-change CPU is placed at the changes' times: twelve changes on the timeline.
    assert len(rollout["cluster"]["cpu"]["timeline"]) == 12
    assert all(4.0 < t < 7.0 for t, _ in rollout["cluster"]["cpu"]["timeline"])

    # JUnit: scalar properties on each test case, never the payload.
    tree = ET.parse(suite.path / "out/junit.xml")
    cases = {case.get("name"): case for case in tree.iter("testcase")}
    props = {
        p.get("name"): p.get("value") for p in cases["test_rollout[iptables]"].iter("property")
    }
    assert props["dataplane"] == "iptables"
    assert props["dataplane.kube_rules"] == "37"
    assert props["dataplane.n"] == "3987"
    assert float(props["dataplane.p95_s"]) == pytest.approx(
        load["latency"]["p95"]["estimate"], rel=1e-5
    )
    assert props["dataplane.verdicts"] == "pass=2 fail=0 inconclusive=0"
    everything = [p for case in cases.values() for p in case.iter("property")]
    assert not [p for p in everything if p.get("name") == "pytest_dataplane"]
    assert max(len(p.get("value") or "") for p in everything) < 100
    assert not list(cases["test_plain"].iter("property"))

    # Plots: one PNG for the test with loads (both dataplanes in it), none for the others.
    pngs = sorted((suite.path / "out/plots").iterdir())
    assert [p.name for p in pngs] == ["test_suite.test_rollout.png"]
    assert pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pngs[0].stat().st_size > 20_000


def test_quiet_gives_one_line_per_row(suite: pytest.Pytester) -> None:
    result = suite.runpytest(TWO, "-q", "-k", "rollout", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    lines = _lines(result)
    start = lines.index(next(line for line in lines if "dataplane summary" in line))
    body = [line for line in lines[start + 1 :] if line.startswith("test_")]
    assert len(body) == 2
    assert body[0].startswith("test_rollout[iptables]: rate=400/400/s n=3,987 p50=")
    assert "KUBE-=37" in body[0] and "verdicts=2 pass" in body[0]
    assert body[1].startswith("test_rollout[ebpf]: rate=400/400/s n=4,000 p50=")
    assert "p50 [95% CI]" not in result.stdout.str()


def test_no_data_no_table(suite: pytest.Pytester) -> None:
    result = suite.runpytest(TWO, "-k", "plain", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "dataplane summary" not in result.stdout.str()


def test_failed_assertion_keeps_its_verdict(suite: pytest.Pytester) -> None:
    suite.makepyfile(
        test_fails="""
        from pytest_dataplane import assert_p95_below

        def test_tight(dataplane, synthetic):
            assert_p95_below(synthetic(dataplane), "1ms")
        """
    )
    result = suite.runpytest(
        "--dataplane=iptables", "test_fails.py", "--dataplane-json=r.json", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["  FAIL * test_tight?iptables?: p95 latency below 1 ms: observed*"]
    )
    (row,) = read_json(suite.path / "r.json")["results"]
    assert row["outcome"] == "failed"
    assert [v["outcome"] for v in row["verdicts"]] == ["fail"]


def test_baseline_self_inflated_and_cli(suite: pytest.Pytester) -> None:
    common = (TWO, "-k", "rollout", "-p", "no:cacheprovider")
    saved = suite.runpytest(*common, "--dataplane-save-baseline=base.json")
    saved.assert_outcomes(passed=2)
    saved.stdout.fnmatch_lines(["dataplane baseline (2 results): *base.json"])

    same = suite.runpytest(*common, "--dataplane-baseline=base.json", "--dataplane-json=same.json")
    assert same.ret == 0
    same.stdout.fnmatch_lines(
        [
            "*dataplane baseline: 0 regressions*",
            "test_suite.py::test_rollout * ebpf * +0.0% * ok",
            "test_suite.py::test_rollout * iptables * +0.0% * ok",
            "0 regressions in 2 compared",
        ]
    )
    assert read_json(suite.path / "same.json")["baseline"]["comparison"]["regressions"] == 0

    slower = suite.runpytest(
        *common,
        "--dataplane-baseline=base.json",
        "--latency-factor=1.5",
        "--dataplane-json=slower.json",
    )
    assert slower.ret == pytest.ExitCode.TESTS_FAILED  # the tests passed; the baseline did not
    # The iptables run's tail is one rollout spike (every p95 exceedance in 3 s of 10): one
    # episode per run, so the check widened for dependence cannot tell a 50 % larger spike
    # from another rollout's; ebpf's steady latencies can.
    slower.stdout.fnmatch_lines(
        [
            "*dataplane baseline: 1 regression*",
            "test_suite.py::test_rollout * ebpf * +50.0% * REGRESSION (> +10.0%)",
            "test_suite.py::test_rollout * iptables * +50.0% [[]-*%, +*%] * ok",
            "  regression: test_suite.py::test_rollout ?ebpf?: the p95 grew by at least *",
            "*2 passed, * 1 regressed in *",
        ]
    )
    slower_doc = read_json(suite.path / "slower.json")
    jsonschema.validate(slower_doc, schema())

    # The same comparison from the command line.
    assert cli_main(["compare", str(suite.path / "base.json"), str(suite.path / "same.json")]) == 0
    assert (
        cli_main(["compare", str(suite.path / "base.json"), str(suite.path / "slower.json")]) == 1
    )


def test_fingerprint_mismatch_warns_and_force_compares(suite: pytest.Pytester) -> None:
    # ebpf: its steady latencies make the forced comparison's +50 % a provable regression.
    common = ("--dataplane=ebpf", "-k", "rollout", "-p", "no:cacheprovider")
    suite.runpytest(*common, "--dataplane-save-baseline=base.json").assert_outcomes(passed=1)
    changed = (
        *common,
        "--fake-version=2.0",
        "--latency-factor=1.5",
        "--dataplane-baseline=base.json",
    )
    # In-process runs inherit this suite's filterwarnings=error; the user's default is "show".
    show = ("-W", "always::pytest_dataplane.PytestDataplaneWarning")

    warned = suite.runpytest(*changed, *show)
    assert warned.ret == 0  # not compared: no regression can be claimed
    warned.stdout.fnmatch_lines(
        [
            "*dataplane baseline: 0 regressions*",
            "test_suite.py::test_rollout * ebpf * 3.27 ms * 4.9 ms * - * not compared",
            "  not compared: * fingerprints differ: fake_version: 1.0 -> 2.0",
        ]
    )
    warned.stdout.fnmatch_lines(
        [
            "*warnings summary*",
            "*PytestDataplaneWarning: --dataplane-baseline *base.json: not compared because *"
            "fake_version: 1.0 -> 2.0",
        ]
    )

    forced = suite.runpytest(*changed, *show, "--dataplane-baseline-force")
    assert forced.ret == pytest.ExitCode.TESTS_FAILED
    forced.stdout.fnmatch_lines(["*REGRESSION*", "*1 passed, * 1 regressed in *"])

    # With warnings as errors, the mismatch fails the session with the message (no traceback).
    strict = suite.runpytest(*changed, "-W", "error::pytest_dataplane.PytestDataplaneWarning")
    assert strict.ret == pytest.ExitCode.TESTS_FAILED
    strict.stdout.fnmatch_lines(["pytest-dataplane: --dataplane-baseline *: not compared because*"])
    assert "Traceback" not in strict.stdout.str() + strict.stderr.str()


def test_ini_twins(suite: pytest.Pytester) -> None:
    suite.makeini(
        """
        [pytest]
        dataplane_json = from-ini.json
        dataplane_baseline_force = true
        """
    )
    result = suite.runpytest("--dataplane=ebpf", "-k", "rollout", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    jsonschema.validate(read_json(suite.path / "from-ini.json"), schema())


def test_bad_baseline_file_is_a_usage_error(suite: pytest.Pytester) -> None:
    (suite.path / "broken.json").write_text("{not json")
    result = suite.runpytest("--dataplane-baseline=broken.json", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --dataplane-baseline: *broken.json: not JSON*"])
    (suite.path / "other.json").write_text('{"format": "something-else"}')
    result = suite.runpytest("--dataplane-baseline=other.json", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: *other.json: not a pytest-dataplane report*"])


def test_bad_bool_ini_is_a_usage_error(suite: pytest.Pytester) -> None:
    suite.makeini("[pytest]\ndataplane_baseline_force = maybe\n")
    result = suite.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --dataplane-baseline-force: 'maybe' is not a boolean*"])


def test_plot_needs_matplotlib(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = suite.runpytest("--dataplane-plot=plots", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --dataplane-plot needs matplotlib, which is not installed: "
            "pip install 'pytest-dataplane[plot]'"
        ]
    )
    assert not Path(suite.path / "plots").exists()


def test_plot_dir_that_is_a_file(suite: pytest.Pytester) -> None:
    (suite.path / "plots").write_text("")
    result = suite.runpytest("--dataplane-plot=plots", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --dataplane-plot: *plots exists and is not a directory*"])


def test_a_summarising_bug_is_reported_not_fatal(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_dataplane.report import collect

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("bins")

    monkeypatch.setattr(collect, "build_payload", broken)
    result = suite.runpytest(
        "--dataplane=ebpf", "-k", "rollout", "--dataplane-json=r.json", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1)
    assert result.ret == 0  # the tests' outcome stands; the file says what it could
    assert read_json(suite.path / "r.json")["results"] == []
    result.stdout.fnmatch_lines(
        [
            "pytest-dataplane: cannot summarise test_suite.py::test_rollout[[]ebpf[]]: "
            "KeyError: 'bins'"
        ]
    )


def test_unwritable_json_fails_the_session(suite: pytest.Pytester) -> None:
    (suite.path / "blocker").write_text("")
    result = suite.runpytest(
        "--dataplane=ebpf",
        "-k",
        "rollout",
        "--dataplane-json=blocker/r.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.INTERNAL_ERROR
    result.stdout.fnmatch_lines(
        ["pytest-dataplane: cannot write the JSON report to *blocker/r.json: *"]
    )
