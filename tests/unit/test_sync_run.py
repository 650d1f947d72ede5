"""run_sync's order of work and its failure paths, over in-memory ports (tests/fakes.py; the real
adapters are covered by integration tests)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import (
    ConfigurationError,
    OwnpageAuthError,
    RunInProgress,
    RunLedgerUnavailable,
    SourceError,
    SourceMisconfigured,
)
from ownpage_sync.lease import LEASE_MARGIN, LeaseKeeper
from ownpage_sync.models import Operation, OwnpageSubscriber
from ownpage_sync.ports import SubscriberCounts, UpsertResult
from ownpage_sync.report import Outcome, RunReport
from ownpage_sync.settings import OwnpageSettings, Settings, SourceSettings
from ownpage_sync.sources.base import RawSubscriber, SourceShape
from ownpage_sync.sync import RunRequest, SyncServices, run_sync

from tests.fakes import FakeOwnpage, InMemoryLedger, InMemorySource, Row

pytestmark = pytest.mark.unit

SETTINGS = Settings(
    ownpage=OwnpageSettings(api_url="http://127.0.0.1:9", list_id=1, secret_id="unused"),
    source=SourceSettings(kind="dynamodb", table="unused"),
)
ROWS = [RawSubscriber("ann@example.org", "row 1")]
UNLIMITED = Deadline.unlimited()


class UnreachableLedger(InMemoryLedger):
    def acquire(self, run_id: str, lease_seconds: int) -> datetime:
        raise RunLedgerUnavailable("run table 'runs' unreachable (ThrottlingException)")


class HistoryFailsLedger(InMemoryLedger):
    def release(self, run_id: str, outcome: str, counts: Mapping[str, int]) -> None:
        raise RunLedgerUnavailable("run table 'runs' unreachable (ThrottlingException)")


class BrokenSource(InMemorySource):
    def scan(self) -> Iterator[RawSubscriber]:
        raise SourceError('query failed: relation "subscribers" does not exist')


class Journal:
    """Records the order in which the run touches its ports."""

    def __init__(self) -> None:
        self.calls: list[str] = []


class WatchedSource(InMemorySource):
    def __init__(self, rows: Sequence[RawSubscriber], journal: Journal, shape_error: Exception | None = None):
        super().__init__(rows)
        self.journal, self.shape_error = journal, shape_error

    def shape(self) -> SourceShape:
        self.journal.calls.append("source.shape")
        if self.shape_error is not None:
            raise self.shape_error
        return super().shape()

    def scan(self) -> Iterator[RawSubscriber]:
        self.journal.calls.append("source.scan")
        return super().scan()


class WatchedOwnpage(FakeOwnpage):
    def __init__(self, rows: Sequence[Row], journal: Journal, count_error: Exception | None = None, **kw: Any):
        super().__init__(rows, **kw)
        self.journal, self.count_error = journal, count_error

    def count(self, list_id: int) -> SubscriberCounts:
        self.journal.calls.append("ownpage.count")
        if self.count_error is not None:
            raise self.count_error
        return super().count(list_id)

    def read_pages(self, list_id: int, **kwargs: Any) -> Iterator[list[OwnpageSubscriber]]:
        self.journal.calls.append(f"ownpage.read:{kwargs.get('status', 'all')}")
        return super().read_pages(list_id, **kwargs)


def test_credentials_list_and_source_are_checked_before_the_long_reads() -> None:
    # Given working ports that record the order of calls
    journal = Journal()
    ownpage = WatchedOwnpage([Row("ann@example.org", True)], journal)

    # When a run goes through
    report = run_sync(SETTINGS, SyncServices(WatchedSource(ROWS, journal), ownpage), RunRequest(), Deadline.unlimited())

    # Then Ownpage's count (token, list id) and the source's shape (table, query) come first, then
    # the list is read and counted again for the proof while the source is streamed ahead
    assert report.outcome == Outcome.CONVERGED
    calls = journal.calls
    assert calls[:2] == ["ownpage.count", "source.shape"]
    assert calls.count("source.scan") == 1 and calls.index("ownpage.read:all") < calls.index("ownpage.count", 2)


def test_a_failed_ownpage_read_ends_the_source_read_ahead_and_writes_nothing() -> None:
    # Given a source of many rows, read ahead, and an Ownpage whose list read fails midway
    cleaned = threading.Event()
    sent = [0]

    class LongSource(InMemorySource):
        def scan(self) -> Iterator[RawSubscriber]:
            try:
                for number in range(1_000_000):
                    sent[0] += 1
                    yield RawSubscriber(f"reader{number}@example.org", f"row {number}")
            finally:
                cleaned.set()

    class FailingOwnpage(FakeOwnpage):
        def read_pages(self, list_id: int, **kwargs: Any) -> Iterator[list[OwnpageSubscriber]]:
            raise OwnpageAuthError("Ownpage refused the client id or API key", status=401)

    ownpage = FailingOwnpage([Row("ann@example.org", True)])
    # When a run goes through
    report = run_sync(SETTINGS, SyncServices(LongSource([]), ownpage), RunRequest(), Deadline.unlimited())
    # Then it failed as an Ownpage error, wrote nothing, and the source's read ahead was ended (its
    # cleanup ran: a database connection would be closed) rather than left reading to the end
    assert report.outcome == Outcome.FAILED and report.error["kind"].startswith("ownpage_")
    assert not ownpage.posts
    assert cleaned.wait(10) and sent[0] < 1_000_000


@pytest.mark.parametrize(
    "error",
    [
        OwnpageAuthError("Ownpage refused the client id or API key", status=401),
        ConfigurationError("OWNPAGE_LIST_ID: Ownpage has no list 1 for these credentials (HTTP 404)"),
    ],
)
def test_a_wrong_key_or_list_id_fails_before_the_source_is_touched(error: Exception) -> None:
    # Given an Ownpage that refuses the credentials, or does not know the list
    journal = Journal()
    ownpage = WatchedOwnpage([], journal, count_error=error)
    services = SyncServices(WatchedSource(ROWS, journal), ownpage)

    # When a run starts
    if isinstance(error, ConfigurationError):
        with pytest.raises(ConfigurationError, match="OWNPAGE_LIST_ID"):
            run_sync(SETTINGS, services, RunRequest(), Deadline.unlimited())
        report = None
    else:
        report = run_sync(SETTINGS, services, RunRequest(), Deadline.unlimited())

    # Then nothing but the count was called: the source (maybe a long scan) was never reached
    assert journal.calls == ["ownpage.count"]
    if report is not None:
        assert report.outcome == Outcome.FAILED and report.error == {
            "kind": "ownpage_auth",
            "message": "HTTP 401: Ownpage refused the client id or API key",
        }


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (SourceMisconfigured("SOURCE_QUERY returned no `email` column"), "source_configuration"),
        (SourceError("postgresql at db:5432/app: could not connect"), "source"),
    ],
)
def test_a_broken_query_fails_before_the_list_is_read(error: SourceError, kind: str) -> None:
    # Given a source whose query is refused by the database, or that cannot be reached
    journal = Journal()
    source = WatchedSource(ROWS, journal, shape_error=error)

    # When a run starts
    report = run_sync(SETTINGS, SyncServices(source, WatchedOwnpage([], journal)), RunRequest(), Deadline.unlimited())

    # Then it fails on the source before the (long) read of Ownpage's list, a setting told from a service
    assert report.outcome == Outcome.FAILED and report.error is not None and report.error["kind"] == kind
    assert journal.calls == ["ownpage.count", "source.shape"]


def test_a_read_short_of_the_count_is_read_again_and_folded_together() -> None:
    # Given an Ownpage whose first read skips a suppressed row (rows moving while it is paged)
    journal = Journal()
    truth = [
        Row("ann@example.org", False, unsubscribed_cause="READER"),
        Row("bob@example.org", True),
        Row("cat@example.org", False, unsubscribed_cause="HARD_BOUNCE"),
    ]
    reads = iter([lambda rows: [[rows[1].read(), rows[2].read()]], lambda rows: [[row.read() for row in rows]]])
    ownpage = WatchedOwnpage(truth, journal, read=lambda rows: next(reads)(rows))

    # When a run reads it, the source listing all three
    rows = [RawSubscriber(f"{name}@example.org", "row 1") for name in ("ann", "bob", "cat")]
    report = run_sync(SETTINGS, SyncServices(InMemorySource(rows), ownpage), RunRequest(), Deadline.unlimited())

    # Then the second pass completes the read, the reader's suppression is seen, nothing is written
    assert report.read is not None and report.read.complete and report.read.passes == ["all", "all"]
    assert report.plan is not None and [s.cause for s in report.plan.suppressed] == ["READER", "HARD_BOUNCE"]
    assert ownpage.posts == [] and report.outcome == Outcome.CONVERGED


def test_a_server_ignoring_status_all_is_asked_for_the_unsubscribed_rows() -> None:
    # Given an Ownpage that answers status=all with its subscribed rows only
    journal = Journal()
    truth = [Row("ann@example.org", False, unsubscribed_cause="READER"), Row("bob@example.org", True)]

    def subscribed_only(rows: list[Row]) -> list[list[OwnpageSubscriber]]:
        return [[row.read() for row in rows]]

    class IgnoresAll(WatchedOwnpage):
        def read_pages(self, list_id: int, **kwargs: Any) -> Iterator[list[OwnpageSubscriber]]:
            if kwargs.get("status") == "all":
                kwargs["status"] = "subscribed"
            return super().read_pages(list_id, **kwargs)

    ownpage = IgnoresAll(truth, journal, read=subscribed_only)
    rows = [RawSubscriber("ann@example.org", "row 1"), RawSubscriber("bob@example.org", "row 2")]

    # When a run reads it
    report = run_sync(SETTINGS, SyncServices(InMemorySource(rows), ownpage), RunRequest(), Deadline.unlimited())

    # Then a pass of status=unsubscribed completes the read: the READER row is seen and not re-subscribed
    assert report.read is not None and report.read.passes == ["all", "unsubscribed"] and report.read.complete
    assert ownpage.posts == [] and report.outcome == Outcome.CONVERGED


def test_a_read_that_stays_short_holds_every_subscribe_and_does_not_converge() -> None:
    # Given an Ownpage that never shows one of its rows, whatever the number of passes
    truth = [Row("Ann@Example.org", False, unsubscribed_cause="READER"), Row("bob@example.org", True)]
    ownpage = FakeOwnpage(truth, matching="exact", read=lambda rows: [[r.read() for r in rows if r.subscribed]])
    rows = [RawSubscriber("ann@example.org", "row 1"), RawSubscriber("bob@example.org", "row 2")]

    # When a run reads it
    report = run_sync(SETTINGS, SyncServices(InMemorySource(rows), ownpage), RunRequest(), Deadline.unlimited())

    # Then the read is reported unproven after the configured passes, the unseen address is held (on
    # an exact-matching Ownpage a subscribe would create a second, subscribed row beside the reader's),
    # and the run does not claim convergence
    assert report.read is not None and not report.read.complete and len(report.read.passes) == 3
    assert report.plan is not None and report.plan.held == 1 and ownpage.twins == []
    assert report.outcome == Outcome.NOT_CONVERGED
    assert report.counts()["read_incomplete"] == 1 and report.to_dict()["left_to_next_run"]["held_unread"] == 1


class UndercountingOwnpage(FakeOwnpage):
    """An Ownpage whose /count says one subscribed row fewer than it holds."""

    def count(self, list_id: int) -> SubscriberCounts:
        counts = super().count(list_id)
        return SubscriberCounts(subscribed=counts.subscribed - 1, unsubscribed=counts.unsubscribed)


def test_a_read_missing_an_unsubscribed_row_is_unproven_even_when_the_total_matches() -> None:
    # Given an exact-matching Ownpage that never shows its READER row, and counts one subscribed row
    # short: the rows read reach the total it gives
    truth = [
        Row("Ann@Example.org", False, unsubscribed_cause="READER"),
        Row("bob@example.org", True),
        Row("carol@example.org", True),
    ]
    ownpage = UndercountingOwnpage(
        truth, matching="exact", read=lambda rows: [[r.read() for r in rows if r.subscribed]]
    )
    rows = [
        RawSubscriber(email, f"row {n}")
        for n, email in enumerate(["ann@example.org", "bob@example.org", "carol@example.org"])
    ]

    # When a run reads it
    report = run_sync(SETTINGS, SyncServices(InMemorySource(rows), ownpage), RunRequest(), Deadline.unlimited())

    # Then the read is unproven (no unsubscribed row seen, one counted) and the reader is not subscribed
    # under a second spelling
    assert report.read is not None and not report.read.complete
    assert report.read.to_dict()["unsubscribed_seen"] == 0 and report.read.to_dict()["unsubscribed_expected"] == 1
    assert ownpage.twins == [] and ownpage.posts == []
    assert report.outcome == Outcome.NOT_CONVERGED


def test_an_unreachable_run_table_fails_the_run_before_any_call() -> None:
    # Given a run table that cannot be reached
    ownpage = FakeOwnpage()
    services = SyncServices(source=InMemorySource(ROWS), ownpage=ownpage, ledger=UnreachableLedger(None))
    # When a run starts
    report = run_sync(SETTINGS, services, RunRequest(), Deadline.unlimited())
    # Then it fails with a kind on-call can look up, and nothing was written
    assert report.outcome == Outcome.FAILED
    assert report.error is not None and report.error["kind"] == "run_table"
    assert ownpage.posts == []


def test_a_failure_to_record_history_does_not_mask_the_runs_outcome() -> None:
    # Given a run table that takes the lease but fails when the run ends
    ownpage = FakeOwnpage()
    services = SyncServices(source=InMemorySource(ROWS), ownpage=ownpage, ledger=HistoryFailsLedger(None))
    # When the run applies its plan
    report = run_sync(SETTINGS, services, RunRequest(), Deadline.unlimited())
    # Then its own outcome stands
    assert report.outcome == Outcome.CONVERGED
    assert len(ownpage.posts) == 1


def test_a_broken_source_fails_the_run_with_its_reason_and_writes_nothing() -> None:
    # Given a source whose query fails
    ownpage = FakeOwnpage()
    services = SyncServices(source=BrokenSource(ROWS), ownpage=ownpage, ledger=InMemoryLedger(None))
    # When a run starts
    report = run_sync(SETTINGS, services, RunRequest(), Deadline.unlimited())
    # Then it fails with the database's reason, before any write
    assert report.outcome == Outcome.FAILED
    assert report.error == {"kind": "source", "message": 'query failed: relation "subscribers" does not exist'}
    assert ownpage.posts == []


def test_event_flags_are_validated() -> None:
    # Given the scheduler's own keys, the documented flags, and malformed flags
    # Then known flags are read, unknown keys ignored, and every malformed flag is named
    assert RunRequest.from_event({"dry_run": True, "execution_id": "x"}).dry_run is True
    assert RunRequest.from_event({"max_unsubscribe": 3}).override.max_unsubscribe == 3
    assert RunRequest.from_event({"max_resubscribe": 4}).override.max_resubscribe == 4
    with pytest.raises(ConfigurationError, match=r"event\.force.*event\.max_unsubscribe.*event\.max_resubscribe"):
        RunRequest.from_event({"force": "yes", "max_unsubscribe": -1, "max_resubscribe": "all"})


# --- one writer at a time ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class StolenLedger(InMemoryLedger):
    """Grants the lease once; every renewal finds another run holding it."""

    def __init__(self, clock: Clock, lease_seconds: int):
        super().__init__()
        self.clock, self.lease_seconds, self.granted = clock, lease_seconds, 0

    def acquire(self, run_id: str, lease_seconds: int) -> datetime:
        self.granted += 1
        if self.granted > 1:
            raise RunInProgress("run 20260101T000500Z-other holds the lease")
        return self.clock() + timedelta(seconds=lease_seconds)


def test_a_lease_lost_to_another_run_stops_every_later_call() -> None:
    # Given a run holding a lease that another run then takes
    clock = Clock()
    keeper = LeaseKeeper(StolenLedger(clock, 120), "me", 120, clock=clock)
    deadline = Deadline.unlimited()
    deadline.bound_by(keeper.remaining)
    assert deadline.remaining() == pytest.approx(120 - LEASE_MARGIN)

    # When its heartbeat tries to renew it
    keeper.renew()

    # Then the lease is lost and the run's deadline is over at once: no write can go out any more
    assert keeper.lost and deadline.expired()


def test_a_lease_that_cannot_be_renewed_still_ends_the_run_before_it_ends() -> None:
    # Given a lease of 120 s whose renewals cannot reach the run table
    clock = Clock()

    class Unreachable(StolenLedger):
        def acquire(self, run_id: str, lease_seconds: int) -> datetime:
            self.granted += 1
            if self.granted > 1:
                raise RunLedgerUnavailable("run table unreachable")
            return self.clock() + timedelta(seconds=lease_seconds)

    keeper = LeaseKeeper(Unreachable(clock, 120), "me", 120, clock=clock)
    keeper.renew()
    assert not keeper.lost

    # When time passes to within the margin of the lease's end
    clock.now += timedelta(seconds=120 - LEASE_MARGIN)

    # Then the run has no time left: it stops writing before another run may take the lease
    assert keeper.remaining() == 0


def test_the_heartbeat_renews_the_lease_while_the_run_lives() -> None:
    # Given a ledger that records renewals
    renewed = threading.Event()

    class Recording(InMemoryLedger):
        def acquire(self, run_id: str, lease_seconds: int) -> datetime:
            self.leases.append(run_id)
            if len(self.leases) > 1:
                renewed.set()
            return datetime.now(UTC) + timedelta(seconds=lease_seconds)

    ledger = Recording()
    # When a keeper with a 3-second lease is started (it beats every second)
    keeper = LeaseKeeper(ledger, "me", 3).start()
    try:
        # Then the lease is renewed without the run doing anything
        assert renewed.wait(timeout=10)
    finally:
        keeper.stop()
    assert ledger.leases[:2] == ["me", "me"]


def test_a_run_whose_lease_is_lost_mid_apply_queues_nothing_and_writes_no_further_batch() -> None:
    # Given a run with two batches to write, whose lease is lost after the first batch
    class LosingOwnpage(FakeOwnpage):
        def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
            result = super().upsert(list_id, operations)
            keepers[0].lost = True  # another run took the lease while this batch was written
            return result

    keepers: list[LeaseKeeper] = []

    class Ledger(InMemoryLedger):
        def acquire(self, run_id: str, lease_seconds: int) -> datetime:
            return datetime.now(UTC) + timedelta(hours=1)

    original = LeaseKeeper.__init__

    def capture(self: LeaseKeeper, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        keepers.append(self)

    ownpage = LosingOwnpage()
    rows = [RawSubscriber(f"r{n}@example.org", f"row {n}") for n in range(4)]
    config = Settings(
        ownpage=OwnpageSettings(api_url="http://127.0.0.1:9", list_id=1, secret_id="unused", batch_size=2),
        source=SourceSettings(kind="dynamodb", table="unused"),
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LeaseKeeper, "__init__", capture)
        report = run_sync(
            config, SyncServices(InMemorySource(rows), ownpage, ledger=Ledger()), RunRequest(), Deadline.unlimited()
        )

    # Then the second batch is not written: it is left to the next run, and the run does not converge
    assert len(ownpage.posts) == 1
    assert report.applied is not None and report.applied.deferred == 2
    assert report.outcome == Outcome.NOT_CONVERGED


class DroppingClock:
    """A run's remaining time, which the test drops at a chosen point of the reads."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def deadline(self) -> Deadline:
        return Deadline(lambda: self.seconds)


class SlowSource(InMemorySource):
    def __init__(self, rows: Sequence[RawSubscriber], clock: DroppingClock):
        super().__init__(rows)
        self.clock = clock

    def scan(self) -> Iterator[RawSubscriber]:
        for row in super().scan():
            self.clock.seconds = 30  # the source takes almost all of the run's time
            yield row


@pytest.mark.parametrize("slow", ["ownpage", "source"])
def test_reads_that_cannot_end_in_time_are_abandoned_and_nothing_is_written(slow: str) -> None:
    # Given a run with 900 s, an Ownpage list of two pages and a source of two readers (one new), and
    # either side slow enough that the reads would end less than a minute before the deadline
    clock = DroppingClock(900)
    truth = [Row("ann@example.org", True), Row("old@example.org", True)]

    def pages(rows: Sequence[Row]) -> Iterator[list[OwnpageSubscriber]]:
        yield [rows[0].read()]
        if slow == "ownpage":
            clock.seconds = 30
        yield [rows[1].read()]

    ownpage = FakeOwnpage(truth, read=pages)
    rows = [RawSubscriber("ann@example.org", "row 1"), RawSubscriber("new@example.org", "row 2")]
    source = SlowSource(rows, clock) if slow == "source" else InMemorySource(rows)

    # When the run goes (without the source's read ahead: streamed during the Ownpage read, the slow
    # source would drop the clock while the list is read, and the Ownpage read would be the one cut)
    settings = replace(SETTINGS, source_spool_mb=0)
    report = run_sync(settings, SyncServices(source, ownpage), RunRequest(), clock.deadline())

    # Then it stops before planning, writes nothing (a partial read is never planned from), and says why
    assert report.outcome == Outcome.FAILED and ownpage.posts == []
    assert report.error is not None and report.error["kind"] == "read_deadline"
    assert "nothing was written" in report.error["message"] and slow in report.error["message"].lower()
    assert report.plan is None


def test_a_complete_read_keeps_its_other_spellings_for_the_fast_lane_and_a_partial_one_does_not() -> None:
    # Given an Ownpage holding a reader in capitals, read completely, then a read that stays short
    truth = [Row("Ann@Example.org", False, unsubscribed_cause="READER"), Row("bob@example.org", True)]
    rows = [RawSubscriber("bob@example.org", "row 1")]
    ledger = InMemoryLedger()
    # When a writing run reads it completely, then a dry run
    report = run_sync(
        SETTINGS, SyncServices(InMemorySource(rows), FakeOwnpage(truth), ledger=ledger), RunRequest(), UNLIMITED
    )
    kept = ledger.snapshot
    run_sync(
        SETTINGS,
        SyncServices(InMemorySource(rows), FakeOwnpage(truth), ledger=ledger),
        RunRequest(dry_run=True),
        UNLIMITED,
    )
    # Then the writing run kept what it saw (the reader's key, not bob's), the dry run nothing
    assert kept is not None and kept.run_id == report.run_id and ledger.snapshot is kept
    assert not kept.proves_new("ann@example.org", kept.read_at, 60) and kept.proves_new(
        "new@example.org", kept.read_at, 60
    )
    assert kept.proves_new("bob@example.org", kept.read_at, 60)

    # When a later read stays short of the count (a row missed at every pass)
    short = FakeOwnpage(truth, read=lambda found: [[r.read() for r in found if r.subscribed]])
    later = run_sync(SETTINGS, SyncServices(InMemorySource(rows), short, ledger=ledger), RunRequest(), UNLIMITED)
    # Then it keeps nothing: only a complete read proves what is not there
    assert later.read is not None and not later.read.complete and ledger.snapshot is kept


def test_a_read_ahead_that_ends_early_loses_nothing_and_is_counted(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a run whose /tmp cannot hold the source's spool, and one whose /tmp can
    rows = [RawSubscriber(f"reader{n}@example.org", f"row {n}") for n in range(5)]
    outcomes: dict[str, RunReport] = {}
    for name, tmp in (("usable", tmp_path), ("gone", tmp_path / "gone")):
        monkeypatch.setattr("tempfile.tempdir", str(tmp))
        ownpage = FakeOwnpage([])
        # When each runs
        report = run_sync(SETTINGS, SyncServices(InMemorySource(rows), ownpage), RunRequest(), UNLIMITED)
        outcomes[name] = report
        # Then each subscribed every reader: the source was read after the list when not ahead
        assert report.outcome == Outcome.CONVERGED
        assert sorted(op["email"] for post in ownpage.posts for op in post) == sorted(r.email for r in rows)
    # And only the one without a spool says its read ahead ended early (the ReadAheadEnded metric)
    assert outcomes["usable"].counts()["read_ahead_ended"] == 0
    assert outcomes["gone"].counts()["read_ahead_ended"] == 1
    assert outcomes["gone"].to_dict()["read_ahead"]["read_ahead_ended"].startswith("no spool in")
