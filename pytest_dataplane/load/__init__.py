"""Open-loop HTTP load generation with latency measured from intended send times.

``run(url, rate=..., duration=...)`` is a blocking run; the ``load`` fixture runs in the
background (:class:`LoadRun`); ``duet(baseline_url, candidate_url, ...)`` and
``load.duet(...)`` drive two targets from one interleaved schedule. Names load on first
use: the worker process imports this package and should not pay for numpy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._api import run
    from ._duet import DuetResult, DuetRun, duet
    from ._fixture import LoadFactory
    from ._outcomes import OUTCOMES
    from ._result import LoadResult
    from ._run import LoadRun
    from ._timeline import Timeline

__all__ = [
    "OUTCOMES",
    "DuetResult",
    "DuetRun",
    "LoadFactory",
    "LoadResult",
    "LoadRun",
    "Timeline",
    "duet",
    "run",
]

_LAZY = {
    "OUTCOMES": "._outcomes",
    "LoadResult": "._result",
    "Timeline": "._timeline",
    "run": "._api",
    "duet": "._duet",
    "DuetResult": "._duet",
    "DuetRun": "._duet",
    "LoadRun": "._run",
    "LoadFactory": "._fixture",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_dataplane.load' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
