"""The read proof's cause by cause comparison (read_proof.cause_shortfall); the whole read against
the emulator is in tests/integration/test_read_safety.py."""

from __future__ import annotations

import pytest
from ownpage_sync.index import OwnpageStats, State
from ownpage_sync.ports import SubscriberCounts
from ownpage_sync.read_proof import cause_shortfall

pytestmark = pytest.mark.unit


def seen(**by_cause: int) -> OwnpageStats:
    stats = OwnpageStats()
    for name, number in by_cause.items():
        stats.seen_by_state[State[name]] = number
    return stats


def test_a_cause_the_read_is_short_of_is_not_made_up_by_another() -> None:
    # Given counts of one bounce and one reader's "no" before the read, the reader's only after it
    # (the bounce was deleted meanwhile), and a read that showed the bounce but not the reader
    before = SubscriberCounts(1998, 2, {"HARD_BOUNCE": 1, "READER": 1})
    after = SubscriberCounts(1999, 1, {"READER": 1})
    # When they are compared cause by cause / Then the read is one reader short, though its total adds up
    assert cause_shortfall(before, after, seen(SUBSCRIBED=1999, HARD_BOUNCE=1), wildcards=0) == 1
    # And a read that showed her is not
    assert cause_shortfall(before, after, seen(SUBSCRIBED=1999, HARD_BOUNCE=1, READER=1), wildcards=0) == 0


def test_rows_of_no_readable_cause_may_stand_for_any_cause() -> None:
    # Given two readers counted, read once with her cause and once without a readable one
    counts = SubscriberCounts(10, 2, {"READER": 2})
    # When compared / Then the row of no readable cause, or a bare or addressless row, fills the gap
    assert cause_shortfall(counts, counts, seen(READER=1, UNKNOWN=1), wildcards=0) == 0
    assert cause_shortfall(counts, counts, seen(READER=1), wildcards=1) == 0
    assert cause_shortfall(counts, counts, seen(READER=1), wildcards=0) == 1


def test_a_breakdown_is_read_as_the_rows_causes_are() -> None:
    # Given a breakdown in lower case and with spaces, and a cause the sync does not know
    counts = SubscriberCounts(10, 3, {"reader": 1, " READER ": 1, "SPAM": 1})
    # When compared / Then both spellings are the reader's cause; the unknown one is no cause to prove
    assert cause_shortfall(counts, counts, seen(READER=2), wildcards=0) == 0
    assert cause_shortfall(counts, counts, seen(READER=1), wildcards=0) == 1


def test_counts_without_a_breakdown_prove_nothing_cause_by_cause() -> None:
    counts = SubscriberCounts(10, 2)
    assert cause_shortfall(counts, counts, seen(), wildcards=0) == 0
