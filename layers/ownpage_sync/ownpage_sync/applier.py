"""Applies operations to Ownpage in batches, and decides where every operation ends up.

Each operation ends in exactly one bucket: applied, rejected (Ownpage refused the address: permanent,
reported), queued (put on the retry queue), deferred (time ran out and there is no queue: the next
run plans it again) or failed (could not be applied nor queued: reported in full, the run fails).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ownpage_sync.deadline import Deadline
from ownpage_sync.emails import mask_email
from ownpage_sync.errors import OwnpageAuthError, OwnpageError, OwnpageRejected, OwnpageSyncError
from ownpage_sync.models import Operation
from ownpage_sync.ports import FailedOperationsSink, Failure, OwnpageLists, Progress, Rejection

log = logging.getLogger(__name__)

# After this many consecutive batches failed for a transient reason, Ownpage is taken to be down for
# this run: the remaining batches go straight to the retry queue instead of into more sleeps.
BREAKER_THRESHOLD = 3
# Extra calls allowed per batch to isolate unidentified invalid rows by bisection.
BISECT_BUDGET = 64
SUMMARY_FIELDS = ("nb_created", "nb_subscribed", "nb_unsubscribed", "nb_data_changed")


@dataclass
class BatchOutcome:
    index: int
    size: int
    status: str  # applied | partly_rejected | queued | deferred | failed
    error_kind: str | None = None
    reason: str | None = None
    rejected: int = 0

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

    @property
    def applied_total(self) -> int:
        return sum(self.applied.values())

    @property
    def converged(self) -> bool:
        """Everything planned is now in Ownpage (rejected addresses are permanent and reported)."""
        return not (self.queued or self.deferred or self.failed_operations)


class _Applier:
    def __init__(
        self,
        api: OwnpageLists,
        list_id: int,
        deadline: Deadline,
        sink: FailedOperationsSink | None,
        run_id: str,
        progress: Progress | None,
    ):
        self.api, self.list_id, self.deadline = api, list_id, deadline
        self.sink, self.run_id, self.progress = sink, run_id, progress
        self.outcome = ApplyOutcome()
        self.consecutive_transient = 0

    def run(self, operations: Sequence[Operation], batch_size: int) -> ApplyOutcome:
        batches = [operations[i : i + batch_size] for i in range(0, len(operations), batch_size)]
        for index, batch in enumerate(batches):
            if self.deadline.expired():
                self._set_aside(index, batch, Failure("deadline", "the run's time ran out before this batch"))
            elif self.consecutive_transient >= BREAKER_THRESHOLD:
                failure = Failure("unavailable", f"skipped: {BREAKER_THRESHOLD} batches in a row failed in this run")
                self._set_aside(index, batch, failure)
            else:
                self._apply(index, batch)
            if self.progress is not None:
                self.progress(len(batch))
        return self.outcome

    def _apply(self, index: int, batch: Sequence[Operation]) -> None:
        first_failed_at = datetime.now(UTC)
        try:
            applied, rejected = self._send(batch, budget=[BISECT_BUDGET])
        except OwnpageError as exc:
            if exc.transient:
                self.consecutive_transient += 1
            if isinstance(exc, OwnpageAuthError):
                # Every later batch would fail the same way: stop calling, set all of them aside.
                self.consecutive_transient = BREAKER_THRESHOLD
            failure = Failure(
                kind=exc.kind,
                reason=exc.reason,
                status=exc.status,
                attempts=int(getattr(exc, "attempts", 1)),
                first_failed_at=first_failed_at,
                last_attempt_at=datetime.now(UTC),
            )
            log.warning(
                "batch failed after retries",
                extra={"batch": index, "size": len(batch), "error_kind": exc.kind, "status": exc.status},
            )
            self._set_aside(index, batch, failure)
            return
        self.consecutive_transient = 0
        self.outcome.applied.update(op.action.value for op in applied)
        self.outcome.rejected.extend(rejected)
        status = "partly_rejected" if rejected else "applied"
        self.outcome.batches.append(BatchOutcome(index, len(batch), status, rejected=len(rejected)))
        for rejection in rejected:
            log.warning(
                "address rejected by Ownpage", extra={"email": mask_email(rejection.email), "reason": rejection.reason}
            )

    def _send(self, batch: Sequence[Operation], budget: list[int]) -> tuple[list[Operation], list[Rejection]]:
        """POST one batch; on a whole-batch 400, drop the invalid rows and re-send the rest."""
        try:
            result = self.api.upsert(self.list_id, batch)
        except OwnpageRejected as exc:
            if exc.status != 400 or budget[0] <= 0:
                raise
            identified = set(getattr(exc, "rejected_emails", ()) or ())
            rejected = [Rejection(op.email, exc.reason) for op in batch if op.email in identified]
            if rejected:
                rest = [op for op in batch if op.email not in identified]
            elif len(batch) == 1:
                return [], [Rejection(batch[0].email, exc.reason)]
            else:
                rest = list(batch)
            budget[0] -= 1
            if not rest:
                return [], rejected
            if rejected:
                applied, more = self._send(rest, budget)
                return applied, rejected + more
            # Ownpage named no address: bisect to isolate the bad row(s) within the budget.
            middle = len(rest) // 2
            applied_left, rejected_left = self._send(rest[:middle], budget)
            applied_right, rejected_right = self._send(rest[middle:], budget)
            return applied_left + applied_right, rejected_left + rejected_right
        self.outcome.ownpage_summary.update(
            {name: int(result.summary.get(name) or 0) for name in SUMMARY_FIELDS if name in result.summary}
        )
        refused = {rejection.email for rejection in result.rejected}
        return [op for op in batch if op.email not in refused], list(result.rejected)

    def _set_aside(self, index: int, batch: Sequence[Operation], failure: Failure) -> None:
        """Queue the batch for the retry function; without a queue, defer or report it in full."""
        if self.sink is not None:
            try:
                messages = self.sink.put(self.list_id, self.run_id, batch, failure)
            except OwnpageSyncError as exc:
                log.error(
                    "retry queue refused failed operations; they are reported in full",
                    extra={"batch": index, "size": len(batch), "error": str(exc)},
                )
                self._record_failed(index, batch, failure, "failed", f"not queued: {exc}")
                return
            self.outcome.queued += len(batch)
            self.outcome.queued_messages += messages
            self.outcome.batches.append(BatchOutcome(index, len(batch), "queued", failure.kind, failure.reason))
        elif failure.kind == "deadline":
            # Not applied and not lost: the next run plans these operations again.
            self.outcome.deferred += len(batch)
            self.outcome.batches.append(BatchOutcome(index, len(batch), "deferred", failure.kind, failure.reason))
        else:
            self._record_failed(index, batch, failure, "failed", failure.reason)

    def _record_failed(
        self, index: int, batch: Sequence[Operation], failure: Failure, status: str, reason: str
    ) -> None:
        self.outcome.failed_operations.extend(batch)
        self.outcome.batches.append(BatchOutcome(index, len(batch), status, failure.kind, reason))


def apply_operations(
    operations: Sequence[Operation],
    api: OwnpageLists,
    list_id: int,
    *,
    batch_size: int,
    deadline: Deadline,
    sink: FailedOperationsSink | None = None,
    run_id: str = "",
    progress: Progress | None = None,
) -> ApplyOutcome:
    """Send the operations in batches of `batch_size`; every operation lands in one outcome bucket."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    return _Applier(api, list_id, deadline, sink, run_id, progress).run(list(operations), batch_size)


def rejected_by_reason(rejected: Sequence[Rejection]) -> dict[str, int]:
    return dict(Counter(rejection.reason for rejection in rejected))
