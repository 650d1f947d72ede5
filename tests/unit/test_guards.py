"""Blast-radius guards: each guard, its boundary ("at the limit" passes), and the overrides."""

from __future__ import annotations

import pytest
from ownpage_sync.guards import GuardLimits, GuardOverride, GuardTrip, check_guards, unresolved
from ownpage_sync.models import Action, Operation
from ownpage_sync.planner import Plan

pytestmark = pytest.mark.unit


def plan_with(*, unsubscribing: int = 0, subscribed: int = 100, source: int = 100) -> Plan:
    return Plan(
        to_unsubscribe=tuple(
            Operation(Action.UNSUBSCRIBE, f"u{n}@example.com", unsubscribed_cause="PUBLISHER")
            for n in range(unsubscribing)
        ),
        source_count=source,
        ownpage_subscribed=subscribed,
        ownpage_total=subscribed,
    )


def guards(plan: Plan, limits: GuardLimits | None = None, previous: int | None = None) -> list[str]:
    return [trip.guard for trip in check_guards(plan, limits or GuardLimits(), previous)]


def test_the_default_limits_are_conservative() -> None:
    # Given no configuration
    limits = GuardLimits()

    # Then at most 5 % of the list may be unsubscribed, and the source may shrink by at most 20 %
    assert (limits.max_unsubscribe_ratio, limits.max_unsubscribe_count, limits.max_source_drop_ratio) == (
        0.05,
        None,
        0.20,
    )


# --- empty source -------------------------------------------------------------------------------------


def test_an_empty_source_trips_while_ownpage_has_subscribers() -> None:
    # Given a source that returned nothing (a broken query, an emptied table) and a list of 100
    plan = plan_with(unsubscribing=100, subscribed=100, source=0)

    # When the guards are checked, even with limits that would allow every unsubscribe
    trips = check_guards(plan, GuardLimits(max_unsubscribe_ratio=1.0))

    # Then the empty-source guard trips and says why
    assert [trip.guard for trip in trips] == ["empty_source"]
    assert trips[0].reason == "the source returned no subscribers while Ownpage has 100 subscribed"


def test_an_empty_source_for_an_empty_list_is_fine() -> None:
    # Given a new list: nothing on either side
    # When the guards are checked
    # Then nothing trips
    assert guards(plan_with(subscribed=0, source=0)) == []


# --- unsubscribe ratio --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unsubscribing", "subscribed", "ratio", "trips"),
    [
        (5, 100, 0.05, False),  # exactly at the ratio
        (6, 100, 0.05, True),
        (15, 300, 0.05, False),
        (16, 300, 0.05, True),
        (3, 10, 0.3, False),  # 0.3 has no exact binary form: still passes at the limit
        (4, 10, 0.3, True),
        (0, 100, 0.0, False),  # ratio 0: nothing may be unsubscribed, and nothing is
        (1, 100, 0.0, True),
        (100, 100, 1.0, False),  # ratio 1 disables the guard
    ],
)
def test_the_unsubscribe_ratio_guard_trips_only_above_the_ratio(
    unsubscribing: int, subscribed: int, ratio: float, trips: bool
) -> None:
    # Given a plan unsubscribing a share of the list
    plan = plan_with(unsubscribing=unsubscribing, subscribed=subscribed)

    # When the guards are checked against MAX_UNSUBSCRIBE_RATIO
    # Then it trips only above the ratio
    assert ("unsubscribe_ratio" in guards(plan, GuardLimits(max_unsubscribe_ratio=ratio))) is trips


def test_the_unsubscribe_ratio_reason_names_the_setting() -> None:
    # Given a plan unsubscribing 6 of 100
    trips = check_guards(plan_with(unsubscribing=6), GuardLimits())

    # Then the reason gives the numbers and the variable to change
    assert trips[0].to_dict() == {
        "guard": "unsubscribe_ratio",
        "reason": "the plan unsubscribes 6 of 100 subscribed (6.0%), above MAX_UNSUBSCRIBE_RATIO 5.0%",
    }


# --- unsubscribe count --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unsubscribing", "limit", "trips"), [(10, 10, False), (11, 10, True), (0, 0, False), (1, 0, True)]
)
def test_the_unsubscribe_count_guard_trips_only_above_the_count(unsubscribing: int, limit: int, trips: bool) -> None:
    # Given a plan unsubscribing some addresses from a large list (the ratio guard stays quiet)
    plan = plan_with(unsubscribing=unsubscribing, subscribed=10_000)

    # When the guards are checked against MAX_UNSUBSCRIBE_COUNT
    found = guards(plan, GuardLimits(max_unsubscribe_count=limit))

    # Then only the count guard can trip, and only above the count
    assert found == (["unsubscribe_count"] if trips else [])


def test_no_unsubscribe_count_means_no_count_guard() -> None:
    # Given MAX_UNSUBSCRIBE_COUNT unset and a plan within the ratio
    # Then nothing trips however many that is in absolute terms
    assert guards(plan_with(unsubscribing=500, subscribed=10_000)) == []


# --- source drop --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("previous", "source", "ratio", "trips"),
    [
        (100, 80, 0.20, False),  # exactly 20 %
        (100, 79, 0.20, True),
        (300, 285, 0.05, False),  # exactly 5 %: `1 - 285/300` used to round above 0.05
        (100, 70, 0.30, False),  # exactly 30 %
        (100, 69, 0.30, True),
        (100, 150, 0.20, False),  # growth is never a drop
    ],
)
def test_the_source_drop_guard_compares_with_the_last_successful_run(
    previous: int, source: int, ratio: float, trips: bool
) -> None:
    # Given a source count and the last successful run's count
    plan = plan_with(source=source, subscribed=source)

    # When the guards are checked against MAX_SOURCE_DROP_RATIO
    found = guards(plan, GuardLimits(max_source_drop_ratio=ratio), previous)

    # Then it trips only when the source shrank by more than the share
    assert found == (["source_drop"] if trips else [])


@pytest.mark.parametrize("previous", [None, 0])
def test_without_a_run_history_the_source_drop_guard_does_not_apply(previous: int | None) -> None:
    # Given no previous successful run (or one that read nothing)
    # When a much smaller source is checked
    # Then the drop guard cannot trip
    assert guards(plan_with(source=1, subscribed=1), GuardLimits(), previous) == []


def test_every_tripped_guard_is_reported_at_once() -> None:
    # Given an empty source, a list of 100 all to be unsubscribed, a count limit and a run history
    plan = plan_with(unsubscribing=100, subscribed=100, source=0)

    # When the guards are checked
    found = guards(plan, GuardLimits(max_unsubscribe_count=10), previous=100)

    # Then all four are named
    assert found == ["empty_source", "unsubscribe_ratio", "unsubscribe_count", "source_drop"]


# --- overrides ----------------------------------------------------------------------------------------


def everything_tripped() -> tuple[Plan, list[GuardTrip]]:
    plan = plan_with(unsubscribing=20, subscribed=100, source=0)
    return plan, check_guards(plan, GuardLimits(max_unsubscribe_count=10), previous_source_count=100)


def test_without_an_override_every_trip_blocks_the_run() -> None:
    # Given tripped guards and no override
    plan, trips = everything_tripped()

    # When the override is applied
    blocking = unresolved(trips, plan, GuardOverride())

    # Then all of them still block (the run must write nothing)
    assert blocking == trips and len(blocking) == 4
    assert not GuardOverride().is_set


def test_force_passes_every_guard() -> None:
    # Given tripped guards, the empty-source one included, and {"force": true} / --force
    plan, trips = everything_tripped()
    override = GuardOverride(force=True)

    # When the override is applied
    # Then nothing blocks
    assert override.is_set
    assert unresolved(trips, plan, override) == []


def test_an_allowance_passes_only_the_unsubscribe_guards() -> None:
    # Given tripped guards and {"max_unsubscribe": N} covering the plan's 20 unsubscribes
    plan, trips = everything_tripped()

    # When the allowance is applied
    left = unresolved(trips, plan, GuardOverride(max_unsubscribe=20))

    # Then the unsubscribe guards pass, the empty-source and source-drop guards still block
    assert [trip.guard for trip in left] == ["empty_source", "source_drop"]


@pytest.mark.parametrize(("allowance", "passes"), [(20, True), (21, True), (19, False), (0, False)])
def test_an_allowance_passes_only_up_to_its_count(allowance: int, passes: bool) -> None:
    # Given a plan that trips only the unsubscribe guards with 20 unsubscribes
    plan = plan_with(unsubscribing=20, subscribed=100)
    trips = check_guards(plan, GuardLimits(max_unsubscribe_count=10))
    assert [trip.guard for trip in trips] == ["unsubscribe_ratio", "unsubscribe_count"]

    # When {"max_unsubscribe": N} is applied
    left = unresolved(trips, plan, GuardOverride(max_unsubscribe=allowance))

    # Then the run may go ahead only if the plan unsubscribes at most N
    assert (left == []) is passes
    assert GuardOverride(max_unsubscribe=allowance).is_set
