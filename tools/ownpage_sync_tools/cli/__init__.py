"""`ownpage-sync`: the operator's terminal. Each command group registers itself from its own module.

One error contract for every command (cli/errors.py): a failure is one line on stderr,
`ownpage-sync: error: ...`, with the exit status of docs/cli.md; a traceback only with `--debug`."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from ownpage_sync.redaction import redact

from ownpage_sync_tools.cli import exit_codes
from ownpage_sync_tools.cli.errors import PREFIX, OutcomeError, UsageError, describe
from ownpage_sync_tools.cli.logs import terminal_logging

# Modules exposing `register(subparsers)`; each adds its commands with `set_defaults(handler=...)`.
COMMAND_MODULES = (
    "ownpage_sync_tools.cli.sync_commands",  # plan, run
    "ownpage_sync_tools.cli.queue_commands",  # retry, dlq, redrive
    "ownpage_sync_tools.cli.history_command",  # history
    "ownpage_sync_tools.cli.emulator_command",  # emulator
    "ownpage_sync_tools.cli.change_command",  # touch
)


class Parser(argparse.ArgumentParser):
    """argparse's errors as the CLI's own: one line, exit status 2 (not a usage block and a second line)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _global_options(parser: argparse.ArgumentParser) -> None:
    """Options accepted before or after the command. SUPPRESS keeps a subcommand's absent option from
    overwriting the value given before the command."""
    parser.add_argument(
        "--stack",
        metavar="NAME",
        default=argparse.SUPPRESS,
        help="run with the settings of this deployed CloudFormation stack (its outputs and its functions' "
        "environment, read with your AWS credentials) instead of the environment's",
    )
    parser.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="print a traceback with an error"
    )


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from ownpage_sync import __version__

    try:
        return installed("ownpage-sync")
    except PackageNotFoundError:  # run from a checkout without `pip install -e .`
        return __version__


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = Parser(
        prog="ownpage-sync",
        description="Keep an Ownpage list in step with the publisher's database. "
        "Configuration comes from the same environment variables as the Lambda (docs/configuration.md).",
        epilog=exit_codes.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    _global_options(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # a command group still being built
        module.register(subparsers)
    for command in subparsers.choices.values():
        _global_options(command)
    return parser


def _run_command(args: argparse.Namespace) -> int:
    """The command's handler, with a deployed stack's settings when --stack names one.

    Commands declare `stack_function`: whose environment they run with ("sync", "retry", "change"), or None when
    the stack's outputs are enough (history, dlq, redrive, plan --remote)."""
    name = getattr(args, "stack", None)
    if name is None:
        code: int = args.handler(args)
        return code
    if not getattr(args, "uses_stack", True):
        raise UsageError(f"--stack does not apply to `{args.command}`")
    from ownpage_sync_tools.stack_config import deployed_environment, read_stack

    function = None if getattr(args, "remote", False) else getattr(args, "stack_function", None)
    stack = read_stack(name, [function] if function else [])
    args.deployed_stack = stack
    with deployed_environment(stack.environment(function)):
        code = args.handler(args)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status. Every failure ends here as one line on stderr."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        # Reports go to stdout; the library's warnings and errors to stderr, one readable line each
        # (LOG_LEVEL=INFO for more).
        with terminal_logging():
            args = build_parser().parse_args(argv)
            code: int = _run_command(args)
    except (Exception, KeyboardInterrupt) as exc:
        code, line = describe(exc)
        if debug and not isinstance(exc, OutcomeError | UsageError):
            # Masked like everything else printed: a terminal's scroll-back gets pasted into tickets.
            print(redact("".join(traceback.format_exception(exc)), limit=None, one_line=False), end="", file=sys.stderr)
        print(PREFIX + line, file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
