"""Helpers for the lab tests: a client that counts which pod answered, commands in a node, and
what the dataplane has programmed for a service (read from the kernel or the BPF maps)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable

from pytest_dataplane.providers.k8s.cluster import KubeCluster, KubeService
from pytest_dataplane.providers.k8s.nodes import DUMP_SCRIPT, split_sections

CLIENT_SCRIPT = r"""
import collections, json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pods, errors, seconds = collections.Counter(), collections.Counter(), []
for _ in range(count):
    started = time.perf_counter()
    try:
        with socket.create_connection((host, port), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        pods[data.rsplit(b"\r\n\r\n", 1)[1].decode().strip()] += 1
        seconds.append(time.perf_counter() - started)
    except OSError as exc:
        errors[type(exc).__name__] += 1
print(json.dumps({"pods": pods, "errors": errors, "seconds": seconds}))
"""


def host_port(service: KubeService) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(service.url)
    return str(parts.hostname), int(parts.port or 80)


def run_client(service: KubeService, count: int) -> dict[str, dict[str, int]]:
    """Open ``count`` new connections to the service from the client namespace (and cgroup)
    and return which pod answered each (``pods``), the errors, and each request's seconds."""
    host, port = host_port(service)
    argv = [sys.executable, "-c", CLIENT_SCRIPT, host, str(port), str(count)]
    command = ["nsenter", f"--net=/run/netns/{service.netns}", "--", *argv]
    if service.cgroup is not None:
        # Join the cgroup before the first connect(): the eBPF load balancer is attached there.
        command = [
            "sh",
            "-c",
            f'echo $$ > "{service.cgroup}/cgroup.procs" && exec "$@"',
            "sh",
            *command,
        ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    result: dict[str, dict[str, int]] = json.loads(done.stdout)
    return result


def in_node(cluster: KubeCluster, *argv: str) -> str:
    """Run a command in the cluster's (first) node namespace and return its output."""
    nodes = cluster.node_access
    assert nodes is not None
    return nodes.run(nodes.nodes()[0], shlex.join(argv))


def pod_names(service: KubeService) -> set[str]:
    """The pods behind the service's ready endpoints now, from the API."""
    return {str(pod) for pod in service._cluster.tracker.ready(service.name).values() if pod}


def programmed_endpoints(cluster: KubeCluster, service: KubeService) -> set[str]:
    """The endpoints (``ip:port``) the dataplane sends the service's connections to now, read
    where the dataplane keeps them: kube-proxy's DNAT targets in the node namespace (both
    iptables backends), the endpoint chains its nftables service chain jumps to, or the
    eBPF load balancer's maps."""
    key = f"{cluster.namespace}/{service.name}"
    if cluster.name == "ebpf":
        host, port = host_port(service)
        return set(cluster.handle.ebpf_programmed().get((host, port, "tcp"), []))
    found: set[str] = set()
    for tool, text in split_sections(in_node(cluster, "sh", "-c", DUMP_SCRIPT)).items():
        if tool == "nft":
            # The service's chain sends to its endpoints: "dnat to IP:PORT" (one endpoint),
            # "numgen random mod N map { 0 : IP . PORT, ... }", or (older kube-proxy) a vmap
            # to chains named endpoint-HASH-ns/name/tcp/http__IP/PORT.
            chain = re.search(
                rf"chain service-[0-9A-Z]+-{re.escape(key)}/tcp/http \{{(.*?)\}}\n",
                text,
                re.S,
            )
            body = chain.group(1) if chain else ""
            found |= {f"{ip}:{port}" for ip, port in re.findall(r"([0-9.]+) \. (\d+)", body)}
            found |= set(re.findall(r"dnat to ([0-9.]+:\d+)", body))
            found |= {f"{ip}:{port}" for ip, port in re.findall(r"__([0-9.]+)/(\d+)", body)}
        else:
            found |= _iptables_destinations(text, *host_port(service))
    return found


def _iptables_destinations(save: str, host: str, port: int) -> set[str]:
    """The DNAT targets kube-proxy's iptables rules send ``host:port`` to, followed from
    KUBE-SERVICES by the cluster IP through the service chain to its endpoint chains. Not by
    the rules' comments: over 1,000 endpoints kube-proxy's large-cluster mode leaves them out
    of the endpoint chains."""
    found: set[str] = set()
    for svc in re.findall(
        rf"^-A KUBE-SERVICES -d {re.escape(host)}/32 .*--dport {port} -j (KUBE-SVC-\S+)$",
        save,
        re.M,
    ):
        for sep in re.findall(rf"^-A {re.escape(svc)} .*-j (KUBE-SEP-\S+)$", save, re.M):
            found |= set(re.findall(rf"^-A {re.escape(sep)} .*--to-destination (\S+)$", save, re.M))
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Wait until ``condition()`` holds (polled), or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not after {timeout:g} s"
        time.sleep(0.05)


def wait_programmed(cluster: KubeCluster, service: KubeService, timeout: float = 120.0) -> None:
    """Wait until the dataplane sends the service's connections to exactly its ready
    endpoints (as the API lists them)."""
    wait_for(
        lambda: programmed_endpoints(cluster, service) == set(service.endpoints),
        f"{cluster.name} programming {service.name}'s endpoints {service.endpoints}",
        timeout,
    )
