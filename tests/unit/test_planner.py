"""The planner's rules, one example each: read top to bottom, this is the policy of docs/safety.md."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ownpage_sync.models import Action, Operation, OwnpageSubscriber, SubscriberRecord
from ownpage_sync.planner import Plan, PlanPolicy, Suppression, plan_changes
from ownpage_sync.sources.base import RawSubscriber
from ownpage_sync.sources.snapshot import build_snapshot

pytestmark = pytest.mark.unit

UNSUBSCRIBED_AT = datetime(2024, 3, 1, 9, 30, tzinfo=UTC)
LIBRARY = Path(__file__).resolve().parents[2] / "layers" / "ownpage_sync" / "ownpage_sync"


def source(*records: SubscriberRecord) -> dict[str, SubscriberRecord]:
    return {record.email: record for record in records}


def unsubscribed(email: str, cause: str | None, at: datetime | None = UNSUBSCRIBED_AT) -> OwnpageSubscriber:
    return OwnpageSubscriber(email, subscribed=False, unsubscribed_at=at, unsubscribed_cause=cause)


# --- subscribing --------------------------------------------------------------------------------------


def test_a_source_subscriber_unknown_to_ownpage_is_subscribed_with_guid_and_data() -> None:
    # Given a source subscriber Ownpage has never seen
    record = SubscriberRecord("ann@example.com", guid="u-1", data={"firstname": "Ann"})

    # When the plan is made
    plan = plan_changes(source(record), [])

    # Then it is subscribed, carrying its guid and mapped data
    assert plan.to_subscribe == (Operation(Action.SUBSCRIBE, "ann@example.com", guid="u-1", data={"firstname": "Ann"}),)
    assert plan.to_subscribe[0].to_payload() == {
        "email": "ann@example.com",
        "subscribed": True,
        "guid": "u-1",
        "data_firstname": "Ann",
    }
    assert plan.to_unsubscribe == () and plan.to_update == ()


def test_an_address_the_publisher_unsubscribed_is_subscribed_again_when_the_source_lists_it() -> None:
    # Given an address Ownpage shows unsubscribed by the publisher (our own earlier unsubscribe)
    ownpage = [unsubscribed("ann@example.com", "PUBLISHER")]

    # When the source lists it again
    plan = plan_changes(source(SubscriberRecord("ann@example.com")), ownpage)

    # Then it is re-subscribed, and this is not counted as a consent renewal
    assert [op.email for op in plan.to_subscribe] == ["ann@example.com"]
    assert plan.to_subscribe[0].to_payload()["subscribed"] is True
    assert plan.suppressed == () and plan.resubscribed_by_consent == 0


def test_source_addresses_match_ownpage_after_normalisation() -> None:
    # Given a source row spelled in upper case, decomposed Unicode and padded with spaces
    rows = [RawSubscriber(email="  JOSE\u0301@EXA\u0308MPLE.ORG ", where="row 1")]
    # And Ownpage holding the same reader in its canonical spelling
    ownpage = [OwnpageSubscriber("josé@exämple.org", subscribed=True)]

    # When the source is snapshotted and planned
    plan = plan_changes(build_snapshot(rows).records, ownpage)

    # Then they are the same subscriber: nothing to subscribe or unsubscribe
    assert plan.is_empty
    assert plan.unchanged == 1


# --- unsubscribing ------------------------------------------------------------------------------------


def test_an_ownpage_subscriber_absent_from_the_source_is_unsubscribed_with_the_publisher_cause() -> None:
    # Given an address subscribed in Ownpage that the source no longer lists
    ownpage = [OwnpageSubscriber("gone@example.com", subscribed=True, guid="u-9", data={"city": "Lyon"})]

    # When the plan is made
    plan = plan_changes({}, ownpage)

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
    plan = plan_changes({}, [OwnpageSubscriber("gone@example.com", subscribed=True)], policy)

    # Then the payload carries that cause
    assert plan.to_unsubscribe[0].to_payload()["unsubscribed_cause"] == "READER"


def test_an_address_already_unsubscribed_and_absent_from_the_source_is_left_alone() -> None:
    # Given addresses Ownpage already holds unsubscribed, for every cause, that the source does not list
    ownpage = [
        unsubscribed(f"{cause or 'none'}@example.com", cause) for cause in ("READER", "PUBLISHER", "HARD_BOUNCE", None)
    ]

    # When the plan is made
    plan = plan_changes({}, ownpage)

    # Then nothing is written for them, and nothing is reported as suppressed (they are not wanted)
    assert plan.is_empty and plan.suppressed == ()
    assert plan.ownpage_total == 4 and plan.ownpage_subscribed == 0


def test_a_source_subscriber_is_never_unsubscribed() -> None:
    # Given a subscriber present in both, with different data
    record = SubscriberRecord("ann@example.com", data={"city": "Paris"})
    ownpage = [OwnpageSubscriber("ann@example.com", subscribed=True, data={"city": "Lyon"})]

    # When the plan is made
    plan = plan_changes(source(record), ownpage)

    # Then it is updated, not unsubscribed
    assert plan.to_unsubscribe == ()
    assert [op.action for op in plan.operations()] == [Action.UPDATE]


# --- suppression --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cause", ["READER", "HARD_BOUNCE", "MULTIPLE_BOUNCES"])
def test_an_address_the_reader_or_the_mail_system_unsubscribed_is_suppressed(cause: str) -> None:
    # Given a source subscriber Ownpage shows unsubscribed for a suppressing cause
    ownpage = [unsubscribed("ann@example.com", cause)]

    # When the plan is made
    plan = plan_changes(source(SubscriberRecord("ann@example.com")), ownpage)

    # Then it is not re-subscribed but reported, with its cause and time
    assert plan.is_empty
    assert plan.suppressed == (Suppression("ann@example.com", cause, UNSUBSCRIBED_AT),)
    assert plan.suppressed_by_cause() == {cause: 1}
    assert plan.suppressed[0].to_dict() == {
        "email": "ann@example.com",
        "cause": cause,
        "unsubscribed_at": "2024-03-01T09:30:00+00:00",
    }


@pytest.mark.parametrize(
    ("cause", "reported_as"), [("SPAM_COMPLAINT", "SPAM_COMPLAINT"), (None, "UNKNOWN"), ("", "UNKNOWN")]
)
def test_an_unknown_or_missing_cause_suppresses(cause: str | None, reported_as: str) -> None:
    # Given an unsubscription whose cause Ownpage does not document (or does not give)
    ownpage = [unsubscribed("ann@example.com", cause)]

    # When the plan is made, even with a policy that suppresses nothing but bounces
    policy = PlanPolicy(suppressing_causes=frozenset({"HARD_BOUNCE", "MULTIPLE_BOUNCES"}))
    plan = plan_changes(source(SubscriberRecord("ann@example.com")), ownpage, policy)

    # Then the safe reading wins: suppressed, reported under the cause seen
    assert plan.to_subscribe == ()
    assert plan.suppressed_by_cause() == {reported_as: 1}


def test_which_causes_suppress_is_configurable() -> None:
    # Given a policy where only bounces suppress
    policy = PlanPolicy(suppressing_causes=frozenset({"HARD_BOUNCE", "MULTIPLE_BOUNCES"}))
    ownpage = [unsubscribed("reader@example.com", "READER"), unsubscribed("bounce@example.com", "HARD_BOUNCE")]
    records = source(SubscriberRecord("reader@example.com"), SubscriberRecord("bounce@example.com"))

    # When the plan is made
    plan = plan_changes(records, ownpage, policy)

    # Then the reader's unsubscribe is overridden by the source, the bounce still is not
    assert [op.email for op in plan.to_subscribe] == ["reader@example.com"]
    assert [item.email for item in plan.suppressed] == ["bounce@example.com"]


# --- consent renewal ----------------------------------------------------------------------------------


def test_a_newer_opt_in_in_the_source_renews_consent() -> None:
    # Given a reader who unsubscribed on Ownpage's side, then opted in again on the publisher's site
    record = SubscriberRecord("ann@example.com", consented_at=UNSUBSCRIBED_AT + timedelta(seconds=1))

    # When the plan is made
    plan = plan_changes(source(record), [unsubscribed("ann@example.com", "READER")])

    # Then the address is subscribed again and counted as a renewal
    assert [op.email for op in plan.to_subscribe] == ["ann@example.com"]
    assert plan.resubscribed_by_consent == 1
    assert plan.suppressed == ()


@pytest.mark.parametrize(
    ("consented_at", "unsubscribed_at"),
    [
        (UNSUBSCRIBED_AT, UNSUBSCRIBED_AT),  # the same instant is not "later"
        (UNSUBSCRIBED_AT - timedelta(days=1), UNSUBSCRIBED_AT),  # an old consent
        (None, UNSUBSCRIBED_AT),  # no consent time in the source
        (UNSUBSCRIBED_AT, None),  # Ownpage does not say when: the opt-in cannot be shown newer
    ],
    ids=["equal", "older", "no-consent", "no-unsubscribed-at"],
)
def test_a_consent_that_is_not_strictly_newer_does_not_renew(
    consented_at: datetime | None, unsubscribed_at: datetime | None
) -> None:
    # Given a suppressed address and a consent time that is not strictly later
    record = SubscriberRecord("ann@example.com", consented_at=consented_at)

    # When the plan is made
    plan = plan_changes(source(record), [unsubscribed("ann@example.com", "HARD_BOUNCE", unsubscribed_at)])

    # Then it stays suppressed
    assert plan.to_subscribe == ()
    assert plan.resubscribed_by_consent == 0
    assert [item.email for item in plan.suppressed] == ["ann@example.com"]


def test_consent_times_compare_across_time_zones() -> None:
    # Given an opt-in written in Paris time, one hour after an unsubscription recorded in UTC
    paris = datetime(2024, 3, 1, 11, 30, tzinfo=datetime.fromisoformat("2024-03-01T00:00+01:00").tzinfo)
    rows = [RawSubscriber(email="ann@example.com", where="row 1", consented_at=paris.isoformat())]

    # When the raw row is snapshotted and planned
    plan = plan_changes(build_snapshot(rows).records, [unsubscribed("ann@example.com", "READER")])

    # Then 11:30+01:00 (10:30 UTC) is later than 09:30 UTC: consent renewed
    assert plan.resubscribed_by_consent == 1


# --- updates ------------------------------------------------------------------------------------------


def test_changed_data_is_updated_without_touching_the_status() -> None:
    # Given a subscribed address whose city changed in the source and whose first name did not
    record = SubscriberRecord("ann@example.com", guid="u-1", data={"firstname": "Ann", "city": "Paris"})
    ownpage = [
        OwnpageSubscriber(
            "ann@example.com", subscribed=True, guid="u-1", data={"firstname": "Ann", "city": "Lyon", "loyalty": "gold"}
        )
    ]

    # When the plan is made
    plan = plan_changes(source(record), ownpage)

    # Then only the changed attribute is sent, and the payload has no `subscribed` key (status kept)
    assert plan.to_update[0].to_payload() == {"email": "ann@example.com", "data_city": "Paris"}
    # And the attribute the mapping does not mention ("loyalty") is not in the payload at all
    assert "data_loyalty" not in plan.to_update[0].to_payload()


def test_a_changed_guid_is_updated_and_a_missing_one_is_left_to_ownpage() -> None:
    # Given one subscriber whose guid changed and one for which the source has no guid
    records = source(SubscriberRecord("ann@example.com", guid="u-2"), SubscriberRecord("bob@example.com"))
    ownpage = [
        OwnpageSubscriber("ann@example.com", subscribed=True, guid="u-1"),
        OwnpageSubscriber("bob@example.com", subscribed=True, guid="5f4dcc3b5aa765d61d8327deb882cf99"),
    ]

    # When the plan is made
    plan = plan_changes(records, ownpage)

    # Then the changed guid is sent; Ownpage's own guid (its md5 default) is not overwritten with nothing
    assert [op.to_payload() for op in plan.to_update] == [{"email": "ann@example.com", "guid": "u-2"}]
    assert plan.unchanged == 1


def test_a_subscriber_already_in_step_is_unchanged() -> None:
    # Given a subscriber equal on both sides
    record = SubscriberRecord("ann@example.com", guid="u-1", data={"city": "Paris"})
    ownpage = [OwnpageSubscriber("ann@example.com", subscribed=True, guid="u-1", data={"city": "Paris"})]

    # When the plan is made
    plan = plan_changes(source(record), ownpage)

    # Then there is nothing to write
    assert plan.is_empty and plan.write_count == 0
    assert plan.unchanged == 1


def test_a_suppressed_address_gets_no_data_update_either() -> None:
    # Given a suppressed address whose data differs
    record = SubscriberRecord("ann@example.com", data={"city": "Paris"})
    ownpage = [
        OwnpageSubscriber("ann@example.com", subscribed=False, unsubscribed_cause="READER", data={"city": "Lyon"})
    ]

    # When the plan is made
    plan = plan_changes(source(record), ownpage)

    # Then nothing is written for it: it is only reported
    assert plan.is_empty
    assert len(plan.suppressed) == 1


# --- the source: normalisation, duplicates, collisions, invalid addresses -----------------------------


def test_source_rows_that_collide_after_normalisation_are_reported_not_silently_merged() -> None:
    # Given two different source rows whose addresses differ only by case and spaces
    rows = [
        RawSubscriber(email="Ann@Example.com", where="item id=1", guid="u-1"),
        RawSubscriber(email=" ann@example.com", where="item id=2", guid="u-2"),
    ]

    # When the source is snapshotted
    snapshot = build_snapshot(rows)

    # Then they become one subscriber, and the collision is counted and sampled with a masked address
    assert list(snapshot.records) == ["ann@example.com"]
    assert snapshot.collision_count == 1 and snapshot.duplicate_count == 0
    problem = snapshot.samples[0]
    assert problem.where == "item id=2"
    assert "collides" in problem.reason
    assert problem.masked_email == "a***@e***.com"
    # And the row kept does not depend on the read order
    assert build_snapshot(list(reversed(rows))).records == snapshot.records
    assert snapshot.records["ann@example.com"].guid == "u-1"


def test_identical_source_rows_are_collapsed_and_counted_as_duplicates() -> None:
    # Given the same subscriber read twice (an offset page repeated, a join gone wrong)
    rows = [RawSubscriber(email="ann@example.com", where=f"row {n}", data={"city": "Paris"}) for n in (1, 2)]

    # When the source is snapshotted
    snapshot = build_snapshot(rows)

    # Then it is one subscriber and one duplicate, not a collision
    assert len(snapshot.records) == 1
    assert (snapshot.duplicate_count, snapshot.collision_count) == (1, 0)


def test_invalid_addresses_are_counted_and_never_planned() -> None:
    # Given source rows with empty, malformed and non-text addresses next to a valid one
    rows = [
        RawSubscriber(email="ann@example.com", where="row 1"),
        RawSubscriber(email="user1@", where="row 2"),
        RawSubscriber(email="   ", where="row 3"),
        RawSubscriber(email=None, where="row 4"),
        RawSubscriber(email="two@@example.com", where="row 5"),
    ]

    # When the source is snapshotted and planned
    snapshot = build_snapshot(rows)
    plan = plan_changes(snapshot.records, [])

    # Then only the valid address is planned; the others are counted and sampled masked
    assert [op.email for op in plan.to_subscribe] == ["ann@example.com"]
    assert snapshot.invalid_count == 4 and snapshot.rows_read == 5
    assert [(p.where, p.reason) for p in snapshot.samples] == [
        ("row 2", "not a valid email address"),
        ("row 3", "empty address"),
        ("row 4", "empty address"),
        ("row 5", "not a valid email address"),
    ]
    assert all(p.masked_email != "user1@" for p in snapshot.samples)


def test_an_unreadable_consent_time_is_ignored_and_reported() -> None:
    # Given a suppressed reader whose consent column holds an epoch in nanoseconds and another holds junk
    rows = [
        RawSubscriber(email="ann@example.com", where="row 1", consented_at=1_717_000_000_000_000_000),
        RawSubscriber(email="bob@example.com", where="row 2", consented_at="yesterday"),
    ]

    # When snapshotted (this must not stop the run) and planned against READER unsubscriptions
    snapshot = build_snapshot(rows)
    plan = plan_changes(
        snapshot.records, [unsubscribed("ann@example.com", "READER"), unsubscribed("bob@example.com", "READER")]
    )

    # Then both are kept without a consent time: the safe reading, still suppressed
    assert snapshot.invalid_consent_count == 2
    assert all(record.consented_at is None for record in snapshot.records.values())
    assert plan.to_subscribe == () and len(plan.suppressed) == 2


# --- the plan as a whole ------------------------------------------------------------------------------


def test_the_plan_counts_everything_and_writes_unsubscribes_first() -> None:
    # Given one of each situation
    records = source(
        SubscriberRecord("new@example.com"),
        SubscriberRecord("same@example.com"),
        SubscriberRecord("moved@example.com", data={"city": "Paris"}),
        SubscriberRecord("bounced@example.com"),
    )
    ownpage = [
        OwnpageSubscriber("same@example.com", subscribed=True),
        OwnpageSubscriber("moved@example.com", subscribed=True, data={"city": "Lyon"}),
        unsubscribed("bounced@example.com", "HARD_BOUNCE"),
        OwnpageSubscriber("left@example.com", subscribed=True),
        OwnpageSubscriber("left@example.com", subscribed=True),  # a row repeated by offset paging
    ]

    # When the plan is made
    plan = plan_changes(records, ownpage)

    # Then every count is right and the repeated row is counted once
    assert plan.counts() == {
        "source": 4,
        "ownpage_subscribed": 3,
        "ownpage_total": 4,
        "to_subscribe": 1,
        "to_unsubscribe": 1,
        "to_update": 1,
        "suppressed": 1,
        "resubscribed_by_consent": 0,
        "unchanged": 1,
    }
    # And stopping mail to people who left comes first
    assert [op.action for op in plan.operations()] == [Action.UNSUBSCRIBE, Action.SUBSCRIBE, Action.UPDATE]
    assert plan.write_count == 3


def test_an_empty_plan_is_empty() -> None:
    # Given nothing on either side
    # When the plan is made
    plan = plan_changes({}, [])

    # Then it is empty and writes nothing
    assert plan == Plan()
    assert plan.is_empty and list(plan.operations()) == []


def test_the_sync_has_no_way_to_delete() -> None:
    # Given the only operations a plan can hold
    # Then there are exactly three, and none of them deletes
    assert {action.value for action in Action} == {"subscribe", "unsubscribe", "update"}
    # And no module of the shipped library names a delete endpoint or sends an HTTP DELETE
    delete = re.compile(r"subscribers/delete|subscribers/all|[\"']DELETE[\"']|\.delete\(")
    offenders = [str(path.relative_to(LIBRARY)) for path in LIBRARY.rglob("*.py") if delete.search(path.read_text())]
    assert offenders == []
    assert len(list(LIBRARY.rglob("*.py"))) > 10  # the scan did look at the library


def test_addresses_sharing_a_guid_are_reported_and_still_planned() -> None:
    # Given two different addresses the source gives the same guid (Ownpage ignores such a row)
    from ownpage_sync.sources.base import RawSubscriber
    from ownpage_sync.sources.snapshot import build_snapshot

    rows = [
        RawSubscriber("ann@example.org", "row 1", guid="u1"),
        RawSubscriber("bob@example.org", "row 2", guid="u1"),
        RawSubscriber("cat@example.org", "row 3", guid="u2"),
    ]
    # When the snapshot is built
    snapshot = build_snapshot(rows)
    # Then the second owner of the guid is reported (masked), and nobody is dropped
    assert snapshot.shared_guid_count == 1
    assert [(p.reason, p.masked_email) for p in snapshot.samples] == [
        ("guid shared with another address", "b***@e***.org")
    ]
    assert set(snapshot.records) == {"ann@example.org", "bob@example.org", "cat@example.org"}
