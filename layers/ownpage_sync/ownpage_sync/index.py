"""Ownpage's side of the diff: every row read, held in columns, and found again by its key.

Per row: one byte of flags (status, listed, spellings aside, ambiguous, merged away), a few 64-bit
words of payload (a 32-bit hash per compared field, or the unsubscription time), the key's 64-bit
hash, and the canonical key's bytes in one shared buffer. Rows are appended as they are read, the
common ones a page at a time; `settle()` then merges the rows that share a key (a row read twice, or
several spellings of one address: the most restrictive status wins) and sorts the hashes, so that
keys are found by binary search, one at a time or a whole chunk of the source at once (NumPy).

Both sides hash a compared value the same way (`field_hash`, and the column forms `value_hashes`),
over its UTF-8 bytes: CPython hashes ASCII text and bytes alike, so a database's bytes compare
without being decoded.
"""

from __future__ import annotations

import math
import operator
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from functools import cached_property
from itertools import accumulate, islice, repeat
from typing import Any

import numpy as np
import numpy.typing as npt

from ownpage_sync.emails import IDNA_PREFIX, canonical_key, mask_email, source_key
from ownpage_sync.models import Cause, OwnpagePage, OwnpageSubscriber, SubscribedRows
from ownpage_sync.values import ASCII_SPACE, clean_edges

KNOWN_CAUSES = frozenset(cause.value for cause in Cause)
DEFAULT_SUPPRESSING_CAUSES = frozenset({Cause.READER.value, Cause.HARD_BOUNCE.value, Cause.MULTIPLE_BOUNCES.value})
MAX_SAMPLES = 20
IDNA = IDNA_PREFIX.encode("ascii")  # in a bytes column

Hashes = npt.NDArray[np.uint64]
Mask = npt.NDArray[np.bool_]


class State(IntEnum):
    """An Ownpage row's status as stored in the index (3 bits)."""

    SUBSCRIBED = 0
    PUBLISHER = 1
    READER = 2
    MULTIPLE_BOUNCES = 3
    HARD_BOUNCE = 4
    UNKNOWN = 5  # no cause, a cause Ownpage may add later, or a status that could not be read


STATE_OF_CAUSE = {cause: State[cause] for cause in KNOWN_CAUSES}

# The packed integer: bits 0-2 state, 3 listed by the source, 4 spellings kept aside, 5 ambiguous
# field hashes (a row read twice with different data), then the payload: for a subscribed row one
# 32-bit hash per compared field, for an unsubscribed one its unsubscription time (ms, rounded up; 0
# when unknown: no consent can be later than an unknown time). Bit 6 of the flag byte only: a row
# merged into an earlier row of its key (settle), read no more.
STATE = 0b111
LISTED = 1 << 3
SPELLED = 1 << 4
AMBIGUOUS = 1 << 5
MERGED = 1 << 6
FLAGS = LISTED | SPELLED
FLAG_BITS = 0b111111
SHIFT = 6
HASH = 0xFFFFFFFF
M64 = (1 << 64) - 1
_SIGN = np.uint64(1 << 63)  # int64 hashes, flipped here, sort as unsigned numbers


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


@dataclass
class OwnpageStats:
    rows: int = 0  # distinct spellings read
    subscribed: int = 0  # of which subscribed
    repeated_rows: int = 0  # a spelling read again (offset paging over a changing list)
    unreadable_rows: int = 0  # without a usable email: skipped
    unreadable_times: int = 0  # unsubscribed_at present but unreadable (treated as unknown)
    unreadable_status: int = 0  # no readable `subscribed`: treated as unsubscribed for an unknown cause
    # Rows without a `subscribed` field, read as subscribed (Ownpage may count them otherwise), and
    # rows whose address has no key (invisible characters only): the hashes of their distinct
    # spellings (never the addresses), for the read proof (odd values: few).
    bare: set[int] = field(default_factory=set)
    keyless: set[int] = field(default_factory=set)
    keyless_unsubscribed: set[int] = field(default_factory=set)  # of them, read other than subscribed
    shared_keys: int = 0  # keys held by several spellings (most restrictive status wins)
    # Spellings by the status they were first read with (a State each), for the read proof.
    seen_by_state: list[int] = field(default_factory=lambda: [0] * len(State))
    resubscribable: int = 0  # spellings read unsubscribed for a cause the sync may lift (the publisher's)
    samples: list[str] = field(default_factory=list)  # masked

    @property
    def unsubscribed(self) -> int:
        return self.rows - self.subscribed

    @property
    def seen_unsubscribed(self) -> int:
        """Spellings first read as unsubscribed (the read proof compares it), whatever the cause."""
        return sum(self.seen_by_state) - self.seen_by_state[State.SUBSCRIBED]


def field_hash(value: str | None) -> int:
    """32 bits of Python's (per-process randomised) hash of the value's UTF-8 bytes: equal values
    give equal hashes; a collision between different values (2^-32 per changed field) is drawn afresh
    by the next run; 0 for no value."""
    if value is None:
        return 0
    return (hash(value if value.isascii() else value.encode("utf-8", "surrogatepass")) & HASH) or 1


def time_code(moment: datetime | None) -> int:
    if moment is None:
        return 0
    return max(1, math.ceil(moment.timestamp() * 1000))


# --- columns: one field of many rows at a time --------------------------------------------------------


def column_keys(emails: Sequence[Any]) -> list[bytes | None]:
    """The canonical key of each address as UTF-8 bytes, as the planner's general path makes it (a
    database's bytes read as UTF-8, undecodable bytes escaped); None for a value that is not text
    or has no key (such a row takes the general path). A column already in canonical form, the
    common case, is checked at once rather than address by address."""
    if emails and all(type(email) is bytes for email in emails) and b"" not in emails:
        joined = b"\x00".join(emails)
        if joined.isascii() and joined.lower() == joined and clean_edges(joined) and IDNA not in joined:
            return list(emails)
    keys: list[bytes | None] = []
    for email in emails:
        lowered = email.strip(ASCII_SPACE).lower() if type(email) is bytes and email.isascii() else None
        if lowered is not None and IDNA not in lowered:  # source_key's result for ASCII, without decoding
            keys.append(lowered or None)
        elif type(email) is str or type(email) is bytes:
            keys.append(source_key(email).encode("utf-8", "surrogatepass") or None)
        else:
            keys.append(None)
    return keys


def spelled_as_key(emails: Sequence[str]) -> Mask:
    """Which addresses are spelled as their canonical key (for ASCII: trimmed and in lower case)."""
    count = len(emails)
    spelled = np.fromiter(map(bool, emails), np.bool_, count)
    spelled &= np.fromiter(map(operator.eq, emails, map(str.lower, emails)), np.bool_, count)
    spelled &= np.fromiter(map(operator.eq, emails, map(str.strip, emails)), np.bool_, count)
    wide = ~np.fromiter(map(str.isascii, emails), np.bool_, count)
    if IDNA_PREFIX in "\x00".join(emails).lower():  # an IDNA domain's key is its Unicode form
        wide |= np.fromiter((IDNA_PREFIX in email.lower() for email in emails), np.bool_, count)
    for at in np.flatnonzero(wide).tolist():
        spelled[at] = bool(emails[at]) and canonical_key(emails[at]) == emails[at]
    return spelled


def value_hashes(values: Sequence[str | bytes | None]) -> Hashes:
    """field_hash of each value (values.normalise_column's), as an array."""
    count = len(values)
    present: Mask | None = None
    kinds = set(map(type, values))
    if type(None) in kinds:
        kinds.discard(type(None))
        present = np.fromiter(map(operator.is_not, values, repeat(None)), np.bool_, count)
        empty = b"" if bytes in kinds else ""
        values = [empty if value is None else value for value in values]
    if kinds == {str}:
        if not "".join(values).isascii():  # type: ignore[arg-type]
            try:
                values = list(map(str.encode, values))  # type: ignore[arg-type]
            except UnicodeEncodeError:  # a lone surrogate
                values = [value.encode("utf-8", "surrogatepass") for value in values]  # type: ignore[union-attr]
    elif kinds - {bytes}:
        values = [value.encode("utf-8", "surrogatepass") if type(value) is str else value for value in values]
    hashes = np.fromiter(map(hash, values), np.int64, count).view(np.uint64) & np.uint64(HASH)
    hashes[hashes == 0] = 1
    if present is not None:
        hashes[~present] = 0
    return hashes


# --- the index -------------------------------------------------------------------------------------


class OwnpageIndex:
    """What the diff needs of every Ownpage row, held in columns rather than objects (see the module).

    `packed(row)` gives a row as one integer (flags | payload << 6): the form `_merge` and the
    general paths work on; the planner's bulk path reads the columns (`columns()`).
    """

    def __init__(self, policy: PlanPolicy, fields: Sequence[str], compare_guid: bool):
        self.policy = policy
        self.fields = tuple(fields)
        self.compare_guid = compare_guid
        self.words = max(1, (32 * (len(self.fields) + compare_guid) + 63) // 64)  # a 32-bit hash per field
        self.flags = bytearray()
        self.payload = array("Q")
        self._ends = array("I")  # where each key ends in `_blob` (4 GiB of keys at most)
        self._blob = bytearray()
        self._pending = array("q")  # hash(key bytes) of each row appended since the last settle
        self._settled = 0  # rows before this one are merged and found by `_sorted`
        self._sorted: npt.NDArray[np.int64] = np.empty(0, np.int64)  # the live rows' key hashes, sorted
        self._rows: npt.NDArray[np.int32] = np.empty(0, np.int32)  # the row of each, same position
        self._shift = 63
        self._starts: npt.NDArray[np.int32] = np.zeros(3, np.int32)  # bucket -> first position in `_sorted`
        self.spellings: dict[int, dict[str, int]] = {}  # row -> spelling -> its own packed reading
        self._stats = OwnpageStats()

    def __len__(self) -> int:
        return len(self.flags)

    @property
    def stats(self) -> OwnpageStats:
        """The read's figures, every row read so far merged in."""
        self.settle()
        return self._stats

    # -- storage -------------------------------------------------------------------------------------

    def _append(self, kb: bytes, packed: int) -> int:
        row = len(self.flags)
        self.flags.append(packed & FLAG_BITS)
        payload = packed >> SHIFT
        for _ in range(self.words):
            self.payload.append(payload & M64)
            payload >>= 64
        self._blob += kb
        self._ends.append(len(self._blob))
        self._pending.append(hash(kb))
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
        return self.flags[row] | payload << SHIFT

    def set_packed(self, row: int, packed: int) -> None:
        self.flags[row] = packed & FLAG_BITS
        payload, base = packed >> SHIFT, row * self.words
        for i in range(self.words):
            self.payload[base + i] = payload & M64
            payload >>= 64

    # -- folding rows in ---------------------------------------------------------------------------

    def add_all(self, rows: Sequence[OwnpageSubscriber]) -> None:
        """Fold a page in. Its plainly subscribed rows spelled as their key are appended first, as
        columns; then, through `add`, its other plainly subscribed rows and then the rest, each in
        page order. Rows sharing a key meet in `settle`, in that order: the one difference from
        folding the page row by row is that a spelling a single page shows both subscribed and not
        is counted as first read subscribed (`seen_unsubscribed`: the cautious side for the read
        proof), and which shared keys the masked samples name."""
        if isinstance(rows, OwnpagePage):
            columns, others = rows.subscribed, rows.others
        else:
            plain = [row for row in rows if row.subscribed is True and not row.bad_time]
            others = (
                [row for row in rows if row.subscribed is not True or row.bad_time] if len(plain) < len(rows) else []
            )
            columns = SubscribedRows(
                [row.email for row in plain],
                [row.guid for row in plain],
                self.fields,
                tuple([row.data.get(name) for row in plain] for name in self.fields),
            )
        emails = columns.emails
        if emails:
            joined = "\x00".join(emails)
            canonical = joined.isascii() and joined.lower() == joined and IDNA_PREFIX not in joined
            if canonical and clean_edges(joined) and "" not in emails:
                self._append_subscribed(columns)
            else:
                self._append_subscribed(columns, spelled_as_key(emails))
        for row in others:
            self.add(row)

    def _append_subscribed(self, columns: SubscribedRows, spelled: Mask | None = None) -> None:
        """Append the rows of `columns` spelled as their key (`spelled`; None: every row); the others
        through `add`, in page order."""
        count = len(columns) if spelled is None else int(np.count_nonzero(spelled))
        numbers = None if spelled is None else np.flatnonzero(spelled)
        if count:
            slots: list[Hashes] = [value_hashes(columns.guids)] if self.compare_guid else []
            slots += [value_hashes(columns.column(name)) for name in self.fields]
            words = np.zeros((len(columns), self.words), np.uint64)
            for slot, column in enumerate(slots):
                words[:, slot // 2] |= column << np.uint64(32 * (slot % 2))
            emails = columns.emails
            keys: list[str] = emails if numbers is None else list(map(emails.__getitem__, numbers.tolist()))
            self.payload.frombytes((words if numbers is None else words[numbers]).tobytes())
            self.flags += bytes(count)  # State.SUBSCRIBED, no flag
            blob = "".join(keys).encode("utf-8", "surrogatepass")
            if blob.isascii():  # an ASCII str is as long as its bytes and hashes as they do
                parts: Sequence[str | bytes] = keys
            else:
                parts = [key.encode("utf-8", "surrogatepass") for key in keys]
            self._ends.extend(islice(accumulate(map(len, parts), initial=len(self._blob)), 1, None))
            self._blob += blob
            self._pending.extend(map(hash, parts))
        if spelled is not None:
            for number in np.flatnonzero(~spelled).tolist():
                self.add(columns.row(number))

    def add(self, row: OwnpageSubscriber) -> None:
        """Fold one row in (merged with the other rows of its key by `settle`)."""
        spelling = row.email
        key = canonical_key(spelling)
        if not key:
            self._stats.unreadable_rows += 1
            self._stats.keyless.add(hash(spelling))
            if row.subscribed is not True or row.bare:  # a bare row: Ownpage may count it unsubscribed
                self._stats.keyless_unsubscribed.add(hash(spelling))
            return
        packed = self._pack(row)
        if spelling != key:
            number = self._append(key.encode("utf-8", "surrogatepass"), packed | SPELLED)
            self.spellings[number] = {spelling: packed}
        else:
            self._append(key.encode("utf-8", "surrogatepass"), packed)

    def _pack(self, row: OwnpageSubscriber) -> int:
        if row.subscribed is None:
            self._stats.unreadable_status += 1
        if row.bare:
            self._stats.bare.add(hash(row.email))
        if row.bad_time:
            self._stats.unreadable_times += 1
        if row.subscribed:
            payload = 0
            shift = 0
            if self.compare_guid:
                payload = field_hash(row.guid)
                shift = 32
            for name in self.fields:
                payload |= field_hash(row.data.get(name)) << shift
                shift += 32
            return State.SUBSCRIBED | payload << SHIFT
        cause = row.unsubscribed_cause
        state = STATE_OF_CAUSE.get(cause or "", State.UNKNOWN) if row.subscribed is False else State.UNKNOWN
        return state | time_code(row.unsubscribed_at) << SHIFT

    def _merge(self, a: int, b: int) -> int:
        """Two readings of one key (flags excluded): the most restrictive status wins."""
        state_a, state_b = a & STATE, b & STATE
        if state_a == State.SUBSCRIBED and state_b == State.SUBSCRIBED:
            return a if a == b else State.SUBSCRIBED | AMBIGUOUS
        rank_a, rank_b = self.policy.rank(state_a), self.policy.rank(state_b)
        winner, loser = (a, b) if rank_a >= rank_b else (b, a)
        state_l = loser & STATE
        if self.policy.suppresses_state(winner & STATE) and self.policy.suppresses_state(state_l):
            # A consent must be later than every suppressing unsubscription; an unknown time wins.
            time_w, time_l = winner >> SHIFT, loser >> SHIFT
            time = 0 if not time_w or not time_l else max(time_w, time_l)
            return (winner & STATE) | time << SHIFT
        return winner

    # -- settling: the rows of one key become one ----------------------------------------------------

    def settle(self) -> None:
        """Merge every row appended since the last call into the earlier rows of its key, in read
        order (the result and the counts are those of folding the rows one by one), and sort the keys'
        hashes for `find`. Cheap when nothing was appended; its peak is about 30 bytes per row."""
        start, total = self._settled, len(self.flags)
        if start == total:
            return
        new = np.frombuffer(self._pending, np.int64)
        if start:  # rows already settled first: a tie keeps them before the new ones (read order)
            hashes = np.concatenate((self._sorted, new))
            numbers = np.concatenate((self._rows, np.arange(start, total, dtype=np.int32)))
            order = np.argsort(hashes, kind="stable")
            ordered, rows = hashes[order], numbers[order]
            del hashes, numbers
        else:
            order = np.argsort(new, kind="stable")
            ordered, rows = new[order], order.astype(np.int32)
        del order, new
        self._pending = array("q")
        flags = np.frombuffer(self.flags, np.uint8)
        stats = self._stats
        stats.rows += total - start
        for state, count in enumerate(np.bincount(flags[start:] & STATE, minlength=len(State)).tolist()):
            stats.seen_by_state[state] += count
        repeats = np.flatnonzero(ordered[1:] == ordered[:-1])
        if len(repeats):
            # Runs of one hash: [first, last] positions, each run's rows in read order.
            breaks = np.flatnonzero(np.diff(repeats) > 1)
            firsts = np.concatenate((repeats[:1], repeats[breaks + 1]))
            lasts = np.concatenate((repeats[breaks], repeats[-1:])) + 1
            for first, last in zip(firsts.tolist(), lasts.tolist(), strict=True):
                group = sorted(rows[first : last + 1].tolist())
                fresh = [row for row in group if row >= start]  # counted above as new rows
                stats.rows -= len(fresh)
                for row in fresh:
                    stats.seen_by_state[self.flags[row] & STATE] -= 1
                self._merge_group(group, start)
            kept = (flags[rows] & MERGED) == 0
            ordered, rows = ordered[kept], rows[kept]
        self._sorted, self._rows = ordered, rows
        # Where each bucket (the top bits of a hash, one or two keys each) begins in `_sorted`: a key
        # is found in a run of about one hash rather than by binary search over all of them.
        bits = max(1, (len(rows) // 2).bit_length())
        self._shift = 64 - bits
        tops = (ordered.view(np.uint64) ^ _SIGN) >> np.uint64(self._shift)
        self._starts = np.searchsorted(tops, np.arange((1 << bits) + 1, dtype=np.uint64)).astype(np.int32)
        self._settled = total

    def _merge_group(self, rows: list[int], start: int) -> None:
        """Rows whose keys have one hash, in read order: each key's later rows merge into its first."""
        by_key: dict[bytes, list[int]] = {}
        for row in rows:
            by_key.setdefault(bytes(self.key_bytes(row)), []).append(row)
        stats = self._stats
        for kb, same in by_key.items():
            first = same[0]
            if first >= start:  # a row of this key first met now
                stats.rows += 1
                stats.seen_by_state[self.flags[first] & STATE] += 1
            key = kb.decode("utf-8", "surrogatepass")
            for row in same[1:]:
                self._merge_into(first, key, row)

    def _merge_into(self, number: int, key: str, row: int) -> None:
        """`row` read after `number`, of the same key: as if folded into it (the most restrictive
        status wins, each spelling kept aside with its own reading)."""
        stats = self._stats
        reading = self.packed(row)
        packed = reading & ~FLAGS
        spelling = next(iter(self.spellings.pop(row))) if reading & SPELLED else key
        self.flags[row] = MERGED
        entry = self.packed(number)
        aside = self.spellings.get(number) if entry & SPELLED else None
        known = aside if aside is not None else {key: entry & ~FLAGS}
        previous = known.get(spelling)
        if previous is None:
            stats.rows += 1
            stats.seen_by_state[packed & STATE] += 1
            if len(known) == 1:
                stats.shared_keys += 1
                if len(stats.samples) < MAX_SAMPLES:
                    stats.samples.append(mask_email(spelling))
            known[spelling] = packed
        else:
            stats.repeated_rows += 1
            known[spelling] = self._merge(previous, packed)
        if aside is None and (len(known) > 1 or spelling != key):
            self.spellings[number] = known
        merged = self._merge(entry & ~FLAGS, packed) | (entry & LISTED)
        self.set_packed(number, merged | (SPELLED if number in self.spellings else 0))

    # -- finding rows --------------------------------------------------------------------------------

    def find(self, kb: bytes) -> int:
        """The row of this key (its canonical form's bytes), or -1."""
        self.settle()
        h = hash(kb)
        bucket = (h + (1 << 63)) >> self._shift
        for position in range(int(self._starts[bucket]), int(self._starts[bucket + 1])):
            if self._sorted[position] == h:
                row = int(self._rows[position])
                start = self._ends[row - 1] if row else 0
                if self._ends[row] - start == len(kb) and self._blob.startswith(kb, start):
                    return row
        return -1

    def find_all(self, keys: Sequence[bytes]) -> npt.NDArray[np.int64]:
        """The row of each key, -1 where there is none (or, rarely, where two keys share a hash:
        `find` then decides): a chunk of the source at once."""
        self.settle()
        rows = np.full(len(keys), -1, np.int64)
        if not len(self._sorted) or not keys:
            return rows
        hashes = np.fromiter(map(hash, keys), np.int64, len(keys))
        buckets = (hashes.view(np.uint64) ^ _SIGN) >> np.uint64(self._shift)
        positions, ends = self._starts[buckets], self._starts[buckets + np.uint64(1)]
        found = np.full(len(keys), -1, np.int64)
        looking = np.flatnonzero(positions < ends)
        while len(looking):
            at = positions[looking]
            same = self._sorted[at] == hashes[looking]
            found[looking[same]] = at[same]
            positions[looking] += 1
            looking = looking[~same]
            looking = looking[positions[looking] < ends[looking]]
        hit = np.flatnonzero(found >= 0)
        if not len(hit):
            return rows
        candidates = self._rows[found[hit]]
        ends_of = np.frombuffer(self._ends, np.uint32)
        stops = ends_of[candidates].tolist()
        begins = np.where(candidates > 0, ends_of[np.maximum(candidates - 1, 0)], 0).tolist()
        blob = self._blob
        held = [blob[begin:stop] for begin, stop in zip(begins, stops, strict=True)]
        wanted = [keys[i] for i in hit.tolist()]
        lengths = np.fromiter(map(len, wanted), np.int64, len(hit))
        if b"".join(held) == b"".join(wanted) and np.array_equal(lengths, np.subtract(stops, begins, dtype=np.int64)):
            rows[hit] = candidates
        else:  # a hash shared by two keys: only the exact ones are found here
            same = np.fromiter(map(bytes.__eq__, map(bytes, held), wanted), np.bool_, len(hit))
            rows[hit[same]] = candidates[same]
        return rows

    # -- reading it back -----------------------------------------------------------------------------

    def columns(self) -> tuple[npt.NDArray[np.uint8], Hashes]:
        """Writable views of the flags and the payload words (row * words + word). No row may be
        appended while they live."""
        self.settle()
        return np.frombuffer(self.flags, np.uint8), np.frombuffer(self.payload, np.uint64)

    def spellings_of(self, number: int) -> Mapping[str, int]:
        if self.flags[number] & SPELLED:
            return self.spellings[number]
        return {self.key(number): self.packed(number) & ~FLAGS}

    def wide_keys(self) -> Iterator[str]:
        """The live rows' keys that are not ASCII (a scan of the key bytes, in C: few rows have one)."""
        self.settle()
        blob = np.frombuffer(self._blob, np.uint8)
        wide = np.flatnonzero(blob >= 0x80)
        if not len(wide):
            return
        rows = np.unique(np.searchsorted(np.frombuffer(self._ends, np.uint32), wide, side="right"))
        for row in rows.tolist():
            if not self.flags[row] & MERGED:
                yield self.key(row)

    def respelled_keys(self) -> Iterator[str]:
        """The keys held under at least one spelling other than the key itself."""
        self.settle()
        for number, known in self.spellings.items():
            key = self.key(number)
            if any(spelling != key for spelling in known):
                yield key

    def primary_spelling(self, number: int) -> str:
        """The spelling to write to: the most restrictive row's (ties: the smallest spelling)."""
        if not self.flags[number] & SPELLED:
            return self.key(number)
        rows = self.spellings[number]
        return min(rows, key=lambda spelling: (-self.policy.rank(rows[spelling] & STATE), spelling))
