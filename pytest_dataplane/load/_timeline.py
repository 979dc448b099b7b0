"""The rows of a load run: one per scheduled request, in compact arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ._outcomes import OUTCOMES

__all__ = ["Timeline"]


@dataclass(frozen=True, eq=False)
class Timeline:
    """One row per scheduled request, in intended-send order.

    ``send``: intended send time, seconds since the run's start; ``latency``: seconds from the
    intended send time to the response (or to the error; NaN for dropped requests);
    ``lag``: actual minus intended send time (NaN for dropped); ``outcome``: index into
    :data:`OUTCOMES`.
    """

    send: npt.NDArray[np.float64]
    latency: npt.NDArray[np.float32]
    lag: npt.NDArray[np.float32]
    outcome: npt.NDArray[np.uint8]

    def __post_init__(self) -> None:
        sizes = {self.send.size, self.latency.size, self.lag.size, self.outcome.size}
        if len(sizes) != 1:
            raise ValueError(f"timeline arrays differ in length: {sorted(sizes)}")

    def __len__(self) -> int:
        return int(self.send.size)

    @classmethod
    def empty(cls) -> Timeline:
        return cls(
            np.empty(0, np.float64),
            np.empty(0, np.float32),
            np.empty(0, np.float32),
            np.empty(0, np.uint8),
        )

    def select(self, mask: npt.NDArray[np.bool_]) -> Timeline:
        return Timeline(self.send[mask], self.latency[mask], self.lag[mask], self.outcome[mask])

    def outcome_names(self) -> list[str]:
        """Outcome of each request as a string (for reports; allocates)."""
        names = np.array(OUTCOMES, dtype=object)
        return list(names[self.outcome])
