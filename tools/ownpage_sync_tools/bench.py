"""`make bench`: throughput and memory of the sync's stages, printed as numbers (no assertions).

Each stage runs against the real pieces available here: the pure planner, the Ownpage client over
HTTP against the emulator, the whole run with and without faults, and the SQL source streaming from
PostgreSQL when it is running. moto is not DynamoDB: its scan rate is shown for scale only."""

from __future__ import annotations

import argparse
import os
import resource
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from ownpage_sync.deadline import Deadline
from ownpage_sync.planner import plan_changes
from ownpage_sync.secrets import OwnpageCredentials
from ownpage_sync.settings import Settings
from ownpage_sync.sources.snapshot import build_snapshot
from ownpage_sync.sync import RunRequest, SyncServices, run_sync

from ownpage_sync_tools.scenario import ScenarioSource, make_scenario

ROWS: list[tuple[str, str, str, str]] = []


def measure(label: str, size: int, action: Callable[[], Any], trace: bool = False) -> Any:
    """Time a stage. Memory: tracemalloc's peak for in-process pure stages (`trace`), else the process's
    max RSS so far (tracemalloc would slow the in-process emulator too and distort the time)."""
    if trace:
        tracemalloc.start()
    began = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - began
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        memory = f"{peak / 2**20:6.1f} MiB peak"
    else:
        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:6.0f} MiB RSS"
    ROWS.append((label, f"{size:,}", f"{elapsed:6.2f} s", memory))
    return result


def _settings(url: str, **extra: str) -> Settings:
    env = {
        "OWNPAGE_API_URL": url,
        "OWNPAGE_LIST_ID": "1",
        "OWNPAGE_CLIENT": "demo",
        "OWNPAGE_API_KEY": "demo-key",
        "SOURCE_KIND": "dynamodb",
        "SOURCE_TABLE": "unused",
        **extra,
    }
    return Settings.from_env(env)


def bench_sync(size: int, faults: dict[str, Any] | None, label: str) -> None:
    from ownpage_sync.ownpage import OwnpageClient

    from ownpage_sync_tools.emulator import EmulatorServer

    scenario = make_scenario(size, drift=0.01)
    with EmulatorServer(port=0) as emulator:
        emulator.state.seed(1, scenario.seed_rows())
        if faults:
            emulator.set_faults(**faults)
        settings = _settings(emulator.url, OWNPAGE_MAX_ATTEMPTS="12")
        deadline = Deadline.unlimited()
        client = OwnpageClient(settings.ownpage, OwnpageCredentials("demo", "demo-key"), deadline)
        services = SyncServices(source=ScenarioSource(scenario), ownpage=client)
        report = measure(label, size, lambda: run_sync(settings, services, RunRequest(), deadline))
        calls = len(emulator.state.requests)
        ROWS.append((f"  └ outcome {report.outcome}, {calls} HTTP calls", "", "", ""))


def bench_core(size: int) -> None:
    scenario = make_scenario(size, drift=0.01)
    source = ScenarioSource(scenario)
    snapshot = measure(
        "normalise + validate source (build_snapshot)", size, lambda: build_snapshot(source.scan()), trace=True
    )
    from ownpage_sync.models import OwnpageSubscriber

    ownpage = [
        OwnpageSubscriber(
            email=row["email"],
            subscribed=row["subscribed"],
            guid=row["guid"],
            data={"firstname": row["data_firstname"], "city": row["data_city"]},
            unsubscribed_cause=row.get("unsubscribed_cause"),
        )
        for row in scenario.seed_rows()
    ]
    measure("plan (pure planner)", size, lambda: plan_changes(snapshot.records, ownpage), trace=True)


def bench_read(size: int) -> None:
    from ownpage_sync.ownpage import OwnpageClient

    from ownpage_sync_tools.emulator import EmulatorServer

    scenario = make_scenario(size, drift=0.01)
    with EmulatorServer(port=0) as emulator:
        emulator.state.seed(1, scenario.seed_rows())
        settings = _settings(emulator.url)
        client = OwnpageClient(settings.ownpage, OwnpageCredentials("demo", "demo-key"), Deadline.unlimited())
        measure("read Ownpage list over HTTP (10k pages)", size, lambda: sum(1 for _ in client.iter_subscribers(1)))


def bench_postgresql(size: int) -> None:
    try:
        import pg8000.native
    except ImportError:
        return
    try:
        connection = pg8000.native.Connection("postgres", host="127.0.0.1", database="test", timeout=3)
    except Exception as exc:  # the benchmark reports what it could not measure instead of failing
        ROWS.append((f"PostgreSQL source: not measured ({type(exc).__name__})", "", "", ""))
        return
    connection.run("DROP TABLE IF EXISTS bench_subscribers")
    connection.run(
        "CREATE TABLE bench_subscribers AS SELECT 'reader.' || g || '@example.org' AS email, 'u' || g AS guid,"
        " 'Anne' AS data_firstname FROM generate_series(1, :n) AS g",
        n=size,
    )
    connection.close()
    from ownpage_sync.sources.factory import open_source

    settings = Settings.from_env(
        {
            "OWNPAGE_LIST_ID": "1",
            "OWNPAGE_CLIENT": "demo",
            "OWNPAGE_API_KEY": "demo-key",
            "SOURCE_KIND": "postgresql",
            "SOURCE_DSN": "postgresql://postgres@127.0.0.1:5432/test",
            "SOURCE_TLS": "disable",
            "SOURCE_QUERY": "SELECT email, guid, data_firstname FROM bench_subscribers",
        }
    )
    source = open_source(settings.source)
    measure("PostgreSQL source streamed + snapshot", size, lambda: len(build_snapshot(source.scan()).records))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=100_000)
    args = parser.parse_args(argv)
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    bench_core(args.size)
    bench_read(args.size)
    bench_sync(args.size, None, "whole run, 1% drift (in-memory source, emulator)")
    bench_sync(
        args.size,
        {
            "error_rate": 0.3,
            "error_status": 503,
            "retry_after": 1,
            "drop_rate": 0.05,
            "token_lifetime_calls": 5,
            "seed": 1,
        },
        "same, 30% 503 + Retry-After 1, 5% drops, token/5 calls",
    )
    bench_postgresql(2 * args.size)
    widths = [max(len(row[i]) for row in ROWS) for i in range(4)]
    print(f"{'stage':<{widths[0]}}  {'rows':>{widths[1]}}  {'time':>{widths[2]}}  {'memory':>{widths[3]}}")
    for row in ROWS:
        print(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
