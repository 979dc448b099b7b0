"""The hooks of pytest_dataplane.hookspec, implemented in a conftest: a provider of the team's
own, facts added to the cluster fingerprint, fields added to the JSON report."""

from __future__ import annotations

import json

import jsonschema
import pytest

from pytest_dataplane.report.document import schema

CONFTEST = r"""
from pytest_dataplane.providers import ProviderEntry
from pytest_dataplane.providers.base import RuleCount


class Cluster:
    provider = "mine"
    events = ()

    def __init__(self, name, image):
        self.name = name
        self.image = image

    def rule_count(self):
        return RuleCount(total=7)

    def fingerprint(self):
        return {"image": self.image}

    def reset(self):
        pass

    def close(self):
        pass


class Provider:
    name = "mine"

    def __init__(self, image):
        self.image = image

    def availability(self, dataplane):
        return None if dataplane == "iptables" else "only iptables here"

    def create(self, dataplane):
        return Cluster(dataplane, self.image)

    def close(self):
        pass


def check(option):
    if option("dataplane_backend_image") == "bad":
        raise ValueError("--dataplane-backend-image: 'bad' is not accepted; accepted: an image")


def pytest_dataplane_add_providers(registry):
    registry.add(
        ProviderEntry(
            "mine",
            "the team's own clusters",
            lambda option: Provider(option("dataplane_backend_image")),
            options=("dataplane_backend_image",),
            check=check,
            plan=lambda option: f"mine would use {option('dataplane_backend_image')}\n",
        )
    )


def pytest_dataplane_update_fingerprint(dataplane, provider, fingerprint):
    fingerprint["node_type"] = f"m5.large for {provider}/{dataplane}"


def pytest_dataplane_update_json(config, document):
    document["extra"] = {"team": "payments", "results": len(document["results"])}
    for result in document["results"]:
        result["extra"] = {"owner": "payments"}
"""

TESTS = """
from pytest_dataplane import assert_kube_rules_at_most


def test_rules(dataplane):
    assert dataplane.provider == "mine"
    assert_kube_rules_at_most(dataplane, 10)
"""


@pytest.fixture
def team(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_team=TESTS)
    return pytester


def test_a_conftest_adds_a_provider(team: pytest.Pytester) -> None:
    result = team.runpytest(
        "--dataplane-provider=Mine",
        "--dataplane=iptables,ebpf",
        "--dataplane-backend-image=img:1",
        "-rs",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "dataplane: provider mine, dataplanes iptables,ebpf, kernel *",
            "SKIPPED * ebpf on mine: only iptables here",
        ]
    )


def test_an_added_provider_is_listed_checked_and_planned(team: pytest.Pytester) -> None:
    unknown = team.runpytest("--dataplane-provider=theirs", "-p", "no:cacheprovider")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(
        ["*--dataplane-provider: unknown provider 'theirs'; accepted: lab, kind, kubeconfig, mine"]
    )
    bad = team.runpytest(
        "--dataplane-provider=mine", "--dataplane-backend-image=bad", "-p", "no:cacheprovider"
    )
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["ERROR: --dataplane-backend-image: 'bad' is not accepted*"])
    plan = team.runpytest(
        "--dataplane-provider=mine",
        "--dataplane-backend-image=img:2",
        "--dataplane-plan",
        "-p",
        "no:cacheprovider",
    )
    assert plan.ret == 0
    assert plan.stdout.lines == ["mine would use img:2"]


def test_a_provider_name_taken_twice_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        from pytest_dataplane.providers import ProviderEntry

        def pytest_dataplane_add_providers(registry):
            registry.add(ProviderEntry("kind", "elsewhere", lambda option: None))
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest_dataplane_add_providers: provider 'kind' is already registered; "
            "registered: lab, kind, kubeconfig"
        ]
    )


def test_fingerprint_facts_and_json_fields(team: pytest.Pytester) -> None:
    result = team.runpytest(
        "--dataplane-provider=mine",
        "--dataplane=iptables",
        "--dataplane-backend-image=img:1",
        "--dataplane-json=r.json",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)
    document = json.loads((team.path / "r.json").read_text())
    jsonschema.validate(document, schema())
    assert document["extra"] == {"team": "payments", "results": 1}
    (row,) = document["results"]
    assert row["extra"] == {"owner": "payments"}
    # The cluster's own facts, and the one the team added.
    assert row["cluster"]["fingerprint"] == {
        "image": "img:1",
        "node_type": "m5.large for mine/iptables",
    }
    assert row["cluster"]["rule_count"]["total"] == 7


LOAD = """
import time

import numpy as np

from pytest_dataplane import _collect
from pytest_dataplane.load import LoadResult, Timeline


def test_load(dataplane):
    n = 2000
    timeline = Timeline(
        np.arange(n) / 200.0,
        np.linspace(0.002, 0.004, n, dtype=np.float32),
        np.full(n, 1e-5, np.float32),
        np.zeros(n, np.uint8),
    )
    start = time.monotonic() - 11.0
    result = LoadResult.build(timeline, start=start, target_rate=200.0, duration=10.0)
    _collect.record_result(result)
"""


def test_a_fingerprint_fact_makes_baselines_incomparable(team: pytest.Pytester) -> None:
    team.makepyfile(test_load=LOAD)
    common = (
        "test_load.py",
        "--dataplane-provider=mine",
        "--dataplane=iptables",
        "--dataplane-backend-image=img:1",
        "-p",
        "no:cacheprovider",
        "-W",
        "always::pytest_dataplane.PytestDataplaneWarning",
    )
    team.runpytest(*common, "--dataplane-save-baseline=base.json").assert_outcomes(passed=1)
    base = json.loads((team.path / "base.json").read_text())
    base["results"][0]["cluster"]["fingerprint"]["node_type"] = "c7g.large"
    (team.path / "base.json").write_text(json.dumps(base))
    compared = team.runpytest(*common, "--dataplane-baseline=base.json")
    compared.stdout.fnmatch_lines(
        ["  not compared: * node_type: c7g.large -> m5.large for mine/iptables*"]
    )


def test_hook_arguments_are_checked_against_the_specs(pytester: pytest.Pytester) -> None:
    # The specs are registered: a misspelt argument is refused before anything runs.
    pytester.makeconftest(
        """
        def pytest_dataplane_update_json(documnt):
            pass
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*pytest_dataplane_update_json*", "*documnt*"])
