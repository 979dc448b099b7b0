"""``lab up`` / ``lab down``, a failing test and a SIGKILLed owner: afterwards nothing of the
cluster remains and the root namespace is as it was (firewall, routes, addresses, sysctls)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from kubekit import binaries_or_skip, ended, root_state, session_objects, state_diff, wait_for

from pytest_dataplane.providers.lab._session import STATE_ROOT

CLI = [sys.executable, "-m", "pytest_dataplane"]


def lab_state(name: str) -> dict[str, object]:
    for path in STATE_ROOT.glob("*/lab.json"):
        data = json.loads(path.read_text())
        if data["name"] == name:
            return data  # type: ignore[no-any-return]
    raise AssertionError(f"no state file for lab {name}")


def test_lab_up_eval_kubectl_and_lab_down(tmp_path: Path) -> None:
    binaries_or_skip()
    before = root_state()
    name = f"t{os.getpid()}"
    script = textwrap.dedent(
        f"""
        set -e
        eval "$({" ".join(CLI)} lab up --name {name})"
        kubectl get nodes -o name
        kubectl create deployment backend --image=backend:v1 --replicas=2 >/dev/null
        kubectl rollout status deploy/backend -w --timeout=180s >/dev/null
        echo "netns=$DATAPLANE_NETNS"
        echo "kubeconfig=$KUBECONFIG"
        """
    )
    # The command substitution returns although the cluster keeps running: the supervisor
    # holds nothing of lab up's stdout.
    done = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    state = lab_state(name) if done.returncode == 0 else None
    prefix = str(state["prefix"]) if state is not None else None
    try:
        assert done.returncode == 0, done.stderr
        assert "node/node-0" in done.stdout
        assert "lab:" in done.stderr  # progress went to stderr
        assert state is not None
        assert f"netns={prefix}-kube-client" in done.stdout
        assert Path(str(state["kubeconfig"])).is_file()
        listed = subprocess.run([*CLI, "lab", "list"], capture_output=True, text=True, check=True)
        assert name in listed.stdout and "running" in listed.stdout
        assert state_diff(before, root_state()) == {}
    finally:
        down = subprocess.run(
            [*CLI, "lab", "down", name], capture_output=True, text=True, timeout=180, check=False
        )
    assert down.returncode == 0, down.stderr
    assert prefix is not None
    assert session_objects(prefix) == set()
    assert state_diff(before, root_state()) == {}


def test_sigkilled_supervisor_is_reaped_by_cleanup() -> None:
    binaries_or_skip()
    before = root_state()
    name = f"k{os.getpid()}"
    up = subprocess.run(
        [*CLI, "lab", "up", "--name", name],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    state = lab_state(name)
    prefix = str(state["prefix"])
    assert session_objects(prefix)
    os.kill(int(str(state["pid"])), signal.SIGKILL)
    # The components die with their parent; what is left (namespaces, mount, cgroups,
    # state, the agent's pods) is cleanup's.
    wait_for(lambda: ended(state["pid"]), timeout=30, what="supervisor gone")
    done = subprocess.run(
        [*CLI, "cleanup", "--prefix", prefix],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert session_objects(prefix) == set()
    assert state_diff(before, root_state()) == {}


INNER = """
import os, pathlib, pytest
from pytest_dataplane.providers.lab.kube.lab import KubeLab

@pytest.fixture
def lab():
    with KubeLab(dataplane="iptables") as lab:
        pathlib.Path(os.environ["MARK"]).write_text(lab.session.prefix)
        yield lab

def test_fails(lab):
    assert lab.processes["kube-apiserver"].exited() is None
    raise AssertionError("this test fails on purpose")
"""


def test_a_failing_test_leaves_nothing(tmp_path: Path) -> None:
    binaries_or_skip()
    before = root_state()
    (tmp_path / "test_inner.py").write_text(INNER)
    mark = tmp_path / "prefix"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
        cwd=tmp_path,
        env={**os.environ, "MARK": str(mark)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "1 failed" in done.stdout, done.stdout + done.stderr
    assert "this test fails on purpose" in done.stdout
    prefix = mark.read_text()
    assert session_objects(prefix) == set()
    assert state_diff(before, root_state()) == {}


def test_bad_arguments_are_named() -> None:
    done = subprocess.run(
        [*CLI, "lab", "up", "--nodes", "0"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "nodes: 0 is not accepted; accepted: 1 to 200" in done.stderr
    assert done.stdout == ""
    done = subprocess.run(
        [*CLI, "lab", "down", "no-such-lab"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "no lab named 'no-such-lab'" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--min-sync-period", "45s"],
            "--min-sync-period: '45s' is not accepted; accepted: durations from 0s to 30s",
        ),
        (["--min-sync-period=-1s"], "--min-sync-period: '-1s' is not accepted; accepted:"),
        (["--min-sync-period", "soon"], "--min-sync-period: 'soon' is not accepted; accepted:"),
        (
            ["--iptables-backend", "xtables"],
            "--iptables-backend: 'xtables' is not accepted; accepted: auto, legacy, nft",
        ),
        (
            ["--dataplane", "ebpf", "--min-sync-period", "1s"],
            "--min-sync-period: --dataplane ebpf runs no kube-proxy",
        ),
        (
            ["--dataplane", "ebpf", "--iptables-backend", "nft"],
            "--iptables-backend nft: --dataplane ebpf runs no kube-proxy",
        ),
    ],
)
def test_bad_kube_proxy_settings_are_named(args: list[str], message: str) -> None:
    done = subprocess.run([*CLI, "lab", "up", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert message in done.stderr, done.stderr
    assert done.stdout == ""


def test_lab_up_passes_min_sync_period_and_iptables_backend_to_kube_proxy() -> None:
    binaries_or_skip()
    from pytest_dataplane.providers.lab.kube.lab import detect_iptables_backend

    backend = {"nft": "legacy", "legacy": "nft"}[detect_iptables_backend()]
    restore = shutil.which(f"iptables-{backend}-restore")
    if restore is None:
        pytest.skip(f"iptables-{backend}-restore not installed: only one backend to choose")
    before = root_state()
    name = f"s{os.getpid()}"
    settings = ["--min-sync-period", "250ms", "--iptables-backend", backend]
    up = subprocess.run(
        [*CLI, "lab", "up", "--name", name, *settings],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    prefix = None
    try:
        assert up.returncode == 0, up.stderr
        state = lab_state(name)
        prefix = str(state["prefix"])
        assert (state["min_sync_period"], state["iptables_backend"]) == (0.25, backend)
        pid = int(str(state["processes"]["kube-proxy-node-0"]))  # type: ignore[index]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
        assert "--iptables-min-sync-period=250ms" in argv
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        path = next(v for v in environ if v.startswith(b"PATH=")).decode()[5:]
        linked = Path(path.split(":")[0]) / "iptables-restore"
        assert linked.resolve() == Path(restore).resolve()
    finally:
        down = subprocess.run(
            [*CLI, "lab", "down", name], capture_output=True, text=True, timeout=180, check=False
        )
    assert down.returncode == 0, down.stderr
    assert session_objects(prefix) == set()
    assert state_diff(before, root_state()) == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_ipvs_is_refused_where_the_kernel_lacks_it() -> None:
    from pytest_dataplane.providers.lab.kube.lab import KubeLab, ipvs_available

    if ipvs_available():
        pytest.skip("this kernel has IP_VS")
    from pytest_dataplane.errors import DataplaneUnavailable

    with pytest.raises(DataplaneUnavailable, match="IP_VS"):
        KubeLab(dataplane="ipvs").start()


SIGNALLED = """
import sys, time
from pytest_dataplane.providers.lab.kube.lab import KubeLab

def progress(message):
    print(message, flush=True)

with KubeLab(dataplane="iptables", progress=progress) as lab:
    print("READY", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize(
    ("sig", "moment"),
    [
        (signal.SIGTERM, "starting etcd and kube-apiserver"),
        (signal.SIGINT, "starting controller-manager"),
        (signal.SIGTERM, "READY"),
    ],
)
def test_a_signal_removes_the_cluster(sig: signal.Signals, moment: str) -> None:
    """Ctrl-C or SIGTERM while booting or while running: the owner removes everything."""
    binaries_or_skip()
    before = root_state()
    owner = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert owner.stdout is not None
        first = owner.stdout.readline()  # "lab dplXXXXXX: iptables, ..."
        prefix = first.split()[1].rstrip(":").split("-")[0]
        assert prefix.startswith("dpl"), first
        seen = [first]
        for line in owner.stdout:
            seen.append(line)
            if line.startswith(moment):
                break
        else:
            pytest.fail(f"the owner ended before {moment!r}:\n{''.join(seen)}")
        owner.send_signal(sig)
        rest, _ = owner.communicate(timeout=120)
    finally:
        if owner.poll() is None:  # a failed check: leave no process behind
            owner.kill()
            owner.communicate()
    assert owner.returncode != 0
    assert "KeyboardInterrupt" in rest
    assert session_objects(prefix) == set()
    assert state_diff(before, root_state()) == {}
