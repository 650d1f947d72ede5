"""Applies operations to Ownpage in batches, and decides where every operation ends up.

Each operation ends in exactly one bucket: applied, rejected (Ownpage refused the address: permanent,
reported), queued (put on the retry queue), deferred (not applied and not queued in the time left:
the next run plans it again) or failed (could be neither applied nor queued: reported in full, the
run fails). Nothing is ever dropped silently.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ownpage_sync.deadline import Deadline
from ownpage_sync.emails import mask_email
from ownpage_sync.errors import OwnpageAuthError, OwnpageError, OwnpageRejected, RetryQueueError
from ownpage_sync.models import Action, Operation
from ownpage_sync.ports import FailedOperationsSink, Failure, OwnpageLists, Progress, Rejection
from ownpage_sync.values import parse_count

log = logging.getLogger(__name__)

# After this many consecutive batches failed for a transient reason, Ownpage is taken to be down: the
# breaker opens and later batches go straight to the retry queue, except one probe batch once the
# probe interval has passed (doubling after each failed probe): Ownpage back a minute later gets the
# rest of the run's writes, not a queue of a million operations.
BREAKER_THRESHOLD = 3
FIRST_PROBE_AFTER = 10.0
MAX_PROBE_INTERVAL = 120.0
# Extra calls allowed per batch to isolate invalid rows Ownpage refused the batch for without
# naming them: enough to find a few bad rows in a 5,000-row batch by bisection.
BISECT_BUDGET = 64
SUMMARY_FIELDS = (
    "nb_created",
    "nb_subscribed",
    "nb_unsubscribed",
    "nb_data_changed",
    "duplicate_emails_count",
    "duplicate_guid_count",
)
# Entries Ownpage says it ignored (ownpage-api.md): an address or a guid another entry of the payload has.
IGNORED_FIELDS = ("duplicate_emails_count", "duplicate_guid_count")
_SPLITTABLE = (400, 413)  # whole-batch refusals that bisection can narrow down


@dataclass
class BatchOutcome:
    index: int
    size: int
    status: str  # applied | partly_rejected | partly_applied | queued | deferred | failed
    error_kind: str | None = None
    reason: str | None = None
    rejected: int = 0
    calls: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass
class ApplyOutcome:
    applied: Counter[str] = field(default_factory=Counter)  # by action
    rejected: list[Rejection] = field(default_factory=list)
    queued: int = 0
    queued_messages: int = 0
    deferred: int = 0
    failed_operations: list[Operation] = field(default_factory=list)
    batches: list[BatchOutcome] = field(default_factory=list)
    ownpage_summary: Counter[str] = field(default_factory=Counter)
    probes: int = 0
    # Of `rejected`, unsubscribes: a reader gone from the source whom Ownpage still holds subscribed.
    refused_unsubscribes: int = 0

    @property
    def applied_total(self) -> int:
        return sum(self.applied.values())

    unaccounted: int = 0  # entries a summary's counts leave out: neither applied, ignored nor refused
    # Writes Ownpage's summary shows did not reach the row read: unsubscribes that changed no row
    # (`nb_unsubscribed` short of them) and rows created by writes that create none (`nb_created` past
    # the new addresses). The row written to was another (a case-folding Ownpage's other spelling, a
    # domain it keeps in IDNA), or it changed since the read.
    off_target: int = 0

    @property
    def ignored(self) -> int:
        """Entries Ownpage answered it ignored as duplicates (an address, a guid), left out of its
        counts altogether, or written to another row than the one read: not written as planned."""
        return sum(self.ownpage_summary[name] for name in IGNORED_FIELDS) + self.unaccounted + self.off_target

    @property
    def converged(self) -> bool:
        """Everything planned is now in Ownpage (rejected addresses are permanent and reported): nothing
        queued, deferred or failed, and nothing Ownpage ignored as a duplicate (the next run sends it again)."""
        return not (self.queued or self.deferred or self.failed_operations or self.ignored)


@dataclass
class _Sent:
    """What one batch's calls achieved: applied and rejected operations, and what is left unsent."""

    applied: list[Operation] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    left: list[Operation] = field(default_factory=list)
    error: OwnpageError | None = None
    calls: int = 0


class _Breaker:
    def __init__(self, clock: Callable[[], float]):
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.interval = FIRST_PROBE_AFTER
        self.permanent = False

    def allows(self) -> tuple[bool, bool]:
        """(may call, is a probe)."""
        if self.opened_at is None:
            return True, False
        if self.permanent or self.clock() - self.opened_at < self.interval:
            return False, False
        return True, True

    def succeeded(self) -> None:
        self.failures, self.opened_at, self.interval = 0, None, FIRST_PROBE_AFTER

    def failed(self, exc: OwnpageError, probe: bool) -> None:
        if isinstance(exc, OwnpageAuthError):
            # Every later batch would fail the same way until someone fixes the secret.
            self.permanent, self.opened_at = True, self.clock()
            return
        if not exc.transient:
            return
        self.failures += 1
        if probe:
            self.opened_at, self.interval = self.clock(), min(MAX_PROBE_INTERVAL, self.interval * 2)
        elif self.failures >= BREAKER_THRESHOLD and self.opened_at is None:
            self.opened_at = self.clock()
            log.warning(
                "Ownpage looks down: later batches are queued until a probe succeeds", extra={"failures": self.failures}
            )


class _Applier:
    def __init__(
        self,
        api: OwnpageLists,
        list_id: int,
        deadline: Deadline,
        sink: FailedOperationsSink | None,
        run_id: str,
        run_started_at: datetime | None,
        progress: Progress | None,
        clock: Callable[[], float],
    ):
        self.api, self.list_id, self.deadline = api, list_id, deadline
        self.sink, self.run_id, self.run_started_at, self.progress = sink, run_id, run_started_at, progress
        self.outcome = ApplyOutcome()
        self.breaker = _Breaker(clock)

    def run(self, operations: Sequence[Operation], batch_size: int) -> ApplyOutcome:
        for index, start in enumerate(range(0, len(operations), batch_size)):
            batch = operations[start : start + batch_size]
            may_call, probe = self.breaker.allows()
            if self.deadline.expired():
                self._set_aside(index, batch, Failure("deadline", "the run's time ran out before this batch"))
            elif not may_call:
                why = "Ownpage refused the credentials" if self.breaker.permanent else "Ownpage looks down"
                reason = f"not sent: {why} (circuit open after {self.breaker.failures} failed batches)"
                self._set_aside(index, batch, Failure("unavailable", reason))
            else:
                self.outcome.probes += probe
                self._apply(index, batch, probe)
            if self.progress is not None:
                self.progress(len(batch))
        return self.outcome

    def _apply(self, index: int, batch: Sequence[Operation], probe: bool) -> None:
        first_failed_at = datetime.now(UTC)
        sent = self._send(batch)
        outcome = self.outcome
        outcome.applied.update(op.action.value for op in sent.applied)
        outcome.rejected.extend(sent.rejected)
        if sent.rejected:
            leaving = {op.email for op in batch if op.action == Action.UNSUBSCRIBE}
            outcome.refused_unsubscribes += sum(rejection.email in leaving for rejection in sent.rejected)
        for rejection in sent.rejected:
            log.warning(
                "address rejected by Ownpage", extra={"email": mask_email(rejection.email), "reason": rejection.reason}
            )
        if sent.error is None:
            self.breaker.succeeded()
            status = "partly_rejected" if sent.rejected else "applied"
            outcome.batches.append(
                BatchOutcome(index, len(batch), status, rejected=len(sent.rejected), calls=sent.calls)
            )
            return
        exc = sent.error
        self.breaker.failed(exc, probe)
        if sent.applied or sent.rejected:
            # Part of the batch went through before the failure: that stays counted.
            outcome.batches.append(
                BatchOutcome(
                    index, len(batch) - len(sent.left), "partly_applied", rejected=len(sent.rejected), calls=sent.calls
                )
            )
        log.warning(
            "batch failed after retries",
            extra={
                "batch": index,
                "size": len(batch),
                "not_applied": len(sent.left),
                "error_kind": exc.kind,
                "status": exc.status,
                "probe": probe,
            },
        )
        failure = Failure(
            kind=exc.kind,
            reason=exc.reason,
            status=exc.status,
            attempts=int(getattr(exc, "attempts", 1)),
            first_failed_at=first_failed_at,
            last_attempt_at=datetime.now(UTC),
        )
        self._set_aside(index, sent.left, failure)

    def _send(self, batch: Sequence[Operation]) -> _Sent:
        """POST the batch; on a whole-batch 400, drop the rows Ownpage names and re-send the rest, or
        bisect when it names none (so too for per-row errors naming no row). Every call counts against
        the budget; what the budget or a failure leaves unsent is returned in `left`, with everything
        already applied kept."""
        sent = _Sent()
        parts: list[list[Operation]] = [list(batch)]
        calls_left = 1 + BISECT_BUDGET
        refusal: OwnpageRejected | None = None
        posted: set[int] = set()  # operations an earlier answered call of this batch carried (applied, maybe)
        while parts:
            part = parts.pop()
            if calls_left == 0 or sent.error is not None:
                sent.left.extend(part)
                continue
            calls_left -= 1
            sent.calls += 1
            try:
                result = self.api.upsert(self.list_id, part)
            except OwnpageRejected as exc:
                if exc.status not in _SPLITTABLE and not exc.rejected_emails:
                    sent.error = exc
                    sent.left.extend(part)
                    continue
                refusal = exc
                named = set(exc.rejected_emails) & {op.email for op in part}
                if named:
                    sent.rejected.extend(Rejection(op.email, exc.reason) for op in part if op.email in named)
                    rest = [op for op in part if op.email not in named]
                    if rest:
                        parts.append(rest)
                elif len(part) == 1:
                    sent.rejected.append(Rejection(part[0].email, exc.reason))
                else:
                    middle = len(part) // 2
                    parts.extend([part[middle:], part[:middle]])  # left half first
                continue
            except OwnpageError as exc:
                sent.error = exc
                sent.left.extend(part)
                continue
            first_sent = [op for op in part if id(op) not in posted]
            posted.update(map(id, part))
            counts = {
                name: parse_count(result.summary.get(name)) or 0 for name in SUMMARY_FIELDS if name in result.summary
            }
            self.outcome.ownpage_summary.update(counts)
            ignored = {name: counts.get(name, 0) for name in IGNORED_FIELDS}
            if any(ignored.values()):
                log.warning(
                    "Ownpage ignored entries of a batch as duplicates: the run is not converged, the next run sends them again",
                    extra={"size": len(part), **ignored},
                )
            refused = {rejection.email for rejection in result.rejected}
            applied = parse_count(result.summary.get("unique_emails_count"))
            if applied is not None:
                self._count_unaccounted(len(part), len(result.rejected), applied, sum(ignored.values()))
            if "" in refused:
                # Rows refused without saying which: the applied ones cannot be told apart from them.
                # The halves are sent again (idempotent) until each refusal has its row.
                if len(part) <= len(result.rejected):
                    reason = next(r.reason for r in result.rejected if not r.email)
                    sent.rejected.extend(Rejection(op.email, reason) for op in part)
                    continue
                refusal = refusal or OwnpageRejected("Ownpage refused rows of a batch without naming them")
                middle = len(part) // 2
                parts.extend([part[middle:], part[:middle]])
                continue
            if result.attempts == 1:
                self._count_off_target([op for op in first_sent if op.email not in refused], result.summary)
            sent.applied.extend(op for op in part if op.email not in refused)
            sent.rejected.extend(result.rejected)
        if sent.left and sent.error is None:
            # The budget ran out (whichever call spent it last): unresolved, queued with Ownpage's reason.
            sent.error = refusal
        return sent

    def _count_unaccounted(self, sent: int, refused: int, applied: int, ignored: int) -> None:
        """Entries of a call that Ownpage's summary neither applied (`unique_emails_count`), ignored
        as duplicates nor refused: it did not write them, whatever it says elsewhere."""
        missing = sent - refused - applied - ignored
        if missing > 0:
            self.outcome.unaccounted += missing
            log.warning(
                "Ownpage's summary leaves entries of a batch unaccounted for: the run is not converged",
                extra={"size": sent, "unique_emails_count": applied, "rejected": refused, "unaccounted": missing},
            )

    def _count_off_target(self, first_sent: Sequence[Operation], summary: Mapping[str, Any]) -> None:
        """Whether the summary shows every write of a call reached the row the read showed, for the
        entries no earlier send carried (a call sent again, or a half re-sent after a refusal, counts
        less for what the first send applied). Every unsubscribe goes to a row read subscribed, so
        each should count in `nb_unsubscribed` (no other entry unsubscribes); only a new address
        creates a row. Short of the first, or past the second: a write went to another row; the run is
        not converged (the next run reads and plans again)."""
        unsubscribes = sum(op.action is Action.UNSUBSCRIBE for op in first_sent)
        new = sum(op.action is Action.SUBSCRIBE for op in first_sent)
        unsubscribed = parse_count(summary.get("nb_unsubscribed")) if unsubscribes else None
        created = parse_count(summary.get("nb_created"))
        missed = max(0, unsubscribes - unsubscribed) if unsubscribed is not None else 0
        made = max(0, created - new) if created is not None else 0
        if missed or made:
            self.outcome.off_target += missed + made
            log.warning(
                "Ownpage's summary shows writes that did not reach the row read: the run is not converged",
                extra={
                    "unsubscribes": unsubscribes,
                    "nb_unsubscribed": unsubscribed,
                    "new": new,
                    "nb_created": created,
                },
            )

    def _set_aside(self, index: int, batch: Sequence[Operation], failure: Failure) -> None:
        """Queue the operations for the retry function; without a queue (or time to queue them),
        defer them to the next run; what the queue refuses is reported in full."""
        if not batch:
            return
        outcome = self.outcome
        if self.sink is None:
            if failure.kind == "deadline":
                outcome.deferred += len(batch)
                outcome.batches.append(BatchOutcome(index, len(batch), "deferred", failure.kind, failure.reason))
            else:
                self._record_failed(index, batch, failure, failure.reason)
            return
        try:
            receipt = self.sink.put(self.list_id, self.run_id, batch, failure, self.run_started_at)
        except RetryQueueError as exc:
            queued = exc.queued
            log.error(
                "retry queue refused failed operations; they are reported in full",
                extra={"batch": index, "size": len(batch), "queued_before_refusal": queued, "error": str(exc)},
            )
            outcome.queued += queued
            outcome.queued_messages += exc.messages
            unstored = list(exc.unstored) if exc.unstored is not None else list(batch[queued:])
            self._record_failed(index, unstored, failure, f"not queued: {exc}")
            return
        outcome.queued += receipt.queued
        outcome.queued_messages += receipt.messages
        if receipt.queued:
            outcome.batches.append(BatchOutcome(index, receipt.queued, "queued", failure.kind, failure.reason))
        late = len(batch) - receipt.queued
        if late:
            # No time left to queue them: not lost, the next run plans them again.
            outcome.deferred += late
            outcome.batches.append(
                BatchOutcome(index, late, "deferred", failure.kind, "no time left to queue them: left to the next run")
            )

    def _record_failed(self, index: int, batch: Sequence[Operation], failure: Failure, reason: str) -> None:
        if batch:
            self.outcome.failed_operations.extend(batch)
            self.outcome.batches.append(BatchOutcome(index, len(batch), "failed", failure.kind, reason))


def apply_operations(
    operations: Sequence[Operation],
    api: OwnpageLists,
    list_id: int,
    *,
    batch_size: int,
    deadline: Deadline,
    sink: FailedOperationsSink | None = None,
    run_id: str = "",
    run_started_at: datetime | None = None,
    progress: Progress | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> ApplyOutcome:
    """Send the operations in batches of `batch_size`; every operation lands in one outcome bucket."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    applier = _Applier(api, list_id, deadline, sink, run_id, run_started_at, progress, clock)
    return applier.run(list(operations), batch_size)


def rejected_by_reason(rejected: Sequence[Rejection]) -> dict[str, int]:
    return dict(Counter(rejection.reason for rejection in rejected))
