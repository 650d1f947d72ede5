"""The CLI's error contract against real services (moto server, the emulator): a missing secret, an
unreachable Ownpage, source or AWS endpoint each give one `ownpage-sync: error:` line and the exit
status of docs/cli.md, never a traceback."""

from __future__ import annotations

from typing import Any

import pytest
from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
from ownpage_sync_tools.cli import exit_codes, main
from ownpage_sync_tools.localstack import provision, seed_source
from ownpage_sync_tools.scenario import make_scenario

pytestmark = pytest.mark.integration

PREFIX = "ownpage-sync: error: "
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def stack(aws: str, emulator: Any, unique: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = provision(aws, emulator.url, f"cli-{unique}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OWNPAGE_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    # Powertools' secrets provider keeps the boto3 client of its first use: start from a fresh one.
    monkeypatch.delitem(DEFAULT_PROVIDERS, "secrets", raising=False)
    scenario = make_scenario(50)
    seed_source(aws, env["SOURCE_TABLE"], scenario.dynamodb_items())
    emulator.state.seed(1, scenario.seed_rows())
    return env


def errors(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith(PREFIX)]


def test_a_missing_secret_is_one_line_and_exit_status_2(
    stack: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given OWNPAGE_SECRET_ID naming a secret that does not exist
    monkeypatch.setenv("OWNPAGE_SECRET_ID", "ownpage-sync/deleted")
    # When a plan runs
    code = main(["plan", "--no-progress"])
    # Then exactly one line says which secret and why, with the configuration status
    assert code == exit_codes.CONFIGURATION
    assert capsys.readouterr().err.splitlines() == [
        PREFIX + "secret 'ownpage-sync/deleted' not found (deleted, renamed, or in another account or region)"
    ]


def test_credentials_ownpage_refuses_are_one_line_and_exit_status_2(
    stack: dict[str, str], emulator: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an Ownpage that knows other credentials than the secret's (a wrong API key)
    emulator.credentials = {"someone-else": "another-key"}
    # When a plan runs
    code = main(["plan", "--no-progress"])
    # Then one line names Ownpage's refusal, with the configuration status: retrying will not help
    assert code == exit_codes.CONFIGURATION
    (line,) = errors(capsys)
    assert "failed (ownpage_auth)" in line


def test_a_source_table_that_does_not_exist_is_one_line_and_exit_status_2(
    stack: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given SOURCE_TABLE naming a table that does not exist (a typo, another region)
    monkeypatch.setenv("SOURCE_TABLE", stack["SOURCE_TABLE"] + "-gone")
    # When a plan runs
    code = main(["plan", "--no-progress"])
    # Then one line names the table and the setting to check, with the configuration status
    assert code == exit_codes.CONFIGURATION
    (line,) = errors(capsys)
    assert "failed (source_configuration)" in line
    assert f"{stack['SOURCE_TABLE']}-gone" in line and "check SOURCE_TABLE" in line


def test_an_unreachable_ownpage_is_one_line_and_exit_status_5(
    stack: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an Ownpage URL where nothing answers
    monkeypatch.setenv("OWNPAGE_API_URL", NOWHERE)
    # When a plan runs
    code = main(["plan", "--no-progress"])
    # Then the run fails with one error line naming Ownpage as the cause
    assert code == exit_codes.FAILED
    (line,) = errors(capsys)
    assert "failed (ownpage_unavailable)" in line


def test_an_unreachable_aws_endpoint_is_one_line_and_exit_status_5(
    stack: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given AWS (the source table, the secret, the run table) unreachable
    monkeypatch.setenv("AWS_ENDPOINT_URL", NOWHERE)
    # When a plan runs, and the history is read
    plan = main(["plan", "--no-progress"])
    plan_errors = errors(capsys)
    history = main(["history"])
    history_errors = errors(capsys)
    # Then each is one line naming what could not be reached, with the failed status
    assert plan == history == exit_codes.FAILED
    (plan_line,) = plan_errors
    assert "Secrets Manager unreachable" in plan_line
    (history_line,) = history_errors
    assert f"DynamoDB GetItem on run table {stack['RUN_TABLE']!r} failed: EndpointConnectionError" in history_line


def test_a_missing_queue_is_one_line_and_exit_status_2(
    stack: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a dead-letter queue URL of a queue that does not exist
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", stack["DEAD_LETTER_QUEUE_URL"] + "-gone")
    # When the operator looks at it
    code = main(["dlq", "--wait", "0"])
    # Then one line names the refused call and why, with the configuration status
    assert code == exit_codes.CONFIGURATION
    (line,) = errors(capsys)
    assert line.startswith(PREFIX + "AWS refused GetQueueAttributes: ")


def test_an_unwritable_export_path_stops_the_run_before_any_call(
    stack: dict[str, str], emulator: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a run asked to export its plan into a directory that does not exist
    target = tmp_path / "no-such-dir" / "plan.csv"
    # When it runs
    code = main(["run", "--no-progress", "--export-plan", str(target)])
    # Then it stops with one line naming the path, before reading or writing Ownpage
    assert code == exit_codes.CONFIGURATION
    assert capsys.readouterr().err.splitlines() == [
        PREFIX + f"export file {str(target)!r}: directory {str(target.parent)!r} does not exist"
    ]
    assert emulator.state.requests == []
