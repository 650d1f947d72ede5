"""recheck: a few keys planned against both sides as they are now, by the full run's planner, with
its two rules of its own (no unsubscribe the source look-up cannot prove; nothing planned for a key
not asked about). Ports are tests/fakes.py's in-memory stand-ins."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime

import pytest
from ownpage_sync.models import Action
from ownpage_sync.planner import PlanPolicy
from ownpage_sync.ports import OwnpageLookup
from ownpage_sync.recheck import recheck
from ownpage_sync.sources.base import RawSubscriber, SourceLookup

from tests.fakes import FakeOwnpage, InMemorySource, Row

pytestmark = pytest.mark.unit

LIST_ID = 3
POLICY = PlanPolicy()
LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)


class Source(InMemorySource):
    """Rows by address; `inconclusive` keys the look-up cannot be sure about; it also answers with
    `extra` rows for addresses nobody asked about, as the port allows."""

    def __init__(
        self, rows: Sequence[RawSubscriber], inconclusive: Collection[str] = (), extra: Sequence[RawSubscriber] = ()
    ):
        super().__init__(rows)
        self.inconclusive = frozenset(inconclusive)
        self.extra = list(extra)
        self.asked: list[tuple[set[str], set[str]]] = []

    def lookup(self, keys: Collection[str], also: Collection[str] = ()) -> SourceLookup:
        self.asked.append((set(keys), set(also)))
        found = super().lookup(keys, also)
        return SourceLookup([*found.rows, *self.extra], self.inconclusive & set(keys))


class Ownpage(FakeOwnpage):
    """Answers every look-up with the whole list (as a server ignoring the search would), so recheck's
    own scoping is what is tested."""

    def find_many(self, list_id: int, wanted: Mapping[str, Sequence[str]], fields: Sequence[str] = ()) -> OwnpageLookup:
        self.wanted = {key: list(spellings) for key, spellings in wanted.items()}
        return OwnpageLookup({key: [row.read() for row in self.rows.values()] for key in wanted})


def row(email: str, **data: str) -> RawSubscriber:
    return RawSubscriber(email, "fake", guid=f"g-{email[0]}", data=data)


def test_an_unsubscribe_is_planned_only_where_the_look_up_is_conclusive() -> None:
    # Given two readers subscribed on Ownpage and absent from the source, one of whom the look-up
    # cannot be sure about
    source = Source([], inconclusive={"unsure@example.com"})
    ownpage = Ownpage([Row("gone@example.com", True), Row("unsure@example.com", True)])

    # When both are rechecked
    current = recheck({"gone@example.com": set(), "unsure@example.com": set()}, source, ownpage, LIST_ID, POLICY)

    # Then only the proven one is to be unsubscribed; the other is known as inconclusive
    assert {key: [op.action for op in ops] for key, ops in current.operations.items()} == {
        "gone@example.com": [Action.UNSUBSCRIBE]
    }
    assert current.inconclusive == {"unsure@example.com"}
    assert current.found == {"gone@example.com", "unsure@example.com"} and current.listed == frozenset()


def test_nothing_is_planned_for_an_address_not_asked_about() -> None:
    # Given a source and an Ownpage that both answer with addresses beyond the one asked about
    source = Source([row("anne@example.com", city="Lyon")], extra=[row("intruder@example.com")])
    ownpage = Ownpage([Row("anne@example.com", True, guid="g-a"), Row("bystander@example.com", True)])

    # When one address is rechecked
    current = recheck({"anne@example.com": set()}, source, ownpage, LIST_ID, POLICY)

    # Then only its own change is planned: no subscribe for the intruder, no unsubscribe for the bystander
    assert list(current.operations) == ["anne@example.com"]
    assert [(op.action, op.data) for op in current.operations["anne@example.com"]] == [
        (Action.UPDATE, {"city": "Lyon"})
    ]
    assert current.listed == {"anne@example.com"}


def test_every_spelling_is_searched_and_writes_use_ownpages() -> None:
    # Given a queued spelling, Ownpage holding the reader under another, and the reader in the source
    source = Source([row("dmitri@example.com", city="Nantes")])
    ownpage = Ownpage([Row("DMITRI@example.com", False, unsubscribed_cause="PUBLISHER", unsubscribed_at=LONG_AGO)])

    # When rechecked with the spelling queued (and a blank one, ignored)
    current = recheck({"dmitri@example.com": {"Dmitri@Example.com", " "}}, source, ownpage, LIST_ID, POLICY)

    # Then both sides were asked under the key and the queued spelling, and the re-subscribe is
    # addressed to Ownpage's own spelling
    assert source.asked == [({"dmitri@example.com"}, {"Dmitri@Example.com"})]
    assert ownpage.wanted == {"dmitri@example.com": ["Dmitri@Example.com", "dmitri@example.com"]}
    (operation,) = current.operations["dmitri@example.com"]
    assert (operation.action, operation.email) == (Action.RESUBSCRIBE, "DMITRI@example.com")


def test_a_suppression_is_known_by_its_canonical_key() -> None:
    # Given a reader in the source whom Ownpage shows, under another spelling, unsubscribed by themselves
    source = Source([row("elodie@example.com")])
    ownpage = Ownpage([Row("Elodie@Example.com", False, unsubscribed_cause="READER", unsubscribed_at=LONG_AGO)])

    # When rechecked
    current = recheck({"elodie@example.com": set()}, source, ownpage, LIST_ID, POLICY)

    # Then nothing is planned, and the suppression is found under the key
    assert current.operations == {}
    assert current.suppressed["elodie@example.com"].cause == "READER"
