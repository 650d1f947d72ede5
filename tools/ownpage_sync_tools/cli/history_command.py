"""`ownpage-sync history`: the run lease and the last runs, from the run table (RUN_TABLE).

Only RUN_TABLE is read: looking at the history must not need the Ownpage or source settings."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ownpage_sync.errors import ConfigurationError
from ownpage_sync.ports import RunRecord
from ownpage_sync.run_ledger import DynamoDbRunLedger, Lease

from ownpage_sync_tools.cli import exit_codes

# The run's counts (RunReport.counts()) a row shows: what was read and planned, in this order, then
# what did not go through, when there was any. Every count is in --json.
SHOWN_COUNTS = ("source", "ownpage_subscribed", "to_subscribe", "to_unsubscribe", "to_update", "suppressed")
SHOWN_WHEN_NOT_ZERO = ("queued", "deferred", "rejected", "failed")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "history",
        help="show the run lease and the last runs",
        description="Show who holds the run lease and the last runs (newest first) from RUN_TABLE.",
    )
    parser.add_argument("--limit", type=_positive, default=20, help="how many runs to show (default 20)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=history, stack_function=None)


def history(args: argparse.Namespace) -> int:
    table = os.environ.get("RUN_TABLE", "").strip()
    if not table:
        raise ConfigurationError(
            "RUN_TABLE: is required for `history` (the DynamoDB table holding the run lease and history: "
            "the stack's RunTableName output, or use --stack NAME)"
        )
    ledger = DynamoDbRunLedger(table, client=_dynamodb())
    lease = ledger.lease()
    runs = ledger.history(args.limit)
    now = datetime.now(UTC)
    if args.json:
        print(json.dumps({"lease": _lease_json(lease, now), "runs": [_run_json(run) for run in runs]}, indent=2))
    else:
        print(render(lease, runs, now))
    return exit_codes.OK


def _dynamodb() -> Any:
    """A terminal waits for an answer: standard retries, and AWS_MAX_ATTEMPTS (botocore's own variable)
    decides how many, where the Lambda's ledger insists on four."""
    import boto3
    from botocore.config import Config

    return boto3.client("dynamodb", config=Config(connect_timeout=5, read_timeout=10, retries={"mode": "standard"}))


def render(lease: Lease | None, runs: Sequence[RunRecord], now: datetime) -> str:
    """The lease line, then one row per run: start (UTC), duration, outcome, run id, counts."""
    lines = [_lease_line(lease, now), ""]
    if not runs:
        lines.append("no runs recorded")
        return "\n".join(lines)
    rows = [("STARTED (UTC)", "DURATION", "OUTCOME", "RUN ID", "COUNTS")]
    for run in runs:
        duration = _duration((run.ended_at - run.started_at).total_seconds()) if run.ended_at else "-"
        rows.append((_clock(run.started_at), duration, run.outcome, run.run_id, _counts(run.counts)))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4])
    return "\n".join(line.rstrip() for line in lines)


def _lease_line(lease: Lease | None, now: datetime) -> str:
    if lease is None:
        return "lease: free"
    left = lease.seconds_left(now)
    if left <= 0:
        return f"lease: free (run {lease.run_id}'s lease expired at {_clock(lease.lease_until)} without a release)"
    return f"lease: held by run {lease.run_id} until {_clock(lease.lease_until)} ({_duration(left)} left)"


def _lease_json(lease: Lease | None, now: datetime) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {
        "run_id": lease.run_id,
        "acquired_at": lease.acquired_at.isoformat() if lease.acquired_at else None,
        "lease_until": lease.lease_until.isoformat(),
        "live": lease.seconds_left(now) > 0,
        "seconds_left": round(lease.seconds_left(now)),
    }


def _run_json(run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "started_at": run.started_at.isoformat(),
        "ended_at": run.ended_at.isoformat() if run.ended_at else None,
        "outcome": run.outcome,
        "counts": dict(run.counts),
    }


def _counts(counts: Mapping[str, int]) -> str:
    names = [name for name in SHOWN_COUNTS if name in counts]
    names += [name for name in SHOWN_WHEN_NOT_ZERO if counts.get(name)]
    return " ".join(f"{name}={counts[name]}" for name in names) or "-"


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float) -> str:
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"must be between 1 and 1000, got {value}")
    return value
