"""--dataplane-plan and the early validation of kind options, without Docker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kindkit import FakeTools, files_under

from pytest_dataplane.providers.k8s.resources import AGNHOST_IMAGE
from pytest_dataplane.providers.kind.versions import DEFAULT_CILIUM_VERSION
from pytest_dataplane.providers.kubeconfig.agent import AGENT_IMAGE

PLAN = ("--dataplane-provider=kind", "--dataplane-plan", "-p", "no:cacheprovider")


def test_plan_for_end_of_life_cilium_is_a_usage_error(
    pytester: pytest.Pytester, isolated_env: Path
) -> None:
    result = pytester.runpytest(*PLAN, "--dataplane=ebpf", "--cilium-version=1.13.4")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --cilium-version: Cilium 1.13.4 is not supported: the 1.13 line is end of "
            "life*accepted: 1.14.x to 1.18.x*"
        ]
    )
    assert "helm command" not in result.stdout.str()


@pytest.mark.parametrize("version", ["1.14.19", "1.15.19", "1.16.12", "1.17.4", "1.18.0"])
def test_plan_for_each_supported_line(
    pytester: pytest.Pytester, isolated_env: Path, version: str
) -> None:
    result = pytester.runpytest(*PLAN, "--dataplane=ebpf", f"--cilium-version={version}")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "pytest-dataplane plan: provider kind, 1 dataplane(s): ebpf",
            f"    quay.io/cilium/cilium:v{version}",
            "helm command:",
            f"*helm install cilium cilium --repo https://helm.cilium.io --version {version} *"
            "--set kubeProxyReplacement=true *",
        ]
    )


def test_plan_from_1_14_uses_true(pytester: pytest.Pytester, isolated_env: Path) -> None:
    result = pytester.runpytest(*PLAN, "--dataplane=ebpf", "--cilium-version=1.16.12")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*--version 1.16.12 *--set kubeProxyReplacement=true *"])
    assert "kubeProxyReplacement=strict" not in result.stdout.str()


def test_plan_shows_kind_config_images_and_steps(
    pytester: pytest.Pytester, isolated_env: Path
) -> None:
    result = pytester.runpytest(*PLAN, "--dataplane=nftables,ebpf", "--dataplane-hubble")
    assert result.ret == 0
    out = result.stdout.str()
    nft, ebpf = out.split("== nftables: ")[1].split("== ebpf: ")
    assert "kubeProxyMode: nftables" in nft
    assert "disableDefaultCNI" not in nft
    assert "helm command: none" in nft
    assert "kubeProxyMode: none" in ebpf
    assert "disableDefaultCNI: true" in ebpf
    for image in (
        AGNHOST_IMAGE,
        "quay.io/cilium/cilium:v1.16.12",
        "quay.io/cilium/hubble-relay:v1.16.12",
    ):
        assert f"    {image}" in ebpf
    assert "--set hubble.relay.enabled=true" in ebpf
    result.stdout.fnmatch_lines(
        [
            "steps:",
            "    1. write the kind config to *kind-config.yaml",
            "    2. reuse cluster dpt-ebpf-* if `kind get clusters` lists it*",
            "*kind load docker-image --name dpt-ebpf-* quay.io/cilium/cilium:v1.16.12*",
            "    7. install Cilium: helm install *",
        ]
    )


def test_plan_touches_no_docker_and_writes_nothing(
    fake_tools: FakeTools, isolated_env: Path, tmp_path: Path
) -> None:
    bin_dir = fake_tools(
        docker="exit 1",
        kind='[ "$1" = version ] && echo "kind v0.24.0 go1.22.6 linux/amd64"; exit 0',
        kubectl="exit 0",
        helm="exit 0",
    )
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *PLAN, "--dataplane=all", "--cilium-version=1.15.17"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "kind: 0.24.0" in done.stdout
    assert (
        "node image: kindest/node:v1.31.0@sha256:53df588e04085fd41ae12de0c3fe4c72f7013bba32a20e7"
        "325357a1ac94ba865 (kind 0.24.0's default)"
    ) in done.stdout
    for dataplane in ("iptables", "nftables", "ipvs", "ebpf"):
        assert f"== {dataplane}: cluster dpt-{dataplane}-" in done.stdout
    calls = (bin_dir / "calls.log").read_text().splitlines()
    assert calls == ["kind version"]  # no docker, no helm, no cluster
    assert files_under(work) == []
    assert files_under(isolated_env) == []


def test_malformed_cilium_version_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*PLAN, "--dataplane=ebpf", "--cilium-version=1.16")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --cilium-version: cannot parse '1.16'; accepted: *"])


def test_unsupported_cilium_version_fails_before_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(dataplane):\n    pass\n")
    result = pytester.runpytest(
        "--dataplane-provider=kind", "--dataplane=ebpf", "--cilium-version=1.9.0"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --cilium-version: Cilium 1.9.0 is not supported*"])


def test_nftables_on_old_kubernetes_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(dataplane):\n    pass\n")
    result = pytester.runpytest(
        "--dataplane-provider=kind", "--dataplane=nftables", "--kind-image=kindest/node:v1.30.6"
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["ERROR: nftables: kube-proxy's nftables mode needs Kubernetes >= 1.31 (found 1.30.6*"]
    )


def test_ini_twins_and_pytest_kind_flag(pytester: pytest.Pytester, isolated_env: Path) -> None:
    pytester.makeini(
        "[pytest]\n"
        "dataplane_cilium_version = 1.14.19\n"
        "dataplane_kind_image = kindest/node:v1.31.2\n"
        "dataplane_kind_workers = 2\n"
    )
    from_ini = pytester.runpytest(*PLAN, "--dataplane=ebpf")
    assert from_ini.ret == 0
    out = from_ini.stdout.str()
    assert "--version 1.14.19" in out
    assert "--image=kindest/node:v1.31.2" in out
    assert out.count("- role: worker") == 2
    # pytest-kind's --kind-image is the command-line side of dataplane_kind_image, and wins.
    cli = pytester.runpytest(*PLAN, "--dataplane=ebpf", "--kind-image=kindest/node:v1.32.0")
    assert "--image=kindest/node:v1.32.0" in cli.stdout.str()
    assert "v1.31.2" not in cli.stdout.str()


def test_bad_worker_count_names_the_option(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(*PLAN, "--dataplane-kind-workers=many")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --dataplane-kind-workers: 'many' is not accepted*"])


def test_plan_with_the_lab_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--dataplane-plan", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --dataplane-plan describes the kind and kubeconfig*"])


def test_plan_for_an_existing_cluster(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest(
        "--dataplane-provider=kubeconfig",
        "--dataplane-plan",
        "--dataplane-kubeconfig=/nowhere/config",
        "--dataplane-node-access",
        "--dataplane=ebpf",
        "-p",
        "no:cacheprovider",
    )
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        [
            "pytest-dataplane plan: provider kubeconfig*",
            "cluster: /nowhere/config, context (current)",
            "expected dataplane(s): ebpf; the dataplane is detected*",
            "*create namespace dpt-<session> labelled "
            "app.kubernetes.io/managed-by=pytest-dataplane*",
            f"*deploy the privileged node agent DaemonSet ({AGENT_IMAGE})*",
            "*background services: refused (--dataplane-allow-background)",
        ]
    )


def test_option_defaults_match_the_providers(pytester: pytest.Pytester) -> None:
    # plugin.py keeps its defaults as literals so that it imports no provider code.
    result = pytester.runpytest("--help")
    text = " ".join(result.stdout.str().split())
    assert f"(default: {DEFAULT_CILIUM_VERSION})" in text
    assert f"(default: {AGNHOST_IMAGE})" in text
    assert f"(default: {AGENT_IMAGE})" in text


def test_plan_names_the_exact_default_image_only_for_known_releases(tmp_path: Path) -> None:
    from pytest_dataplane.providers.k8s.versions import Version
    from pytest_dataplane.providers.kind.config import KindSettings
    from pytest_dataplane.providers.kind.plan import build_plan

    known = build_plan("iptables", KindSettings(), kind_version=Version(0, 32, 0), root=tmp_path)
    assert known.node_image.startswith("kindest/node:v1.36.1@sha256:3489c767")
    assert known.node_image.endswith("(kind 0.32.0's default)")
    between = build_plan("iptables", KindSettings(), kind_version=Version(0, 27, 5), root=tmp_path)
    assert between.node_image == "kind 0.27.5's default (Kubernetes 1.32.2 or newer)"
