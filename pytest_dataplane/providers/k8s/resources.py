"""Kubernetes objects and patches the providers send through the Kubernetes layer. Pure.

Objects are plain dicts in the API's JSON form (camelCase), the form the API server, a
recorded watch stream and ``kubectl get -o json`` all use, so tests can compare them
directly and feed recorded objects back in.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from ...config import parse_duration, parse_int_or_percent

__all__ = [
    "AGNHOST_IMAGE",
    "APP_LABEL",
    "BACKENDS",
    "BACKEND_PORT",
    "BACKGROUND_PREFIX",
    "MANAGED_BY",
    "ROLE_LABEL",
    "SESSION_LABEL",
    "background_addresses",
    "background_name",
    "background_service",
    "background_slice",
    "background_slice_name",
    "check_name",
    "cluster_ip",
    "cluster_ips",
    "deployment",
    "lb_address",
    "managed_labels",
    "namespace",
    "node_address",
    "node_port",
    "rollout_complete",
    "rollout_patch",
    "rollout_status",
    "scale_patch",
    "service",
    "url_for",
]

MANAGED_BY: Final = ("app.kubernetes.io/managed-by", "pytest-dataplane")
SESSION_LABEL: Final = "pytest-dataplane/session"
ROLE_LABEL: Final = "pytest-dataplane/role"
APP_LABEL: Final = "app.kubernetes.io/name"
REVISION_ANNOTATION: Final = "pytest-dataplane/revision"
SLICE_MANAGER: Final = "pytest-dataplane"  # endpointslice.kubernetes.io/managed-by
# The Kubernetes e2e test server (``agnhost netexec``): serves /hostname, honours
# --delay-shutdown, and is the image Kubernetes' own Service conformance tests use.
AGNHOST_IMAGE: Final = "registry.k8s.io/e2e-test-images/agnhost:2.53"
BACKEND_PORT: Final = 8080
CONTAINER: Final = "backend"
# What runs in the backend pods: agnhost netexec (kind, an existing cluster), or the lab's
# own backend (the lab's node agent runs it for ``backend:<version>`` images), which also
# emulates an application's service time.
BACKENDS: Final = ("netexec", "lab")
# The container runtime the lab's node agent reports in a Node's nodeInfo (followed by its
# version): its pods are lab backends in network namespaces, not containers.
LAB_RUNTIME: Final = "pytest-dataplane-lab://"
BACKGROUND_PREFIX: Final = "dpt-bg-"  # names of the background Services
# RFC 2544's benchmarking range: background endpoints are never sent traffic, and these
# addresses can never be anybody's real pod.
BACKGROUND_RANGE: Final = ipaddress.IPv4Network("198.18.0.0/15")

_DNS_LABEL: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def check_name(name: str, *, what: str = "name", max_length: int = 63) -> str:
    """Validate a DNS-1035 label (Service names): lowercase letters, digits, '-'."""
    if not isinstance(name, str) or not _DNS_LABEL.match(name) or len(name) > max_length:
        raise ValueError(
            f"{what}: {name!r} is not accepted; accepted: at most {max_length} lowercase "
            "letters, digits and '-', starting with a letter and ending with a letter or digit"
        )
    return name


def managed_labels(session: str, role: str) -> dict[str, str]:
    """Labels on everything the plugin creates (cleanup selects on them)."""
    return {MANAGED_BY[0]: MANAGED_BY[1], SESSION_LABEL: session, ROLE_LABEL: role}


def namespace(name: str, session: str, *, privileged: bool = False) -> dict[str, Any]:
    """The session's namespace; ``privileged`` lets Pod Security admit the node agent."""
    labels = managed_labels(session, "session")
    if privileged:
        labels["pod-security.kubernetes.io/enforce"] = "privileged"
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels},
    }


def _netexec_args(grace: float) -> list[str]:
    # --delay-shutdown keeps a terminating pod serving for the grace period, so a pod leaves
    # the endpoints first and stops answering later, as a well-behaved application does.
    return [
        "netexec",
        f"--http-port={BACKEND_PORT}",
        "--udp-port=-1",
        f"--delay-shutdown={math.ceil(grace)}",
    ]


def _grace_seconds(grace: float | str) -> float:
    return parse_duration(grace, name="grace")


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r} is not accepted; accepted: {', '.join(BACKENDS)}")
    return backend


def _drain(backend: str, seconds: float) -> dict[str, Any]:
    """How a terminating backend keeps serving for ``seconds``: netexec's --delay-shutdown,
    or for the lab backend a preStop sleep (it answers while the hook sleeps, gets SIGTERM
    after), the usual way to give every proxier time to drop a leaving pod."""
    if backend == "netexec":
        return {"args": _netexec_args(seconds)}
    return {"lifecycle": {"preStop": {"exec": {"command": ["sleep", f"{seconds:g}"]}}}}


def _lab_env(service_time: str | None) -> list[dict[str, str]]:
    return [] if service_time is None else [{"name": "SERVICE_TIME", "value": service_time}]


def deployment(
    name: str,
    namespace: str,
    *,
    replicas: int,
    image: str,
    session: str,
    grace: float | str = "1s",
    backend: str = "netexec",
    service_time: str | None = None,
) -> dict[str, Any]:
    """A Deployment of ``replicas`` backends answering on :data:`BACKEND_PORT`: agnhost
    netexec, or the lab's backend (``backend="lab"``), which alone takes a ``service_time``
    (a :class:`~pytest_dataplane.config.ServiceTime` spec, passed as ``SERVICE_TIME``)."""
    check_name(name, what="deploy name")
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"replicas: {replicas!r} is not accepted; accepted: an integer >= 0")
    _check_backend(backend)
    if service_time is not None and backend != "lab":
        raise ValueError(
            f"service_time: {service_time!r} needs the lab backend; agnhost netexec answers at once"
        )
    seconds = _grace_seconds(grace)
    labels = {**managed_labels(session, "workload"), APP_LABEL: name}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        **_drain(backend, seconds),
        "ports": [{"name": "http", "containerPort": BACKEND_PORT}],
        "readinessProbe": {
            "httpGet": {"path": "/hostname", "port": BACKEND_PORT},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    }
    if backend == "lab" and service_time is not None:
        container["env"] = _lab_env(service_time)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {APP_LABEL: name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": math.ceil(seconds) + 5,
                    "containers": [container],
                },
            },
        },
    }


def service(
    name: str, namespace: str, *, port: int, session: str, service_type: str = "NodePort"
) -> dict[str, Any]:
    """The Service in front of :func:`deployment` ``name`` (NodePort by default: the host
    reaches it through a node, so traffic crosses the dataplane; ClusterIP where the client
    runs inside the cluster's network, as in the lab)."""
    check_name(name, what="deploy name")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"port: {port!r} is not accepted; accepted: 1 to 65535")
    if service_type not in ("NodePort", "LoadBalancer", "ClusterIP"):
        raise ValueError(
            f"service type: {service_type!r} is not accepted; accepted: NodePort, "
            "LoadBalancer, ClusterIP"
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**managed_labels(session, "workload"), APP_LABEL: name},
        },
        "spec": {
            "type": service_type,
            "selector": {APP_LABEL: name},
            "ports": [
                {"name": "http", "port": port, "targetPort": BACKEND_PORT, "protocol": "TCP"}
            ],
        },
    }


def background_addresses(first: int, count: int) -> list[str]:
    """``count`` distinct addresses from :data:`BACKGROUND_RANGE`, starting at offset ``first``."""
    if first < 0 or count < 0 or first + count > BACKGROUND_RANGE.num_addresses - 2:
        raise ValueError(
            f"background endpoints: {first + count:,} addresses do not fit in "
            f"{BACKGROUND_RANGE} ({BACKGROUND_RANGE.num_addresses - 2:,} usable)"
        )
    base = int(BACKGROUND_RANGE.network_address) + 1
    return [str(ipaddress.IPv4Address(base + first + i)) for i in range(count)]


def background_name(index: int) -> str:
    """The name of the ``index``-th background Service (from 0) of a session's namespace."""
    return f"{BACKGROUND_PREFIX}{index:05d}"


def background_slice_name(service_name: str) -> str:
    """The name of background Service ``service_name``'s one EndpointSlice."""
    return f"{service_name}-1"


def background_service(name: str, namespace: str, *, session: str) -> dict[str, Any]:
    """A selector-less ClusterIP Service: its endpoints come from :func:`background_slice`."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": managed_labels(session, "background"),
        },
        "spec": {
            "type": "ClusterIP",
            "ports": [{"name": "http", "port": 80, "targetPort": BACKEND_PORT, "protocol": "TCP"}],
        },
    }


def background_slice(
    service_name: str, namespace: str, addresses: Sequence[str], *, session: str
) -> dict[str, Any]:
    """An EndpointSlice of ready endpoints for background Service ``service_name`` (no pods:
    the dataplane programs them all the same, which is what makes it busy)."""
    labels = {
        **managed_labels(session, "background"),
        "kubernetes.io/service-name": service_name,
        # Anything but the controller's own name, or the EndpointSlice controller deletes it.
        "endpointslice.kubernetes.io/managed-by": SLICE_MANAGER,
    }
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": background_slice_name(service_name),
            "namespace": namespace,
            "labels": labels,
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [address], "conditions": {"ready": True}} for address in addresses
        ],
        "ports": [{"name": "http", "port": BACKEND_PORT, "protocol": "TCP"}],
    }


def scale_patch(replicas: int) -> dict[str, Any]:
    """Merge patch that sets a Deployment's replica count."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ValueError(f"replicas: {replicas!r} is not accepted; accepted: an integer >= 0")
    return {"spec": {"replicas": replicas}}


def _int_or_percent(value: int | str, name: str) -> int | str:
    number, percent = parse_int_or_percent(value, name=name)
    return f"{number}%" if percent else number


def rollout_patch(
    *,
    max_surge: int | str,
    max_unavailable: int | str,
    grace: float | str,
    revision: str,
    backend: str = "netexec",
) -> dict[str, Any]:
    """Strategic-merge patch that replaces every pod (a new template revision) with the given
    RollingUpdate parameters; pods created from it drain for ``grace`` when they stop."""
    _check_backend(backend)
    surge = _int_or_percent(max_surge, "max_surge")
    unavailable = _int_or_percent(max_unavailable, "max_unavailable")
    if surge in (0, "0%") and unavailable in (0, "0%"):
        raise ValueError(
            "max_surge and max_unavailable are both 0; accepted: at least one of them above 0 "
            "(a Deployment cannot make progress otherwise)"
        )
    seconds = _grace_seconds(grace)
    return {
        "spec": {
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
            },
            "template": {
                "metadata": {"annotations": {REVISION_ANNOTATION: revision}},
                "spec": {
                    "terminationGracePeriodSeconds": math.ceil(seconds) + 5,
                    "containers": [{"name": CONTAINER, **_drain(backend, seconds)}],
                },
            },
        }
    }


def rollout_complete(deployment: Mapping[str, Any]) -> bool:
    """Whether a Deployment has finished rolling out (what ``kubectl rollout status`` waits
    for): the controller saw the latest spec, every replica is updated and available, and no
    old replica is left."""
    wanted = deployment.get("spec", {}).get("replicas", 1)
    generation = deployment.get("metadata", {}).get("generation", 0)
    status = deployment.get("status") or {}
    return bool(
        status.get("observedGeneration", 0) >= generation
        and status.get("updatedReplicas", 0) == wanted
        and status.get("replicas", 0) == wanted
        and status.get("availableReplicas", 0) == wanted
    )


def rollout_status(deployment: Mapping[str, Any]) -> str:
    """One line describing a Deployment's progress, for timeout messages."""
    status = deployment.get("status") or {}
    wanted = deployment.get("spec", {}).get("replicas", 1)
    return (
        f"wanted {wanted}, updated {status.get('updatedReplicas', 0)}, total "
        f"{status.get('replicas', 0)}, available {status.get('availableReplicas', 0)}, "
        f"generation {deployment.get('metadata', {}).get('generation', 0)} observed "
        f"{status.get('observedGeneration', 0)}"
    )


def node_address(node: Mapping[str, Any], *, prefer: Sequence[str] = ("InternalIP",)) -> str | None:
    """The first address of a Node whose type is in ``prefer`` (in that order)."""
    addresses = node.get("status", {}).get("addresses") or []
    for kind in prefer:
        for address in addresses:
            if address.get("type") == kind and address.get("address"):
                return str(address["address"])
    return None


def node_port(svc: Mapping[str, Any], *, name: str = "http") -> int | None:
    """The NodePort allocated to a Service's port ``name`` (None while unallocated)."""
    for port in svc.get("spec", {}).get("ports") or []:
        if port.get("name") == name and port.get("nodePort"):
            return int(port["nodePort"])
    return None


def lb_address(svc: Mapping[str, Any]) -> str | None:
    """The first load-balancer ingress address (IP, else hostname) of a Service."""
    ingress = (svc.get("status", {}).get("loadBalancer") or {}).get("ingress") or []
    for entry in ingress:
        if entry.get("ip") or entry.get("hostname"):
            return str(entry.get("ip") or entry.get("hostname"))
    return None


def cluster_ip(svc: Mapping[str, Any]) -> str | None:
    """A Service's cluster IP (None while unallocated, or for a headless Service)."""
    address = svc.get("spec", {}).get("clusterIP")
    return str(address) if address and address != "None" else None


def cluster_ips(svc: Mapping[str, Any]) -> frozenset[str]:
    """Every cluster IP of a Service (both families on a dual-stack one; none while
    unallocated, or for a headless Service)."""
    spec = svc.get("spec") or {}
    found = {str(ip) for ip in spec.get("clusterIPs") or [] if ip and ip != "None"}
    single = cluster_ip(svc)
    if single is not None:
        found.add(single)
    return frozenset(found)


def url_for(host: str, port: int) -> str:
    """``http://host:port/`` with IPv6 literals bracketed."""
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a hostname
    return f"http://{host}:{port}/"
