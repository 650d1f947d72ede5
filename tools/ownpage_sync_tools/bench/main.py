"""The orchestrator: for each (source, size) a data-building process, then a measuring process
(bench.runner), then the tables. Exits 1 when a run did not converge or a case crashed."""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ownpage_sync_tools.bench import tables
from ownpage_sync_tools.bench.data import Case, drop_postgresql
from ownpage_sync_tools.bench.queueing import queueing_table

SIZES = (10_000, 100_000, 1_000_000)
SOURCES = ("postgresql", "dynamodb")
DYNAMODB_MAX = 10_000  # moto holds a table in Python objects and scans it slowly
FAULTS_SIZE = 100_000


@dataclass
class CaseOutcome:
    case: Case
    result: dict[str, Any] = field(default_factory=dict)
    crashed: str | None = None  # what went wrong, when a child failed

    @property
    def failed_checks(self) -> list[dict[str, Any]]:
        checks = list(self.result.get("checks", []))
        checks += self.result.get("faults", {}).get("checks", [])
        return [check for check in checks if not check["ok"]]

    @property
    def ok(self) -> bool:
        return self.crashed is None and "checks" in self.result and not self.failed_checks


def _child(module: str, case_file: Path, log: Path) -> str | None:
    """Run a child process; None when it succeeded, else the tail of its stderr."""
    with log.open("wb") as stderr:
        status = subprocess.run(
            [sys.executable, "-m", module, str(case_file)], stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr
        ).returncode
    if status == 0:
        return None
    tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-15:]
    return f"{module} exited {status}:\n    " + "\n    ".join(tail)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def moto_server(workdir: Path) -> Iterator[str]:
    """moto in server mode, in a process of its own (its memory is not the run's)."""
    port = _free_port()
    with (workdir / "moto.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_case(case: Case) -> CaseOutcome:
    workdir = Path(case.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    case_file = workdir / "case.json"
    case.save(case_file)
    outcome = CaseOutcome(case)
    try:
        outcome.crashed = _child("ownpage_sync_tools.bench.data", case_file, workdir / "build.log")
        if outcome.crashed is None:
            outcome.crashed = _child("ownpage_sync_tools.bench.runner", case_file, workdir / "run.log")
        if case.result_file.exists():
            outcome.result = json.loads(case.result_file.read_text(encoding="utf-8"))
    finally:
        if case.source == "postgresql":
            try:
                drop_postgresql(case.table)
            except Exception as exc:  # the table is the bench's own; a leftover is only noted
                print(f"note: could not drop {case.table}: {exc}", file=sys.stderr)
        case.seed_file.unlink(missing_ok=True)
    return outcome


def plan_cases(args: argparse.Namespace, root: Path) -> list[Case]:
    cases = []
    pg_sizes = sorted(set(args.sizes)) if "postgresql" in args.sources else []
    faults_at = max((size for size in pg_sizes if size <= FAULTS_SIZE), default=None) if args.faults else None
    latency_at = max(pg_sizes, default=None) if args.latency else None
    profile_at = max(pg_sizes, default=None) if args.profile else None
    for source in args.sources:
        for size in sorted(set(args.sizes)):
            if source == "dynamodb" and size > args.dynamodb_max:
                continue
            postgresql = source == "postgresql"
            name = f"{source}-{size}"
            workdir = root / name
            cases.append(
                Case(
                    source=source,
                    size=size,
                    workdir=str(workdir),
                    table=f"ownpage_bench_{size}_{os.getpid()}" if postgresql else f"ownpage-bench-{size}",
                    latency=postgresql and size == latency_at,
                    faults=postgresql and size == faults_at,
                    profile=str(workdir / "run.prof") if postgresql and size == profile_at else None,
                )
            )
    return cases


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ownpage_sync_tools.bench", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="subscribers per run")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument(
        "--dynamodb-max", type=int, default=DYNAMODB_MAX, help="largest size run with DynamoDB in moto (slow)"
    )
    parser.add_argument("--no-latency", dest="latency", action="store_false", help="skip the 1 s latency table")
    parser.add_argument("--no-faults", dest="faults", action="store_false", help="skip the run under faults")
    parser.add_argument("--profile", action="store_true", help="cProfile the largest PostgreSQL run (slower)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, results)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    root = Path(tempfile.mkdtemp(prefix="ownpage-bench-"))
    outcomes: list[CaseOutcome] = []
    began = time.monotonic()
    try:
        cases = plan_cases(args, root)
        if not cases:
            print("nothing to run: no size fits the chosen sources (see --dynamodb-max)", file=sys.stderr)
            return 2
        print(tables.header(platform.python_version(), os.cpu_count() or 0), flush=True)
        needs_moto = any(case.source == "dynamodb" for case in cases)
        with moto_server(root) if needs_moto else _nothing() as endpoint:
            for case in cases:
                case.aws_endpoint = endpoint
                print(f"  … {case.source} at {case.size:,}", file=sys.stderr, flush=True)
                outcomes.append(run_case(case))
        print(tables.render(outcomes, args.dynamodb_max, time.monotonic() - began))
        print(queueing_table())
        for outcome in outcomes:
            if outcome.case.profile and Path(outcome.case.profile).exists():
                print(tables.profile_table(pstats.Stats(outcome.case.profile), outcome.case.size))
    finally:
        if args.keep:
            print(f"work directory kept: {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if outcomes and all(outcome.ok for outcome in outcomes) else 1


@contextmanager
def _nothing() -> Iterator[None]:
    yield None
