"""docs/operations.md's `ownpage-sync history` example is what the command prints: the test runs the
documented command line on a run table holding the documented runs, and compares the output."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from ownpage_sync.run_ledger import DynamoDbRunLedger
from ownpage_sync_tools.cli import main
from ownpage_sync_tools.localstack import aws_client, create_run_table

pytestmark = pytest.mark.integration

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
LEASE_SECONDS = 960  # the template's RUN_LEASE_SECONDS


def documented_example() -> tuple[str, list[str]]:
    """The `$ ... ownpage-sync history ...` line and the output printed under it."""
    blocks = re.findall(r"```\n(\$ [^\n]*ownpage-sync history[^\n]*)\n(.*?)```", OPERATIONS.read_text(), re.S)
    assert len(blocks) == 1, "docs/operations.md should hold one `$ ... ownpage-sync history` example"
    command, output = blocks[0]
    return command[2:], output.rstrip("\n").splitlines()


class Clock:
    def __init__(self, at: str):
        self.now = datetime.fromisoformat(at).replace(tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def test_the_documented_history_example_is_the_real_output(
    aws: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the documented command line, its RUN_TABLE=... assignment included
    command, expected = documented_example()
    words = shlex.split(command)
    program = words.index("ownpage-sync")
    env = dict(assignment.split("=", 1) for assignment in words[:program])
    argv = words[program + 1 :]
    table = env["RUN_TABLE"]
    # ... and that table holding the runs the example shows: one that died at 05:30 (its lease expired
    # unreleased), one not converged at 06:00 after 14m58s, one converged at 06:15 after 2m41s
    create_run_table(aws_client(aws, "dynamodb"), table)
    counts = {"source": 120431, "ownpage_subscribed": 121002, "to_subscribe": 12, "to_unsubscribe": 3}
    counts |= {"to_update": 40, "suppressed": 88, "unchanged": 120376, "queued": 0, "failed": 0}
    clock = Clock("2025-03-01T05:30:00")
    ledger = DynamoDbRunLedger(table, client=aws_client(aws, "dynamodb"), clock=clock)
    ledger.acquire("20250301T053000Z-77e0b3d9", LEASE_SECONDS)
    for run_id, start, took, outcome, changes in (
        ("20250301T060000Z-3f9c2a71", "2025-03-01T06:00:00", 898, "not_converged", {"source": 120420, "queued": 55}),
        ("20250301T061500Z-9a0c11e2", "2025-03-01T06:15:00", 161, "converged", {}),
    ):
        clock.now = Clock(start).now
        ledger.acquire(run_id, LEASE_SECONDS)
        clock.advance(seconds=took)
        ledger.release(run_id, outcome, counts | changes)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # When the documented command runs
    code = main(argv)
    # Then it prints exactly what the documentation shows
    assert code == 0
    assert capsys.readouterr().out.rstrip("\n").splitlines() == expected
