"""Adversarial: an Ownpage matching addresses with full Unicode case folding (the emulator over real
HTTP, `matching="casefold"`). Each test broke a safety rule of docs/safety.md when written and guards
its fix now.

Two roots:
- A look-up (fast lane, retry path) whose Ownpage search *shows* a row that folds into the asked key
  (`ſam@` for `sam@`, `ﬁona@` for `fiona@`) threw it away as a look-alike (`canonical_key` differs)
  instead of taking it for the twin it is (`fold_twins` guesses only `ß` for `ss`, at most two), so
  the write went out and Ownpage, folding, applied it to the other row. Fixed: the search's folded
  rows make the key `folded` (recheck.py), left to the full run.
- Ownpage holding two rows that fold together (rows made before it folded: seeded under the default
  matching, then `matching="casefold"`): a write addressed to one spelling lands on the oldest row
  that folds with it. Fixed: the planner holds a resubscribe, an update or a subscribe to such a row,
  and an unsubscribe that could land on a listed subscribed one; an unsubscribe that lands on an
  already unsubscribed row shows in the summary (`nb_unsubscribed` short) and keeps the run
  `not_converged` (applier.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from ownpage_sync.deadline import Deadline
from ownpage_sync.fast_lane import FastLanePolicy, apply_changes, batch_from_event
from ownpage_sync.models import Action, Operation
from ownpage_sync.ports import Failure
from ownpage_sync.report import Outcome
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.retrying import RetryTarget, retry_message
from ownpage_sync.sources.base import RawSubscriber
from ownpage_sync.spellings import SpellingSnapshot

from tests.fakes import InMemoryLedger, InMemorySource
from tests.integration.test_read_safety import run
from tests.integration.test_recheck_spellings import LIST_ID, changed, client

pytestmark = pytest.mark.integration

OTHERS = [f"reader{n:02d}@example.org" for n in range(40)]

# (the spelling Ownpage holds, the ASCII-or-listable key another reader has) that Ownpage folds together
# and that no twin rule lists: long s, ligatures, a non-ASCII domain, three `ss`.
UNLISTED_TWINS = [
    ("ſam@example.org", "sam@example.org"),
    ("ﬁona@example.org", "fiona@example.org"),
    ("ﬆeve@example.org", "steve@example.org"),
    ("ſam@exämple.org", "sam@exämple.org"),
    ("aßeßleß@example.org", "assessless@example.org"),
]

# (older row, its suppressing cause), (newer row, the publisher's cause): one reader to a folding Ownpage.
FOLDED_ROWS = [
    ("strasse@example.de", "READER", "straße@example.de"),
    ("σοφίας@example.gr", "HARD_BOUNCE", "σοφίασ@example.gr"),
    ("µaria@example.com", "MULTIPLE_BOUNCES", "μaria@example.com"),
]


def others() -> list[RawSubscriber]:
    return [RawSubscriber(other, f"row {n + 10}") for n, other in enumerate(OTHERS)]


def rows_spelled(emulator: Any, email: str) -> list[dict[str, Any]]:
    return [dict(row) for row in emulator.state.subscribers(LIST_ID) if row["email"] == email]


def seed_then_fold(emulator: Any, rows: list[dict[str, Any]]) -> None:
    """Rows Ownpage made before it matched with case folding (two rows that fold together), then folding."""
    emulator.state.seed(LIST_ID, [{"email": email, "subscribed": True} for email in OTHERS] + rows)
    emulator.set_faults(matching="casefold")


def unsubscribed(email: str, cause: str) -> dict[str, Any]:
    return {"email": email, "subscribed": False, "unsubscribed_cause": cause, "unsubscribed_at": "2025-01-01T00:00:00Z"}


def two_readers_one_row(emulator: Any, held: str, asked: str) -> tuple[list[RawSubscriber], InMemoryLedger, Any]:
    """A folding Ownpage holding `held` (guid g-held), the source listing `held` and `asked` (g-other),
    and the scheduled run over them (it holds `asked`, and keeps its spelling snapshot)."""
    emulator.set_faults(matching="casefold")
    emulator.state.seed(LIST_ID, [{"email": email, "subscribed": True} for email in OTHERS])
    emulator.state.seed(LIST_ID, [{"email": held, "subscribed": True, "guid": "g-held"}])
    source = [RawSubscriber(held, "row 0", "g-held"), RawSubscriber(asked, "row 1", "g-other"), *others()]
    ledger = InMemoryLedger()
    first = run(emulator, source, ledger=ledger)
    assert first.outcome == Outcome.NOT_CONVERGED and first.plan.held >= 1
    return source, ledger, first


@pytest.mark.parametrize(("held", "asked"), UNLISTED_TWINS)
def test_the_fast_lane_writes_one_readers_guid_over_a_folded_row_its_search_showed(
    emulator: Any, held: str, asked: str
) -> None:
    # Rule 3, broken when written (one reader's guid written over another's row), and the next run flips it back.
    # Ownpage holds `held` (guid g-held); the source lists two readers, `held` and `asked`, which
    # Ownpage folds together. The scheduled run rightly holds `asked`. The fast lane, told `asked`
    # changed, searches Ownpage: the folding search answers with the `held` row, which the client
    # drops as a look-alike (other canonical key); `fold_twins(asked)` has no rule for ſ / ligatures /
    # a third `ss`, so no twin is looked for; `asked` is taken for new and subscribed by omission
    # with its guid, and Ownpage applies that to `held`'s row.
    source, ledger, _ = two_readers_one_row(emulator, held, asked)

    ownpage = client(emulator)
    target = RetryTarget(InMemorySource(source), lambda deadline: ownpage, LIST_ID, ledger=ledger)
    apply_changes(
        batch_from_event(changed(asked), "email"),
        target,
        None,
        Deadline.unlimited(),
        FastLanePolicy(new_addresses="proven"),
    )

    [row] = rows_spelled(emulator, held)
    assert row["guid"] == "g-held", f"the fast lane wrote {asked!r}'s guid over {held!r}'s row"


@pytest.mark.parametrize(("held", "asked"), UNLISTED_TWINS[:2])
def test_the_retry_path_writes_one_readers_guid_over_a_folded_row_its_search_showed(
    emulator: Any, held: str, asked: str
) -> None:
    # Rule 3, broken when written by the retry path: the same blind spot as the fast lane (recheck.py), for a
    # subscribe queued for `asked` (e.g. by a fast-lane write that failed).
    source, ledger, first = two_readers_one_row(emulator, held, asked)
    operation = Operation(Action.SUBSCRIBE, asked, guid="g-other")
    message = RetryMessage.for_failure(LIST_ID, first.run_id, [operation], Failure("unavailable", "HTTP 503", 503))
    ownpage = client(emulator)
    retry_message(
        message,
        RetryTarget(InMemorySource(source), lambda deadline: ownpage, LIST_ID, ledger=ledger),
        Deadline.unlimited(),
    )

    [row] = rows_spelled(emulator, held)
    assert row["guid"] == "g-held", f"the retry path wrote {asked!r}'s guid over {held!r}'s row"


@pytest.mark.parametrize(("older", "cause", "newer"), FOLDED_ROWS)
def test_a_resubscribe_of_a_publisher_row_lands_on_a_folded_row_the_reader_unsubscribed(
    emulator: Any, older: str, cause: str, newer: str
) -> None:
    # Rule 1, broken when written (a reader who said no is re-subscribed), and rule 4 (the run says CONVERGED).
    # Ownpage holds `older` unsubscribed by the reader (or a bounce) and `newer`, which folds into it,
    # unsubscribed by the publisher; the source lists `newer` again. The planner sends
    # `{"email": newer, "subscribed": true}`; folding Ownpage applies it to the oldest row it takes
    # `newer` for: `older`, whose "no" is lifted. The next run then unsubscribes `older` with the
    # PUBLISHER cause (her own cause lost: a later run may lift it) and re-subscribes again: flip-flop.
    seed_then_fold(emulator, [unsubscribed(older, cause), unsubscribed(newer, "PUBLISHER")])
    report = run(emulator, [RawSubscriber(newer, "row 0"), *others()])

    assert emulator.state.resubscriptions == [], (report.outcome, emulator.state.resubscriptions)
    [row] = rows_spelled(emulator, older)
    assert (row["subscribed"], row["unsubscribed_cause"]) == (False, cause)


@pytest.mark.parametrize("listed", [[], ["strasse@example.de"]], ids=["source-lists-neither", "source-lists-the-no"])
def test_an_unsubscribe_that_lands_on_a_folded_suppressed_row_is_reported_converged(
    emulator: Any, listed: list[str]
) -> None:
    # Rule 4, broken when written (CONVERGED while Ownpage is not in step), run after run, and the subscribed row is
    # mailed for ever. Ownpage holds `strasse@` unsubscribed by the reader (older) and `straße@`
    # subscribed; the source lists neither (or only the reader's "no"). Each run plans the unsubscribe
    # of `straße@`; folding Ownpage applies it to `strasse@` (already unsubscribed: nothing changes)
    # and answers a summary the run takes as applied. `straße@` stays subscribed; both runs say CONVERGED.
    seed_then_fold(
        emulator, [unsubscribed("strasse@example.de", "READER"), {"email": "straße@example.de", "subscribed": True}]
    )
    source = [RawSubscriber(email, f"row {n}") for n, email in enumerate(listed)] + others()
    first = run(emulator, source)
    second = run(emulator, source)

    [row] = rows_spelled(emulator, "straße@example.de")
    outcomes = (first.outcome, second.outcome)
    assert row["subscribed"] is False or Outcome.CONVERGED not in outcomes, (
        f"straße@ still subscribed, not listed, yet the runs ended {outcomes}"
    )


def test_the_fast_lane_resubscribes_a_folded_row_the_reader_unsubscribed(emulator: Any) -> None:
    # Rule 1, broken when written by the fast lane. Ownpage holds `ſam@` unsubscribed by the reader (older) and
    # `sam@` unsubscribed by the publisher; the source lists `sam@`. The fast lane's search for `sam@`
    # answers both rows; it keeps `sam@`, drops `ſam@` as a look-alike, and (no twin rule for ſ)
    # sends `{"email": "sam@…", "subscribed": true}`, which folding Ownpage applies to `ſam@`.
    seed_then_fold(emulator, [unsubscribed("ſam@example.org", "READER"), unsubscribed("sam@example.org", "PUBLISHER")])
    source = [RawSubscriber("sam@example.org", "row 0"), *others()]
    ledger = InMemoryLedger()
    # What a complete read a moment ago keeps: both rows are spelled as their keys, no other spelling.
    ledger.put_spellings(SpellingSnapshot.of_keys("run-1", datetime.now(UTC), []))
    ownpage = client(emulator)
    target = RetryTarget(InMemorySource(source), lambda deadline: ownpage, LIST_ID, ledger=ledger)
    apply_changes(
        batch_from_event(changed("sam@example.org"), "email"),
        target,
        None,
        Deadline.unlimited(),
        FastLanePolicy(new_addresses="proven"),
    )

    assert emulator.state.resubscriptions == []
    [row] = rows_spelled(emulator, "ſam@example.org")
    assert (row["subscribed"], row["unsubscribed_cause"]) == (False, "READER")
