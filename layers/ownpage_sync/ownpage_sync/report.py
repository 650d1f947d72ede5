"""The run report: what a run read, planned, wrote and left, JSON-ready and free of raw addresses."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ownpage_sync.applier import ApplyOutcome, rejected_by_reason
from ownpage_sync.emails import mask_email
from ownpage_sync.guards import GuardTrip
from ownpage_sync.planner import Plan
from ownpage_sync.read_proof import ReadProof
from ownpage_sync.sources.prefetch import PrefetchStats

MAX_SAMPLES = 10


class Outcome:
    """Stable outcome names: the run history, metrics and exit codes key on them."""

    CONVERGED = "converged"
    DRY_RUN = "dry_run"
    GUARD_TRIPPED = "guard_tripped"
    NOT_CONVERGED = "not_converged"  # queued for retry or left to the next run: nothing lost
    FAILED = "failed"  # the run could not read, or operations could be neither applied nor queued
    RUN_IN_PROGRESS = "run_in_progress"


@dataclass
class Drift:
    """Ownpage's subscribed count after the run against what the plan expected."""

    expected_subscribed: int
    actual_subscribed: int

    @property
    def difference(self) -> int:
        return self.actual_subscribed - self.expected_subscribed

    def to_dict(self) -> dict[str, int]:
        return {
            "expected_subscribed": self.expected_subscribed,
            "actual_subscribed": self.actual_subscribed,
            "difference": self.difference,
        }


@dataclass
class RunReport:
    run_id: str
    list_id: int
    dry_run: bool
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    ended_at: datetime | None = None
    outcome: str = Outcome.FAILED
    source_description: str = ""
    read: ReadProof | None = field(default=None, repr=False)
    read_ahead: PrefetchStats | None = field(default=None, repr=False)
    plan: Plan | None = field(default=None, repr=False)
    guard_trips: list[GuardTrip] = field(default_factory=list)
    guards_overridden: list[GuardTrip] = field(default_factory=list)
    applied: ApplyOutcome | None = field(default=None, repr=False)
    drift: Drift | None = None
    error: dict[str, Any] | None = None
    phases: dict[str, float] = field(default_factory=dict)  # seconds spent per phase, in order
    _lap: float = field(default_factory=time.monotonic, repr=False)

    def clock(self, phase: str) -> None:
        """Record the time since the previous phase ended (or the run began) under `phase`."""
        now = time.monotonic()
        self.phases[phase] = round(now - self._lap, 3)
        self._lap = now

    def finish(self, outcome: str) -> RunReport:
        self.outcome = outcome
        self.ended_at = datetime.now(UTC)
        return self

    @property
    def duration_seconds(self) -> float:
        end = self.ended_at or datetime.now(UTC)
        return round((end - self.started_at).total_seconds(), 3)

    @property
    def left_to_next_run(self) -> int:
        """Planned writes neither applied nor queued: the next run plans them again."""
        held = self.plan.held if self.plan is not None else 0
        return held + (self.applied.deferred if self.applied is not None else 0)

    def counts(self) -> dict[str, int]:
        """The flat numbers kept in the run history and emitted as metrics."""
        counts: dict[str, int] = {}
        if self.read is not None:
            counts["read_incomplete"] = int(not self.read.complete)
        if self.read_ahead is not None:
            counts["read_ahead_ended"] = int(self.read_ahead.ended_early)
        if self.plan is not None:
            counts.update(self.plan.counts())
        if self.applied is not None:
            counts.update(
                subscribed=self.applied.applied["subscribe"] + self.applied.applied["resubscribe"],
                unsubscribed=self.applied.applied["unsubscribe"],
                updated=self.applied.applied["update"],
                rejected=len(self.applied.rejected),
                unsubscribes_refused=self.applied.refused_unsubscribes,
                writes_off_target=self.applied.off_target,
                queued=self.applied.queued,
                deferred=self.applied.deferred,
                failed=len(self.applied.failed_operations),
            )
        return counts

    def to_dict(self) -> dict[str, Any]:
        report: dict[str, Any] = {
            "run_id": self.run_id,
            "list_id": self.list_id,
            "outcome": self.outcome,
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "duration_seconds": self.duration_seconds,
            "phases_seconds": dict(self.phases),
            "counts": self.counts(),
        }
        if self.read is not None:
            report["read"] = self.read.to_dict()
        if self.read_ahead is not None:
            report["read_ahead"] = self.read_ahead.to_dict()
        if self.plan is not None:
            source, ownpage = self.plan.source, self.plan.ownpage
            report["source"] = {
                "description": self.source_description,
                "rows_read": source.rows_read,
                "subscribers": source.subscribers,
                "invalid": source.invalid,
                "duplicates": source.duplicates,
                "collisions": source.collisions,
                "invalid_consent": source.invalid_consent,
                "shared_guid": source.shared_guid,
                "samples": [problem.to_dict() for problem in source.samples[:MAX_SAMPLES]],
            }
            report["ownpage"] = {
                "rows": ownpage.rows,
                "subscribed": ownpage.subscribed,
                "repeated_rows": ownpage.repeated_rows,
                "unreadable_rows": ownpage.unreadable_rows,
                "unreadable_status": ownpage.unreadable_status,
                "unreadable_times": ownpage.unreadable_times,
                "shared_keys": ownpage.shared_keys,
                "shared_key_samples": ownpage.samples[:MAX_SAMPLES],
            }
            report["suppressed_by_cause"] = self.plan.suppressed_by_cause()
            report["left_to_next_run"] = {"held_unread": self.plan.held}
        report["guards"] = {
            "tripped": [trip.to_dict() for trip in self.guard_trips],
            "overridden": [trip.to_dict() for trip in self.guards_overridden],
        }
        if self.applied is not None:
            applied = self.applied
            report["apply"] = {
                "applied": dict(applied.applied),
                "rejected": len(applied.rejected),
                "rejected_by_reason": rejected_by_reason(applied.rejected),
                "rejected_samples": [mask_email(r.email) for r in applied.rejected[:MAX_SAMPLES]],
                "queued": applied.queued,
                "queued_messages": applied.queued_messages,
                "deferred": applied.deferred,
                "failed": len(applied.failed_operations),
                "failed_samples": [
                    {"action": op.action.value, "email": mask_email(op.email)}
                    for op in applied.failed_operations[:MAX_SAMPLES]
                ],
                "ownpage_summary": dict(applied.ownpage_summary),
                "writes_off_target": applied.off_target,
                "batches": [batch.to_dict() for batch in applied.batches],
            }
            report["left_to_next_run"] = {
                "held_unread": self.plan.held if self.plan else 0,
                "deferred": applied.deferred,
            }
        if self.drift is not None:
            report["drift"] = self.drift.to_dict()
        if self.error is not None:
            report["error"] = self.error
        return report
