"""Validation of a load run's arguments, in one place, into a frozen :class:`LoadSpec`.

Every bad value raises :class:`ValueError` naming the argument, the value and what is
accepted. Strings for rates, durations and timeouts are parsed by :mod:`pytest_dataplane.config`.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from .._host import NETNS_DIR, cgroup2_mount
from ..config import parse_duration, parse_rate
from ..errors import DataplaneUnavailable
from ._client import EngineConfig
from ._schedule import ARRIVALS

__all__ = [
    "CONNECTIONS",
    "DEFAULT_CONCURRENCY",
    "ENGINES",
    "LoadSpec",
    "resolve_cgroup",
]

ENGINES: Final = ("httpx", "fast")
CONNECTIONS: Final = ("per-request", "pooled")
DEFAULT_CONCURRENCY: Final = 10
#: Outstanding requests at most, per engine, when ``max_in_flight`` is not given. httpx's
#: connection pool does work proportional to its connections on every request, so an
#: overloaded httpx engine with 10,000 outstanding requests slows down until it cannot even
#: time them out; capped, the excess is dropped (and reported) instead.
DEFAULT_MAX_IN_FLIGHT: Final = {"httpx": 1_000, "fast": 10_000}
MAX_PROCESSES: Final = 64


def _choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: unknown value {value!r}; accepted: {', '.join(choices)}")
    return value


def _int(value: object, name: str, minimum: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: {value!r} is not {what}")
    return value


def _url(value: object) -> str:
    accepted = "an http:// or https:// URL with a host, e.g. 'http://10.96.0.10:80/'"
    if not isinstance(value, str):
        raise ValueError(f"url: {value!r} is not a string; accepted: {accepted}")
    if not value or any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError(f"url: {value!r} is malformed (empty or whitespace); accepted: {accepted}")
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"url: {value!r} has no http/https scheme; accepted: {accepted}")
    if not parts.hostname:
        raise ValueError(f"url: {value!r} has no host; accepted: {accepted}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"url: {value!r} carries credentials, which are not supported")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError as exc:
        raise ValueError(f"url: {value!r} has a bad port ({exc}); accepted: {accepted}") from None
    return value


def resolve_cgroup(value: str, *, mount: str | None = None) -> tuple[str, str]:
    """``(directory, path)`` of a cgroup v2 given as a directory (``/sys/fs/cgroup/x``) or as
    its path in the hierarchy (``/x``, as ``/proc/self/cgroup`` shows it)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"cgroup: {value!r} is not a cgroup v2 directory or path")
    root = mount if mount is not None else cgroup2_mount()
    if root is None:
        raise ValueError(f"cgroup: {value!r} given, but no cgroup v2 hierarchy is mounted")
    root = os.path.realpath(root)
    candidates = [value] if os.path.isabs(value) else []
    candidates.append(os.path.join(root, value.lstrip("/")))
    for candidate in candidates:
        directory = os.path.realpath(candidate)
        inside = directory == root or directory.startswith(root + os.sep)
        if inside and os.path.isfile(os.path.join(directory, "cgroup.procs")):
            path = "/" if directory == root else "/" + os.path.relpath(directory, root)
            return directory, path
    raise ValueError(
        f"cgroup: {value!r} is not a cgroup v2 directory under {root} (a directory with "
        f"cgroup.procs, given as its path or relative to the mount)"
    )


def _positive_duration(value: float | str, name: str, example: str) -> float:
    seconds = parse_duration(value, name=name)
    if seconds <= 0:
        raise ValueError(f"{name}: {value!r} is not positive; accepted: e.g. {example}")
    return seconds


def _default_engine(url: str, http2: object) -> str:
    # The lighter engine wherever it can speak the protocol asked for.
    scheme = urlsplit(url).scheme.lower()
    return "httpx" if scheme == "https" or http2 is True else "fast"


def _check_protocol(url: str, engine: str, http2: object, verify: object) -> None:
    """The engine speaks the URL's scheme and HTTP version; TLS verification is usable."""
    scheme = urlsplit(url).scheme.lower()
    if engine == "fast" and scheme != "http":
        raise ValueError(
            f"url: {url!r}: engine 'fast' speaks http:// only; use engine='httpx' for https"
        )
    if not isinstance(http2, bool):
        raise ValueError(f"http2: {http2!r} is not a boolean")
    if http2 and engine != "httpx":
        raise ValueError(f"http2: True needs engine='httpx', not {engine!r}")
    if http2 and importlib.util.find_spec("h2") is None:
        raise DataplaneUnavailable(
            "http2=True needs the h2 package: pip install 'pytest-dataplane[http2]'"
        )
    if not isinstance(verify, (bool, str)):
        raise ValueError(f"verify: {verify!r} is not a boolean or a CA bundle path")
    if isinstance(verify, str) and not os.path.isfile(verify):
        raise ValueError(f"verify: CA bundle {verify!r} does not exist")


def _concurrency(arrival: str, concurrency: object, processes: int) -> int | None:
    """The closed loop's worker count (given or the default); None for an open loop."""
    if arrival != "closed":
        if concurrency is not None:
            raise ValueError(
                f"concurrency: {concurrency!r} applies to arrival='closed' only; an open-loop "
                "run sends at its rate whatever is outstanding (see max_in_flight)"
            )
        return None
    workers = _int(
        DEFAULT_CONCURRENCY if concurrency is None else concurrency,
        "concurrency",
        1,
        "a positive number of closed-loop workers",
    )
    if workers < processes:
        raise ValueError(
            f"concurrency: {workers!r} closed-loop workers cannot be split over "
            f"{processes} processes; accepted: concurrency >= processes"
        )
    return workers


def _placement(
    netns: str | None, cgroup: str | None, processes: int
) -> tuple[str | None, str | None]:
    """Check the network namespace and resolve the cgroup the workers run in: ``(cgroup
    directory, cgroup path)``, both None without a cgroup."""
    if netns is not None:
        if not isinstance(netns, str) or not netns or "/" in netns or netns in (".", ".."):
            raise ValueError(f"netns: {netns!r} is not a network namespace name")
        if not os.path.exists(os.path.join(NETNS_DIR, netns)):
            raise ValueError(f"netns: no network namespace {netns!r} (no {NETNS_DIR}/{netns})")
    cgroup_dir = cgroup_path = None
    if cgroup is not None:
        cgroup_dir, cgroup_path = resolve_cgroup(cgroup)
    if processes == 0 and (netns is not None or cgroup is not None):
        raise ValueError(
            "processes: 0 (in this process) cannot enter a netns or cgroup; use processes >= 1"
        )
    return cgroup_dir, cgroup_path


def _headers(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    items: list[tuple[str, str]] = []
    for key, value in (headers or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"headers: {key!r}: {value!r} is not a pair of strings")
        if any(c in key + value for c in "\r\n") or not key or ":" in key:
            raise ValueError(f"headers: {key!r}: {value!r} is not a valid header")
        items.append((key, value))
    return tuple(items)


@dataclass(frozen=True)
class LoadSpec:
    """A validated load run: what :func:`pytest_dataplane.load.run` was asked to do."""

    url: str
    rate: float
    duration: float
    engine: str = "fast"
    arrival: str = "constant"
    connection: str = "per-request"
    timeout: float = 2.0
    netns: str | None = None
    cgroup: str | None = None  # the directory
    cgroup_path: str | None = None  # as /proc/self/cgroup shows it
    concurrency: int | None = None
    processes: int = 1
    http2: bool = False
    verify: bool | str = True
    headers: tuple[tuple[str, str], ...] = ()
    max_in_flight: int = 1_000
    max_rows: int = 1_000_000
    seed: int = 0
    uvloop: bool = True

    @classmethod
    def create(
        cls,
        url: object,
        *,
        rate: float | str,
        duration: float | str,
        engine: str | None = None,
        arrival: str = "constant",
        connection: str = "per-request",
        timeout: float | str = "2s",
        netns: str | None = None,
        cgroup: str | None = None,
        concurrency: int | None = None,
        processes: int = 1,
        http2: bool = False,
        verify: bool | str = True,
        headers: Mapping[str, str] | None = None,
        max_in_flight: int | None = None,
        max_rows: int = 1_000_000,
        seed: int | None = None,
        uvloop: bool = True,
    ) -> LoadSpec:
        """Validate every argument (see :func:`pytest_dataplane.load.run`).

        The checks run in this order, so that of several bad values the first is named.
        """
        url = _url(url)
        rate_value = parse_rate(rate, name="rate")
        duration_value = _positive_duration(duration, "duration", "'30s'")
        timeout_value = _positive_duration(timeout, "timeout", "'2s'")
        engine = _choice(
            _default_engine(url, http2) if engine is None else engine, "engine", ENGINES
        )
        arrival = _choice(arrival, "arrival", ARRIVALS)
        connection = _choice(connection, "connection", CONNECTIONS)
        _check_protocol(url, engine, http2, verify)
        processes = _int(processes, "processes", 0, "a worker process count >= 0")
        if processes > MAX_PROCESSES:
            raise ValueError(f"processes: {processes!r} is above {MAX_PROCESSES}")
        concurrency = _concurrency(arrival, concurrency, processes)
        if max_in_flight is None:
            max_in_flight = DEFAULT_MAX_IN_FLIGHT[engine]
        max_in_flight = _int(max_in_flight, "max_in_flight", 1, "a positive integer")
        max_rows = _int(max_rows, "max_rows", 1, "a positive integer")
        if seed is None:
            seed = secrets.randbits(63)
        seed = _int(seed, "seed", 0, "a non-negative integer")
        cgroup_dir, cgroup_path = _placement(netns, cgroup, processes)
        header_items = _headers(headers)
        return cls(
            url=url,
            rate=rate_value,
            duration=duration_value,
            engine=engine,
            arrival=arrival,
            connection=connection,
            timeout=timeout_value,
            netns=netns,
            cgroup=cgroup_dir,
            cgroup_path=cgroup_path,
            concurrency=concurrency,
            processes=processes,
            http2=http2,
            verify=verify,
            headers=header_items,
            max_in_flight=max_in_flight,
            max_rows=max_rows,
            seed=seed,
            uvloop=bool(uvloop),
        )

    @property
    def parts(self) -> int:
        """How many engines run the schedule (worker processes, or 1 thread)."""
        return max(self.processes, 1)

    def engine_config(self, part: int) -> EngineConfig:
        """The configuration of engine ``part`` (of :attr:`parts`)."""
        parts = self.parts
        concurrency = self.concurrency or DEFAULT_CONCURRENCY
        share = concurrency // parts + (1 if part < concurrency % parts else 0)
        return EngineConfig(
            url=self.url,
            engine=self.engine,
            arrival=self.arrival,
            connection=self.connection,
            rate=self.rate,
            duration=self.duration,
            timeout=self.timeout,
            seed=self.seed,
            part=part,
            parts=parts,
            concurrency=max(share, 1),
            max_in_flight=max(-(-self.max_in_flight // parts), 1),
            http2=self.http2,
            verify=self.verify,
            headers=self.headers,
            uvloop=self.uvloop,
        )
