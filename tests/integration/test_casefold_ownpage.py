"""Against an Ownpage matching addresses with full Unicode case folding (the emulator over real HTTP,
`matching="casefold"`: `straße@` and `strasse@`, `µ` and `μ`, `ς` and `σ` are one row, as a Java
`equalsIgnoreCase`-like service or a database's `_ci` collation might have it; ownpage-api.md:
matching is unknown). Each safety rule holds: a reader the source lists is not unsubscribed through
the other spelling, one who said no is not re-subscribed through it, and the fast lane and the retry
path leave such a pair to the full run instead of writing blind.

The source is an in-memory list (tests/fakes.InMemorySource) and the run table tests/fakes.InMemoryLedger:
what is under test is what reaches Ownpage; the real sources and the ledger have their own tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from ownpage_sync.deadline import Deadline
from ownpage_sync.fast_lane import UNDECIDED, FastLanePolicy, apply_changes, batch_from_event
from ownpage_sync.models import Action, Operation
from ownpage_sync.ports import Failure
from ownpage_sync.report import Outcome
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.retrying import FOLDED_TWIN, RetryTarget, retry_message
from ownpage_sync.sources.base import RawSubscriber
from ownpage_sync.spellings import SpellingSnapshot

from tests.fakes import InMemoryLedger, InMemorySource
from tests.integration.test_read_safety import run
from tests.integration.test_recheck_spellings import LIST_ID, changed, client

pytestmark = pytest.mark.integration

OTHERS = [f"reader{n:02d}@example.org" for n in range(40)]
PAIRS = [
    ("straße@example.de", "strasse@example.de"),
    ("strasse@example.de", "STRAßE@example.de"),
    ("σοφίας@example.gr", "ΣΟΦΊΑΣ@example.gr"),  # the final sigma folds to σ, lower() keeps ς
    ("µaria@example.com", "μaria@example.com"),  # MICRO SIGN, GREEK SMALL MU
]


@pytest.fixture
def folding(emulator: Any) -> Any:
    emulator.set_faults(matching="casefold")
    emulator.state.seed(LIST_ID, [{"email": email, "subscribed": True} for email in OTHERS])
    return emulator


def source_with(email: str) -> list[RawSubscriber]:
    return [RawSubscriber(email, "row 0"), *(RawSubscriber(other, f"row {n + 1}") for n, other in enumerate(OTHERS))]


def row_of(emulator: Any, email: str) -> dict[str, Any]:
    rows = [row for row in emulator.state.subscribers(LIST_ID) if row["email"] == email]
    assert len(rows) == 1, f"{len(rows)} rows spelled {email!r}"
    return dict(rows[0])


@pytest.mark.parametrize(("on_ownpage", "listed"), PAIRS)
def test_a_reader_the_source_lists_in_a_folded_spelling_stays_subscribed(
    folding: Any, on_ownpage: str, listed: str
) -> None:
    # Given a reader Ownpage holds subscribed in one spelling, whom the source lists in another that
    # Ownpage folds into hers
    folding.state.seed(LIST_ID, [{"email": on_ownpage, "subscribed": True}])
    # When the scheduled run goes, twice
    first = run(folding, source_with(listed))
    second = run(folding, source_with(listed))
    # Then she is still subscribed, in one row, and no run that left her otherwise claimed to converge
    assert row_of(folding, on_ownpage)["subscribed"] is True
    assert len(folding.state.subscribers(LIST_ID)) == len(OTHERS) + 1
    assert first.outcome != Outcome.FAILED, first.error
    assert second.plan is not None and second.plan.counts()["to_unsubscribe"] == 0
    assert not folding.state.resubscriptions and not folding.state.twins


def test_a_run_short_of_its_count_keeps_the_folded_reader_subscribed(folding: Any) -> None:
    # Given the reader held as `straße@` and listed as `strasse@`, on an Ownpage whose /count says one
    # row more than the list shows (the read can never be proven complete: every subscribe is held)
    folding.state.seed(LIST_ID, [{"email": "straße@example.de", "subscribed": True}])
    folding.set_faults(matching="casefold", count_skew=1)
    # When the scheduled run goes
    report = run(folding, source_with("strasse@example.de"), OWNPAGE_READ_PASSES="1")
    # Then the held subscribe pairs with its unsubscribe: neither goes, she stays subscribed
    assert report.read is not None and not report.read.complete
    assert row_of(folding, "straße@example.de")["subscribed"] is True
    assert report.outcome == Outcome.NOT_CONVERGED


@pytest.mark.parametrize(("on_ownpage", "listed"), PAIRS)
@pytest.mark.parametrize("cause", ["READER", "HARD_BOUNCE"])
def test_a_reader_who_said_no_is_not_resubscribed_through_a_folded_spelling(
    folding: Any, on_ownpage: str, listed: str, cause: str
) -> None:
    # Given a reader who unsubscribed (or bounced) under one spelling, listed by the source in another
    folding.state.seed(LIST_ID, [{"email": on_ownpage, "subscribed": False, "unsubscribed_cause": cause}])
    # When the scheduled run goes
    report = run(folding, source_with(listed))
    # Then her row keeps its status and cause, nothing re-subscribed her, and no second row was made
    row = row_of(folding, on_ownpage)
    assert (row["subscribed"], row["unsubscribed_cause"]) == (False, cause), report.outcome
    assert not folding.state.resubscriptions and not folding.state.twins
    assert len(folding.state.subscribers(LIST_ID)) == len(OTHERS) + 1


def test_two_readers_the_source_tells_apart_but_ownpage_folds_together_do_not_overwrite_each_other(
    folding: Any,
) -> None:
    # Given the source listing `straße@` and `strasse@` as two readers (two guids), Ownpage holding
    # the first, folding the second into it
    folding.state.seed(LIST_ID, [{"email": "straße@example.de", "subscribed": True, "guid": "g-sharp-s"}])
    source = [
        RawSubscriber("straße@example.de", "row a", "g-sharp-s"),
        RawSubscriber("strasse@example.de", "row b", "g-double-s"),
        *(RawSubscriber(other, f"row {n}") for n, other in enumerate(OTHERS)),
    ]
    # When the scheduled run goes, twice
    first = run(folding, source)
    run(folding, source)
    # Then the row Ownpage holds keeps its reader's guid (no run wrote the other reader's over it),
    # and the run did not claim Ownpage is in step with a source it cannot hold
    row = row_of(folding, "straße@example.de")
    assert (row["subscribed"], row["guid"]) == (True, "g-sharp-s")
    assert first.outcome != Outcome.CONVERGED
    assert not folding.state.resubscriptions and not folding.state.twins


@pytest.mark.parametrize(("on_ownpage", "listed"), PAIRS)
def test_the_fast_lane_leaves_a_change_naming_one_folded_spelling_to_the_scheduled_run(
    folding: Any, on_ownpage: str, listed: str
) -> None:
    # Given a reader Ownpage holds in one spelling, whom the source lists under the other, and a
    # complete read a moment ago
    folding.state.seed(LIST_ID, [{"email": on_ownpage, "subscribed": True}])
    ledger = InMemoryLedger()
    ledger.put_spellings(SpellingSnapshot.of_keys("run-1", datetime.now(UTC), []))
    ownpage = client(folding)
    source = InMemorySource([RawSubscriber(listed, "row 0", "g-1")])
    target = RetryTarget(source, lambda deadline: ownpage, LIST_ID, ledger=ledger)
    # When the publisher's application announces a change of the spelling Ownpage holds
    batch = batch_from_event(changed(on_ownpage), "email")
    report = apply_changes(batch, target, None, Deadline.unlimited(), FastLanePolicy(new_addresses="proven"))
    # Then she stays subscribed and the change is counted as left to the scheduled run
    assert row_of(folding, on_ownpage)["subscribed"] is True
    assert report.left_to_scheduled_run[UNDECIDED] == 1
    assert not any(record.method == "POST" for record in folding.state.requests if "subscribers" in record.path)


def test_a_queued_unsubscribe_of_one_folded_spelling_is_dropped_with_its_reason(folding: Any) -> None:
    # Given the same reader, and an unsubscribe queued for the spelling Ownpage holds
    folding.state.seed(LIST_ID, [{"email": "straße@example.de", "subscribed": True}])
    ledger = InMemoryLedger()
    ledger.put_spellings(SpellingSnapshot.of_keys("run-1", datetime.now(UTC), []))
    operation = Operation(Action.UNSUBSCRIBE, "straße@example.de", unsubscribed_cause="PUBLISHER")
    failure = Failure("unavailable", "HTTP 503", 503)
    message = RetryMessage.for_failure(LIST_ID, "20250301T060000Z-abcd", [operation], failure)
    ownpage = client(folding)
    source = InMemorySource([RawSubscriber("strasse@example.de", "row 0", "g-1")])
    target = RetryTarget(source, lambda deadline: ownpage, LIST_ID, ledger=ledger)
    # When the retry path replays it
    result = retry_message(message, target, Deadline.unlimited())
    # Then nothing is sent, she stays subscribed, and the drop says why
    assert row_of(folding, "straße@example.de")["subscribed"] is True
    assert result.stale == {FOLDED_TWIN: 1} and result.sent == 0


def test_the_fast_lane_writes_an_address_whose_twins_no_one_holds(folding: Any) -> None:
    # Given a reader gone from the source whose key has a possible twin (`ss`: `ß`) no one holds
    folding.state.seed(LIST_ID, [{"email": "jessica@example.org", "subscribed": True}])
    ownpage = client(folding)
    target = RetryTarget(
        InMemorySource([RawSubscriber("someone@example.org", "row 0")]), lambda deadline: ownpage, LIST_ID
    )
    # When a change names her / Then she is unsubscribed: a twin is looked for, not assumed
    report = apply_changes(
        batch_from_event(changed("jessica@example.org"), "email"), target, None, Deadline.unlimited()
    )
    assert row_of(folding, "jessica@example.org")["subscribed"] is False
    assert sum(report.left_to_scheduled_run.values()) == 0


@pytest.mark.parametrize(("on_ownpage", "listed"), PAIRS)
def test_the_fast_lane_does_not_subscribe_a_new_address_over_a_folded_row(
    folding: Any, on_ownpage: str, listed: str
) -> None:
    # Given the source listing two readers that only case folding makes one, Ownpage holding the first
    folding.state.seed(LIST_ID, [{"email": on_ownpage, "subscribed": True, "guid": "g-held"}])
    ledger = InMemoryLedger()
    ledger.put_spellings(SpellingSnapshot.of_keys("run-1", datetime.now(UTC), []))
    ownpage = client(folding)
    source = InMemorySource([RawSubscriber(on_ownpage, "row 0", "g-held"), RawSubscriber(listed, "row 1", "g-new")])
    target = RetryTarget(source, lambda deadline: ownpage, LIST_ID, ledger=ledger)
    # When the publisher's application announces the second reader's sign-up
    batch = batch_from_event(changed(listed), "email")
    report = apply_changes(batch, target, None, Deadline.unlimited(), FastLanePolicy(new_addresses="proven"))
    # Then the first reader's row keeps her guid, and the sign-up is left to the scheduled run
    assert row_of(folding, on_ownpage)["guid"] == "g-held"
    assert len(folding.state.subscribers(LIST_ID)) == len(OTHERS) + 1
    assert sum(report.left_to_scheduled_run.values()) == 1
