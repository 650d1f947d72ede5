"""The pure heart of the sync: (source, Ownpage) -> Plan, under the subscriber-safety policy.

No I/O here. The rules (docs/safety.md):
- in the source, absent from Ownpage                      -> subscribe
- in the source, unsubscribed in Ownpage by the publisher -> subscribe again
- in the source, unsubscribed for a suppressing cause     -> suppressed (reported, not subscribed),
  unless the source's consent time is later than Ownpage's unsubscribed_at
- in the source and subscribed, guid or mapped data differ -> update (status untouched)
- subscribed in Ownpage, absent from the source           -> unsubscribe with the publisher cause
- nothing is ever deleted; attributes the mapping does not mention are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from ownpage_sync.models import Action, Cause, Operation, OwnpageSubscriber, SubscriberRecord

KNOWN_CAUSES = frozenset(cause.value for cause in Cause)
DEFAULT_SUPPRESSING_CAUSES = frozenset({Cause.READER.value, Cause.HARD_BOUNCE.value, Cause.MULTIPLE_BOUNCES.value})


@dataclass(frozen=True)
class PlanPolicy:
    """What the planner may do. A missing or unknown cause always suppresses (the safe reading)."""

    unsubscribe_cause: str = Cause.PUBLISHER.value
    suppressing_causes: frozenset[str] = DEFAULT_SUPPRESSING_CAUSES

    def suppresses(self, cause: str | None) -> bool:
        return cause is None or cause not in KNOWN_CAUSES or cause in self.suppressing_causes


@dataclass(frozen=True, slots=True)
class Suppression:
    """A source subscriber Ownpage must not be told to mail: the reader or the mail system said no."""

    email: str
    cause: str
    unsubscribed_at: datetime | None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "email": self.email,
            "cause": self.cause,
            "unsubscribed_at": self.unsubscribed_at.isoformat() if self.unsubscribed_at else None,
        }


@dataclass(frozen=True)
class Plan:
    to_subscribe: tuple[Operation, ...] = ()
    to_unsubscribe: tuple[Operation, ...] = ()
    to_update: tuple[Operation, ...] = ()
    suppressed: tuple[Suppression, ...] = ()
    unchanged: int = 0
    resubscribed_by_consent: int = 0  # suppressed addresses the source shows a newer opt-in for
    source_count: int = 0
    ownpage_subscribed: int = 0
    ownpage_total: int = 0

    @property
    def is_empty(self) -> bool:
        return not (self.to_subscribe or self.to_unsubscribe or self.to_update)

    @property
    def write_count(self) -> int:
        return len(self.to_subscribe) + len(self.to_unsubscribe) + len(self.to_update)

    def operations(self) -> Iterator[Operation]:
        """All writes, unsubscribes first: stopping mail to people who left is the most urgent."""
        yield from self.to_unsubscribe
        yield from self.to_subscribe
        yield from self.to_update

    def suppressed_by_cause(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.suppressed:
            counts[item.cause] = counts.get(item.cause, 0) + 1
        return dict(sorted(counts.items()))

    def counts(self) -> dict[str, int]:
        return {
            "source": self.source_count,
            "ownpage_subscribed": self.ownpage_subscribed,
            "ownpage_total": self.ownpage_total,
            "to_subscribe": len(self.to_subscribe),
            "to_unsubscribe": len(self.to_unsubscribe),
            "to_update": len(self.to_update),
            "suppressed": len(self.suppressed),
            "resubscribed_by_consent": self.resubscribed_by_consent,
            "unchanged": self.unchanged,
        }


def _changes(record: SubscriberRecord, current: OwnpageSubscriber) -> Operation | None:
    """The update that brings a subscribed Ownpage row in line with its source record, if any."""
    guid = record.guid if record.guid is not None and record.guid != current.guid else None
    data = {name: value for name, value in record.data.items() if current.data.get(name) != value}
    if guid is None and not data:
        return None
    return Operation(Action.UPDATE, record.email, guid=guid, data=data)


def _subscribe(record: SubscriberRecord) -> Operation:
    return Operation(Action.SUBSCRIBE, record.email, guid=record.guid, data=dict(record.data))


def _opted_in_again(record: SubscriberRecord, current: OwnpageSubscriber) -> bool:
    return (
        record.consented_at is not None
        and current.unsubscribed_at is not None
        and record.consented_at > current.unsubscribed_at
    )


def plan_changes(
    source: Mapping[str, SubscriberRecord],
    ownpage: Iterable[OwnpageSubscriber],
    policy: PlanPolicy = PlanPolicy(),
) -> Plan:
    """Compare the source (keyed by normalised email) with Ownpage's list and decide every write."""
    subscribe: list[Operation] = []
    unsubscribe: list[Operation] = []
    update: list[Operation] = []
    suppressed: list[Suppression] = []
    unchanged = resubscribed = ownpage_subscribed = ownpage_total = 0
    seen: set[str] = set()

    for current in ownpage:
        if current.email in seen:  # the client de-duplicates; a pure function must not rely on it
            continue
        seen.add(current.email)
        ownpage_total += 1
        ownpage_subscribed += current.subscribed
        record = source.get(current.email)
        if record is None:
            if current.subscribed:
                unsubscribe.append(
                    Operation(Action.UNSUBSCRIBE, current.email, unsubscribed_cause=policy.unsubscribe_cause)
                )
            continue
        if current.subscribed:
            change = _changes(record, current)
            if change is None:
                unchanged += 1
            else:
                update.append(change)
        elif not policy.suppresses(current.unsubscribed_cause):
            subscribe.append(_subscribe(record))
        elif _opted_in_again(record, current):
            resubscribed += 1
            subscribe.append(_subscribe(record))
        else:
            cause = current.unsubscribed_cause or "UNKNOWN"
            suppressed.append(Suppression(current.email, cause, current.unsubscribed_at))

    subscribe.extend(_subscribe(record) for email, record in source.items() if email not in seen)

    def by_email(operation: Operation) -> str:
        return operation.email

    return Plan(
        to_subscribe=tuple(sorted(subscribe, key=by_email)),
        to_unsubscribe=tuple(sorted(unsubscribe, key=by_email)),
        to_update=tuple(sorted(update, key=by_email)),
        suppressed=tuple(sorted(suppressed, key=lambda s: s.email)),
        unchanged=unchanged,
        resubscribed_by_consent=resubscribed,
        source_count=len(source),
        ownpage_subscribed=ownpage_subscribed,
        ownpage_total=ownpage_total,
    )
