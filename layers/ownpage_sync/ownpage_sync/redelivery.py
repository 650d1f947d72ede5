"""What becomes of a RetryQueue message that failed: delivered again, or moved to the dead-letter queue.

SQS moves a message to the DeadLetterQueue instead of delivering it once it has been received
maxReceiveCount times, so a failure on that receive was the message's last attempt. The template gives
the RetryFunction that number as RETRY_MAX_RECEIVE_COUNT, so its log says which of the two happens
rather than promising a redelivery that will not come.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from ownpage_sync.errors import ConfigurationError

VARIABLE = "RETRY_MAX_RECEIVE_COUNT"
SQS_MAX_RECEIVE_COUNT = 1000  # the largest maxReceiveCount SQS accepts


@dataclass(frozen=True)
class Redelivery:
    """The RetryQueue's maxReceiveCount, when known."""

    max_receive_count: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Redelivery:
        raw = (os.environ if env is None else env).get(VARIABLE, "").strip()
        if not raw:
            return cls()
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(
                f"invalid configuration: {VARIABLE}: expected a whole number, got {raw!r}"
            ) from None
        if not 1 <= value <= SQS_MAX_RECEIVE_COUNT:
            raise ConfigurationError(
                f"invalid configuration: {VARIABLE}: must be between 1 and {SQS_MAX_RECEIVE_COUNT}, got {value}"
            )
        return cls(value)

    def is_last(self, receives: int) -> bool:
        """True when this receive was the last SQS allows: the message goes to the dead-letter queue next."""
        return self.max_receive_count is not None and receives >= self.max_receive_count

    def after_failure(self, receives: int) -> str:
        """What happens next to a message that failed on its `receives`-th receive, for the log."""
        if self.max_receive_count is None:
            return f"delivered again after the visibility timeout, unless receive {receives} was the queue's last"
        of = f"receive {receives} of {self.max_receive_count}"
        if self.is_last(receives):
            return f"moves to the dead-letter queue ({of} was the last)"
        return f"delivered again after the visibility timeout ({of})"
