"""The small interfaces the sync logic talks to. Adapters implement them; tests use fakes or the real
(emulated) services. The subscriber source's port is in sources/base.py."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from ownpage_sync.models import Operation, OwnpageSubscriber
from ownpage_sync.spellings import SpellingSnapshot

Progress = Callable[[int], None]  # called with how many items were just done


class ProgressReporter(Protocol):
    """Progress of the long stages, for a terminal. The Lambda passes none."""

    def stage(self, description: str, total: int | None) -> AbstractContextManager[Progress]: ...


def stage(
    progress: ProgressReporter | None, description: str, total: int | None
) -> AbstractContextManager[Progress | None]:
    """The reporter's stage, or a stage that reports nothing."""
    return nullcontext(None) if progress is None else progress.stage(description, total)


@dataclass(frozen=True, slots=True)
class Rejection:
    """An address Ownpage refused as invalid: permanent, reported, never retried."""

    email: str  # raw, for the export file only; mask before logging
    reason: str  # Ownpage's words with the address removed


@dataclass(frozen=True)
class OwnpageLookup:
    """What exact searches found for some keys. A key is `undecided` when its search could not be
    settled (every page full of other rows, as from a server ignoring `exact` or `search`): not finding
    a row for it proves nothing."""

    rows: dict[str, list[OwnpageSubscriber]]  # key -> the rows found for it (every spelling)
    undecided: frozenset[str] = frozenset()


@dataclass(frozen=True)
class UpsertResult:
    """Ownpage's summary of one POST .../subscribers, checked by the client."""

    sent: int
    summary: Mapping[str, Any] = field(default_factory=dict)
    rejected: tuple[Rejection, ...] = ()
    attempts: int = 1  # how many times the POST was sent: past 1, an earlier send may have applied it


@dataclass(frozen=True)
class SubscriberCounts:
    subscribed: int
    unsubscribed: int
    causes: Mapping[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.subscribed + self.unsubscribed

    @property
    def unsubscribed_at_least(self) -> int:
        """The unsubscribed rows the count vouches for: `unsubscribed`, or the sum of its `cause`
        breakdown when that says more (two fields of one answer, either may lag)."""
        return max(self.unsubscribed, sum(self.causes.values()))


class OwnpageLists(Protocol):
    """What the sync needs from Ownpage's Lists API (ownpage.OwnpageClient implements it)."""

    def count(self, list_id: int) -> SubscriberCounts:
        """Ownpage's counts; ConfigurationError for an unknown list, OwnpageAuthError for bad credentials."""
        ...

    def read_pages(
        self,
        list_id: int,
        *,
        status: str = "all",
        fields: Sequence[str] = (),
        expected_rows: int,
        progress: Progress | None = None,
    ) -> Iterator[Sequence[OwnpageSubscriber]]:
        """Every page of the list, in any order; rows may repeat (the caller folds them).
        `expected_rows` (Ownpage's count) bounds the read: a server that never ends one is stopped."""
        ...

    def find(self, list_id: int, spellings: Iterable[str], fields: Sequence[str] = ()) -> list[OwnpageSubscriber]:
        """The rows whose canonical key is one of these spellings' keys (exact search, checked)."""
        ...

    def find_many(self, list_id: int, wanted: Mapping[str, Sequence[str]], fields: Sequence[str] = ()) -> OwnpageLookup:
        """`find` for many keys at once: key -> spellings to search for."""
        ...

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


@dataclass(frozen=True)
class QueueReceipt:
    """What a sink stored: the first `queued` operations, in `messages` messages. The rest found no
    time left before the sink's deadline: the caller leaves them to the next run."""

    queued: int
    messages: int


class FailedOperationsSink(Protocol):
    """Where operations still failing after in-run retries go (the SQS RetryQueue)."""

    def put(
        self,
        list_id: int,
        run_id: str,
        operations: Sequence[Operation],
        failure: Failure,
        run_started_at: datetime | None = None,
    ) -> QueueReceipt:
        """Store the operations durably, in order, as long as its deadline allows.

        Raises RetryQueueError if the queue refused them: the caller must never drop them silently.
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

    def acquire(self, run_id: str, lease_seconds: int) -> datetime:
        """Take (or extend) the lease; return when it ends. RunInProgress when another run holds it."""
        ...

    def release(self, run_id: str, outcome: str, counts: Mapping[str, int]) -> None:
        """Record the run's end in the history and free the lease."""
        ...

    def last_successful_source_count(self) -> int | None: ...

    def last_converged_start(self) -> datetime | None:
        """When the newest converged run started (a retry message older than that is superseded)."""
        ...

    def history(self, limit: int = 20) -> list[RunRecord]: ...

    def put_spellings(self, snapshot: SpellingSnapshot) -> None:
        """Keep what the last complete read saw of other spellings (spellings.py), replacing the last."""
        ...

    def spellings(self) -> SpellingSnapshot | None:
        """The last complete read's snapshot, if any."""
        ...

    def reserve_fast_lane_writes(self, at: datetime, writes: int, budget: int) -> bool:
        """Count `writes` against the fast lane's budget for the clock hour of `at`, all or none:
        False (nothing counted) when the hour's writes would pass `budget`."""
        ...
