"""The fast lane's and the retry path's re-check against an Ownpage that keeps and matches spellings
exactly (the emulator over real HTTP): a reader the source no longer lists, held by Ownpage in a
spelling its exact search misses, is never dropped as done; the scheduled run is left to find her,
and the report says so. The run table is tests/fakes.InMemoryLedger (what is under test is the
re-check; the ledger has its own tests against moto)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from ownpage_sync.deadline import Deadline
from ownpage_sync.fast_lane import UNDECIDED, FastLanePolicy, apply_changes, batch_from_event
from ownpage_sync.ownpage import OwnpageClient
from ownpage_sync.retrying import RetryTarget, retry_message
from ownpage_sync.secrets import OwnpageCredentials
from ownpage_sync.settings import OwnpageSettings
from ownpage_sync.spellings import SpellingSnapshot

from tests.fakes import InMemoryLedger, InMemorySource
from tests.unit.test_fast_lane import Sink, Unreadable

pytestmark = pytest.mark.integration

LIST_ID = 1


def client(emulator: Any) -> OwnpageClient:
    settings = OwnpageSettings(
        api_url=emulator.url, list_id=LIST_ID, secret_id=None, max_attempts=2, backoff_base=0.001, backoff_cap=0.005
    )
    return OwnpageClient(settings, OwnpageCredentials("demo", "demo-key"), Deadline.unlimited())


def changed(email: str) -> dict[str, Any]:
    return {
        "id": "ev-1",
        "detail-type": "SubscriberChanged",
        "source": "ownpage-sync",
        "time": datetime.now(UTC).isoformat(),
        "detail": {"email": email},
    }


@pytest.fixture
def ann_spelled_otherwise(emulator: Any) -> InMemoryLedger:
    """Ownpage holding `Ann@Example.com` subscribed, matching exactly; the last complete read, a
    moment ago, saw her key in that other spelling."""
    emulator.set_faults(matching="exact")
    emulator.state.seed(LIST_ID, [{"email": "Ann@Example.com", "subscribed": True}])
    ledger = InMemoryLedger()
    ledger.put_spellings(SpellingSnapshot.of_keys("run-1", datetime.now(UTC), ["ann@example.com"]))
    return ledger


def test_the_fast_lane_leaves_an_unsubscribe_it_cannot_see_to_the_scheduled_run_and_says_so(
    emulator: Any, ann_spelled_otherwise: InMemoryLedger
) -> None:
    # Given a source (conclusive) that no longer lists her
    ownpage = client(emulator)
    target = RetryTarget(InMemorySource([]), lambda deadline: ownpage, LIST_ID, ledger=ann_spelled_otherwise)
    # When the publisher's application says she changed (she left on its site)
    batch = batch_from_event(changed("ann@example.com"), "email")
    report = apply_changes(batch, target, None, Deadline.unlimited(), FastLanePolicy(new_addresses="proven"))
    # Then her row, which the exact search misses, is untouched and the change is counted as left to
    # the scheduled run (FastLaneUndecided), not taken as done
    assert emulator.state.subscriber(LIST_ID, "Ann@Example.com")["subscribed"] is True
    assert report.left_to_scheduled_run[UNDECIDED] == 1
    assert {name: value for name, _, value in report.metrics()}["FastLaneUndecided"] == 1


def test_a_queued_unsubscribe_the_search_cannot_see_is_left_undecided_not_dropped_as_not_on_ownpage(
    emulator: Any, ann_spelled_otherwise: InMemoryLedger
) -> None:
    # Given the fast lane's wish for her queued while Ownpage was down (in her key's spelling)
    sink = Sink()
    down = RetryTarget(InMemorySource([]), lambda deadline: Unreadable(), LIST_ID)
    apply_changes(batch_from_event(changed("ann@example.com"), "email"), down, sink, Deadline.unlimited())
    (message,) = sink.messages
    # When the retry path replays it with Ownpage back
    ownpage = client(emulator)
    target = RetryTarget(InMemorySource([]), lambda deadline: ownpage, LIST_ID, ledger=ann_spelled_otherwise)
    result = retry_message(message, target, Deadline.unlimited())
    # Then nothing is written and the drop says the next full run decides
    assert emulator.state.subscriber(LIST_ID, "Ann@Example.com")["subscribed"] is True
    assert result.stale == {"undecided": 1} and result.sent == 0
