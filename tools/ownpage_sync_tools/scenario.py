"""Deterministic test populations: a source and an Ownpage list that has drifted from it, with the
plan that must come out. Used by the demo, the end-to-end tests and the benchmark."""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ownpage_sync.emails import canonical_key
from ownpage_sync.sources.base import RawSubscriber, RowChunks, SourceLookup, SourceShape, chunked

CITIES = ("Paris", "Lyon", "Nantes", "Lille", "Bordeaux", "Québec", "Genève", "Bruxelles")
NAMES = ("Anne", "Bruno", "Chloé", "Dmitri", "Élodie", "Farid", "Gaëlle", "Hugo", "Inès", "Jörg")
LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)


@dataclass
class Scenario:
    source_items: list[dict[str, Any]] = field(default_factory=list)  # DynamoDB items
    ownpage_rows: list[dict[str, Any]] = field(default_factory=list)  # emulator seed rows (read shape)
    expected: dict[str, int] = field(default_factory=dict)  # the first plan's counts

    def eligible_emails(self) -> set[str]:
        """Normalised addresses that must be subscribed in Ownpage once converged."""
        suppressed = {row["email"] for row in self.ownpage_rows if row.get("_suppressed")}
        return {
            canonical_key(item["email"])
            for item in self.source_items
            if item.get("newsletter") and item.get("_valid", True)
        } - suppressed

    def seed_rows(self) -> Iterable[dict[str, Any]]:
        return ({k: v for k, v in row.items() if not k.startswith("_")} for row in self.ownpage_rows)

    def dynamodb_items(self) -> Iterable[dict[str, Any]]:
        return ({k: v for k, v in item.items() if not k.startswith("_")} for item in self.source_items)


def _person(rng: random.Random, i: int) -> dict[str, Any]:
    domain = "exemple.fr" if i % 17 == 0 else "example.org"
    local = f"zoë.{i:06d}" if i % 29 == 0 else f"reader.{i:06d}"
    return {
        "user_id": f"u{i:07d}",
        "email": f"{local}@{domain}",
        "newsletter": True,
        "first_name": rng.choice(NAMES),
        "city": rng.choice(CITIES),
        # Seconds, not minutes: at 10M subscribers still months before any unsubscription of the
        # scenario, so only the readers it renews on purpose have opted in again since.
        "consented_at": (LONG_AGO + timedelta(seconds=i)).isoformat(),
    }


def _ownpage_row(person: dict[str, Any], **changes: Any) -> dict[str, Any]:
    row = {
        "email": canonical_key(person["email"]),
        "guid": person["user_id"],
        "subscribed": True,
        "subscribed_at": "2024-06-01T00:00:00+00:00",
        "data_firstname": person["first_name"],
        "data_city": person["city"],
        "send_count": 12,
        "open_count": 5,
        "click_count": 1,
    }
    row.update(changes)
    return row


def make_scenario(size: int, drift: float = 0.01, seed: int = 7) -> Scenario:
    """`size` source subscribers; `drift` of them out of step in Ownpage, across every kind of change."""
    rng = random.Random(seed)
    scenario = Scenario()
    drifted = max(10, round(size * drift))
    missing, extra, changed = round(drifted * 0.35), round(drifted * 0.35), round(drifted * 0.2)
    publisher = drifted - missing - extra - changed
    bounced, multi, reader = max(3, size // 500), max(2, size // 1000), max(3, size // 500)
    renewed = max(1, reader // 3)
    in_step = size - missing - changed - publisher - bounced - multi - reader
    if in_step < 0:
        raise ValueError("size too small for this drift")

    index = 0

    def person() -> dict[str, Any]:
        nonlocal index
        index += 1
        return _person(rng, index)

    def add(item: dict[str, Any], row: dict[str, Any] | None) -> None:
        scenario.source_items.append(item)
        if row is not None:
            scenario.ownpage_rows.append(row)

    for n in range(in_step):
        item = person()
        if n % 97 == 0:  # the source spells some addresses differently; normalisation must match them
            item["email"] = f"  {item['email'].upper()} "
        add(item, _ownpage_row(item))
    for _ in range(missing):
        add(person(), None)
    for _ in range(changed):
        item = person()
        add(item, _ownpage_row(item, data_city="Somewhere else"))
    for _ in range(publisher):
        item = person()
        add(
            item,
            _ownpage_row(
                item, subscribed=False, unsubscribed_cause="PUBLISHER", unsubscribed_at="2025-01-01T00:00:00+00:00"
            ),
        )
    for cause, count in (("HARD_BOUNCE", bounced), ("MULTIPLE_BOUNCES", multi), ("READER", reader)):
        for k in range(count):
            item = person()
            unsubscribed_at = datetime(2025, 3, 1, tzinfo=UTC)
            opted_in_again = cause == "READER" and k < renewed
            if opted_in_again:
                item["consented_at"] = (unsubscribed_at + timedelta(days=30)).isoformat()
            row = _ownpage_row(
                item,
                subscribed=False,
                unsubscribed_cause=cause,
                unsubscribed_at=unsubscribed_at.isoformat(),
                _suppressed=not opted_in_again,
            )
            add(item, row)
    for _ in range(extra):  # subscribed in Ownpage, gone from the source
        scenario.ownpage_rows.append(_ownpage_row(person()))
    for _ in range(max(20, size // 20)):  # removed by earlier runs, still gone from the source
        scenario.ownpage_rows.append(
            _ownpage_row(
                person(), subscribed=False, unsubscribed_cause="PUBLISHER", unsubscribed_at="2024-09-01T00:00:00+00:00"
            )
        )
    for _ in range(max(2, size // 1000)):  # opted out in the source: not subscribers, not in Ownpage
        item = person()
        item["newsletter"] = False
        scenario.source_items.append(item)
    for k in range(3):  # broken addresses in the source: reported, never sent
        item = person()
        item["email"] = ["not-an-email", "someone@", "two@@example.org"][k]
        item["_valid"] = False
        scenario.source_items.append(item)

    scenario.expected = {
        "to_subscribe": missing + publisher + renewed,
        "to_resubscribe": publisher + renewed,
        "to_unsubscribe": extra,
        "to_update": changed,
        "suppressed": bounced + multi + reader - renewed,
        "resubscribed_by_consent": renewed,
        "source_invalid": 3,
    }
    return scenario


class ScenarioSource:
    """The scenario's source items as a SubscriberSource, for the benchmark (no database in the way)."""

    description = "in-memory scenario"

    def __init__(self, scenario: Scenario):
        self.items = [item for item in scenario.dynamodb_items() if item.get("newsletter")]

    def _raw(self, item: dict[str, Any]) -> RawSubscriber:
        return RawSubscriber(
            email=item["email"],
            where=f"item user_id={item['user_id']}",
            guid=item["user_id"],
            data={"firstname": item["first_name"], "city": item["city"]},
            consented_at=item["consented_at"],
        )

    def scan(self) -> Iterator[RawSubscriber]:
        return (self._raw(item) for item in self.items)

    def scan_rows(self) -> RowChunks:
        return chunked(self.scan(), self.shape().data)

    def shape(self) -> SourceShape:
        return SourceShape(guid=True, data=("firstname", "city"), consent=True)

    def lookup(self, keys: Collection[str], also: Collection[str] = ()) -> SourceLookup:
        wanted = set(keys)
        return SourceLookup([self._raw(item) for item in self.items if canonical_key(item["email"]) in wanted])
