"""The domain's values: what a source says, what Ownpage holds, and the operations between them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, overload

from ownpage_sync.emails import canonical_key

DATA_PREFIX = "data_"


class Action(StrEnum):
    """What one write does. Only RESUBSCRIBE and UNSUBSCRIBE carry `subscribed`."""

    SUBSCRIBE = "subscribe"  # by omission: a new address is subscribed, an existing row keeps its status
    RESUBSCRIBE = "resubscribe"  # `subscribed: true`, only to a row this run's read showed re-subscribable
    UNSUBSCRIBE = "unsubscribe"  # `subscribed: false` with our cause, only to a row the read showed subscribed
    UPDATE = "update"  # guid/data only, status untouched


SUBSCRIBING = frozenset({Action.SUBSCRIBE, Action.RESUBSCRIBE})


class Cause(StrEnum):
    """Ownpage's unsubscription causes."""

    READER = "READER"
    PUBLISHER = "PUBLISHER"
    HARD_BOUNCE = "HARD_BOUNCE"
    MULTIPLE_BOUNCES = "MULTIPLE_BOUNCES"


@dataclass(frozen=True, slots=True)
class SubscriberRecord:
    """One subscriber as the source (the truth) says it, normalised. `email` is the canonical key."""

    email: str
    guid: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)  # attribute name without the data_ prefix
    consented_at: datetime | None = None  # timezone-aware; None when the source has no consent time


@dataclass(slots=True)  # not frozen: one is built per row read, and frozen construction costs twice as much
class OwnpageSubscriber:
    """One row of the Ownpage list as read, values already made sense of (ownpage/mapping.py).

    `email` is Ownpage's own spelling, kept to address this row in writes; `subscribed` is None when
    the row's status could not be read (the planner treats it as unsubscribed for an unknown cause).
    `bad_time` says an `unsubscribed_at` was present but unreadable; `bare` that the row had no
    `subscribed` field at all (and no sign of an unsubscription), so it reads as subscribed.
    """

    email: str
    subscribed: bool | None
    guid: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)  # mapped attributes only
    unsubscribed_at: datetime | None = None
    unsubscribed_cause: str | None = None
    bad_time: bool = False
    bare: bool = False

    @property
    def key(self) -> str:
        return canonical_key(self.email)


@dataclass(frozen=True)
class SubscribedRows:
    """Rows read plainly subscribed (JSON `true`, no sign of an unsubscription), a column per field:
    `data[i]` holds the values of `fields[i]`. Values are normalised (None: no value)."""

    emails: list[str]
    guids: list[str | None]
    fields: tuple[str, ...] = ()
    data: tuple[list[str | None], ...] = ()

    def __len__(self) -> int:
        return len(self.emails)

    def row(self, number: int) -> OwnpageSubscriber:
        data = {name: values[number] for name, values in zip(self.fields, self.data, strict=True)}
        return OwnpageSubscriber(
            self.emails[number], True, self.guids[number], {name: value for name, value in data.items() if value}
        )

    def column(self, name: str) -> list[str | None]:
        """The values of one data attribute (None throughout for one not read)."""
        if name in self.fields:
            return self.data[self.fields.index(name)]
        return [None] * len(self.emails)


class OwnpagePage(Sequence[OwnpageSubscriber]):
    """One page of the list as read: its plainly subscribed rows in columns (`subscribed`, which the
    planner folds without an object per row), the others as rows, each at `others_at` in the page's
    order. As a sequence, every row in that order. `first`/`last`: the addresses it began and ended with;
    `blank`: the answer's rows whose address is nothing but white space, which are not in it: each
    address, and whether the row said `"subscribed": true`."""

    def __init__(
        self,
        subscribed: SubscribedRows,
        others: list[OwnpageSubscriber] | None = None,
        others_at: list[int] | None = None,
        first: str | None = None,
        last: str | None = None,
        blank: tuple[tuple[str, bool], ...] = (),
    ):
        self.subscribed, self.others, self.first, self.last = subscribed, others or [], first, last
        self.blank = blank
        self.others_at = others_at if others_at is not None else list(range(len(subscribed), len(self)))
        self._rows: list[OwnpageSubscriber] | None = None

    def __len__(self) -> int:
        return len(self.subscribed) + len(self.others)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"OwnpagePage({list(self)!r})"

    @overload
    def __getitem__(self, number: int) -> OwnpageSubscriber: ...

    @overload
    def __getitem__(self, number: slice) -> list[OwnpageSubscriber]: ...

    def __getitem__(self, number: int | slice) -> OwnpageSubscriber | list[OwnpageSubscriber]:
        if self._rows is None:
            rows: list[OwnpageSubscriber] = []
            plain = iter(range(len(self.subscribed)))
            for row, at in zip(self.others, self.others_at, strict=True):
                rows.extend(self.subscribed.row(next(plain)) for _ in range(at - len(rows)))
                rows.append(row)
            rows.extend(self.subscribed.row(number) for number in plain)
            self._rows = rows
        return self._rows[number]


@dataclass(frozen=True, slots=True)
class Operation:
    """One write to Ownpage. Serialises to one element of the POST .../subscribers array.

    `email` is the spelling sent: Ownpage's own for a row it showed, the canonical key for a new one.
    """

    action: Action
    email: str
    guid: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    unsubscribed_cause: str | None = None

    @property
    def key(self) -> str:
        return canonical_key(self.email)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"email": self.email}
        if self.action is Action.RESUBSCRIBE:
            payload["subscribed"] = True
        elif self.action is Action.UNSUBSCRIBE:
            payload["subscribed"] = False
            payload["unsubscribed_cause"] = self.unsubscribed_cause or Cause.PUBLISHER.value
        # SUBSCRIBE and UPDATE omit `subscribed` on purpose: Ownpage then keeps an existing row's
        # status (a row the read missed is never re-subscribed) and subscribes a new address.
        if self.guid is not None:
            payload["guid"] = self.guid
        for name, value in self.data.items():
            payload[DATA_PREFIX + name] = value
        return payload

    def to_dict(self) -> dict[str, Any]:
        """The readable form used in SQS messages and plan exports."""
        return {
            "action": self.action.value,
            "email": self.email,
            "guid": self.guid,
            "data": dict(self.data),
            "unsubscribed_cause": self.unsubscribed_cause,
        }
