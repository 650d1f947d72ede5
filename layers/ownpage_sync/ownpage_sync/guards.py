"""Blast-radius guards, checked before the first write. A tripped guard means zero writes."""

from __future__ import annotations

from dataclasses import dataclass

from ownpage_sync.planner import Plan


@dataclass(frozen=True)
class GuardLimits:
    max_unsubscribe_ratio: float = 0.05  # share of Ownpage's subscribed count
    max_unsubscribe_count: int | None = None
    max_source_drop_ratio: float = 0.20  # against the last successful run's source count


@dataclass(frozen=True)
class GuardOverride:
    """An operator's explicit permission for one run."""

    force: bool = False  # passes every guard
    max_unsubscribe: int | None = None  # passes the unsubscribe guards up to this many

    @property
    def is_set(self) -> bool:
        return self.force or self.max_unsubscribe is not None


@dataclass(frozen=True)
class GuardTrip:
    guard: str  # stable name, also the metric dimension: empty_source, unsubscribe_ratio, ...
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"guard": self.guard, "reason": self.reason}


def check_guards(
    plan: Plan,
    limits: GuardLimits,
    previous_source_count: int | None = None,
) -> list[GuardTrip]:
    """Every guard the plan trips, before any override is considered."""
    trips: list[GuardTrip] = []
    unsubscribing = len(plan.to_unsubscribe)
    if plan.source_count == 0 and plan.ownpage_subscribed > 0:
        trips.append(
            GuardTrip(
                "empty_source",
                f"the source returned no subscribers while Ownpage has {plan.ownpage_subscribed} subscribed",
            )
        )
    if plan.ownpage_subscribed and unsubscribing / plan.ownpage_subscribed > limits.max_unsubscribe_ratio:
        trips.append(
            GuardTrip(
                "unsubscribe_ratio",
                f"the plan unsubscribes {unsubscribing} of {plan.ownpage_subscribed} subscribed "
                f"({unsubscribing / plan.ownpage_subscribed:.1%}), above MAX_UNSUBSCRIBE_RATIO "
                f"{limits.max_unsubscribe_ratio:.1%}",
            )
        )
    if limits.max_unsubscribe_count is not None and unsubscribing > limits.max_unsubscribe_count:
        trips.append(
            GuardTrip(
                "unsubscribe_count",
                f"the plan unsubscribes {unsubscribing}, above MAX_UNSUBSCRIBE_COUNT {limits.max_unsubscribe_count}",
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
    return trips


UNSUBSCRIBE_GUARDS = frozenset({"unsubscribe_ratio", "unsubscribe_count"})


def unresolved(trips: list[GuardTrip], plan: Plan, override: GuardOverride) -> list[GuardTrip]:
    """The trips an override does not pass. `force` passes all; an allowance of N passes the
    unsubscribe guards when the plan unsubscribes at most N (never the empty-source or drop guards)."""
    if override.force:
        return []
    allowance = override.max_unsubscribe
    return [
        trip
        for trip in trips
        if not (trip.guard in UNSUBSCRIBE_GUARDS and allowance is not None and len(plan.to_unsubscribe) <= allowance)
    ]
