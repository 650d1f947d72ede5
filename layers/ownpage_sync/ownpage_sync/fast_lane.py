"""The fast lane: a change in the publisher's database reaches Ownpage within a minute.

A DynamoDB Stream record or a `SubscriberChanged` event is a hint, not data: it names addresses that
changed. Each address is read again, now, from the source and from Ownpage and planned by the same
planner and policy as a full run (recheck.py, shared with the retry path); the writes go out like any
other, and what Ownpage refuses for a while goes to the RetryQueue. Late, repeated or reordered hints
are therefore harmless: whatever their order, the writes follow the source as it is when they are read.

Whole-run guards do not apply to a handful of addresses; two caps do: an invocation that would write
more than `max_writes` operations writes none of them, and neither does one whose writes would take
the fast lane past `max_writes_per_hour` in the clock hour (counted in the run table across
invocations: a trickle under the first cap, kept up for hours, is a burst too). A burst is the
scheduled run's work, and its guards apply there: the writes are left to it, reported and counted
(`FastLaneCapped`), never dropped silently. The scheduled run stays the source of truth and repairs
anything the fast lane missed.

One more thing only a full read can prove: that Ownpage holds an address under no other spelling.
An Ownpage that keeps and matches spellings exactly may hold the reader as `Ann@X.com`, which a
search for `ann@x.com` misses; a subscribe by omission would then create a second, subscribed row
beside a suppressed one, and a `subscribed: true` to the `ann@x.com` row it found would mail her
beside her own unsubscription. So every subscribe goes out only when the last complete read of the
list, recent enough, saw no other spelling of the address (spellings.py; `proven`, the default), or
when the operator says Ownpage's search finds every spelling (`subscribe`); otherwise it is held for
the scheduled run (`FastLaneHeld`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ownpage_sync.applier import apply_operations
from ownpage_sync.deadline import Deadline
from ownpage_sync.emails import MAX_LENGTH, canonical_key, mask_email
from ownpage_sync.errors import OwnpageError, OwnpageSyncError, RetryQueueError
from ownpage_sync.models import SUBSCRIBING, Action, Operation
from ownpage_sync.ports import FailedOperationsSink, Failure, OwnpageLists, RunLedger
from ownpage_sync.recheck import Recheck, recheck, unsearchable_keys
from ownpage_sync.retrying import RetryTarget
from ownpage_sync.settings import Settings
from ownpage_sync.spellings import spelling_proof

log = logging.getLogger(__name__)

DETAIL_TYPE = "SubscriberChanged"  # the EventBridge detail-type of a change event (docs/fast-lane.md)
STREAM = "stream"
EVENT = "event"
MAX_SAMPLES = 5
# What an origin may look like to be logged as it is: EventBridge ids, stream sequence numbers.
_ORIGIN = re.compile(r"[A-Za-z0-9:._-]{1,128}")

# Why the fast lane left a change to the scheduled run.
OVER_CAP = "over_the_cap"  # the invocation would have written more than max_writes
OVER_BUDGET = "over_the_hourly_budget"  # its writes would have passed max_writes_per_hour (or it is unknown)
UNDECIDED = "undecided"  # an unsubscribe the source look-up cannot confirm (recheck.py)
UNSEARCHABLE_WHY = "addresses no search can carry (a lone surrogate, a NUL) are left to the scheduled run"
HELD_NEW = "new_address"  # a subscribe for an address Ownpage's search did not show (not subscribe_new)
HELD_RESUBSCRIBE = "resubscribe"  # a `subscribed: true` the last complete read does not prove alone
NOT_WRITTEN = "ignored_by_ownpage"  # Ownpage answered without writing them all (duplicates, its counts, no effect)


@dataclass(frozen=True)
class FastLanePolicy:
    """What the fast lane may write on its own: at most `max_writes` per invocation and
    `max_writes_per_hour` in a clock hour (with a run table to count them in); subscribes for
    addresses Ownpage's search did not show when `new_addresses` is "subscribe", or "proven" and the
    last complete read (at most `proof_max_age` seconds old) saw no other spelling of them; and
    re-subscribes when "subscribe", or when that read saw no other spelling (any other setting)."""

    max_writes: int = 50
    new_addresses: str = "hold"
    proof_max_age: float = 93_600.0
    max_writes_per_hour: int = 1_000

    @property
    def subscribe_new(self) -> bool:
        return self.new_addresses == "subscribe"

    @classmethod
    def from_settings(cls, settings: Settings) -> FastLanePolicy:
        return cls(
            settings.fast_lane_max_writes,
            settings.fast_lane_new_addresses,
            settings.fast_lane_proof_max_age,
            settings.fast_lane_max_writes_per_hour,
        )


class InvalidChangeEvent(OwnpageSyncError):
    """The event is neither a DynamoDB Stream batch nor a SubscriberChanged event with an address."""


class ChangeNotApplied(OwnpageSyncError):
    """Transient: a change event's writes could be neither applied nor queued; Lambda retries the
    event, then sends it to the on-failure destination."""

    transient = True


@dataclass(frozen=True)
class Change:
    """One address a record or event names. `origin` is what Lambda is told failed (a stream record's
    SequenceNumber, an event's id); `changed_at` is when the change happened, as far as AWS knows."""

    email: str
    origin: str
    changed_at: datetime | None


@dataclass(frozen=True)
class ChangeBatch:
    """What one invocation was handed: every record (in order) and the addresses they name."""

    via: str  # STREAM | EVENT
    origins: tuple[str, ...]
    changes: tuple[Change, ...]
    unusable: tuple[str, ...] = ()  # origins of stream records naming no address (reported, skipped)


def batch_from_event(event: Any, email_attribute: str) -> ChangeBatch:
    """A DynamoDB Stream batch (`{"Records": [...]}`) or one EventBridge SubscriberChanged event."""
    if isinstance(event, Mapping) and isinstance(event.get("Records"), list):
        return _stream_batch(event["Records"], email_attribute)
    if isinstance(event, Mapping) and event.get("detail-type") == DETAIL_TYPE:
        return _change_event(event)
    raise InvalidChangeEvent(f'expected a DynamoDB Stream batch or an EventBridge "{DETAIL_TYPE}" event')


def _stream_batch(records: Sequence[Any], email_attribute: str) -> ChangeBatch:
    origins: list[str] = []
    changes: list[Change] = []
    unusable: list[str] = []
    for number, record in enumerate(records):
        data = record.get("dynamodb") if isinstance(record, Mapping) else None
        data = data if isinstance(data, Mapping) else {}
        origin = _origin(data.get("SequenceNumber"), f"record-{number}")
        origins.append(origin)
        changed_at = _from_epoch(data.get("ApproximateCreationDateTime"))
        # The old image names the address a change moved away from: it may need an unsubscribe.
        spellings = _addresses((data.get(image) for image in ("NewImage", "OldImage", "Keys")), email_attribute)
        if not spellings:
            unusable.append(origin)
        changes.extend(Change(spelling, origin, changed_at) for spelling in spellings)
    if unusable:
        log.warning(
            "stream records name no address: is the stream NEW_AND_OLD_IMAGES, SOURCE_EMAIL_ATTRIBUTE right?",
            extra={"records": len(unusable), "email_attribute": email_attribute, "first": unusable[0]},
        )
    return ChangeBatch(STREAM, tuple(origins), tuple(changes), tuple(unusable))


def _addresses(images: Iterable[Any], email_attribute: str) -> list[str]:
    """The distinct text values of the email attribute in these images (DynamoDB JSON): a String, or a
    Binary holding UTF-8 text (base64 in the event), as the scheduled run reads the table's Binary."""
    found: list[str] = []
    for image in images:
        value = image.get(email_attribute) if isinstance(image, Mapping) else None
        text = _text(value) if isinstance(value, Mapping) else None
        # An address of invisible characters only has no key: it names no one (counted unusable).
        if isinstance(text, str) and len(text) <= MAX_LENGTH and canonical_key(text) and text not in found:
            found.append(text)
    return found


def _text(value: Mapping[str, Any]) -> str | None:
    if isinstance(value.get("S"), str):
        return str(value["S"])
    encoded = value.get("B")
    if not isinstance(encoded, str) or len(encoded) > 4 * MAX_LENGTH:
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None  # not text: the record is reported unusable, the scheduled run reads the item


def _change_event(event: Mapping[str, Any]) -> ChangeBatch:
    origin = _origin(event.get("id"), "event")
    detail = event.get("detail")
    email = detail.get("email") if isinstance(detail, Mapping) else None
    if not isinstance(email, str) or not email.strip():
        raise InvalidChangeEvent(f"event {origin}: detail.email must be a non-empty string")
    if len(email) > MAX_LENGTH:
        raise InvalidChangeEvent(f"event {origin}: detail.email is longer than {MAX_LENGTH} characters")
    return ChangeBatch(EVENT, (origin,), (Change(email, origin, _from_iso(event.get("time"))),))


def _origin(value: Any, otherwise: str) -> str:
    """An identifier fit for logs and error messages (anything else could quote an address)."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    return text if _ORIGIN.fullmatch(text) else otherwise


def _from_epoch(value: Any) -> datetime | None:
    """ApproximateCreationDateTime: seconds since the epoch (a number, possibly with a fraction)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _from_iso(value: Any) -> datetime | None:
    """An EventBridge `time`: ISO-8601 UTC (`2025-03-01T06:00:00Z`)."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else None


# -- applying ------------------------------------------------------------------------------------


@dataclass
class ChangeReport:
    """What one invocation did with its changes. Addresses appear only masked (`*_samples`)."""

    via: str
    run_id: str
    records: int
    unusable: int = 0  # stream records naming no address
    addresses: int = 0  # distinct canonical keys named
    applied: Counter[str] = field(default_factory=Counter)  # by action
    queued: int = 0  # operations put on the RetryQueue
    rejected: int = 0  # addresses Ownpage refused as invalid (permanent, reported)
    rejected_samples: list[str] = field(default_factory=list)
    suppressed: int = 0  # listed in the source, suppressed on Ownpage: nothing written
    left_to_scheduled_run: Counter[str] = field(default_factory=Counter)  # operations, by reason
    left_samples: list[str] = field(default_factory=list)
    ownpage_unreadable: str | None = None  # the error kind when Ownpage could not be read to plan
    failed_origins: list[str] = field(default_factory=list)  # records/events Lambda must deliver again
    failure: str | None = None  # why they failed (no address)
    oldest_change_seconds: float | None = None  # the longest delay from a change to its write

    @property
    def capped(self) -> int:
        return self.left_to_scheduled_run[OVER_CAP] + self.left_to_scheduled_run[OVER_BUDGET]

    def leave(self, reason: str, operations: int, keys: Sequence[str], why: str) -> None:
        """Count operations left to the scheduled run, keep masked samples, say why in the log."""
        self.left_to_scheduled_run[reason] += operations
        self.left_samples.extend(mask_email(key) for key in keys[: max(0, MAX_SAMPLES - len(self.left_samples))])
        log.log(
            logging.WARNING if reason in (OVER_CAP, OVER_BUDGET, NOT_WRITTEN) else logging.INFO,
            why,
            extra={"run_id": self.run_id, "reason": reason, "operations": operations, "addresses": len(keys)},
        )

    def to_log(self) -> dict[str, Any]:
        return {
            "via": self.via,
            "run_id": self.run_id,
            "records": self.records,
            "unusable_records": self.unusable,
            "addresses": self.addresses,
            "applied": dict(self.applied),
            "queued": self.queued,
            "rejected": self.rejected,
            "rejected_samples": self.rejected_samples,
            "suppressed": self.suppressed,
            "left_to_scheduled_run": dict(self.left_to_scheduled_run),
            "left_samples": self.left_samples,
            "ownpage_unreadable": self.ownpage_unreadable,
            "failed": len(self.failed_origins),
            "failure": self.failure,
            "oldest_change_seconds": self.oldest_change_seconds,
        }

    def metrics(self) -> list[tuple[str, str, float]]:
        """(name, unit, value) of this invocation's metrics: counts, and the age in seconds of its
        oldest change once written (the template's latency alarm watches the ages)."""
        counts = {
            "FastLaneChanges": self.records,
            "FastLaneSubscribed": sum(self.applied[action.value] for action in SUBSCRIBING),
            "FastLaneUnsubscribed": self.applied[Action.UNSUBSCRIBE.value],
            "FastLaneUpdated": self.applied[Action.UPDATE.value],
            "FastLaneQueued": self.queued,
            "FastLaneSuppressed": self.suppressed,
            "FastLaneCapped": self.capped,
            "FastLaneHeld": self.left_to_scheduled_run[HELD_NEW] + self.left_to_scheduled_run[HELD_RESUBSCRIBE],
            "FastLaneUndecided": self.left_to_scheduled_run[UNDECIDED],
            "FastLaneNotWritten": self.left_to_scheduled_run[NOT_WRITTEN],
            "FastLaneUnusableRecords": self.unusable,
            "FastLaneFailedChanges": len(self.failed_origins),
            "RejectedAddresses": self.rejected,
        }
        emitted: list[tuple[str, str, float]] = [(name, "Count", value) for name, value in counts.items()]
        if self.oldest_change_seconds is not None:
            age = "FastLaneStreamRecordAge" if self.via == STREAM else "FastLaneEventAge"
            emitted.append((age, "Seconds", self.oldest_change_seconds))
        return emitted

    def lambda_response(self) -> dict[str, Any]:
        """A stream batch gets a partial batch response naming the records to deliver again. An
        event has no such response: raising is what makes Lambda retry it (then send it to the
        on-failure destination)."""
        if self.via == STREAM:
            return {"batchItemFailures": [{"itemIdentifier": origin} for origin in self.failed_origins]}
        if self.failed_origins:
            raise ChangeNotApplied(f"change event {self.failed_origins[0]} not applied: {self.failure}")
        return self.to_log()


def new_run_id(started: datetime) -> str:
    """Like a sync run's id (its start, UTC), marked as the fast lane's in queued messages."""
    return f"{started:%Y%m%dT%H%M%SZ}-fast-{uuid.uuid4().hex[:8]}"


def apply_changes(
    batch: ChangeBatch,
    target: RetryTarget,
    sink: FailedOperationsSink | None,
    deadline: Deadline,
    policy: FastLanePolicy = FastLanePolicy(),
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ChangeReport:
    """Re-read, plan and write every address the batch names.

    Raises SourceError when the source cannot be read (the whole batch is delivered again). An
    Ownpage that cannot be read does not raise: the source's wishes are queued for the retry path.
    """
    started = clock()
    report = ChangeReport(batch.via, new_run_id(started), records=len(batch.origins), unusable=len(batch.unusable))
    keys: dict[str, set[str]] = {}
    origins: dict[str, list[str]] = {}
    for change in batch.changes:
        key = canonical_key(change.email)
        if key:
            keys.setdefault(key, set()).add(change.email)
            origins.setdefault(key, []).append(change.origin)
    report.addresses = len(keys)
    if keys:
        ownpage = target.ownpage(deadline)
        try:
            current = recheck(keys, target.source, ownpage, target.list_id, target.policy)
        except OwnpageError as exc:
            failed = _queue_source_wishes(keys, target, sink, policy, report, exc, started)
        else:
            failed = _write(keys, current, target, ownpage, sink, deadline, policy, report, started)
        report.failed_origins = list(dict.fromkeys(origin for key in failed for origin in origins[key]))
    written = [change.changed_at for change in batch.changes if change.changed_at is not None]
    if written:
        report.oldest_change_seconds = round(max(0.0, (clock() - min(written)).total_seconds()), 3)
    return report


def _within_cap(
    planned: list[tuple[str, list[Operation]]], max_writes: int, report: ChangeReport
) -> list[tuple[str, list[Operation]]]:
    """All of them, or none when they are more than the cap (left to the scheduled run, counted)."""
    total = sum(len(operations) for _, operations in planned)
    if total <= max_writes:
        return planned
    why = f"fast lane cap reached: nothing written, the changes are left to the scheduled run (max {max_writes})"
    report.leave(OVER_CAP, total, [key for key, _ in planned], why)
    return []


def _within_budget(
    planned: list[tuple[str, list[Operation]]],
    ledger: RunLedger | None,
    policy: FastLanePolicy,
    started: datetime,
    report: ChangeReport,
) -> list[tuple[str, list[Operation]]]:
    """All of them, counted against the hour's budget, or none when they would pass it or the count
    cannot be kept (left to the scheduled run, counted). Without a run table there is no budget."""
    total = sum(len(operations) for _, operations in planned)
    if not total or ledger is None:
        return planned
    try:
        if ledger.reserve_fast_lane_writes(started, total, policy.max_writes_per_hour):
            return planned
        why = (
            "fast lane hourly budget reached: nothing written, the changes are left to the scheduled run "
            f"(max {policy.max_writes_per_hour} per hour)"
        )
    except OwnpageSyncError as exc:
        why = f"fast lane hourly budget could not be checked ({exc}): the changes are left to the scheduled run"
    report.leave(OVER_BUDGET, total, [key for key, _ in planned], why)
    return []


def _hold_unproven_subscribes(
    planned: list[tuple[str, list[Operation]]], report: ChangeReport, proven: Callable[[str], bool], new: bool
) -> list[tuple[str, list[Operation]]]:
    """Without the subscribes the last complete read does not prove safe: only a full read proves
    that Ownpage holds no other spelling of the address (a new one, or a suppressed twin of the row
    the search found). Subscribes by omission are all held unless `new` (the `proven` setting)."""
    held: dict[Action, list[str]] = {Action.SUBSCRIBE: [], Action.RESUBSCRIBE: []}
    kept: list[tuple[str, list[Operation]]] = []
    for key, ops in planned:
        subscribing = [op for op in ops if op.action in SUBSCRIBING]
        if subscribing and not (proven(key) and (new or subscribing[0].action is Action.RESUBSCRIBE)):
            held[subscribing[0].action].append(key)
            ops = [op for op in ops if op.action not in SUBSCRIBING]
        if ops:
            kept.append((key, ops))
    if held[Action.SUBSCRIBE]:
        keys = held[Action.SUBSCRIBE]
        report.leave(
            HELD_NEW, len(keys), keys, "subscribes of addresses Ownpage did not show are left to the scheduled run"
        )
    if held[Action.RESUBSCRIBE]:
        keys = held[Action.RESUBSCRIBE]
        why = "re-subscribes the last complete read does not prove alone are left to the scheduled run"
        report.leave(HELD_RESUBSCRIBE, len(keys), keys, why)
    return kept


def _gone_and_unseen(key: str, current: Recheck) -> bool:
    """The source proves the key gone, and Ownpage's search found no row of it: nothing planned."""
    return (
        key not in current.listed
        and key not in current.inconclusive
        and key not in current.found
        and key not in current.unsearchable
        and key not in current.folded
        and not current.operations.get(key)
    )


def _write(
    keys: Mapping[str, set[str]],
    current: Recheck,
    target: RetryTarget,
    ownpage: OwnpageLists,
    sink: FailedOperationsSink | None,
    deadline: Deadline,
    policy: FastLanePolicy,
    report: ChangeReport,
    started: datetime,
) -> set[str]:
    """Apply the planned writes (failures queued by the applier); the keys whose records must fail."""
    report.suppressed = len(current.suppressed)
    undecided = [
        op.key
        for op in current.plan.operations()
        if op.action is Action.UNSUBSCRIBE
        and op.key in keys
        and op.key in current.inconclusive
        and op.key not in current.folded
    ]
    if undecided:
        why = "unsubscribes left to the scheduled run: the source look-up cannot prove the address left it"
        report.leave(UNDECIDED, len(undecided), undecided, why)
    unsearchable = sorted(current.unsearchable & set(keys))
    if unsearchable:
        report.leave(UNDECIDED, len(unsearchable), unsearchable, UNSEARCHABLE_WHY)
    folded = sorted(current.folded & set(keys))
    if folded:
        why = "addresses a case-folding Ownpage may take for another the source or Ownpage holds are left"
        report.leave(UNDECIDED, len(folded), folded, why)
    planned = [(key, current.operations[key]) for key in keys if current.operations.get(key)]
    if not policy.subscribe_new:
        proven = spelling_proof(target.ledger, started, policy.proof_max_age)
        planned = _hold_unproven_subscribes(planned, report, proven, new=policy.new_addresses == "proven")
        # Gone from the source, and Ownpage's exact search showed no row: Ownpage may still hold the
        # reader under a spelling the search misses, and mail her. Unless the last complete read proves
        # it holds none, that unsubscribe is the scheduled run's to find, counted.
        unseen = [key for key in keys if _gone_and_unseen(key, current) and not proven(key)]
        if unseen:
            why = "unsubscribes of addresses Ownpage's search did not show (another spelling?) are left"
            report.leave(UNDECIDED, len(unseen), unseen, why)
    to_write = _within_budget(_within_cap(planned, policy.max_writes, report), target.ledger, policy, started, report)
    operations = [op for _, ops in to_write for op in ops]
    if not operations:
        return set()
    outcome = apply_operations(
        operations,
        ownpage,
        target.list_id,
        batch_size=target.batch_size,
        deadline=deadline,
        sink=sink,
        run_id=report.run_id,
        run_started_at=started,
    )
    report.applied = outcome.applied
    report.queued = outcome.queued
    if outcome.ignored:
        # Which ones were not written the summary does not say: the scheduled run plans what is missing.
        why = (
            "Ownpage did not write some of the fast lane's writes (duplicates, left out of its counts, or "
            "writes that did not reach the row read): left to the scheduled run"
        )
        report.leave(NOT_WRITTEN, outcome.ignored, [key for key, _ in to_write], why)
    report.rejected = len(outcome.rejected)
    report.rejected_samples = [mask_email(r.email) for r in outcome.rejected[:MAX_SAMPLES]]
    # With no time left to queue some of them, which ones is not worth guessing: every written key's
    # record is delivered again (re-reading makes that harmless).
    failed = {key for key, _ in to_write} if outcome.deferred else {op.key for op in outcome.failed_operations}
    if failed:
        reasons = [b.reason for b in outcome.batches if b.status in ("failed", "deferred") and b.reason]
        report.failure = (reasons or ["no time left to queue them"])[0][:300]
    return failed


def _queue_source_wishes(
    keys: Mapping[str, set[str]],
    target: RetryTarget,
    sink: FailedOperationsSink | None,
    policy: FastLanePolicy,
    report: ChangeReport,
    exc: OwnpageError,
    started: datetime,
) -> set[str]:
    """Ownpage cannot be read to plan against: queue the direction the source wants for each key (a
    subscribe and an update for a key it lists, an unsubscribe for one it proves gone). The retry
    path keeps only the direction of a queued operation and re-plans it against both sides once
    Ownpage answers. A queued subscribe may become one by omission there, so without subscribe_new
    only the update is queued. Returns the keys whose records must fail (nothing could hold them)."""
    report.ownpage_unreadable = exc.kind
    log.warning(
        "Ownpage could not be read for the fast lane: the changes go to the retry queue",
        extra={"run_id": report.run_id, "error_kind": exc.kind, "status": exc.status, "addresses": len(keys)},
    )
    unsearchable = sorted(unsearchable_keys(keys))
    if unsearchable:
        report.leave(UNDECIDED, len(unsearchable), unsearchable, UNSEARCHABLE_WHY)
        keys = {key: spellings for key, spellings in keys.items() if key not in unsearchable}
    also = {spelling for spellings in keys.values() for spelling in spellings} - set(keys)
    lookup = target.source.lookup(set(keys), also=also)
    listed = {canonical_key(row.email) for row in lookup.rows if isinstance(row.email, str)}
    subscribe = policy.subscribe_new
    planned: list[tuple[str, list[Operation]]] = []
    for key in keys:
        if key in listed:
            wishes = [Operation(Action.SUBSCRIBE, key)] if subscribe else []
            planned.append((key, [*wishes, Operation(Action.UPDATE, key)]))
        elif key not in lookup.inconclusive:
            cause = target.policy.unsubscribe_cause
            planned.append((key, [Operation(Action.UNSUBSCRIBE, key, unsubscribed_cause=cause)]))
    held = [key for key in keys if key in listed and not subscribe]
    if held:
        report.leave(HELD_NEW, len(held), held, "subscribes are left to the scheduled run while Ownpage is unreadable")
    undecided = [key for key in keys if key not in listed and key in lookup.inconclusive]
    if undecided:
        report.leave(UNDECIDED, len(undecided), undecided, "unsubscribes the source look-up cannot prove are left")
    within = _within_budget(_within_cap(planned, policy.max_writes, report), target.ledger, policy, started, report)
    operations = [op for _, ops in within for op in ops]
    if not operations:
        return set()
    if sink is None:
        report.failure = f"Ownpage could not be read ({exc.kind}) and no retry queue is configured"
        return {op.key for op in operations}
    failure = Failure(
        kind=exc.kind,
        reason=f"the fast lane could not read Ownpage: {exc.reason}",
        status=exc.status,
        attempts=int(getattr(exc, "attempts", 1)),
        first_failed_at=started,
    )
    try:
        stored = sink.put(target.list_id, report.run_id, operations, failure, started).queued
    except RetryQueueError as refused:
        stored = refused.queued
        report.failure = str(refused)[:300]
    report.queued = stored
    # The sink stores the first `stored` operations, in order: a key is safe once all of its are.
    failed = {op.key for op in operations[stored:]}
    if failed and report.failure is None:
        report.failure = "no time left to queue them"
    return failed
