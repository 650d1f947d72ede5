"""When to retry a call to Ownpage, and how long to wait first.

Capped exponential backoff with full jitter, `Retry-After` honoured, and never a sleep that would
end past the run's deadline: work that cannot be retried in time goes to the retry queue instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import NamedTuple

from ownpage_sync.settings import OwnpageSettings

# Beyond this, a server asking us to come back later is treated as down for this run: the work is
# queued rather than held in a sleeping Lambda (and a CLI run is not frozen for an hour).
MAX_RETRY_AFTER = 300.0


@dataclass(frozen=True)
class RetryPolicy:
    """How many calls one request may take and how the waits between them grow."""

    max_attempts: int = 6
    base: float = 0.5
    cap: float = 20.0
    max_retry_after: float = MAX_RETRY_AFTER

    @classmethod
    def from_settings(cls, settings: OwnpageSettings) -> RetryPolicy:
        return cls(max_attempts=settings.max_attempts, base=settings.backoff_base, cap=settings.backoff_cap)

    def ceiling(self, attempt: int) -> float:
        """The longest backoff after failed attempt number `attempt` (1-based): min(cap, base * 2^(attempt-1))."""
        exponent = min(max(attempt - 1, 0), 64)  # 2**64 * base already exceeds any sane cap
        return min(self.cap, self.base * 2.0**exponent)

    def backoff(self, attempt: int, rng: Callable[[], float]) -> float:
        """Full jitter: uniform in [0, ceiling). Spreads the retries of many clients after one outage."""
        return self.ceiling(attempt) * min(max(rng(), 0.0), 1.0)

    def decide(self, attempt: int, retry_after: float | None, remaining: float, rng: Callable[[], float]) -> Decision:
        """Whether to try again after failed attempt number `attempt` (1-based), and after how long.

        Gives up when the attempts are spent, when the server asks for more than `max_retry_after`,
        or when the wait would not end strictly before the deadline (`remaining` seconds away).
        """
        if attempt >= self.max_attempts:
            return Decision(None, f"gave up after {attempt} attempt(s)")
        wait = self.backoff(attempt, rng)
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return Decision(None, f"Retry-After of {retry_after:g}s is beyond {self.max_retry_after:g}s")
            wait = max(wait, retry_after)
        if wait >= remaining:
            return Decision(None, f"a {wait:.2f}s wait would pass the deadline ({remaining:.2f}s left)")
        return Decision(wait, "retrying")


class Decision(NamedTuple):
    """`wait` seconds before the next attempt, or None to give up; `why` is safe to log."""

    wait: float | None
    why: str


def parse_retry_after(value: str | None, now: Callable[[], datetime] | None = None) -> float | None:
    """A `Retry-After` header (delay in seconds or an HTTP-date) as seconds from now; None if absent or unreadable."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return seconds
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000" means UTC with no claim about the local zone
        moment = moment.replace(tzinfo=UTC)
    current = now() if now is not None else datetime.now(UTC)
    return max(0.0, (moment - current).total_seconds())
