"""The port every subscriber source implements. Adapters only read and map; normalising and
validating addresses happens once, in the planner, so every source behaves the same."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


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

    def lookup(self, keys: Collection[str], also: Collection[str] = ()) -> SourceLookup:
        """Current subscribers among these canonical keys (the retry path's and the fast lane's
        re-check); `also`: other spellings worth trying where look-ups are exact. May return rows for
        other addresses too; the caller keys them again."""
        ...
