"""The retry path: re-check a queued message's operations against the source and Ownpage as they are
now (recheck.py: same identity, same rules as a full run), re-send what is still wanted, drop the rest.

A message older than the last converged run is superseded: that run re-planned everything from a
fresh read. An address the source look-up cannot be sure about is never unsubscribed from here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    SourceMisconfigured,
)
from ownpage_sync.models import SUBSCRIBING, Action, Operation
from ownpage_sync.planner import PlanPolicy
from ownpage_sync.ports import OwnpageLists, RunLedger
from ownpage_sync.recheck import Recheck, recheck
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.sources.base import SubscriberSource
from ownpage_sync.spellings import spelling_proof

log = logging.getLogger(__name__)

# Failure kinds after which a long-lived caller must rebuild its adapters: a fixed secret or setting
# has to be picked up without waiting for a new Lambda container.
REBUILD_ADAPTERS_ON = frozenset({"auth", "source", "source_configuration", "configuration"})
MAX_REJECTED_SAMPLES = 5
# The failure kind of a message whose writes Ownpage answered without writing them all.
IGNORED_BY_OWNPAGE = "ignored_by_ownpage"

# Why a queued operation is not replayed.
GONE_FROM_SOURCE = "gone_from_source"  # subscribe/update for someone the source no longer has
NOT_CONFIRMED = "not_confirmed_by_source"  # not found by a look-up that cannot be sure: the next run decides
BACK_IN_SOURCE = "back_in_source"  # unsubscribe for someone the source has again
UNDECIDED = "undecided"  # unsubscribe the source look-up cannot confirm: left to the next full run
UNSEARCHABLE = "unsearchable"  # an address no search can carry (a lone surrogate, a NUL): the next full run
FOLDED_TWIN = "case_folded_twin"  # another address is one with it under case folding: the next full run
SUPPRESSED_ON_OWNPAGE = "suppressed_on_ownpage"  # subscribe for someone who unsubscribed on Ownpage's side
ALREADY_APPLIED = "already_applied"  # Ownpage already shows the change
NOT_ON_OWNPAGE = "not_on_ownpage"  # an unsubscribe or update for a row Ownpage no longer shows
SUPERSEDED = "superseded"  # an update for a row no longer subscribed: the next sync run subscribes it
SUPERSEDED_BY_RUN = "superseded_by_later_run"  # a converged run started after this message's run
UNPROVEN = "spelling_unproven"  # a subscribe the last complete read does not prove alone: the next run decides


@dataclass(frozen=True)
class RetryTarget:
    """What the retry path works against: built once per container by the handler or the CLI.
    `ownpage` makes the client of one invocation (its deadline bounds every call). With a `ledger`, a
    subscribe is replayed only when the last complete read (at most `proof_max_age` seconds old) saw
    no other spelling of the address, unless `search_finds_every_spelling` (spellings.py)."""

    source: SubscriberSource
    ownpage: Callable[[Deadline], OwnpageLists]
    list_id: int
    policy: PlanPolicy = PlanPolicy()
    batch_size: int = 5_000
    ledger: RunLedger | None = None
    proof_max_age: float = 93_600.0
    search_finds_every_spelling: bool = False


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
    invalid: int = 0  # entries of the message that were not operations (reported, skipped)

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
            "invalid_operations": self.invalid,
        }


def replan(
    queued: list[Operation], current: Recheck, proven: Callable[[str], bool] = lambda key: True
) -> tuple[list[Operation], Counter[str]]:
    """Keep the queued operations the planner still wants now (with today's spelling, guid and data),
    in the queued direction only; count the rest by reason. A subscribe is kept only for a key
    `proven` to have no other spelling on Ownpage (spellings.py); an unsubscribe Ownpage's search did
    not find is dropped as done only for such a key, else left to the next full run (undecided)."""
    keep: list[Operation] = []
    stale: Counter[str] = Counter()
    seen: set[tuple[str, str]] = set()
    for op in queued:
        key = op.key
        family = "subscribe" if op.action in SUBSCRIBING else op.action.value
        if (key, family) in seen:  # the same operation twice in one message: send it once
            continue
        seen.add((key, family))
        if key in current.unsearchable:
            stale[UNSEARCHABLE] += 1
            continue
        if key in current.folded:
            stale[FOLDED_TWIN] += 1
            continue
        planned = current.operations.get(key, [])
        if op.action in SUBSCRIBING:
            wanted = [p for p in planned if p.action in SUBSCRIBING]
            if wanted and not proven(key):
                stale[UNPROVEN] += 1
                continue
        else:
            wanted = [p for p in planned if p.action is op.action]
        if wanted:
            keep.extend(wanted)
        elif (
            op.action is Action.UNSUBSCRIBE
            and key not in current.found
            and key not in current.listed
            and (key in current.ownpage_undecided or not proven(key))
        ):
            # Ownpage's search showed no row of the key: it could not be settled, or Ownpage may hold the
            # reader under a spelling the exact search misses (the fast lane queues the key's). Sent
            # blind, the unsubscribe could reach a row the reader unsubscribed herself since, and an
            # Ownpage that restates the cause (unknown) would make her "no" the publisher's, which a
            # later run may lift. Not proven due: the next full run, which sees the row, decides.
            stale[UNDECIDED] += 1
        else:
            stale[_stale_reason(op, key, planned, current)] += 1
    return keep, stale


def _stale_reason(op: Operation, key: str, planned: list[Operation], current: Recheck) -> str:
    listed = key in current.listed
    if op.action is Action.UNSUBSCRIBE:
        if listed:
            return BACK_IN_SOURCE
        if key in current.inconclusive:
            return UNDECIDED
        return ALREADY_APPLIED if key in current.found else NOT_ON_OWNPAGE
    if not listed:
        return NOT_CONFIRMED if key in current.inconclusive else GONE_FROM_SOURCE
    if key in current.suppressed:
        return SUPPRESSED_ON_OWNPAGE
    if op.action is Action.UPDATE:
        if any(p.action in SUBSCRIBING for p in planned):
            return SUPERSEDED  # the row is no longer subscribed on Ownpage: a subscribe is due, not an update
        if key not in current.found:
            return NOT_ON_OWNPAGE
    return ALREADY_APPLIED  # Ownpage has them subscribed (any newer data change waits for the next run)


def retry_message(message: RetryMessage, target: RetryTarget, deadline: Deadline) -> RetryResult:
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
    result.invalid = len(message.invalid)
    if message.invalid:
        log.warning(
            "retry message holds entries that are not operations; they are skipped",
            extra={"run_id": message.run_id, "invalid": len(message.invalid), "first": message.invalid[0]},
        )
    converged = target.ledger.last_converged_start() if target.ledger is not None else None
    if converged is not None and message.run_started_at is not None and message.run_started_at < converged:
        result.stale[SUPERSEDED_BY_RUN] = len(message.operations)
        log.info(
            "retry message superseded by a later converged run",
            extra={"run_id": message.run_id, "operations": len(message.operations)},
        )
        return result
    ownpage = target.ownpage(deadline)
    keys: dict[str, set[str]] = {}
    for op in message.operations:
        keys.setdefault(op.key, set()).add(op.email)
    current = recheck(keys, target.source, ownpage, message.list_id, target.policy)
    to_send, result.stale = replan(list(message.operations), current, _subscribe_proof(target))
    if result.stale:
        log.info(
            "stale retry operations dropped",
            extra={"run_id": message.run_id, "stale": result.stale_total, "by_reason": dict(result.stale)},
        )
    if not to_send:
        return result
    outcome = apply_operations(
        to_send,
        ownpage,
        message.list_id,
        batch_size=target.batch_size,
        deadline=deadline,
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
            f"{unfinished} of {len(to_send)} operations of run {message.run_id} still failing ({kind})", kind=kind
        )
    if outcome.ignored:
        # Which ones Ownpage did not write its summary does not say: the whole message is delivered
        # again, and the re-check drops what is in step by then.
        raise RetryNotConverged(
            f"{outcome.ignored} of {len(to_send)} operations of run {message.run_id} not written: Ownpage "
            "ignored them as duplicates (an address or a guid another entry has), left them out of its counts, "
            "or wrote them to another row than the one read",
            kind=IGNORED_BY_OWNPAGE,
        )
    return result


def _subscribe_proof(target: RetryTarget) -> Callable[[str], bool]:
    """Which keys a queued subscribe may be replayed for. The run that queued it planned it from a
    complete read; the last complete read, possibly newer, may since have seen a suppressed spelling
    of the address that Ownpage's exact search misses. Without a run table there is nothing newer to
    ask: the queuing run's read stands."""
    if target.ledger is None or target.search_finds_every_spelling:
        return lambda key: True
    return spelling_proof(target.ledger, datetime.now(UTC), target.proof_max_age)


def describe_failure(exc: BaseException) -> dict[str, str]:
    """A failed record's kind and short reason for the error log; never an address.

    The project's exceptions carry no addresses by contract (errors.py); anything else is named by type
    only, since its text could quote anything.
    """
    if isinstance(exc, InvalidRetryMessage):
        kind = "poison"
    elif isinstance(exc, OwnpageError | RetryNotConverged):
        kind = exc.kind
    elif isinstance(exc, SourceMisconfigured):
        kind = "source_configuration"
    elif isinstance(exc, SourceError):
        kind = "source"
    elif isinstance(exc, ConfigurationError):
        kind = "configuration"
    else:
        kind = "unexpected"
    reason = str(exc) if isinstance(exc, OwnpageSyncError) else type(exc).__name__
    return {"kind": kind, "reason": reason[:300]}
