"""Helpers shared by the Kubernetes layer's tests."""

from __future__ import annotations

import http.server
import itertools
import threading
from typing import Any

from pytest_dataplane.providers.k8s.testing import MemoryApi


class Backends:
    """A loopback HTTP server standing in for a Service's NodePort: ``/hostname`` answers with
    the ready pods in turn, as a dataplane balancing over them would."""

    def __init__(self) -> None:
        self.pods: list[str] = []
        self._turn = itertools.count()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                pods = list(owner.pods)
                body = (pods[next(owner._turn) % len(pods)] if pods else "none").encode()
                self.send_response(200 if pods else 503)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class Controllers:
    """Plays the Deployment and EndpointSlice controllers (and the NodePort allocator) on a
    :class:`MemoryApi`: a created or patched Deployment rolls out at once, its pods' addresses
    land in an EndpointSlice, and the loopback backends serve them."""

    def __init__(self, api: MemoryApi, backends: Backends) -> None:
        self.api = api
        self.backends = backends
        self.ips = itertools.count(2)
        self.pods: dict[str, list[tuple[str, str]]] = {}
        api.reactors.append(self.react)

    def react(self, api: MemoryApi, verb: str, obj: dict[str, Any]) -> None:
        kind, meta = obj["kind"], obj["metadata"]
        key = (obj["apiVersion"], kind, meta.get("namespace"), meta["name"])
        if kind == "Service" and verb == "create" and obj["spec"].get("type") == "NodePort":
            api.objects[key]["spec"]["ports"][0]["nodePort"] = self.backends.port
        if kind != "Deployment" or verb == "delete":
            return
        name, replicas = meta["name"], obj["spec"]["replicas"]
        template = obj["spec"]["template"]
        revision = (template["metadata"].get("annotations") or {}).get(
            "pytest-dataplane/revision", "r0"
        )
        pods = [p for p in self.pods.get(name, []) if p[0].startswith(f"{name}-{revision}-")]
        while len(pods) < replicas:
            pods.append((f"{name}-{revision}-{next(self.ips)}", f"10.244.1.{next(self.ips)}"))
        pods = pods[:replicas]
        self.pods[name] = pods
        api.objects[key]["status"] = {
            "observedGeneration": meta["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
        }
        slice_obj = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": f"{name}-abcde",
                "namespace": meta["namespace"],
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "endpoints": [
                {
                    "addresses": [ip],
                    "conditions": {"ready": True},
                    "targetRef": {"kind": "Pod", "name": pod},
                }
                for pod, ip in pods
            ],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        }
        slice_key = ("discovery.k8s.io/v1", "EndpointSlice", meta["namespace"], f"{name}-abcde")
        api.objects[slice_key] = slice_obj
        self.backends.pods = [pod for pod, _ in pods]
