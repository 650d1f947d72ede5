"""Turning raw source rows into the planner's input: normalise, validate, collapse duplicates."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ownpage_sync.emails import is_valid_email, mask_email, normalise_email
from ownpage_sync.models import SubscriberRecord, normalise_data, normalise_data_value, parse_timestamp
from ownpage_sync.sources.base import RawSubscriber, SubscriberSource

MAX_PROBLEM_SAMPLES = 20


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """A row that was not used as is. Carries only a masked address."""

    where: str
    reason: str
    masked_email: str

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "reason": self.reason, "email": self.masked_email}


@dataclass
class SourceSnapshot:
    """The eligible subscribers of a source, keyed by normalised address, and what was set aside."""

    records: dict[str, SubscriberRecord] = field(default_factory=dict)
    rows_read: int = 0
    invalid_count: int = 0
    duplicate_count: int = 0  # identical rows for one address, collapsed
    collision_count: int = 0  # different rows whose addresses normalise to the same one
    invalid_consent_count: int = 0
    shared_guid_count: int = 0  # addresses whose guid another address already has (Ownpage ignores such rows)
    samples: list[SourceProblem] = field(default_factory=list)

    def note(self, problem: SourceProblem) -> None:
        if len(self.samples) < MAX_PROBLEM_SAMPLES:
            self.samples.append(problem)


def parse_consent(value: Any) -> datetime | None:
    """The source's consent time (see models.parse_timestamp). Raises ValueError."""
    return parse_timestamp(value)


def _to_record(row: RawSubscriber, email: str, snapshot: SourceSnapshot) -> SubscriberRecord:
    try:
        consented_at = parse_consent(row.consented_at)
    except (ValueError, TypeError, OverflowError):
        consented_at = None
        snapshot.invalid_consent_count += 1
        snapshot.note(SourceProblem(row.where, "invalid consent time (ignored)", mask_email(email)))
    return SubscriberRecord(
        email=email,
        guid=normalise_data_value(row.guid),
        data=normalise_data(row.data),
        consented_at=consented_at,
    )


def _merge(kept: SubscriberRecord, other: SubscriberRecord) -> SubscriberRecord:
    """Deterministic choice between different rows of one address, whatever the read order.

    One row is kept whole: a row with a guid before one without, then the smallest guid, then the
    smallest data; the newest consent time is kept. A total order (not a field-wise mix) keeps the
    result the same for three or more colliding rows read in any order.
    """
    first = min((kept, other), key=lambda r: (r.guid is None, r.guid or "", sorted(r.data.items())))
    consents = [c for c in (kept.consented_at, other.consented_at) if c is not None]
    return SubscriberRecord(first.email, first.guid, first.data, max(consents, default=None))


def build_snapshot(rows: Iterable[RawSubscriber], progress: Callable[[int], None] | None = None) -> SourceSnapshot:
    """Normalise and validate every row; invalid addresses are counted and sampled (masked), never kept."""
    snapshot = SourceSnapshot()
    for row in rows:
        snapshot.rows_read += 1
        if progress is not None:
            progress(1)
        email = normalise_email(row.email) if isinstance(row.email, str) else ""
        if not email or not is_valid_email(email):
            snapshot.invalid_count += 1
            reason = "empty address" if not email else "not a valid email address"
            snapshot.note(SourceProblem(row.where, reason, mask_email(email)))
            continue
        record = _to_record(row, email, snapshot)
        kept = snapshot.records.get(email)
        if kept is None:
            snapshot.records[email] = record
        elif kept == record:
            snapshot.duplicate_count += 1
        else:
            snapshot.collision_count += 1
            snapshot.note(SourceProblem(row.where, "collides with another row after normalisation", mask_email(email)))
            snapshot.records[email] = _merge(kept, record)
    _note_shared_guids(snapshot)
    return snapshot


def _note_shared_guids(snapshot: SourceSnapshot) -> None:
    """A guid is one reader's id; Ownpage ignores a row whose guid another row of the payload has, so
    such addresses would never converge. They are reported (the source must fix them), still planned."""
    owners: dict[str, str] = {}
    for email, record in snapshot.records.items():
        if record.guid is not None and owners.setdefault(record.guid, email) != email:
            snapshot.shared_guid_count += 1
            snapshot.note(SourceProblem("several addresses", "guid shared with another address", mask_email(email)))


def lookup_records(source: SubscriberSource, emails: Collection[str]) -> dict[str, SubscriberRecord]:
    """The source's current records for these normalised addresses (absent = not a subscriber now)."""
    wanted = set(emails)
    if not wanted:
        return {}
    snapshot = build_snapshot(source.lookup(wanted))
    return {email: record for email, record in snapshot.records.items() if email in wanted}
