"""Finding tools and asking them their versions."""

from __future__ import annotations

import shutil

import pytest
from kindkit import FakeTools

from pytest_dataplane.errors import DataplaneUnavailable
from pytest_dataplane.providers.k8s.versions import Version
from pytest_dataplane.providers.kind.tools import (
    Tools,
    docker_engine_problem,
    find_tools,
    kind_version,
    missing_tools_reason,
    parse_kind_version,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind v0.24.0 go1.22.6 linux/amd64", Version(0, 24, 0)),
        ("kind v0.31.0 go1.25.5 linux/arm64\n", Version(0, 31, 0)),
        ("kind v0.27.0-alpha+abc go1.23 linux/amd64", None),
        ("kind version unknown", None),
    ],
)
def test_parse_kind_version(text: str, expected: Version | None) -> None:
    assert parse_kind_version(text) == expected


def test_find_tools_on_path_and_overrides(
    fake_tools: FakeTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = fake_tools(docker="exit 0", kind="exit 0", kubectl="exit 0", mykind="exit 0")
    monkeypatch.setenv("PATH", str(bin_dir))
    tools = find_tools()
    assert tools == Tools(
        str(bin_dir / "docker"), str(bin_dir / "kind"), str(bin_dir / "kubectl"), None
    )
    assert find_tools(kind_bin=str(bin_dir / "mykind")).kind == str(bin_dir / "mykind")
    assert find_tools(kubectl_bin="/no/such/kubectl").kubectl is None
    assert missing_tools_reason(tools, "iptables") is None
    reason = missing_tools_reason(tools, "ebpf")
    assert reason is not None
    assert reason.startswith("helm not found on PATH")


def test_kind_version_runs_the_binary(fake_tools: FakeTools) -> None:
    bin_dir = fake_tools(kind='echo "kind v0.25.0 go1.22.9 linux/amd64"', broken="exit 3")
    assert kind_version(str(bin_dir / "kind")) == Version(0, 25, 0)
    assert kind_version(str(bin_dir / "broken")) is None


def test_docker_engine_problem_with_fakes(fake_tools: FakeTools) -> None:
    bin_dir = fake_tools(up='echo "27.3.1"', down='echo "daemon down" >&2; exit 1')
    assert docker_engine_problem(str(bin_dir / "up")) is None
    problem = docker_engine_problem(str(bin_dir / "down"))
    assert problem is not None
    assert "found no Docker engine (daemon down)" in problem


@pytest.mark.skipif(shutil.which("docker") is None, reason="this machine has no docker client")
def test_docker_engine_problem_here() -> None:
    docker = shutil.which("docker")
    assert docker is not None
    problem = docker_engine_problem(docker)
    if problem is None:
        pytest.skip("this machine has a running Docker engine")
    assert "start dockerd" in problem


def test_a_tool_missing_at_a_step_is_a_dataplane_unavailable_naming_it() -> None:
    error = Tools(None, None, None, None).missing("kind")
    assert isinstance(error, DataplaneUnavailable)
    assert str(error).startswith("kind not found on PATH (nothing is downloaded at test time)")
    assert "go install sigs.k8s.io/kind@latest" in str(error)
