"""What a complete read keeps for the fast lane (ownpage_sync.spellings): digests of the keys Ownpage
holds under another spelling, and when they prove an address new."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from ownpage_sync.models import OwnpageSubscriber
from ownpage_sync.planner import Planner, PlanPolicy
from ownpage_sync.spellings import MAX_DIGESTS, SpellingSnapshot, digest

pytestmark = pytest.mark.unit

READ_AT = datetime(2026, 12, 1, 6, 0, tzinfo=UTC)
DAY = 86_400.0


def test_the_digest_is_the_same_in_every_process() -> None:
    # Given a key's digest here, and in another interpreter (whose str hash is randomised differently)
    elsewhere = subprocess.run(
        [sys.executable, "-c", "from ownpage_sync.spellings import digest; print(digest('zoë@example.org'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # Then they are equal, and two keys differ
    assert int(elsewhere) == digest("zoë@example.org") != digest("zoe@example.org")


def test_only_keys_held_under_another_spelling_are_kept() -> None:
    # Given a read showing one address as its key, one only in capitals, one twice (as its key, and NFD)
    planner = Planner(PlanPolicy())
    planner.add_ownpage(
        [
            OwnpageSubscriber("plain@example.org", True),
            OwnpageSubscriber("Ann@Example.org", False, unsubscribed_cause="READER"),
            OwnpageSubscriber("zoë@example.org", True),
            OwnpageSubscriber("zoe\u0308@example.org", True),
        ]
    )
    # When the read's snapshot is taken
    snapshot = SpellingSnapshot.of_keys("run-1", READ_AT, planner.index.respelled_keys())
    # Then it proves new an address it never saw, and the one it saw only as its key; not the others
    now = READ_AT + timedelta(hours=1)
    assert snapshot.proves_new("new@example.org", now, DAY) and snapshot.proves_new("plain@example.org", now, DAY)
    assert not snapshot.proves_new("ann@example.org", now, DAY)
    assert not snapshot.proves_new("zoë@example.org", now, DAY)


def test_an_old_or_overfull_snapshot_proves_nothing() -> None:
    fresh = SpellingSnapshot.of_keys("run-1", READ_AT, ["ann@example.org"])
    assert fresh.proves_new("bob@example.org", READ_AT + timedelta(hours=25), DAY + 3600)
    assert not fresh.proves_new("bob@example.org", READ_AT + timedelta(hours=27), DAY + 3600)
    overfull = SpellingSnapshot.of_keys("run-1", READ_AT, (f"r{i}@example.org" for i in range(MAX_DIGESTS + 1)))
    assert overfull.digests is None and not overfull.proves_new("bob@example.org", READ_AT, DAY)


def test_a_key_carried_from_the_read_before_is_never_proven_new_and_held_only_once() -> None:
    # Given a snapshot of a read that saw ann in another spelling, and carries bob: the read before
    # saw him so, this one not at all
    snapshot = SpellingSnapshot.of_keys("run-2", READ_AT, ["ann@example.org"], carried=["bob@example.org"])
    # When the fast lane and the next run ask
    # Then neither address is proven new to the fast lane
    assert not snapshot.proves_new("ann@example.org", READ_AT, DAY)
    assert not snapshot.proves_new("bob@example.org", READ_AT, DAY)
    assert snapshot.proves_new("cat@example.org", READ_AT, DAY)
    # And the next run holds ann if it misses her, but not bob again: he was held once already
    assert snapshot.saw_respelled("ann@example.org") and not snapshot.saw_respelled("bob@example.org")
    # And carried keys count against the one item's room
    keys = [f"r{i}@example.org" for i in range(MAX_DIGESTS)]
    assert SpellingSnapshot.of_keys("run-2", READ_AT, keys, carried=["bob@example.org"]).digests is None


def test_digests_survive_their_stored_form() -> None:
    snapshot = SpellingSnapshot.of_keys("run-1", READ_AT, ["ann@example.org", "bob@example.org"])
    assert SpellingSnapshot.digests_from(snapshot.to_bytes(), complete=True) == snapshot.digests
    carrying = SpellingSnapshot.of_keys("run-1", READ_AT, [], carried=["cat@example.org"])
    assert SpellingSnapshot.digests_from(carrying.carried_bytes(), complete=True) == carrying.carried
    assert SpellingSnapshot.digests_from(b"", complete=False) is None
