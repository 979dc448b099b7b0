"""The lab's node agent: pure parts (images, plans, addresses, schedules, statuses) and, where
the Kubernetes binaries are built, the agent for real against a lab cluster."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_dataplane.providers.lab.kube.agent import (
    ContainerView,
    NodeConfig,
    PodAddresses,
    PodConfigError,
    StopSchedule,
    Terminated,
    image_ref,
    image_version,
    lease_body,
    lift_not_ready_taint,
    netexec_args,
    node_body,
    plan_container,
    pod_grace,
    pod_phase,
    pod_status,
    prestop_sleep,
    restart_delay,
    rfc3339,
    should_restart,
    stop_schedule,
    veth_name,
)

CONFIG: dict[str, Any] = {
    "name": "node-0",
    "netns": "dpl0a1b2c-node0",
    "bridge": "cbr0",
    "gateway": "10.64.0.1",
    "internal_ip": "10.192.0.10",
    "pod_cidr": "10.64.0.0/24",
    "prefix": "dpl0a1b2c",
    "run_dir": "/run/pytest-dataplane/dpl0a1b2c/pods/node-0",
}


# ---------------------------------------------------------------------- configuration


def test_node_config_round_trips_through_json(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text(NodeConfig(**CONFIG).to_json())
    config = NodeConfig.load(path)
    assert config == NodeConfig(**CONFIG)
    assert config.max_pods is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pod_cidr": "10.64.0.0/33"}, "pod_cidr '10.64.0.0/33' is not accepted"),
        ({"pod_cidr": "10.64.0.0/31"}, "prefix length from /12 to /30"),
        ({"pod_cidr": "fd00::/64"}, "an IPv4 network"),
        ({"gateway": "10.65.0.1"}, "gateway 10.65.0.1 is outside pod_cidr"),
        ({"prefix": "dpl0a1b2c-long"}, "prefix 'dpl0a1b2c-long' is not accepted"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"max_pods": "many"}, "max_pods 'many' must be an integer"),
    ],
)
def test_node_config_names_the_bad_value(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        NodeConfig(**{**CONFIG, **change})


def test_node_config_from_dict_names_unknown_and_missing_keys() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]; accepted: bridge"):
        NodeConfig.from_dict({**CONFIG, "colour": "blue"})
    partial = {k: v for k, v in CONFIG.items() if k != "pod_cidr"}
    with pytest.raises(ValueError, match=r"missing keys \['pod_cidr'\]"):
        NodeConfig.from_dict(partial)


def test_node_config_load_names_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json'.*cannot read it"):
        NodeConfig.load(bad)


def test_pod_netns_names_start_with_the_session_prefix_and_keep_pods_apart() -> None:
    config = NodeConfig(**CONFIG)
    first = config.pod_netns("backend-7d9f-abcde", "0123456789ab-cdef")
    again = config.pod_netns("backend-7d9f-abcde", "fedcba987654-3210")
    assert first == "dpl0a1b2c-pod-node-0-backend-7d9f-abcde-01234567"
    assert first.startswith(f"{config.prefix}-pod")
    assert first != again  # a re-created pod of the same name gets its own namespace


# ---------------------------------------------------------------------- images and containers


@pytest.mark.parametrize(
    ("image", "version"),
    [
        ("backend:v1", "v1"),
        ("backend:v2", "v2"),
        ("registry.local:5000/lab/backend:v3", "v3"),
        ("docker.io/library/backend:2.0.1-rc_1", "2.0.1-rc_1"),
        ("backend", "latest"),
        ("localhost:5000/backend", "latest"),
        ("registry.k8s.io/e2e-test-images/agnhost:2.53", "2.53"),
        ("agnhost", "latest"),
    ],
)
def test_image_selects_the_backend_version(image: str, version: str) -> None:
    assert image_version(image) == version
    assert image_ref(image) == (image.rpartition("/")[2].partition(":")[0], version)


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("nginx:1.27", "ErrImagePull"),
        ("registry.k8s.io/e2e-test-images/busybox:1.36.1-1", "ErrImagePull"),
        ("agnhost:2.53@sha256:" + "0" * 64, "ErrImagePull"),
        ("backend:v1@sha256:" + "0" * 64, "ErrImagePull"),
        ("backend:-bad", "ErrImagePull"),
        ("mybackend:v1", "ErrImagePull"),
        ("", "InvalidImageName"),
    ],
)
def test_unknown_images_fail_naming_the_accepted_form(image: str, reason: str) -> None:
    with pytest.raises(PodConfigError, match=r"accepted: backend:<version>.* or agnhost") as caught:
        image_version(image)
    assert caught.value.reason == reason
    assert repr(image) in str(caught.value)


def test_plan_of_a_kubectl_create_deployment_container() -> None:
    # `kubectl create deployment backend --image=backend:v1` gives no port and no args.
    plan = plan_container({"name": "backend", "image": "backend:v1"})
    assert (plan.name, plan.version, plan.port) == ("backend", "v1", 80)
    assert plan.service_time is None and plan.prestop_sleep is None
    argv = plan.argv("backend-abc", 4242)
    assert argv[1:3] == ["-m", "pytest_dataplane.providers.lab.backend"]
    assert argv[3:] == [
        "--name",
        "backend-abc",
        "--port",
        "80",
        "--version",
        "v1",
        "--parent",
        "4242",
    ]


def test_plan_takes_the_first_tcp_container_port_and_backend_options() -> None:
    plan = plan_container(
        {
            "name": "web",
            "image": "backend:v2",
            "ports": [
                {"containerPort": 53, "protocol": "UDP"},
                {"containerPort": 8080},
                {"containerPort": 9090, "protocol": "TCP"},
            ],
            "args": ["--service-time=lognormal:5ms:0.4", "--seed", "7", "--drain", "1.5"],
        }
    )
    assert plan.port == 8080
    assert (plan.service_time, plan.seed, plan.drain) == ("lognormal:5ms:0.4", 7, 1.5)
    argv = plan.argv("web-1", 1)
    assert argv[argv.index("--service-time") + 1] == "lognormal:5ms:0.4"
    assert argv[argv.index("--seed") + 1] == "7"
    assert argv[argv.index("--drain") + 1] == "1.5"


def test_plan_reads_the_service_time_from_the_environment_unless_args_give_one() -> None:
    env = [{"name": "OTHER", "value": "x"}, {"name": "SERVICE_TIME", "value": "2ms"}]
    plan = plan_container({"name": "b", "image": "backend:v1", "env": env})
    assert plan.service_time == "2ms"
    both = plan_container(
        {"name": "b", "image": "backend:v1", "env": env, "args": ["--service-time", "9ms"]}
    )
    assert both.service_time == "9ms"


@pytest.mark.parametrize(
    ("container", "reason", "message"),
    [
        (
            {"command": ["sleep", "3600"]},
            "RunContainerError",
            "command .* cannot run: the lab image runs only the lab backend",
        ),
        ({"args": ["--verbose"]}, "CreateContainerConfigError", "'--verbose' is not accepted"),
        ({"args": ["--seed"]}, "CreateContainerConfigError", "--seed needs a value"),
        ({"args": ["--seed", "x"]}, "CreateContainerConfigError", "invalid literal"),
        ({"args": ["--drain=-1"]}, "CreateContainerConfigError", "must be >= 0 seconds"),
        (
            {"args": ["--service-time", "gamma:5ms"]},
            "CreateContainerConfigError",
            "cannot parse 'gamma:5ms'",
        ),
        (
            {"env": [{"name": "SERVICE_TIME", "valueFrom": {"configMapKeyRef": {}}}]},
            "CreateContainerConfigError",
            "SERVICE_TIME must be a plain value",
        ),
    ],
)
def test_plan_refuses_what_the_backend_cannot_do(
    container: dict[str, Any], reason: str, message: str
) -> None:
    with pytest.raises(PodConfigError, match=message) as caught:
        plan_container({"name": "c", "image": "backend:v1", **container})
    assert caught.value.reason == reason


AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.53"


def test_plan_of_the_agnhost_netexec_container_the_kubernetes_providers_deploy() -> None:
    # What providers/k8s/resources.py deployment() writes for netexec, and its readiness probe.
    container = {
        "name": "backend",
        "image": AGNHOST,
        "imagePullPolicy": "IfNotPresent",
        "args": ["netexec", "--http-port=8080", "--udp-port=-1", "--delay-shutdown=1"],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/hostname", "port": 8080}},
    }
    plan = plan_container(container)
    assert (plan.version, plan.port, plan.shutdown_delay) == ("2.53", 8080, 1.0)
    assert plan.service_time is None and plan.prestop_sleep is None
    argv = plan.argv("backend-abc", 7)
    assert argv[argv.index("--port") + 1] == "8080"
    assert argv[argv.index("--version") + 1] == "2.53"
    # The image's entrypoint named as the command is the same program; the port comes from
    # --http-port even where the container declares none, netexec's default is 8080.
    same = plan_container(
        {
            "name": "b",
            "image": AGNHOST,
            "command": ["/agnhost", "netexec", "--http-port", "9000"],
            "env": [{"name": "SERVICE_TIME", "value": "2ms"}],
        }
    )
    assert (same.port, same.shutdown_delay, same.service_time) == (9000, 0.0, "2ms")
    assert plan_container({"name": "b", "image": AGNHOST, "args": ["netexec"]}).port == 8080


@pytest.mark.parametrize(
    ("container", "reason", "message"),
    [
        ({"args": []}, "RunContainerError", r"\(no subcommand\) cannot run: .*netexec only"),
        ({"args": ["pause"]}, "RunContainerError", "agnhost pause cannot run"),
        (
            {"command": ["sh", "-c", "agnhost netexec"]},
            "RunContainerError",
            "command .* cannot run: the lab runs agnhost's netexec only",
        ),
        (
            {"args": ["netexec", "--udp-port=8081"]},
            "CreateContainerConfigError",
            "--udp-port '8081' is not accepted: the lab backend serves HTTP only; "
            "accepted: --udp-port=-1",
        ),
        (
            {"args": ["netexec", "--http-port=0"]},
            "CreateContainerConfigError",
            "--http-port '0' is not accepted; accepted: 1 to 65535",
        ),
        (
            {"args": ["netexec", "--delay-shutdown=soon"]},
            "CreateContainerConfigError",
            "--delay-shutdown 'soon' is not accepted; accepted: seconds >= 0",
        ),
        ({"args": ["netexec", "--http-port"]}, "CreateContainerConfigError", "needs a value"),
        (
            {"args": ["netexec", "--tls-cert-file=/c"]},
            "CreateContainerConfigError",
            "'--tls-cert-file=/c' is not accepted by the lab backend; accepted: netexec "
            "followed by --http-port",
        ),
    ],
)
def test_agnhost_runs_netexec_only_with_what_the_backend_can_do(
    container: dict[str, Any], reason: str, message: str
) -> None:
    with pytest.raises(PodConfigError, match=message) as caught:
        plan_container({"name": "c", "image": AGNHOST, **container})
    assert caught.value.reason == reason


def test_netexec_args_give_port_and_shutdown_delay() -> None:
    assert netexec_args("c", ["netexec"]) == (8080, 0.0)
    assert netexec_args("c", ["netexec", "--delay-shutdown", "2.5", "--sctp-port=-1"]) == (
        8080,
        2.5,
    )


@pytest.mark.parametrize(
    ("hook", "expected"),
    [
        (None, (None, None)),
        ({"sleep": {"seconds": 5}}, (5.0, None)),
        ({"exec": {"command": ["sleep", "3"]}}, (3.0, None)),
        ({"exec": {"command": ["/bin/sleep", "0.5"]}}, (0.5, None)),
        ({"exec": {"command": ["/bin/sh", "-c", "sleep 4"]}}, (4.0, None)),
        ({"exec": {"command": ["sleep", "2s"]}}, (2.0, None)),
    ],
)
def test_prestop_sleeps_are_understood(
    hook: dict[str, Any] | None, expected: tuple[float | None, str | None]
) -> None:
    container: dict[str, Any] = {"name": "c", "image": "backend:v1"}
    if hook is not None:
        container["lifecycle"] = {"preStop": hook}
    assert prestop_sleep(container) == expected
    assert plan_container(container).prestop_sleep == expected[0]


@pytest.mark.parametrize(
    "hook",
    [
        {"exec": {"command": ["nginx", "-s", "quit"]}},
        {"exec": {"command": ["sleep", "forever"]}},
        {"httpGet": {"path": "/quit", "port": 80}},
    ],
)
def test_other_prestop_hooks_are_described_not_run(hook: dict[str, Any]) -> None:
    sleep, unsupported = prestop_sleep({"lifecycle": {"preStop": hook}})
    assert sleep is None
    assert unsupported is not None and "the lab runs only sleeps" in unsupported


# ---------------------------------------------------------------------- addresses


def test_addresses_skip_network_gateway_and_broadcast_and_go_round_robin() -> None:
    addresses = PodAddresses("10.64.3.0/29", "10.64.3.1")
    assert addresses.capacity == 5  # 8 - network - broadcast - gateway
    first = [addresses.allocate() for _ in range(5)]
    assert first == [f"10.64.3.{i}" for i in range(2, 7)]
    with pytest.raises(Exception, match=r"pod CIDR 10\.64\.3\.0/29 is full: all 5"):
        addresses.allocate()
    addresses.release("10.64.3.3")
    addresses.release("10.64.3.5")
    # The next free address after the last one handed out, not the lowest freed one.
    assert addresses.allocate() == "10.64.3.3"
    addresses.release("10.64.3.2")
    assert addresses.allocate() == "10.64.3.5"
    assert addresses.allocate() == "10.64.3.2"
    assert addresses.in_use == 5


def test_addresses_reserve_only_free_pod_addresses_of_the_cidr() -> None:
    addresses = PodAddresses("10.64.0.0/24", "10.64.0.1")
    assert addresses.reserve("10.64.0.77")
    assert not addresses.reserve("10.64.0.77")  # taken
    assert not addresses.reserve("10.64.0.1")  # the gateway
    assert not addresses.reserve("10.64.0.255")  # broadcast
    assert not addresses.reserve("10.65.0.9")  # another node's
    assert not addresses.reserve("not an address")
    allocated = {addresses.allocate() for _ in range(252)}
    assert "10.64.0.77" not in allocated
    network = ipaddress.ip_network("10.64.0.0/24")
    assert all(ipaddress.ip_address(ip) in network for ip in allocated)


def test_veth_names_carry_the_prefix_and_fit_the_kernel_limit() -> None:
    assert veth_name("dpl0a1b2c", 2) == "dpl0a1b2cv2"
    assert veth_name("dpl0a1b2c", 0xFFFFF) == "dpl0a1b2cvfffff"
    assert len(veth_name("dpl0a1b2c", 0xFFFFF)) == 15
    with pytest.raises(Exception, match="longer than 15"):
        veth_name("dpl0a1b2c0", 0xFFFFF)


# ---------------------------------------------------------------------- schedules


@pytest.mark.parametrize(
    ("pod", "grace"),
    [
        ({"metadata": {}, "spec": {}}, 30.0),
        ({"metadata": {}, "spec": {"terminationGracePeriodSeconds": 5}}, 5.0),
        (
            {
                "metadata": {"deletionGracePeriodSeconds": 2},
                "spec": {"terminationGracePeriodSeconds": 30},
            },
            2.0,
        ),
        ({"metadata": {"deletionGracePeriodSeconds": 0}, "spec": {}}, 0.0),
    ],
)
def test_grace_comes_from_the_deletion_then_the_spec(pod: dict[str, Any], grace: float) -> None:
    assert pod_grace(pod) == grace


@pytest.mark.parametrize(
    ("grace", "prestop", "schedule"),
    [
        (2.0, None, StopSchedule(2.0, 4.0)),  # serve through the grace, then SIGTERM
        (30.0, 5.0, StopSchedule(5.0, 30.0)),  # the hook sleeps, SIGKILL at the grace's end
        (3.0, 10.0, StopSchedule(3.0, 5.0)),  # a hook cut by the grace: 2 s more after SIGTERM
        (0.0, None, StopSchedule(0.0, 2.0)),
    ],
)
def test_stop_schedule(grace: float, prestop: float | None, schedule: StopSchedule) -> None:
    assert stop_schedule(grace, prestop) == schedule


@pytest.mark.parametrize(
    ("grace", "prestop", "delay", "schedule"),
    [
        # netexec --delay-shutdown=1 with the grace deployment() gives (1 s + 5): it serves
        # 1 s after SIGTERM and exits, so the backend stops at 1 s, SIGKILL at the grace.
        (6.0, None, 1.0, StopSchedule(1.0, 6.0)),
        (6.0, None, 0.0, StopSchedule(0.0, 6.0)),  # plain netexec exits on SIGTERM
        (30.0, 2.0, 3.0, StopSchedule(5.0, 30.0)),  # the hook first, then the delay
        (2.0, None, 10.0, StopSchedule(2.0, 4.0)),  # cut at the grace period
    ],
)
def test_stop_schedule_with_an_applications_shutdown_delay(
    grace: float, prestop: float | None, delay: float, schedule: StopSchedule
) -> None:
    assert stop_schedule(grace, prestop, delay) == schedule


def test_restart_back_off_is_the_kubelets() -> None:
    assert [restart_delay(n) for n in range(1, 8)] == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0]
    assert restart_delay(50) == 300.0
    assert should_restart("Always", 0) and should_restart("Always", 1)
    assert should_restart("OnFailure", 1) and not should_restart("OnFailure", 0)
    assert not should_restart("Never", 1)


# ---------------------------------------------------------------------- statuses

T0 = 1_800_000_000.0


def _running(name: str = "backend", *, ready: bool = True, restarts: int = 0) -> ContainerView:
    return ContainerView(
        name,
        "backend:v1",
        "running",
        version="v1",
        started_at=T0,
        ready=ready,
        restart_count=restarts,
        container_id=f"lab://0123abcd-{name}-1",
    )


def _ended(code: int) -> ContainerView:
    run = Terminated(code, "Completed" if code == 0 else "Error", T0, T0 + 5, "lab://x-c-1")
    return ContainerView("c", "backend:v1", "terminated", version="v1", terminated=run)


def test_phase_follows_the_containers() -> None:
    waiting = ContainerView("c", "nginx", "waiting", reason="ErrImagePull", message="...")
    back_off = ContainerView(
        "c",
        "backend:v1",
        "waiting",
        reason="CrashLoopBackOff",
        last_terminated=_ended(1).terminated,
    )
    assert pod_phase([], "Always") == "Pending"
    assert pod_phase([waiting], "Always") == "Pending"
    assert pod_phase([_running(), waiting], "Always") == "Pending"
    assert pod_phase([_running(ready=False)], "Always") == "Running"
    assert pod_phase([back_off], "Always") == "Running"
    assert pod_phase([_ended(0)], "Never") == "Succeeded"
    assert pod_phase([_ended(0), _ended(137)], "OnFailure") == "Failed"


def test_status_of_a_starting_pod_then_a_ready_one() -> None:
    starting = pod_status(
        containers=[_running(ready=False)],
        restart_policy="Always",
        pod_ip="10.64.0.2",
        host_ip="10.192.0.10",
        start_time=T0,
        wall=T0 + 0.05,
        previous={},
        sandbox_ready=True,
        scheduled=True,
    )
    assert starting["phase"] == "Running"
    assert starting["podIP"] == "10.64.0.2" and starting["podIPs"] == [{"ip": "10.64.0.2"}]
    assert starting["hostIP"] == "10.192.0.10" and starting["hostIPs"] == [{"ip": "10.192.0.10"}]
    conditions = {c["type"]: c for c in starting["conditions"]}
    assert set(conditions) == {
        "PodReadyToStartContainers",
        "Initialized",
        "ContainersReady",
        "Ready",
    }
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "ContainersNotReady"
    assert conditions["Ready"]["message"] == "containers with unready status: [backend]"
    assert conditions["Initialized"]["status"] == "True"
    [container] = starting["containerStatuses"]
    assert container["state"] == {"running": {"startedAt": rfc3339(T0)}}
    assert (container["ready"], container["started"], container["restartCount"]) == (False, True, 0)
    assert container["containerID"] == "lab://0123abcd-backend-1"
    assert container["imageID"] == "lab://backend:v1"

    # What the agent remembers from the status it wrote: types -> (status, transition time).
    previous = {c["type"]: (c["status"] == "True", T0 + 0.05) for c in starting["conditions"]}
    ready = pod_status(
        containers=[_running(ready=True)],
        restart_policy="Always",
        pod_ip="10.64.0.2",
        host_ip="10.192.0.10",
        start_time=T0,
        wall=T0 + 3,
        previous=previous,
        sandbox_ready=True,
        scheduled=True,
    )
    after = {c["type"]: c for c in ready["conditions"]}
    assert after["Ready"]["status"] == "True" and "reason" not in after["Ready"]
    assert after["Ready"]["lastTransitionTime"] == rfc3339(T0 + 3)  # it changed
    # Initialized did not change: its transition time stays.
    assert after["Initialized"]["lastTransitionTime"] == rfc3339(T0 + 0.05)


def test_status_adds_pod_scheduled_only_when_the_scheduler_did_not() -> None:
    def kinds(scheduled: bool) -> list[str]:
        status = pod_status(
            containers=[_running()],
            restart_policy="Always",
            pod_ip="10.64.0.2",
            host_ip="10.192.0.10",
            start_time=T0,
            wall=T0,
            previous={},
            sandbox_ready=True,
            scheduled=scheduled,
        )
        return [c["type"] for c in status["conditions"]]

    assert "PodScheduled" not in kinds(True)
    assert "PodScheduled" in kinds(False)


def test_status_waits_on_readiness_gates() -> None:
    common: dict[str, Any] = {
        "containers": [_running()],
        "restart_policy": "Always",
        "pod_ip": "10.64.0.2",
        "host_ip": "10.192.0.10",
        "start_time": T0,
        "wall": T0,
        "previous": {},
        "sandbox_ready": True,
        "scheduled": True,
        "readiness_gates": ["example.com/lb-ready"],
    }
    closed = {c["type"]: c for c in pod_status(**common, gate_status={})["conditions"]}
    assert closed["ContainersReady"]["status"] == "True"
    assert closed["Ready"]["status"] == "False"
    assert closed["Ready"]["reason"] == "ReadinessGatesNotReady"
    opened = pod_status(**common, gate_status={"example.com/lb-ready": True})
    assert {c["type"]: c["status"] for c in opened["conditions"]}["Ready"] == "True"


def test_status_of_an_unknown_image_says_why() -> None:
    with pytest.raises(PodConfigError) as caught:
        image_version("nginx:1.27")
    error = caught.value
    view = ContainerView("web", "nginx:1.27", "waiting", reason=error.reason, message=str(error))
    status = pod_status(
        containers=[view],
        restart_policy="Always",
        pod_ip="10.64.0.3",
        host_ip="10.192.0.10",
        start_time=T0,
        wall=T0,
        previous={},
        sandbox_ready=True,
        scheduled=True,
    )
    assert status["phase"] == "Pending"
    [container] = status["containerStatuses"]
    assert container["state"]["waiting"]["reason"] == "ErrImagePull"
    assert "backend:<version>" in container["state"]["waiting"]["message"]
    assert "containerID" not in container and container["started"] is False


def test_status_of_a_restarted_container_keeps_its_last_state() -> None:
    last = Terminated(1, "Error", T0, T0 + 1, "lab://0123abcd-backend-1")
    view = ContainerView(
        "backend",
        "backend:v1",
        "running",
        version="v1",
        started_at=T0 + 2,
        restart_count=1,
        container_id="lab://0123abcd-backend-2",
        last_terminated=last,
    )
    [container] = pod_status(
        containers=[view],
        restart_policy="Always",
        pod_ip="10.64.0.2",
        host_ip="10.192.0.10",
        start_time=T0,
        wall=T0 + 2,
        previous={},
        sandbox_ready=True,
        scheduled=True,
    )["containerStatuses"]
    assert container["restartCount"] == 1
    assert container["lastState"]["terminated"]["exitCode"] == 1
    assert container["lastState"]["terminated"]["containerID"] == "lab://0123abcd-backend-1"
    assert container["containerID"] == "lab://0123abcd-backend-2"


def test_node_body_registers_address_capacity_cidr_and_readiness() -> None:
    config = NodeConfig(**CONFIG)
    node = node_body(config, pods=253, wall=T0, version="v1.37.0")
    assert node["metadata"]["name"] == "node-0"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-0"
    assert node["spec"] == {"podCIDR": "10.64.0.0/24", "podCIDRs": ["10.64.0.0/24"]}
    status = node["status"]
    assert {"type": "InternalIP", "address": "10.192.0.10"} in status["addresses"]
    assert status["capacity"]["pods"] == "253" and status["allocatable"]["pods"] == "253"
    assert int(status["capacity"]["cpu"]) >= 1
    assert status["capacity"]["memory"].endswith("Ki")
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == "True" and ready["lastHeartbeatTime"] == rfc3339(T0)
    assert status["nodeInfo"]["kubeletVersion"] == "v1.37.0"
    json.dumps(node)  # plain JSON, as sent


def test_the_not_ready_taint_is_lifted_and_nothing_else() -> None:
    not_ready = {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}
    other = {"key": "example.com/dedicated", "value": "lab", "effect": "NoSchedule"}
    node = {"metadata": {"resourceVersion": "42"}, "spec": {"taints": [not_ready, other]}}
    assert lift_not_ready_taint(node) == {
        "metadata": {"resourceVersion": "42"},
        "spec": {"taints": [other]},
    }
    only = {"metadata": {"resourceVersion": "7"}, "spec": {"taints": [not_ready]}}
    assert lift_not_ready_taint(only) == {
        "metadata": {"resourceVersion": "7"},
        "spec": {"taints": None},  # a merge patch removes the field
    }
    assert lift_not_ready_taint({"metadata": {}, "spec": {"taints": [other]}}) is None
    assert lift_not_ready_taint({"metadata": {}, "spec": {}}) is None


def test_lease_body_is_owned_by_the_node_and_renewed_with_micro_time() -> None:
    lease = lease_body("node-0", "uid-1", wall=T0 + 0.25)
    assert lease["metadata"] == {
        "name": "node-0",
        "namespace": "kube-node-lease",
        "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "node-0", "uid": "uid-1"}],
    }
    assert lease["spec"]["holderIdentity"] == "node-0"
    assert lease["spec"]["leaseDurationSeconds"] == 40
    # MicroTime always carries six fractional digits (the API server parses it strictly).
    assert lease["spec"]["renewTime"].endswith(".250000Z")
    assert lease_body("node-0", None, wall=T0)["spec"]["renewTime"].endswith(".000000Z")


# ---------------------------------------------------------------------- the pod watch


def _pod(name: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": version}}


class _ScriptedApi:
    """Answers of an API server, scripted: lists and watch streams in the order given."""

    def __init__(self, lists: list[dict[str, Any]], streams: list[list[dict[str, Any]]]) -> None:
        self.lists, self.streams = lists, streams
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.agent: Any = None

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("list", dict(kwargs.get("query") or {})))
        return self.lists.pop(0)

    def watch(self, path: str, query: dict[str, str]) -> Iterator[dict[str, Any]]:
        self.calls.append(("watch", dict(query)))
        if not self.streams:
            self.agent.stopping.set()
            return
        yield from self.streams.pop(0)

    def close(self) -> None:
        pass


def test_the_pod_watch_resumes_from_its_resource_version_and_relists_on_410(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pytest_dataplane.providers.lab.kube.agent import node as agent_module

    scripted = _ScriptedApi(
        lists=[
            {"metadata": {"resourceVersion": "10"}, "items": [_pod("a", "9")]},
            {"metadata": {"resourceVersion": "30"}, "items": [_pod("b", "25")]},
        ],
        streams=[
            # A watch that ends (its timeout) after an event and a bookmark: resume from 15.
            [
                {"type": "ADDED", "object": _pod("b", "12")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
            ],
            # Too old by now: 410 Gone in the stream, so the agent lists again.
            [{"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "gone"}}],
            [{"type": "DELETED", "object": _pod("b", "31")}],
        ],
    )
    monkeypatch.setattr(agent_module, "Api", lambda *args: scripted)
    agent = agent_module.Agent(NodeConfig(**CONFIG), "unused")
    scripted.agent = agent
    dispatched: list[tuple[str, str, str]] = []
    posted: list[tuple[Any, ...]] = []

    class Worker:
        uid = "uid-a"

        def post(self, *message: Any) -> None:
            posted.append(message)

    def dispatch(kind: str, pod: dict[str, Any]) -> None:
        dispatched.append((kind, pod["metadata"]["name"], pod["metadata"]["resourceVersion"]))
        if pod["metadata"]["name"] == "a":
            agent.workers["uid-a"] = Worker()  # type: ignore[assignment]

    monkeypatch.setattr(agent, "_dispatch", dispatch)
    agent._watch()

    selector = "spec.nodeName=node-0"
    assert scripted.calls == [
        ("list", {"fieldSelector": selector}),
        ("watch", {"fieldSelector": selector, "resourceVersion": "10"}),
        ("watch", {"fieldSelector": selector, "resourceVersion": "15"}),
        ("list", {"fieldSelector": selector}),
        ("watch", {"fieldSelector": selector, "resourceVersion": "30"}),
        ("watch", {"fieldSelector": selector, "resourceVersion": "31"}),
    ]
    assert dispatched == [
        ("MODIFIED", "a", "9"),
        ("ADDED", "b", "12"),
        ("MODIFIED", "b", "25"),
        ("DELETED", "b", "31"),
    ]
    # Pod a was missing from the relist: deleted while the watch was broken. Its worker is
    # told it is gone.
    assert posted == [("gone",)]


# ---------------------------------------------------------------------- pods, without a cluster
#
# Real namespaces and backend processes on a node namespace of the test's own; the API server
# is replaced by a recorder of what the agent writes, so that the order of its actions can be
# checked exactly. The same behaviour against a real API server is tested further down.

NODE_CIDR = "10.250.0.0/24"
NODE_GATEWAY = "10.250.0.1"


class RecordingApi:
    """Takes the agent's writes (status patches, deletions) and records them, with whether
    the pod's namespace existed at that moment."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.calls: list[dict[str, Any]] = []
        self.changed = threading.Condition()

    def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        netns = [n for n in os.listdir("/run/netns") if n.startswith(f"{self.prefix}-pod-")]
        with self.changed:
            self.calls.append({"method": method, "path": path, "netns": netns, **kwargs})
            self.changed.notify_all()
        return {}

    def wait(self, found: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        deadline = time.monotonic() + 60
        with self.changed:
            while True:
                for call in self.calls:
                    if found(call):
                        return call
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no {what} after 60 s: {[c['method'] for c in self.calls]}")
                self.changed.wait(left)

    def close(self) -> None:
        pass


def _status_of(call: dict[str, Any]) -> dict[str, Any]:
    return call.get("body", {}).get("status", {})  # type: ignore[no-any-return]


def _ready_in(call: dict[str, Any]) -> bool:
    return call["method"] == "PATCH" and _ready({"status": _status_of(call)})


@pytest.fixture
def bare_node(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[tuple[Any, RecordingApi]]:
    """An agent on a node namespace with a bridge, writing to a :class:`RecordingApi`;
    ``request.param``: how many spare backends it keeps (default: the agent's own)."""
    if os.geteuid() != 0:
        pytest.skip("the node agent needs root to create network namespaces")
    from pytest_dataplane.providers.lab import netns
    from pytest_dataplane.providers.lab._session import Session
    from pytest_dataplane.providers.lab.cleanup import remove_session
    from pytest_dataplane.providers.lab.kube.agent import node as agent_module

    session = Session.new()
    api = RecordingApi(session.prefix)
    monkeypatch.setattr(agent_module, "Api", lambda *args: api)
    monkeypatch.setattr(agent_module, "SPARES", getattr(request, "param", agent_module.SPARES))
    agent = None
    try:
        node = f"{session.prefix}-node0"
        netns.create(node)

        def bridge() -> None:
            from pyroute2 import IPRoute

            with IPRoute() as ip:
                ip.link("set", index=ip.link_lookup(ifname="lo")[0], state="up")
                ip.link("add", ifname="cbr0", kind="bridge")
                index = ip.link_lookup(ifname="cbr0")[0]
                ip.addr("add", index=index, address=NODE_GATEWAY, prefixlen=24)
                ip.link("set", index=index, state="up")

        netns.in_netns(node, bridge)
        config = NodeConfig(
            name="node-0",
            netns=node,
            bridge="cbr0",
            gateway=NODE_GATEWAY,
            internal_ip=NODE_GATEWAY,
            pod_cidr=NODE_CIDR,
            prefix=session.prefix,
            run_dir=str(session.state_dir / "pods"),
        )
        agent = agent_module.Agent(config, "unused")
        yield agent, api
    finally:
        if agent is not None:
            agent.shutdown()
        remove_session(session.prefix)
    # No backend of this agent (pod or spare) outlives it.
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert f"lab.backend --spare --parent {os.getpid()}" not in processes.stdout


def _bare_pod(name: str, image: str = "backend:v3", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"{name}-0123456789"},
        "spec": {
            "nodeName": "node-0",
            "containers": [{"name": "backend", "image": image}],
            **spec,
        },
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
    }


@pytest.mark.parametrize("bare_node", [0, 2], indirect=True, ids=["cold", "spares"])
def test_agent_runs_a_pod_and_finalises_its_deletion_in_order(
    bare_node: tuple[Any, RecordingApi],
) -> None:
    agent, api = bare_node
    pod = _bare_pod("web", terminationGracePeriodSeconds=30)
    agent._dispatch("ADDED", pod)
    ready = api.wait(_ready_in, "Ready status")
    status = _status_of(ready)
    ip = status["podIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(NODE_CIDR) and ip != NODE_GATEWAY
    assert status["hostIP"] == NODE_GATEWAY and status["phase"] == "Running"
    assert ready["body"]["metadata"] == {"uid": pod["metadata"]["uid"]}
    assert ready["content_type"] == "application/strategic-merge-patch+json"
    [netns] = ready["netns"]
    assert netns.startswith(f"{agent.config.prefix}-pod-node-0-web-")
    answer = _get(ip, agent.config.netns)
    assert (answer["X-Version"], answer["X-Pod"]) == ("v3", "web")

    deleted = json.loads(json.dumps(pod))
    deleted["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    deleted["metadata"]["deletionGracePeriodSeconds"] = 1
    before = len(api.calls)
    agent._dispatch("MODIFIED", deleted)
    delete = api.wait(lambda c: c["method"] == "DELETE", "deletion")
    after = api.calls[before:]
    # Serving through the grace period (Ready), then SIGTERM (not ready), then the final
    # status, then the namespace removed, then the Pod deleted with grace 0 and its uid.
    [unready, final, _] = after
    assert (
        not _ready_in(unready) and "running" in _status_of(unready)["containerStatuses"][0]["state"]
    )
    assert _status_of(final)["phase"] == "Succeeded"
    assert _status_of(final)["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert final["netns"] == [netns]
    assert delete["netns"] == []
    assert delete["body"] == {
        "gracePeriodSeconds": 0,
        "preconditions": {"uid": pod["metadata"]["uid"]},
    }


def test_agent_restarts_a_crashed_backend_and_reports_an_unknown_image(
    bare_node: tuple[Any, RecordingApi],
) -> None:
    agent, api = bare_node
    agent._dispatch("ADDED", _bare_pod("crashy"))
    agent._dispatch("ADDED", _bare_pod("nginx", image="nginx:1.27"))
    ready = api.wait(lambda c: _ready_in(c) and "crashy" in c["path"], "crashy Ready")
    first_id = _status_of(ready)["containerStatuses"][0]["containerID"]
    [worker] = [w for w in agent.workers.values() if w.name == "crashy"]
    os.kill(worker.containers[0].process.pid, signal.SIGKILL)
    again = api.wait(
        lambda c: _ready_in(c) and _status_of(c)["containerStatuses"][0]["restartCount"] == 1,
        "crashy Ready again",
    )
    status = _status_of(again)["containerStatuses"][0]
    assert status["lastState"]["terminated"]["exitCode"] == 137
    assert status["lastState"]["terminated"]["containerID"] == first_id != status["containerID"]
    pulled = api.wait(lambda c: "nginx" in c["path"], "nginx status")
    assert _status_of(pulled)["phase"] == "Pending"
    waiting = _status_of(pulled)["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ErrImagePull" and "backend:<version>" in waiting["message"]

    # Stopping the agent stops every pod and removes every namespace, without API calls.
    before = len(api.calls)
    assert agent.shutdown() == 0
    assert [n for n in os.listdir("/run/netns") if n.startswith(f"{agent.config.prefix}-pod")] == []
    assert api.calls[before:] == []


# ====================================================================== for real
#
# A lab cluster (the control plane's KubeLab) whose node agent runs the pods. Waits are on
# watch events and readiness, never on sleeps.

WAIT = 90.0


class Waitable:
    """Something that records as it goes; tests wait on a condition variable that each new
    record wakes, never on sleeps."""

    def __init__(self) -> None:
        self._changed = threading.Condition()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def wait_until(self, found: Callable[[], Any], what: str) -> Any:
        """Block until ``found()`` is true (returning it); fail after WAIT seconds."""
        deadline = time.monotonic() + WAIT
        with self._changed:
            while not (value := found()):
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"not {what} after {WAIT:g} s")
                self._changed.wait(left)
        return value


class Recorder(Waitable):
    """Watch events of one kind of object, with the monotonic time each arrived (one API
    client for the watch, as STYLE.md asks)."""

    def __init__(self, kubeconfig: Path, list_function: str, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        from kubernetes import client, config

        new_client: Any = config.new_client_from_config
        api_client = new_client(config_file=str(kubeconfig))
        api: Any = (
            client.CoordinationV1Api(api_client)
            if "lease" in list_function
            else client.CoreV1Api(api_client)
        )
        self._list = getattr(api, list_function)
        self._args, self._kwargs = args, kwargs
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from kubernetes import watch

        watch_class: Any = watch.Watch
        stream = watch_class()
        while not self._stop.is_set():
            kwargs = dict(self._kwargs)
            if stream.resource_version:  # resume where the last watch ended
                kwargs["resource_version"] = stream.resource_version
            try:
                for event in stream.stream(self._list, *self._args, timeout_seconds=60, **kwargs):
                    with self._changed:
                        self.events.append((time.monotonic(), event["type"], event["raw_object"]))
                        self._changed.notify_all()
                    if self._stop.is_set():
                        return
            except Exception as exc:  # a broken watch (or the cluster going away)
                if self._stop.is_set():
                    return
                if getattr(exc, "status", None) == 410:
                    stream.resource_version = None

    def wait(
        self, found: Callable[[list[tuple[float, str, dict[str, Any]]]], Any], what: str
    ) -> Any:
        """Block until ``found(events)`` is true (returning it); fail after WAIT seconds."""
        return self.wait_until(lambda: found(self.events), what)

    def close(self) -> None:
        self._stop.set()


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _latest(events: list[tuple[float, str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    pods: dict[str, dict[str, Any]] = {}
    for _, kind, pod in events:
        name = pod["metadata"]["name"]
        if kind == "DELETED":
            pods.pop(name, None)
        else:
            pods[name] = pod
    return pods


def _get(url_ip: str, netns: str) -> dict[str, str]:
    """One HTTP request from ``netns`` to ``url_ip``:80: the answer's X- headers and body."""
    code = (
        "import http.client, json, sys\n"
        "c = http.client.HTTPConnection(sys.argv[1], 80, timeout=5)\n"
        "c.request('GET', '/'); r = c.getresponse(); body = r.read().decode()\n"
        "out = {k: v for k, v in r.getheaders() if k.startswith('X-')}\n"
        "out['body'] = body.strip(); print(json.dumps(out))\n"
    )
    done = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c", code, url_ip],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(done.stdout)  # type: ignore[no-any-return]


PROBER = r"""
import socket, sys, time
ip, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
while True:
    started = time.monotonic()
    try:
        with socket.create_connection((ip, port), timeout=0.5) as conn:
            conn.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path.encode())
            data = b""
            while chunk := conn.recv(4096):
                data += chunk
        result = "ok" if data.startswith(b"HTTP/1.1 200") else "bad"
    except OSError as exc:
        result = type(exc).__name__
    print(f"{started:.6f} {result}", flush=True)
    time.sleep(0.02)  # the probing rate, not a wait for anything
"""


class Prober(Waitable):
    """Requests to one pod, a new connection each, from the node namespace: (time, result)."""

    def __init__(self, netns: str, ip: str, port: int = 80, path: str = "/") -> None:
        super().__init__()
        self.results: list[tuple[float, str]] = []
        self._process = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{netns}",
                sys.executable,
                "-c",
                PROBER,
                ip,
                str(port),
                path,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            stamp, result = line.split()
            self.results.append((float(stamp), result))
            self._notify()

    def close(self) -> None:
        self._process.kill()
        self._process.wait()
        self._thread.join()
        if self._process.stdout is not None:
            self._process.stdout.close()


def kubectl(lab: Any, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [*lab.kubectl(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    from kubekit import binaries_or_skip

    from pytest_dataplane.providers.lab.kube.lab import KubeLab

    binaries_or_skip()
    with KubeLab(dataplane="iptables", progress=lambda m: print(f"lab: {m}")) as cluster:
        yield cluster


@pytest.fixture
def namespace(lab: Any, request: pytest.FixtureRequest) -> Iterator[str]:
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-")
    kubectl(lab, "create", "namespace", name)
    yield name
    kubectl(lab, "delete", "namespace", name, "--wait=false")


def _pod_manifest(name: str, namespace: str, **spec: Any) -> str:
    container = {"name": "backend", "image": spec.pop("image", "backend:v1")}
    container.update(spec.pop("container", {}))
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {"containers": [container], **spec},
    }
    return json.dumps(pod)


def test_a_deployment_runs_ready_pods_on_the_node(
    lab: Any, namespace: str, record_property: Callable[[str, object], None]
) -> None:
    pods = Recorder(lab.kubeconfig, "list_namespaced_pod", namespace)
    try:
        kubectl(
            lab,
            "-n",
            namespace,
            "create",
            "deployment",
            "backend",
            "--image=backend:v2",
            "--replicas=3",
        )
        ready = pods.wait(
            lambda ev: (
                [p for p in _latest(ev).values() if _ready(p)]
                if sum(_ready(p) for p in _latest(ev).values()) == 3
                else None
            ),
            "3 pods Ready",
        )
        # Start latency: from the pod's first watch event (created) to its Ready event.
        latencies = []
        for pod in ready:
            name = pod["metadata"]["name"]
            seen = [t for t, _, p in pods.events if p["metadata"]["name"] == name]
            became_ready = min(
                t for t, _, p in pods.events if p["metadata"]["name"] == name and _ready(p)
            )
            latencies.append(became_ready - seen[0])
        median = statistics.median(latencies)
        record_property("pod_start_to_ready_median_s", round(median, 3))
        print(f"pod start to Ready: {sorted(round(x, 3) for x in latencies)} s")
    finally:
        pods.close()
    cidr = ipaddress.ip_network(lab.plan.pod_cidr(0))
    node_netns = lab.node_netns(0)
    for pod in ready:
        status = pod["status"]
        assert status["phase"] == "Running"
        assert ipaddress.ip_address(status["podIP"]) in cidr
        assert status["podIPs"] == [{"ip": status["podIP"]}]
        assert status["hostIP"] == lab.plan.node_ip(0)
        kinds = {c["type"]: c["status"] for c in status["conditions"]}
        assert {k: kinds[k] for k in ("PodScheduled", "Initialized", "ContainersReady")} == {
            "PodScheduled": "True",
            "Initialized": "True",
            "ContainersReady": "True",
        }
        [container] = status["containerStatuses"]
        assert container["ready"] and "running" in container["state"]
        assert container["restartCount"] == 0
        answer = _get(status["podIP"], node_netns)
        assert answer["X-Version"] == "v2"
        assert answer["X-Pod"] == answer["body"] == pod["metadata"]["name"]
        netns = f"{lab.agent_netns_prefix('node-0')}{pod['metadata']['name']}-"
        assert any(n.startswith(netns) for n in os.listdir("/run/netns")), netns
    assert len({p["status"]["podIP"] for p in ready}) == 3


def test_a_deleted_pod_serves_through_its_grace_then_goes(lab: Any, namespace: str) -> None:
    pods = Recorder(lab.kubeconfig, "list_namespaced_pod", namespace)
    prober = None
    try:
        kubectl(lab, "apply", "-f", "-", stdin=_pod_manifest("web", namespace))
        pod = pods.wait(
            lambda ev: _latest(ev).get("web") if _ready(_latest(ev).get("web") or {}) else None,
            "web Ready",
        )
        ip = pod["status"]["podIP"]
        uid = pod["metadata"]["uid"]
        netns = lab.session.prefix + f"-pod-node-0-web-{uid[:8]}"
        assert os.path.exists(f"/run/netns/{netns}")
        prober = Prober(lab.node_netns(0), ip)
        prober.wait_until(lambda: any(r == "ok" for _, r in prober.results), "an answer")
        kubectl(lab, "-n", namespace, "delete", "pod", "web", "--grace-period=2", "--wait=false")
        deleting = pods.wait(
            lambda ev: next((t for t, k, p in ev if p["metadata"].get("deletionTimestamp")), None),
            "the deletion seen",
        )
        gone = pods.wait(lambda ev: next((t for t, k, _ in ev if k == "DELETED"), None), "web gone")
        # The namespace went before the Pod object did (the agent deletes the Pod last).
        assert not os.path.exists(f"/run/netns/{netns}")
        final = [p for _, k, p in pods.events if k == "DELETED"][-1]
        assert final["status"]["phase"] == "Succeeded"
        [container] = final["status"]["containerStatuses"]
        assert container["state"]["terminated"]["exitCode"] == 0  # SIGTERM: a clean stop
        # One more answer (a refusal or a timeout) from after the pod was gone.
        prober.wait_until(lambda: any(t > gone for t, _ in prober.results), "a probe after")
    finally:
        pods.close()
        if prober is not None:
            prober.close()
    results = prober.results
    served_after = [t for t, r in results if r == "ok" and t > deleting]
    # It kept answering after its deletion was seen, stopped before the Pod was gone, and
    # nothing answered after that.
    assert served_after, results[-10:]
    last = max(served_after)
    assert last < gone
    after = [r for t, r in results if t > last]
    assert after and "ok" not in after, results[-10:]
    print(f"served {last - deleting:.2f} s after the deletion (grace 2 s); then {after[:3]}")


def test_agnhost_netexec_runs_as_the_backend_and_keeps_its_delay_shutdown(
    lab: Any, namespace: str
) -> None:
    # The container the kind and kubeconfig providers deploy (providers/k8s/resources.py):
    # agnhost netexec on 8080, ready on /hostname, serving a while after SIGTERM (3 s here,
    # wide enough to tell apart from stopping at once on a loaded machine).
    manifest = _pod_manifest(
        "netexec",
        namespace,
        image="registry.k8s.io/e2e-test-images/agnhost:2.53",
        terminationGracePeriodSeconds=30,
        container={
            "args": ["netexec", "--http-port=8080", "--udp-port=-1", "--delay-shutdown=3"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/hostname", "port": 8080}},
        },
    )
    pods = Recorder(lab.kubeconfig, "list_namespaced_pod", namespace)
    prober = None
    try:
        kubectl(lab, "apply", "-f", "-", stdin=manifest)
        pod = pods.wait(
            lambda ev: (
                _latest(ev).get("netexec") if _ready(_latest(ev).get("netexec") or {}) else None
            ),
            "netexec Ready",
        )
        [status] = pod["status"]["containerStatuses"]
        assert status["imageID"] == "lab://agnhost:2.53"
        prober = Prober(lab.node_netns(0), pod["status"]["podIP"], 8080, "/hostname")
        prober.wait_until(lambda: any(r == "ok" for _, r in prober.results), "an answer")
        kubectl(lab, "-n", namespace, "delete", "pod", "netexec", "--wait=false")
        deleting = pods.wait(
            lambda ev: next((t for t, k, p in ev if p["metadata"].get("deletionTimestamp")), None),
            "the deletion seen",
        )
        # Gone long before its 30 s grace: netexec exits after its delay, and so does the lab.
        gone = pods.wait(lambda ev: next((t for t, k, _ in ev if k == "DELETED"), None), "gone")
    finally:
        pods.close()
        if prober is not None:
            prober.close()
    answers = [t for t, r in prober.results if r == "ok"]
    served_after = [t - deleting for t in answers if t > deleting]
    assert served_after, prober.results[-10:]
    # It served on through most of its 3 s delay (this recorder and the agent see the
    # deletion at about the same time), stopped before the Pod was gone, and nothing
    # answered after; the Pod went long before its 30 s grace (the lab backend's default
    # without a delay is to serve through the grace).
    last = max(answers)
    assert max(served_after) > 1.5, served_after[-5:]
    assert last < gone
    assert "ok" not in [r for t, r in prober.results if t > last]
    assert gone - deleting < 25.0
    print(f"netexec --delay-shutdown=3: served {max(served_after):.2f} s after the deletion")


def test_a_prestop_sleep_holds_the_pod_then_it_stops(lab: Any, namespace: str) -> None:
    pods = Recorder(lab.kubeconfig, "list_namespaced_pod", namespace)
    try:
        manifest = _pod_manifest(
            "hooked",
            namespace,
            terminationGracePeriodSeconds=60,
            container={"lifecycle": {"preStop": {"exec": {"command": ["sleep", "1"]}}}},
        )
        kubectl(lab, "apply", "-f", "-", stdin=manifest)
        pods.wait(lambda ev: _ready(_latest(ev).get("hooked") or {}), "hooked Ready")
        kubectl(lab, "-n", namespace, "delete", "pod", "hooked", "--wait=false")
        deleting = pods.wait(
            lambda ev: next((t for t, k, p in ev if p["metadata"].get("deletionTimestamp")), None),
            "the deletion seen",
        )
        # Gone after the hook and a clean stop, within the wait: long before its 60 s grace.
        gone = pods.wait(lambda ev: next((t for t, k, _ in ev if k == "DELETED"), None), "gone")
        final = [p for _, k, p in pods.events if k == "DELETED"][-1]
        assert final["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
        print(f"preStop sleep 1: removed {gone - deleting:.2f} s after the deletion")
    finally:
        pods.close()


def test_an_unknown_image_fails_with_a_reason(lab: Any, namespace: str) -> None:
    pods = Recorder(lab.kubeconfig, "list_namespaced_pod", namespace)
    try:
        kubectl(
            lab, "apply", "-f", "-", stdin=_pod_manifest("nginx", namespace, image="nginx:1.27")
        )

        def waiting(ev: list[tuple[float, str, dict[str, Any]]]) -> dict[str, Any] | None:
            pod = _latest(ev).get("nginx") or {}
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                if (
                    "waiting" in status["state"]
                    and status["state"]["waiting"]["reason"] != "ContainerCreating"
                ):
                    return status["state"]["waiting"]  # type: ignore[no-any-return]
            return None

        state = pods.wait(waiting, "a waiting reason")
    finally:
        pods.close()
    assert state["reason"] == "ErrImagePull"
    assert "'nginx:1.27' is not a lab image" in state["message"]
    assert "backend:<version>" in state["message"]


def test_a_crashed_backend_restarts_and_counts(lab: Any, namespace: str) -> None:
    pods = Recorder(lab.kubeconfig, "list_namespaced_pod", namespace)
    try:
        kubectl(lab, "apply", "-f", "-", stdin=_pod_manifest("crashy", namespace))
        pod = pods.wait(
            lambda ev: (
                _latest(ev).get("crashy") if _ready(_latest(ev).get("crashy") or {}) else None
            ),
            "crashy Ready",
        )
        netns = lab.session.prefix + f"-pod-node-0-crashy-{pod['metadata']['uid'][:8]}"
        pids = subprocess.run(
            ["ip", "netns", "pids", netns], capture_output=True, text=True, check=True
        ).stdout.split()
        assert len(pids) == 1, pids
        os.kill(int(pids[0]), signal.SIGKILL)

        def restarted(ev: list[tuple[float, str, dict[str, Any]]]) -> dict[str, Any] | None:
            current = _latest(ev).get("crashy") or {}
            statuses = (current.get("status") or {}).get("containerStatuses") or [{}]
            return statuses[0] if statuses[0].get("restartCount") == 1 and _ready(current) else None

        status = pods.wait(restarted, "restarted and Ready again")
    finally:
        pods.close()
    assert status["lastState"]["terminated"]["exitCode"] == 128 + signal.SIGKILL
    assert status["containerID"] != status["lastState"]["terminated"]["containerID"]
    assert _get(pod["status"]["podIP"], lab.node_netns(0))["X-Pod"] == "crashy"


def test_the_node_is_ready_and_its_lease_renewed(lab: Any) -> None:
    node = json.loads(kubectl(lab, "get", "node", "node-0", "-o", "json"))
    assert node["spec"]["podCIDR"] == lab.plan.pod_cidr(0)
    assert {"type": "InternalIP", "address": lab.plan.node_ip(0)} in node["status"]["addresses"]
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert int(node["status"]["allocatable"]["pods"]) > 0
    leases = Recorder(
        lab.kubeconfig,
        "list_namespaced_lease",
        "kube-node-lease",
        field_selector="metadata.name=node-0",
    )
    try:
        first = leases.wait(lambda ev: ev[0][2] if ev else None, "the lease listed")
        renewed = leases.wait(
            lambda ev: next(
                (p for _, k, p in ev if p["spec"]["renewTime"] != first["spec"]["renewTime"]),
                None,
            ),
            "the lease renewed",
        )
    finally:
        leases.close()
    assert renewed["spec"]["holderIdentity"] == "node-0"
    assert renewed["spec"]["leaseDurationSeconds"] == 40
    [owner] = renewed["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Node",
        "node-0",
        node["metadata"]["uid"],
    )


def test_the_agent_stops_every_pod_on_sigterm(lab: Any, namespace: str) -> None:
    # Runs last in this module: it stops the node's agent.
    pods = Recorder(lab.kubeconfig, "list_namespaced_pod", namespace)
    try:
        kubectl(
            lab,
            "-n",
            namespace,
            "create",
            "deployment",
            "last",
            "--image=backend:v1",
            "--replicas=2",
        )
        pods.wait(lambda ev: sum(_ready(p) for p in _latest(ev).values()) == 2, "2 pods Ready")
    finally:
        pods.close()
    prefix = lab.agent_netns_prefix("node-0")
    assert [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
    agent = lab.processes["agent-node-0"]
    for netns in [n for n in os.listdir("/run/netns") if n.startswith(f"{prefix}last-")]:
        pids = subprocess.run(
            ["ip", "netns", "pids", netns], capture_output=True, text=True, check=True
        )
        assert len(pids.stdout.split()) == 1, netns  # the pod's backend
    # Every backend of the agent, pods and spares, names it as the parent it dies with.
    backends = f"pytest_dataplane.providers.lab.backend .*--parent {agent.pid}\\b"
    agent.signal(signal.SIGTERM)
    assert agent.popen.wait(timeout=60) == 0, agent.tail()
    assert [n for n in os.listdir("/run/netns") if n.startswith(prefix)] == []
    processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert re.findall(backends, processes.stdout) == []
