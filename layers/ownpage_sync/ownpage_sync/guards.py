"""Blast-radius guards, checked before the first write. A tripped guard means zero writes.

Unsubscribing and re-subscribing are guarded alike: a broken query that lists nobody must not
unsubscribe the audience, and a broken filter that lists everyone must not mail the people the
publisher removed.
"""

from __future__ import annotations

from dataclasses import dataclass

from ownpage_sync.planner import Plan

# Below this many re-subscriptions the share-of-removed guard stays quiet: on a young list, a handful
# of returning readers is "most of the removed" without being a broken filter.
MIN_GUARDED_RESUBSCRIBES = 10


@dataclass(frozen=True)
class GuardLimits:
    max_unsubscribe_ratio: float = 0.05  # share of Ownpage's subscribed count
    max_unsubscribe_count: int | None = None
    max_source_drop_ratio: float = 0.20  # against the last successful run's source count
    max_resubscribe_ratio: float = 0.05  # share of Ownpage's subscribed count
    max_resubscribe_count: int | None = None
    max_resubscribe_removed_ratio: float = 0.5  # share of the rows read as re-subscribable
    max_source_growth_ratio: float = 0.20  # against the last successful run's source count


@dataclass(frozen=True)
class GuardOverride:
    """An operator's explicit permission for one run."""

    force: bool = False  # passes every guard
    max_unsubscribe: int | None = None  # passes the unsubscribe guards up to this many
    max_resubscribe: int | None = None  # passes the re-subscribe guards up to this many

    @property
    def is_set(self) -> bool:
        return self.force or self.max_unsubscribe is not None or self.max_resubscribe is not None


@dataclass(frozen=True)
class GuardTrip:
    guard: str  # stable name, also the metric dimension: empty_source, unsubscribe_ratio, ...
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"guard": self.guard, "reason": self.reason}


def _share(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def check_guards(
    plan: Plan,
    limits: GuardLimits,
    previous_source_count: int | None = None,
) -> list[GuardTrip]:
    """Every guard the plan trips, before any override is considered."""
    trips: list[GuardTrip] = []
    resubscribable = plan.ownpage.resubscribable  # rows read unsubscribed for a cause the sync may lift
    subscribed = plan.ownpage_subscribed
    unsubscribing = len(plan.to_unsubscribe)
    resubscribing = len(plan.to_resubscribe)
    lifted = resubscribing - plan.resubscribed_by_consent  # removed by the publisher, listed again
    if plan.source_count == 0 and subscribed > 0:
        trips.append(
            GuardTrip("empty_source", f"the source returned no subscribers while Ownpage has {subscribed} subscribed")
        )
    if subscribed and unsubscribing / subscribed > limits.max_unsubscribe_ratio:
        trips.append(
            GuardTrip(
                "unsubscribe_ratio",
                f"the plan unsubscribes {unsubscribing} of {subscribed} subscribed "
                f"({unsubscribing / subscribed:.1%}), above MAX_UNSUBSCRIBE_RATIO {limits.max_unsubscribe_ratio:.1%}",
            )
        )
    if limits.max_unsubscribe_count is not None and unsubscribing > limits.max_unsubscribe_count:
        trips.append(
            GuardTrip(
                "unsubscribe_count",
                f"the plan unsubscribes {unsubscribing}, above MAX_UNSUBSCRIBE_COUNT {limits.max_unsubscribe_count}",
            )
        )
    # A first run onto an empty list re-subscribes nobody: these compare with what the read showed.
    if subscribed and resubscribing / subscribed > limits.max_resubscribe_ratio:
        trips.append(
            GuardTrip(
                "resubscribe_ratio",
                f"the plan re-subscribes {resubscribing} unsubscribed rows, {resubscribing / subscribed:.1%} of the "
                f"{subscribed} subscribed, above MAX_RESUBSCRIBE_RATIO {limits.max_resubscribe_ratio:.1%}",
            )
        )
    if limits.max_resubscribe_count is not None and resubscribing > limits.max_resubscribe_count:
        trips.append(
            GuardTrip(
                "resubscribe_count",
                f"the plan re-subscribes {resubscribing}, above MAX_RESUBSCRIBE_COUNT {limits.max_resubscribe_count}",
            )
        )
    if (
        resubscribable
        and lifted >= MIN_GUARDED_RESUBSCRIBES
        and lifted / resubscribable > limits.max_resubscribe_removed_ratio
    ):
        trips.append(
            GuardTrip(
                "resubscribe_removed",
                f"the plan re-subscribes {lifted} of the {resubscribable} rows the publisher removed "
                f"({_share(lifted, resubscribable):.1%}), above MAX_RESUBSCRIBE_REMOVED_RATIO "
                f"{limits.max_resubscribe_removed_ratio:.1%}",
            )
        )
    if previous_source_count and plan.source_count < previous_source_count:
        # One rounded division of whole numbers, not `1 - a / b` (which rounds twice): a drop of exactly
        # the configured share must pass, as the unsubscribe ratio does.
        drop = (previous_source_count - plan.source_count) / previous_source_count
        if drop > limits.max_source_drop_ratio:
            trips.append(
                GuardTrip(
                    "source_drop",
                    f"the source has {plan.source_count} subscribers, {drop:.1%} fewer than the "
                    f"{previous_source_count} of the last successful run (MAX_SOURCE_DROP_RATIO "
                    f"{limits.max_source_drop_ratio:.1%})",
                )
            )
    if previous_source_count and plan.source_count > previous_source_count:
        growth = (plan.source_count - previous_source_count) / previous_source_count
        if growth > limits.max_source_growth_ratio:
            trips.append(
                GuardTrip(
                    "source_growth",
                    f"the source has {plan.source_count} subscribers, {growth:.1%} more than the "
                    f"{previous_source_count} of the last successful run (MAX_SOURCE_GROWTH_RATIO "
                    f"{limits.max_source_growth_ratio:.1%})",
                )
            )
    return trips


UNSUBSCRIBE_GUARDS = frozenset({"unsubscribe_ratio", "unsubscribe_count"})
RESUBSCRIBE_GUARDS = frozenset({"resubscribe_ratio", "resubscribe_count", "resubscribe_removed"})


def unresolved(trips: list[GuardTrip], plan: Plan, override: GuardOverride) -> list[GuardTrip]:
    """The trips an override does not pass. `force` passes all; an allowance of N passes the
    unsubscribe (or re-subscribe) guards when the plan unsubscribes (re-subscribes) at most N; the
    empty-source, drop and growth guards only yield to `force`."""
    if override.force:
        return []

    def passed(trip: GuardTrip) -> bool:
        if trip.guard in UNSUBSCRIBE_GUARDS:
            return override.max_unsubscribe is not None and len(plan.to_unsubscribe) <= override.max_unsubscribe
        if trip.guard in RESUBSCRIBE_GUARDS:
            return override.max_resubscribe is not None and len(plan.to_resubscribe) <= override.max_resubscribe
        return False

    return [trip for trip in trips if not passed(trip)]
