"""One sync run, the same for the Lambda and the CLI: check, read both sides, plan, guard, apply, check.

The order is chosen for the operator: Ownpage's credentials and list id, then the source's query or
table, are checked in seconds before anything long starts; Ownpage's list is read (and proven
complete against its count) before the source is compared with it. The source is streamed meanwhile,
into a spool (sources/prefetch.py): its query, transfer and parsing overlap the Ownpage read.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ownpage_sync.applier import apply_operations
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import (
    ConfigurationError,
    OwnpageError,
    OwnpageSyncError,
    ReadOutOfTime,
    RunInProgress,
    RunLedgerUnavailable,
    SourceError,
    SourceMisconfigured,
)
from ownpage_sync.guards import GuardOverride, check_guards, unresolved
from ownpage_sync.lease import LeaseKeeper
from ownpage_sync.planner import Planner
from ownpage_sync.ports import (
    FailedOperationsSink,
    OwnpageLists,
    ProgressReporter,
    RunLedger,
    SubscriberCounts,
    stage,
)
from ownpage_sync.read_proof import ReadProof, read_list
from ownpage_sync.report import Drift, Outcome, RunReport
from ownpage_sync.settings import Settings
from ownpage_sync.sources.base import SubscriberSource
from ownpage_sync.sources.prefetch import PrefetchStats, SourcePrefetch
from ownpage_sync.spellings import SpellingSnapshot, last_snapshot

log = logging.getLogger(__name__)

# The reads must end this long before the run's deadline (at most a tenth of the run's time), so that
# what is planned can still be written or queued: a read that would run later is abandoned, unplanned.
WRITE_RESERVE_SECONDS = 60.0


def new_run_id() -> str:
    """Sortable and unique: the UTC start time, then a random suffix."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _allowance(event: Mapping[str, Any], name: str, problems: list[str]) -> int | None:
    value = event.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        problems.append(f"event.{name}: expected a whole number ≥ 0")
        return None
    return value


@dataclass(frozen=True)
class RunRequest:
    """What the caller asks of this run: the scheduler's event, or the CLI's flags."""

    dry_run: bool = False
    override: GuardOverride = GuardOverride()
    run_id: str = field(default_factory=new_run_id)

    @classmethod
    def from_event(cls, event: Mapping[str, Any] | None) -> RunRequest:
        """`{"dry_run": true}`, `{"force": true}`, `{"max_unsubscribe": N}`, `{"max_resubscribe": N}`;
        other keys are ignored."""
        event = event or {}
        if not isinstance(event, Mapping):
            raise ConfigurationError("event: expected a JSON object")
        problems = [
            f"event.{key}: expected true or false"
            for key in ("dry_run", "force")
            if not isinstance(event.get(key, False), bool)
        ]
        unsubscribes = _allowance(event, "max_unsubscribe", problems)
        resubscribes = _allowance(event, "max_resubscribe", problems)
        if problems:
            raise ConfigurationError("invalid event: " + "; ".join(problems))
        return cls(
            dry_run=bool(event.get("dry_run", False)),
            override=GuardOverride(
                force=bool(event.get("force", False)), max_unsubscribe=unsubscribes, max_resubscribe=resubscribes
            ),
        )


@dataclass
class SyncServices:
    source: SubscriberSource
    ownpage: OwnpageLists
    sink: FailedOperationsSink | None = None
    ledger: RunLedger | None = None


@contextmanager
def _lease(ledger: RunLedger | None, report: RunReport, lease_seconds: int, deadline: Deadline) -> Iterator[None]:
    """Hold the run lease for a writing run (renewed while it lives; the run's deadline ends before
    it does) and record the run's end in the history, whatever happens."""
    if ledger is None or report.dry_run:
        yield
        return
    keeper = LeaseKeeper(ledger, report.run_id, lease_seconds).start()
    deadline.bound_by(keeper.remaining)
    try:
        yield
    finally:
        keeper.stop()
        try:
            ledger.release(report.run_id, report.outcome, report.counts())
        except OwnpageSyncError as exc:
            # The run's own outcome stands; the lease expires by itself after lease_seconds.
            log.error(
                "could not record the run's end in the run table", extra={"run_id": report.run_id, "error": str(exc)}
            )


def run_sync(
    settings: Settings,
    services: SyncServices,
    request: RunRequest,
    deadline: Deadline,
    progress: ProgressReporter | None = None,
) -> RunReport:
    """Plan, and unless it is a dry run or a guard trips, apply. Never raises for a failed run:
    the report's outcome and error say what happened (ConfigurationError aside)."""
    list_id = settings.ownpage.list_id
    report = RunReport(run_id=request.run_id, list_id=list_id, dry_run=request.dry_run)
    report.source_description = services.source.description
    log.info("sync run starting", extra={"run_id": report.run_id, "list_id": list_id, "dry_run": request.dry_run})
    try:
        with _lease(services.ledger, report, settings.lease_seconds, deadline):
            _run(settings, services, request, deadline, progress, report)
    except RunInProgress as exc:
        log.warning("another run holds the lease; nothing done", extra={"run_id": report.run_id, "reason": str(exc)})
        report.error = {"kind": "run_in_progress", "message": str(exc)}
        report.finish(Outcome.RUN_IN_PROGRESS)
    except (SourceError, OwnpageError, RunLedgerUnavailable, ReadOutOfTime) as exc:
        kind = _failure_kind(exc)
        log.error("sync run failed", extra={"run_id": report.run_id, "error_kind": kind, "error": str(exc)})
        report.error = {"kind": kind, "message": str(exc)}
        report.finish(Outcome.FAILED)
    return report


def _failure_kind(exc: OwnpageSyncError) -> str:
    """The report's error kind (docs/runbook.md, "Sync function errors")."""
    if isinstance(exc, OwnpageError):
        return f"ownpage_{exc.kind}"
    if isinstance(exc, ReadOutOfTime):
        return "read_deadline"
    if isinstance(exc, RunLedgerUnavailable):
        return "run_table"
    return "source_configuration" if isinstance(exc, SourceMisconfigured) else "source"


def _run(
    settings: Settings,
    services: SyncServices,
    request: RunRequest,
    deadline: Deadline,
    progress: ProgressReporter | None,
    report: RunReport,
) -> None:
    list_id = settings.ownpage.list_id
    # Fail fast: a wrong API key, list id or URL, then a wrong table, query or password, in seconds.
    clock = report.clock
    counts = services.ownpage.count(list_id)
    shape = services.source.shape()
    clock("checks")
    planner = Planner(settings.policy, shape.data, compare_guid=shape.guid, now=report.started_at)
    before = last_snapshot(services.ledger)
    reads_end = deadline.earlier(min(WRITE_RESERVE_SECONDS, deadline.remaining() / 10))
    report.read, read_ahead = _read_both(settings, services, planner, counts, progress, reads_end, clock)
    report.read_ahead = read_ahead
    plan = planner.finish(
        read_complete=report.read.complete, respelled_before=before.saw_respelled if before is not None else None
    )
    report.plan = plan
    clock("plan")
    if report.read.complete and not request.dry_run and services.ledger is not None:
        _keep_spellings(services.ledger, report.run_id, report.started_at, planner)
    source = plan.source
    log.info(
        "source read",
        extra={
            "subscribers": source.subscribers,
            "rows": source.rows_read,
            "invalid": source.invalid,
            "collisions": source.collisions,
            "samples": [problem.to_dict() for problem in source.samples[:5]],
            **read_ahead.to_dict(),
        },
    )
    log.info("planned changes", extra={**plan.counts(), "suppressed_by_cause": plan.suppressed_by_cause()})

    previous = services.ledger.last_successful_source_count() if services.ledger is not None else None
    trips = check_guards(plan, settings.limits, previous)
    blocking = unresolved(trips, plan, request.override)
    report.guard_trips = blocking
    report.guards_overridden = [trip for trip in trips if trip not in blocking]
    if report.guards_overridden:
        log.warning(
            "guard overridden by the operator for this run",
            extra={"guards": [trip.guard for trip in report.guards_overridden], "force": request.override.force},
        )
    if request.dry_run:
        report.finish(Outcome.DRY_RUN)
        return
    if blocking:
        log.error("guard tripped: nothing written", extra={"guards": [trip.to_dict() for trip in blocking]})
        report.finish(Outcome.GUARD_TRIPPED)
        return

    with stage(progress, "writing to Ownpage", plan.write_count) as advance:
        report.applied = apply_operations(
            list(plan.operations()),
            services.ownpage,
            list_id,
            batch_size=settings.ownpage.batch_size,
            deadline=deadline,
            sink=services.sink,
            run_id=report.run_id,
            run_started_at=report.started_at,
            progress=advance,
        )
    clock("apply")
    report.drift = _drift(services.ownpage, list_id, report)
    applied = report.applied
    if applied.failed_operations:
        report.finish(Outcome.FAILED)
        report.error = {
            "kind": "not_applied",
            "message": f"{len(applied.failed_operations)} operations could be neither applied nor queued",
        }
    else:
        if applied.refused_unsubscribes:
            # Loud (an error line, UnsubscribesRefused, the rejected-addresses alarm) but permanent like
            # every refusal: holding the run back would freeze the guards' baseline and the retry
            # path's superseding on one address nothing in the source can fix (docs/safety.md §8).
            log.error(
                "Ownpage refused to unsubscribe readers the source no longer lists: they are still subscribed",
                extra={"refused_unsubscribes": applied.refused_unsubscribes},
            )
        # Converged means Ownpage is proven in step: nothing failed or held, and the read was complete
        # (a read short of the count may have missed a row that needs a write).
        proven = applied.converged and not plan.held and report.read.complete
        report.finish(Outcome.CONVERGED if proven else Outcome.NOT_CONVERGED)
    log.info("sync run finished", extra={"outcome": report.outcome, **report.counts()})


def _read_both(
    settings: Settings,
    services: SyncServices,
    planner: Planner,
    counts: SubscriberCounts,
    progress: ProgressReporter | None,
    reads_end: Deadline,
    clock: Callable[[str], None],
) -> tuple[ReadProof, PrefetchStats]:
    """Ownpage's list into the planner, proven against its count, then the source compared with it;
    the source is read ahead meanwhile. Either read past `reads_end` fails the run, nothing written."""
    ahead = SourcePrefetch.start(services.source.scan_rows(), settings.source_spool_mb << 20)
    try:
        proof = read_list(
            services.ownpage,
            planner,
            settings.ownpage.list_id,
            counts,
            settings.ownpage.read_passes,
            progress,
            reads_end,
        )
        clock("ownpage_read")
        with stage(progress, "reading source", None) as advance:
            folded = [0]

            def read_on(rows: int) -> None:
                folded[0] += rows
                if reads_end.expired():
                    raise ReadOutOfTime(
                        f"the source was not read in the time the run has ({folded[0]} rows so far): nothing was written"
                    )
                if advance is not None:
                    advance(rows)

            planner.add_source_rows(ahead.rows(), read_on)
        clock("source_read")
    finally:
        ahead.close()  # a read that failed: the source's connection is closed; in any case, the spool
    return proof, ahead.stats


def _keep_spellings(ledger: RunLedger, run_id: str, read_at: datetime, planner: Planner) -> None:
    """What this complete read saw of other spellings, for the fast lane (spellings.py), with the keys
    the read before saw so and this one missed. Not keeping it costs only speed: the fast lane then
    holds new addresses for the scheduled run."""
    snapshot = SpellingSnapshot.of_keys(
        run_id, read_at, planner.index.respelled_keys(), carried=planner.unseen_respelled
    )
    try:
        ledger.put_spellings(snapshot)
    except OwnpageSyncError as exc:
        log.warning("could not keep the read's other spellings for the fast lane", extra={"error": str(exc)})


def _drift(ownpage: OwnpageLists, list_id: int, report: RunReport) -> Drift | None:
    """Re-read Ownpage's counts and compare with what the applied plan should have produced."""
    assert report.plan is not None and report.applied is not None
    applied = report.applied.applied
    expected = report.plan.ownpage_subscribed + applied["resubscribe"] + applied["subscribe"] - applied["unsubscribe"]
    try:
        counts = ownpage.count(list_id)
    except OwnpageError as exc:
        log.warning("could not re-read Ownpage's counts after applying", extra={"error": str(exc)})
        return None
    drift = Drift(expected_subscribed=expected, actual_subscribed=counts.subscribed)
    if drift.difference:
        log.warning("Ownpage's subscribed count differs from the plan's expectation", extra=drift.to_dict())
    return drift
