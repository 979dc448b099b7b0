"""Latency-over-time plots (``--dataplane-plot DIR``): one PNG per test, a panel per dataplane.

Drawn from the report payloads (per-bin p50/p95/p99, errors, events, CPU per change), so it
works the same under pytest-xdist. matplotlib comes from the ``plot`` extra and is imported
only here, through its object API (no pyplot, no global backend state).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

from .. import _format as fmt
from .terminal import latency_unit, order

__all__ = ["MISSING_MATPLOTLIB", "file_name", "plot_test", "require_matplotlib"]

MISSING_MATPLOTLIB: Final = (
    "--dataplane-plot needs matplotlib, which is not installed: "
    "pip install 'pytest-dataplane[plot]'"
)

# How events are drawn: (colour, line style, width, labelled). Marks the test (or the
# cluster, for scale and rollout) sets are labelled; endpoint changes are many, so they are
# thin ticks; provider set-up is drawn faintly; pod life-cycle events are left out (the
# endpoint changes they cause are what the dataplane sees).
_STYLES: Final[dict[str, tuple[str, Any, float, bool]]] = {
    "scale": ("#7b3294", "--", 1.6, True),
    "scale-end": ("#7b3294", ":", 1.2, False),
    "rollout-start": ("#1a9641", "-", 1.6, True),
    "rollout-end": ("#1a9641", ":", 1.6, True),
    "endpoint-added": ("#2c7fb8", "-", 0.8, False),
    "endpoint-removed": ("#e66101", "-", 0.8, False),
    "deploy": ("#999999", "-.", 0.8, False),
    "background-services": ("#999999", "-.", 0.8, False),
    "background-programmed": ("#999999", ":", 0.8, False),
}
_HIDDEN: Final = ("pod-",)
_OTHER: Final[tuple[str, Any, float, bool]] = ("#555555", "-.", 1.4, True)
# Labels closer than this fraction of the time axis would overlap: later ones are dropped.
_LABEL_GAP: Final = 0.012
_LATENCY_SERIES: Final = (("p50", "#4575b4"), ("p95", "#f46d43"), ("p99", "#a50026"))


def require_matplotlib() -> None:
    """Raise ImportError with :data:`MISSING_MATPLOTLIB` when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(MISSING_MATPLOTLIB) from exc


def file_name(test: str) -> str:
    """A file name for a node id: ``tests/test_x.py::test_a`` -> ``test_x.test_a.png``."""
    path, _, name = test.rpartition("::")
    module = Path(path.split("::")[0]).stem if path else ""
    stem = f"{module}.{name}" if module else name
    if "::" in path:  # a class: keep its name
        stem = f"{module}.{path.split('::', 1)[1].replace('::', '.')}.{name}"
    stem = re.sub(r"[^A-Za-z0-9_.=-]+", "_", stem).strip("_.")[:150] or "test"
    return f"{stem}.png"


def _series(values: Sequence[float | None], scale: float) -> np.ndarray:
    return np.array([math.nan if v is None else v * scale for v in values], dtype=np.float64)


def _cpu_per_bin(cpu: dict[str, Any] | None, width: float, count: int) -> np.ndarray | None:
    timeline = (cpu or {}).get("timeline") or []
    if not timeline:
        return None
    seconds = np.zeros(count)
    for t, s in timeline:
        index = int(t // width)
        if 0 <= index < count and s is not None:
            seconds[index] += s
    return seconds / width


def _style(name: str) -> tuple[str, Any, float, bool] | None:
    if name.startswith(_HIDDEN):
        return None
    style: tuple[str, Any, float, bool] = _STYLES.get(name, _OTHER)
    return style


def _events(ax: Any, events: Sequence[dict[str, Any]], *, labels: bool, span: float) -> None:
    last_label = -math.inf
    for event in events:
        name, t = event["name"], event["t"]
        style = _style(name)
        if style is None:
            continue
        color, line, width, labelled = style
        faint = width < 1.0
        ax.axvline(
            t,
            color=color,
            linestyle=line,
            linewidth=width,
            alpha=0.5 if faint else 1.0,
            zorder=1 if faint else 3,
        )
        if not (labels and labelled) or t - last_label < _LABEL_GAP * span:
            continue
        last_label = t
        detail = event.get("detail") or {}
        extra = detail.get("replicas")
        ax.annotate(
            f"{name} {extra}" if extra is not None else name,
            xy=(t, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(3, -3),
            textcoords="offset points",
            rotation=90,
            va="top",
            ha="left",
            fontsize=8,
            color=color,
        )


def _title(payload: dict[str, Any], load: dict[str, Any]) -> str:
    p95 = (load.get("latency") or {}).get("p95") or {}
    estimate = p95.get("estimate")
    shown = fmt.seconds(estimate) if estimate is not None else "n/a"
    who = payload.get("dataplane") or "no dataplane"
    if load.get("label"):
        who += f" ({load['label']})"
    text = f"{who}: p95 {shown}"
    if p95.get("low") is not None and p95.get("high") is not None:
        text += f" [{fmt.seconds(p95['low'])}, {fmt.seconds(p95['high'])}]"
    text += f", n={fmt.count(int(load.get('completed') or 0))}"
    text += f", errors {fmt.count(int(load.get('errors') or 0))}"
    achieved, target = load.get("achieved_rate"), load.get("target_rate")
    if achieved is not None and target:
        text += f", {achieved:.0f}/{target:.0f} req/s"
    rules = ((payload.get("cluster") or {}).get("rule_count") or {}).get("total")
    if rules is not None:
        text += f", {fmt.count(int(rules))} KUBE- rules"
    return text


def plot_test(directory: Path, test: str, payloads: Sequence[dict[str, Any]]) -> Path | None:
    """Write ``directory/<test>.png`` for the dataplanes of one test; None when no payload of
    it has a load to draw."""
    from matplotlib.figure import Figure

    panels = [(p, p["loads"][0]) for p in order(payloads) if p.get("loads")]
    if not panels:
        return None
    unit, scale = latency_unit(payloads)
    span = _span(panels)
    with_cpu = any(((p.get("cluster") or {}).get("cpu") or {}).get("timeline") for p, _ in panels)
    ratios = [3.0, 1.1] * len(panels) if with_cpu else [3.0] * len(panels)
    figure = Figure(figsize=(11.5, 0.9 + sum(ratios) * 1.05), layout="constrained", dpi=110)
    grid = figure.add_gridspec(len(ratios), 1, height_ratios=ratios)
    shared_x: Any = None
    shared_y: Any = None
    # One CPU scale for every dataplane: separate scales would make 1 ms and 1 s look alike.
    shared_cpu: Any = None
    highest, lowest = 0.0, math.inf
    for i, (payload, load) in enumerate(panels):
        last = i == len(panels) - 1
        row = i * (2 if with_cpu else 1)
        ax = figure.add_subplot(grid[row], sharex=shared_x, sharey=shared_y)
        shared_x = shared_x or ax
        shared_y = shared_y or ax
        top, bottom = _draw_latency(ax, payload, load, unit=unit, scale=scale, span=span)
        highest, lowest = max(highest, top), min(lowest, bottom)
        _draw_errors(ax, load["bins"])
        if with_cpu:
            cpu_ax = figure.add_subplot(grid[row + 1], sharex=shared_x, sharey=shared_cpu)
            shared_cpu = shared_cpu or cpu_ax
            _draw_cpu(cpu_ax, payload, load, span=span)
            cpu_ax.tick_params(labelbottom=last)
        ax.tick_params(labelbottom=not with_cpu and last)
    _scale_latency(shared_y, highest, lowest)
    figure.axes[-1].set_xlabel(
        "seconds since the load started (requests binned by intended send time)"
    )
    handles = _legend_handles(panels)
    figure.legend(
        handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8
    )
    figure.suptitle(test, x=0.01, ha="left", fontsize=11)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name(test)
    figure.savefig(path)
    return path


_Panel = tuple[dict[str, Any], dict[str, Any]]


def _span(panels: Sequence[_Panel]) -> float:
    """The time axis's extent (bins and events), for spacing event labels."""
    times = [
        float(v)
        for _, load in panels
        for v in [*load["bins"]["t"], *(e["t"] for e in load.get("events") or [])]
    ]
    return max(times) - min(times) if times else 1.0


def _centres(bins: dict[str, Any]) -> tuple[np.ndarray, float]:
    """The bins' centre times and their width."""
    width = float(bins["width"])
    return np.asarray(bins["t"], dtype=np.float64) + width / 2, width


def _draw_latency(
    ax: Any, payload: dict[str, Any], load: dict[str, Any], *, unit: str, scale: float, span: float
) -> tuple[float, float]:
    """The p50-p99 band, the percentile lines, the title and the events of one dataplane;
    returns the highest and lowest positive latency drawn (0 and inf when none)."""
    bins = load["bins"]
    t, _ = _centres(bins)
    p50 = _series(bins["p50"], scale)
    p99 = _series(bins["p99"], scale)
    ax.fill_between(t, p50, p99, color="#fdae61", alpha=0.18, linewidth=0, step="mid")
    highest, lowest = 0.0, math.inf
    for name, color in _LATENCY_SERIES:
        values = _series(bins[name], scale)
        ax.plot(t, values, color=color, linewidth=1.4, drawstyle="steps-mid", label=name)
        finite = values[np.isfinite(values) & (values > 0)]
        if finite.size:
            highest = max(highest, float(finite.max()))
            lowest = min(lowest, float(finite.min()))
    ax.set_ylabel(f"latency ({unit})")
    ax.set_title(_title(payload, load), loc="left", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    _events(ax, load.get("events") or [], labels=True, span=span)
    return highest, lowest


def _draw_errors(ax: Any, bins: dict[str, Any]) -> None:
    """Errors and drops per bin as bars on a second axis, or a "no errors" note."""
    t, width = _centres(bins)
    errors = np.asarray(bins["errors"], dtype=np.float64)
    dropped = np.asarray(bins["dropped"], dtype=np.float64)
    if not (errors.any() or dropped.any()):
        ax.text(
            0.995,
            0.03,
            "no errors",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=8,
            color="#555555",
        )
        return
    twin = ax.twinx()
    twin.bar(t, errors, width=width * 0.9, color="#d7191c", alpha=0.35, label="errors")
    if dropped.any():
        twin.bar(t, dropped, bottom=errors, width=width * 0.9, color="#888888", alpha=0.35)
    twin.set_ylabel(f"errors per {width:g} s", color="#d7191c")
    twin.tick_params(axis="y", colors="#d7191c")
    twin.set_ylim(0, max(1.0, float((errors + dropped).max())) * 3)


def _draw_cpu(cpu_ax: Any, payload: dict[str, Any], load: dict[str, Any], *, span: float) -> None:
    """The dataplane's CPU seconds per bin spent on endpoint changes, under its latency."""
    t, width = _centres(load["bins"])
    cpu = (payload.get("cluster") or {}).get("cpu")
    per_bin = _cpu_per_bin(cpu, width, len(t))
    if per_bin is None:
        cpu_ax.text(
            0.5,
            0.5,
            "no per-change CPU data",
            transform=cpu_ax.transAxes,
            ha="center",
            va="center",
            fontsize=8,
            color="#555555",
        )
    else:
        cpu_ax.bar(t, per_bin, width=width * 0.9, color="#5e3c99", alpha=0.75)
        cpu_ax.text(
            0.995,
            0.92,
            f"{float(per_bin.sum()):.3g} s of CPU for endpoint changes",
            transform=cpu_ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="#5e3c99",
        )
    cpu_ax.set_ylabel("dataplane CPU\n(s per s)", fontsize=8)
    cpu_ax.grid(True, alpha=0.3)
    _events(cpu_ax, load.get("events") or [], labels=False, span=span)


def _scale_latency(shared_y: Any, highest: float, lowest: float) -> None:
    """A log scale when latencies span more than 30x (a stall beside a fast steady state),
    else a linear one from zero."""
    if highest > 0 and lowest < math.inf and highest / lowest > 30:
        shared_y.set_yscale("log")
    elif highest > 0:
        shared_y.set_ylim(0, highest * 1.15)


def _legend_handles(panels: Sequence[_Panel]) -> list[Any]:
    """The percentile lines, then each event kind drawn (styled ones first), then errors."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, linewidth=1.4, label=n) for n, c in _LATENCY_SERIES]
    seen = {e["name"] for _, load in panels for e in load.get("events") or []}
    for name in sorted(seen, key=lambda n: (n not in _STYLES, n)):
        style = _style(name)
        if style is not None:
            color, line, width, _ = style
            handles.append(
                Line2D([], [], color=color, linestyle=line, linewidth=max(width, 1.2), label=name)
            )
    if any(np.asarray(load["bins"]["errors"]).any() for _, load in panels):
        handles.append(Line2D([], [], color="#d7191c", alpha=0.5, linewidth=6, label="errors"))
    return handles
