"""The port every subscriber source implements. Adapters only read and map; normalising and
validating addresses happens once, in the planner, so every source behaves the same."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol, runtime_checkable


@dataclass(slots=True)  # not frozen: one is built per source row, and frozen construction costs twice as much
class RawSubscriber:
    """A subscriber row as read, before normalisation.

    `where` locates the row for reports ("item id=42", "row 1234") and must never contain the
    address itself. `data` maps Ownpage attribute names (without `data_`) to raw values.
    """

    email: Any
    where: str
    guid: Any = None
    data: Mapping[str, Any] = field(default_factory=dict)
    consented_at: Any = None


@dataclass(frozen=True)
class SourceShape:
    """What the source's rows carry, known before the first row: the fields the diff compares."""

    guid: bool = False
    data: tuple[str, ...] = ()
    consent: bool = False


@dataclass(frozen=True)
class SourceLookup:
    """The source's rows for some addresses. For a key in `inconclusive`, not being among the rows
    proves nothing (the look-up cannot match every spelling the full read would): a queued
    unsubscribe for it is left to the next full run, never replayed."""

    rows: list[RawSubscriber]
    inconclusive: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RowLayout:
    """Where a row's fields are, for rows read as sequences of fields."""

    email: int
    guid: int | None = None
    data: tuple[tuple[str, int], ...] = ()  # (attribute name, position)


@runtime_checkable
class ColumnChunk(Protocol):
    """A chunk of rows that can also give one field of every row at once (a database's wire format
    split in bulk), which the planner reads instead of going row by row."""

    def __len__(self) -> int: ...

    def __getitem__(self, position: int) -> Sequence[Any]: ...

    def column(self, position: int) -> list[Any]: ...


@dataclass(frozen=True)
class RowChunks:
    """A full read in bulk form: chunks of rows, each a sequence of fields, where a field is None,
    text, or text as UTF-8 bytes (a database's wire format, not decoded). The planner compares the
    common row straight from its fields and turns only the others into a RawSubscriber with `to_raw`
    (the row and its 1-based number in the read)."""

    layout: RowLayout
    chunks: Iterator[Sequence[Sequence[Any]]]
    to_raw: Callable[[Sequence[Any], int], RawSubscriber]
    # Positions whose fields are not the value itself (a binary column in the wire's own encoding,
    # which to_raw decodes): the planner leaves a row with such a value to to_raw and its general path.
    opaque: frozenset[int] = frozenset()


class SubscriberSource(Protocol):
    """What the sync needs from the publisher's database."""

    description: str  # e.g. "dynamodb table subscribers"; no credentials

    def shape(self) -> SourceShape:
        """The fields rows will carry. Reaches the source (a bad table, query or password fails
        here, before Ownpage's list is read)."""
        ...

    def scan(self) -> Iterator[RawSubscriber]:
        """Every current subscriber (rows the source says should receive the newsletter)."""
        ...

    def scan_rows(self) -> RowChunks:
        """`scan()` in bulk form (the full run's read). A source without a wire format of its own
        returns `chunked(self.scan())`."""
        ...

    def lookup(self, keys: Collection[str], also: Collection[str] = ()) -> SourceLookup:
        """Current subscribers among these canonical keys (the retry path's and the fast lane's
        re-check); `also`: other spellings worth trying where look-ups are exact. May return rows for
        other addresses too; the caller keys them again."""
        ...


CHUNK_ROWS = 1000


def chunked(rows: Iterable[RawSubscriber], data: Sequence[str] = ()) -> RowChunks:
    """RawSubscriber rows in bulk form: each row becomes (email, guid, *data values, the row)."""
    layout = RowLayout(email=0, guid=1, data=tuple((name, 2 + i) for i, name in enumerate(data)))

    def chunks() -> Iterator[list[tuple[Any, ...]]]:
        iterator = iter(rows)
        while chunk := [
            (row.email, row.guid, *[row.data.get(name) for name in data], row) for row in islice(iterator, CHUNK_ROWS)
        ]:
            yield chunk

    return RowChunks(layout, chunks(), lambda row, number: row[-1])
