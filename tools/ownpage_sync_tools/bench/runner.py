"""One benchmark case in a fresh process: the I/O floor, one full sync (timed, its peak RSS taken
right after), the floor again, a dry run, Ownpage checked against the scenario; optionally the read
with 1 s of latency per call, sequential and pooled, and a run under Ownpage faults.

Run as `python -m ownpage_sync_tools.bench.runner CASE.json`; the result goes to the case's
result.json. The emulator runs in a child process (EmulatorProcess): its JSON work does not share
this process's GIL, and its memory is not this process's."""

from __future__ import annotations

import cProfile
import gc
import json
import logging
import os
import pstats
import resource
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ownpage_sync.deadline import Deadline
from ownpage_sync.planner import Planner
from ownpage_sync.read_proof import read_list
from ownpage_sync.report import Outcome, RunReport
from ownpage_sync.settings import Settings
from ownpage_sync.sync import RunRequest, SyncServices, run_sync
from ownpage_sync.wiring import ownpage_client, subscriber_source

from ownpage_sync_tools.bench.converge import Check, evidence_clean, nothing_left, ownpage_matches, plan_as_expected
from ownpage_sync_tools.bench.data import Case, Expectation
from ownpage_sync_tools.bench.floor import measure_floor
from ownpage_sync_tools.emulator import EmulatorProcess, Faults
from ownpage_sync_tools.localstack import DEMO_CREDENTIALS, aws_env
from ownpage_sync_tools.sql_seed import subscriber_query

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
LATENCY = 1.0
FAULTS = Faults(error_rate=0.3, error_status=503, retry_after=1, drop_rate=0.05, token_lifetime_calls=5, seed=1)


def environment(case: Case, api_url: str, **extra: str) -> dict[str, str]:
    env = {
        "OWNPAGE_API_URL": api_url,
        "OWNPAGE_LIST_ID": "1",
        "OWNPAGE_CLIENT": DEMO_CREDENTIALS["client"],
        "OWNPAGE_API_KEY": DEMO_CREDENTIALS["api_key"],
    }
    if case.source == "postgresql":
        env.update(
            SOURCE_KIND="postgresql", SOURCE_DSN=PG_DSN, SOURCE_TLS="disable", SOURCE_QUERY=subscriber_query(case.table)
        )
    else:
        env.update(
            SOURCE_KIND="dynamodb",
            SOURCE_TABLE=case.table,
            SOURCE_SUBSCRIBED_ATTRIBUTE="newsletter",
            SOURCE_GUID_ATTRIBUTE="user_id",
            SOURCE_CONSENT_ATTRIBUTE="consented_at",
            SOURCE_DATA_ATTRIBUTES="firstname=first_name,city=city",
        )
    return {**env, **extra}


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def current_rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() // 1024


@contextmanager
def profiled(path: str | None) -> Iterator[None]:
    """cProfile over every thread started meanwhile (the page readers, the COPY parser), merged."""
    if path is None:
        yield
        return
    profiles = [cProfile.Profile()]

    def start(*_: Any) -> None:
        profile = cProfile.Profile()
        profiles.append(profile)
        profile.enable()  # replaces this hook for the thread

    threading.setprofile(start)
    profiles[0].enable()
    try:
        yield
    finally:
        profiles[0].disable()
        threading.setprofile(None)
        stats = pstats.Stats(profiles[0])
        for profile in profiles[1:]:
            stats.add(profile)
        stats.dump_stats(path)


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread's, user and system (not the emulator's)."""
    times = os.times()
    return times.user + times.system


def sync(settings: Settings, dry_run: bool = False, profile: str | None = None) -> tuple[RunReport, float, float]:
    """One real run: the real source adapter and the real Ownpage client, as the Lambda wires them.
    Its report, wall seconds and CPU seconds."""
    deadline = Deadline.unlimited()
    client = ownpage_client(settings, deadline)
    services = SyncServices(source=subscriber_source(settings), ownpage=client)
    try:
        with profiled(profile):
            began, cpu = time.perf_counter(), cpu_seconds()
            report = run_sync(settings, services, RunRequest(dry_run=dry_run), deadline)
            seconds, cpu = time.perf_counter() - began, cpu_seconds() - cpu
        return report, seconds, cpu
    finally:
        client.close()


def classify(requests: list[Any]) -> dict[str, Any]:
    kinds: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for request in requests:
        listing = request.path.endswith("/subscribers")
        kinds["pages" if listing and request.method == "GET" else "writes" if listing else "other"] += 1
        statuses[str(request.status)] += 1
    return {"total": len(requests), **kinds, "statuses": dict(statuses)}


def run_report(report: RunReport, seconds: float, cpu: float) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "phases": dict(report.phases),
        "outcome": report.outcome,
        "counts": report.counts(),
        "read": report.read.to_dict() if report.read is not None else None,
        "error": report.error,
    }


def check_ownpage(emulator: EmulatorProcess, expected: Expectation) -> list[Check]:
    creds = DEMO_CREDENTIALS
    checks = ownpage_matches(emulator.url, creds["client"], creds["api_key"], expected)
    return [*checks, evidence_clean(emulator.control("GET", "evidence"), expected)]


def measured_run(case: Case, expected: Expectation, result: dict[str, Any]) -> None:
    with EmulatorProcess(seed_file=case.seed_file) as emulator:
        env = environment(case, emulator.url)
        settings = Settings.from_env(env)
        fields = subscriber_source(settings).shape().data
        first = measure_floor(settings, fields)
        calls_before = len(emulator.state.requests)
        gc.collect()
        result["rss_before_kib"] = current_rss_kib()
        report, seconds, cpu = sync(settings, profile=case.profile)
        result["rss_kib"] = peak_rss_kib()  # before anything else can raise the high-water mark
        result["run"] = run_report(report, seconds, cpu)
        result["calls"] = classify(emulator.state.requests[calls_before:])
        result["floor"] = first.best(measure_floor(settings, fields)).to_dict()
        del report
        again, again_seconds, again_cpu = sync(settings, dry_run=True)
        result["dry_run"] = run_report(again, again_seconds, again_cpu)
        checks = [
            converged_of(result["run"]),
            plan_as_expected(result["run"]["counts"], expected),
            nothing_left(again.counts()),
        ]
        if checks[0].ok:
            checks += check_ownpage(emulator, expected)
        result["checks"] = [check.to_dict() for check in checks]
        if case.latency:
            result["latency"] = latency_table(emulator, env)


def converged_of(run: dict[str, Any]) -> Check:
    detail = run["outcome"] if run["error"] is None else f"{run['outcome']}: {run['error']['message']}"
    return Check("outcome converged", run["outcome"] == Outcome.CONVERGED, detail)


def timed_read(emulator: EmulatorProcess, env: dict[str, str], concurrency: int) -> dict[str, Any]:
    """The run's Ownpage read phase alone: read_list into a planner (the pages, folded, then the
    count that proves the read complete). The token and the first count come before, untimed."""
    settings = Settings.from_env({**env, "OWNPAGE_READ_CONCURRENCY": str(concurrency)})
    with ownpage_client(settings, Deadline.unlimited()) as client:
        shape = subscriber_source(settings).shape()
        counts = client.count(settings.ownpage.list_id)
        planner = Planner(settings.policy, shape.data, compare_guid=shape.guid)
        calls_before = len(emulator.state.requests)
        began = time.perf_counter()
        proof = read_list(client, planner, settings.ownpage.list_id, counts, settings.ownpage.read_passes)
        seconds = time.perf_counter() - began
        calls = len(emulator.state.requests) - calls_before
    return {"concurrency": concurrency, "seconds": seconds, "calls": calls, "rows": proof.rows_seen}


def latency_table(emulator: EmulatorProcess, env: dict[str, str]) -> dict[str, Any]:
    """The read with LATENCY seconds per call: the default pool, then one call after another."""
    pool = Settings.from_env(env).ownpage.read_concurrency
    emulator.set_faults(latency=LATENCY)
    try:
        return {
            label: timed_read(emulator, env, concurrency) for label, concurrency in (("pool", pool), ("sequential", 1))
        }
    finally:
        emulator.set_faults(latency=0.0)


def faults_run(case: Case, expected: Expectation) -> dict[str, Any]:
    """The same drift, while Ownpage answers 30% of calls 503 + Retry-After 1, drops 5% of connections
    and expires its token every 5 calls."""
    with EmulatorProcess(seed_file=case.seed_file, faults=FAULTS) as emulator:
        settings = Settings.from_env(environment(case, emulator.url, OWNPAGE_MAX_ATTEMPTS="12"))
        report, seconds, cpu = sync(settings)
        outcome = run_report(report, seconds, cpu)
        calls = classify(emulator.state.requests)
        emulator.set_faults(Faults())
        checks = [converged_of(outcome), plan_as_expected(outcome["counts"], expected)]
        if checks[0].ok:
            checks += check_ownpage(emulator, expected)
        return {"run": outcome, "calls": calls, "checks": [check.to_dict() for check in checks]}


def main(path: Path) -> int:
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)  # the faults run's retries are warnings
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "ERROR")
    case = Case.load(path)
    if case.aws_endpoint is not None:  # boto3 reads the endpoint, region and keys from the environment
        os.environ.update(aws_env(case.aws_endpoint))
    expected = Expectation(**json.loads(case.expectation_file.read_text(encoding="utf-8")))
    result: dict[str, Any] = {"source": case.source, "size": case.size}
    try:
        measured_run(case, expected, result)
        if case.faults:
            result["faults"] = faults_run(case, expected)
    finally:
        case.result_file.write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
