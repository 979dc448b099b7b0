"""Parsing at the boundary: durations, rates, fractions, dataplane names, service times.

Everything inside the package works in seconds (floats), requests per second (floats) and
fractions (floats); strings such as ``"40ms"``, ``"30k/s"`` or ``"10%"`` are accepted only
where a user types them and are converted here. Every parser raises :class:`ValueError` naming
the rejected value and the forms that are accepted.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "DATAPLANES",
    "ServiceTime",
    "parse_dataplanes",
    "parse_duration",
    "parse_fraction",
    "parse_int_or_percent",
    "parse_kube_bin",
    "parse_rate",
    "resolve_int_or_percent",
]

DATAPLANES: Final = ("iptables", "nftables", "ipvs", "ebpf")

_DURATION_UNITS: Final = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DURATION_RE: Final = re.compile(rf"^\s*({_NUMBER})\s*([a-zµμ]*)\s*$")
_RATE_RE: Final = re.compile(rf"^\s*({_NUMBER})\s*([kKM]?)\s*(?:/\s*(s|sec|m|min))?\s*$")
_PERCENT_RE: Final = re.compile(rf"^\s*({_NUMBER})\s*(%?)\s*$")

_DURATION_FORMS: Final = (
    "a number of seconds (0.04) or a number with a unit ns, us, ms, s, m, h "
    "(e.g. '250us', '40ms', '1.5s', '2m')"
)
_RATE_FORMS: Final = (
    "requests per second as a number (500), optionally with a k/M multiplier and a "
    "/s or /m period (e.g. '500/s', '30k/s', '1200/m')"
)
_FRACTION_FORMS: Final = "a fraction (0.1) or a percentage ('10%')"


def _reject_non_numbers(value: object, what: str, forms: str) -> None:
    # bool is an int subclass; True seconds is never what anybody meant.
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what}: cannot use {value!r}; accepted: {forms}")


def _finite(number: float, value: object, what: str, forms: str) -> float:
    if not math.isfinite(number):
        raise ValueError(f"{what}: {value!r} is not finite; accepted: {forms}")
    return number


def parse_duration(value: float | str, *, name: str = "duration") -> float:
    """Return ``value`` as seconds: ``"250us"`` -> 0.00025, ``"2m"`` -> 120.0, ``1.5`` -> 1.5.

    Plain numbers (and numeric strings) are seconds. Negative, NaN and infinite values are
    rejected; zero is allowed (callers that need a positive duration check for it).
    """
    _reject_non_numbers(value, name, _DURATION_FORMS)
    if isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match is None:
            raise ValueError(f"{name}: cannot parse {value!r}; accepted: {_DURATION_FORMS}")
        number, unit = match.groups()
        unit = unit or "s"
        if unit not in _DURATION_UNITS:
            raise ValueError(
                f"{name}: unknown unit {unit!r} in {value!r}; accepted: {_DURATION_FORMS}"
            )
        seconds = float(number) * _DURATION_UNITS[unit]
    else:
        seconds = float(value)
    _finite(seconds, value, name, _DURATION_FORMS)
    if seconds < 0:
        raise ValueError(f"{name}: {value!r} is negative; accepted: {_DURATION_FORMS}")
    return seconds


def parse_rate(value: float | str, *, name: str = "rate") -> float:
    """Return ``value`` as requests per second: ``"30k/s"`` -> 30000.0, ``"600/m"`` -> 10.0.

    The rate must be positive and finite.
    """
    _reject_non_numbers(value, name, _RATE_FORMS)
    if isinstance(value, str):
        match = _RATE_RE.match(value)
        if match is None:
            raise ValueError(f"{name}: cannot parse {value!r}; accepted: {_RATE_FORMS}")
        number, multiplier, period = match.groups()
        rate = float(number) * {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6}[multiplier]
        if period in ("m", "min"):
            rate /= 60.0
    else:
        rate = float(value)
    _finite(rate, value, name, _RATE_FORMS)
    if rate <= 0:
        raise ValueError(f"{name}: {value!r} is not positive; accepted: {_RATE_FORMS}")
    return rate


def parse_fraction(
    value: float | str, *, name: str = "fraction", maximum: float | None = None
) -> float:
    """Return ``value`` as a fraction: ``"10%"`` -> 0.1, ``0.1`` -> 0.1, ``"0.1"`` -> 0.1.

    A bare number is a fraction, a number followed by ``%`` a percentage. Negative values
    are rejected, and so are values above ``maximum`` when it is given.
    """
    _reject_non_numbers(value, name, _FRACTION_FORMS)
    if isinstance(value, str):
        match = _PERCENT_RE.match(value)
        if match is None:
            raise ValueError(f"{name}: cannot parse {value!r}; accepted: {_FRACTION_FORMS}")
        number, percent = match.groups()
        fraction = float(number) / (100.0 if percent else 1.0)
    else:
        fraction = float(value)
    _finite(fraction, value, name, _FRACTION_FORMS)
    if fraction < 0:
        raise ValueError(f"{name}: {value!r} is negative; accepted: {_FRACTION_FORMS}")
    if maximum is not None and fraction > maximum:
        raise ValueError(
            f"{name}: {value!r} is above {maximum:g}; accepted: {_FRACTION_FORMS} "
            f"no greater than {maximum:g}"
        )
    return fraction


def parse_int_or_percent(value: int | str, *, name: str) -> tuple[int, bool]:
    """Parse a Kubernetes IntOrString such as ``maxSurge``: ``2`` or ``"25%"``.

    Returns ``(number, is_percent)``.
    """
    forms = "a non-negative integer (2) or a percentage ('25%')"
    if isinstance(value, bool):
        raise ValueError(f"{name}: cannot use {value!r}; accepted: {forms}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name}: {value!r} is negative; accepted: {forms}")
        return value, False
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*(%?)\s*", value)
        if match:
            return int(match.group(1)), bool(match.group(2))
    raise ValueError(f"{name}: cannot parse {value!r}; accepted: {forms}")


def resolve_int_or_percent(value: int | str, total: int, *, round_up: bool, name: str) -> int:
    """Scale an IntOrString against ``total`` the way Deployments do.

    Percentages round up for ``maxSurge`` and down for ``maxUnavailable``.
    """
    number, is_percent = parse_int_or_percent(value, name=name)
    if not is_percent:
        return number
    scaled = number * total / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


def parse_dataplanes(value: str | Iterable[str], *, name: str = "--dataplane") -> tuple[str, ...]:
    """Parse a comma-separated list of dataplane names (or ``all``) into a tuple.

    Order is kept and repeats are dropped. Unknown names raise ValueError listing
    the accepted ones.
    """
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    for raw in items:
        item = raw.strip().lower()
        if not item:
            continue
        expanded = DATAPLANES if item == "all" else (item,)
        for dataplane in expanded:
            if dataplane not in DATAPLANES:
                raise ValueError(
                    f"{name}: unknown dataplane {raw.strip()!r}; accepted: "
                    f"{', '.join(DATAPLANES)} (comma-separated), or 'all'"
                )
            if dataplane not in names:
                names.append(dataplane)
    if not names:
        raise ValueError(
            f"{name}: no dataplane given in {value!r}; accepted: {', '.join(DATAPLANES)}"
        )
    return tuple(names)


def parse_kube_bin(value: str, *, name: str = "--dataplane-kube-bin") -> str:
    """Validate a directory of Kubernetes binaries; returns its absolute path (``~`` expanded).

    Only that it is a directory is checked here; which components it lacks is reported when
    the lab looks for them (``providers.lab.kubebin.locate``).
    """
    path = os.path.abspath(os.path.expanduser(value.strip()))
    if not value.strip() or not os.path.isdir(path):
        raise ValueError(
            f"{name}: {value!r} is not a directory; accepted: a directory holding official "
            "release binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, "
            "kube-proxy, optionally kubectl)"
        )
    return path


Distribution = Literal["constant", "lognormal", "exponential"]
_SERVICE_TIME_FORMS: Final = (
    "None, a duration ('5ms'), 'constant:5ms', 'lognormal:<p50>[:<sigma>]' "
    "('lognormal:5ms:0.5'), 'exponential:<mean>', or a ServiceTime"
)


@dataclass(frozen=True)
class ServiceTime:
    """How long a lab backend takes to answer, to emulate an application.

    ``median`` is in seconds; ``sigma`` is the lognormal shape (the standard deviation of the
    log of the service time). Build one with :meth:`constant`, :meth:`lognormal`,
    :meth:`exponential` or :meth:`parse`.
    """

    distribution: Distribution
    median: float
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if self.distribution not in ("constant", "lognormal", "exponential"):
            raise ValueError(
                f"service_time: unknown distribution {self.distribution!r}; accepted: "
                "constant, lognormal, exponential"
            )
        if not math.isfinite(self.median) or self.median < 0:
            raise ValueError(f"service_time: median {self.median!r} must be >= 0 seconds")
        if not math.isfinite(self.sigma) or self.sigma < 0:
            raise ValueError(f"service_time: sigma {self.sigma!r} must be >= 0")

    @classmethod
    def constant(cls, value: float | str) -> ServiceTime:
        """Every request takes ``value``."""
        return cls("constant", parse_duration(value, name="service_time"))

    @classmethod
    def lognormal(cls, p50: float | str, sigma: float = 0.5) -> ServiceTime:
        """Lognormal service time with median ``p50`` and log-scale spread ``sigma``."""
        return cls("lognormal", parse_duration(p50, name="service_time p50"), float(sigma))

    @classmethod
    def exponential(cls, mean: float | str) -> ServiceTime:
        """Exponential service time with the given mean (its median is mean·ln 2)."""
        mean_s = parse_duration(mean, name="service_time mean")
        return cls("exponential", mean_s * math.log(2))

    @classmethod
    def parse(cls, value: ServiceTime | float | str | None) -> ServiceTime | None:
        """Accept a ServiceTime, a duration (constant), a spec string, or None (no delay)."""
        if value is None or isinstance(value, ServiceTime):
            return value
        if isinstance(value, str) and ":" in value:
            kind, _, rest = value.partition(":")
            parts = rest.split(":")
            try:
                if kind == "constant" and len(parts) == 1:
                    return cls.constant(parts[0])
                if kind == "lognormal" and len(parts) in (1, 2):
                    return cls.lognormal(parts[0], float(parts[1]) if len(parts) == 2 else 0.5)
                if kind == "exponential" and len(parts) == 1:
                    return cls.exponential(parts[0])
            except ValueError as exc:
                raise ValueError(
                    f"service_time: cannot parse {value!r} ({exc}); accepted: {_SERVICE_TIME_FORMS}"
                ) from None
            raise ValueError(
                f"service_time: cannot parse {value!r}; accepted: {_SERVICE_TIME_FORMS}"
            )
        try:
            return cls.constant(value)
        except ValueError:
            raise ValueError(
                f"service_time: cannot parse {value!r}; accepted: {_SERVICE_TIME_FORMS}"
            ) from None

    @property
    def spec(self) -> str:
        """A string that :meth:`parse` turns back into this ServiceTime."""
        if self.distribution == "constant":
            return f"constant:{self.median!r}"
        if self.distribution == "lognormal":
            return f"lognormal:{self.median!r}:{self.sigma!r}"
        return f"exponential:{self.median / math.log(2)!r}"
