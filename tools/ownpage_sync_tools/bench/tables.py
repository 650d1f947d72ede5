"""The benchmark's printed tables."""

from __future__ import annotations

import io
import pstats
import textwrap
from collections.abc import Sequence
from typing import Any

from ownpage_sync_tools.bench.floor import DEFINITION
from ownpage_sync_tools.bench.runner import FAULTS, LATENCY

MIB = 1024  # ru_maxrss is in KiB
GIB = 1024 * 1024  # KiB
WIDTH = 110  # prose lines are wrapped to this; tables are as wide as they need


def table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns padded to their widest cell; the first `left` columns left-aligned, the rest right."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(head, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(width) if i < left else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(head), rule, *(line(row) for row in rows)])


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} s" if value < 100 else f"{value:.0f} s"


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / MIB:,.0f} MiB"


def source_label(case: Any) -> str:
    label = "dynamodb (moto)" if case.source == "dynamodb" else case.source
    return label + ("*" if case.profile else "")


def prose(text: str) -> str:
    return textwrap.fill(text, width=WIDTH, break_on_hyphens=False)


def header(python: str, cpus: int) -> str:
    return prose(
        f"ownpage-sync benchmark — Python {python}, {cpus} cores (shared), Ownpage = the emulator in a child "
        "process on this host, 1% churn (new, removed, changed); each case in a fresh process"
    )


def _converged(outcome: Any) -> str:
    if outcome.crashed is not None:
        return "CRASHED"
    if "checks" not in outcome.result:
        return "?"
    failed = [check for check in outcome.result["checks"] if not check["ok"]]
    return "yes" if not failed else f"NO ({len(failed)} checks failed)"


def sync_table(outcomes: Sequence[Any]) -> str:
    rows = []
    for outcome in outcomes:
        case, result = outcome.case, outcome.result
        run = result.get("run", {})
        phases = run.get("phases", {})
        calls = result.get("calls", {})
        rows.append(
            [
                source_label(case),
                f"{case.size:,}",
                seconds(phases.get("checks")),
                seconds(phases.get("ownpage_read")),
                seconds(phases.get("source_read")),
                seconds(phases.get("plan")),
                seconds(phases.get("apply")),
                seconds(run.get("seconds")),
                seconds(run.get("cpu_seconds")),
                mib(result.get("rss_kib")),
                mib(result.get("rss_before_kib")),
                f"{calls.get('total', 0)} ({calls.get('pages', 0)}/{calls.get('writes', 0)}/{calls.get('other', 0)})"
                if calls
                else "-",
                _converged(outcome),
            ]
        )
    head = [
        "source",
        "subscribers",
        "checks",
        "Ownpage read",
        "source read",
        "plan",
        "apply",
        "run total",
        "its CPU",
        "peak RSS",
        "RSS at start",
        "HTTP calls (GET pages/POST/other)",
        "converged",
    ]
    return table(head, rows, left=1)


def floor_table(outcomes: Sequence[Any]) -> str:
    rows = []
    for outcome in outcomes:
        case, result = outcome.case, outcome.result
        floor, run = result.get("floor"), result.get("run")
        if not floor or not run:
            continue
        source_unit = f"{floor['source_bytes'] / 1e6:,.0f} MB" if case.source == "postgresql" else "botocore"
        rows.append(
            [
                source_label(case),
                f"{case.size:,}",
                seconds(run["seconds"]),
                f"{seconds(floor['ownpage'])} ({floor['ownpage_bytes'] / 1e6:,.0f} MB)",
                f"{seconds(floor['source'])} ({source_unit})",
                seconds(floor["total"]),
                f"{run['seconds'] / floor['total']:.2f}×",
                f"{seconds(floor['ownpage_parsed'])} + {seconds(floor['source_parsed'])}",
                f"{run['seconds'] / floor['parsed_total']:.2f}×",
            ]
        )
    head = [
        "source",
        "subscribers",
        "run",
        "floor: list pages",
        "floor: source stream",
        "I/O floor",
        "run / floor",
        "parse floor (list + source)",
        "run / parse floor",
    ]
    return table(head, rows)


def _pg(outcomes: Sequence[Any], size: int) -> dict[str, Any] | None:
    for outcome in outcomes:
        if outcome.case.source == "postgresql" and outcome.case.size == size and outcome.result.get("rss_kib"):
            result: dict[str, Any] = outcome.result
            return result
    return None


def bytes_per_subscriber(outcomes: Sequence[Any]) -> float | None:
    small, large = _pg(outcomes, 100_000), _pg(outcomes, 1_000_000)
    if small is None or large is None:
        return None
    return float((large["rss_kib"] - small["rss_kib"]) * 1024 / 900_000)


def memory_lines(outcomes: Sequence[Any]) -> list[str]:
    small, large, per = _pg(outcomes, 100_000), _pg(outcomes, 1_000_000), bytes_per_subscriber(outcomes)
    if small is None or large is None or per is None:
        return ["memory per subscriber held: needs the PostgreSQL runs at 100,000 and 1,000,000"]
    lines = [
        f"memory per subscriber held (PostgreSQL, 100k → 1M): ({mib(large['rss_kib'])} − {mib(small['rss_kib'])})"
        f" / 900,000 = {per:.0f} B (peak RSS of the run's process; the emulator's memory is its own)"
    ]
    time_per = (large["run"]["seconds"] - small["run"]["seconds"]) / 900_000
    rss_10m = large["rss_kib"] * 1024 + per * 9_000_000
    lines.append(
        f"linear extrapolation to 10,000,000 (not measured): run ≈ {large['run']['seconds'] + time_per * 9_000_000:,.0f} s,"
        f" peak RSS ≈ {rss_10m / 2**30:.1f} GiB (Lambda: 900 s, 10 GiB)"
    )
    return lines


def latency_table(outcomes: Sequence[Any]) -> str | None:
    for outcome in outcomes:
        latency = outcome.result.get("latency")
        if not latency:
            continue
        sequential, pool = latency["sequential"], latency["pool"]
        rows = [
            [
                label,
                str(entry["concurrency"]),
                str(entry["calls"]),
                f"{entry['rows']:,}",
                seconds(entry["seconds"]),
                f"{sequential['seconds'] / entry['seconds']:.1f}×",
            ]
            for label, entry in (("sequential", sequential), ("pool", pool))
        ]
        title = (
            f"Ownpage read of the {outcome.case.size:,}-subscriber list ({pool['rows']:,} rows) with {LATENCY:g} s of"
            " latency per call — the run's read phase (pages folded into the planner, then the count),"
            " measured in full both ways"
        )
        head = ["read", "concurrency", "calls", "rows", "time", "speed-up"]
        return prose(title) + "\n" + table(head, rows)
    return None


def faults_table(outcomes: Sequence[Any]) -> str | None:
    for outcome in outcomes:
        faults = outcome.result.get("faults")
        if not faults:
            continue
        run, calls = faults["run"], faults["calls"]
        statuses = calls.get("statuses", {})
        failed = [check for check in faults["checks"] if not check["ok"]]
        rows = [
            [
                f"{outcome.case.size:,}",
                seconds(run["seconds"]),
                str(calls["total"]),
                str(statuses.get("503", 0)),
                str(statuses.get("0", 0)),
                str(statuses.get("401", 0)),
                run["outcome"],
                "yes" if not failed else f"NO ({len(failed)} checks failed)",
            ]
        ]
        title = (
            f"Under Ownpage faults ({FAULTS.error_rate:.0%} {FAULTS.error_status} + Retry-After {FAULTS.retry_after:g},"
            f" {FAULTS.drop_rate:.0%} connections dropped, token expiring every {FAULTS.token_lifetime_calls} calls),"
            " PostgreSQL source"
        )
        head = ["subscribers", "run", "HTTP calls", "503", "dropped", "401", "outcome", "converged"]
        return prose(title) + "\n" + table(head, rows, left=0)
    return None


def goals_table(outcomes: Sequence[Any]) -> str:
    """The issue's goals, each against what this run measured (at 1M, PostgreSQL)."""
    large = _pg(outcomes, 1_000_000)
    latency = large.get("latency") if large else None
    per = bytes_per_subscriber(outcomes)
    rows: list[list[str]] = []

    def goal(figure: str, wanted: str, value: float | None, shown: str, met: bool) -> None:
        rows.append([figure, wanted, shown if value is not None else "not measured", _met(value, met)])

    ratio = large["run"]["seconds"] / large["floor"]["total"] if large else None
    goal("full run / I/O floor, 1M", "≤ 1.5×", ratio, f"{ratio or 0:.2f}×", ratio is not None and ratio <= 1.5)
    rss = large["rss_kib"] if large else None
    goal("peak RSS, 1M", "< 1 GiB", rss, mib(rss), rss is not None and rss < GIB)
    goal("memory per subscriber held, 100k → 1M", "≤ 150 B", per, f"{per or 0:.0f} B", per is not None and per <= 150)
    speedup = latency["sequential"]["seconds"] / latency["pool"]["seconds"] if latency else None
    label = "read with 1 s latency per call: pool vs sequential"
    goal(label, "≥ 5×", speedup, f"{speedup or 0:.1f}×", speedup is not None and speedup >= 5)
    return "Goals (the issue's), against this run\n" + table(["figure", "goal", "measured", "met"], rows)


def _met(value: float | None, met: bool) -> str:
    if value is None:
        return "-"
    return "yes" if met else "no"


def problems(outcomes: Sequence[Any]) -> list[str]:
    lines = []
    for outcome in outcomes:
        name = f"{outcome.case.source} {outcome.case.size:,}"
        if outcome.crashed is not None:
            lines.append(f"{name}: {outcome.crashed}")
        for check in outcome.failed_checks:
            lines.append(f"{name}: FAILED {check['name']}: {check['detail']}")
    return lines


def checks_line(outcomes: Sequence[Any]) -> str:
    names: dict[str, None] = {}
    for outcome in outcomes:
        for check in outcome.result.get("checks", []):
            names.setdefault(check["name"], None)
    return "convergence checks per case: " + ("; ".join(names) if names else "none ran")


def render(outcomes: Sequence[Any], dynamodb_max: int, elapsed: float) -> str:
    notes = [*memory_lines(outcomes)]
    if any(outcome.case.source == "dynamodb" for outcome in outcomes):
        notes.append(
            f"DynamoDB = moto in server mode (a local Python process), only up to {dynamodb_max:,} subscribers: its"
            " Scan is far slower than DynamoDB's and varies from one scan to the next, so its times are for scale only"
        )
    if any(outcome.case.profile for outcome in outcomes):
        notes.append("* run under cProfile (--profile): its times are inflated")
    parts = [
        "",
        "Full sync: one real run (run_sync, the real source adapter, the real Ownpage client)",
        sync_table(outcomes),
        "",
        "Against the I/O floor, measured in the same process",
        floor_table(outcomes),
        prose(DEFINITION),
        "",
        *(prose(note) for note in notes),
    ]
    for extra in (latency_table(outcomes), faults_table(outcomes)):
        if extra:
            parts += ["", extra]
    parts += ["", goals_table(outcomes), "", prose(checks_line(outcomes))]
    found = problems(outcomes)
    parts += found if found else ["every case converged"]
    parts.append(f"benchmark wall time {elapsed:.0f} s (data building included)")
    return "\n".join(parts)


def profile_table(stats: pstats.Stats, size: int, top: int = 25) -> str:
    out = io.StringIO()
    stats.stream = out  # type: ignore[attr-defined]
    stats.strip_dirs().sort_stats("tottime").print_stats(top)
    return f"\ncProfile of the {size:,} run (every thread, merged; sorted by own time):\n" + out.getvalue()
