"""How the lab sets kube-proxy up: its minimum sync period (its own flag), the iptables
backend its PATH finds, and its configuration published as ConfigMap kube-system/kube-proxy.

One cluster, on the backend the machine's ``iptables`` is *not* (so that, with the suite's
other iptables cluster on the machine's own, both backends run), with a minimum sync period
of 0. Skipped without root, the Kubernetes binaries, or the other backend's binaries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubekit import binaries_or_skip, in_netns, root_state, state_diff, wait_for

from pytest_dataplane.providers.kubeconfig.detect import kube_proxy_mode_from_configmap
from pytest_dataplane.providers.lab.kube import plan
from pytest_dataplane.providers.lab.kube.lab import KubeLab, detect_iptables_backend
from pytest_dataplane.providers.lab.kube.probe import get_json

OTHER = {"nft": "legacy", "legacy": "nft"}


def kubectl(lab: KubeLab, *args: str) -> str:
    done = subprocess.run(
        [*lab.kubectl(), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def other_backend_lab() -> Iterator[tuple[KubeLab, dict[str, str]]]:
    binaries_or_skip()
    backend = OTHER[detect_iptables_backend()]
    if shutil.which(f"iptables-{backend}-restore") is None:
        pytest.skip(f"iptables-{backend}-restore not installed: only one backend to test")
    before = root_state()
    with KubeLab(dataplane="iptables", iptables_backend=backend, min_sync_period=0) as lab:
        yield lab, before


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match=r"iptables_backend: 'xtables' is not accepted"):
        KubeLab(dataplane="iptables", iptables_backend="xtables")
    with pytest.raises(ValueError, match=r"min_sync_period: -1 is not accepted"):
        KubeLab(dataplane="iptables", min_sync_period=-1)


def test_kube_proxy_runs_the_chosen_backend(
    other_backend_lab: tuple[KubeLab, dict[str, str]],
) -> None:
    lab, _ = other_backend_lab
    backend = OTHER[detect_iptables_backend()]
    assert lab.iptables_backend == backend
    proxy = lab.processes["kube-proxy-node-0"]
    environ = Path(f"/proc/{proxy.pid}/environ").read_bytes().split(b"\0")
    path = next(v for v in environ if v.startswith(b"PATH=")).decode()[5:]
    bin_dir = Path(path.split(":")[0])
    assert (
        Path(bin_dir / "iptables-restore").resolve()
        == Path(shutil.which(f"iptables-{backend}-restore") or "?").resolve()
    )
    # Its rules are in the chosen backend's tables, none in the other's.
    node = lab.node_netns(0)
    wait_for(
        lambda: ":KUBE-SERVICES" in in_netns(node, f"iptables-{backend}-save"),
        timeout=30,
        what=f"kube-proxy's chains in iptables-{backend}",
    )
    assert "KUBE-" not in in_netns(node, f"iptables-{OTHER[backend]}-save")
    # The kubernetes Service is programmed there.
    assert "default/kubernetes:https" in in_netns(node, f"iptables-{backend}-save", "-t", "nat")


def test_min_sync_period_reaches_kube_proxy(
    other_backend_lab: tuple[KubeLab, dict[str, str]],
) -> None:
    lab, _ = other_backend_lab
    proxy = lab.processes["kube-proxy-node-0"]
    assert "--iptables-min-sync-period=0s" in proxy.argv
    # kube-proxy's own view of its configuration (/configz on its metrics port).
    configz = get_json(lab.node_netns(0), f"http://{plan.PROXY_METRICS}/configz")
    assert configz is not None
    config = configz["kubeproxy.config.k8s.io"]
    assert config["mode"] == "iptables"
    # 0, not the 1 s default (test_kube_cluster checks the default reads "1s" there).
    assert config["iptables"]["minSyncPeriod"] == "0s"


def test_the_config_is_published_as_kubeadm_does(
    other_backend_lab: tuple[KubeLab, dict[str, str]],
) -> None:
    lab, before = other_backend_lab
    configmap = json.loads(
        kubectl(lab, "-n", "kube-system", "get", "configmap", "kube-proxy", "-o", "json")
    )
    published = yaml.safe_load(configmap["data"]["config.conf"])
    assert published["kind"] == "KubeProxyConfiguration"
    assert published["mode"] == "iptables"
    assert published["iptables"]["minSyncPeriod"] == "0s"
    assert published["hostnameOverride"] == ""  # one config for every node, as kubeadm's
    assert published["clusterCIDR"] == lab.plan.cluster_cidr  # type: ignore[union-attr]
    assert configmap["data"]["config.conf"] == lab.proxy_config
    # What an existing-cluster tool reads from it.
    assert kube_proxy_mode_from_configmap(configmap) == "iptables"
    assert state_diff(before, root_state()) == {}
