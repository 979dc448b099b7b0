"""Collects per-request rows into compact arrays with bounded memory.

Pure computation (numpy, hdrh), fed in batches by the engines or by the reader of a worker's
stream. Every row is counted; raw rows are kept up to ``max_rows`` and beyond that replaced by
a uniform random sample (reservoir sampling, algorithm R, vectorised per batch); every
completed request's latency also goes into an HDR histogram, so percentiles of a sampled run
stay exact to three significant digits.

Memory: 17 bytes per kept row (float64 send, float32 latency, float32 lag, uint8 outcome),
so the default cap of 1,000,000 rows is 17 MB whatever the run's length, plus the histogram
(about 0.2 MB: 1 µs to 1 hour at 3 significant digits).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._outcomes import OK, OUTCOMES
from ._timeline import Timeline

__all__ = ["DEFAULT_MAX_ROWS", "HISTOGRAM_MAX_US", "Recorder", "new_histogram", "record_batch"]

DEFAULT_MAX_ROWS: Final = 1_000_000
#: Histogram range, in microseconds: 1 µs to one hour.
HISTOGRAM_MAX_US: Final = 3_600_000_000

F64 = npt.NDArray[np.float64]
F32 = npt.NDArray[np.float32]
U8 = npt.NDArray[np.uint8]


def new_histogram() -> Any:
    """An empty HDR histogram of latencies in microseconds (1 µs to 1 h, 3 digits)."""
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(1, HISTOGRAM_MAX_US, 3)


def record_batch(histogram: Any, micros: npt.NDArray[np.int64]) -> None:
    """Record many values at once; equivalent to ``record_value`` on each, but vectorised.

    Uses the bucket arithmetic of HdrHistogram (the same formula as
    ``HdrHistogram.get_counts_array_index``) and adds to its counts array in place. Values
    outside the histogram's range are clipped to it (a latency over an hour is an hour).
    """
    if micros.size == 0:
        return
    values = np.clip(micros.astype(np.int64), 0, int(histogram.highest_trackable_value))
    masked = values | np.int64(histogram.sub_bucket_mask)
    # frexp's exponent is the bit length, exactly, for integers below 2**53.
    pow2ceiling = np.frexp(masked.astype(np.float64))[1].astype(np.int64)
    bucket = (
        pow2ceiling - histogram.unit_magnitude - (histogram.sub_bucket_half_count_magnitude + 1)
    )
    sub_bucket = values >> (bucket + histogram.unit_magnitude)
    index = ((bucket + 1) << histogram.sub_bucket_half_count_magnitude) + (
        sub_bucket - histogram.sub_bucket_half_count
    )
    counts = np.ctypeslib.as_array(histogram.counts)
    added = np.bincount(index, minlength=counts.size)
    if added.size > counts.size:
        raise ValueError("histogram index out of range (values were not clipped)")
    counts += added.astype(counts.dtype)
    histogram.total_count += int(values.size)
    histogram.min_value = min(histogram.min_value, int(values.min()))
    histogram.max_value = max(histogram.max_value, int(values.max()))


class Recorder:
    """Accumulates rows; :meth:`timeline`, :meth:`counts` and :attr:`histogram` read them back.

    Not thread-safe: callers that feed it from several threads hold a lock.
    """

    def __init__(
        self,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        seed: int | None = None,
        expected_rows: int = 0,
    ) -> None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"max_rows: {max_rows!r} is not a positive integer")
        self.max_rows = max_rows
        self.histogram: Any = new_histogram()
        self._rng = np.random.default_rng(seed)
        self._counts = np.zeros(len(OUTCOMES), np.int64)
        self._seen = 0
        self._kept = 0
        # Rows live in four preallocated columns, sized for the expected run (capped at
        # max_rows) and doubled when a run has more rows than expected: large arrays are
        # mapped pages that return to the system when replaced, and unfilled capacity
        # costs no memory until written.
        self._columns = self._allocate(min(max(expected_rows, 1024), max_rows))
        self._finished = False

    @staticmethod
    def _allocate(size: int) -> tuple[F64, F32, F32, U8]:
        return (
            np.empty(size, np.float64),
            np.empty(size, np.float32),
            np.empty(size, np.float32),
            np.empty(size, np.uint8),
        )

    @property
    def seen(self) -> int:
        """Rows added so far (all of them, kept or not)."""
        return self._seen

    @property
    def sampled(self) -> bool:
        """True once more rows arrived than are kept."""
        return self._seen > self.max_rows

    def counts(self) -> dict[str, int]:
        """Rows per outcome name, over every row added."""
        return {name: int(self._counts[i]) for i, name in enumerate(OUTCOMES)}

    def add(self, send: F64, latency: F32, lag: F32, outcome: U8) -> None:
        """Add one batch of rows (arrays of equal length; copied, the caller keeps its own)."""
        if self._finished:
            raise RuntimeError("rows added after the recorder's timeline was taken")
        n = int(send.size)
        if not n == latency.size == lag.size == outcome.size:
            raise ValueError(
                f"batch arrays differ in length: {send.size}, {latency.size}, "
                f"{lag.size}, {outcome.size}"
            )
        if n == 0:
            return
        if int(outcome.max()) >= len(OUTCOMES):
            raise ValueError(f"outcome code {int(outcome.max())} is not one of {OUTCOMES}")
        self._counts += np.bincount(outcome, minlength=len(OUTCOMES))
        ok = outcome == OK
        if ok.any():
            record_batch(
                self.histogram, np.rint(latency[ok].astype(np.float64) * 1e6).astype(np.int64)
            )
        batch: tuple[Any, ...] = (send, latency, lag, outcome)
        free = self.max_rows - self._kept
        if free > 0:
            take = min(free, n)
            self._append(tuple(column[:take] for column in batch))
            if take == n:
                return
            batch = tuple(column[take:] for column in batch)
        self._sample_into(self._columns, batch)

    def _append(self, batch: tuple[Any, ...]) -> None:
        n = int(batch[0].size)
        capacity = int(self._columns[0].size)
        if self._kept + n > capacity:
            grown = self._allocate(min(max(2 * capacity, self._kept + n), self.max_rows))
            fresh: tuple[Any, ...] = grown
            stale: tuple[Any, ...] = self._columns
            for target, source in zip(fresh, stale, strict=True):
                target[: self._kept] = source[: self._kept]
            self._columns = grown
        columns: tuple[Any, ...] = self._columns
        for target, source in zip(columns, batch, strict=True):
            target[self._kept : self._kept + n] = source
        self._kept += n
        self._seen += n

    def _sample_into(self, reservoir: tuple[Any, ...], batch: tuple[Any, ...]) -> None:
        n = int(batch[0].size)
        # Algorithm R: row with global index g replaces slot j ~ U{0..g} when j < max_rows.
        g = np.arange(self._seen, self._seen + n, dtype=np.int64)
        j = self._rng.integers(0, g + 1)
        hit = np.nonzero(j < self.max_rows)[0]
        self._seen += n
        if hit.size == 0:
            return
        # Sequentially, the last row to hit a slot wins; keep only that one per slot.
        slots_rev = j[hit][::-1]
        slots, first_rev = np.unique(slots_rev, return_index=True)
        rows = hit[::-1][first_rev]
        for target, source in zip(reservoir, batch, strict=True):
            target[slots] = source[rows]

    def timeline(self) -> Timeline:
        """The kept rows as a Timeline sorted by intended send time.

        Ends the recording: the recorder hands its arrays over (sorted column by column, so
        that at most one extra column exists at a time) and holds no rows afterwards.
        """
        if self._finished:
            raise RuntimeError("the recorder's timeline was already taken")
        self._finished = True
        kept = self._kept
        full_send, full_latency, full_lag, full_outcome = self._columns
        self._columns = self._allocate(0)
        send, latency, lag, outcome = (
            full_send[:kept],
            full_latency[:kept],
            full_lag[:kept],
            full_outcome[:kept],
        )
        del full_send, full_latency, full_lag, full_outcome
        order = np.argsort(send, kind="stable")
        send = send[order]
        latency = latency[order]
        lag = lag[order]
        outcome = outcome[order]
        return Timeline(send, latency, lag, outcome)
