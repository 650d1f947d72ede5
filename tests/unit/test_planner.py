"""The planner's rules, one example each: read top to bottom, this is the policy of docs/safety.md."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ownpage_sync.models import Action, Operation, OwnpageSubscriber
from ownpage_sync.planner import Plan, Planner, PlanPolicy, Suppression, plan_changes
from ownpage_sync.sources.base import RawSubscriber

pytestmark = pytest.mark.unit

UNSUBSCRIBED_AT = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
LIBRARY = Path(__file__).resolve().parents[2] / "layers" / "ownpage_sync" / "ownpage_sync"


def row(email: object, where: str = "row 1", **fields: Any) -> RawSubscriber:
    return RawSubscriber(email=email, where=where, **fields)


def subscribed(email: str, **fields: Any) -> OwnpageSubscriber:
    return OwnpageSubscriber(email, subscribed=True, **fields)


def unsubscribed(email: str, cause: str | None, at: datetime | None = UNSUBSCRIBED_AT) -> OwnpageSubscriber:
    return OwnpageSubscriber(email, subscribed=False, unsubscribed_at=at, unsubscribed_cause=cause)


# --- subscribing ------------------------------------------------------------------------------------------


def test_a_source_subscriber_the_read_did_not_show_is_subscribed_by_omission() -> None:
    # Given a source subscriber absent from what the read of Ownpage showed
    # When the plan is made
    plan = plan_changes([row("ann@example.com", guid="u-1", data={"firstname": "Ann"})], [])

    # Then it is subscribed with its guid and data, and the payload carries no `subscribed` field:
    # should Ownpage hold the address after all (a row the read skipped), Ownpage keeps its status
    assert plan.to_subscribe == (Operation(Action.SUBSCRIBE, "ann@example.com", guid="u-1", data={"firstname": "Ann"}),)
    assert plan.to_subscribe[0].to_payload() == {"email": "ann@example.com", "guid": "u-1", "data_firstname": "Ann"}
    assert plan.to_resubscribe == () and plan.to_unsubscribe == () and plan.to_update == ()


def test_an_unseen_address_the_last_read_saw_in_another_spelling_is_held_once() -> None:
    # Given two source subscribers the read did not show, one of which the last complete read saw in
    # Ownpage under another spelling (a row this read may have skipped)
    planner = Planner(PlanPolicy(), ())
    planner.add_ownpage([])
    for email in ("ann@example.com", "bob@example.com"):
        planner.add_source_row(row(email))
    # When the plan is made with what the last read saw
    plan = planner.finish(respelled_before=lambda key: key == "ann@example.com")
    # Then only bob is subscribed; ann is held, named (masked) and kept for the next snapshot
    assert [op.email for op in plan.to_subscribe] == ["bob@example.com"]
    assert plan.held == 1 and planner.unseen_respelled == ["ann@example.com"]
    assert [(p.reason, p.masked_email) for p in plan.source.samples] == [
        ("the last complete read saw this address in another spelling, this read not at all: held", "a***@e***.com")
    ]


def test_an_address_the_publisher_unsubscribed_is_resubscribed_explicitly() -> None:
    # Given an address the read shows unsubscribed by the publisher (our own earlier unsubscribe)
    ownpage = [unsubscribed("ann@example.com", "PUBLISHER")]

    # When the source lists it again
    plan = plan_changes([row("ann@example.com")], ownpage)

    # Then it is re-subscribed with `subscribed: true` (the only kind of write that carries it), and
    # this is not counted as a consent renewal
    assert [op.to_payload() for op in plan.to_resubscribe] == [{"email": "ann@example.com", "subscribed": True}]
    assert plan.to_subscribe == () and plan.suppressed == () and plan.resubscribed_by_consent == 0
    assert plan.counts()["to_subscribe"] == 1  # reported among the subscribes


def test_source_addresses_match_ownpage_rows_by_canonical_key() -> None:
    # Given a source row spelled in upper case, decomposed Unicode and padded with spaces
    rows = [row("  JOSE\u0301@EXA\u0308MPLE.ORG ")]
    # And Ownpage holding the same reader in its canonical spelling
    ownpage = [subscribed("josé@exämple.org")]

    # When planned
    plan = plan_changes(rows, ownpage)

    # Then they are the same subscriber: nothing to subscribe or unsubscribe
    assert plan.is_empty
    assert plan.unchanged == 1


# --- Ownpage's spelling -------------------------------------------------------------------------------


def test_every_write_to_a_row_the_read_showed_uses_ownpages_spelling() -> None:
    # Given Ownpage rows stored in spellings of their own (Ownpage may keep and match them exactly)
    ownpage = [
        subscribed("Gone@Example.NET"),
        subscribed("ANN@Example.com", data={"city": "Lyon"}),
        unsubscribed("Bob@Example.com", "PUBLISHER"),
    ]
    rows = [row("ann@example.com", data={"city": "Paris"}), row("bob@example.com")]

    # When planned
    plan = plan_changes(rows, ownpage)

    # Then the unsubscribe, the update and the re-subscribe are addressed as Ownpage spells them
    assert [op.email for op in plan.to_unsubscribe] == ["Gone@Example.NET"]
    assert [op.email for op in plan.to_update] == ["ANN@Example.com"]
    assert [op.email for op in plan.to_resubscribe] == ["Bob@Example.com"]
    assert plan.to_subscribe == ()  # no second row beside an existing spelling


def test_two_spellings_of_one_key_take_the_most_restrictive_status_whatever_the_order() -> None:
    # Given one reader held twice by an Ownpage that matches spellings exactly: an NFD spelling
    # unsubscribed by the publisher, an NFC one unsubscribed by the reader
    nfc = "zoë@example.org"
    nfd = unicodedata.normalize("NFD", nfc)
    rows_ = [unsubscribed(nfd, "PUBLISHER"), unsubscribed(nfc, "READER")]

    # When planned with the rows read in either order
    plans = [plan_changes([row(nfc)], order) for order in (rows_, rows_[::-1])]

    # Then the reader's own decision wins both times: suppressed, nothing written, the pair reported
    for plan in plans:
        assert plan.is_empty
        assert [(s.email, s.cause) for s in plan.suppressed] == [(nfc, "READER")]
        assert plan.ownpage.shared_keys == 1 and plan.ownpage.rows == 2


def test_a_row_read_twice_with_two_statuses_keeps_the_most_restrictive() -> None:
    # Given a row that changed while the list was paged, read once subscribed and once unsubscribed by
    # the reader (a list ordered by last change moves it past the reader's offset)
    readings = [subscribed("ann@example.com"), unsubscribed("ann@example.com", "READER")]

    # When planned with either reading first, the source still listing the address
    plans = [plan_changes([row("ann@example.com")], order) for order in (readings, readings[::-1])]

    # Then it is suppressed both times and counted once
    for plan in plans:
        assert plan.is_empty and [s.cause for s in plan.suppressed] == ["READER"]
        assert (plan.ownpage.rows, plan.ownpage.repeated_rows) == (1, 1)


def test_every_subscribed_spelling_of_a_key_the_source_dropped_is_unsubscribed() -> None:
    # Given two subscribed spellings of one reader the source no longer lists
    ownpage = [subscribed("Ann@Example.com"), subscribed("ann@example.com")]

    # When planned
    plan = plan_changes([], ownpage)

    # Then both rows stop receiving mail
    assert sorted(op.email for op in plan.to_unsubscribe) == ["Ann@Example.com", "ann@example.com"]


# --- unsubscribing ------------------------------------------------------------------------------------


def test_an_ownpage_subscriber_absent_from_the_source_is_unsubscribed_with_the_publisher_cause() -> None:
    # Given an address subscribed in Ownpage that the source no longer lists
    ownpage = [subscribed("gone@example.com", guid="u-9", data={"city": "Lyon"})]

    # When the plan is made
    plan = plan_changes([], ownpage)

    # Then it is unsubscribed (never deleted) with cause PUBLISHER and nothing else in the payload
    assert plan.to_unsubscribe[0].to_payload() == {
        "email": "gone@example.com",
        "subscribed": False,
        "unsubscribed_cause": "PUBLISHER",
    }


def test_the_unsubscribe_cause_is_configurable() -> None:
    # Given a policy sending READER as the cause of our unsubscribes
    policy = PlanPolicy(unsubscribe_cause="READER")

    # When a subscriber absent from the source is unsubscribed
    plan = plan_changes([], [subscribed("gone@example.com")], policy)

    # Then the payload carries that cause
    assert plan.to_unsubscribe[0].to_payload()["unsubscribed_cause"] == "READER"


def test_an_address_already_unsubscribed_and_absent_from_the_source_is_left_alone() -> None:
    # Given addresses Ownpage already holds unsubscribed, for every cause, that the source does not list
    ownpage = [
        unsubscribed(f"{cause or 'none'}@example.com", cause) for cause in ("READER", "PUBLISHER", "HARD_BOUNCE", None)
    ]

    # When the plan is made
    plan = plan_changes([], ownpage)

    # Then nothing is written for them, and nothing is reported as suppressed (they are not wanted)
    assert plan.is_empty and plan.suppressed == ()
    assert plan.ownpage_total == 4 and plan.ownpage_subscribed == 0


def test_a_source_subscriber_is_never_unsubscribed() -> None:
    # Given a subscriber present in both, with different data
    # When the plan is made
    plan = plan_changes(
        [row("ann@example.com", data={"city": "Paris"})], [subscribed("ann@example.com", data={"city": "Lyon"})]
    )

    # Then it is updated, not unsubscribed
    assert plan.to_unsubscribe == ()
    assert [op.action for op in plan.operations()] == [Action.UPDATE]


@pytest.mark.parametrize(
    "email",
    ["a" * 65 + "@example.com", "ann..smith@example.com", "trailing@dot.com.", "ann@[192.0.2.1]", "ann@localhost"],
)
def test_an_address_the_source_lists_is_never_unsubscribed_whatever_our_rules_think_of_it(email: str) -> None:
    # Given an address Ownpage holds subscribed, listed by the source, however odd it looks to us
    # When the plan is made
    plan = plan_changes([row(email)], [subscribed(email)])

    # Then it is not unsubscribed
    assert plan.to_unsubscribe == () and plan.unchanged == 1


def test_an_implausible_new_address_is_reported_and_never_sent() -> None:
    # Given source rows with empty, implausible and non-text addresses next to a plausible one
    rows = [
        row("ann@example.com", "row 1"),
        row("user1@", "row 2"),
        row("   ", "row 3"),
        row(None, "row 4"),
        row("two@@example.com", "row 5"),
    ]

    # When planned against an empty list
    plan = plan_changes(rows, [])

    # Then only the plausible address is subscribed; the others are counted and sampled masked
    assert [op.email for op in plan.to_subscribe] == ["ann@example.com"]
    assert plan.source.invalid == 4 and plan.source.rows_read == 5
    assert [(p.where, p.reason) for p in plan.source.samples] == [
        ("row 2", "not a plausible email address (never sent)"),
        ("row 3", "empty address"),
        ("row 4", "empty address"),
        ("row 5", "not a plausible email address (never sent)"),
    ]
    assert all(p.masked_email != "user1@" for p in plan.source.samples)


# --- suppression --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cause", ["READER", "HARD_BOUNCE", "MULTIPLE_BOUNCES"])
def test_an_address_the_reader_or_the_mail_system_unsubscribed_is_suppressed(cause: str) -> None:
    # Given a source subscriber Ownpage shows unsubscribed for a suppressing cause
    ownpage = [unsubscribed("ann@example.com", cause)]

    # When the plan is made
    plan = plan_changes([row("ann@example.com")], ownpage)

    # Then it is not re-subscribed but reported, with its cause and time
    assert plan.is_empty
    assert plan.suppressed == (Suppression("ann@example.com", cause, UNSUBSCRIBED_AT),)
    assert plan.suppressed_by_cause() == {cause: 1}
    assert plan.suppressed[0].to_dict() == {
        "email": "ann@example.com",
        "cause": cause,
        "unsubscribed_at": "2024-03-01T09:30:00+00:00",
    }


@pytest.mark.parametrize("cause", ["SPAM_COMPLAINT", None, ""])
def test_an_unknown_or_missing_cause_suppresses(cause: str | None) -> None:
    # Given an unsubscription whose cause Ownpage does not document (or does not give)
    ownpage = [unsubscribed("ann@example.com", cause or None)]

    # When the plan is made, even with a policy that suppresses nothing but bounces
    policy = PlanPolicy(suppressing_causes=frozenset({"HARD_BOUNCE", "MULTIPLE_BOUNCES"}))
    plan = plan_changes([row("ann@example.com")], ownpage, policy)

    # Then the safe reading wins: suppressed, reported as of an unknown cause
    assert plan.to_subscribe == () and plan.to_resubscribe == ()
    assert plan.suppressed_by_cause() == {"UNKNOWN": 1}


def test_a_row_whose_status_cannot_be_read_suppresses() -> None:
    # Given a row whose `subscribed` value was unreadable (mapped to None)
    ownpage = [OwnpageSubscriber("ann@example.com", subscribed=None)]

    # When the source lists it, and when it does not
    listed = plan_changes([row("ann@example.com")], ownpage)
    unlisted = plan_changes([], ownpage)

    # Then nothing is written either way: no re-subscribe, no unsubscribe that could overwrite a cause
    assert listed.is_empty and [s.cause for s in listed.suppressed] == ["UNKNOWN"]
    assert unlisted.is_empty


def test_which_causes_suppress_is_configurable() -> None:
    # Given a policy where only bounces suppress
    policy = PlanPolicy(suppressing_causes=frozenset({"HARD_BOUNCE", "MULTIPLE_BOUNCES"}))
    ownpage = [unsubscribed("reader@example.com", "READER"), unsubscribed("bounce@example.com", "HARD_BOUNCE")]

    # When the plan is made
    plan = plan_changes([row("reader@example.com"), row("bounce@example.com")], ownpage, policy)

    # Then the reader's unsubscribe is overridden by the source, the bounce still is not
    assert [op.email for op in plan.to_resubscribe] == ["reader@example.com"]
    assert [item.email for item in plan.suppressed] == ["bounce@example.com"]


def test_a_suppressed_address_gets_no_data_update_either() -> None:
    # Given a suppressed address whose data differs
    ownpage = [OwnpageSubscriber("ann@example.com", False, data={"city": "Lyon"}, unsubscribed_cause="READER")]

    # When the plan is made
    plan = plan_changes([row("ann@example.com", data={"city": "Paris"})], ownpage)

    # Then nothing is written for it: it is only reported
    assert plan.is_empty
    assert len(plan.suppressed) == 1


# --- consent renewal ----------------------------------------------------------------------------------


def test_a_newer_opt_in_in_the_source_renews_consent() -> None:
    # Given a reader who unsubscribed on Ownpage's side, then opted in again on the publisher's site
    rows = [row("ann@example.com", consented_at=UNSUBSCRIBED_AT + timedelta(seconds=1))]

    # When the plan is made
    plan = plan_changes(rows, [unsubscribed("ann@example.com", "READER")])

    # Then the address is re-subscribed and counted as a renewal
    assert [op.email for op in plan.to_resubscribe] == ["ann@example.com"]
    assert plan.resubscribed_by_consent == 1
    assert plan.suppressed == ()


@pytest.mark.parametrize(
    ("consented_at", "unsubscribed_at"),
    [
        (UNSUBSCRIBED_AT, UNSUBSCRIBED_AT),  # the same instant is not "later"
        (UNSUBSCRIBED_AT + timedelta(microseconds=400), UNSUBSCRIBED_AT),  # within the millisecond: not provably later
        (UNSUBSCRIBED_AT - timedelta(days=1), UNSUBSCRIBED_AT),  # an old consent
        (None, UNSUBSCRIBED_AT),  # no consent time in the source
        (UNSUBSCRIBED_AT, None),  # Ownpage does not say when: the opt-in cannot be shown newer
    ],
    ids=["equal", "same-millisecond", "older", "no-consent", "no-unsubscribed-at"],
)
def test_a_consent_that_is_not_strictly_newer_does_not_renew(
    consented_at: datetime | None, unsubscribed_at: datetime | None
) -> None:
    # Given a suppressed address and a consent time that is not strictly later
    rows = [row("ann@example.com", consented_at=consented_at)]

    # When the plan is made
    plan = plan_changes(rows, [unsubscribed("ann@example.com", "HARD_BOUNCE", unsubscribed_at)])

    # Then it stays suppressed
    assert plan.to_resubscribe == ()
    assert plan.resubscribed_by_consent == 0
    assert [item.email for item in plan.suppressed] == ["ann@example.com"]


def test_consent_times_compare_across_time_zones() -> None:
    # Given an opt-in written in Paris time, one hour after an unsubscription recorded in UTC
    paris = datetime(2024, 3, 1, 11, 30, tzinfo=datetime.fromisoformat("2024-03-01T00:00+01:00").tzinfo)

    # When planned
    plan = plan_changes(
        [row("ann@example.com", consented_at=paris.isoformat())], [unsubscribed("ann@example.com", "READER")]
    )

    # Then 11:30+01:00 (10:30 UTC) is later than 09:30 UTC: consent renewed
    assert plan.resubscribed_by_consent == 1


def test_an_unreadable_consent_time_is_ignored_and_reported() -> None:
    # Given suppressed readers whose consent column holds an epoch in nanoseconds, junk, or a time out
    # of datetime's range
    rows = [
        row("ann@example.com", "row 1", consented_at=1_717_000_000_000_000_000),
        row("bob@example.com", "row 2", consented_at="yesterday"),
        row("cat@example.com", "row 3", consented_at="0001-01-01T00:00:00+01:00"),
    ]
    ownpage = [unsubscribed(f"{name}@example.com", "READER") for name in ("ann", "bob", "cat")]

    # When planned (this must not stop the run)
    plan = plan_changes(rows, ownpage)

    # Then none has a consent time: the safe reading, all still suppressed
    assert plan.source.invalid_consent == 3
    assert plan.to_resubscribe == () and len(plan.suppressed) == 3


def test_a_consent_time_in_the_future_is_a_placeholder_and_renews_nothing() -> None:
    # Given suppressed readers whose consent column holds a placeholder far in the future, and one a
    # database clock running a few minutes ahead wrote
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    rows = [
        row("ann@example.com", "row 1", consented_at="9999-12-31T23:59:59Z"),
        row("bob@example.com", "row 2", consented_at=(now + timedelta(days=2)).isoformat()),
        row("cat@example.com", "row 3", consented_at=(now + timedelta(minutes=5)).isoformat()),
    ]
    ownpage = [unsubscribed(f"{name}@example.com", "READER") for name in ("ann", "bob", "cat")]

    # When planned at `now`
    plan = plan_changes(rows, ownpage, now=now)

    # Then the placeholders are reported and ignored (Ann and Bob stay suppressed); Cat's consent, within
    # the clock margin, renews
    assert plan.source.invalid_consent == 2
    assert [op.email for op in plan.to_resubscribe] == ["cat@example.com"] and len(plan.suppressed) == 2


# --- updates ------------------------------------------------------------------------------------------


def test_changed_data_is_updated_without_touching_the_status() -> None:
    # Given a subscribed address whose city changed in the source and whose first name did not
    rows = [row("ann@example.com", guid="u-1", data={"firstname": "Ann", "city": "Paris"})]
    ownpage = [subscribed("ann@example.com", guid="u-1", data={"firstname": "Ann", "city": "Lyon", "loyalty": "gold"})]

    # When the plan is made
    plan = plan_changes(rows, ownpage)

    # Then only the changed attribute is sent, and the payload has no `subscribed` key (status kept)
    assert plan.to_update[0].to_payload() == {"email": "ann@example.com", "data_city": "Paris"}


def test_a_changed_guid_is_updated_and_a_missing_one_is_left_to_ownpage() -> None:
    # Given one subscriber whose guid changed and one for which the source has no guid
    ownpage = [subscribed("ann@example.com", guid="u-1"), subscribed("bob@example.com", guid="5f4dcc3b5aa765d6")]

    # When the plan is made
    plan = plan_changes([row("ann@example.com", guid="u-2"), row("bob@example.com")], ownpage)

    # Then the changed guid is sent; Ownpage's own guid (its md5 default) is not overwritten with nothing
    assert [op.to_payload() for op in plan.to_update] == [{"email": "ann@example.com", "guid": "u-2"}]
    assert plan.unchanged == 1


def test_values_compare_as_text() -> None:
    # Given source values of several types equal, as text, to what Ownpage holds
    rows = [row("ann@example.com", guid=42, data={"age": 42.0, "vip": True, "city": " Paris "})]
    ownpage = [subscribed("ann@example.com", guid="42", data={"age": "42", "vip": "true", "city": "Paris"})]

    # When planned
    # Then nothing differs
    assert plan_changes(rows, ownpage).is_empty


def test_a_subscriber_already_in_step_is_unchanged() -> None:
    # Given a subscriber equal on both sides
    ownpage = [subscribed("ann@example.com", guid="u-1", data={"city": "Paris"})]

    # When the plan is made
    plan = plan_changes([row("ann@example.com", guid="u-1", data={"city": "Paris"})], ownpage)

    # Then there is nothing to write
    assert plan.is_empty and plan.write_count == 0
    assert plan.unchanged == 1


def test_a_row_read_twice_with_different_data_gets_the_sources_values() -> None:
    # Given a subscribed row read twice with two cities (it changed while the list was paged)
    ownpage = [
        subscribed("ann@example.com", data={"city": "Lyon"}),
        subscribed("ann@example.com", data={"city": "Paris"}),
    ]

    # When the source says Paris
    plan = plan_changes([row("ann@example.com", data={"city": "Paris"})], ownpage)

    # Then the source's value is sent (harmless if Ownpage already has it): which reading is newer is unknown
    assert [op.to_payload() for op in plan.to_update] == [{"email": "ann@example.com", "data_city": "Paris"}]


# --- repeated source rows ---------------------------------------------------------------------------


def test_source_rows_that_share_a_key_resolve_the_same_in_any_order() -> None:
    # Given two different rows of one address: one matching Ownpage, one not
    rows = [row("Ann@Example.com", "item id=1", guid="u-1"), row(" ann@example.com", "item id=2", guid="u-2")]
    ownpage = [subscribed("ann@example.com", guid="u-2")]

    # When planned in both orders
    plans = [plan_changes(order, ownpage) for order in (rows, rows[::-1])]

    # Then the row already matching Ownpage wins both times (nothing to write), the collision is sampled masked
    for plan in plans:
        assert plan.is_empty and plan.source.collisions == 1 and plan.source.subscribers == 1
        problem = plan.source.samples[0]
        assert "collides" in problem.reason and problem.masked_email == "a***@e***.com"


def test_new_rows_that_share_a_key_pick_the_same_values_in_any_order() -> None:
    # Given two different rows of one address Ownpage does not know
    rows = [row("ann@example.com", "row 1", guid="u-2"), row("ANN@example.com", "row 2", guid="u-1")]

    # When planned in both orders
    plans = [plan_changes(order, []) for order in (rows, rows[::-1])]

    # Then the same row is kept (the smallest guid), one subscribe
    assert [op.guid for plan in plans for op in plan.to_subscribe] == ["u-1", "u-1"]


def test_identical_source_rows_are_counted_as_duplicates() -> None:
    # Given the same subscriber read twice
    rows = [row("ann@example.com", f"row {n}", data={"city": "Paris"}) for n in (1, 2)]

    # When planned
    plan = plan_changes(rows, [])

    # Then it is one subscriber and one duplicate, not a collision
    assert len(plan.to_subscribe) == 1
    assert (plan.source.duplicates, plan.source.collisions) == (1, 0)


def test_addresses_written_with_a_shared_guid_are_reported_and_still_planned() -> None:
    # Given two different new addresses with the same guid (Ownpage ignores the second of a payload)
    rows = [row("ann@example.org", guid="u1"), row("bob@example.org", guid="u1"), row("cat@example.org", guid="u2")]

    # When planned
    plan = plan_changes(rows, [])

    # Then the second owner of the guid is reported (masked), and nobody is dropped
    assert plan.source.shared_guid == 1
    assert [(p.reason, p.masked_email) for p in plan.source.samples] == [
        ("guid shared with another address", "b***@e***.org")
    ]
    assert len(plan.to_subscribe) == 3


# --- a read that could not be proven complete -------------------------------------------------------------


def test_an_unproven_read_holds_back_every_subscribe_and_nothing_else() -> None:
    # Given a read that could not be proven complete, and one of each situation
    ownpage = [
        unsubscribed("back@example.com", "PUBLISHER"),
        subscribed("gone@example.com"),
        subscribed("moved@example.com"),
    ]
    rows = [row("new@example.com"), row("back@example.com"), row("moved@example.com", data={"city": "Paris"})]

    # When planned
    plan = plan_changes(rows, ownpage, read_complete=False)

    # Then both subscribes are held: the address the read did not show, and the re-subscribe of the row
    # it did (on an Ownpage that matches spellings exactly, either might exist under another,
    # suppressed spelling the read missed), while unsubscribes and updates go ahead
    assert plan.to_subscribe == () and plan.to_resubscribe == () and plan.held == 2
    assert [op.email for op in plan.to_unsubscribe] == ["gone@example.com"]
    assert [op.email for op in plan.to_update] == ["moved@example.com"]


def test_a_live_twin_of_a_suppressed_key_is_unsubscribed() -> None:
    # Given an exact-matching Ownpage holding one reader twice: unsubscribed by the reader under one
    # spelling, subscribed under another (a write raced her unsubscription)
    ownpage = [unsubscribed("Ann@Example.com", "READER"), subscribed("ann@example.com")]

    # When the source still lists her
    plan = plan_changes([row("ann@example.com")], ownpage)

    # Then she is not mailed under either spelling: the live twin is unsubscribed, the READER row is
    # reported as suppressed and left alone
    assert [(op.email, op.action) for op in plan.to_unsubscribe] == [("ann@example.com", Action.UNSUBSCRIBE)]
    assert [s.email for s in plan.suppressed] == ["Ann@Example.com"]
    assert plan.to_subscribe == () and plan.to_resubscribe == () and plan.to_update == ()


@pytest.mark.parametrize(
    ("on_ownpage", "in_source"),
    [("straße@example.de", "strasse@example.de"), ("strasse@example.de", "straße@example.de")],
)
def test_two_keys_one_under_case_folding_are_neither_unsubscribed_nor_subscribed(
    on_ownpage: str, in_source: str
) -> None:
    # Given Ownpage holding a reader under one spelling, and the source listing her under another that
    # only full Unicode case folding (ß -> ss) makes the same; and an unrelated pair of addresses
    ownpage = [subscribed(on_ownpage), subscribed("gone@example.de")]
    rows = [row(in_source), row("new@example.de", "row 2")]

    # When planned
    plan = plan_changes(rows, ownpage)

    # Then neither write of the pair is planned (an Ownpage folding case takes both for one row: the
    # unsubscribe would leave her unsubscribed), both are counted as held, the rest is planned
    assert [op.email for op in plan.to_unsubscribe] == ["gone@example.de"]
    assert [op.email for op in plan.to_subscribe] == ["new@example.de"]
    assert plan.held == 2
    assert [p.reason for p in plan.source.samples] == ["one address to a case-folding Ownpage as another: held"]


@pytest.mark.parametrize(
    ("on_ownpage", "in_source"),
    [
        ("straße@example.de", "strasse@example.de"),
        ("strasse@example.de", "straße@example.de"),
        ("σοφίασ@example.gr", "σοφίας@example.gr"),  # lower() keeps the final sigma, folding does not
    ],
)
def test_a_new_address_folding_into_a_listed_row_is_not_subscribed_over_it(on_ownpage: str, in_source: str) -> None:
    # Given the source listing two readers that only full Unicode case folding makes one, Ownpage
    # holding the first; and a new address with no such twin, one in ASCII
    ownpage = [subscribed(on_ownpage)]
    rows = [row(on_ownpage, "row 1"), row(in_source, "row 2"), row("zoë@example.de", "row 3"), row("new@x.de", "row 4")]

    # When planned
    plan = plan_changes(rows, ownpage)

    # Then the second reader's subscribe is held (a folding Ownpage would write it over the first
    # reader's row: her guid and data), counted and noted; the others go
    assert [op.email for op in plan.to_subscribe] == ["new@x.de", "zoë@example.de"]
    assert plan.held == 1 and plan.to_unsubscribe == ()
    assert [p.reason for p in plan.source.samples] == ["one address to a case-folding Ownpage as another: held"]


def test_of_two_new_addresses_folding_together_only_the_first_is_subscribed() -> None:
    plan = plan_changes([row("straße@example.de", "row 1"), row("STRASSE@example.de", "row 2")], [])
    assert [op.email for op in plan.to_subscribe] == ["strasse@example.de"] and plan.held == 1


# --- the plan as a whole ------------------------------------------------------------------------------


def test_the_plan_counts_everything_and_writes_unsubscribes_first() -> None:
    # Given one of each situation
    rows = [
        row("new@example.com"),
        row("same@example.com"),
        row("moved@example.com", data={"city": "Paris"}),
        row("bounced@example.com"),
        row("back@example.com"),
    ]
    ownpage = [
        subscribed("same@example.com"),
        subscribed("moved@example.com", data={"city": "Lyon"}),
        unsubscribed("bounced@example.com", "HARD_BOUNCE"),
        unsubscribed("back@example.com", "PUBLISHER"),
        subscribed("left@example.com"),
        subscribed("left@example.com"),  # a row repeated by offset paging
    ]

    # When the plan is made
    plan = plan_changes(rows, ownpage)

    # Then every count is right and the repeated row is counted once
    assert plan.counts() == {
        "source": 5,
        "source_invalid": 0,
        "ownpage_subscribed": 3,
        "ownpage_total": 5,
        "to_subscribe": 2,
        "to_resubscribe": 1,
        "to_unsubscribe": 1,
        "to_update": 1,
        "suppressed": 1,
        "resubscribed_by_consent": 0,
        "unchanged": 1,
        "held": 0,
    }
    assert plan.ownpage.resubscribable == 1
    # And stopping mail to people who left comes first
    assert [op.action for op in plan.operations()] == [
        Action.UNSUBSCRIBE,
        Action.RESUBSCRIBE,
        Action.SUBSCRIBE,
        Action.UPDATE,
    ]
    assert plan.write_count == 4


def test_an_empty_plan_is_empty() -> None:
    # Given nothing on either side
    # When the plan is made
    plan = plan_changes([], [])

    # Then it is empty and writes nothing
    assert plan.counts() == Plan().counts()
    assert plan.is_empty and list(plan.operations()) == []


def test_the_index_finds_every_row_read_in_several_pages_some_twice_and_after_it_was_settled() -> None:
    # Given 20,000 rows read, counted (the read proof settles the index), then more rows: one read
    # again under Ownpage's own spelling, one read again as unsubscribed
    planner = Planner(PlanPolicy(), ("city",))
    planner.add_ownpage(subscribed(f"r{n}@example.org", data={"city": "Paris"}) for n in range(20_000))
    assert planner.ownpage_stats().rows == 20_000
    planner.add_ownpage(
        [subscribed("R7@Example.org", data={"city": "Paris"}), unsubscribed("r9@example.org", "READER")]
    )

    # When the source lists all of them but one, one with another city
    rows = [row(f"r{n}@example.org", data={"city": "Lyon" if n == 5 else "Paris"}) for n in range(1, 20_000)]
    planner.add_source(rows)
    plan = planner.finish()

    # Then every row was found again: one unsubscribe, one update, one suppression, the rest unchanged
    assert [op.email for op in plan.to_unsubscribe] == ["r0@example.org"]
    assert [op.to_payload() for op in plan.to_update] == [{"email": "r5@example.org", "data_city": "Lyon"}]
    assert [s.email for s in plan.suppressed] == ["r9@example.org"]
    # (the source lists 19,999 keys: one updated, one suppressed)
    assert plan.unchanged == 19_997 and plan.ownpage.rows == 20_001 and plan.ownpage.shared_keys == 1


def test_the_source_cannot_be_folded_before_ownpage_is_complete() -> None:
    # Given a planner that has started on the source
    planner = Planner(PlanPolicy())
    planner.add_source([row("ann@example.com")])

    # When more Ownpage rows arrive
    # Then it refuses: a decision already taken could depend on them
    with pytest.raises(RuntimeError, match="before the first source row"):
        planner.add_ownpage([subscribed("ann@example.com")])


def test_the_sync_has_no_way_to_delete() -> None:
    # Given the only operations a plan can hold
    # Then none of them deletes
    assert {action.value for action in Action} == {"subscribe", "resubscribe", "unsubscribe", "update"}
    # And no module of the shipped library names a delete endpoint or sends an HTTP DELETE
    delete = re.compile(r"subscribers/delete|subscribers/all|[\"']DELETE[\"']|\.delete\(")
    offenders = [str(path.relative_to(LIBRARY)) for path in LIBRARY.rglob("*.py") if delete.search(path.read_text())]
    assert offenders == []
    assert len(list(LIBRARY.rglob("*.py"))) > 10  # the scan did look at the library
