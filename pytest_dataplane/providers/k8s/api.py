"""The slice of the Kubernetes API the providers use, as plain dicts.

:class:`KubeApi` is the protocol the rest of the code talks to; :class:`KubernetesApi`
implements it with the official ``kubernetes`` client (dynamic client for objects, the core
API for exec and logs). The in-memory :class:`~pytest_dataplane.providers.k8s.testing.MemoryApi`
implements it for tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ...errors import DataplaneError

__all__ = ["ExecResult", "KubeApi", "KubernetesApi", "NotFound", "api_error"]

FIELD_MANAGER = "pytest-dataplane"


class NotFound(DataplaneError):
    """The object asked for does not exist."""


def api_error(exc: BaseException) -> tuple[int | None, str]:
    """``(HTTP status, message)`` of an error the API server answered: the message of its
    ``Status`` body (``DaemonSet.apps "x" is invalid: ...: Forbidden: disallowed by cluster
    policy``) rather than the client's multi-line dump of headers and body; for any other
    error, ``(None, "<type>: <text>")``."""
    import json

    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    message = ""
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if isinstance(body, str) and body:
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            message = str(parsed.get("message") or "")
    if not message:
        text = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {text[0] if text else ''}".strip()
    return (int(status) if isinstance(status, int) else None), message


@dataclass(frozen=True)
class ExecResult:
    """Output of a command run in a container."""

    stdout: str
    stderr: str
    returncode: int


class KubeApi(Protocol):
    """What the providers need from a Kubernetes API server. Objects are API-form dicts."""

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        """The object (raises :class:`NotFound`)."""

    def list_items(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        """Items and the list's resourceVersion (to watch from)."""

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``obj`` (its apiVersion, kind and metadata say where)."""

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` (create or update), as ``kubectl apply --server-side``."""

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        strategic: bool = True,
    ) -> dict[str, Any]:
        """Strategic-merge patch (or JSON merge patch with ``strategic=False``)."""

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete; False if it was not there."""

    def delete_collection(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        *,
        label_selector: str,
        grace_period_seconds: int | None = None,
    ) -> None:
        """Delete every object of ``kind`` in ``namespace`` matching ``label_selector`` (empty:
        all of them); pods with ``grace_period_seconds`` instead of their own, when given."""

    def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        resource_version: str,
        timeout: float,
        label_selector: str | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Watch events ``(type, object)`` from ``resource_version`` for up to ``timeout``."""

    def stop_watches(self) -> None:
        """End every watch of this client now: their iterators return without waiting for
        the server's timeout (a cluster's close must not wait out a quiet watch)."""

    def exec(
        self, namespace: str, pod: str, container: str | None, argv: list[str], *, timeout: float
    ) -> ExecResult:
        """Run ``argv`` in a container and wait for it."""

    def logs(
        self,
        namespace: str,
        pod: str,
        container: str | None,
        *,
        since_seconds: int | None = None,
        tail_lines: int | None = None,
    ) -> str:
        """A container's log."""

    def namespaced(self, api_version: str, kind: str) -> bool:
        """Whether objects of ``kind`` live in namespaces (from API discovery)."""

    def server_version(self) -> str:
        """The API server's ``gitVersion`` (``v1.31.2``)."""

    def close(self) -> None:
        """Release connections."""


def _to_dict(api_client: Any, obj: Any) -> dict[str, Any]:
    from kubernetes.dynamic.resource import ResourceInstance

    if isinstance(obj, dict):
        return obj
    if isinstance(obj, ResourceInstance):
        # the dynamic client keeps the API's own (camelCase) form
        instance: Any = obj
        return dict(instance.to_dict())
    return dict(api_client.sanitize_for_serialization(obj))


class KubernetesApi:
    """:class:`KubeApi` over the official client, for a kubeconfig (and optional context).

    One ``ApiClient`` per purpose: REST calls, watches and execs each have their own.
    ``kubernetes.stream`` runs an exec by swapping ``call_api`` on the client it is handed
    for the duration of the call; on a shared client, a request another thread sends in that
    window (the EndpointSlice watch, the CPU sampler, a test's REST call) would go out as a
    websocket exec. Execs are serialised on their client for the same reason: two
    overlapping swaps would restore the wrong ``call_api``.

    Imports ``kubernetes`` lazily: the plugin loads without touching it.
    """

    def __init__(
        self, *, kubeconfig: str | None = None, context: str | None = None, pool_size: int = 32
    ) -> None:
        from kubernetes import client, config, dynamic

        # The client's functions are untyped; keep them behind Any.
        load_kube_config: Any = config.load_kube_config
        dynamic_client: Any = dynamic.DynamicClient
        configuration = client.Configuration()
        load_kube_config(
            config_file=kubeconfig, context=context, client_configuration=configuration
        )
        # Many background objects are created from a thread pool; the default pool of 4
        # connections would serialize them.
        configuration.connection_pool_maxsize = pool_size
        self._configuration = configuration
        self._client = client.ApiClient(configuration)
        self._core = client.CoreV1Api(self._client)
        self._version = client.VersionApi(self._client)
        self._dynamic = dynamic_client(self._client)
        self._resources: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        # Made on first use: many sessions never watch through this object or exec at all.
        self._watch_client: Any = None
        self._watch_dynamic: Any = None
        self._watch_resources: dict[tuple[str, str], Any] = {}
        self._exec_client: Any = None
        self._exec_core: Any = None
        self._exec_lock = threading.Lock()
        self._watchers: set[Any] = set()
        self.host = str(configuration.host)

    def _resource(self, api_version: str, kind: str) -> Any:
        key = (api_version, kind)
        with self._lock:
            if key not in self._resources:
                self._resources[key] = self._dynamic.resources.get(
                    api_version=api_version, kind=kind
                )
            return self._resources[key]

    def _watch_resource(self, api_version: str, kind: str) -> Any:
        from kubernetes import client, dynamic

        dynamic_client: Any = dynamic.DynamicClient
        key = (api_version, kind)
        with self._lock:
            if self._watch_dynamic is None:
                self._watch_client = client.ApiClient(self._configuration)
                self._watch_dynamic = dynamic_client(self._watch_client)
            if key not in self._watch_resources:
                self._watch_resources[key] = self._watch_dynamic.resources.get(
                    api_version=api_version, kind=kind
                )
            return self._watch_resources[key]

    def _exec_api(self) -> Any:
        from kubernetes import client

        with self._lock:
            if self._exec_core is None:
                self._exec_client = client.ApiClient(self._configuration)
                self._exec_core = client.CoreV1Api(self._exec_client)
            return self._exec_core

    @staticmethod
    def _not_found(exc: Exception) -> bool:
        return getattr(exc, "status", None) == 404

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        try:
            obj = self._resource(api_version, kind).get(name=name, namespace=namespace)
        except Exception as exc:
            if self._not_found(exc):
                raise NotFound(
                    f"{kind} {namespace + '/' if namespace else ''}{name} not found"
                ) from None
            raise
        return _to_dict(self._client, obj)

    def list_items(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
    ) -> tuple[list[dict[str, Any]], str]:
        result = self._resource(api_version, kind).get(
            namespace=namespace, label_selector=label_selector
        )
        data = _to_dict(self._client, result)
        return list(data.get("items") or []), str(
            (data.get("metadata") or {}).get("resourceVersion", "")
        )

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        namespace = (obj.get("metadata") or {}).get("namespace")
        resource = self._resource(obj["apiVersion"], obj["kind"])
        return _to_dict(self._client, resource.create(body=dict(obj), namespace=namespace))

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        resource = self._resource(obj["apiVersion"], obj["kind"])
        namespace = meta.get("namespace")
        if resource.namespaced and namespace is None:
            namespace = "default"
        result = resource.server_side_apply(
            body=dict(obj),
            name=meta.get("name"),
            namespace=namespace if resource.namespaced else None,
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
        )
        return _to_dict(self._client, result)

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        body: Mapping[str, Any],
        *,
        strategic: bool = True,
    ) -> dict[str, Any]:
        content_type = (
            "application/strategic-merge-patch+json"
            if strategic
            else "application/merge-patch+json"
        )
        result = self._resource(api_version, kind).patch(
            body=dict(body), name=name, namespace=namespace, content_type=content_type
        )
        return _to_dict(self._client, result)

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        try:
            self._resource(api_version, kind).delete(name=name, namespace=namespace)
        except Exception as exc:
            if self._not_found(exc):
                return False
            raise
        return True

    def delete_collection(
        self,
        api_version: str,
        kind: str,
        namespace: str,
        *,
        label_selector: str,
        grace_period_seconds: int | None = None,
    ) -> None:
        resource = self._resource(api_version, kind)
        options = None
        if grace_period_seconds is not None:
            options = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "gracePeriodSeconds": grace_period_seconds,
            }
        # An empty selector means every object of the namespace; the client wants some
        # selector, and every kind has the namespace field.
        selectors = (
            {"label_selector": label_selector}
            if label_selector
            else {"field_selector": f"metadata.namespace={namespace}"}
        )
        try:
            resource.delete(namespace=namespace, body=options, **selectors)
        except Exception as exc:
            # Services could not be deleted as a collection before Kubernetes 1.24 or so.
            if getattr(exc, "status", None) not in (404, 405):
                raise
            items, _ = self.list_items(api_version, kind, namespace, label_selector=label_selector)
            for item in items:
                self.delete(api_version, kind, item["metadata"]["name"], namespace)

    def watch(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        *,
        resource_version: str,
        timeout: float,
        label_selector: str | None = None,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        from kubernetes import watch as k8s_watch

        resource = self._watch_resource(api_version, kind)
        watch_type: Any = k8s_watch.Watch
        watcher = watch_type()
        with self._lock:
            self._watchers.add(watcher)
        try:
            for event in resource.watch(
                namespace=namespace,
                label_selector=label_selector,
                resource_version=resource_version or None,
                timeout=max(1, int(timeout)),
                watcher=watcher,
            ):
                raw = event.get("raw_object")
                obj = (
                    raw
                    if isinstance(raw, dict)
                    else _to_dict(self._watch_client, event.get("object"))
                )
                yield str(event.get("type")), obj
        finally:
            with self._lock:
                self._watchers.discard(watcher)

    def stop_watches(self) -> None:
        # The client's Watch.stop() shuts the stream's socket down, which ends a read blocked
        # on a quiet watch at once.
        with self._lock:
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.stop()

    def exec(
        self, namespace: str, pod: str, container: str | None, argv: list[str], *, timeout: float
    ) -> ExecResult:
        from kubernetes.stream import stream

        kwargs: dict[str, Any] = {
            "command": argv,
            "stderr": True,
            "stdin": False,
            "stdout": True,
            "tty": False,
            "_preload_content": False,
        }
        if container:
            kwargs["container"] = container
        core = self._exec_api()
        # stream() swaps call_api on the exec client while it opens the websocket; hold the
        # lock for the whole exec so no other exec's swap interleaves with this one.
        with self._exec_lock:
            client = stream(core.connect_get_namespaced_pod_exec, pod, namespace, **kwargs)
            try:
                client.run_forever(timeout=timeout)
                stdout = client.read_stdout() or ""
                stderr = client.read_stderr() or ""
                returncode = client.returncode
            finally:
                client.close()
        if returncode is None:
            raise DataplaneError(
                f"exec {' '.join(argv)} in {namespace}/{pod} did not finish in {timeout:g} s"
            )
        return ExecResult(stdout, stderr, int(returncode))

    def logs(
        self,
        namespace: str,
        pod: str,
        container: str | None,
        *,
        since_seconds: int | None = None,
        tail_lines: int | None = None,
    ) -> str:
        kwargs: dict[str, Any] = {}
        if container:
            kwargs["container"] = container
        if since_seconds is not None:
            kwargs["since_seconds"] = max(1, since_seconds)
        if tail_lines is not None:
            kwargs["tail_lines"] = tail_lines
        return str(self._core.read_namespaced_pod_log(pod, namespace, **kwargs))

    def namespaced(self, api_version: str, kind: str) -> bool:
        return bool(self._resource(api_version, kind).namespaced)

    def server_version(self) -> str:
        return str(self._version.get_code().git_version)

    def close(self) -> None:
        for api_client in (self._client, self._watch_client, self._exec_client):
            if api_client is not None:
                api_client.close()
