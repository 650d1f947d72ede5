"""`ownpage-sync`: the operator's terminal. Each command group registers itself from its own module."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from ownpage_sync_tools.cli import exit_codes

# Modules exposing `register(subparsers)`; each adds its commands with `set_defaults(handler=...)`.
COMMAND_MODULES = (
    "ownpage_sync_tools.cli.sync_commands",  # plan, run
    "ownpage_sync_tools.cli.queue_commands",  # retry, dlq, redrive
    "ownpage_sync_tools.cli.history_command",  # history
    "ownpage_sync_tools.cli.emulator_command",  # emulator
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="ownpage-sync",
        description="Keep an Ownpage list in step with the publisher's database. "
        "Configuration comes from the same environment variables as the Lambda (docs/configuration.md).",
        epilog=exit_codes.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command group still being built
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Reports go to stdout; the library's warnings and errors to stderr (LOG_LEVEL=INFO for more).
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("LOG_LEVEL", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
