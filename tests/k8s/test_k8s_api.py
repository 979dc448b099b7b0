"""The official-client API: one ApiClient per purpose, so an exec cannot misroute other calls.

``kubernetes.stream`` opens an exec by swapping ``call_api`` on the ApiClient it is given
until the websocket is up. These tests hold an exec open in exactly that window (its
websocket transport is replaced by one that waits) while another thread makes REST calls and
a watch through the same :class:`KubernetesApi` against a small HTTP API server of ours: each
must reach the server, and the exec transport must see only the exec. Sharing one client
between exec and the rest sends the REST call down the exec transport and fails here.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_dataplane.providers.k8s.api import KubernetesApi

VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.2",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2024-10-22T20:28:14Z",
    "goVersion": "go1.22.8",
    "compiler": "gc",
    "platform": "linux/amd64",
}
RESOURCES = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "configmaps",
            "singularName": "configmap",
            "namespaced": True,
            "kind": "ConfigMap",
            "verbs": ["get", "list", "watch"],
        },
        {
            "name": "pods",
            "singularName": "pod",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["get", "list"],
        },
    ],
}
CONFIGMAP = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {"name": "cm", "namespace": "ns", "resourceVersion": "7"},
    "data": {"k": "v"},
}


class ApiServer:
    """Answers the few requests the tests make, and records every path it was asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                path = parts.path.rstrip("/") or "/"
                query = urllib.parse.parse_qs(parts.query)
                owner.paths.append(path + ("?watch" if "watch" in query else ""))
                body: Any
                if path == "/version":
                    body = VERSION
                elif path == "/api":
                    body = {"kind": "APIVersions", "versions": ["v1"]}
                elif path == "/apis":
                    body = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
                elif path == "/api/v1":
                    body = RESOURCES
                elif path == "/api/v1/namespaces/ns/configmaps" and "watch" in query:
                    body = {"type": "ADDED", "object": CONFIGMAP}
                elif path == "/api/v1/namespaces/ns/configmaps":
                    body = {
                        "kind": "ConfigMapList",
                        "apiVersion": "v1",
                        "metadata": {"resourceVersion": "7"},
                        "items": [CONFIGMAP],
                    }
                else:
                    owner.paths.append(f"404 {self.path}")
                    self.send_error(404)
                    return
                data = (json.dumps(body) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class FakeExec:
    """What the websocket transport returns for an exec: a finished command."""

    returncode = 0

    def run_forever(self, timeout: float) -> None:
        pass

    def read_stdout(self) -> str:
        return "exec output\n"

    def read_stderr(self) -> str:
        return ""

    def close(self) -> None:
        pass


class ExecTransport:
    """Stands in for the websocket transport: an exec waits in the window where ``call_api``
    is swapped until the test releases it; anything else arriving here was misrouted."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.misrouted: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def __call__(self, configuration: Any, method: str, url: str, **kwargs: Any) -> FakeExec:
        path = urllib.parse.urlsplit(url).path
        if not path.endswith("/exec"):
            self.misrouted.append(f"{method} {path}")
            raise RuntimeError(f"{method} {path} went out through the exec transport")
        with self._lock:
            self.urls.append(path)
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        try:
            self.entered.set()
            if not self.release.wait(30.0):
                raise RuntimeError("the test never released the exec")
        finally:
            with self._lock:
                self.active -= 1
        return FakeExec()


@pytest.fixture
def server() -> Iterator[ApiServer]:
    api_server = ApiServer()
    yield api_server
    api_server.close()


@pytest.fixture
def transport(monkeypatch: pytest.MonkeyPatch) -> ExecTransport:
    import kubernetes.stream
    from kubernetes.stream.stream import _websocket_request

    fake = ExecTransport()
    # KubernetesApi.exec looks kubernetes.stream.stream up at call time.
    monkeypatch.setattr(
        kubernetes.stream, "stream", functools.partial(_websocket_request, fake, None)
    )
    return fake


@pytest.fixture
def api(
    server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[KubernetesApi]:
    # The dynamic client caches discovery in the temporary directory: keep it the test's own.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    config = tmp_path / "kubeconfig"
    config.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server.url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    client = KubernetesApi(kubeconfig=str(config))
    yield client
    client.close()


def _exec_in_thread(api: KubernetesApi, pod: str, results: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            results.append(api.exec("ns", pod, "c", ["iptables-save"], timeout=5.0))
        except Exception as exc:
            results.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_calls_during_an_exec_reach_the_server(
    api: KubernetesApi, server: ApiServer, transport: ExecTransport
) -> None:
    results: list[Any] = []
    thread = _exec_in_thread(api, "agent-1", results)
    assert transport.entered.wait(10.0), "the exec never reached its transport"
    try:
        # The exec is now inside stream()'s swapped call_api window.
        version = api.server_version()
        items, resource_version = api.list_items("v1", "ConfigMap", "ns")
        watched = list(
            api.watch("v1", "ConfigMap", "ns", resource_version=resource_version, timeout=5.0)
        )
    finally:
        transport.release.set()
        thread.join(10.0)
    assert transport.misrouted == []
    assert version == "v1.31.2"
    assert [item["metadata"]["name"] for item in items] == ["cm"]
    assert resource_version == "7"
    assert [(kind, obj["data"]) for kind, obj in watched] == [("ADDED", {"k": "v"})]
    assert "/version" in server.paths
    assert "/api/v1/namespaces/ns/configmaps" in server.paths
    assert "/api/v1/namespaces/ns/configmaps?watch" in server.paths
    assert transport.urls == ["/api/v1/namespaces/ns/pods/agent-1/exec"]
    (result,) = results
    assert not isinstance(result, Exception), result
    assert (result.stdout, result.returncode) == ("exec output\n", 0)


def test_execs_are_serialised(api: KubernetesApi, transport: ExecTransport) -> None:
    results: list[Any] = []
    first = _exec_in_thread(api, "agent-1", results)
    assert transport.entered.wait(10.0)
    second = _exec_in_thread(api, "agent-2", results)
    # The second exec must wait for the first: while the first holds the exec client, the
    # second never reaches the transport (it would swap call_api under the first).
    second.join(0.3)
    assert second.is_alive()
    assert transport.urls == ["/api/v1/namespaces/ns/pods/agent-1/exec"]
    transport.release.set()
    first.join(10.0)
    second.join(10.0)
    assert transport.most_active == 1
    assert transport.urls == [
        "/api/v1/namespaces/ns/pods/agent-1/exec",
        "/api/v1/namespaces/ns/pods/agent-2/exec",
    ]
    assert [r.returncode for r in results] == [0, 0]
