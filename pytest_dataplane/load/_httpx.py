"""The ``httpx`` engine: httpx's HTTP transport (its connection pool, HTTP/1.1, HTTP/2, TLS),
one task per request.

Requests go straight to ``httpx.AsyncHTTPTransport`` rather than through ``AsyncClient``:
the client's layers (cookies, auth, redirects, event hooks, URL merging) do nothing for a
fixed GET and cost ~15 % of the per-request CPU; what goes on the wire is the same.

HTTP/1.1 by default; ``http2=True`` enables HTTP/2 (the ``h2`` package, extra ``http2``):
negotiated by ALPN over TLS, and with prior knowledge (h2c) for ``http://`` URLs. TLS
certificates are verified unless ``verify`` is False; a string is a CA bundle file.

``per-request`` keeps no idle connection (``max_keepalive_connections=0``) and sends
``Connection: close``, so every request opens its own TCP connection and the server closes it
first; ``pooled`` reuses keep-alive connections. HTTP/2 per request takes a transport of its
own for each request: HTTP/2 has no ``Connection: close``, and a pool without idle
connections handed a new stream to a connection it was closing (``SEND_HEADERS in state
CLOSED``, a few requests in twenty failed). The environment's proxy settings are ignored
(``trust_env=False``): a proxy would hide the dataplane under test.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Any

from ._client import Done, EngineConfig, Target
from ._outcomes import OTHER, classify_exception, classify_status

__all__ = ["HttpxClient"]


def _verify(setting: bool | str) -> ssl.SSLContext | bool:
    if isinstance(setting, str):
        return ssl.create_default_context(cafile=setting)
    return setting


def _preload(http2: bool) -> None:
    # httpx imports its transport stack on the first request (~40 ms): that request would be
    # sent late and count as send lag. Import it while the worker prepares instead.
    import importlib

    names = [
        "anyio._backends._asyncio",
        "h11",
        "httpcore._async.http11",
        "httpcore._backends.anyio",
    ]
    if http2:
        names += ["h2.connection", "httpcore._async.http2"]
    for name in names:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


class HttpxClient:
    """Sends GET requests with httpx; see the module docstring."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, config: EngineConfig, target: Target
    ) -> None:
        import httpx

        _preload(config.http2)
        self.loop = loop
        per_request = config.connection == "per-request"
        headers = dict(config.headers)
        if per_request and not any(k.lower() == "connection" for k in headers):
            headers["Connection"] = "close"
        if not any(k.lower() == "user-agent" for k in headers):
            headers["User-Agent"] = "pytest-dataplane"
        if target.scheme == "http":
            # Connect to the address resolved once up front (no resolver thread per new
            # connection) and keep the URL's host in the Host header.
            address = f"[{target.address}]" if ":" in target.address else target.address
            url = f"http://{address}:{target.port}{target.path}"
            headers.setdefault("Host", target.host_header)
        else:
            url = config.url
        self.url = httpx.URL(url)
        self.headers = list(headers.items())
        self.extensions = {"timeout": httpx.Timeout(config.timeout).as_dict()}
        self._request = httpx.Request
        limits = httpx.Limits(
            max_connections=None,
            max_keepalive_connections=0 if per_request else None,
            keepalive_expiry=5.0,
        )
        h2c = config.http2 and target.scheme == "http"
        verify = _verify(config.verify)
        if isinstance(verify, bool) and verify and target.scheme == "https":
            verify = ssl.create_default_context()  # built once, shared by every transport

        def transport() -> Any:
            return httpx.AsyncHTTPTransport(
                http1=not h2c, http2=config.http2, verify=verify, limits=limits, trust_env=False
            )

        self._transport = transport
        self._own_transport = per_request and config.http2
        if self._own_transport:
            self.headers = [(k, v) for k, v in self.headers if k.lower() != "connection"]
        self.transport = transport()
        self.tasks: set[asyncio.Task[Any]] = set()

    def launch(self, offset: float, intended: float, done: Done) -> None:
        task = self.loop.create_task(self._one(offset, intended, done))
        self.tasks.add(task)

        def settle(task: asyncio.Task[Any]) -> None:
            self.tasks.discard(task)
            # A task cancelled before its first step never ran _one: report it here, so
            # that every launched request is reported exactly once.
            if task.cancelled():
                now = time.monotonic()
                done(offset, intended, now, now, OTHER)

        task.add_done_callback(settle)

    async def _one(self, offset: float, intended: float, done: Done) -> None:
        sent = time.monotonic()
        try:
            request = self._request(
                "GET", self.url, headers=self.headers, extensions=self.extensions
            )
            transport = self._transport() if self._own_transport else self.transport
            try:
                response = await transport.handle_async_request(request)
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            finally:
                if transport is not self.transport:
                    await transport.aclose()
        except asyncio.CancelledError:
            # Stopped: report and end normally (the task is ours; nobody awaits it).
            done(offset, intended, sent, time.monotonic(), OTHER)
            return
        except Exception as exc:
            done(
                offset, intended, sent, time.monotonic(), classify_exception(exc, connecting=False)
            )
            return
        done(offset, intended, sent, time.monotonic(), classify_status(response.status_code))

    def cancel_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def aclose(self) -> None:
        self.cancel_all()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.transport.aclose()
