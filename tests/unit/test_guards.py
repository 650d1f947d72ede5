"""Blast-radius guards: each guard, its boundary ("at the limit" passes), and the overrides."""

from __future__ import annotations

import pytest
from ownpage_sync.guards import GuardLimits, GuardOverride, GuardTrip, check_guards, unresolved
from ownpage_sync.models import Action, Operation
from ownpage_sync.planner import OwnpageStats, Plan, SourceStats

pytestmark = pytest.mark.unit


def plan_with(
    *,
    unsubscribing: int = 0,
    subscribed: int = 100,
    source: int = 100,
    resubscribing: int = 0,
    by_consent: int = 0,
    removed: int = 0,
) -> Plan:
    return Plan(
        to_unsubscribe=tuple(
            Operation(Action.UNSUBSCRIBE, f"u{n}@example.com", unsubscribed_cause="PUBLISHER")
            for n in range(unsubscribing)
        ),
        to_resubscribe=tuple(Operation(Action.RESUBSCRIBE, f"r{n}@example.com") for n in range(resubscribing)),
        resubscribed_by_consent=by_consent,
        source=SourceStats(subscribers=source),
        ownpage=OwnpageStats(rows=subscribed + removed, subscribed=subscribed, resubscribable=removed),
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
    # And, the other way round, at most 5 % re-subscribed, half the removed rows, a source grown by 20 %
    assert (
        limits.max_resubscribe_ratio,
        limits.max_resubscribe_count,
        limits.max_resubscribe_removed_ratio,
        limits.max_source_growth_ratio,
    ) == (0.05, None, 0.5, 0.20)


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

    # Then it trips only when the source shrank by more than the share (growth is the growth guard's)
    assert [guard for guard in found if guard != "source_growth"] == (["source_drop"] if trips else [])


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


# --- re-subscription and growth ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resubscribing", "subscribed", "trips"), [(5, 100, False), (6, 100, True), (0, 0, False), (50, 0, False)]
)
def test_the_resubscribe_ratio_guard_trips_only_above_the_ratio(
    resubscribing: int, subscribed: int, trips: bool
) -> None:
    # Given a plan re-subscribing rows the read showed unsubscribed (a first run onto an empty list
    # re-subscribes nobody: subscribing new addresses is not re-subscribing)
    plan = plan_with(resubscribing=resubscribing, subscribed=subscribed, source=subscribed + resubscribing)

    # When the guards are checked
    # Then the share of the audience decides
    assert ("resubscribe_ratio" in guards(plan)) is trips


def test_re_listing_most_of_the_removed_addresses_trips_even_when_they_are_few() -> None:
    # Given a big list from which the publisher removed 40 readers, and a broken filter listing them again
    plan = plan_with(resubscribing=40, subscribed=10_000, source=10_040, removed=40)

    # When the guards are checked
    trips = check_guards(plan, GuardLimits())

    # Then the share-of-removed guard trips (1 % of the audience would pass the ratio guard)
    assert [trip.guard for trip in trips] == ["resubscribe_removed"]
    assert "40 of the 40 rows the publisher removed" in trips[0].reason
    assert "MAX_RESUBSCRIBE_REMOVED_RATIO" in trips[0].reason


@pytest.mark.parametrize(
    ("resubscribing", "by_consent", "removed", "trips"),
    [
        (9, 0, 9, False),  # below the floor: a young list with a few returning readers
        (10, 0, 10, True),
        (10, 0, 20, False),  # exactly half
        (11, 0, 20, True),
        (15, 5, 20, False),  # consent renewals are not removed rows coming back
    ],
)
def test_the_share_of_removed_guard(resubscribing: int, by_consent: int, removed: int, trips: bool) -> None:
    # Given re-subscribes of rows the publisher removed (and maybe renewals of readers' consent)
    plan = plan_with(resubscribing=resubscribing, by_consent=by_consent, subscribed=10_000, removed=removed)

    # When the guards are checked
    # Then only removed rows coming back count, above a floor
    assert ("resubscribe_removed" in guards(plan)) is trips


def test_the_resubscribe_count_guard() -> None:
    # Given an absolute limit on re-subscriptions
    limits = GuardLimits(max_resubscribe_count=3, max_resubscribe_ratio=1.0)

    # When the guards are checked at and above it
    # Then only above it trips
    assert "resubscribe_count" not in guards(plan_with(resubscribing=3), limits)
    assert "resubscribe_count" in guards(plan_with(resubscribing=4), limits)


@pytest.mark.parametrize(("source", "trips"), [(120, False), (121, True), (10_000, True)])
def test_the_source_growth_guard_compares_with_the_last_successful_run(source: int, trips: bool) -> None:
    # Given a source that grew since the last successful run of 100 (a filter broken the other way)
    plan = plan_with(source=source)

    # When the guards are checked
    # Then growth above 20 % trips
    assert ("source_growth" in guards(plan, previous=100)) is trips


def test_a_first_run_onto_an_empty_list_trips_nothing() -> None:
    # Given no run history and an empty list, and a source of 10,000
    plan = plan_with(subscribed=0, source=10_000)

    # When the guards are checked
    # Then nothing trips: subscribing everyone is exactly what a first run does
    assert guards(plan) == []


def test_a_resubscribe_allowance_passes_only_the_resubscribe_guards() -> None:
    # Given a plan tripping both a resubscribe guard and the growth guard
    plan = plan_with(resubscribing=30, subscribed=100, source=130)
    trips = check_guards(plan, GuardLimits(), previous_source_count=100)
    assert {trip.guard for trip in trips} == {"resubscribe_ratio", "source_growth"}

    # When the operator allows 30 re-subscribes, or only 29
    # Then only the resubscribe guard yields, and only within the allowance
    assert [t.guard for t in unresolved(trips, plan, GuardOverride(max_resubscribe=30))] == ["source_growth"]
    assert len(unresolved(trips, plan, GuardOverride(max_resubscribe=29))) == 2
    assert len(unresolved(trips, plan, GuardOverride(max_unsubscribe=1000))) == 2
