"""The small interfaces the sync logic talks to. Adapters implement them; tests use fakes or the real
(emulated) services. The subscriber source's port is in sources/base.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ownpage_sync.models import Operation, OwnpageSubscriber

Progress = Callable[[int], None]  # called with how many items were just done


@dataclass(frozen=True, slots=True)
class Rejection:
    """An address Ownpage refused as invalid: permanent, reported, never retried."""

    email: str  # raw, for the export file only; mask before logging
    reason: str  # Ownpage's words with the address removed


@dataclass(frozen=True)
class UpsertResult:
    """Ownpage's summary of one POST .../subscribers, checked by the client."""

    sent: int
    summary: Mapping[str, Any] = field(default_factory=dict)
    rejected: tuple[Rejection, ...] = ()


@dataclass(frozen=True)
class SubscriberCounts:
    subscribed: int
    unsubscribed: int
    causes: Mapping[str, int] = field(default_factory=dict)


class OwnpageLists(Protocol):
    """What the sync needs from Ownpage's Lists API (ownpage.OwnpageClient implements it)."""

    def iter_subscribers(self, list_id: int, progress: Progress | None = None) -> Iterator[OwnpageSubscriber]:
        """Every row of the list (status=all), each address once."""
        ...

    def get_subscriber(self, list_id: int, email: str) -> OwnpageSubscriber | None:
        """One address's row (search + exact=true), or None when Ownpage does not know it."""
        ...

    def count(self, list_id: int) -> SubscriberCounts: ...

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
        """One POST of at most 20,000 operations. Raises OwnpageError subclasses."""
        ...


@dataclass(frozen=True)
class Failure:
    """Why operations could not be applied in this run: goes into the retry message."""

    kind: str  # OwnpageError.kind, or "deadline"
    reason: str  # no addresses, no tokens
    status: int | None = None
    attempts: int = 1
    first_failed_at: datetime | None = None
    last_attempt_at: datetime | None = None


class FailedOperationsSink(Protocol):
    """Where operations still failing after in-run retries go (the SQS RetryQueue)."""

    def put(self, list_id: int, run_id: str, operations: Sequence[Operation], failure: Failure) -> int:
        """Store the operations durably; return how many messages were written.

        Raises OwnpageSyncError if they could not be stored: the caller must never drop them silently.
        """
        ...


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    started_at: datetime
    ended_at: datetime | None
    outcome: str
    counts: Mapping[str, int] = field(default_factory=dict)


class RunLedger(Protocol):
    """One run at a time, and the history of runs (a small DynamoDB table in the stack)."""

    def acquire(self, run_id: str, lease_seconds: int) -> None:
        """Take the lease or raise RunInProgress when a live one is held by another run."""
        ...

    def release(self, run_id: str, outcome: str, counts: Mapping[str, int]) -> None:
        """Record the run's end in the history and free the lease."""
        ...

    def last_successful_source_count(self) -> int | None: ...

    def history(self, limit: int = 20) -> list[RunRecord]: ...
