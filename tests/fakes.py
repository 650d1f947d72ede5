"""In-memory stand-ins for the ports, for unit tests of the logic (the real adapters are tested against
moto's server, the databases and the emulator). FakeOwnpage models Ownpage's *documented* upsert and
lets a test choose how its unknowns turn out: how addresses are matched (canonically, or exactly as
stored) and what a read shows (any subset, order, repetition or re-spelling of the true rows)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ownpage_sync.emails import canonical_key
from ownpage_sync.models import Operation, OwnpageSubscriber
from ownpage_sync.ports import OwnpageLookup, RunRecord, SubscriberCounts, UpsertResult
from ownpage_sync.sources.base import RawSubscriber, RowChunks, SourceLookup, SourceShape, chunked
from ownpage_sync.spellings import SpellingSnapshot
from ownpage_sync.values import normalise_data

APPLIED_AT = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)  # when the fake records our unsubscribes
SUPPRESSING = frozenset({"READER", "HARD_BOUNCE", "MULTIPLE_BOUNCES"})


@dataclass
class Row:
    """One subscriber as the fake Ownpage stores it (history fields included: they must survive)."""

    email: str  # the spelling Ownpage keeps
    subscribed: bool
    guid: str | None = None
    data: dict[str, str] = field(default_factory=dict)
    unsubscribed_at: datetime | None = None
    unsubscribed_cause: str | None = None
    send_count: int = 0

    def read(self, spelling: str | None = None) -> OwnpageSubscriber:
        return OwnpageSubscriber(
            email=spelling or self.email,
            subscribed=self.subscribed,
            guid=self.guid,
            data=normalise_data(self.data),
            unsubscribed_at=self.unsubscribed_at,
            unsubscribed_cause=self.unsubscribed_cause,
        )


Read = Callable[[list["Row"]], list[list[OwnpageSubscriber]]]


def whole_read(rows: list[Row]) -> list[list[OwnpageSubscriber]]:
    return [[row.read() for row in rows]]


class FakeOwnpage:
    """OwnpageLists over rows in memory. `matching="canonical"` matches an address by its canonical
    key (and keeps the first spelling); `"exact"` keeps and matches spellings exactly, as an Ownpage
    that is case- and Unicode-form-sensitive would. Every POST is recorded, and so is the evidence a
    safety test looks for: re-subscriptions of suppressed rows and rows created beside another
    spelling of the same key."""

    def __init__(self, rows: Iterable[Row] = (), matching: str = "canonical", read: Read = whole_read):
        assert matching in ("canonical", "exact")
        self.matching = matching
        self.read = read
        self.rows: dict[str, Row] = {}
        for row in rows:
            self.rows.setdefault(self._match(row.email), replace(row, data=dict(row.data)))
        self.posts: list[list[dict[str, Any]]] = []
        self.resubscribed: list[tuple[str, str | None]] = []  # (spelling, cause it had)
        self.twins: list[str] = []

    def _match(self, email: str) -> str:
        return canonical_key(email) if self.matching == "canonical" else email

    # -- inspection ---------------------------------------------------------------------------------

    def subscribed_keys(self) -> set[str]:
        return {canonical_key(row.email) for row in self.rows.values() if row.subscribed}

    def by_key(self) -> dict[str, list[Row]]:
        found: dict[str, list[Row]] = {}
        for row in self.rows.values():
            found.setdefault(canonical_key(row.email), []).append(row)
        return found

    @property
    def writes(self) -> int:
        return sum(len(post) for post in self.posts)

    # -- the port -----------------------------------------------------------------------------------

    def count(self, list_id: int) -> SubscriberCounts:
        on = sum(row.subscribed for row in self.rows.values())
        return SubscriberCounts(subscribed=on, unsubscribed=len(self.rows) - on)

    def read_pages(
        self,
        list_id: int,
        *,
        status: str = "all",
        fields: Sequence[str] = (),
        expected_rows: int = 0,
        progress: Any = None,
    ) -> Iterator[list[OwnpageSubscriber]]:
        wanted = [row for row in self.rows.values() if status == "all" or row.subscribed == (status == "subscribed")]
        yield from self.read(wanted)

    def find(self, list_id: int, spellings: Iterable[str], fields: Sequence[str] = ()) -> list[OwnpageSubscriber]:
        keys = {canonical_key(spelling) for spelling in spellings}
        return [row.read() for row in self.rows.values() if canonical_key(row.email) in keys]

    def find_many(self, list_id: int, wanted: Mapping[str, Sequence[str]], fields: Sequence[str] = ()) -> OwnpageLookup:
        return OwnpageLookup({key: self.find(list_id, spellings, fields) for key, spellings in wanted.items()})

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
        payloads = [operation.to_payload() for operation in operations]
        self.posts.append(payloads)
        self.apply(payloads)
        return UpsertResult(sent=len(payloads))

    def apply(self, payloads: Sequence[Mapping[str, Any]], now: datetime = APPLIED_AT) -> None:
        """POST .../subscribers (ownpage-api.md, "Subscribing, unsubscribing, updating").

        Absent `subscribed` keeps an existing row's status (a new address is subscribed); `false` sets
        the cause (default READER) and the time, unless the row is already unsubscribed; `guid` and
        `data_*` are set. Anything else is a field the sync has no business sending: refused.
        """
        for payload in payloads:
            unknown = set(payload) - {"email", "subscribed", "unsubscribed_cause", "guid"}
            assert all(key.startswith("data_") for key in unknown), f"unexpected payload fields {unknown}"
            email = payload["email"]
            match = self._match(email)
            row = self.rows.get(match)
            if row is None:
                key = canonical_key(email)
                if any(canonical_key(other.email) == key for other in self.rows.values()):
                    self.twins.append(email)
                row = self.rows[match] = Row(email, subscribed=payload.get("subscribed") is not False)
                row.guid = hashlib.md5(email.strip().lower().encode()).hexdigest()
                if not row.subscribed:
                    row.unsubscribed_at, row.unsubscribed_cause = now, payload.get("unsubscribed_cause", "READER")
            elif "subscribed" in payload:
                assert isinstance(payload["subscribed"], bool)
                if payload["subscribed"] and not row.subscribed:
                    self.resubscribed.append((row.email, row.unsubscribed_cause))
                    row.subscribed, row.unsubscribed_at, row.unsubscribed_cause = True, None, None
                elif not payload["subscribed"] and row.subscribed:
                    row.subscribed = False
                    row.unsubscribed_at, row.unsubscribed_cause = now, payload.get("unsubscribed_cause", "READER")
            else:
                assert "unsubscribed_cause" not in payload, "a cause without a status change means nothing"
            if "guid" in payload:
                row.guid = payload["guid"]
            for name, value in payload.items():
                if name.startswith("data_"):
                    row.data[name.removeprefix("data_")] = value


class InMemorySource:
    description = "in-memory rows"

    def __init__(self, rows: Sequence[RawSubscriber], shape: SourceShape | None = None, conclusive: bool = True):
        self.rows = list(rows)
        self._shape = shape
        self.conclusive = conclusive

    def shape(self) -> SourceShape:
        if self._shape is not None:
            return self._shape
        return SourceShape(
            guid=True, data=tuple(sorted({name for row in self.rows for name in row.data})), consent=True
        )

    def scan(self) -> Iterator[RawSubscriber]:
        return iter(self.rows)

    def scan_rows(self) -> RowChunks:
        return chunked(self.scan(), self.shape().data)

    def lookup(self, keys: Collection[str], also: Collection[str] = ()) -> SourceLookup:
        wanted = set(keys)
        rows = [row for row in self.rows if isinstance(row.email, str) and canonical_key(row.email) in wanted]
        return SourceLookup(rows, frozenset() if self.conclusive else frozenset(wanted))


class InMemoryLedger:
    def __init__(self, previous: int | None = None, converged_start: datetime | None = None):
        self.previous = previous
        self.converged_start = converged_start
        self.leases: list[str] = []
        self.released: list[tuple[str, str]] = []
        self.snapshot: SpellingSnapshot | None = None
        self.fast_lane_writes: Counter[datetime] = Counter()  # by clock hour

    def acquire(self, run_id: str, lease_seconds: int) -> datetime:
        self.leases.append(run_id)
        return datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)

    def release(self, run_id: str, outcome: str, counts: Mapping[str, int]) -> None:
        self.released.append((run_id, outcome))

    def last_successful_source_count(self) -> int | None:
        return self.previous

    def last_converged_start(self) -> datetime | None:
        return self.converged_start

    def history(self, limit: int = 20) -> list[RunRecord]:
        return []

    def put_spellings(self, snapshot: SpellingSnapshot) -> None:
        self.snapshot = snapshot

    def spellings(self) -> SpellingSnapshot | None:
        return self.snapshot

    def reserve_fast_lane_writes(self, at: datetime, writes: int, budget: int) -> bool:
        hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if self.fast_lane_writes[hour] + writes > budget:
            return False
        self.fast_lane_writes[hour] += writes
        return True
