"""Reports are pure: the cluster's figures are read once, in the dataplane fixture's teardown.

A cluster whose figures cannot be read gives one error, at the test's teardown, raised by the
fixture with the provider's exception as its cause; the test's own outcome and its load
still reach the table, the JSON and JUnit. The report modules never import a provider.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from pytest_dataplane._snapshot import FAILED

FAILING_CLUSTER = r"""
import pytest

from pytest_dataplane import plugin
from pytest_dataplane.providers.base import RuleCount

READS = []


class Cluster:
    provider = "fake"
    events = ()

    def __init__(self, name):
        self.name = name

    def rule_count(self):
        READS.append("rule_count")
        try:
            int("iptables-save: exit status 4")
        except ValueError as exc:
            raise RuntimeError("iptables-save failed in dpt-node-1") from exc

    def programming_latencies(self):
        return [0.01 + i / 10000 for i in range(100)]

    def cpu_seconds(self):
        raise NotImplementedError("no CPU accounting here")

    def fingerprint(self):
        return {"kernel": "test"}

    def reset(self):
        READS.append("reset")

    def close(self):
        pass


class Provider:
    name = "fake"

    def availability(self, dataplane):
        return None

    def create(self, dataplane):
        return Cluster(dataplane)

    def close(self):
        pass


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    config.stash[plugin._STATE]._provider = Provider()


def pytest_sessionfinish(session):
    # How often the plugin asked the cluster, for the outer test to check.
    print(f"\ncluster reads: {READS}")
"""

TESTS = """
from pytest_dataplane import assert_programming_latency_below


def test_one(dataplane):
    assert_programming_latency_below(dataplane, "1s")


def test_two(dataplane):
    assert dataplane.name == "iptables"
"""


def test_a_failing_rule_count_is_one_teardown_error_from_the_fixture_with_its_cause(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(FAILING_CLUSTER)
    pytester.makepyfile(test_failing=TESTS)
    result = pytester.runpytest(
        "--dataplane=iptables",
        "-k",
        "test_one",
        "--dataplane-json=r.json",
        "--junitxml=j.xml",
        "-p",
        "no:cacheprovider",
    )
    # The test passed; reading the cluster after it failed: one error, at its teardown.
    result.assert_outcomes(passed=1, errors=1)
    out = result.stdout.str()
    assert out.count("ERROR at teardown of test_one[iptables]") == 1
    assert "ERROR at call" not in out and "INTERNALERROR" not in out
    # rule_count() was asked once, before the cluster was reset; never from a report hook.
    result.stdout.fnmatch_lines(["cluster reads: ['rule_count', 'reset']"])
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_one[[]iptables[]]*",
            # The cause, with the provider's own traceback and its own cause.
            "E * ValueError: invalid literal for int() *",
            "*direct cause of the following exception*",
            "*def rule_count(self):",
            "E * RuntimeError: iptables-save failed in dpt-node-1",
            "*direct cause of the following exception*",
            # Raised by the dataplane fixture, naming the cluster and the figure.
            "*def _dataplane_test_scope(request*",
            "E *.SnapshotError: the iptables cluster (fake) could not report its figures "
            "after the test: rule_count(): RuntimeError: iptables-save failed in dpt-node-1",
            "*pytest_dataplane/plugin.py:*: SnapshotError",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "ERROR test_failing.py::test_one[[]iptables[]] - pytest_dataplane._snapshot.Snap*",
        ]
    )
    # What could be read still reaches the outputs; the failed figure is n/a, pointing at
    # the error instead of repeating it.
    (row,) = json.loads((pytester.path / "r.json").read_text())["results"]
    assert row["outcome"] == "passed"
    assert row["cluster"]["rule_count"] is None
    assert row["cluster"]["programming_latency"]["n"] == 100
    assert row["cluster"]["unavailable"] == {
        "rule_count": FAILED,
        "cpu_seconds": "not implemented: no CPU accounting here",
    }
    result.stdout.fnmatch_lines([f"*n/a because: *rule_count on iptables: {FAILED}*"])
    case = next(ET.parse(pytester.path / "j.xml").iter("testcase"))
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["dataplane"] == "iptables" and "dataplane.kube_rules" not in props
    assert "pytest_dataplane" not in props


def test_a_test_whose_setup_failed_reads_no_figures(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(FAILING_CLUSTER)
    pytester.makepyfile(
        test_setup="""
        import pytest

        @pytest.fixture
        def broken(dataplane):
            raise RuntimeError("setup went wrong")

        def test_never_runs(broken):
            pass
        """
    )
    result = pytester.runpytest("--dataplane=iptables", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["cluster reads: ['reset']"])
    assert "ERROR at teardown" not in result.stdout.str()


def test_no_report_module_imports_a_provider() -> None:
    # Every report module, imported in a fresh interpreter, leaves the providers unloaded;
    # lint-imports checks the function-level imports too (contract "report-no-providers").
    code = (
        "import sys, pkgutil, importlib, pytest_dataplane.report as r\n"
        "for m in pkgutil.iter_modules(r.__path__):\n"
        "    importlib.import_module(f'pytest_dataplane.report.{m.name}')\n"
        "print(sorted(n for n in sys.modules if n.startswith('pytest_dataplane.providers')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"
