"""The port every subscriber source implements. Adapters only read and map; normalising and
validating addresses is shared (see snapshot.py) so every source behaves the same."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
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


class SubscriberSource(Protocol):
    """What the sync needs from the publisher's database."""

    description: str  # e.g. "dynamodb table subscribers"; no credentials

    def scan(self) -> Iterator[RawSubscriber]:
        """Every current subscriber (rows the source says should receive the newsletter)."""
        ...

    def lookup(self, emails: Collection[str]) -> Iterator[RawSubscriber]:
        """Current subscribers among these normalised addresses (the retry path's re-check).

        May yield rows for other addresses too; the caller filters after normalising.
        """
        ...
