"""One kind cluster's lifecycle through pytest-kind's KindCluster, with command-line tools
that record their calls (shell scripts standing in for kind, docker and helm) and the
in-memory API standing in for the cluster's API server. Real pytest-kind code runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kindkit import FakeTools, files_under

from pytest_dataplane.errors import DataplaneError, PytestDataplaneWarning
from pytest_dataplane.providers.k8s.testing import MemoryApi
from pytest_dataplane.providers.k8s.versions import Version
from pytest_dataplane.providers.kind import KindProvider
from pytest_dataplane.providers.kind.cluster import MARKER, KindClusterSetup
from pytest_dataplane.providers.kind.config import KindSettings, cluster_name
from pytest_dataplane.providers.kind.tools import find_tools

KUBECONFIG = """apiVersion: v1
kind: Config
clusters:
- name: kind
  cluster: {server: 'https://127.0.0.1:6443'}
contexts:
- name: kind
  context: {cluster: kind, user: kind}
current-context: kind
users:
- name: kind
  user: {token: test}
"""

FAKE_KIND = r"""
state="$(dirname "$0")/clusters"
touch "$state"
kc=""; name=""; prev=""
for a in "$@"; do
  case "$a" in
    --kubeconfig=*) kc="${a#--kubeconfig=}" ;;
    --name=*) name="${a#--name=}" ;;
  esac
  [ "$prev" = "--kubeconfig" ] && kc="$a"
  [ "$prev" = "--name" ] && name="$a"
  prev="$a"
done
case "$1 $2" in
  "get clusters") cat "$state" ;;
  "create cluster") printf '%s' "$KUBECONFIG_TEXT" > "$kc"; echo "$name" >> "$state" ;;
  "delete cluster")
    if [ -f "$(dirname "$0")/undeletable-$name" ]; then echo "cannot remove $name" >&2; exit 1; fi
    grep -vx "$name" "$state" > "$state.new"; mv "$state.new" "$state" ;;
  "export kubeconfig") printf '%s' "$KUBECONFIG_TEXT" > "$kc" ;;
  "load docker-image")
    if [ -f "$(dirname "$0")/containerd-store" ]; then
      # What kind reports when the node's ctr import meets an index whose other platforms the
      # containerd image store never pulled.
      echo "ERROR: failed to load image: command \"docker exec --privileged -i" \
        "$name-control-plane ctr --namespace=k8s.io images import --all-platforms" \
        "--digests --snapshotter=overlayfs -\" failed with error: exit status 1" >&2
      echo "ctr: content digest sha256:4f9a0b1c: not found" >&2
      exit 1
    fi ;;
  "load image-archive") for a in "$@"; do last="$a"; done; [ -s "$last" ] || exit 3 ;;
  "version ") echo "kind v0.25.0 go1.22.9 linux/amd64" ;;
  *) echo "unexpected: $*" >&2; exit 9 ;;
esac
"""
FAKE_DOCKER = r"""
case "$1 $2" in
  "image inspect") [ -f "$(dirname "$0")/have-$(echo "$3" | tr '/:' '__')" ] || exit 1 ;;
  "pull "*) touch "$(dirname "$0")/have-$(echo "$2" | tr '/:' '__')" ;;
  "version --format") echo linux/amd64 ;;
  "save --platform")
    # Docker before 28 has no --platform for save.
    [ -f "$(dirname "$0")/old-docker" ] && { echo "unknown flag: --platform" >&2; exit 125; }
    echo "archive of $6 for $3" > "$5" ;;
  "info "*) echo 27.3.1 ;;
  "exec "*) exit 0 ;;
esac
"""


def ready_cluster(dataplane: str) -> MemoryApi:
    """An API server whose nodes and dataplane DaemonSet are ready."""
    app = "cilium" if dataplane == "ebpf" else "kube-proxy"
    api = MemoryApi()
    for node in ("c-control-plane", "c-worker"):
        api.add(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node},
                "status": {
                    "conditions": [{"type": "Ready", "status": "True"}],
                    "addresses": [{"type": "InternalIP", "address": "172.18.0.9"}],
                },
            }
        )
    api.add(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": app, "namespace": "kube-system", "labels": {"k8s-app": app}},
            "status": {"desiredNumberScheduled": 2, "numberReady": 2, "updatedNumberScheduled": 2},
        }
    )
    return api


@pytest.fixture
def tools(fake_tools: FakeTools, monkeypatch: pytest.MonkeyPatch, isolated_env: Path) -> Path:
    monkeypatch.setenv("KUBECONFIG_TEXT", KUBECONFIG)
    bin_dir = fake_tools(kind=FAKE_KIND, docker=FAKE_DOCKER, kubectl="exit 0", helm="exit 0")
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


def calls(bin_dir: Path) -> list[str]:
    return (bin_dir / "calls.log").read_text().splitlines()


def test_create_preload_install_and_delete(
    tools: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    api = ready_cluster("ebpf")
    root = tmp_path / "state"
    provider = KindProvider(
        KindSettings(), tools=find_tools(), root=root, api_factory=lambda p: api
    )
    cluster = provider.create("ebpf")
    name = cluster_name("ebpf", KindSettings(), Version(0, 25, 0))
    log = calls(tools)
    kubeconfig = root / name / "kubeconfig"
    assert log[:4] == [
        "docker info --format {{.ServerVersion}}",
        "kind version",
        "kind get clusters",
        "kind get clusters",  # pytest-kind asks again before creating
    ]
    assert log[4] == (
        f"kind create cluster --name={name} --kubeconfig={kubeconfig} --config "
        f"{root / name / 'kind-config.yaml'}"
    )
    preloads = [
        line for line in log if line.startswith(("docker image", "docker pull", "kind load"))
    ]
    assert preloads[:3] == [
        "docker image inspect registry.k8s.io/e2e-test-images/agnhost:2.53",
        "docker pull registry.k8s.io/e2e-test-images/agnhost:2.53",
        f"kind load docker-image --name {name} registry.k8s.io/e2e-test-images/agnhost:2.53",
    ]
    assert f"kind load docker-image --name {name} quay.io/cilium/cilium:v1.16.12" in preloads
    helm = [line for line in log if line.startswith("helm ")]
    assert len(helm) == 1
    assert "--set kubeProxyReplacement=true" in helm[0]
    assert f"--set k8sServiceHost={name}-control-plane" in helm[0]
    assert "kubeProxyMode: none" in (root / name / "kind-config.yaml").read_text()
    marker = api.get("v1", "ConfigMap", MARKER, "kube-system")
    assert marker["data"]["cluster"] == name
    assert (
        api.get("v1", "Namespace", cluster.namespace)["metadata"]["labels"][
            "app.kubernetes.io/managed-by"
        ]
        == "pytest-dataplane"
    )
    assert cluster.traffic.node_host == "172.18.0.9"
    assert cluster.fingerprint()["cluster"] == name
    assert files_under(work) == []  # pytest-kind's .pytest-kind went to the state directory
    assert (root / ".pytest-kind" / name).is_dir()
    provider.close()
    assert calls(tools)[-1] == f"kind delete cluster --name={name} --kubeconfig={kubeconfig}"
    assert (tools / "clusters").read_text().strip() == ""


def test_a_kept_cluster_is_reused_only_when_its_setup_completed(
    tools: Path, tmp_path: Path
) -> None:
    settings = KindSettings(keep=True)
    name = cluster_name("iptables", settings, Version(0, 25, 0))
    (tools / "clusters").write_text(name + "\n")
    api = ready_cluster("iptables")
    api.add(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": MARKER, "namespace": "kube-system"},
            "data": {"cluster": name},
        }
    )
    stale: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": "dpt-0ld0ld",
            "labels": {"app.kubernetes.io/managed-by": "pytest-dataplane"},
        },
    }
    api.add(stale)
    provider = KindProvider(
        settings, tools=find_tools(), root=tmp_path / "s", api_factory=lambda p: api
    )
    cluster = provider.create("iptables")
    log = calls(tools)
    assert (
        f"kind export kubeconfig --name {name} --kubeconfig {tmp_path / 's' / name / 'kubeconfig'}"
        in log
    )
    assert not [line for line in log if line.startswith(("kind create", "helm", "kind load"))]
    assert ("delete", "Namespace", "dpt-0ld0ld") in [(c.verb, c.kind, c.name) for c in api.calls]
    provider.close()
    assert ("delete", "Namespace", cluster.namespace) in [
        (c.verb, c.kind, c.name) for c in api.calls
    ]
    assert not [line for line in calls(tools) if line.startswith("kind delete")]


def test_an_incomplete_cluster_is_recreated(tools: Path, tmp_path: Path) -> None:
    name = cluster_name("nftables", KindSettings(), Version(0, 25, 0))
    (tools / "clusters").write_text(name + "\n")
    api = ready_cluster("nftables")
    setup = KindClusterSetup(
        dataplane="nftables",
        settings=KindSettings(),
        tools=find_tools(),
        kind_version=Version(0, 25, 0),
        root=tmp_path / "s",
        api_factory=lambda p: api,
    )
    setup.ensure()
    log = calls(tools)
    delete = log.index(f"kind delete cluster --name={name} --kubeconfig={setup.kubeconfig}")
    create = next(i for i, line in enumerate(log) if line.startswith("kind create cluster"))
    assert delete < create
    assert setup.log[:2] == [
        "reuse: cluster exists",
        "reuse refused: setup never completed; deleting it",
    ]
    assert not [line for line in log if line.startswith("helm")]  # no Cilium for nftables


def ebpf_setup(tmp_path: Path, api: MemoryApi, **kw: Any) -> KindClusterSetup:
    return KindClusterSetup(
        dataplane="ebpf",
        settings=KindSettings(),
        tools=find_tools(),
        kind_version=Version(0, 25, 0),
        root=tmp_path / "s",
        api_factory=lambda p: api,
        **kw,
    )


def test_containerd_image_store_falls_back_to_a_platform_archive(
    tools: Path, tmp_path: Path
) -> None:
    (tools / "containerd-store").touch()
    setup = ebpf_setup(tmp_path, ready_cluster("ebpf"))
    setup.ensure()  # no warning: filterwarnings = error would fail the test
    log = calls(tools)
    images = ["registry.k8s.io/e2e-test-images/agnhost:2.53"] + [
        f"quay.io/cilium/{name}:v1.16.12" for name in ("cilium", "operator-generic")
    ]
    for image in images:
        tried = log.index(f"kind load docker-image --name {setup.name} {image}")
        save = log[tried + 2]
        assert log[tried + 1] == "docker version --format {{.Server.Os}}/{{.Server.Arch}}"
        assert save.startswith("docker save --platform linux/amd64 -o ")
        assert save.endswith(f"/image.tar {image}")
        archive = save.split(" -o ")[1].split()[0]
        assert Path(archive).parent.parent == setup.dir
        assert log[tried + 3] == f"kind load image-archive --name {setup.name} {archive}"
        assert not Path(archive).exists()  # the archive went with its scratch directory
    assert any(line.startswith("helm install") for line in log)
    assert "preload skipped" not in " ".join(setup.log)


def test_preload_that_cannot_fall_back_warns_and_goes_on(tools: Path, tmp_path: Path) -> None:
    (tools / "containerd-store").touch()
    (tools / "old-docker").touch()
    setup = ebpf_setup(tmp_path, ready_cluster("ebpf"))
    with pytest.warns(PytestDataplaneWarning) as warned:
        setup.ensure()
    messages = [str(w.message) for w in warned]
    assert len(messages) == 3  # agnhost, cilium, operator
    assert "could not preload registry.k8s.io/e2e-test-images/agnhost:2.53" in messages[0]
    assert "content digest sha256:4f9a0b1c: not found" in messages[0]
    assert "unknown flag: --platform" in messages[0]
    assert (
        "the nodes will pull the image themselves (imagePullPolicy IfNotPresent)" in (messages[0])
    )
    assert setup.log[-1] == "ready"
    assert not [line for line in calls(tools) if line.startswith("kind delete")]


def test_a_failed_install_deletes_the_half_built_cluster(
    tools: Path, tmp_path: Path, fake_tools: FakeTools
) -> None:
    fake_tools(helm='echo "Error: INSTALLATION FAILED: context deadline exceeded" >&2; exit 1')
    setup = ebpf_setup(tmp_path, api := ready_cluster("ebpf"))
    with pytest.raises(DataplaneError, match="INSTALLATION FAILED"):
        setup.ensure()
    log = calls(tools)
    helm = next(i for i, line in enumerate(log) if line.startswith("helm install"))
    assert log[helm + 1 :] == [
        f"kind delete cluster --name={setup.name} --kubeconfig={setup.kubeconfig}"
    ]
    assert (tools / "clusters").read_text().strip() == ""
    assert api.closed
    assert setup.log[-1] == "delete cluster"


def test_a_failed_ensure_that_cannot_delete_says_how(
    tools: Path, tmp_path: Path, fake_tools: FakeTools
) -> None:
    fake_tools(helm="exit 1")
    kind = (tools / "kind").read_text()
    (tools / "kind").write_text(
        kind.replace(
            '"delete cluster")', '"delete cluster") echo "no engine" >&2; exit 1;;\n  "x")'
        )
    )
    setup = ebpf_setup(tmp_path, ready_cluster("ebpf"))
    with pytest.raises(DataplaneError, match="helm install") as info:
        setup.ensure()
    notes = getattr(info.value, "__notes__", [])
    assert notes == [
        f"the half-built kind cluster {setup.name} could not be deleted ({tools}/kind delete "
        "cluster "
        f"--name={setup.name} --kubeconfig={setup.kubeconfig} failed with exit status 1: no "
        f"engine); remove it with `kind delete cluster --name {setup.name}`"
    ]


def test_an_interrupted_ensure_deletes_the_cluster(tools: Path, tmp_path: Path) -> None:
    api = ready_cluster("iptables")

    def interrupt(api: MemoryApi, verb: str, obj: dict[str, Any]) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the setup marker is being written

    api.reactors.append(interrupt)
    setup = KindClusterSetup(
        dataplane="iptables",
        settings=KindSettings(),
        tools=find_tools(),
        kind_version=Version(0, 25, 0),
        root=tmp_path / "s",
        api_factory=lambda p: api,
    )
    with pytest.raises(KeyboardInterrupt):
        setup.ensure()
    assert calls(tools)[-1] == (
        f"kind delete cluster --name={setup.name} --kubeconfig={setup.kubeconfig}"
    )


def test_not_ready_in_time_is_an_error(tools: Path, tmp_path: Path) -> None:
    api = ready_cluster("iptables")
    api.objects = {k: v for k, v in api.objects.items() if k[1] != "DaemonSet"}
    setup = KindClusterSetup(
        dataplane="iptables",
        settings=KindSettings(),
        tools=find_tools(),
        kind_version=Version(0, 25, 0),
        root=tmp_path / "s",
        api_factory=lambda p: api,
        timeout=0.1,
    )
    with pytest.raises(Exception, match=r"dataplane DaemonSet not ready in 0\.1 s"):
        setup.ensure()
    assert os.path.exists(setup.kubeconfig)
    # ... and the cluster that never became ready is gone.
    assert calls(tools)[-1] == (
        f"kind delete cluster --name={setup.name} --kubeconfig={setup.kubeconfig}"
    )
    assert (tools / "clusters").read_text().strip() == ""


def test_close_closes_every_cluster_and_names_every_failure(tools: Path, tmp_path: Path) -> None:
    apis = {plane: ready_cluster(plane) for plane in ("iptables", "ipvs", "nftables")}

    def api_for(kubeconfig: Path) -> MemoryApi:
        return apis[kubeconfig.parent.name.split("-")[1]]

    def refuse_namespace_deletion(api: MemoryApi, verb: str, obj: dict[str, Any]) -> None:
        if verb == "delete" and obj["kind"] == "Namespace":
            raise RuntimeError("namespace is stuck terminating")

    provider = KindProvider(
        KindSettings(), tools=find_tools(), root=tmp_path / "s", api_factory=api_for
    )
    clusters = {plane: provider.create(plane) for plane in apis}
    names = {plane: cluster_name(plane, KindSettings(), Version(0, 25, 0)) for plane in apis}
    apis["iptables"].reactors.append(refuse_namespace_deletion)
    for plane in ("ipvs", "nftables"):
        (tools / f"undeletable-{names[plane]}").touch()
    with pytest.raises(DataplaneError) as info:
        provider.close()
    message = str(info.value)
    assert message.startswith("kind cleanup incomplete (3 of 3 clusters): ")
    assert (
        f"kind cluster {names['iptables']} (iptables) did not close cleanly: cleanup: delete "
        f"namespace {clusters['iptables'].namespace}: namespace is stuck terminating"
    ) in message
    for plane in ("ipvs", "nftables"):
        assert f"kind cluster {names[plane]} ({plane}) did not close cleanly: cleanup: " in message
        assert f"kind delete cluster {names[plane]}: " in message
        assert f"cannot remove {names[plane]}" in message
    # Every cluster was asked to go, the stuck namespace did not keep its cluster alive, and
    # every API client was closed.
    deletes = [line for line in calls(tools) if line.startswith("kind delete cluster")]
    assert sorted(line.split()[3] for line in deletes) == sorted(
        f"--name={name}" for name in names.values()
    )
    left = sorted((tools / "clusters").read_text().split())
    assert left == sorted([names["ipvs"], names["nftables"]])
    assert all(api.closed for api in apis.values())
    provider.close()  # nothing left to close: no error the second time
