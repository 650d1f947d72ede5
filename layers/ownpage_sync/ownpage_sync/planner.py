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

import math
import unicodedata
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from functools import cached_property

from ownpage_sync.emails import canonical_key, is_plausible_email, mask_email
from ownpage_sync.models import Action, Cause, Operation, OwnpageSubscriber, SubscriberRecord
from ownpage_sync.sources.base import RawSubscriber, RowChunks, chunked
from ownpage_sync.values import normalise_data, normalise_data_value, parse_timestamp

KNOWN_CAUSES = frozenset(cause.value for cause in Cause)
DEFAULT_SUPPRESSING_CAUSES = frozenset({Cause.READER.value, Cause.HARD_BOUNCE.value, Cause.MULTIPLE_BOUNCES.value})
MAX_SAMPLES = 20


class State(IntEnum):
    """An Ownpage row's status as stored in the index (3 bits)."""

    SUBSCRIBED = 0
    PUBLISHER = 1
    READER = 2
    MULTIPLE_BOUNCES = 3
    HARD_BOUNCE = 4
    UNKNOWN = 5  # no cause, a cause Ownpage may add later, or a status that could not be read


_STATE_OF_CAUSE = {cause: State[cause] for cause in KNOWN_CAUSES}

# The packed integer: bits 0-2 state, 3 listed by the source, 4 spellings kept aside, 5 ambiguous
# field hashes (a row read twice with different data), then the payload: for a subscribed row one
# 32-bit hash per compared field, for an unsubscribed one its unsubscription time (ms, rounded up; 0
# when unknown: no consent can be later than an unknown time).
_STATE = 0b111
LISTED = 1 << 3
SPELLED = 1 << 4
AMBIGUOUS = 1 << 5
_FLAGS = LISTED | SPELLED
_FLAG_BYTE = 0b111111
_SHIFT = 6
_HASH = 0xFFFFFFFF
_M64 = (1 << 64) - 1
# How far past the plan's own clock a consent time may be (a database clock running ahead); later is a
# placeholder such as `9999-12-31`, which would otherwise lift every suppression.
CONSENT_CLOCK_MARGIN = timedelta(days=1)
# What str.strip() removes from ASCII text (the separators \x1c-\x1f included), for bytes.
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())


@dataclass(frozen=True)
class PlanPolicy:
    """What the planner may do. A missing or unknown cause always suppresses (the safe reading)."""

    unsubscribe_cause: str = Cause.PUBLISHER.value
    suppressing_causes: frozenset[str] = DEFAULT_SUPPRESSING_CAUSES

    def suppresses(self, cause: str | None) -> bool:
        return cause is None or cause not in KNOWN_CAUSES or cause in self.suppressing_causes

    @cached_property
    def _suppressing(self) -> tuple[bool, ...]:
        return tuple(
            state == State.UNKNOWN or (state != State.SUBSCRIBED and state.name in self.suppressing_causes)
            for state in State
        )

    def suppresses_state(self, state: int) -> bool:
        return self._suppressing[state]

    def rank(self, state: int) -> int:
        """How restrictive a status is: subscribed < re-subscribable < suppressed (unknown last)."""
        if state == State.SUBSCRIBED:
            return 0
        return state + (16 if self._suppressing[state] else 8)


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


@dataclass
class OwnpageStats:
    rows: int = 0  # distinct spellings read
    subscribed: int = 0  # of which subscribed
    repeated_rows: int = 0  # a spelling read again (offset paging over a changing list)
    unreadable_rows: int = 0  # without a usable email: skipped
    unreadable_times: int = 0  # unsubscribed_at present but unreadable (treated as unknown)
    unreadable_status: int = 0  # no readable `subscribed`: treated as unsubscribed for an unknown cause
    shared_keys: int = 0  # keys held by several spellings (most restrictive status wins)
    seen_unsubscribed: int = 0  # spellings first read as unsubscribed (the read proof compares it)
    resubscribable: int = 0  # spellings read unsubscribed for a cause the sync may lift (the publisher's)
    samples: list[str] = field(default_factory=list)  # masked

    @property
    def unsubscribed(self) -> int:
        return self.rows - self.subscribed


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


# --- the Ownpage side ------------------------------------------------------------------------------


def _field_hash(value: str | None) -> int:
    """32 bits of Python's (per-process randomised) hash of the value's UTF-8 bytes: equal values
    give equal hashes; a collision between different values (2^-32 per changed field) is drawn afresh
    by the next run. ASCII text hashes as its bytes do (CPython hashes both from the same buffer), so
    only other text is encoded, and a source's bytes compare without decoding."""
    if value is None:
        return 0
    return (hash(value if value.isascii() else value.encode("utf-8", "surrogatepass")) & _HASH) or 1


def _folded(key: str) -> str:
    """A canonical key under full Unicode case folding (ß -> ss), composed again."""
    return unicodedata.normalize("NFC", key.casefold())


def _time_code(moment: datetime | None) -> int:
    if moment is None:
        return 0
    return max(1, math.ceil(moment.timestamp() * 1000))


class OwnpageIndex:
    """What the diff needs of every Ownpage row, held in columns rather than objects.

    Per row: one byte of flags (status, listed, spellings aside, ambiguous), a few 64-bit words of
    payload (a 32-bit hash per compared field, or the unsubscription time), and the canonical key's
    bytes in one shared buffer, found again through hash buckets. About 86 bytes of peak memory per
    subscriber at 1M, where a dict of objects cost 160 (docs/scaling.md). A spelling other than the key (or several
    spellings of one key) is kept aside in `spellings`, by row.

    `packed(row)` gives a row as one integer (flags | payload << 6): the form `_merge` and the
    general paths work on; the hot paths of the planner read the columns directly.
    """

    ROWS_PER_BUCKET = 48

    def __init__(self, policy: PlanPolicy, fields: Sequence[str], compare_guid: bool, expected_rows: int = 0):
        self.policy = policy
        self.fields = tuple(fields)
        self.compare_guid = compare_guid
        self.words = max(1, (32 * (len(self.fields) + compare_guid) + 63) // 64)
        self.flags = bytearray()
        self.payload = array("Q")
        self._ends = array("Q")
        self._blob = bytearray()
        self._bits = 0
        self._buckets_h: list[bytearray] = []  # 8-byte key hashes, searched in C with bytearray.find
        self._buckets_r: list[array[int]] = []  # the row of each hash, same position
        self._rebucket(max(1, expected_rows))
        self.spellings: dict[int, dict[str, int]] = {}  # row -> spelling -> its own packed reading
        self.stats = OwnpageStats()

    def __len__(self) -> int:
        return len(self.flags)

    # -- storage -------------------------------------------------------------------------------------

    def _rebucket(self, rows: int) -> None:
        bits = max(1, (rows // self.ROWS_PER_BUCKET).bit_length())
        self._bits = bits
        self._shift = 64 - bits
        self._buckets_h = [bytearray() for _ in range(1 << bits)]
        self._buckets_r = [array("I") for _ in range(1 << bits)]
        for row in range(len(self.flags)):
            self._file(bytes(self.key_bytes(row)), row)

    def _file(self, kb: bytes, row: int) -> None:
        h = hash(kb) & _M64
        self._buckets_h[h >> self._shift] += h.to_bytes(8, "little")
        self._buckets_r[h >> self._shift].append(row)

    def find(self, kb: bytes) -> int:
        """The row of this key (its canonical form's bytes), or -1."""
        h = hash(kb) & _M64
        bucket = h >> self._shift
        hashes = self._buckets_h[bucket]
        needle = h.to_bytes(8, "little")
        position = hashes.find(needle)
        while position >= 0:
            if not position & 7:  # aligned on a hash, not straddling two
                row = self._buckets_r[bucket][position >> 3]
                start = self._ends[row - 1] if row else 0
                if self._ends[row] - start == len(kb) and self._blob.startswith(kb, start):
                    return row
            position = hashes.find(needle, position + 1)
        return -1

    def insert(self, kb: bytes, packed: int) -> int:
        row = len(self.flags)
        self.flags.append(packed & _FLAG_BYTE)
        payload = packed >> _SHIFT
        for _ in range(self.words):
            self.payload.append(payload & _M64)
            payload >>= 64
        self._blob += kb
        self._ends.append(len(self._blob))
        self._file(kb, row)
        if row >= self.ROWS_PER_BUCKET * 2 * len(self._buckets_h):
            self._rebucket(2 * row)
        return row

    def key_bytes(self, row: int) -> bytearray:
        start = self._ends[row - 1] if row else 0
        return self._blob[start : self._ends[row]]

    def key(self, row: int) -> str:
        return self.key_bytes(row).decode("utf-8", "surrogatepass")

    def packed(self, row: int) -> int:
        words, base = self.words, row * self.words
        payload = 0
        for i in range(words - 1, -1, -1):
            payload = payload << 64 | self.payload[base + i]
        return self.flags[row] | payload << _SHIFT

    def set_packed(self, row: int, packed: int) -> None:
        self.flags[row] = packed & _FLAG_BYTE
        payload, base = packed >> _SHIFT, row * self.words
        for i in range(self.words):
            self.payload[base + i] = payload & _M64
            payload >>= 64

    # -- folding rows in ---------------------------------------------------------------------------

    def add_all(self, rows: Iterable[OwnpageSubscriber]) -> None:
        """Fold rows in. The common row (a subscribed address, spelled as its key, met for the first
        time) takes a path with no call but the storage's; every other row goes through `add`."""
        fields, compare_guid, words = self.fields, self.compare_guid, self.words
        flags, payloads, blob, ends = self.flags, self.payload, self._blob, self._ends
        buckets_h, buckets_r, shift_bucket = self._buckets_h, self._buckets_r, self._shift
        added = 0
        for row in rows:
            spelling = row.email
            if row.subscribed is True and spelling.isascii() and not row.bad_time:
                key = spelling.strip().lower()
                if key == spelling:
                    kb = key.encode()
                    h = hash(kb) & _M64
                    needle = h.to_bytes(8, "little")
                    hashes = buckets_h[h >> shift_bucket]
                    # Not even the hash in its bucket: a key met for the first time (anything else,
                    # including an unaligned match, takes the general path).
                    if hashes.find(needle) < 0:
                        payload = shift = 0
                        if compare_guid:
                            guid = row.guid
                            if guid is not None:
                                payload = (
                                    hash(guid if guid.isascii() else guid.encode("utf-8", "surrogatepass")) & _HASH
                                ) or 1
                            shift = 32
                        data = row.data
                        for name in fields:
                            value = data.get(name)
                            if value is not None:
                                digest = hash(value if value.isascii() else value.encode("utf-8", "surrogatepass"))
                                payload |= ((digest & _HASH) or 1) << shift
                            shift += 32
                        number = len(flags)
                        flags.append(0)  # State.SUBSCRIBED, no flag
                        for _ in range(words):
                            payloads.append(payload & _M64)
                            payload >>= 64
                        blob += kb
                        ends.append(len(blob))
                        hashes += needle
                        buckets_r[h >> shift_bucket].append(number)
                        added += 1
                        if number >= self.ROWS_PER_BUCKET * 2 * len(buckets_h):
                            self._rebucket(2 * number)
                            buckets_h, buckets_r, shift_bucket = self._buckets_h, self._buckets_r, self._shift
                        continue
            self.add(row)
        self.stats.rows += added

    def add(self, row: OwnpageSubscriber) -> None:
        """Fold one row in. A row read again (paging over a changing list) or another spelling of the
        same key merges into the most restrictive status, whatever the order."""
        spelling = row.email
        key = canonical_key(spelling)
        if not key:
            self.stats.unreadable_rows += 1
            return
        packed = self._pack(row)
        kb = key.encode("utf-8", "surrogatepass")
        number = self.find(kb)
        if number < 0:
            self.stats.rows += 1
            self.stats.seen_unsubscribed += packed & _STATE != State.SUBSCRIBED
            if spelling != key:
                number = self.insert(kb, packed | SPELLED)
                self.spellings[number] = {spelling: packed}
            else:
                self.insert(kb, packed)
            return
        entry = self.packed(number)
        aside = self.spellings.get(number) if entry & SPELLED else None
        known = aside if aside is not None else {key: entry & ~_FLAGS}
        previous = known.get(spelling)
        if previous is None:
            self.stats.rows += 1
            self.stats.seen_unsubscribed += packed & _STATE != State.SUBSCRIBED
            if len(known) == 1:
                self.stats.shared_keys += 1
                if len(self.stats.samples) < MAX_SAMPLES:
                    self.stats.samples.append(mask_email(spelling))
            known[spelling] = packed
        else:
            self.stats.repeated_rows += 1
            known[spelling] = self._merge(previous, packed)
        if aside is None and (len(known) > 1 or spelling != key):
            self.spellings[number] = known
        merged = self._merge(entry & ~_FLAGS, packed) | (entry & LISTED)
        self.set_packed(number, merged | (SPELLED if number in self.spellings else 0))

    def _pack(self, row: OwnpageSubscriber) -> int:
        if row.subscribed is None:
            self.stats.unreadable_status += 1
        if row.bad_time:
            self.stats.unreadable_times += 1
        if row.subscribed:
            payload = 0
            shift = 0
            if self.compare_guid:
                payload = _field_hash(row.guid)
                shift = 32
            for name in self.fields:
                payload |= _field_hash(row.data.get(name)) << shift
                shift += 32
            return State.SUBSCRIBED | payload << _SHIFT
        cause = row.unsubscribed_cause
        state = _STATE_OF_CAUSE.get(cause or "", State.UNKNOWN) if row.subscribed is False else State.UNKNOWN
        return state | _time_code(row.unsubscribed_at) << _SHIFT

    def _merge(self, a: int, b: int) -> int:
        """Two readings of one key (flags excluded): the most restrictive status wins."""
        state_a, state_b = a & _STATE, b & _STATE
        if state_a == State.SUBSCRIBED and state_b == State.SUBSCRIBED:
            return a if a == b else State.SUBSCRIBED | AMBIGUOUS
        rank_a, rank_b = self.policy.rank(state_a), self.policy.rank(state_b)
        winner, loser = (a, b) if rank_a >= rank_b else (b, a)
        state_l = loser & _STATE
        if self.policy.suppresses_state(winner & _STATE) and self.policy.suppresses_state(state_l):
            # A consent must be later than every suppressing unsubscription; an unknown time wins.
            time_w, time_l = winner >> _SHIFT, loser >> _SHIFT
            time = 0 if not time_w or not time_l else max(time_w, time_l)
            return (winner & _STATE) | time << _SHIFT
        return winner

    # -- reading it back -----------------------------------------------------------------------------

    def spellings_of(self, number: int) -> Mapping[str, int]:
        if self.flags[number] & SPELLED:
            return self.spellings[number]
        return {self.key(number): self.packed(number) & ~_FLAGS}

    def respelled_keys(self) -> Iterator[str]:
        """The keys held under at least one spelling other than the key itself."""
        for number, known in self.spellings.items():
            key = self.key(number)
            if any(spelling != key for spelling in known):
                yield key

    def primary_spelling(self, number: int) -> str:
        """The spelling to write to: the most restrictive row's (ties: the smallest spelling)."""
        if not self.flags[number] & SPELLED:
            return self.key(number)
        rows = self.spellings[number]
        return min(rows, key=lambda spelling: (-self.policy.rank(rows[spelling] & _STATE), spelling))


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
        expected_rows: int = 0,
        now: datetime | None = None,
    ):
        """`now`: when the plan is made; a consent time later than it (beyond CONSENT_CLOCK_MARGIN) is
        a placeholder (`9999-12-31`), not an opt-in, and is ignored like an unreadable one."""
        self.policy = policy
        self._latest_consent = None if now is None else now + CONSENT_CLOCK_MARGIN
        self.index = OwnpageIndex(policy, fields, compare_guid, expected_rows)
        self.source = SourceStats()
        self._pending: dict[bytes, _Pending] = {}
        self._suppressed: dict[int, None] = {}  # rows, an insertion-ordered set
        self._refused: set[bytes] = set()  # new keys refused as implausible (counted once)
        self._source_started = False

    # -- input ----------------------------------------------------------------------------------------

    def add_ownpage(self, rows: Iterable[OwnpageSubscriber]) -> None:
        if self._source_started:
            raise RuntimeError("every Ownpage row must be folded before the first source row")
        self.index.add_all(rows)

    def add_source(self, rows: Iterable[RawSubscriber], progress: Callable[[int], None] | None = None) -> None:
        """Fold the source's rows in (see `add_source_rows`)."""
        self.add_source_rows(chunked(rows, self.index.fields), progress)

    def add_source_rows(self, read: RowChunks, progress: Callable[[int], None] | None = None) -> None:
        """Fold the source's rows in, in bulk form. The common row (an address Ownpage holds
        subscribed, met for the first time, every compared value equal) is compared straight from
        its fields, text or UTF-8 bytes, without a call; every other row becomes a RawSubscriber and
        goes through the general path. The fast path only ever concludes "equal" when the general
        one would: any doubt (a value that is not text, white space it does not strip) sends the row
        to the general path."""
        self._source_started = True
        index = self.index
        flags, payloads, words = index.flags, index.payload, index.words
        buckets_h, buckets_r, shift_bucket = index._buckets_h, index._buckets_r, index._shift
        blob, ends = index._blob, index._ends
        layout = read.layout
        positions = dict(layout.data)
        # Compared values in payload order (the guid first when it is compared); -1: never present.
        compared = [layout.guid if layout.guid is not None else -1] if index.compare_guid else []
        compared += [positions.get(name, -1) for name in index.fields]
        email_at = layout.email
        to_raw, general = read.to_raw, self._add_source_row
        stats = self.source
        matched = number = 0
        for chunk in read.chunks:
            for row in chunk:
                number += 1
                raw = row[email_at]
                kind = type(raw)
                if kind is bytes:
                    kb = raw.strip(_ASCII_SPACE).lower() if raw.isascii() else b""
                elif kind is str and raw.isascii():
                    kb = raw.strip().lower().encode()
                else:
                    kb = b""
                if kb:
                    # OwnpageIndex.find, inlined for its common case (the first aligned match is the
                    # key); anything else takes the general path, which looks again.
                    h = hash(kb) & _M64
                    position = buckets_h[h >> shift_bucket].find(h.to_bytes(8, "little"))
                    if position >= 0 and not position & 7:
                        found = buckets_r[h >> shift_bucket][position >> 3]
                        start = ends[found - 1] if found else 0
                        # Subscribed (state 0), not listed yet, hashes not ambiguous: compare the values.
                        if (
                            ends[found] - start == len(kb)
                            and blob.startswith(kb, start)
                            and not flags[found] & (_STATE | LISTED | AMBIGUOUS)
                        ):
                            base = found * words
                            payload = payloads[base]
                            for i in range(1, words):
                                payload |= payloads[base + i] << (64 * i)
                            same = True
                            for at in compared:
                                value = row[at] if at >= 0 else None
                                if value is not None:
                                    kind = type(value)
                                    if kind is bytes:
                                        value = value.strip(_ASCII_SPACE)
                                        digest = hash(value)
                                    else:
                                        # Text, or a number or flag read as text as the general path does.
                                        value = value.strip() if kind is str else normalise_data_value(value)
                                        if value is None:
                                            value = ""
                                        digest = hash(
                                            value if value.isascii() else value.encode("utf-8", "surrogatepass")
                                        )
                                    if value and ((digest & _HASH) or 1) != payload & _HASH:
                                        same = False
                                        break
                                payload >>= 32
                            if same:
                                flags[found] |= LISTED
                                matched += 1
                                continue
                general(to_raw(row, number))
            if progress is not None:
                progress(len(chunk))
        stats.rows_read += matched
        stats.subscribers += matched

    def _add_source_row(self, row: RawSubscriber) -> None:
        stats = self.source
        stats.rows_read += 1
        raw = row.email
        key = canonical_key(raw) if isinstance(raw, str) else ""
        if not key:
            stats.invalid += 1
            stats.note(row.where, "empty address", raw)
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
        state = entry & _STATE
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
        unsubscribed_ms = entry >> _SHIFT
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
        payload = entry >> _SHIFT
        ambiguous = bool(entry & AMBIGUOUS)
        index = self.index
        shift = 0
        guid_differs = False
        if index.compare_guid:
            if record.guid is not None:
                guid_differs = ambiguous or _field_hash(record.guid) != payload & _HASH
            shift = 32
        data: dict[str, str] = {}
        for name in index.fields:
            value = record.data.get(name)
            if value is not None and (ambiguous or _field_hash(value) != (payload >> shift) & _HASH):
                data[name] = value
            shift += 32
        # Attributes outside `fields` (and the guid when it is not compared) are not the mapping's:
        # never sent, or every run would send them again.
        return guid_differs, data

    # -- output ---------------------------------------------------------------------------------------

    def finish(self, read_complete: bool = True, allow_unsubscribe: bool = True) -> Plan:
        """The plan. `read_complete=False` holds back every subscribe: by omission for addresses the
        read did not show, and `subscribed: true` for rows it showed (on an Ownpage that matches
        spellings exactly, the address could have another, suppressed spelling the read missed);
        `allow_unsubscribe=False` plans no unsubscribe (a source look-up that could not be conclusive).

        A key suppressed under one spelling is not mailed under another: a subscribed twin of a
        suppressed key (an exact-matching Ownpage keeps `Ann@X.com` and `ann@x.com` apart) is
        unsubscribed, even though the source lists the key."""
        index, policy = self.index, self.policy
        unsubscribe: list[Operation] = []
        subscribed = resubscribable = 0
        lifted = [not policy.suppresses_state(state) and state != State.SUBSCRIBED for state in State]
        cause = policy.unsubscribe_cause
        for number, flag in enumerate(index.flags):
            if flag & SPELLED:
                rows = index.spellings[number]
                live = [spelling for spelling, state in rows.items() if state & _STATE == State.SUBSCRIBED]
                resubscribable += sum(lifted[state & _STATE] for state in rows.values())
            elif flag & _STATE:
                resubscribable += lifted[flag & _STATE]
                continue
            else:
                subscribed += 1
                if allow_unsubscribe and not flag & LISTED:
                    unsubscribe.append(Operation(Action.UNSUBSCRIBE, index.key(number), unsubscribed_cause=cause))
                continue
            subscribed += len(live)
            if allow_unsubscribe and live and (not flag & LISTED or number in self._suppressed):
                unsubscribe.extend(
                    Operation(Action.UNSUBSCRIBE, spelling, unsubscribed_cause=cause) for spelling in live
                )
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
            state = State(entry & _STATE)
            ms = entry >> _SHIFT
            suppressed.append(
                Suppression(
                    index.primary_spelling(number),
                    state.name if state != State.UNKNOWN else "UNKNOWN",
                    datetime.fromtimestamp(ms / 1000, UTC) if ms else None,
                )
            )
        held += len(unproven)
        unsubscribe, subscribe, paired = self._hold_folded_pairs(unsubscribe, subscribe, unproven)
        held += paired
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
        wide_unsubscribe = [op for op in unsubscribe if not op.email.isascii()]
        candidates = [*subscribe, *unwritten]
        wide_subscribe = [op for op in candidates if not op.email.isascii()]
        if not (unsubscribe and candidates) or not (wide_unsubscribe or wide_subscribe):
            return unsubscribe, subscribe, 0
        gone: dict[str, list[Operation]] = {}
        for op in wide_unsubscribe:
            gone.setdefault(_folded(op.key), []).append(op)
        if wide_subscribe:  # an ASCII row on Ownpage may be the fold of a new non-ASCII address
            for op in unsubscribe:
                if op.email.isascii():
                    gone.setdefault(op.key, []).append(op)
        held_unsubscribes: set[int] = set()
        held_subscribes: set[int] = set()
        for op in candidates:  # a subscribe's address is its key
            matches = gone.get(op.email if op.email.isascii() else _folded(op.email))
            if matches:
                held_unsubscribes.update(id(match) for match in matches)
                held_subscribes.add(id(op))
                self.source.note(
                    "several addresses", "one address to a case-folding Ownpage as another: held", op.email
                )
        kept_subscribes = [op for op in subscribe if id(op) not in held_subscribes]
        kept_unsubscribes = [op for op in unsubscribe if id(op) not in held_unsubscribes]
        held = len(subscribe) - len(kept_subscribes) + len(held_unsubscribes)
        return kept_unsubscribes, kept_subscribes, held

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
    policy: PlanPolicy = PlanPolicy(),
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
    planner = Planner(policy, fields, compare_guid=True, expected_rows=len(ownpage_rows), now=now)
    planner.add_ownpage(ownpage_rows)
    planner.add_source(rows)
    return planner.finish(read_complete=read_complete, allow_unsubscribe=allow_unsubscribe)
