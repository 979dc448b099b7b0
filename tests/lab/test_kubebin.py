"""The built kube/ binary for real: each component reports the pinned release, dispatch works by
the name it is called by and by its first argument, and an unknown name is refused."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from pytest_dataplane.errors import DataplaneError
from pytest_dataplane.providers.lab import kubebin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built() -> kubebin.KubeBinaries:
    try:
        return kubebin.locate()
    except DataplaneError as exc:
        pytest.skip(f"kube/ is not built here: {exc}")


@pytest.fixture(scope="module")
def release() -> str:
    return kubebin.pinned_release(ROOT / "kube")[0]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)


def test_control_plane_components_report_the_pinned_release(
    built: kubebin.KubeBinaries, release: str
) -> None:
    for component in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"):
        proc = _run([*built.argv(component), "--version"])
        assert proc.returncode == 0, (component, proc.stderr)
        assert proc.stdout.strip() == f"Kubernetes {release}", component
        assert built.version(component) == release


def test_kubectl_matches_the_cluster(built: kubebin.KubeBinaries, release: str) -> None:
    proc = _run([*built.argv("kubectl"), "version", "--client"])
    assert proc.returncode == 0, proc.stderr
    assert f"Client Version: {release}" in proc.stdout.splitlines()
    assert built.kubectl_dir is not None
    assert (built.kubectl_dir / "kubectl").resolve() == (built.directory / "kube").resolve()


def test_etcd_is_the_version_the_release_pins(built: kubebin.KubeBinaries) -> None:
    pinned = re.search(
        r"go\.etcd\.io/etcd/server/v3 v(\S+)", (ROOT / "kube" / "go.mod").read_text()
    )
    assert pinned is not None
    proc = _run([*built.argv("etcd"), "--version"])
    assert proc.returncode == 0, proc.stderr
    assert f"etcd Version: {pinned.group(1)}" in proc.stdout.splitlines()
    assert built.version("etcd") == pinned.group(1)


def test_dispatch_by_first_argument(built: kubebin.KubeBinaries, release: str) -> None:
    proc = _run([str(built.directory / "kube"), "kube-scheduler", "--version"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"Kubernetes {release}"


def test_unknown_component_is_refused_with_the_list(built: kubebin.KubeBinaries) -> None:
    for argv in ([str(built.directory / "kube"), "kubelet"], [str(built.directory / "kube")]):
        proc = _run(argv)
        assert proc.returncode == 2, argv
        assert proc.stdout == ""
        assert "usage: kube COMPONENT" in proc.stderr
        assert ", ".join(sorted(kubebin.COMPONENTS)) in proc.stderr


def test_build_reuses_the_cache(built: kubebin.KubeBinaries) -> None:
    said: list[str] = []
    again = kubebin.build(progress=said.append)
    assert again.directory == built.directory
    assert said == [f"kube: reusing {built.directory}"]
