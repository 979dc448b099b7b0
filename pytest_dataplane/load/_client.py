"""What the engine and its HTTP clients share: the run's configuration, the resolved target
and the client protocol.

The dispatcher (:mod:`._engine`) chooses a client (:mod:`._fast` or :mod:`._httpx`) by
name; the clients need these types but not the dispatcher, so they live here, below both.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = ["Client", "Done", "EngineConfig", "Target"]

#: ``done(offset, intended, sent, finished, outcome)``: called exactly once per launched
#: request; ``offset`` is the schedule's own value (seconds since t0, stored as is),
#: ``intended`` the monotonic time it stands for.
Done = Callable[[float, float, float, float, int], None]


@dataclass(frozen=True)
class EngineConfig:
    """Everything a worker needs to run its part of a load run (JSON-serialisable)."""

    url: str
    engine: str
    arrival: str
    connection: str
    rate: float
    duration: float
    timeout: float
    seed: int
    part: int = 0
    parts: int = 1
    concurrency: int = 10
    max_in_flight: int = 10_000
    http2: bool = False
    verify: bool | str = True
    headers: tuple[tuple[str, str], ...] = ()
    flush_rows: int = 4096
    uvloop: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EngineConfig:
        values = dict(data)
        values["headers"] = tuple((str(k), str(v)) for k, v in values.get("headers", ()))
        return cls(**values)


@dataclass(frozen=True)
class Target:
    """Where requests go: the URL's parts and the address it resolved to (once, up front)."""

    scheme: str
    host: str
    port: int
    path: str
    address: str
    family: int = field(default=socket.AF_INET)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    @classmethod
    def resolve(cls, url: str) -> Target:
        """Split ``url`` and resolve its host in this process's network namespace."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve host {host!r} of {url!r}: {exc}") from None
        family, _, _, _, sockaddr = infos[0]
        return cls(scheme, host, port, path, str(sockaddr[0]), int(family))


class Client(Protocol):
    """An HTTP client the dispatcher drives: one launch per scheduled request."""

    def launch(self, offset: float, intended: float, done: Done) -> None: ...

    def cancel_all(self) -> None: ...

    async def aclose(self) -> None: ...
