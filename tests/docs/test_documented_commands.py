"""Every `ownpage-sync` command of the documentation's shell blocks runs as written against the local
stack: the stacks of samconfig.toml (staging and production, by their names) deployed into moto's
CloudFormation, their source in moto's DynamoDB, their secret in moto's Secrets Manager, Ownpage
played by the emulator.

Not run: the deploy itself (`sam`, `make build`) and the AWS CLI lines (`aws ...`, `export ...`), the
emulator (it serves until Ctrl-C), and docs/sources.md's walk-through (a local PostgreSQL session by
hand). `plan --remote` invokes SyncFunction: moto cannot invoke a Lambda function without Docker, so
the invoke seam runs the deployed function's real handler in-process (tests/template/stack.py), and
the exports come back through the stack's bucket in moto's S3.

A command passes when it exits 0, or with a status its own comment names after "exit", and prints
no traceback and no address.
"""

from __future__ import annotations

import os
import re
import shlex
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ownpage_sync_tools import remote
from ownpage_sync_tools.cli import main
from ownpage_sync_tools.emulator import EmulatorServer
from ownpage_sync_tools.localstack import DEMO_CREDENTIALS
from ownpage_sync_tools.scenario import make_scenario
from ownpage_sync_tools.stack_config import CONTRACT, OUTPUT_VARIABLES

from tests.integration.helpers import assert_no_leak, raw_addresses
from tests.template.stack import deploy_for_emulator, function_environment, in_process_invoker

pytestmark = [pytest.mark.template, pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")]

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = {"sources.md": "a walk-through against a local PostgreSQL, typed by hand"}
SCENARIO = make_scenario(300, drift=0.03)


@dataclass(frozen=True)
class Command:
    document: str
    line: int
    text: str
    argv: list[str]
    allowed: frozenset[int]

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {self.text}"


def documented_commands() -> list[Command]:
    """Each `ownpage-sync ...` line of a ```sh block, continuation lines joined."""
    found = []
    for path in DOCUMENTS:
        if path.name in NOT_RUN:
            continue
        text = path.read_text(encoding="utf-8")
        for block in re.finditer(r"^ *```sh\n(.*?)^ *```", text, re.S | re.M):
            first_line = text[: block.start(1)].count("\n") + 1
            logical = ""
            for offset, raw in enumerate(block.group(1).splitlines()):
                logical += raw.rstrip("\\").strip() + " "
                if raw.rstrip().endswith("\\"):
                    continue
                line, logical = logical.strip(), ""
                if not line.removeprefix(".venv/bin/").startswith("ownpage-sync "):
                    continue  # not ours to run (sam, make, the AWS CLI, export...)
                words = shlex.split(line, comments=True)
                if words[1:2] == ["emulator"]:
                    continue
                comment = line.split(" #", 1)[1] if " #" in line else ""
                after_exit = comment.split("exit", 1)[1] if "exit" in comment else ""
                allowed = frozenset({0} | {int(n) for n in re.findall(r"\b(\d{1,3})\b", after_exit)})
                found.append(Command(path.name, first_line + offset, line, words[1:], allowed))
    return found


COMMANDS = documented_commands()


def samconfig_stacks() -> dict[str, str]:
    """Environment -> stack name, as samconfig.toml deploys them."""
    config = tomllib.loads((ROOT / "samconfig.toml").read_text(encoding="utf-8"))
    return {env: values["global"]["parameters"]["stack_name"] for env, values in config.items() if env != "version"}


@pytest.fixture(scope="module")
def ownpage() -> Iterator[EmulatorServer]:
    server = EmulatorServer(port=0, credentials={DEMO_CREDENTIALS["client"]: DEMO_CREDENTIALS["api_key"]})
    server.start()
    server.state.seed(1, SCENARIO.seed_rows())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stacks(moto_server: str, ownpage: EmulatorServer) -> dict[str, dict[str, str]]:
    """samconfig.toml's stacks, deployed under their own names, each with the secret docs/deploy.md creates."""
    return {
        name: deploy_for_emulator(
            moto_server, ownpage.url, name, SCENARIO.dynamodb_items(), secret_name=f"ownpage-sync/{env}/ownpage"
        )
        for env, name in samconfig_stacks().items()
        for env in [env.replace("default", "staging")]
    }


@pytest.fixture
def terminal(
    aws: str, stacks: dict[str, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, dict[str, str]]:
    """An operator's terminal in an empty directory. For the commands written without --stack, the
    configuration is set the runbook's way by hand: the production stack's names and its
    SyncFunction's settings."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if CONTRACT.match(name):
            monkeypatch.delenv(name)
    production = stacks[samconfig_stacks()["production"]]
    by_hand = {variable: production[key] for key, variable in OUTPUT_VARIABLES.items()}
    by_hand |= function_environment(aws, production["SyncFunctionName"])
    for name, value in by_hand.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(remote, "invoke_function", in_process_invoker(aws))
    return stacks


def test_the_documentation_has_commands_to_run() -> None:
    # A broken extraction must not pass for "every command ran"
    assert len(COMMANDS) >= 10, [str(c) for c in COMMANDS]
    assert {c.argv[0] for c in COMMANDS} >= {"plan", "history", "dlq"}
    assert any("--remote" in c.argv for c in COMMANDS) and all(
        "--stack" in c.argv for c in COMMANDS if c.document == "deploy.md"
    )


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.document}:{c.line}" for c in COMMANDS])
def test_a_documented_command_runs_as_written(
    command: Command, terminal: dict[str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the local stack, and a command exactly as the documentation writes it
    # When it runs
    code = main(command.argv)
    printed = capsys.readouterr()
    # Then it exits as documented, without a traceback, and prints no address
    assert code in command.allowed, f"{command}\n-> exit {code}: {printed.err.strip().splitlines()[-1:]}"
    assert "Traceback" not in printed.err
    assert_no_leak(printed.out + printed.err, raw_addresses(SCENARIO))
