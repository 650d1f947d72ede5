"""The CLI's error contract: every failure is one line on stderr, `ownpage-sync: error: ...`, with the
documented exit status; a traceback only with --debug. (docs/cli.md, "Exit status")"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ownpage_sync_tools.cli import exit_codes, main

from tests.unit.test_settings import FAILURES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "ownpage-sync: error: "
SETTING = re.compile(r"^(OWNPAGE|SOURCE|RETRY|DEAD|RUN|MAX|UNSUBSCRIBE|SUPPRESS|DEADLINE|EXPORT)_")


@pytest.fixture(autouse=True)
def _no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what each test sets: nothing from the shell that runs the tests."""
    for name in list(os.environ):
        if SETTING.match(name):
            monkeypatch.delenv(name)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.splitlines()


def assert_one_error_line(err: list[str], *phrases: str) -> None:
    assert len(err) == 1, err
    assert err[0].startswith(PREFIX), err[0]
    for phrase in phrases:
        assert phrase in err[0], (phrase, err[0])


@pytest.mark.parametrize(
    ("base", "changes", "variable", "phrase"), FAILURES, ids=[f"{row[2]}:{row[1]}" for row in FAILURES]
)
def test_every_malformed_setting_is_one_line_and_exit_status_2(
    base: dict[str, str],
    changes: dict[str, str | None],
    variable: str,
    phrase: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Given the environment of docs/configuration.md with one setting missing or malformed
    for name, value in {**base, **changes}.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    # When the operator runs a plan (the network is blocked: nothing may be called)
    code, out, err = run(["plan", "--no-progress"], capsys)
    # Then one line names the variable and what is wrong, with the configuration status, and no traceback
    assert code == exit_codes.CONFIGURATION
    assert_one_error_line(err, f"{variable}: ", phrase)
    assert out == ""


@pytest.mark.parametrize(
    ("argv", "variable"),
    [
        (["history"], "RUN_TABLE"),
        (["dlq"], "DEAD_LETTER_QUEUE_URL"),
        (["redrive"], "DEAD_LETTER_QUEUE_URL"),
        (["retry"], "RETRY_QUEUE_URL"),
    ],
)
def test_each_operator_command_names_its_missing_setting(
    argv: list[str], variable: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given none of the stack's names in the environment
    # When an operator command runs
    code, _, err = run(argv, capsys)
    # Then one line names the variable it needs, with the configuration status
    assert code == exit_codes.CONFIGURATION
    assert_one_error_line(err, f"{variable}: is required")


def test_a_malformed_log_level_is_one_line_in_a_fresh_process_too() -> None:
    # Given LOG_LEVEL naming no level before anything is imported (Powertools reads it at import)
    env = {**os.environ, "LOG_LEVEL": "verbose"}
    # When a command and a Lambda handler's module start with it
    cli = subprocess.run(
        [str(Path(sys.executable).parent / "ownpage-sync"), "history"], env=env, capture_output=True, text=True
    )
    handler = subprocess.run(
        [sys.executable, "-c", "import ownpage_sync.observability"], env=env, capture_output=True, text=True
    )
    # Then the command says so in one line with the configuration status, and nothing fails at import
    assert cli.returncode == exit_codes.CONFIGURATION
    assert_one_error_line(cli.stderr.splitlines(), "LOG_LEVEL: must be one of")
    assert handler.returncode == 0, handler.stderr


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["launch"], "invalid choice: 'launch'"),
        (["history", "--limit", "lots"], "expected a whole number, got 'lots'"),
        (["dlq", "--max-messages", "0"], "must be at least 1"),
        (["run", "--max-unsubscribe", "-1"], "--max-unsubscribe must be at least 0"),
        (["plan", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        ([], "the following arguments are required: command"),
        (["history", "--stack"], "argument --stack: expected one argument"),
        (["emulator", "--port", "99999"], "argument --port: expected a port from 0 to 65535, got '99999'"),
    ],
)
def test_a_malformed_command_line_is_one_line_not_a_usage_block(
    argv: list[str], phrase: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # (`run` gets a valid configuration, so the flag is what fails)
    monkeypatch.setenv("OWNPAGE_LIST_ID", "1")
    monkeypatch.setenv("OWNPAGE_CLIENT", "c")
    monkeypatch.setenv("OWNPAGE_API_KEY", "k")
    monkeypatch.setenv("SOURCE_TABLE", "t")
    # When the command line is wrong
    code, _, err = run(argv, capsys)
    # Then one line says what, with the configuration status
    assert code == exit_codes.CONFIGURATION
    assert_one_error_line(err, phrase)


def test_an_unexpected_error_is_one_line_without_an_address_and_a_traceback_only_with_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a command that fails with a bug whose message quotes an address
    from ownpage_sync_tools.cli import history_command

    def broken(_: Any) -> int:
        raise KeyError("jeanne.martin@example.org")

    monkeypatch.setattr(history_command, "history", broken)
    # When it runs without, then with --debug (before or after the command)
    code, _, err = run(["history"], capsys)
    debug_code, _, debug_err = run(["history", "--debug"], capsys)
    before_code, _, before_err = run(["--debug", "history"], capsys)
    # Then it is exit status 1 and one line naming the exception, the address masked
    assert code == exit_codes.UNEXPECTED
    assert_one_error_line(err, "unexpected KeyError", "<address>", "--debug")
    assert "jeanne.martin" not in "\n".join(err + debug_err + before_err)
    # And --debug adds the traceback before that same line
    assert debug_code == before_code == exit_codes.UNEXPECTED
    for lines in (debug_err, before_err):
        assert lines[0] == "Traceback (most recent call last):"
        assert lines[-1] == err[0]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    # When the operator asks for the version
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    # Then it is printed on stdout, and the exit status is 0
    assert exited.value.code == 0
    assert re.fullmatch(r"ownpage-sync \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)


def test_the_exit_statuses_are_the_documented_ones() -> None:
    # Given the table of docs/cli.md and the constants the commands use
    table = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8").split("## Exit status", 1)[1]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.MULTILINE)}
    defined = {value for name, value in vars(exit_codes).items() if name.isupper() and isinstance(value, int)}
    # Then each is documented, and no two meanings share a status
    assert documented == defined
    names = [name for name, value in vars(exit_codes).items() if name.isupper() and isinstance(value, int)]
    assert len(set(defined)) == len(names)


def test_a_malformed_log_level_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "verbose")
    code, _, err = run(["history"], capsys)
    assert code == exit_codes.CONFIGURATION
    assert_one_error_line(err, "LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'verbose'")


@pytest.mark.parametrize(
    ("error", "status", "line"),
    [
        (
            ("AccessDeniedException", "User u is not authorized to perform: lambda:GetFunctionConfiguration"),
            exit_codes.CONFIGURATION,
            "AWS refused GetFunctionConfiguration: AccessDeniedException (User u is not authorized",
        ),
        (("ThrottlingException", "Rate exceeded"), exit_codes.FAILED, "AWS refused GetFunctionConfiguration: Thr"),
        (("403", ""), exit_codes.CONFIGURATION, "AWS refused GetFunctionConfiguration: 403"),
    ],
)
def test_aws_refusals_say_which_call_and_why_with_the_status_of_their_cause(
    error: tuple[str, str], status: int, line: str
) -> None:
    from botocore.exceptions import ClientError
    from ownpage_sync_tools.cli.errors import describe

    # Given AWS refusing a call: a denial is a setup problem (2), throttling a passing one (5)
    exc = ClientError({"Error": {"Code": error[0], "Message": error[1]}}, "GetFunctionConfiguration")
    # Then the line names the call, the code and AWS's message
    assert describe(exc)[0] == status
    assert describe(exc)[1].startswith(line)


def test_missing_aws_credentials_or_region_are_configuration_errors() -> None:
    from botocore.exceptions import NoCredentialsError, NoRegionError
    from ownpage_sync_tools.cli.errors import describe

    assert describe(NoCredentialsError()) == (
        exit_codes.CONFIGURATION,
        "AWS credentials: Unable to locate credentials (set AWS_PROFILE, or run `aws sso login`)",
    )
    assert describe(NoRegionError())[0] == exit_codes.CONFIGURATION
    assert "AWS_DEFAULT_REGION" in describe(NoRegionError())[1]
