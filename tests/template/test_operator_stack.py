"""`ownpage-sync --stack NAME`: the operator's commands against the stack deployed into moto's
CloudFormation. The CLI reads the stack's outputs and the functions' configuration from moto (nothing
here hands it a name or a URL), with Ownpage played by the emulator the stack was deployed for.

`plan --remote` invokes SyncFunction; moto cannot invoke a Lambda function without Docker, so the
invoke seam (`ownpage_sync_tools.remote.invoke_function`) runs the real handler in-process with the
function's deployed environment, and the exports travel through the stack's bucket in moto's S3."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ownpage_sync_tools import remote
from ownpage_sync_tools.cli import exit_codes, main
from ownpage_sync_tools.emulator import EmulatorServer
from ownpage_sync_tools.localstack import DEMO_CREDENTIALS, aws_client
from ownpage_sync_tools.scenario import make_scenario
from ownpage_sync_tools.stack_config import CONTRACT

from tests.integration.helpers import assert_no_leak, raw_addresses
from tests.template.stack import deploy_for_emulator, in_process_invoker

pytestmark = [pytest.mark.template, pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")]

PREFIX = "ownpage-sync: error: "
SCENARIO = make_scenario(400, drift=0.04)


@pytest.fixture(scope="module")
def ownpage() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, credentials={DEMO_CREDENTIALS["client"]: DEMO_CREDENTIALS["api_key"]})
    server.start()
    server.state.seed(1, SCENARIO.seed_rows())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def deployed(moto_server: str, ownpage: EmulatorServer) -> dict[str, str]:
    return deploy_for_emulator(moto_server, ownpage.url, "ops-stack", SCENARIO.dynamodb_items())


@pytest.fixture
def operator(aws: str, monkeypatch: pytest.MonkeyPatch, deployed: dict[str, str]) -> dict[str, str]:
    """An operator's terminal: AWS credentials and region (moto's endpoint), and misleading local values
    of the configuration, which --stack must not let through."""
    for name in list(os.environ):
        if CONTRACT.match(name):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OWNPAGE_LIST_ID", "999")
    monkeypatch.setenv("OWNPAGE_BATCH_SIZE", "not a number")
    monkeypatch.setenv("OWNPAGE_API_URL", "http://127.0.0.1:9")
    return deployed


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_plan_with_the_stack_runs_with_exactly_the_deployed_settings(
    operator: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a terminal whose own settings are wrong, and the deployed stack's name
    name = operator["StackName"]
    # When the operator plans with --stack, after the command and before it
    after = run(["plan", "--stack", name, "--json", "--no-progress"], capsys)
    before = run(["--stack", name, "plan", "--json", "--no-progress"], capsys)
    # Then both plan the stack's list from the stack's source, through the stack's secret
    for code, out, _ in (after, before):
        assert code == exit_codes.OK
        report = json.loads(out)
        assert report["list_id"] == 1
        assert report["source"]["description"] == f"dynamodb table {name}-subscribers"
        for key, expected in SCENARIO.expected.items():
            assert report["counts"][key] == expected, key
    # And the local values are back once the command is done
    assert os.environ["OWNPAGE_LIST_ID"] == "999"


def test_plan_detailed_exitcode_says_changes_are_pending(
    operator: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a list that has drifted from the source
    # When a pipeline plans with --detailed-exitcode
    code, _, err = run(["plan", "--stack", operator["StackName"], "--detailed-exitcode", "--no-progress"], capsys)
    # Then the status says "changes pending", and it is not reported as an error
    assert code == exit_codes.CHANGES_PENDING
    assert PREFIX not in err


def test_the_retry_path_tools_and_history_find_the_stack_s_queues_and_table(
    operator: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    name = operator["StackName"]
    # When the on-call runs the runbook's commands with --stack only
    history = run(["history", "--stack", name], capsys)
    dlq = run(["dlq", "--stack", name, "--json", "--wait", "0"], capsys)
    redrive = run(["redrive", "--stack", name, "--manual", "--json", "--wait", "0"], capsys)
    retry = run(["retry", "--stack", name, "--json", "--wait", "0"], capsys)
    # Then each works on the stack's resources (empty here)
    assert [result[0] for result in (history, dlq, redrive, retry)] == [exit_codes.OK] * 4
    assert history[1].startswith("lease: free")
    assert json.loads(dlq[1])["queue"] == operator["DeadLetterQueueUrl"].rsplit("/", 1)[1]
    assert json.loads(redrive[1])["destination"] == operator["RetryQueueUrl"].rsplit("/", 1)[1]
    assert json.loads(retry[1])["received"] == 0


def test_remote_plan_runs_in_the_function_and_the_exports_come_back_through_the_bucket(
    operator: dict[str, str], moto_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Given the deployed SyncFunction (run in-process: see the module docstring)
    invoker = in_process_invoker(moto_server)
    monkeypatch.setattr(remote, "invoke_function", invoker)
    plan_file, suppressed_file = tmp_path / "plan.csv", tmp_path / "suppressed.json"
    # When the operator asks for a remote dry run with both exports
    code, out, err = run(
        [
            "plan",
            "--stack",
            operator["StackName"],
            "--remote",
            "--export-plan",
            str(plan_file),
            "--export-suppressions",
            str(suppressed_file),
        ],
        capsys,
    )
    # Then the stack's function ran a dry run asked for the exports in the local files' formats
    assert code == exit_codes.OK, err
    (call,) = invoker.calls
    assert call["function_name"] == operator["SyncFunctionName"]
    assert call["event"] == {"dry_run": True, "export_plan": "csv", "export_suppressions": "json"}
    # And the files hold every planned operation and suppression, private to their owner
    planned = sum(SCENARIO.expected[k] for k in ("to_subscribe", "to_unsubscribe", "to_update"))
    assert len(plan_file.read_text(encoding="utf-8").splitlines()) == planned + 1
    assert len(json.loads(suppressed_file.read_text(encoding="utf-8"))["suppressed"]) == SCENARIO.expected["suppressed"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in (plan_file, suppressed_file)} == {0o600}
    # And they came through the stack's bucket, which no longer holds them; the terminal says where
    bucket = operator["ExportBucketName"]
    assert f"s3://{bucket}/exports/" in err and str(plan_file) in err
    assert aws_client(moto_server, "s3").list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    # And no address reached the terminal or the function's logs
    assert_no_leak(out + err + invoker.logs.getvalue(), raw_addresses(SCENARIO))
    assert "dry run: nothing was written" in out


def test_a_remote_failure_is_one_line_with_the_function_s_reason(
    operator: dict[str, str], moto_server: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Given a SyncFunction whose configuration is broken (its secret was deleted)
    def broken(function_name: str, event: Any) -> remote.Invocation:
        error = {"errorType": "ConfigurationError", "errorMessage": "secret 'x' not found (deleted, renamed...)"}
        return remote.Invocation(json.dumps(error).encode(), "Unhandled")

    monkeypatch.setattr(remote, "invoke_function", broken)
    # When the operator asks for a remote dry run
    code, out, err = run(["plan", "--stack", operator["StackName"], "--remote"], capsys)
    # Then one line names the function and its reason, with the configuration status
    assert code == exit_codes.CONFIGURATION
    assert err.splitlines()[-1] == (
        f"{PREFIX}SyncFunction {operator['SyncFunctionName']} failed: ConfigurationError: "
        "secret 'x' not found (deleted, renamed...)"
    )
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["plan", "--stack", "no-such-stack"], "stack 'no-such-stack' not found in region eu-west-1"),
        (["plan", "--remote"], "--remote needs --stack NAME"),
        (["emulator", "--stack", "ops-stack"], "--stack does not apply to `emulator`"),
    ],
)
def test_a_wrong_stack_request_is_one_line_and_exit_status_2(
    operator: dict[str, str], argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(argv, capsys)
    assert code == exit_codes.CONFIGURATION
    (printed,) = err.splitlines()
    assert printed.startswith(PREFIX + line)
