"""The run lease and run history against a real DynamoDB API (moto server over HTTP), and
`ownpage-sync history` reading them."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.stub import Stubber
from ownpage_sync import run_ledger
from ownpage_sync.errors import ConfigurationError, RunInProgress
from ownpage_sync.run_ledger import DynamoDbRunLedger
from ownpage_sync.spellings import SpellingSnapshot
from ownpage_sync_tools.cli import exit_codes, main
from ownpage_sync_tools.localstack import create_run_table

pytestmark = pytest.mark.integration

LEASE_SECONDS = 900


class FakeClock:
    """A clock the test moves by hand, so a lease can age without sleeping."""

    def __init__(self) -> None:
        # Today, not a fixed past date: nothing must look expired to DynamoDB's TTL.
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def run_table(aws: str, unique: str) -> str:
    """The run table exactly as the stack creates it: pk/sk strings, TTL on expires_at."""
    name = f"runs-{unique}"
    create_run_table(boto3.client("dynamodb"), name)
    return name


@pytest.fixture
def atomic_conditional_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB evaluates a write's condition and applies the write atomically; moto's server checks
    and stores in separate Python steps, so two racing writes can both pass (seen ~0.5% of races here).
    Serialising moto's writes restores the real service's guarantee, so the race test checks our use of
    conditions, not moto's threading. (The server runs in this process: the patch reaches it.)"""
    from moto.dynamodb.models import DynamoDBBackend

    lock = threading.Lock()
    for name in ("put_item", "delete_item", "update_item"):
        original = getattr(DynamoDBBackend, name)

        def serialised(self: object, *args: object, __original: object = original, **kwargs: object) -> object:
            with lock:
                return __original(self, *args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(DynamoDBBackend, name, serialised)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def ledger_for(table: str, clock: FakeClock) -> DynamoDbRunLedger:
    return DynamoDbRunLedger(table, client=boto3.client("dynamodb"), clock=clock)


def finish_run(ledger: DynamoDbRunLedger, clock: FakeClock, run_id: str, outcome: str, **counts: int) -> None:
    ledger.acquire(run_id, LEASE_SECONDS)
    clock.advance(30)
    ledger.release(run_id, outcome, counts)
    clock.advance(60)


def test_acquire_then_release_records_the_run_and_frees_the_lease(run_table: str, clock: FakeClock) -> None:
    # Given a ledger on an empty run table
    ledger = ledger_for(run_table, clock)

    # When a run takes the lease, works for 42 s and releases it as converged
    ledger.acquire("run-1", LEASE_SECONDS)
    held = ledger.lease()
    clock.advance(42)
    ledger.release("run-1", "converged", {"source": 120, "subscribe": 3})

    # Then the lease was held by that run while it worked, and is gone afterwards
    assert held is not None and held.run_id == "run-1"
    assert held.lease_until == held.acquired_at + timedelta(seconds=LEASE_SECONDS)  # type: ignore[operator]
    assert ledger.lease() is None
    # And the history holds one row with the outcome, counts and both timestamps
    [record] = ledger.history()
    assert record.run_id == "run-1"
    assert record.outcome == "converged"
    assert dict(record.counts) == {"source": 120, "subscribe": 3}
    assert record.ended_at is not None and record.ended_at - record.started_at == timedelta(seconds=42)
    # And another run can take the lease at once
    ledger.acquire("run-2", LEASE_SECONDS)
    assert ledger.lease().run_id == "run-2"  # type: ignore[union-attr]


def test_history_rows_expire_after_ninety_days(run_table: str, clock: FakeClock) -> None:
    # Given a finished run
    ledger = ledger_for(run_table, clock)
    ledger.acquire("run-1", LEASE_SECONDS)
    ledger.release("run-1", "converged", {"source": 1})

    # When its stored row is read back raw
    [item] = boto3.client("dynamodb").query(
        TableName=run_table, KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": {"S": "run"}}
    )["Items"]

    # Then DynamoDB's TTL attribute is set 90 days after the release
    assert int(item["expires_at"]["N"]) == int((clock.now + timedelta(days=90)).timestamp())


def test_second_run_is_refused_while_the_lease_is_live(run_table: str, clock: FakeClock) -> None:
    # Given run-1 holds a 15-minute lease, taken 5 minutes ago
    ledger_for(run_table, clock).acquire("run-1", LEASE_SECONDS)
    clock.advance(300)
    second = ledger_for(run_table, clock)
    calls: list[str] = []
    second._client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))

    # When another run tries to take it
    with pytest.raises(RunInProgress) as refused:
        second.acquire("run-2", LEASE_SECONDS)

    # Then it is refused with the holder's id and the time the lease has left
    assert "run-1" in str(refused.value)
    assert "10m00s left" in str(refused.value)
    # And the refusal cost one conditional write and nothing else: no history row for run-2
    assert calls == ["PutItem"]
    assert [record.run_id for record in second.history()] == ["run-1"]
    assert second.lease().run_id == "run-1"  # type: ignore[union-attr]


def test_a_crashed_runs_lease_expires(run_table: str, clock: FakeClock) -> None:
    # Given run-1 took the lease and crashed (it never releases)
    crashed = ledger_for(run_table, clock)
    crashed.acquire("run-1", LEASE_SECONDS)
    survivor = ledger_for(run_table, clock)

    # When another run tries one second before the lease ends, then one second after
    clock.advance(LEASE_SECONDS - 1)
    with pytest.raises(RunInProgress):
        survivor.acquire("run-2", LEASE_SECONDS)
    clock.advance(2)
    survivor.acquire("run-2", LEASE_SECONDS)

    # Then the second attempt took the lease (the condition compared times; TTL was not waited for)
    assert survivor.lease().run_id == "run-2"  # type: ignore[union-attr]
    # And the history shows the dead run as crashed and the new one as running
    assert [(record.run_id, record.outcome) for record in survivor.history()] == [
        ("run-2", "running"),
        ("run-1", "crashed"),
    ]


def test_a_late_release_does_not_free_the_lease_of_the_run_that_took_over(run_table: str, clock: FakeClock) -> None:
    # Given run-1's lease expired and run-2 took it over
    slow = ledger_for(run_table, clock)
    slow.acquire("run-1", LEASE_SECONDS)
    clock.advance(LEASE_SECONDS + 1)
    ledger_for(run_table, clock).acquire("run-2", LEASE_SECONDS)

    # When run-1 finally finishes and releases
    slow.release("run-1", "converged", {"source": 5})

    # Then run-2 still holds the lease, and run-1's outcome is recorded all the same
    assert slow.lease().run_id == "run-2"  # type: ignore[union-attr]
    assert {record.run_id: record.outcome for record in slow.history()} == {"run-1": "converged", "run-2": "running"}


def test_the_same_run_may_take_its_own_lease_again(run_table: str, clock: FakeClock) -> None:
    # Given run-1 holds the lease
    ledger = ledger_for(run_table, clock)
    ledger.acquire("run-1", LEASE_SECONDS)

    # When the same run id acquires again a minute later (a retried invocation of the same run)
    clock.advance(60)
    ledger.acquire("run-1", LEASE_SECONDS)

    # Then it keeps the lease, extended from now, and the run still has a single history row
    lease = ledger.lease()
    assert lease is not None and lease.run_id == "run-1"
    assert lease.lease_until == clock.now + timedelta(seconds=LEASE_SECONDS)
    assert [(record.run_id, record.outcome) for record in ledger.history()] == [("run-1", "running")]


def race_for_the_lease(ledgers: dict[str, DynamoDbRunLedger]) -> tuple[list[str], list[str]]:
    """Every run tries to acquire at the same instant; returns (run ids that won, refusal messages)."""
    start = threading.Barrier(len(ledgers))
    won: list[str] = []
    refused: list[str] = []

    def attempt(run_id: str, ledger: DynamoDbRunLedger) -> None:
        start.wait()
        try:
            ledger.acquire(run_id, LEASE_SECONDS)
            won.append(run_id)
        except RunInProgress as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=attempt, args=item) for item in ledgers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return won, refused


@pytest.mark.usefixtures("atomic_conditional_writes")
def test_two_runs_racing_for_the_lease_exactly_one_wins(run_table: str, clock: FakeClock) -> None:
    for round_number in range(10):
        # Given two runs, each with its own client
        ledgers = {f"race-{round_number}-{side}": ledger_for(run_table, clock) for side in ("a", "b")}

        # When both try to take the lease at the same instant
        won, refused = race_for_the_lease(ledgers)

        # Then exactly one holds it, and the other was told who
        assert len(won) == 1 and len(refused) == 1, (won, refused)
        assert won[0] in refused[0]
        assert ledgers[won[0]].lease().run_id == won[0]  # type: ignore[union-attr]
        ledgers[won[0]].release(won[0], "converged", {"source": 1})


def test_history_is_newest_first_and_limited(run_table: str, clock: FakeClock) -> None:
    # Given five finished runs, one after the other
    ledger = ledger_for(run_table, clock)
    for number in range(1, 6):
        finish_run(ledger, clock, f"run-{number}", "converged", source=number)

    # When the history is read with and without a limit
    last_three = ledger.history(3)
    everything = ledger.history(50)

    # Then runs come newest first and the limit is honoured
    assert [record.run_id for record in last_three] == ["run-5", "run-4", "run-3"]
    assert [record.run_id for record in everything] == ["run-5", "run-4", "run-3", "run-2", "run-1"]
    assert [record.started_at for record in everything] == sorted(
        (record.started_at for record in everything), reverse=True
    )


def test_history_pages_through_query_results(run_table: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given five runs and query pages of two items
    ledger = ledger_for(run_table, clock)
    for number in range(1, 6):
        finish_run(ledger, clock, f"run-{number}", "dry_run", source=number)
    monkeypatch.setattr(run_ledger, "QUERY_PAGE_SIZE", 2)

    # When four runs are asked for
    records = ledger.history(4)

    # Then they were gathered across pages, still newest first
    assert [record.run_id for record in records] == ["run-5", "run-4", "run-3", "run-2"]


def test_last_successful_source_count_skips_runs_that_did_not_converge(
    run_table: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an old converged run, then runs with every other outcome (and a crashed one) after it
    ledger = ledger_for(run_table, clock)
    finish_run(ledger, clock, "old", "converged", source=1000)
    finish_run(ledger, clock, "good", "converged", source=980, subscribe=2)
    for outcome, source in [("not_converged", 970), ("guard_tripped", 10), ("dry_run", 500), ("failed", 0)]:
        finish_run(ledger, clock, f"run-{outcome}", outcome, source=source)
    ledger.acquire("crashed", LEASE_SECONDS)
    clock.advance(LEASE_SECONDS + 1)
    # Small query pages, so the filtered query has to page past empty pages
    monkeypatch.setattr(run_ledger, "QUERY_PAGE_SIZE", 2)

    # When the guard asks for the last successful run's source count
    count = ledger.last_successful_source_count()

    # Then it is the newest converged run's
    assert count == 980


def test_last_successful_source_count_is_none_without_a_converged_run(run_table: str, clock: FakeClock) -> None:
    # Given only runs that did not converge
    ledger = ledger_for(run_table, clock)
    finish_run(ledger, clock, "run-1", "guard_tripped", source=0)
    finish_run(ledger, clock, "run-2", "not_converged", source=50)

    # When / Then there is no count to compare against
    assert ledger.last_successful_source_count() is None


def test_a_missing_table_is_a_clear_configuration_error(aws: str, clock: FakeClock) -> None:
    # Given a ledger on a table that does not exist
    ledger = ledger_for("no-such-run-table", clock)

    # When it is used, Then the error names the setting and the table
    for use in (lambda: ledger.acquire("run-1", LEASE_SECONDS), ledger.history, ledger.last_successful_source_count):
        with pytest.raises(ConfigurationError, match=r"RUN_TABLE: DynamoDB table 'no-such-run-table' does not exist"):
            use()


def test_access_denied_is_a_clear_configuration_error(clock: FakeClock) -> None:
    # moto server does not enforce IAM here, so DynamoDB's AccessDeniedException is stubbed (botocore
    # Stubber: a real client, a canned response, no network).
    # Given a client whose PutItem is denied
    client = boto3.client("dynamodb", region_name="eu-west-1")
    stubber = Stubber(client)
    stubber.add_client_error("put_item", service_error_code="AccessDeniedException", http_status_code=400)
    ledger = DynamoDbRunLedger("runs", client=client, clock=clock)

    # When a run tries to take the lease
    with stubber, pytest.raises(ConfigurationError) as denied:
        ledger.acquire("run-1", LEASE_SECONDS)

    # Then the error says access was denied, on which table and for which action
    assert "access to DynamoDB table 'runs' was denied" in str(denied.value)
    assert "dynamodb:PutItem" in str(denied.value)


# -- ownpage-sync history --------------------------------------------------------------------------


def test_history_command_prints_the_lease_and_the_last_runs(
    run_table: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two finished runs and a third one holding the lease now (real clock: the CLI reads it)
    clock = FakeClock()
    clock.advance(-3600)
    ledger = ledger_for(run_table, clock)
    finish_run(ledger, clock, "run-old", "guard_tripped", source=3, to_unsubscribe=97)
    finish_run(
        ledger, clock, "run-new", "converged", source=100, to_subscribe=2, to_unsubscribe=1, unchanged=97, queued=0
    )
    ledger_for(run_table, FakeClock()).acquire("run-live", LEASE_SECONDS)
    monkeypatch.setenv("RUN_TABLE", run_table)

    # When the operator asks for the last two runs
    code = main(["history", "--limit", "2"])
    lines = capsys.readouterr().out.splitlines()

    # Then the lease line names the live run, and the table lists the newest two runs
    assert code == exit_codes.OK
    assert lines[0].startswith("lease: held by run run-live until ")
    header, *rows = [line for line in lines[2:] if line]
    assert header.split() == ["STARTED", "(UTC)", "DURATION", "OUTCOME", "RUN", "ID", "COUNTS"]
    assert len(rows) == 2
    assert "running" in rows[0] and "run-live" in rows[0]
    assert "converged" in rows[1] and "run-new" in rows[1] and "30s" in rows[1]
    # (the counts a row shows, in their order; queued=0 and unchanged only in --json)
    assert rows[1].endswith("source=100 to_subscribe=2 to_unsubscribe=1")
    assert not any("run-old" in row for row in rows)


def test_history_command_json(
    run_table: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one finished run and a free lease
    clock = FakeClock()
    clock.advance(-600)
    finish_run(ledger_for(run_table, clock), clock, "run-1", "converged", source=7)
    monkeypatch.setenv("RUN_TABLE", run_table)

    # When the history is asked for as JSON
    code = main(["history", "--json"])
    shown = json.loads(capsys.readouterr().out)

    # Then it is machine-readable: no lease, one run with its counts and ISO timestamps
    assert code == exit_codes.OK
    assert shown["lease"] is None
    [run] = shown["runs"]
    assert run["run_id"] == "run-1" and run["outcome"] == "converged" and run["counts"] == {"source": 7}
    assert datetime.fromisoformat(run["ended_at"]) - datetime.fromisoformat(run["started_at"]) == timedelta(seconds=30)


def test_history_command_without_run_table_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given no RUN_TABLE (and none of the Ownpage settings: history must not need them)
    monkeypatch.delenv("RUN_TABLE", raising=False)

    # When the operator asks for the history
    code = main(["history"])

    # Then it exits with the configuration status and names the variable
    assert code == exit_codes.CONFIGURATION
    assert "RUN_TABLE: is required" in capsys.readouterr().err


def test_history_command_on_a_missing_table_is_a_configuration_error(
    aws: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given RUN_TABLE names a table that does not exist
    monkeypatch.setenv("RUN_TABLE", "no-such-run-table")

    # When the operator asks for the history
    code = main(["history"])

    # Then the exit status and message say so
    assert code == exit_codes.CONFIGURATION
    assert "'no-such-run-table' does not exist" in capsys.readouterr().err


def test_the_last_reads_spellings_are_kept_replaced_and_read_back(run_table: str, clock: FakeClock) -> None:
    # Given nothing kept yet, then a complete read's snapshot, then a later one with too many to keep
    ledger = ledger_for(run_table, clock)
    assert ledger.spellings() is None
    first = SpellingSnapshot.of_keys("run-1", clock(), ["ann@example.org", "zoë@example.org"], carried=["a@x.io"])
    ledger.put_spellings(first)
    assert ledger.spellings() == first and first.carried
    later = SpellingSnapshot("run-2", clock() + timedelta(hours=1), None)
    ledger.put_spellings(later)
    # Then the table holds the last one only, beside the lease and the history, and no address
    assert ledger.spellings() == later
    items = boto3.client("dynamodb").scan(TableName=run_table)["Items"]
    assert [item["pk"]["S"] for item in items] == ["spellings"]
    assert "example.org" not in json.dumps(items, default=str)


@pytest.mark.usefixtures("atomic_conditional_writes")
def test_the_fast_lanes_hourly_budget_is_shared_atomically_and_renewed_each_hour(
    run_table: str, clock: FakeClock
) -> None:
    # Given a budget of 10 writes an hour, and eight invocations racing for 2 writes each
    ledgers = [ledger_for(run_table, clock) for _ in range(8)]
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda led=led: results.append(led.reserve_fast_lane_writes(clock(), 2, 10)))
        for led in ledgers
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly five fit, and the hour's count is the budget, never more
    assert sorted(results) == [False] * 3 + [True] * 5
    hour = clock().replace(minute=0, second=0)
    item = boto3.client("dynamodb").get_item(
        TableName=run_table, Key={"pk": {"S": "fast-lane-writes"}, "sk": {"S": f"{hour:%Y-%m-%dT%H}"}}
    )["Item"]
    assert item["writes"] == {"N": "10"}
    assert int(item["expires_at"]["N"]) == int((hour + timedelta(days=2)).timestamp())
    # ... more than the whole budget never fits, and nothing is counted for it
    assert not ledgers[0].reserve_fast_lane_writes(clock() + timedelta(hours=1), 11, 10)
    # And the next clock hour has its whole budget again
    assert ledgers[0].reserve_fast_lane_writes(clock() + timedelta(hours=1), 10, 10)
