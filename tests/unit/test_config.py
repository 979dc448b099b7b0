"""Parsing at the boundary: durations, rates, fractions, dataplane lists, service times."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_dataplane.config import (
    DATAPLANES,
    ServiceTime,
    parse_dataplanes,
    parse_duration,
    parse_fraction,
    parse_int_or_percent,
    parse_rate,
    resolve_int_or_percent,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250us", 250e-6),
        ("250µs", 250e-6),
        ("40ms", 0.040),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("0.5", 0.5),
        (" 3 s ", 3.0),
        ("1e-3s", 1e-3),
        (2, 2.0),
        (0.25, 0.25),
        ("0", 0.0),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("bad", ["", "fast", "40 parsecs", "ms", "-1s", "1..2s", "nan", "inf"])
def test_bad_durations_name_the_value_and_the_forms(bad: str) -> None:
    with pytest.raises(ValueError, match="threshold") as excinfo:
        parse_duration(bad, name="threshold")
    message = str(excinfo.value)
    assert repr(bad) in message
    assert "'40ms'" in message


@pytest.mark.parametrize("bad", [True, None, [1], float("nan"), -0.5])
def test_bad_duration_objects(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("500", 500.0),
        ("500/s", 500.0),
        ("30k/s", 30_000.0),
        ("1.5k", 1500.0),
        ("1200/m", 20.0),
        ("2M/s", 2e6),
        (300, 300.0),
        ("0.5/s", 0.5),
    ],
)
def test_rates(text: str | float, rate: float) -> None:
    assert parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("bad", ["0", "-5/s", "fast", "10/h", "k/s", "", 0, -1])
def test_bad_rates(bad: str | float) -> None:
    with pytest.raises(ValueError, match=r"rate: .*accepted: requests per second"):
        parse_rate(bad)


@pytest.mark.parametrize(
    ("text", "fraction"), [("10%", 0.1), (0.1, 0.1), ("0.1", 0.1), ("150%", 1.5), ("0%", 0.0)]
)
def test_fractions(text: str | float, fraction: float) -> None:
    assert parse_fraction(text) == pytest.approx(fraction)


def test_fraction_maximum_and_negative() -> None:
    with pytest.raises(ValueError, match="above 1"):
        parse_fraction("150%", name="max_rate", maximum=1.0)
    with pytest.raises(ValueError, match="negative"):
        parse_fraction(-0.1)
    with pytest.raises(ValueError, match=r"accepted: a fraction \(0.1\) or a percentage"):
        parse_fraction("ten percent")


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_duration_numbers_round_trip(value: float) -> None:
    assert parse_duration(value) == value
    assert parse_duration(repr(value)) == value


@given(
    st.floats(min_value=1e-3, max_value=1e5, allow_nan=False),
    st.sampled_from([("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0)]),
)
def test_duration_units_scale(number: float, unit: tuple[str, float]) -> None:
    suffix, factor = unit
    assert math.isclose(parse_duration(f"{number!r}{suffix}"), number * factor, rel_tol=1e-12)


@given(st.text(max_size=12))
def test_duration_parser_never_crashes_on_text(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
    else:
        assert seconds >= 0 and math.isfinite(seconds)


@given(st.text(max_size=12))
def test_rate_parser_never_crashes_on_text(text: str) -> None:
    try:
        rate = parse_rate(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
    else:
        assert rate > 0 and math.isfinite(rate)


@given(st.text(max_size=12))
def test_fraction_parser_never_crashes_on_text(text: str) -> None:
    try:
        fraction = parse_fraction(text)
    except ValueError as exc:
        assert repr(text) in str(exc)
    else:
        assert fraction >= 0 and math.isfinite(fraction)


@given(st.integers(min_value=1, max_value=10**6), st.sampled_from(["", "/s"]))
def test_integer_rates_round_trip(rate: int, suffix: str) -> None:
    assert parse_rate(f"{rate}{suffix}") == rate


def test_dataplane_lists() -> None:
    assert parse_dataplanes("iptables,ebpf") == ("iptables", "ebpf")
    assert parse_dataplanes(" EBPF , iptables,ebpf ") == ("ebpf", "iptables")
    assert parse_dataplanes("all") == DATAPLANES
    assert parse_dataplanes(["nftables"]) == ("nftables",)
    with pytest.raises(
        ValueError, match=r"unknown dataplane 'bogus'; accepted: iptables, nftables, ipvs, ebpf"
    ):
        parse_dataplanes("iptables,bogus")
    with pytest.raises(ValueError, match="no dataplane"):
        parse_dataplanes(" , ")


@pytest.mark.parametrize(
    ("value", "total", "up", "expected"),
    [
        ("25%", 6, True, 2),
        ("25%", 6, False, 1),
        (2, 6, True, 2),
        ("0%", 3, True, 0),
        ("100%", 3, False, 3),
        ("25%", 3, True, 1),
        ("25%", 3, False, 0),
    ],
)
def test_int_or_percent_like_deployments(
    value: int | str, total: int, up: bool, expected: int
) -> None:
    assert resolve_int_or_percent(value, total, round_up=up, name="max_surge") == expected


@pytest.mark.parametrize("bad", ["-1", "25.5%", "a lot", -2, True])
def test_bad_int_or_percent(bad: object) -> None:
    with pytest.raises(ValueError, match="max_surge"):
        parse_int_or_percent(bad, name="max_surge")  # type: ignore[arg-type]


def test_service_times() -> None:
    assert ServiceTime.parse(None) is None
    assert ServiceTime.parse("5ms") == ServiceTime("constant", 0.005)
    lognormal = ServiceTime.parse("lognormal:5ms:0.6")
    assert lognormal == ServiceTime("lognormal", 0.005, 0.6)
    assert ServiceTime.parse(lognormal.spec) == lognormal
    exponential = ServiceTime.exponential("10ms")
    assert exponential.median == pytest.approx(0.010 * math.log(2))
    assert ServiceTime.parse(exponential.spec).median == pytest.approx(exponential.median)
    with pytest.raises(ValueError, match=r"service_time: cannot parse 'gamma:5ms'"):
        ServiceTime.parse("gamma:5ms")
    with pytest.raises(ValueError, match="service_time"):
        ServiceTime.parse("lognormal:fast")
    with pytest.raises(ValueError, match="sigma"):
        ServiceTime("lognormal", 0.005, -1.0)
