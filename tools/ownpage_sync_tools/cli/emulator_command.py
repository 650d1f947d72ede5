"""`ownpage-sync emulator`: run the Ownpage emulator in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import gc
import json
import signal
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ownpage_sync_tools.cli import exit_codes
from ownpage_sync_tools.cli.errors import CliError, UsageError
from ownpage_sync_tools.emulator.faults import (
    DOMAINS,
    ERRORS_SHAPES,
    FAULT_SCOPES,
    INVALID_MODES,
    MATCHINGS,
    ORDERS,
    TOKEN_METHODS,
    WRITE_ANSWERS,
    Faults,
)

SEED_BLOCK_LINES = 10_000  # JSON Lines decoded per json.loads call
DESCRIPTION = (
    "Serve an emulated Ownpage Lists API over HTTP until Ctrl-C. The base URL is printed on stdout; point "
    "OWNPAGE_API_URL at it. Faults can also be changed while it runs: POST <host:port>/_emulator/faults "
    "with a JSON object of fault fields."
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "emulator", help="run a local emulator of Ownpage's Lists API (development only)", description=DESCRIPTION
    )
    add_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m ownpage_sync_tools.emulator`: the same command without the rest of the CLI's imports."""
    parser = argparse.ArgumentParser(prog="python -m ownpage_sync_tools.emulator", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_emulator(args)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=_port, default=8080, help="port to listen on, 0 to 65535; 0 picks a free one (default 8080)"
    )
    parser.add_argument(
        "--credentials",
        default="demo:demo-key",
        metavar="CLIENT:KEY",
        help="the client id and API key /token accepts (default demo:demo-key)",
    )
    parser.add_argument(
        "--seed-file",
        type=Path,
        help="subscriber rows (read shape) to put in list 1: a JSON array, or JSON Lines (one object a line, "
        "streamed: the fast way to load a million rows)",
    )
    parser.add_argument(
        "--seed-verbatim", action="store_true", help="store the seed rows exactly as given (no defaults filled)"
    )

    faults = parser.add_argument_group("faults (all off by default)")
    faults.add_argument("--error-rate", type=float, default=0.0, help="share of API calls answered with an error")
    faults.add_argument("--error-status", type=int, default=503, help="status of injected errors (default 503)")
    faults.add_argument("--retry-after", type=float, help="seconds sent as Retry-After with injected errors")
    faults.add_argument("--html-errors", action="store_true", help="injected errors carry an HTML page")
    faults.add_argument("--drop-rate", type=float, default=0.0, help="share of connections closed without answer")
    faults.add_argument(
        "--drop-after-write", action="store_true", help="a dropped write is applied before the connection closes"
    )
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to each API call")
    faults.add_argument(
        "--latency-rate", type=float, default=1.0, help="share of the calls in scope that get --latency (default 1)"
    )
    faults.add_argument(
        "--token-lifetime", dest="token_lifetime_calls", type=int, help="calls a token answers before 401"
    )
    faults.add_argument("--fail-writes", action="store_true", help="every POST .../subscribers fails")
    faults.add_argument(
        "--error-burst", type=int, default=0, metavar="N", help="the next N calls in scope answer --error-status"
    )
    faults.add_argument(
        "--fault-scope",
        choices=FAULT_SCOPES,
        default="all",
        help="calls that latency, drops, bursts, errors and HTML pages hit (default all)",
    )
    faults.add_argument(
        "--reject-domains", default="", metavar="DOMAIN,...", help="addresses at these domains are invalid"
    )
    faults.add_argument("--invalid-mode", choices=INVALID_MODES, default="per_row", help="how invalid rows fail")
    faults.add_argument("--errors-shape", choices=ERRORS_SHAPES, default="strings", help="shape of `errors` entries")
    faults.add_argument(
        "--write-answer", choices=WRITE_ANSWERS, default="summary", help="what a write is answered with (200)"
    )
    faults.add_argument("--seed", type=int, help="RNG seed for a reproducible fault sequence")

    unknowns = parser.add_argument_group("Ownpage's unknowns, played the unfriendly way (all off by default)")
    unknowns.add_argument("--order", choices=ORDERS, default="insertion", help="row order of reads")
    unknowns.add_argument(
        "--move-per-page", type=int, default=0, metavar="N", help="after each list page, N random rows move to the end"
    )
    unknowns.add_argument("--delete-offset", type=int, metavar="N", help="once: after the next list page, delete row N")
    unknowns.add_argument("--empty-page-offset", type=int, metavar="N", help="once: a list read at offset N answers []")
    unknowns.add_argument("--ignore-status-all", action="store_true", help="status=all serves the subscribed rows")
    unknowns.add_argument("--ignore-status", action="store_true", help="status is ignored (subscribed rows only)")
    unknowns.add_argument("--ignore-offset", action="store_true", help="offset is treated as 0")
    unknowns.add_argument("--never-empty", action="store_true", help="a read past the end repeats the last page")
    unknowns.add_argument("--ignore-exact", action="store_true", help="exact=true is ignored (substring search)")
    unknowns.add_argument("--ignore-search", action="store_true", help="search is ignored (the whole list)")
    unknowns.add_argument("--max-count", type=int, metavar="N", help="count is silently capped at N rows")
    unknowns.add_argument("--matching", choices=MATCHINGS, default="case_insensitive", help="how addresses are matched")
    unknowns.add_argument(
        "--domains",
        choices=DOMAINS,
        default="as_given",
        help="idna: written addresses are kept with their domain in IDNA",
    )
    unknowns.add_argument("--count-skew", type=int, default=0, metavar="N", help="/count is off by N rows")
    unknowns.add_argument(
        "--html-ok-rate", type=float, default=0.0, help="share of API calls answered 200 with an HTML page"
    )
    unknowns.add_argument("--token-method", choices=TOKEN_METHODS, default="both", help="the /token forms served")
    parser.set_defaults(handler=run_emulator, uses_stack=False)


def _port(text: str) -> int:
    """A TCP port (argparse makes the error a usage error: one line, exit 2)."""
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def faults_from_args(args: argparse.Namespace) -> Faults:
    """The Faults the flags describe; raises ValueError on an out-of-range value."""
    return Faults(
        error_rate=args.error_rate,
        error_status=args.error_status,
        retry_after=args.retry_after,
        html_errors=args.html_errors,
        drop_rate=args.drop_rate,
        drop_after_write=args.drop_after_write,
        latency=args.latency,
        latency_rate=args.latency_rate,
        token_lifetime_calls=args.token_lifetime_calls,
        fail_writes=args.fail_writes,
        error_burst=args.error_burst,
        fault_scope=args.fault_scope,
        reject_domains=tuple(args.reject_domains.split(",")) if args.reject_domains else (),
        invalid_mode=args.invalid_mode,
        errors_shape=args.errors_shape,
        write_answer=args.write_answer,
        order=args.order,
        move_per_page=args.move_per_page,
        delete_offset=args.delete_offset,
        empty_page_offset=args.empty_page_offset,
        ignore_status_all=args.ignore_status_all,
        ignore_status=args.ignore_status,
        ignore_offset=args.ignore_offset,
        never_empty=args.never_empty,
        ignore_exact=args.ignore_exact,
        ignore_search=args.ignore_search,
        max_count=args.max_count,
        matching=args.matching,
        domains=args.domains,
        count_skew=args.count_skew,
        html_ok_rate=args.html_ok_rate,
        token_method=args.token_method,
        seed=args.seed,
    )


def run_emulator(args: argparse.Namespace) -> int:
    from ownpage_sync_tools.emulator import EmulatorServer

    client, colon, key = args.credentials.partition(":")
    if not colon or not client or not key:
        raise UsageError("--credentials must look like CLIENT:KEY")
    try:
        faults = faults_from_args(args)
        server = EmulatorServer(host=args.host, port=args.port, faults=faults, credentials={client: key})
        rows = read_seed_file(args.seed_file) if args.seed_file else iter(())
        seeded = server.state.seed(1, rows, verbatim=args.seed_verbatim)
        # The seeded rows live as long as the process: out of every later GC pass, or the first full
        # collection walks a million rows in the middle of some request (half a second at 1M).
        gc.collect()
        gc.freeze()
        server.start()
    except (OSError, ValueError) as exc:
        raise CliError(f"emulator: {exc}", exit_codes.CONFIGURATION) from exc
    # Ctrl-C stops it even when started as a shell's background job, which inherits SIGINT ignored
    # (Python then installs no handler of its own, and EmulatorProcess.stop would wait in vain).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:  # from the URL on, Ctrl-C may come: even during the line after it
        print(server.url, flush=True)  # stdout carries only the URL, so scripts can capture it
        print(f"emulator: {seeded} subscriber(s) in list 1; Ctrl-C to stop", file=sys.stderr, flush=True)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return exit_codes.OK


def read_seed_file(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a seed file: a JSON array, or JSON Lines read a block of lines at a time (a million
    rows then never sit in memory twice, as decoded dicts and as the emulator's rows)."""
    with path.open(encoding="utf-8") as handle:
        first = handle.read(1)
        while first.isspace():
            first = handle.read(1)
        handle.seek(0)
        if first == "[":
            rows = json.load(handle)
            if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
                raise ValueError(f"{path} must hold a JSON array of subscriber objects")
            yield from rows
            return
        block: list[tuple[int, str]] = []
        for number, line in enumerate(handle, start=1):
            if line.strip():
                block.append((number, line))
            if len(block) == SEED_BLOCK_LINES:
                yield from _seed_lines(path, block)
                block = []
        yield from _seed_lines(path, block)


def _seed_lines(path: Path, block: list[tuple[int, str]]) -> list[dict[str, Any]]:
    # One json.loads for the block is twice as fast as one per line; a bad block is read again
    # line by line to name the bad line.
    try:
        rows: list[dict[str, Any]] = json.loads("[" + ",".join(line for _, line in block) + "]")
        if all(isinstance(row, dict) for row in rows):
            return rows
    except ValueError:
        pass
    for number, line in block:
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: each line must hold one subscriber object")
    raise AssertionError("unreachable: the block parsed line by line")


def write_seed_file(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as JSON Lines for `--seed-file`; returns how many were written."""
    written = 0
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
            handle.write("\n")
            written += 1
    return written
