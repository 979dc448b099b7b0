"""What the lab's own daemons share: the node agent (:mod:`.agent`) and the eBPF controller
(:mod:`.ebpfctl`) run as processes in the cluster's namespaces and talk to its API server.

- :class:`Api`: one API client for one purpose (STYLE.md: watch and REST calls never share
  one), with plain JSON bodies both ways;
- :func:`list_and_watch`: list, then watch from the list's resourceVersion, relisting on
  410 Gone and backing off on failures, until asked to stop;
- :func:`start_process` and :func:`stop_on_signals`: logging to stderr, SIGTERM when the
  parent dies, and SIGTERM or SIGINT asking the daemon to stop.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

from ....errors import DataplaneError
from .. import _proc

__all__ = [
    "REQUEST_TIMEOUT",
    "WATCH_TIMEOUT",
    "Api",
    "ApiError",
    "list_and_watch",
    "start_process",
    "status_code",
    "stop_on_signals",
]

WATCH_TIMEOUT: Final = 300  # seconds a watch request lasts before it is renewed
REQUEST_TIMEOUT: Final = (5.0, 30.0)  # connect, read: no API call may hang a thread forever


class ApiError(DataplaneError):
    """The API server refused a request; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def status_code(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (an :class:`ApiError`'s), or None."""
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


class Api:
    """One API client for one purpose, named in its user agent (``<program>/<purpose>``).

    Requests go through the ``kubernetes`` client's configuration, authentication and
    connection pool, but bodies are plain JSON dicts both ways: the daemons read a handful of
    fields, and turning every event into the client's validated models costs CPU that the
    node's two cores need for the pods.
    """

    def __init__(
        self, kubeconfig: str, purpose: str, *, program: str = "pytest-dataplane-lab-agent"
    ) -> None:
        from kubernetes import client, config

        load: Any = config.load_kube_config
        configuration = client.Configuration()
        load(config_file=kubeconfig, client_configuration=configuration)
        configuration.connection_pool_maxsize = 16
        self.purpose = purpose
        self.client: Any = client.ApiClient(configuration)
        self.client.user_agent = f"{program}/{purpose}"

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None,
        body: Any,
        content_type: str,
        timeout: tuple[float, float],
    ) -> Any:
        method, url, headers, body, _ = self.client.param_serialize(
            method=method,
            resource_path=path,
            query_params=list(query.items()) if query else None,
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.rest_client.request(
                method, url, headers=headers, body=body, _request_timeout=timeout
            )
        except Exception as exc:  # connection refused, timeouts: no answer
            raise ApiError(0, f"{method} {path}: {exc}") from None
        raw = response.response
        if not 200 <= raw.status <= 299:
            try:
                detail = json.loads(raw.data).get("message", "")
            except (ValueError, AttributeError):
                detail = ""
            finally:
                raw.release_conn()
            raise ApiError(raw.status, f"{method} {path}: {raw.status} {detail}".strip())
        return raw

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> dict[str, Any]:
        """Send one request and return the JSON answer; :class:`ApiError` if refused."""
        raw = self._send(
            method, path, query=query, body=body, content_type=content_type, timeout=timeout
        )
        try:
            data = raw.data
        finally:
            raw.release_conn()
        return json.loads(data) if data else {}

    def watch(self, path: str, query: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """Watch events of ``path`` (``query`` carries the resourceVersion to resume from)."""
        from kubernetes.watch import watch as client_watch

        iter_resp_lines: Any = client_watch.iter_resp_lines

        params = {**query, "watch": "true", "allowWatchBookmarks": "true"}
        params["timeoutSeconds"] = str(WATCH_TIMEOUT)
        timeout = (REQUEST_TIMEOUT[0], WATCH_TIMEOUT + 30.0)
        raw = self._send(
            "GET", path, query=params, body=None, content_type="application/json", timeout=timeout
        )
        try:
            for line in iter_resp_lines(raw):
                if line and not line.isspace():
                    yield json.loads(line)
        finally:
            raw.release_conn()

    def close(self) -> None:
        """Close the client's connection pool."""
        self.client.close()


def _resource_version(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def list_and_watch(
    api: Api,
    path: str,
    *,
    stopping: threading.Event,
    on_list: Callable[[dict[str, Any]], None],
    on_event: Callable[[str, dict[str, Any]], None],
    query: Mapping[str, str] | None = None,
    what: str,
    log: logging.Logger,
    list_timeout: tuple[float, float] = REQUEST_TIMEOUT,
) -> None:
    """List ``path`` and watch it from the list's resourceVersion until ``stopping`` is set.

    ``on_list`` gets each list answer (the first, and again after a 410 Gone: the watch
    resumed too late); ``on_event`` gets every event but bookmarks, as ``(type, object)``.
    A failed request is retried after 1 s, 2 s, ... up to 5 s (``what`` names the watch in
    the log); an ``on_list`` or ``on_event`` that raises counts as a failure too.
    """
    base = dict(query or {})
    resource_version = ""
    failures = 0
    while not stopping.is_set():
        try:
            if not resource_version:
                data = api.request("GET", path, query=base or None, timeout=list_timeout)
                on_list(data)
                resource_version = _resource_version(data)
            for event in api.watch(path, {**base, "resourceVersion": resource_version}):
                kind, obj = str(event.get("type")), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        log.info("%s watch expired (410 Gone); relisting", what)
                        resource_version = ""
                        break
                    raise ApiError(
                        int(obj.get("code") or 0), f"{what} watch error: {obj.get('message')}"
                    )
                resource_version = _resource_version(obj) or resource_version
                if kind != "BOOKMARK":
                    on_event(kind, obj)
            failures = 0
        except Exception as exc:
            if stopping.is_set():
                return
            if status_code(exc) == 410:
                log.info("%s watch expired (410 Gone); relisting", what)
                resource_version = ""
                continue
            failures += 1
            log.warning("%s watch failed (%s); again in %d s", what, exc, min(failures, 5))
            stopping.wait(min(failures, 5))


def start_process(log_level: str, *, parent: int | None = None) -> bool:
    """Set a daemon process up: log to stderr at ``log_level`` and get SIGTERM when the
    parent dies. False if ``parent`` (a pid) is gone already: the daemon should exit at once.

    The parent-death signal is what removes a daemon whose owner was killed: on SIGTERM
    (see :func:`stop_on_signals`) the daemon undoes its own work (pods, attached programs).
    """
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(threadName)s %(message)s",
        stream=sys.stderr,
    )
    return _proc.die_with_parent(signal.SIGTERM, parent)


def stop_on_signals(stop: Callable[[], None]) -> None:
    """Call ``stop`` on SIGTERM and SIGINT (the daemon then returns from its loop)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop())
