"""The pure heart of the sync: (Ownpage rows, source rows) -> Plan, under the subscriber-safety policy.

No I/O here. Ownpage's rows are folded first into a compact index (one small integer per address:
status, a fixed-size hash per compared field, the unsubscription time); the source is then streamed
against it, and only the rows that change are kept in full. The rules (docs/safety.md):

- in the source, absent from the read                     -> subscribe *by omission* (no `subscribed`:
                                                             an unseen existing row keeps its status)
- in the source, read as unsubscribed by the publisher    -> resubscribe (`subscribed: true`)
- in the source, read as unsubscribed for a suppressing
  (or missing, unknown, unreadable) cause                 -> suppressed, unless the source's consent time
                                                             is later than Ownpage's unsubscribed_at
- in the source and read subscribed, guid/data differ     -> update (status untouched)
- read subscribed, its key absent from the source         -> unsubscribe with the publisher cause
- every write to a row the read showed uses Ownpage's own spelling of the address;
- two Ownpage rows with one key: the most restrictive status wins, whatever the read order;
- whatever the source lists is never unsubscribed, valid by our rules or not;
- nothing is ever deleted; attributes the mapping does not mention are never touched.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any

import numpy as np

from ownpage_sync.emails import folded_key, is_plausible_email, mask_email, source_key
from ownpage_sync.index import (
    AMBIGUOUS,
    HASH,
    KNOWN_CAUSES,
    LISTED,
    MAX_SAMPLES,
    MERGED,
    SHIFT,
    SPELLED,
    STATE,
    OwnpageIndex,
    OwnpageStats,
    PlanPolicy,
    State,
    column_keys,
    field_hash,
    value_hashes,
)
from ownpage_sync.models import Action, Operation, OwnpageSubscriber, SubscriberRecord
from ownpage_sync.sources.base import ColumnChunk, RawSubscriber, RowChunks, chunked
from ownpage_sync.values import normalise_column, normalise_data, normalise_data_value, parse_timestamp

# How far past the plan's own clock a consent time may be (a database clock running ahead); later is a
# placeholder such as `9999-12-31`, which would otherwise lift every suppression.
CONSENT_CLOCK_MARGIN = timedelta(days=1)

DEFAULT_POLICY = PlanPolicy()

__all__ = [
    "CONSENT_CLOCK_MARGIN",
    "KNOWN_CAUSES",
    "OwnpageStats",
    "Plan",
    "PlanPolicy",
    "Planner",
    "SourceProblem",
    "SourceStats",
    "Suppression",
    "merge_records",
    "plan_changes",
]


@dataclass(frozen=True, slots=True)
class Suppression:
    """A source subscriber Ownpage must not be told to mail: the reader or the mail system said no."""

    email: str  # Ownpage's spelling
    cause: str
    unsubscribed_at: datetime | None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "email": self.email,
            "cause": self.cause,
            "unsubscribed_at": self.unsubscribed_at.isoformat() if self.unsubscribed_at else None,
        }


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """A source row that was not used as is. Carries only a masked address."""

    where: str
    reason: str
    masked_email: str

    def to_dict(self) -> dict[str, str]:
        return {"where": self.where, "reason": self.reason, "email": self.masked_email}


@dataclass
class SourceStats:
    rows_read: int = 0
    subscribers: int = 0  # distinct addresses listed (those Ownpage holds, and the new ones we can send)
    invalid: int = 0  # new addresses we will not send (empty, not plausible): reported, never written
    duplicates: int = 0  # rows repeating an address with nothing new
    collisions: int = 0  # different rows whose addresses have one key
    invalid_consent: int = 0  # consent times that mattered and could not be read (ignored: the safe reading)
    shared_guid: int = 0  # addresses written with a guid another written address has
    samples: list[SourceProblem] = field(default_factory=list)

    def note(self, where: str, reason: str, email: object) -> None:
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(SourceProblem(where, reason, mask_email(email)))


@dataclass(frozen=True)
class Plan:
    to_subscribe: tuple[Operation, ...] = ()  # by omission
    to_resubscribe: tuple[Operation, ...] = ()  # `subscribed: true`
    to_unsubscribe: tuple[Operation, ...] = ()
    to_update: tuple[Operation, ...] = ()
    suppressed: tuple[Suppression, ...] = ()
    # Writes held back this run for lack of proof: every subscribe of a read not proven complete, and
    # both writes of a pair a case-folding Ownpage may take for one row (Planner.finish).
    held: int = 0
    unchanged: int = 0
    resubscribed_by_consent: int = 0  # suppressed addresses the source shows a newer opt-in for
    source: SourceStats = field(default_factory=SourceStats)
    ownpage: OwnpageStats = field(default_factory=OwnpageStats)

    @property
    def source_count(self) -> int:
        return self.source.subscribers

    @property
    def ownpage_subscribed(self) -> int:
        return self.ownpage.subscribed

    @property
    def ownpage_total(self) -> int:
        return self.ownpage.rows

    @property
    def is_empty(self) -> bool:
        return not self.write_count

    @property
    def write_count(self) -> int:
        return len(self.to_subscribe) + len(self.to_resubscribe) + len(self.to_unsubscribe) + len(self.to_update)

    def operations(self) -> Iterator[Operation]:
        """All writes, unsubscribes first: stopping mail to people who left is the most urgent."""
        yield from self.to_unsubscribe
        yield from self.to_resubscribe
        yield from self.to_subscribe
        yield from self.to_update

    def suppressed_by_cause(self) -> dict[str, int]:
        return dict(sorted(Counter(item.cause for item in self.suppressed).items()))

    def counts(self) -> dict[str, int]:
        return {
            "source": self.source.subscribers,
            "source_invalid": self.source.invalid,
            "ownpage_subscribed": self.ownpage.subscribed,
            "ownpage_total": self.ownpage.rows,
            "to_subscribe": len(self.to_subscribe) + len(self.to_resubscribe),
            "to_resubscribe": len(self.to_resubscribe),
            "to_unsubscribe": len(self.to_unsubscribe),
            "to_update": len(self.to_update),
            "suppressed": len(self.suppressed),
            "resubscribed_by_consent": self.resubscribed_by_consent,
            "unchanged": self.unchanged,
            "held": self.held,
        }


@functools.cache
def _ambiguous_letters() -> frozenset[str]:
    """Non-ASCII characters of a key that another lower-case character folds to the same as (σ and
    ς, μ and µ, s and ſ, a and ａ): their keys may have twins no spelling rule can list."""
    groups: dict[str, set[str]] = {}
    for point in range(0x20, 0x10000):
        if 0xD800 <= point < 0xE000:
            continue
        lowered = chr(point).lower()
        if len(lowered) == 1:
            groups.setdefault(folded_key(lowered), set()).add(lowered)
    return frozenset(ch for members in groups.values() if len(members) > 1 for ch in members if not ch.isascii())


def may_fold_into_another(key: str) -> bool:
    """Whether an Ownpage matching loosely (`folded_key`) may take this key for another key no look-up
    can name: a non-ASCII key that folding changes, or that holds an ambiguous letter."""
    return not key.isascii() and (folded_key(key) != key or not _ambiguous_letters().isdisjoint(key))


MAX_SHARP_S = 2  # `ss` in a key beyond which its `ß` spellings (2 ** n) are not guessed
FOLDED_HOLD = "one address to a case-folding Ownpage as another: held"  # its note in source.samples


def fold_twins(key: str) -> set[str]:
    """Other keys an Ownpage matching with full Unicode case folding would take for this one: its
    folded form (`straße@` -> `strasse@`), and the `ß` each `ss` may stand for (`strasse@` ->
    `straße@`, for up to MAX_SHARP_S of them). Ligatures (`ﬁ`) are folded, not guessed."""
    twins = {folded_key(key)}
    parts = key.split("ss")
    if 1 < len(parts) <= MAX_SHARP_S + 1:
        for joints in itertools.product(("ss", "ß"), repeat=len(parts) - 1):
            twins.add(parts[0] + "".join(joint + part for joint, part in zip(joints, parts[1:], strict=True)))
    twins.discard(key)
    return twins


# --- the source side -------------------------------------------------------------------------------


def _record(row: RawSubscriber, key: str) -> SubscriberRecord:
    return SubscriberRecord(key, normalise_data_value(row.guid), normalise_data(row.data), None)


def _order(record: SubscriberRecord) -> tuple[bool, str, list[tuple[str, str]]]:
    return (record.guid is None, record.guid or "", sorted(record.data.items()))


def merge_records(kept: SubscriberRecord, other: SubscriberRecord) -> SubscriberRecord:
    """Deterministic choice between different source rows of one address, whatever the read order.

    One row is kept whole (a row with a guid before one without, then the smallest guid, then the
    smallest data); the newest consent time is kept. A total order, so three or more colliding rows
    give the same result in any order.
    """
    first = min((kept, other), key=_order)
    consents = [c for c in (kept.consented_at, other.consented_at) if c is not None]
    return SubscriberRecord(first.email, first.guid, first.data, max(consents, default=None))


class _Kind(IntEnum):
    SUBSCRIBE = 0  # a key the read did not show
    RESUBSCRIBE = 1  # read as unsubscribed by the publisher
    CONSENT = 2  # read as suppressed, with a newer consent
    UPDATE = 3  # read subscribed with other values


@dataclass
class _Pending:
    kind: _Kind
    record: SubscriberRecord
    row: int = -1  # its row in the index (-1: an address the read did not show)


class Planner:
    """Folds Ownpage's rows, then the source's, into a Plan. Pure: data in, plan out.

    Source rows that repeat an address resolve the same whatever their order: a row that already
    matches Ownpage wins (nothing to write); otherwise the merge_records order picks the values; for
    a suppressed address only rows carrying a newer consent count.
    """

    def __init__(
        self,
        policy: PlanPolicy,
        fields: Sequence[str] = (),
        compare_guid: bool = True,
        now: datetime | None = None,
    ):
        """`now`: when the plan is made; a consent time later than it (beyond CONSENT_CLOCK_MARGIN) is
        a placeholder (`9999-12-31`), not an opt-in, and is ignored like an unreadable one."""
        self.policy = policy
        self._latest_consent = None if now is None else now + CONSENT_CLOCK_MARGIN
        self.index = OwnpageIndex(policy, fields, compare_guid)
        self.source = SourceStats()
        self._pending: dict[bytes, _Pending] = {}
        self.unseen_respelled: list[str] = []  # keys held by `finish(respelled_before=...)`
        self._suppressed: dict[int, None] = {}  # rows, an insertion-ordered set
        self._refused: set[bytes] = set()  # new keys refused as implausible (counted once)
        self._source_started = False

    # -- input ----------------------------------------------------------------------------------------

    def add_ownpage(self, rows: Iterable[OwnpageSubscriber]) -> None:
        if self._source_started:
            raise RuntimeError("every Ownpage row must be folded before the first source row")
        self.index.add_all(rows if isinstance(rows, Sequence) else list(rows))

    def ownpage_stats(self) -> OwnpageStats:
        """What the rows folded so far amount to (the read proof compares it with Ownpage's count)."""
        return self.index.stats

    def add_source(self, rows: Iterable[RawSubscriber], progress: Callable[[int], None] | None = None) -> None:
        """Fold the source's rows in (see `add_source_rows`)."""
        self.add_source_rows(chunked(rows, self.index.fields), progress)

    def add_source_rows(self, read: RowChunks, progress: Callable[[int], None] | None = None) -> None:
        """Fold the source's rows in, in bulk form, a chunk at a time. The common row (an address
        Ownpage holds subscribed, met for the first time, every compared value equal) is matched by
        columns: the chunk's keys found at once, its field hashes compared as arrays. Every other row
        becomes a RawSubscriber and goes through the general path. The bulk path only ever concludes
        "equal" when the general one would: any doubt (an address or a value that is not text, a
        binary column, a key met twice) sends the row to the general path. Keys are made as the
        general path makes them (emails.source_key; a column already canonical checked at once)."""
        self._source_started = True
        layout = read.layout
        positions = dict(layout.data)
        # Compared values in payload order (the guid first when it is compared); -1: never present.
        compared = [layout.guid if layout.guid is not None else -1] if self.index.compare_guid else []
        compared += [positions.get(name, -1) for name in self.index.fields]
        done = 0
        for chunk in read.chunks:
            count = len(chunk)
            if not count:
                continue
            general = self._match_chunk(chunk, layout.email, compared, read.opaque)
            for position in general:
                self.add_source_row(read.to_raw(chunk[position], done + position + 1))
            done += count
            if progress is not None:
                progress(count)

    def _match_chunk(
        self, chunk: Sequence[Sequence[Any]], email_at: int, compared: Sequence[int], opaque: frozenset[int]
    ) -> list[int]:
        """Mark the chunk's common rows listed; return the positions of the others, in order."""
        if email_at in opaque:
            return list(range(len(chunk)))
        if isinstance(chunk, ColumnChunk):
            column: Callable[[int], list[Any]] = chunk.column
        else:

            def column(at: int) -> list[Any]:
                return [row[at] for row in chunk]

        index = self.index
        keys = column_keys(column(email_at))
        rows = index.find_all([key or b"" for key in keys])  # no key is empty: b"" finds nothing
        flags, payload = index.columns()
        common = rows >= 0
        common[common] = (flags[rows[common]] & (STATE | LISTED | AMBIGUOUS)) == 0
        at = np.flatnonzero(common)
        _, first = np.unique(rows[at], return_index=True)
        if len(first) < len(at):  # a key twice in the chunk: the repeats take the general path
            common[at] = False
            common[at[first]] = True
        words = np.uint64(index.words)
        for slot, position in enumerate(compared):
            at = np.flatnonzero(common)
            if position < 0 or not len(at):
                continue
            if position in opaque:  # only the general path reads such a value
                values = column(position)
                common[at[np.fromiter((values[i] is not None for i in at.tolist()), np.bool_, len(at))]] = False
                continue
            mine = value_hashes(normalise_column(column(position)))[at]
            word = payload[rows[at].astype(np.uint64) * words + np.uint64(slot // 2)]
            theirs = (word >> np.uint64(32 * (slot % 2))) & np.uint64(HASH)
            common[at[(mine != 0) & (mine != theirs)]] = False
        listed = rows[common]
        flags[listed] |= LISTED
        self.source.rows_read += len(listed)
        self.source.subscribers += len(listed)
        return np.flatnonzero(~common).tolist()

    def add_source_row(self, row: RawSubscriber) -> None:
        """Fold one source row in by the general path (the bulk path's rows, and its oracle in tests)."""
        stats = self.source
        stats.rows_read += 1
        key = source_key(row.email)
        if not key:
            stats.invalid += 1
            stats.note(row.where, "empty address", row.email)
            return
        kb = key.encode("utf-8", "surrogatepass")
        index = self.index
        number = index.find(kb)
        if number < 0:
            self._add_new(row, key, kb)
            return
        repeated = bool(index.flags[number] & LISTED)
        if not repeated:
            index.flags[number] |= LISTED
            stats.subscribers += 1
        entry = index.packed(number)
        state = entry & STATE
        if state == State.SUBSCRIBED:
            self._add_subscribed(row, key, kb, number, entry, repeated)
        elif not self.policy.suppresses_state(state):
            self._add_resubscribable(row, key, kb, number)
        else:
            self._add_suppressed(row, key, kb, number, entry, repeated)

    def _add_new(self, row: RawSubscriber, key: str, kb: bytes) -> None:
        stats = self.source
        pending = self._pending.get(kb)
        if pending is None:
            if kb in self._refused:
                stats.duplicates += 1
                return
            if not is_plausible_email(key):
                self._refused.add(kb)
                stats.invalid += 1
                stats.note(row.where, "not a plausible email address (never sent)", key)
                return
            stats.subscribers += 1
            self._pending[kb] = _Pending(_Kind.SUBSCRIBE, self._with_consent(row, key))
            return
        self._merge_pending(pending, row, key)

    def _add_subscribed(self, row: RawSubscriber, key: str, kb: bytes, number: int, entry: int, repeated: bool) -> None:
        record = _record(row, key)
        guid_differs, data = self._differences(record, entry)
        differs = guid_differs or bool(data)
        pending = self._pending.get(kb)
        if not repeated:
            if differs:
                self._pending[kb] = _Pending(_Kind.UPDATE, record, number)
            return
        # The address again: a row matching Ownpage wins; otherwise the merge order decides.
        if pending is None:
            self._count_repeat(row, key, differs)
        elif not differs:
            del self._pending[kb]
            self.source.collisions += 1
            self.source.note(row.where, "collides with another row of the same address", key)
        else:
            self._merge_pending(pending, row, key, record)

    def _add_resubscribable(self, row: RawSubscriber, key: str, kb: bytes, number: int) -> None:
        pending = self._pending.get(kb)
        if pending is None:
            self._pending[kb] = _Pending(_Kind.RESUBSCRIBE, _record(row, key), number)
        else:
            self._merge_pending(pending, row, key)

    def _add_suppressed(self, row: RawSubscriber, key: str, kb: bytes, number: int, entry: int, repeated: bool) -> None:
        unsubscribed_ms = entry >> SHIFT
        record = self._with_consent(row, key)
        renewed = (
            record.consented_at is not None
            and unsubscribed_ms != 0
            and math.floor(record.consented_at.timestamp() * 1000) > unsubscribed_ms
        )
        pending = self._pending.get(kb)
        if renewed:
            if pending is None:
                self._suppressed.pop(number, None)
                self._pending[kb] = _Pending(_Kind.CONSENT, record, number)
                if repeated:
                    self._count_repeat(row, key, True)
            else:
                self._merge_pending(pending, row, key, record)
        elif pending is None and not repeated:
            self._suppressed[number] = None
        elif repeated:
            self._count_repeat(row, key, False)

    def _with_consent(self, row: RawSubscriber, key: str) -> SubscriberRecord:
        record = _record(row, key)
        if row.consented_at is None or row.consented_at == "":
            return record
        try:
            consented_at = parse_timestamp(row.consented_at)
        except (ValueError, TypeError):
            self.source.invalid_consent += 1
            self.source.note(row.where, "invalid consent time (ignored)", key)
            return record
        if consented_at is not None and self._latest_consent is not None and consented_at > self._latest_consent:
            self.source.invalid_consent += 1
            self.source.note(row.where, "consent time in the future (ignored)", key)
            return record
        return SubscriberRecord(record.email, record.guid, record.data, consented_at)

    def _merge_pending(
        self, pending: _Pending, row: RawSubscriber, key: str, record: SubscriberRecord | None = None
    ) -> None:
        if record is None:
            record = self._with_consent(row, key)
        if record == pending.record:
            self.source.duplicates += 1
            return
        self.source.collisions += 1
        self.source.note(row.where, "collides with another row of the same address", key)
        pending.record = merge_records(pending.record, record)

    def _count_repeat(self, row: RawSubscriber, key: str, differs: bool) -> None:
        if differs:
            self.source.collisions += 1
            self.source.note(row.where, "collides with another row of the same address", key)
        else:
            self.source.duplicates += 1

    def _differences(self, record: SubscriberRecord, entry: int) -> tuple[bool, dict[str, str]]:
        """Whether the guid differs, and the mapped values that differ, from a subscribed row."""
        payload = entry >> SHIFT
        ambiguous = bool(entry & AMBIGUOUS)
        index = self.index
        shift = 0
        guid_differs = False
        if index.compare_guid:
            if record.guid is not None:
                guid_differs = ambiguous or field_hash(record.guid) != payload & HASH
            shift = 32
        data: dict[str, str] = {}
        for name in index.fields:
            value = record.data.get(name)
            if value is not None and (ambiguous or field_hash(value) != (payload >> shift) & HASH):
                data[name] = value
            shift += 32
        # Attributes outside `fields` (and the guid when it is not compared) are not the mapping's:
        # never sent, or every run would send them again.
        return guid_differs, data

    # -- output ---------------------------------------------------------------------------------------

    def finish(
        self,
        read_complete: bool = True,
        allow_unsubscribe: bool = True,
        respelled_before: Callable[[str], bool] | None = None,
    ) -> Plan:
        """The plan. `read_complete=False` holds back every subscribe: by omission for addresses the
        read did not show, and `subscribed: true` for rows it showed (on an Ownpage that matches
        spellings exactly, the address could have another, suppressed spelling the read missed);
        `allow_unsubscribe=False` plans no unsubscribe (a source look-up that could not be conclusive).
        `respelled_before(key)`: whether the last complete read saw the key under another spelling.
        Such a key this read did not show at all is held for this run (`unseen_respelled`): the read,
        proven by counts, may have skipped it (counts can be fooled), and a subscribe by omission
        could create a row beside a suppressed one; the next run, whose proof is this read's, writes it.

        A key suppressed under one spelling is not mailed under another: a subscribed twin of a
        suppressed key (an exact-matching Ownpage keeps `Ann@X.com` and `ann@x.com` apart) is
        unsubscribed, even though the source lists the key."""
        index, policy = self.index, self.policy
        unsubscribe: list[Operation] = []
        lifted = [not policy.suppresses_state(state) and state != State.SUBSCRIBED for state in State]
        cause = policy.unsubscribe_cause
        flags, _ = index.columns()
        plain = (flags & (STATE | SPELLED | MERGED)) == 0  # subscribed, one spelling
        subscribed = int(np.count_nonzero(plain))
        if allow_unsubscribe:
            for number in np.flatnonzero(plain & ((flags & LISTED) == 0)).tolist():
                unsubscribe.append(Operation(Action.UNSUBSCRIBE, index.key(number), unsubscribed_cause=cause))
        alone = (flags & (SPELLED | MERGED)) == 0
        resubscribable = int(np.count_nonzero(alone & np.isin(flags & STATE, [s for s in State if lifted[s]])))
        for number in np.flatnonzero((flags & (SPELLED | MERGED)) == SPELLED).tolist():
            rows = index.spellings[number]
            live = [spelling for spelling, state in rows.items() if state & STATE == State.SUBSCRIBED]
            resubscribable += sum(lifted[state & STATE] for state in rows.values())
            subscribed += len(live)
            if allow_unsubscribe and live and (not flags[number] & LISTED or number in self._suppressed):
                unsubscribe.extend(
                    Operation(Action.UNSUBSCRIBE, spelling, unsubscribed_cause=cause) for spelling in live
                )
        del flags
        index.stats.subscribed = subscribed
        index.stats.resubscribable = resubscribable

        subscribe: list[Operation] = []
        unproven: list[Operation] = []  # subscribes a read not proven complete holds back
        resubscribe: list[Operation] = []
        update: list[Operation] = []
        held = consent = dropped = 0
        for pending in self._pending.values():
            record = pending.record
            if pending.kind == _Kind.SUBSCRIBE:
                operation = Operation(Action.SUBSCRIBE, record.email, record.guid, dict(record.data))
                if read_complete and respelled_before is not None and respelled_before(record.email):
                    self.unseen_respelled.append(record.email)
                    self.source.note(
                        "Ownpage's list",
                        "the last complete read saw this address in another spelling, this read not at all: held",
                        record.email,
                    )
                    unproven.append(operation)
                    continue
                (subscribe if read_complete else unproven).append(operation)
                continue
            entry = index.packed(pending.row)
            spelling = index.primary_spelling(pending.row)
            if pending.kind == _Kind.UPDATE:
                guid_differs, data = self._differences(record, entry)
                if guid_differs or data:
                    update.append(Operation(Action.UPDATE, spelling, record.guid if guid_differs else None, data))
                else:
                    dropped += 1
                continue
            if not read_complete:
                held += 1
                continue
            consent += pending.kind == _Kind.CONSENT
            resubscribe.append(Operation(Action.RESUBSCRIBE, spelling, record.guid, dict(record.data)))
        unchanged = self.source.subscribers - len(self._pending) - len(self._suppressed) + dropped

        suppressed = []
        for number in self._suppressed:
            entry = index.packed(number)
            state = State(entry & STATE)
            ms = entry >> SHIFT
            suppressed.append(
                Suppression(
                    index.primary_spelling(number),
                    state.name if state != State.UNKNOWN else "UNKNOWN",
                    datetime.fromtimestamp(ms / 1000, UTC) if ms else None,
                )
            )
        held += len(unproven)
        unsubscribe, subscribe, paired = self._hold_folded_pairs(unsubscribe, subscribe, unproven)
        folds = self._ownpage_folds()
        subscribe, folded_in = self._hold_folded_subscribes(subscribe, folds)
        (unsubscribe, resubscribe, update), shared = self._hold_writes_to_folded_rows(
            folds, unsubscribe, resubscribe, update
        )
        held += paired + folded_in + shared
        self._note_shared_guids(subscribe + resubscribe + update)

        def by_email(item: Operation) -> str:
            return item.email

        return Plan(
            to_subscribe=tuple(sorted(subscribe, key=by_email)),
            to_resubscribe=tuple(sorted(resubscribe, key=by_email)),
            to_unsubscribe=tuple(sorted(unsubscribe, key=by_email)),
            to_update=tuple(sorted(update, key=by_email)),
            suppressed=tuple(sorted(suppressed, key=lambda s: s.email)),
            held=held,
            unchanged=max(0, unchanged),
            resubscribed_by_consent=consent,
            source=self.source,
            ownpage=index.stats,
        )

    def _hold_folded_pairs(
        self, unsubscribe: list[Operation], subscribe: list[Operation], unwritten: Sequence[Operation] = ()
    ) -> tuple[list[Operation], list[Operation], int]:
        """Without the unsubscribe and the subscribe whose keys are one under full Unicode case folding
        (`straße@x.de` on Ownpage, unlisted; `strasse@x.de` new in the source). The key lower-cases
        only, but an Ownpage matching with case folding (unknown, ownpage-api.md) takes both for one
        row: unsubscribing the first and subscribing the second by omission would leave a reader the
        source lists unsubscribed. Both are held (counted, noted), every run, until the source or
        Ownpage spells the reader one way; a subscribe already held for another reason (`unwritten`)
        holds its unsubscribe too. Returns what is left and how many more writes were held."""
        # An address written in ASCII keys to ASCII: only the others need a look.
        wide_unsubscribe = [op for op in unsubscribe if not op.key.isascii()]  # Ownpage's `xn--` spelling too
        candidates = [*subscribe, *unwritten]
        wide_subscribe = [op for op in candidates if not op.email.isascii()]
        if not (unsubscribe and candidates) or not (wide_unsubscribe or wide_subscribe):
            return unsubscribe, subscribe, 0
        gone: dict[str, list[Operation]] = {}
        for op in wide_unsubscribe:
            gone.setdefault(folded_key(op.key), []).append(op)
        if wide_subscribe:  # an ASCII row on Ownpage may be the fold of a new non-ASCII address
            for op in unsubscribe:
                if op.key.isascii():
                    gone.setdefault(op.key, []).append(op)
        held_unsubscribes: set[int] = set()
        held_subscribes: set[int] = set()
        for op in candidates:  # a subscribe's address is its key
            matches = gone.get(op.email if op.email.isascii() else folded_key(op.email))
            if matches:
                held_unsubscribes.update(id(match) for match in matches)
                held_subscribes.add(id(op))
                self._note_folded_hold(op.email)
        kept_subscribes = [op for op in subscribe if id(op) not in held_subscribes]
        kept_unsubscribes = [op for op in unsubscribe if id(op) not in held_unsubscribes]
        held = len(subscribe) - len(kept_subscribes) + len(held_unsubscribes)
        return kept_unsubscribes, kept_subscribes, held

    def _note_folded_hold(self, email: str) -> None:
        """The sample every write held for case folding leaves in the report (masked)."""
        self.source.note("several addresses", FOLDED_HOLD, email)

    def _ownpage_folds(self) -> dict[str, set[str]]:
        """The keys of Ownpage's rows by their folded form (`folded_key`), for the rows that have a
        non-ASCII key or whose key is the fold of one: the only rows folding can make one with
        another (a scan of the key bytes; few rows qualify)."""
        folds: dict[str, set[str]] = {}
        for key in self.index.wide_keys():
            folds.setdefault(folded_key(key), set()).add(key)
        for folded, keys in folds.items():
            if folded.isascii() and self.index.find(folded.encode("ascii")) >= 0:
                keys.add(folded)
        return folds

    def _hold_writes_to_folded_rows(
        self, folds: dict[str, set[str]], *writes: list[Operation]
    ) -> tuple[tuple[list[Operation], ...], int]:
        """Without the writes to a row that folding makes one with another row Ownpage holds
        (`strasse@` unsubscribed by the reader, `straße@` by the publisher: rows made before Ownpage
        folded, or by a path that does not). An Ownpage matching with case folding applies a write
        to the oldest of them, whichever spelling it names: a `subscribed: true` meant for one would
        lift the other's "no", an update would give one reader the other's data: both are held
        (counted, noted) every run until one of the rows is gone or the source spells them apart.
        An unsubscribe is held only where it could land on a subscribed row the source lists; landing
        on a row already unsubscribed changes nothing, and the summary shows it (`nb_unsubscribed`
        short: applier.py), so it goes, and an Ownpage that keeps the rows apart is not left mailing
        a reader who left. Returns the writes left, in the order given, and how many were held."""
        group_of = {key: keys for keys in folds.values() if len(keys) > 1 for key in keys}
        if not group_of:
            return writes, 0
        wanted: dict[int, set[str]] = {}  # group -> its keys the source lists and Ownpage holds subscribed
        kept: list[list[Operation]] = []
        held = 0
        for operations in writes:
            left: list[Operation] = []
            for op in operations:
                group = group_of.get(op.key)
                if group is not None and op.action is Action.UNSUBSCRIBE:
                    keys = wanted.get(id(group))
                    if keys is None:
                        keys = wanted[id(group)] = {key for key in group if self._listed_and_subscribed(key)}
                    if not keys - {op.key}:
                        group = None  # it lands, at worst, on a row already unsubscribed: the summary shows it
                if group is None:
                    left.append(op)
                    continue
                held += 1
                self._note_folded_hold(op.email)
            kept.append(left)
        return tuple(kept), held

    def _listed_and_subscribed(self, key: str) -> bool:
        """Whether the source lists this key and Ownpage holds it subscribed (under some spelling)."""
        number = self.index.find(key.encode("utf-8", "surrogatepass"))
        if number < 0 or not self.index.flags[number] & LISTED:
            return False
        return any(state & STATE == State.SUBSCRIBED for state in self.index.spellings_of(number).values())

    def _hold_folded_subscribes(
        self, subscribe: list[Operation], folds: dict[str, set[str]]
    ) -> tuple[list[Operation], int]:
        """Without the subscribes of new addresses that full Unicode case folding makes one with a row
        Ownpage holds (`strasse@x.de` new in the source, `straße@x.de` on Ownpage and listed too), or
        with another new address (the first spelling in order goes). The keys lower-case apart, but
        an Ownpage matching with case folding (unknown, ownpage-api.md) takes the write for the other
        row: its guid and data would be overwritten by another reader's, run after run, and a run
        would call Ownpage in step while one row stood for two. Held (counted, noted) every run until
        the source spells the reader one way. Returns what is left and how many were held."""
        if not folds and all(op.email.isascii() for op in subscribe):
            return subscribe, 0
        kept: list[Operation] = []
        taken: set[str] = set()
        for op in sorted(subscribe, key=lambda op: op.email):
            folded = op.email if op.email.isascii() else folded_key(op.email)
            twins = folds.get(folded, set())  # the rows Ownpage holds that fold so
            if not twins and folded.isascii() and not op.email.isascii():  # an ASCII row of that key
                twins = {folded} if self.index.find(folded.encode("ascii")) >= 0 else set()
            if twins - {op.email} or folded in taken:
                self._note_folded_hold(op.email)
                continue
            taken.add(folded)
            kept.append(op)
        return kept, len(subscribe) - len(kept)

    def _note_shared_guids(self, written: Sequence[Operation]) -> None:
        """Ownpage ignores an entry whose guid another entry of the payload has, so such addresses
        would never converge: reported (the source must fix them), still planned."""
        owners: dict[str, str] = {}
        for operation in written:
            guid = operation.guid
            if guid is not None and owners.setdefault(guid, operation.email) != operation.email:
                self.source.shared_guid += 1
                self.source.note("several addresses", "guid shared with another address", operation.email)


def plan_changes(
    source: Iterable[RawSubscriber],
    ownpage: Iterable[OwnpageSubscriber],
    policy: PlanPolicy = DEFAULT_POLICY,
    *,
    read_complete: bool = True,
    allow_unsubscribe: bool = True,
    now: datetime | None = None,
) -> Plan:
    """The whole plan in one call, for small inputs (tests, the retry path, the fast lane): the
    compared fields are the data attributes the source rows carry."""
    rows = list(source)
    fields = sorted({name for row in rows for name in row.data})
    ownpage_rows = list(ownpage)
    planner = Planner(policy, fields, compare_guid=True, now=now)
    planner.add_ownpage(ownpage_rows)
    planner.add_source(rows)
    return planner.finish(read_complete=read_complete, allow_unsubscribe=allow_unsubscribe)
