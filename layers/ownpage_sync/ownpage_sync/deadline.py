"""The time a run has left: the Lambda's remaining time, or a plain budget on a terminal."""

from __future__ import annotations

from collections.abc import Callable


class Deadline:
    """Seconds left before the run must have stopped writing."""

    def __init__(self, remaining: Callable[[], float], margin: float = 0.0):
        self._remaining = remaining
        self.margin = margin

    @classmethod
    def from_lambda_context(cls, context: object, margin: float) -> Deadline:
        get_ms = getattr(context, "get_remaining_time_in_millis", None)
        if get_ms is None:
            return cls.unlimited()
        return cls(lambda: get_ms() / 1000.0, margin)

    @classmethod
    def unlimited(cls) -> Deadline:
        return cls(lambda: float("inf"))

    def remaining(self) -> float:
        """Usable seconds left (the margin already taken off); never negative."""
        return max(0.0, self._remaining() - self.margin)

    def expired(self) -> bool:
        return self.remaining() <= 0.0
