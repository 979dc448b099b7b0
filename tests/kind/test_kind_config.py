"""kind config, Cilium Helm values and cluster names per dataplane."""

from __future__ import annotations

import pytest

from pytest_dataplane.providers.k8s.versions import Version
from pytest_dataplane.providers.kind.config import (
    KindSettings,
    cilium_images,
    cilium_values,
    cluster_name,
    helm_install_argv,
    kind_config,
    preload_images,
)


def settings(**kw: object) -> KindSettings:
    return KindSettings(**kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["iptables", "ipvs", "nftables"])
def test_kube_proxy_modes_keep_the_default_cni(mode: str) -> None:
    config = kind_config(mode, KindSettings())
    assert config["kind"] == "Cluster"
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert config["networking"] == {"kubeProxyMode": mode}


def test_ebpf_has_no_kube_proxy_and_no_default_cni() -> None:
    config = kind_config("ebpf", KindSettings())
    assert config["networking"] == {"kubeProxyMode": "none", "disableDefaultCNI": True}


def test_workers_are_nodes() -> None:
    config = kind_config("iptables", settings(workers=2))
    assert [n["role"] for n in config["nodes"]] == ["control-plane", "worker", "worker"]
    assert [n["role"] for n in kind_config("iptables", settings(workers=0))["nodes"]] == [
        "control-plane"
    ]


@pytest.mark.parametrize("bad", [-1, 11, True])
def test_bad_worker_count(bad: object) -> None:
    with pytest.raises(ValueError, match="workers"):
        settings(workers=bad)


def test_unknown_dataplane() -> None:
    with pytest.raises(ValueError, match="accepted: iptables, nftables, ipvs, ebpf"):
        kind_config("calico", KindSettings())


def test_cilium_values_before_and_after_1_14() -> None:
    old = dict(cilium_values(settings(cilium_version=Version.parse("1.13.4")), "dpt-x"))
    new = dict(cilium_values(settings(cilium_version=Version.parse("1.16.12")), "dpt-x"))
    assert old["kubeProxyReplacement"] == "strict"
    assert new["kubeProxyReplacement"] == "true"
    for values in (old, new):
        assert values["k8sServiceHost"] == "dpt-x-control-plane"
        assert values["k8sServicePort"] == "6443"
        assert values["ipam.mode"] == "kubernetes"
        assert values["image.pullPolicy"] == "IfNotPresent"
        assert values["hubble.enabled"] == "false"
        assert "hubble.relay.enabled" not in values


def test_hubble_when_asked() -> None:
    values = dict(cilium_values(settings(hubble=True), "c"))
    assert values["hubble.enabled"] == "true"
    assert values["hubble.relay.enabled"] == "true"
    assert "quay.io/cilium/hubble-relay:v1.16.12" in cilium_images(settings(hubble=True))


def test_helm_command_default_chart_from_cilium_repository() -> None:
    argv = helm_install_argv(KindSettings(), "dpt-ebpf-1", kubeconfig="/k")
    assert argv[:4] == ["helm", "install", "cilium", "cilium"]
    assert argv[argv.index("--repo") + 1] == "https://helm.cilium.io"
    assert argv[argv.index("--version") + 1] == "1.16.12"
    assert argv[argv.index("--namespace") + 1] == "kube-system"
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert "kubeProxyReplacement=true" in sets
    assert "k8sServiceHost=dpt-ebpf-1-control-plane" in sets


@pytest.mark.parametrize(
    ("chart", "repo", "version"),
    [
        ("./charts/cilium-1.16.12.tgz", False, False),
        ("cilium/cilium", False, True),
        ("oci://quay.io/cilium/charts/cilium", False, True),
        ("/opt/cilium", False, False),
    ],
)
def test_helm_command_other_charts(chart: str, repo: bool, version: bool) -> None:
    argv = helm_install_argv(settings(cilium_chart=chart), "c", kubeconfig="/k")
    assert argv[3] == chart
    assert ("--repo" in argv) is repo
    assert ("--version" in argv) is version


def test_preload_images() -> None:
    s = KindSettings()
    assert preload_images("iptables", s) == ["registry.k8s.io/e2e-test-images/agnhost:2.53"]
    assert preload_images("ebpf", s) == [
        "registry.k8s.io/e2e-test-images/agnhost:2.53",
        "quay.io/cilium/cilium:v1.16.12",
        "quay.io/cilium/operator-generic:v1.16.12",
    ]


def test_cluster_name_hashes_the_configuration() -> None:
    base = cluster_name("ebpf", KindSettings(), Version.parse("0.24.0"))
    assert base.startswith("dpt-ebpf-")
    assert len(base.rsplit("-", 1)[1]) == 10
    assert base == cluster_name("ebpf", KindSettings(), Version.parse("0.24.0"))
    different = {
        cluster_name(
            "ebpf", settings(cilium_version=Version.parse("1.15.17")), Version.parse("0.24.0")
        ),
        cluster_name("ebpf", settings(hubble=True), Version.parse("0.24.0")),
        cluster_name("ebpf", settings(workers=2), Version.parse("0.24.0")),
        cluster_name("ebpf", settings(node_image="kindest/node:v1.31.2"), Version.parse("0.24.0")),
        cluster_name("ebpf", KindSettings(), Version.parse("0.25.0")),
    }
    assert base not in different
    assert len(different) == 5
    # keep decides nothing about the cluster itself
    assert cluster_name("ebpf", settings(keep=True), Version.parse("0.24.0")) == base
