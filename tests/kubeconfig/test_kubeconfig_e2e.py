"""The story against an existing cluster (the ``kubeconfig`` marker), run as a user runs it:
``pytest --dataplane-provider=kubeconfig`` in a subprocess.

The cluster is the user's own when ``DATAPLANE_E2E_KUBECONFIG`` names a kubeconfig
(``DATAPLANE_E2E_CONTEXT`` a context); the subprocess then runs here, where that kubeconfig
works. Otherwise it is a lab cluster booted for this module (real etcd, API server,
controllers and kube-proxy in iptables mode, one node; see
:mod:`pytest_dataplane.providers.lab.kube.lab`), and the subprocess runs inside the lab's
client network namespace, in a cgroup under the lab's: NodePorts on the node's address are
reachable from there, the root namespace stays untouched, and stopping the lab (or
``python -m pytest_dataplane cleanup`` after a SIGKILL) ends the subprocess with everything
else the lab made.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_dataplane.errors import DataplaneError

pytestmark = pytest.mark.kubeconfig

STORY = """
from pytest_dataplane import assert_error_rate_below, assert_p95_below

def test_rollout_under_load(dataplane, load):
    backend = dataplane.deploy("backend", replicas=3)
    # Pods that keep serving 5 s when they go (netexec --delay-shutdown), longer than the
    # dataplane takes to drop them even on a busy machine.
    backend.rollout(grace="5s")
    with load(backend, rate=100, duration="20s") as run:
        backend.scale(6)
        backend.rollout(grace="5s")
    assert_error_rate_below(run.result, 0.01)
    assert_p95_below(run.result, "200ms")
"""
# Measured on the lab (2 cores shared, load average 7-15): with deploy()'s 1 s drain, a pod
# the rollout removes stops serving before kube-proxy (min sync period 1 s, slower still on
# a busy machine) drops it, and the story lost 0 to 22 connections of 2,000 (refused), up
# to 1.1 %: the verdict was right, the story was not one a team would ship. With pods that
# drain 5 s, as a team sets its grace above its dataplane's programming lag, "error rate
# below 1 %" holds. 20 s at 100/s (2,000 requests) lets it be proven, not inconclusive.
STORY_TIMEOUT = 300.0  # seconds: a hung story fails the test instead of hanging CI
TERMINATED = re.compile(r"^(?P<summary>=+ .*(passed|failed|skipped|error).* in [\d.]+s.*=+)$")


@dataclass(frozen=True)
class Target:
    """Where the story runs: the kubeconfig, its context, and for a lab cluster the client
    namespace and the cgroup the subprocess joins."""

    kubeconfig: Path
    context: str | None = None
    lab: object | None = None


def _lab_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("the lab cluster needs root to create network namespaces")
    from pytest_dataplane.providers.lab.kubebin import locate

    try:
        locate(os.environ.get("DATAPLANE_KUBE_BIN") or None)
    except DataplaneError as exc:
        pytest.skip(f"Kubernetes binaries not built: {exc}")


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    own = os.environ.get("DATAPLANE_E2E_KUBECONFIG")
    if own:
        if not Path(own).is_file():
            pytest.fail(f"DATAPLANE_E2E_KUBECONFIG={own!r} is not a file")
        yield Target(Path(own), os.environ.get("DATAPLANE_E2E_CONTEXT") or None)
        return
    _lab_or_skip()
    from pytest_dataplane.providers.lab.kube.lab import KubeLab

    with KubeLab(dataplane="iptables", nodes=1, tag="kcfg") as lab:
        # The components' kubeconfig names the API server by its control-plane address,
        # which the client namespace routes to (through node 0); the admin kubeconfig's
        # 127.0.0.1 forwarder lives in the root namespace and is not reachable from there.
        yield Target(lab.components_kubeconfig, lab=lab)


def _story_argv(target: Target) -> list[str]:
    args = [
        "--dataplane-provider=kubeconfig",
        f"--dataplane-kubeconfig={target.kubeconfig}",
        "--dataplane=all",
        "-p",
        "no:cacheprovider",
        "-rs",
    ]
    if target.context:
        args.append(f"--dataplane-context={target.context}")
    if target.lab is not None:
        # The story needs no node access; asked for on lab nodes (whose pods are not
        # containers), the run must say why there is none and go on.
        args.append("--dataplane-node-access")
    return args


def _run_in_lab(lab: object, directory: Path, args: list[str]) -> pytest.RunResult:
    """Run pytest on ``directory`` in the lab's client namespace and a cgroup of the lab's."""
    from pytest_dataplane.providers.lab.kube.lab import KubeLab
    from pytest_dataplane.providers.lab.kube.process import Process

    if not isinstance(lab, KubeLab):
        raise TypeError(f"not a KubeLab: {lab!r}")
    log = directory / "story.log"
    # The outer run's own pytest state (its options, current test, xdist worker) is not the
    # story's; the story names its kubeconfig on the command line.
    dropped = ("PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST", "PYTEST_XDIST_", "KUBECONFIG")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    process = Process(
        "e2e-story",
        [sys.executable, "-m", "pytest", str(directory), "--rootdir", str(directory), *args],
        netns=lab.client_netns,
        log_path=log,
        # Under the lab's cgroup: lab.stop() and `cleanup` kill whatever is left in it.
        cgroup=None if lab.cgroup is None else lab.cgroup / "e2e-story",
        env=env,
        deathsig=signal.SIGKILL,
    )
    began = time.monotonic()
    process.start()
    if process.popen is None:
        raise DataplaneError("the story's pytest did not start")
    try:
        returncode = process.popen.wait(STORY_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.signal(signal.SIGKILL)
        process.popen.wait()
        pytest.fail(f"the story did not finish in {STORY_TIMEOUT:g} s:\n{process.tail(200)}")
    duration = time.monotonic() - began
    lines = log.read_text(errors="replace").splitlines()
    if process.cgroup is not None:
        # Nothing the story started (load-generator workers included) outlived it.
        left = (process.cgroup / "cgroup.procs").read_text().split()
        assert not left, f"processes left by the story: {left}"
    return pytest.RunResult(returncode, lines, [], duration)


def _session_namespaces_left(lab: object) -> list[str]:
    """Namespaces the plugin made on the lab cluster that are neither gone nor going."""
    from pytest_dataplane.providers.k8s.api import KubernetesApi
    from pytest_dataplane.providers.kubeconfig.session import CLEANUP_SELECTOR
    from pytest_dataplane.providers.lab.kube.lab import KubeLab

    if not isinstance(lab, KubeLab):
        raise TypeError(f"not a KubeLab: {lab!r}")
    api = KubernetesApi(kubeconfig=str(lab.kubeconfig))  # the root namespace's forwarder
    try:
        items, _ = api.list_items("v1", "Namespace", label_selector=CLEANUP_SELECTOR)
    finally:
        api.close()
    return [
        str(item["metadata"]["name"])
        for item in items
        if not item["metadata"].get("deletionTimestamp")
    ]


def test_story_on_an_existing_cluster(target: Target, pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_story=STORY)
    args = _story_argv(target)
    if target.lab is not None:
        result = _run_in_lab(target.lab, pytester.path, args)
    else:
        result = pytester.runpytest_subprocess(*args, timeout=1800)
    print("\n".join(result.outlines[-40:]))
    # One dataplane is detected and runs; the three others are skipped with what was found.
    result.assert_outcomes(passed=1, skipped=3)
    output = result.stdout.str()
    assert output.count("the cluster runs") == 3
    if target.lab is not None:
        assert output.count("the cluster runs iptables (kube-proxy ConfigMap") == 3
        assert "--dataplane-node-access was given, but node(s) node-0 are run by the " in output
        assert "PASS         test_rollout_under_load[iptables]: error rate below 1%" in output
        assert _session_namespaces_left(target.lab) == []


def test_the_lab_api_server_refuses_privileged_pods_and_the_client_says_so(
    target: Target,
) -> None:
    """What the real API server answers the node-agent DaemonSet (it runs without
    --allow-privileged), as the provider reports it: the Status message, not the client's
    dump of headers and body."""
    if target.lab is None:
        pytest.skip("about the lab's API server; the story ran on DATAPLANE_E2E_KUBECONFIG")
    from pytest_dataplane.providers.k8s.api import KubernetesApi, api_error
    from pytest_dataplane.providers.kubeconfig.agent import agent_daemonset
    from pytest_dataplane.providers.lab.kube.lab import KubeLab

    lab = target.lab
    if not isinstance(lab, KubeLab):
        raise TypeError(f"not a KubeLab: {lab!r}")
    api = KubernetesApi(kubeconfig=str(lab.kubeconfig))  # the root namespace's forwarder
    try:
        with pytest.raises(Exception, match="422") as refused:
            api.create(agent_daemonset("default", session="e2e"))
        status, message = api_error(refused.value)
    finally:
        api.close()
    assert status == 422
    assert message == (
        'DaemonSet.apps "dpt-node-agent" is invalid: spec.template.spec.containers[0]'
        ".securityContext.privileged: Forbidden: disallowed by cluster policy"
    )
