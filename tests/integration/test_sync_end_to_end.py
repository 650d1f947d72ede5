"""The SyncFunction handler end to end: moto server (DynamoDB, Secrets Manager, SQS) and the Ownpage
emulator, over HTTP. Only Lambda's context object is a stand-in (Lambda cannot run here)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ownpage_sync.errors import ConfigurationError, RunFailed
from ownpage_sync_tools.lambda_local import LocalContext, load_function
from ownpage_sync_tools.localstack import aws_client, provision, seed_source
from ownpage_sync_tools.scenario import Scenario, make_scenario

from tests.integration.helpers import assert_converged, assert_no_leak, captured_logs, raw_addresses

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(aws: str, emulator: Any, unique: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = provision(aws, emulator.url, f"e2e-{unique}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OWNPAGE_BATCH_SIZE", "500")
    return env


def seed(stack: dict[str, str], emulator: Any, scenario: Scenario) -> None:
    seed_source(stack["AWS_ENDPOINT_URL"], stack["SOURCE_TABLE"], scenario.dynamodb_items())
    emulator.state.seed(1, scenario.seed_rows())


def invoke(event: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = load_function("sync").handler(event or {}, LocalContext())
    return result


def cli_json(stdout: str) -> dict[str, Any]:
    """The CLI's `--json` report: the last indented JSON document on stdout. In this process the
    handler's Powertools logger (one JSON object a line) also writes to stdout."""
    start = stdout.rfind("\n{\n") + 1 if not stdout.startswith("{\n") else 0
    report: dict[str, Any] = json.loads(stdout[start:])
    return report


def writes(emulator: Any) -> list[Any]:
    """The upserts Ownpage received (the token is a POST too, but writes nothing)."""
    return [r for r in emulator.state.requests if r.method == "POST" and r.path.endswith("/subscribers")]


def test_dry_run_plans_every_kind_of_change_and_writes_nothing(stack: dict[str, str], emulator: Any) -> None:
    # Given a source and an Ownpage list that drifted from it in every way the policy knows
    scenario = make_scenario(2000, drift=0.03)
    seed(stack, emulator, scenario)
    # When the scheduler invokes a dry run
    report = invoke({"dry_run": True})
    # Then the plan has exactly the expected changes, nothing is written, and suppressions are reported
    counts = report["counts"]
    for key, expected in scenario.expected.items():
        assert counts[key] == expected, key
    assert report["outcome"] == "dry_run"
    assert writes(emulator) == []
    assert set(report["suppressed_by_cause"]) == {"HARD_BOUNCE", "MULTIPLE_BOUNCES", "READER"}
    assert report["source"]["invalid"] == 3


def test_run_converges_keeps_history_and_a_second_plan_is_empty(stack: dict[str, str], emulator: Any) -> None:
    # Given a drifted list
    scenario = make_scenario(3000, drift=0.03)
    seed(stack, emulator, scenario)
    # When the sync runs, and then plans again
    with captured_logs() as lines:
        first = invoke()
        second = invoke({"dry_run": True})
    # Then Ownpage equals the source, the second plan is empty, nothing was deleted
    assert first["outcome"] == "converged", first
    assert_converged(emulator.state.subscribers(1), scenario)
    assert second["counts"]["to_subscribe"] == second["counts"]["to_unsubscribe"] == second["counts"]["to_update"] == 0
    assert emulator.state.violations == []
    assert first["drift"]["difference"] == 0
    # And no raw address appears in any log line or in the returned report
    assert lines, "the run must log"
    assert_no_leak("\n".join(lines) + json.dumps(first), raw_addresses(scenario))


def test_unsubscribes_carry_the_publisher_cause(stack: dict[str, str], emulator: Any) -> None:
    # Given Ownpage subscribers who are gone from the source
    scenario = make_scenario(1000, drift=0.04)
    seed(stack, emulator, scenario)
    gone = {row["email"] for row in scenario.ownpage_rows if row["subscribed"]} - {
        email for email in scenario.eligible_emails()
    }
    # When the sync runs
    invoke()
    # Then each is unsubscribed (not deleted) with cause PUBLISHER
    rows = {row["email"]: row for row in emulator.state.subscribers(1)}
    assert gone and all(rows[email]["subscribed"] is False for email in gone)
    assert {rows[email]["unsubscribed_cause"] for email in gone} == {"PUBLISHER"}


def test_empty_source_trips_the_guard_and_writes_nothing(stack: dict[str, str], emulator: Any) -> None:
    # Given an Ownpage list with subscribers and an empty source table (a broken export, say)
    scenario = make_scenario(500)
    emulator.state.seed(1, scenario.seed_rows())
    # When the sync runs
    report = invoke()
    # Then the guard trips, nothing is written, and the reason is in the report
    assert report["outcome"] == "guard_tripped"
    assert "empty_source" in {trip["guard"] for trip in report["guards"]["tripped"]}
    assert writes(emulator) == []


def test_force_passes_a_tripped_guard_for_one_run(stack: dict[str, str], emulator: Any) -> None:
    # Given a plan that unsubscribes far more than the 5% guard allows
    scenario = make_scenario(400, drift=0.3)
    seed(stack, emulator, scenario)
    tripped = invoke()
    assert tripped["outcome"] == "guard_tripped" and writes(emulator) == []
    # When the operator allows exactly that many unsubscribes, then forces
    too_few = invoke({"max_unsubscribe": scenario.expected["to_unsubscribe"] - 1})
    allowed = invoke({"max_unsubscribe": scenario.expected["to_unsubscribe"]})
    # Then a too-small allowance still blocks, the right one applies and is reported as overridden
    assert too_few["outcome"] == "guard_tripped"
    assert allowed["outcome"] == "converged"
    assert [trip["guard"] for trip in allowed["guards"]["overridden"]] == ["unsubscribe_ratio"]
    assert_converged(emulator.state.subscribers(1), scenario)


def test_failing_ownpage_queues_every_operation_and_the_run_does_not_converge(
    stack: dict[str, str], emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Ownpage failing every write
    scenario = make_scenario(1000, drift=0.05)
    seed(stack, emulator, scenario)
    emulator.set_faults(fail_writes=True, error_status=503)
    monkeypatch.setenv("OWNPAGE_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("OWNPAGE_BACKOFF_BASE", "0.01")
    # When the sync runs
    report = invoke()
    # Then nothing is lost: every planned operation is on the retry queue
    planned = sum(scenario.expected[key] for key in ("to_subscribe", "to_unsubscribe", "to_update"))
    assert report["outcome"] == "not_converged"
    assert report["apply"]["queued"] == planned
    sqs = aws_client(stack["AWS_ENDPOINT_URL"], "sqs")
    queued = 0
    while True:
        messages = sqs.receive_message(QueueUrl=stack["RETRY_QUEUE_URL"], MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            break
        queued += sum(len(json.loads(message["Body"])["operations"]) for message in messages)
    assert queued == planned


def test_a_live_lease_stops_a_second_run_before_any_call(stack: dict[str, str], emulator: Any) -> None:
    # Given a run holding the lease
    from ownpage_sync.run_ledger import DynamoDbRunLedger

    DynamoDbRunLedger(stack["RUN_TABLE"]).acquire("other-run", 900)
    calls_before = len(emulator.state.requests)
    # When the scheduler starts another run
    report = invoke()
    # Then it does nothing and says why
    assert report["outcome"] == "run_in_progress"
    assert len(emulator.state.requests) == calls_before


def test_source_drop_since_last_success_trips_the_guard(stack: dict[str, str], emulator: Any) -> None:
    # Given a converged run over 1,000 subscribers
    scenario = make_scenario(1000)
    seed(stack, emulator, scenario)
    assert invoke()["outcome"] == "converged"
    # When a third of the source disappears
    table = aws_client(stack["AWS_ENDPOINT_URL"], "dynamodb")
    for item in scenario.source_items[:350]:
        table.delete_item(TableName=stack["SOURCE_TABLE"], Key={"user_id": {"S": item["user_id"]}})
    posts_before = len(writes(emulator))
    report = invoke()
    # Then the drop guard trips (among others) and nothing is written
    assert report["outcome"] == "guard_tripped"
    assert "source_drop" in {trip["guard"] for trip in report["guards"]["tripped"]}
    assert len(writes(emulator)) == posts_before


def test_a_broken_setting_stops_before_any_call(
    stack: dict[str, str], emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a malformed batch size and a missing list id
    monkeypatch.setenv("OWNPAGE_BATCH_SIZE", "lots")
    monkeypatch.delenv("OWNPAGE_LIST_ID")
    # When the function is invoked
    with pytest.raises(ConfigurationError) as raised:
        invoke()
    # Then the error names both variables and Ownpage was never called
    assert "OWNPAGE_BATCH_SIZE" in str(raised.value) and "OWNPAGE_LIST_ID" in str(raised.value)
    assert emulator.state.requests == []


def test_an_unreadable_source_fails_the_invocation_before_any_write(
    stack: dict[str, str], emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a source table that does not exist
    emulator.state.seed(1, make_scenario(200).seed_rows())
    monkeypatch.setenv("SOURCE_TABLE", "no-such-table")
    # When the function is invoked
    with pytest.raises(RunFailed) as raised:
        invoke()
    # Then the invocation fails (Lambda's Errors alarm), naming the source problem, with no write
    assert "no-such-table" in str(raised.value)
    assert writes(emulator) == []


def test_unsubscribe_count_guard_and_the_cli_exit_status(
    stack: dict[str, str], emulator: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Given a plan within the ratio guard but above an absolute MAX_UNSUBSCRIBE_COUNT
    from ownpage_sync_tools.cli import main as cli

    scenario = make_scenario(1000, drift=0.03)
    seed(stack, emulator, scenario)
    monkeypatch.setenv("MAX_UNSUBSCRIBE_COUNT", str(scenario.expected["to_unsubscribe"] - 1))
    # When the handler runs, and `ownpage-sync run` runs
    report = invoke()
    status = cli(["run", "--json", "--no-progress"])
    cli_report = cli_json(capsys.readouterr().out)
    # Then both stop on the count guard without a write, and the CLI says so with exit status 3
    assert report["outcome"] == cli_report["outcome"] == "guard_tripped"
    assert [trip["guard"] for trip in report["guards"]["tripped"]] == ["unsubscribe_count"]
    assert status == 3
    assert writes(emulator) == []
    # And `--force` passes it for one run, logged as an override
    assert cli(["run", "--force", "--json", "--no-progress"]) == 0
    forced = cli_json(capsys.readouterr().out)
    assert [trip["guard"] for trip in forced["guards"]["overridden"]] == ["unsubscribe_count"]
    assert_converged(emulator.state.subscribers(1), scenario)


def test_plan_exports_the_plan_and_the_suppressions(
    stack: dict[str, str], emulator: Any, tmp_path: Any, capsys: Any
) -> None:
    # Given a drifted list with suppressed addresses
    from ownpage_sync_tools.cli import main as cli

    scenario = make_scenario(800, drift=0.03)
    seed(stack, emulator, scenario)
    # When the publisher's engineer reviews the plan before the first run
    status = cli(
        [
            "plan",
            "--no-progress",
            "--export-plan",
            str(tmp_path / "plan.csv"),
            "--export-suppressions",
            str(tmp_path / "suppressed.csv"),
        ]
    )
    printed = capsys.readouterr().out
    # Then the files hold every operation and suppression, the terminal output holds no address
    plan_lines = (tmp_path / "plan.csv").read_text(encoding="utf-8").splitlines()
    suppressed_lines = (tmp_path / "suppressed.csv").read_text(encoding="utf-8").splitlines()
    planned = sum(scenario.expected[key] for key in ("to_subscribe", "to_unsubscribe", "to_update"))
    assert status == 0
    assert len(plan_lines) == planned + 1 and plan_lines[0].startswith("action,email")
    assert len(suppressed_lines) == scenario.expected["suppressed"] + 1
    assert {line.split(",")[1] for line in suppressed_lines[1:]} == {"HARD_BOUNCE", "MULTIPLE_BOUNCES", "READER"}
    assert_no_leak(printed, raw_addresses(scenario))
    assert writes(emulator) == []
    # And both files are readable by their owner only: they hold email addresses
    assert {oct((tmp_path / name).stat().st_mode & 0o777) for name in ("plan.csv", "suppressed.csv")} == {"0o600"}


def test_a_dry_run_exports_its_plan_to_the_bucket_and_returns_the_keys(
    stack: dict[str, str], emulator: Any, monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    # Given a drifted list and the stack's export bucket
    scenario = make_scenario(300, drift=0.05)
    seed(stack, emulator, scenario)
    s3 = aws_client(stack["AWS_ENDPOINT_URL"], "s3")
    bucket = f"exports-{unique}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    monkeypatch.setenv("EXPORT_BUCKET", bucket)
    # When the function is asked for a dry run with both exports
    with captured_logs() as lines:
        report = invoke({"dry_run": True, "export_plan": "csv", "export_suppressions": "json"})
    # Then the report names the objects, which hold every planned operation and suppression
    exports = report["exports"]
    assert exports["bucket"] == bucket and exports["plan"].startswith(f"exports/{report['run_id']}/")
    plan_rows = s3.get_object(Bucket=bucket, Key=exports["plan"])["Body"].read().decode().splitlines()
    suppressed = json.loads(s3.get_object(Bucket=bucket, Key=exports["suppressions"])["Body"].read())["suppressed"]
    planned = sum(scenario.expected[key] for key in ("to_subscribe", "to_unsubscribe", "to_update"))
    assert len(plan_rows) == planned + 1 and len(suppressed) == scenario.expected["suppressed"]
    # And nothing was written to Ownpage, and no address reached the logs
    assert writes(emulator) == []
    assert_no_leak("\n".join(lines), raw_addresses(scenario))


def test_a_malformed_export_request_fails_before_any_call(
    stack: dict[str, str], emulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an export asked for in a format that does not exist, and no bucket configured
    monkeypatch.delenv("EXPORT_BUCKET", raising=False)
    # When the function is invoked
    with pytest.raises(ConfigurationError) as bad_format:
        invoke({"dry_run": True, "export_plan": "xlsx"})
    with pytest.raises(ConfigurationError) as no_bucket:
        invoke({"dry_run": True, "export_plan": "csv"})
    # Then each is refused, naming the problem, before Ownpage is called
    assert "event.export_plan" in str(bad_format.value)
    assert "EXPORT_BUCKET: is required" in str(no_bucket.value)
    assert emulator.state.requests == []


def test_plan_detailed_exitcode_tells_nothing_to_do_changes_pending_and_a_guard_apart(
    stack: dict[str, str], emulator: Any, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from ownpage_sync_tools.cli import exit_codes
    from ownpage_sync_tools.cli import main as cli

    # Given a drifted list whose plan unsubscribes some addresses, and a count guard of 0
    scenario = make_scenario(300, drift=0.05)
    seed(stack, emulator, scenario)
    monkeypatch.setenv("MAX_UNSUBSCRIBE_COUNT", "0")
    # When a pipeline plans with --detailed-exitcode: a guard would trip
    guarded = cli(["plan", "--detailed-exitcode", "--no-progress"])
    guard_line = capsys.readouterr().err.splitlines()[-1]
    # ... without the guard: changes are pending
    monkeypatch.delenv("MAX_UNSUBSCRIBE_COUNT")
    pending = cli(["plan", "--detailed-exitcode", "--no-progress"])
    # ... after a run: nothing to do
    assert cli(["run", "--no-progress"]) == exit_codes.OK
    settled = cli(["plan", "--detailed-exitcode", "--no-progress"])
    # Then the three are told apart, and only the guard is an error line
    assert (guarded, pending, settled) == (exit_codes.GUARD_TRIPPED, exit_codes.CHANGES_PENDING, exit_codes.OK)
    assert guard_line.startswith("ownpage-sync: error: a guard would stop this run: unsubscribe_count")
    # And without the flag, a plan is 0 whatever it finds (the documented "plan computed")
    monkeypatch.setenv("MAX_UNSUBSCRIBE_COUNT", "0")
    emulator.state.seed(1, scenario.seed_rows())
    assert cli(["plan", "--no-progress"]) == exit_codes.OK
