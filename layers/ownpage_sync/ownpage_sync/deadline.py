"""The time a run has left: the Lambda's remaining time, a terminal's budget, and the run's lease."""

from __future__ import annotations

import time
from collections.abc import Callable


class Deadline:
    """Seconds left before the run must have stopped calling Ownpage.

    Further bounds can be added once the run knows them (its lease): the earliest one wins.
    """

    def __init__(self, remaining: Callable[[], float], margin: float = 0.0):
        self._remaining = remaining
        self.margin = margin
        self._bounds: list[Callable[[], float]] = []

    @classmethod
    def from_lambda_context(cls, context: object, margin: float) -> Deadline:
        get_ms = getattr(context, "get_remaining_time_in_millis", None)
        if get_ms is None:
            return cls.unlimited()
        return cls(lambda: get_ms() / 1000.0, margin)

    @classmethod
    def unlimited(cls) -> Deadline:
        return cls(lambda: float("inf"))

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        """A plain budget of `seconds` from now (the CLI's `retry --time-budget`)."""
        end = clock() + seconds
        return cls(lambda: end - clock())

    def bound_by(self, remaining: Callable[[], float]) -> None:
        """Also end when `remaining` (seconds, its own margin already taken off) reaches zero."""
        self._bounds.append(remaining)

    def remaining(self) -> float:
        """Usable seconds left (the margin already taken off); never negative."""
        left = self._remaining() - self.margin
        for bound in self._bounds:
            left = min(left, bound())
        return max(0.0, left)

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def earlier(self, seconds: float) -> Deadline:
        """A deadline `seconds` before this one (the reads' end, leaving the rest for writing)."""
        return Deadline(lambda: self.remaining() - seconds)
