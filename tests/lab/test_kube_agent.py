"""The lab's node agent: pure parts (images, plans, addresses, schedules, statuses) and, where
the Kubernetes binaries are built, the agent for real against a lab cluster."""

from __future__ import annotations

import ipaddress
import json
import re
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
    image_version,
    lease_body,
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
    ],
)
def test_image_selects_the_backend_version(image: str, version: str) -> None:
    assert image_version(image) == version


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("nginx:1.27", "ErrImagePull"),
        ("registry.k8s.io/e2e-test-images/agnhost:2.52", "ErrImagePull"),
        ("backend:v1@sha256:" + "0" * 64, "ErrImagePull"),
        ("backend:-bad", "ErrImagePull"),
        ("mybackend:v1", "ErrImagePull"),
        ("", "InvalidImageName"),
    ],
)
def test_unknown_images_fail_naming_the_accepted_form(image: str, reason: str) -> None:
    with pytest.raises(PodConfigError, match=r"accepted: backend:<version>") as caught:
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
