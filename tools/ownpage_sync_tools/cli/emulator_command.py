"""`ownpage-sync emulator`: run the Ownpage emulator in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ownpage_sync_tools.cli import exit_codes
from ownpage_sync_tools.cli.errors import CliError, UsageError
from ownpage_sync_tools.emulator.faults import ERRORS_SHAPES, INVALID_MODES, Faults


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "emulator",
        help="run a local emulator of Ownpage's Lists API (development only)",
        description="Serve an emulated Ownpage Lists API over HTTP until Ctrl-C. The base URL is printed "
        "on stdout; point OWNPAGE_API_URL at it. Faults can also be changed while it runs: "
        "POST <host:port>/_emulator/faults with a JSON object of fault fields.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on; 0 picks a free one (default 8080)")
    parser.add_argument(
        "--credentials",
        default="demo:demo-key",
        metavar="CLIENT:KEY",
        help="the client id and API key /token accepts (default demo:demo-key)",
    )
    parser.add_argument("--seed-file", type=Path, help="JSON array of subscriber rows (read shape) to put in list 1")

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
        "--token-lifetime", dest="token_lifetime_calls", type=int, help="calls a token answers before 401"
    )
    faults.add_argument("--fail-writes", action="store_true", help="every POST .../subscribers fails")
    faults.add_argument(
        "--reject-domains", default="", metavar="DOMAIN,...", help="addresses at these domains are invalid"
    )
    faults.add_argument("--invalid-mode", choices=INVALID_MODES, default="per_row", help="how invalid rows fail")
    faults.add_argument("--errors-shape", choices=ERRORS_SHAPES, default="strings", help="shape of `errors` entries")
    faults.add_argument("--seed", type=int, help="RNG seed for a reproducible fault sequence")
    parser.set_defaults(handler=run_emulator, uses_stack=False)


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
        token_lifetime_calls=args.token_lifetime_calls,
        fail_writes=args.fail_writes,
        reject_domains=tuple(args.reject_domains.split(",")) if args.reject_domains else (),
        invalid_mode=args.invalid_mode,
        errors_shape=args.errors_shape,
        seed=args.seed,
    )


def run_emulator(args: argparse.Namespace) -> int:
    from ownpage_sync_tools.emulator import EmulatorServer

    client, colon, key = args.credentials.partition(":")
    if not colon or not client or not key:
        raise UsageError("--credentials must look like CLIENT:KEY")
    try:
        faults = faults_from_args(args)
        rows = _read_seed_file(args.seed_file) if args.seed_file else []
    except (OSError, ValueError) as exc:
        raise CliError(f"emulator: {exc}", exit_codes.CONFIGURATION) from exc

    server = EmulatorServer(host=args.host, port=args.port, faults=faults, credentials={client: key})
    try:
        server.state.seed(1, rows)
        server.start()
    except (OSError, ValueError) as exc:
        raise CliError(f"emulator: cannot serve on {args.host}:{args.port}: {exc}", exit_codes.CONFIGURATION) from exc
    print(server.url, flush=True)  # stdout carries only the URL, so scripts can capture it
    print(f"emulator: {len(rows)} subscriber(s) in list 1; Ctrl-C to stop", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return exit_codes.OK


def _read_seed_file(path: Path) -> list[dict[str, Any]]:
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path} must hold a JSON array of subscriber objects")
    return rows
