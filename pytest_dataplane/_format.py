"""Human formatting of seconds, rates and counts for messages and tables."""

from __future__ import annotations

import math
from collections.abc import Sequence


def seconds(value: float) -> str:
    """``0.000250`` -> ``'250 µs'``, ``0.0401`` -> ``'40.1 ms'``, ``1.5`` -> ``'1.50 s'``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    magnitude = abs(value)
    if magnitude == 0:
        return "0 s"
    if magnitude < 1e-3:
        return f"{value * 1e6:.3g} µs"
    if magnitude < 1.0:
        return f"{value * 1e3:.3g} ms"
    if magnitude < 100:
        return f"{value:.3g} s"
    return f"{value:.0f} s"


def rate(value: float) -> str:
    """Requests per second, e.g. ``'300/s'`` or ``'1.25k/s'``."""
    if value >= 10_000:
        return f"{value / 1000:.1f}k/s"
    if value >= 1000:
        return f"{value / 1000:.2f}k/s"
    return f"{value:.4g}/s"


def count(value: int) -> str:
    """Thousands separators: ``12345`` -> ``'12,345'``."""
    return f"{value:,}"


def percent(value: float) -> str:
    """A fraction as a percentage with sensible precision: ``0.0012`` -> ``'0.12%'``."""
    if value == 0:
        return "0%"
    if abs(value) >= 0.1:
        return f"{value * 100:.1f}%"
    return f"{value * 100:.2g}%"


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]
) -> list[str]:
    """Rows of cells aligned under ``headers``; ``right[i]`` right-aligns column ``i``."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if right[i] else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(row) for row in rows)
    return out
