"""run_sync's failure paths, over in-memory ports (the real adapters are covered by integration tests)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import ConfigurationError, RunLedgerUnavailable, SourceError
from ownpage_sync.report import Outcome
from ownpage_sync.settings import OwnpageSettings, Settings, SourceSettings
from ownpage_sync.sources.base import RawSubscriber
from ownpage_sync.sync import RunRequest, SyncServices, run_sync

from tests.unit.test_planner_properties import InMemoryLedger, InMemoryOwnpage, InMemorySource

pytestmark = pytest.mark.unit

SETTINGS = Settings(
    ownpage=OwnpageSettings(api_url="http://127.0.0.1:9", list_id=1, secret_id="unused"),
    source=SourceSettings(kind="dynamodb", table="unused"),
)
ROWS = [RawSubscriber("ann@example.org", "row 1")]


class UnreachableLedger(InMemoryLedger):
    def acquire(self, run_id: str, lease_seconds: int) -> None:
        raise RunLedgerUnavailable("run table 'runs' unreachable (ThrottlingException)")


class HistoryFailsLedger(InMemoryLedger):
    def release(self, run_id: str, outcome: str, counts: Mapping[str, int]) -> None:
        raise RunLedgerUnavailable("run table 'runs' unreachable (ThrottlingException)")


class BrokenSource(InMemorySource):
    def scan(self):  # type: ignore[no-untyped-def]
        raise SourceError('query failed: relation "subscribers" does not exist')


def test_an_unreachable_run_table_fails_the_run_before_any_call() -> None:
    # Given a run table that cannot be reached
    ownpage = InMemoryOwnpage({})
    services = SyncServices(source=InMemorySource(ROWS), ownpage=ownpage, ledger=UnreachableLedger(None))
    # When a run starts
    report = run_sync(SETTINGS, services, RunRequest(), Deadline.unlimited())
    # Then it fails with a kind on-call can look up, and nothing was written
    assert report.outcome == Outcome.FAILED
    assert report.error is not None and report.error["kind"] == "run_table"
    assert ownpage.posts == []


def test_a_failure_to_record_history_does_not_mask_the_runs_outcome() -> None:
    # Given a run table that takes the lease but fails when the run ends
    ownpage = InMemoryOwnpage({})
    services = SyncServices(source=InMemorySource(ROWS), ownpage=ownpage, ledger=HistoryFailsLedger(None))
    # When the run applies its plan
    report = run_sync(SETTINGS, services, RunRequest(), Deadline.unlimited())
    # Then its own outcome stands
    assert report.outcome == Outcome.CONVERGED
    assert len(ownpage.posts) == 1


def test_a_broken_source_fails_the_run_with_its_reason_and_writes_nothing() -> None:
    # Given a source whose query fails
    ownpage = InMemoryOwnpage({})
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
    with pytest.raises(ConfigurationError, match=r"event\.force.*event\.max_unsubscribe"):
        RunRequest.from_event({"force": "yes", "max_unsubscribe": -1})
