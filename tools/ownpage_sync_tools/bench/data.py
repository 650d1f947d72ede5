"""A benchmark case's data, built before anything is timed: the Ownpage emulator's seed file, the
source (a PostgreSQL table loaded with COPY FROM STDIN, or a DynamoDB table in moto), and what the
converged list must hold, as order-free digests so a million rows are checked in seconds.

Run as `python -m ownpage_sync_tools.bench.data CASE.json` (a process of its own: the scenario's
Python objects, about 900 MiB at 1M, must not inflate the measured run's memory)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from ownpage_sync.emails import canonical_key

from ownpage_sync_tools.scenario import Scenario, make_scenario
from ownpage_sync_tools.sql_seed import COLUMNS, connect_local

DRIFT = 0.01
SUPPRESSING = ("READER", "HARD_BOUNCE", "MULTIPLE_BOUNCES")
COPY_CHUNK = 1 << 20  # bytes per COPY FROM STDIN message
_MASK = (1 << 64) - 1


@dataclass
class Case:
    """One benchmark case, as handed from the orchestrator to its child processes (a JSON file)."""

    source: str  # postgresql | dynamodb
    size: int
    workdir: str
    table: str
    aws_endpoint: str | None = None
    latency: bool = False  # also the read with 1 s per call, sequential and pooled
    faults: bool = False  # also a run under Ownpage faults
    profile: str | None = None  # cProfile output path for the run, if asked

    @property
    def seed_file(self) -> Path:
        return Path(self.workdir) / "ownpage-seed.jsonl"

    @property
    def expectation_file(self) -> Path:
        return Path(self.workdir) / "expected.json"

    @property
    def result_file(self) -> Path:
        return Path(self.workdir) / "result.json"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Case:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


class Digest:
    """An order-independent digest of a set of tuples: their count and the sum of their hashes."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    def add(self, *fields: object) -> None:
        text = "\x1f".join("" if value is None else str(value) for value in fields)
        self.total = (self.total + int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest())) & _MASK
        self.count += 1

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "sum": self.total}


@dataclass
class Expectation:
    """What Ownpage must hold once the run converged, and the first plan's counts."""

    plan: dict[str, int] = field(default_factory=dict)
    subscribed: dict[str, int] = field(default_factory=dict)  # digest of (key, guid, firstname, city)
    suppressed: dict[str, int] = field(default_factory=dict)  # digest of (key, cause)
    seeded_rows: int = 0  # every one must still be there, its history intact
    total_rows: int = 0
    source_rows: int = 0


def expectation(scenario: Scenario) -> Expectation:
    eligible = scenario.eligible_emails()
    subscribed = Digest()
    for item in scenario.source_items:
        key = canonical_key(item["email"])
        if key in eligible:
            subscribed.add(key, item["user_id"], item["first_name"], item["city"])
    suppressed = Digest()
    for row in scenario.ownpage_rows:
        if row.get("_suppressed"):
            suppressed.add(canonical_key(row["email"]), row["unsubscribed_cause"])
    new = scenario.expected["to_subscribe"] - scenario.expected["to_resubscribe"]
    return Expectation(
        plan=dict(scenario.expected),
        subscribed=subscribed.to_dict(),
        suppressed=suppressed.to_dict(),
        seeded_rows=len(scenario.ownpage_rows),
        total_rows=len(scenario.ownpage_rows) + new,
        source_rows=len(scenario.source_items),
    )


def write_seed_file(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """JSON Lines for the emulator's --seed-file (as cli.emulator_command.write_seed_file writes them)."""
    encode = msgspec.json.Encoder().encode
    with path.open("wb") as handle:
        for row in rows:
            handle.write(encode(row))
            handle.write(b"\n")


# -- the source ---------------------------------------------------------------------------------------


def _copy_text(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    text = str(value)
    if any(c in text for c in "\\\t\n\r"):
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def _copy_chunks(items: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    lines: list[str] = []
    size = 0
    for item in items:
        line = "\t".join(_copy_text(item[column]) for column in COLUMNS) + "\n"
        lines.append(line)
        size += len(line)
        if size >= COPY_CHUNK:
            yield "".join(lines).encode("utf-8")
            lines, size = [], 0
    if lines:
        yield "".join(lines).encode("utf-8")


def load_postgresql(table: str, items: Iterable[dict[str, Any]]) -> None:
    """(Re)create `table` as sql_seed does, loaded with one COPY FROM STDIN (a million rows in seconds)."""
    connection = connect_local("postgresql")
    try:
        connection.run(f"DROP TABLE IF EXISTS {table}")
        connection.run(
            f"CREATE TABLE {table} (user_id VARCHAR(20) PRIMARY KEY, email VARCHAR(320), newsletter BOOLEAN,"
            " first_name VARCHAR(100), city VARCHAR(100), consented_at TIMESTAMPTZ)"
        )
        connection.run(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN", stream=_copy_chunks(items))
        connection.run(f"ANALYZE {table}")
    finally:
        connection.close()


def drop_postgresql(table: str) -> None:
    connection = connect_local("postgresql")
    try:
        connection.run(f"DROP TABLE IF EXISTS {table}")
    finally:
        connection.close()


def load_dynamodb(endpoint: str, table: str, items: Iterable[dict[str, Any]]) -> None:
    from ownpage_sync_tools.localstack import aws_client, create_source_table, seed_source

    create_source_table(aws_client(endpoint, "dynamodb"), table)
    seed_source(endpoint, table, items)


def build(case: Case) -> None:
    scenario = make_scenario(case.size, drift=DRIFT)
    write_seed_file(case.seed_file, scenario.seed_rows())
    if case.source == "postgresql":
        load_postgresql(case.table, scenario.dynamodb_items())
    elif case.source == "dynamodb":
        assert case.aws_endpoint is not None
        load_dynamodb(case.aws_endpoint, case.table, scenario.dynamodb_items())
    else:
        raise ValueError(f"unknown source {case.source!r}")
    case.expectation_file.write_text(json.dumps(asdict(expectation(scenario))), encoding="utf-8")


if __name__ == "__main__":
    build(Case.load(Path(sys.argv[1])))
