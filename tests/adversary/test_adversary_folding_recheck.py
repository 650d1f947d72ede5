"""The fast lane and the retry path against an Ownpage matching with full Unicode case folding
(FoldingOwnpage: `straße@` and `strasse@` are one row, a fake: the emulator does not fold), which a
full run handles by holding both writes of such a pair (docs/safety.md §1). Found by an adversarial
run: a change naming the old spelling unsubscribed a reader the source lists under the other."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from ownpage_sync.deadline import Deadline
from ownpage_sync.fast_lane import UNDECIDED, FastLanePolicy, apply_changes, batch_from_event
from ownpage_sync.models import Action, Operation
from ownpage_sync.ports import Failure
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.retrying import FOLDED_TWIN, RetryTarget, retry_message
from ownpage_sync.sources.base import RawSubscriber
from ownpage_sync.spellings import SpellingSnapshot

from tests.adversary.helpers import FoldingOwnpage
from tests.fakes import InMemoryLedger, InMemorySource, Row

pytestmark = pytest.mark.unit

NOW = datetime.now(UTC)


def changed(email: str) -> dict[str, Any]:
    return {"id": "ev-1", "detail-type": "SubscriberChanged", "time": NOW.isoformat(), "detail": {"email": email}}


def target(ownpage: FoldingOwnpage, listed: str) -> RetryTarget:
    ledger = InMemoryLedger()
    ledger.put_spellings(SpellingSnapshot.of_keys("run-1", NOW, []))  # a complete read a moment ago
    source = InMemorySource([RawSubscriber(listed, f"item {listed}", "g-1")])
    return RetryTarget(source, lambda deadline: ownpage, 1, ledger=ledger)


@pytest.mark.parametrize(
    ("on_ownpage", "listed"),
    [
        ("straße@example.de", "strasse@example.de"),
        ("strasse@example.de", "straße@example.de"),
        ("anna@ελλάσ.gr", "anna@ελλάς.gr"),  # a final sigma: no spelling rule lists its twins
        ("μaria@example.com", "µaria@example.com"),  # GREEK SMALL MU, MICRO SIGN
    ],
)
def test_a_change_naming_one_spelling_does_not_unsubscribe_the_reader_the_source_lists_under_the_other(
    on_ownpage: str, listed: str
) -> None:
    # Given a reader Ownpage (folding case) holds in one spelling, whom the source lists in the other
    ownpage = FoldingOwnpage([Row(on_ownpage, True)])
    # When the publisher's application announces a change of the spelling Ownpage holds
    batch = batch_from_event(changed(on_ownpage), "email")
    report = apply_changes(
        batch, target(ownpage, listed), None, Deadline.unlimited(), FastLanePolicy(new_addresses="proven")
    )
    # Then nothing is written, she stays subscribed, and the change is left to the scheduled run, counted
    assert ownpage.posts == [] and [row.subscribed for row in ownpage.rows.values()] == [True]
    assert report.left_to_scheduled_run[UNDECIDED] == 1


def test_a_queued_unsubscribe_of_one_spelling_is_left_to_the_next_run() -> None:
    # Given the same reader, and an unsubscribe queued for the spelling Ownpage holds
    ownpage = FoldingOwnpage([Row("straße@example.de", True)])
    operation = Operation(Action.UNSUBSCRIBE, "straße@example.de", unsubscribed_cause="PUBLISHER")
    message = RetryMessage.for_failure(1, "20250301T060000Z-abcd", [operation], Failure("unavailable", "HTTP 503", 503))
    # When the retry path replays it
    result = retry_message(message, target(ownpage, "strasse@example.de"), Deadline.unlimited())
    # Then nothing is sent, and the drop says why
    assert ownpage.posts == [] and [row.subscribed for row in ownpage.rows.values()] == [True]
    assert result.stale == {FOLDED_TWIN: 1}


def test_an_address_with_no_twin_present_is_written_as_before() -> None:
    # Given a reader gone from the source whose key has a possible twin no one holds
    ownpage = FoldingOwnpage([Row("jessica@example.org", True)])
    # When a change names her / Then she is unsubscribed: a twin is looked for, not assumed
    report = apply_changes(
        batch_from_event(changed("jessica@example.org"), "email"),
        target(ownpage, "someone@example.org"),
        None,
        Deadline.unlimited(),
    )
    assert not ownpage.rows["jessica@example.org"].subscribed and sum(report.left_to_scheduled_run.values()) == 0
