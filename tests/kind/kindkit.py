"""Helpers shared by the kind provider's tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

FakeTools = Callable[..., Path]


def files_under(path: Path) -> list[str]:
    """Every path below ``path`` (relative), sorted; [] when it does not exist."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []
