"""The retry path's logic: re-check a queued message against the source and Ownpage as they are now,
drop what has gone stale, re-send the rest. No Lambda, no Powertools: the handler and the CLI wrap it.

Re-planning is the planner's own rules restricted to the message's addresses, so a queued operation is
replayed only if the sync would plan that same action for that address today.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ownpage_sync.applier import apply_operations
from ownpage_sync.deadline import Deadline
from ownpage_sync.emails import mask_email
from ownpage_sync.errors import (
    ConfigurationError,
    InvalidRetryMessage,
    OwnpageError,
    OwnpageSyncError,
    RetryNotConverged,
    SourceError,
)
from ownpage_sync.models import Action, Operation, OwnpageSubscriber, SubscriberRecord
from ownpage_sync.planner import PlanPolicy, plan_changes
from ownpage_sync.ports import OwnpageLists
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.sources.base import SubscriberSource
from ownpage_sync.sources.snapshot import lookup_records

log = logging.getLogger(__name__)

# Up to this many addresses, Ownpage is asked one address at a time (search + exact); above it, one
# full paged read of the list is cheaper than thousands of look-ups.
LOOKUP_THRESHOLD = 200
# Failure kinds after which a long-lived caller must rebuild its adapters: a fixed secret or setting
# has to be picked up without waiting for a new Lambda container.
REBUILD_ADAPTERS_ON = frozenset({"auth", "source", "configuration"})
MAX_REJECTED_SAMPLES = 5

# Why a queued operation is not replayed.
GONE_FROM_SOURCE = "gone_from_source"  # subscribe/update for someone the source no longer has
BACK_IN_SOURCE = "back_in_source"  # unsubscribe for someone the source has again
SUPPRESSED_ON_OWNPAGE = "suppressed_on_ownpage"  # subscribe for someone who unsubscribed on Ownpage's side
ALREADY_APPLIED = "already_applied"  # Ownpage already shows the change
SUPERSEDED = "superseded"  # an update for a row no longer subscribed: the next sync run subscribes it


class OwnpageRows:
    """Ownpage's current rows for the addresses of one SQS batch, read once for all its messages.

    Few addresses are looked up one by one (search + exact); many share one filtered read of the whole
    list, so a batch of large messages costs one read, not one per message. Rows of addresses a message
    has just written are forgotten, so a later message re-reads them.
    """

    def __init__(self) -> None:
        self._known: dict[str, OwnpageSubscriber | None] = {}

    def clear(self) -> None:
        self._known.clear()

    def prefetch(self, ownpage: OwnpageLists, list_id: int, emails: Collection[str]) -> None:
        missing = set(emails) - self._known.keys()
        if len(missing) <= LOOKUP_THRESHOLD:
            for email in sorted(missing):
                self._known[email] = ownpage.get_subscriber(list_id, email)
            return
        found = {row.email: row for row in ownpage.iter_subscribers(list_id) if row.email in missing}
        self._known.update({email: found.get(email) for email in missing})

    def rows(self, ownpage: OwnpageLists, list_id: int, emails: Collection[str]) -> list[OwnpageSubscriber]:
        self.prefetch(ownpage, list_id, emails)
        return [row for email in sorted(emails) if (row := self._known[email]) is not None]

    def forget(self, emails: Iterable[str]) -> None:
        for email in emails:
            self._known.pop(email, None)


@dataclass(frozen=True)
class RetryTarget:
    """What the retry path works against: built once per container by the handler or the CLI."""

    source: SubscriberSource
    ownpage: OwnpageLists
    list_id: int
    deadline: Deadline
    policy: PlanPolicy = PlanPolicy()
    batch_size: int = 5_000
    ownpage_rows: OwnpageRows = field(default_factory=OwnpageRows)

    def start_batch(self, bodies: Iterable[str]) -> None:
        """Forget the previous batch's rows and read Ownpage once for every address of this one.

        Bodies that do not parse are skipped here; their record fails on its own later."""
        self.ownpage_rows.clear()
        emails: set[str] = set()
        for body in bodies:
            try:
                message = RetryMessage.from_json(body)
            except InvalidRetryMessage:
                continue
            if message.list_id == self.list_id:
                emails.update(op.email for op in message.operations)
        if emails:
            self.ownpage_rows.prefetch(self.ownpage, self.list_id, emails)


@dataclass
class RetryResult:
    """What became of one message's operations."""

    list_id: int
    run_id: str
    received: int
    sent: int = 0
    applied: Counter[str] = field(default_factory=Counter)  # by action
    stale: Counter[str] = field(default_factory=Counter)  # by reason
    rejected: int = 0
    rejected_samples: list[str] = field(default_factory=list)  # masked addresses

    @property
    def stale_total(self) -> int:
        return sum(self.stale.values())

    def to_log(self) -> dict[str, Any]:
        return {
            "list_id": self.list_id,
            "run_id": self.run_id,
            "received": self.received,
            "sent": self.sent,
            "applied": dict(self.applied),
            "stale": self.stale_total,
            "stale_by_reason": dict(self.stale),
            "rejected": self.rejected,
            "rejected_samples": self.rejected_samples,
        }


def replan(
    operations: Iterable[Operation],
    records: Mapping[str, SubscriberRecord],
    rows: Iterable[OwnpageSubscriber],
    policy: PlanPolicy,
) -> tuple[list[Operation], Counter[str]]:
    """Keep the queued operations the planner still wants now (with today's guid/data); count the rest."""
    queued = list(operations)
    plan = plan_changes(records, rows, policy)
    planned = {(op.email, op.action): op for op in plan.operations()}
    suppressed = {item.email for item in plan.suppressed}
    keep: list[Operation] = []
    stale: Counter[str] = Counter()
    seen: set[tuple[str, Action]] = set()
    for op in queued:
        key = (op.email, op.action)
        if key in seen:  # the same operation twice in one message: send it once
            continue
        seen.add(key)
        current = planned.get(key)
        if current is not None:
            keep.append(current)
        else:
            stale[_stale_reason(op, records, suppressed, planned)] += 1
    return keep, stale


def _stale_reason(
    op: Operation,
    records: Mapping[str, SubscriberRecord],
    suppressed: set[str],
    planned: Mapping[tuple[str, Action], Operation],
) -> str:
    in_source = op.email in records
    if op.action is Action.UNSUBSCRIBE:
        return BACK_IN_SOURCE if in_source else ALREADY_APPLIED
    if not in_source:
        return GONE_FROM_SOURCE
    if op.email in suppressed:
        return SUPPRESSED_ON_OWNPAGE
    if op.action is Action.UPDATE and (op.email, Action.SUBSCRIBE) in planned:
        return SUPERSEDED  # the row is no longer subscribed on Ownpage: a subscribe is due, not an update
    return ALREADY_APPLIED  # Ownpage has them subscribed (any newer data change waits for the next run)


def retry_message(message: RetryMessage, target: RetryTarget) -> RetryResult:
    """Re-check and re-send one message's operations.

    Raises RetryNotConverged (transient) when some operations still fail, so SQS delivers the
    message again; OwnpageError/SourceError when the re-check itself cannot read; InvalidRetryMessage
    when the message is for another list than this deployment serves.
    """
    if message.list_id != target.list_id:
        raise InvalidRetryMessage(
            f"message is for list {message.list_id}; this deployment serves list {target.list_id}"
        )
    result = RetryResult(message.list_id, message.run_id, received=len(message.operations))
    emails = {op.email for op in message.operations}
    records = lookup_records(target.source, emails)
    rows = target.ownpage_rows.rows(target.ownpage, message.list_id, emails)
    to_send, result.stale = replan(message.operations, records, rows, target.policy)
    if result.stale:
        log.info(
            "stale retry operations dropped",
            extra={"run_id": message.run_id, "stale": result.stale_total, "by_reason": dict(result.stale)},
        )
    if not to_send:
        return result
    target.ownpage_rows.forget(op.email for op in to_send)  # written now: re-read if met again
    outcome = apply_operations(
        to_send,
        target.ownpage,
        message.list_id,
        batch_size=target.batch_size,
        deadline=target.deadline,
        sink=None,
        run_id=message.run_id,
    )
    result.sent = len(to_send)
    result.applied = outcome.applied
    result.rejected = len(outcome.rejected)
    result.rejected_samples = [mask_email(r.email) for r in outcome.rejected[:MAX_REJECTED_SAMPLES]]
    unfinished = len(outcome.failed_operations) + outcome.deferred
    if unfinished:
        kinds = [batch.error_kind for batch in outcome.batches if batch.status in ("failed", "deferred")]
        kind = next((k for k in kinds if k), "unknown")
        raise RetryNotConverged(
            f"{unfinished} of {len(to_send)} operations of run {message.run_id} still failing ({kind})",
            kind=kind,
        )
    return result


def describe_failure(exc: BaseException) -> dict[str, str]:
    """A failed record's kind and short reason for the error log; never an address.

    The project's exceptions carry no addresses by contract (errors.py); anything else is named by type
    only, since its text could quote anything.
    """
    if isinstance(exc, InvalidRetryMessage):
        kind = "poison"
    elif isinstance(exc, OwnpageError | RetryNotConverged):
        kind = exc.kind
    elif isinstance(exc, SourceError):
        kind = "source"
    elif isinstance(exc, ConfigurationError):
        kind = "configuration"
    else:
        kind = "unexpected"
    reason = str(exc) if isinstance(exc, OwnpageSyncError) else type(exc).__name__
    return {"kind": kind, "reason": reason[:300]}
