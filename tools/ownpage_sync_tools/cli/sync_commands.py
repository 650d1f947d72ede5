"""`ownpage-sync plan` and `ownpage-sync run`: the same code path as the Lambda, from a terminal."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ownpage_sync import exports, wiring
from ownpage_sync.deadline import Deadline
from ownpage_sync.guards import RESUBSCRIBE_GUARDS, UNSUBSCRIBE_GUARDS, GuardOverride
from ownpage_sync.report import Outcome, RunReport
from ownpage_sync.settings import Settings
from ownpage_sync.sync import RunRequest, run_sync

from ownpage_sync_tools.cli import exit_codes
from ownpage_sync_tools.cli.errors import OutcomeError, UsageError
from ownpage_sync_tools.cli.progress import TerminalProgress
from ownpage_sync_tools.cli.render import render_report

# Exit statuses of an outcome that is not success, and the one line that says why.
EXIT_BY_OUTCOME = {
    Outcome.GUARD_TRIPPED: exit_codes.GUARD_TRIPPED,
    Outcome.NOT_CONVERGED: exit_codes.NOT_CONVERGED,
    Outcome.FAILED: exit_codes.FAILED,
    Outcome.RUN_IN_PROGRESS: exit_codes.RUN_IN_PROGRESS,
}
# Failed runs whose cause is a setting, not a service: Ownpage refusing the client id or API key, the
# source naming a table, column or database that does not exist, refusing the credentials or a permission.
CONFIGURATION_FAILURES = frozenset({"ownpage_auth", "source_configuration"})


def register(subparsers: Any) -> None:
    plan = subparsers.add_parser("plan", help="dry run: read both sides and print what would change")
    _common(plan)
    plan.add_argument(
        "--export-suppressions", type=Path, metavar="FILE", help="write the suppressed addresses (.csv or .json)"
    )
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help=f"exit {exit_codes.OK} when there is nothing to do, {exit_codes.CHANGES_PENDING} when changes are "
        f"pending, {exit_codes.GUARD_TRIPPED} when a guard would stop the run (as Terraform's plan does)",
    )
    plan.add_argument(
        "--remote",
        action="store_true",
        help="with --stack: the deployed SyncFunction runs the dry run (it reaches a private database); "
        "exports come back through the stack's encrypted bucket",
    )
    plan.set_defaults(handler=_plan, stack_function="sync")

    run = subparsers.add_parser("run", help="plan and apply (the Lambda's code path)")
    _common(run)
    run.add_argument("--force", action="store_true", help="pass every safety guard for this run (logged)")
    run.add_argument("--max-unsubscribe", type=int, metavar="N", help="allow up to N unsubscribes past the guards")
    run.add_argument("--max-resubscribe", type=int, metavar="N", help="allow up to N re-subscriptions past the guards")
    run.set_defaults(handler=_run, stack_function="sync")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument(
        "--export-plan", type=Path, metavar="FILE", help="write every planned operation (.json or .csv)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")


def _plan(args: argparse.Namespace) -> int:
    if args.remote:
        return _remote_plan(args)
    return _execute(args, RunRequest(dry_run=True))


def _remote_plan(args: argparse.Namespace) -> int:
    from ownpage_sync_tools import remote

    stack = getattr(args, "deployed_stack", None)
    if stack is None:
        raise UsageError("--remote needs --stack NAME (the stack whose SyncFunction runs the dry run)")
    _outputs(args)
    function_name = stack.output("SyncFunctionName")
    event = remote.dry_run_event(args.export_plan, args.export_suppressions)
    print(f"asking {function_name} for a dry run (it may take up to the function's timeout)", file=sys.stderr)
    report = remote.remote_dry_run(function_name, event)
    print(json.dumps(report, indent=2) if args.json else render_report(report))
    targets = {"plan": args.export_plan, "suppressions": args.export_suppressions}
    for line in remote.download_exports(report, {k: v for k, v in targets.items() if v is not None}):
        print(line, file=sys.stderr)
    return exit_status(report, detailed=args.detailed_exitcode)


def _run(args: argparse.Namespace) -> int:
    for flag, value in (("--max-unsubscribe", args.max_unsubscribe), ("--max-resubscribe", args.max_resubscribe)):
        if value is not None and value < 0:
            raise UsageError(f"{flag} must be at least 0, got {value}")
    override = GuardOverride(
        force=args.force, max_unsubscribe=args.max_unsubscribe, max_resubscribe=args.max_resubscribe
    )
    return _execute(args, RunRequest(dry_run=False, override=override))


def _execute(args: argparse.Namespace, request: RunRequest) -> int:
    _outputs(args)
    settings = Settings.from_env()
    deadline = Deadline.unlimited()
    services = wiring.sync_services(settings, deadline)
    progress = TerminalProgress(enabled=False if args.no_progress else None)
    report = run_sync(settings, services, request, deadline, progress)
    _exports(args, report)
    result = report.to_dict()
    print(json.dumps(result, indent=2) if args.json else render_report(result))
    return exit_status(result, detailed=getattr(args, "detailed_exitcode", False))


def exit_status(report: dict[str, Any], detailed: bool = False) -> int:
    """0 for success; raises OutcomeError (one line, the documented status) for any other outcome.

    With `detailed` (plan only), a dry run that would write returns CHANGES_PENDING and one a guard
    would stop raises GUARD_TRIPPED, so a pipeline can tell the three apart."""
    outcome = report.get("outcome")
    if outcome == Outcome.FAILED and (report.get("error") or {}).get("kind") in CONFIGURATION_FAILURES:
        raise OutcomeError(_why(report), exit_codes.CONFIGURATION)  # a wrong secret: retrying will not help
    if outcome in EXIT_BY_OUTCOME:
        raise OutcomeError(_why(report), EXIT_BY_OUTCOME[outcome])
    if not detailed or outcome != Outcome.DRY_RUN:
        return exit_codes.OK
    if report.get("guards", {}).get("tripped"):
        raise OutcomeError(f"a guard would stop this run: {_tripped(report)}", exit_codes.GUARD_TRIPPED)
    counts = report.get("counts", {})
    pending = sum(int(counts.get(key, 0)) for key in ("to_subscribe", "to_unsubscribe", "to_update"))
    return exit_codes.CHANGES_PENDING if pending else exit_codes.OK


def _tripped(report: dict[str, Any]) -> str:
    return "; ".join(f"{trip['guard']}: {trip['reason']}" for trip in report.get("guards", {}).get("tripped", []))


def _allowance_hint(report: dict[str, Any]) -> str:
    """The narrowest override that passes the tripped guards: an allowance where one exists."""
    tripped = {trip["guard"] for trip in report.get("guards", {}).get("tripped", [])}
    counts = report.get("counts", {})
    allowances = [
        f"--{name} {counts.get(count, 'N')}"
        for name, count, guards in (
            ("max-unsubscribe", "to_unsubscribe", UNSUBSCRIBE_GUARDS),
            ("max-resubscribe", "to_resubscribe", RESUBSCRIBE_GUARDS),
        )
        if tripped & guards
    ]
    if not allowances or tripped - UNSUBSCRIBE_GUARDS - RESUBSCRIBE_GUARDS:
        return "--force"
    return " ".join(allowances) + " (or --force)"


def _why(report: dict[str, Any]) -> str:
    outcome, error = report.get("outcome"), report.get("error") or {}
    if outcome == Outcome.GUARD_TRIPPED:
        return (
            f"guard tripped, nothing was written: {_tripped(report)} "
            f"(review the plan, then {_allowance_hint(report)} if it is right)"
        )
    if outcome == Outcome.NOT_CONVERGED:
        applied = report.get("apply", {})
        return (
            f"not converged: {applied.get('queued', 0)} operations queued for retry, "
            f"{applied.get('deferred', 0)} left for the next run"
        )
    if outcome == Outcome.RUN_IN_PROGRESS:
        return str(error.get("message", "another run holds the lease"))
    return (
        f"run {report.get('run_id')} failed ({error.get('kind', 'unknown')}): {error.get('message', 'see the report')}"
    )


def _outputs(args: argparse.Namespace) -> list[Path]:
    """Every file this command will write, checked before anything is read or written: a typo in a
    path must not cost a run whose plan is then lost."""
    paths = [p for p in (args.export_plan, getattr(args, "export_suppressions", None)) if p is not None]
    if len(paths) == 2 and paths[0].resolve() == paths[1].resolve():
        raise UsageError(f"--export-plan and --export-suppressions name the same file {str(paths[0])!r}")
    for path in paths:
        exports.check_writable(path)
    return paths


def _exports(args: argparse.Namespace, report: RunReport) -> None:
    if report.plan is None:
        return
    if args.export_plan:
        exports.write_plan(report.plan, args.export_plan)
        print(
            f"plan written to {args.export_plan} (mode 0600: it holds email addresses, handle it as personal data)",
            file=sys.stderr,
        )
    if getattr(args, "export_suppressions", None):
        exports.write_suppressions(report.plan, args.export_suppressions)
        print(
            f"{len(report.plan.suppressed)} suppressed addresses written to {args.export_suppressions} (mode 0600)",
            file=sys.stderr,
        )
