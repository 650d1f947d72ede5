"""`ownpage-sync touch ADDRESS...`: tell the fast lane that addresses changed.

By default it does what the publisher's application does: one `SubscriberChanged` event per address
on the stack's bus (CHANGE_EVENT_BUS, CHANGE_EVENT_SOURCE; `--stack` reads them from the outputs),
which the stack's rule delivers to the ChangeFunction. With `--local` the ChangeFunction's own code
runs here on those events instead, with its settings (`--stack`: the deployed function's). Either
way the event is only a hint: the address is read again from the source and Ownpage.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from ownpage_sync.emails import MAX_LENGTH, mask_email
from ownpage_sync.fast_lane import DETAIL_TYPE, ChangeNotApplied

from ownpage_sync_tools.change_events import DEFAULT_EVENT_BUS, DEFAULT_EVENT_SOURCE, change_event
from ownpage_sync_tools.cli import exit_codes
from ownpage_sync_tools.cli.errors import OutcomeError, UsageError

PUT_BATCH = 10  # PutEvents takes at most ten entries


def register(subparsers: Any) -> None:
    touch = subparsers.add_parser(
        "touch",
        help="tell the fast lane that addresses changed (one SubscriberChanged event each)",
        description=f"Put one {DETAIL_TYPE!r} event per address on CHANGE_EVENT_BUS (default {DEFAULT_EVENT_BUS!r}) "
        f"with source CHANGE_EVENT_SOURCE (default {DEFAULT_EVENT_SOURCE!r}); the stack's rule delivers them to the "
        "ChangeFunction, which reads each address again in the source and Ownpage and writes what the sync's rules "
        "say. Needs events:PutEvents on the bus. --local runs the ChangeFunction's code here instead.",
    )
    touch.add_argument("addresses", nargs="+", metavar="ADDRESS", help="an address that changed in the source")
    touch.add_argument(
        "--local",
        action="store_const",
        const="change",
        dest="stack_function",
        default=None,
        help="run the ChangeFunction's handler here on the events (with --stack: with its deployed settings) "
        "instead of putting them on the bus",
    )
    touch.add_argument("--json", action="store_true", help="print JSON instead of text")
    touch.set_defaults(handler=touch_command)


def _checked(addresses: Sequence[str]) -> list[str]:
    for address in addresses:
        if not address.strip() or len(address) > MAX_LENGTH:
            raise UsageError(f"an ADDRESS must be a non-empty string of at most {MAX_LENGTH} characters")
    return list(addresses)


def put_change_events(addresses: Sequence[str], bus: str, source: str, client: Any = None) -> list[dict[str, Any]]:
    """PutEvents, ten at a time: per address (masked), its event id or the error EventBridge gave."""
    if client is None:
        import boto3
        from botocore.config import Config

        client = boto3.client("events", config=Config(retries={"mode": "standard", "max_attempts": 5}))
    results: list[dict[str, Any]] = []
    for start in range(0, len(addresses), PUT_BATCH):
        chunk = addresses[start : start + PUT_BATCH]
        entries = [
            {"Source": source, "DetailType": DETAIL_TYPE, "Detail": json.dumps({"email": a}), "EventBusName": bus}
            for a in chunk
        ]
        answer = client.put_events(Entries=entries)
        for address, entry in zip(chunk, answer["Entries"], strict=True):
            results.append(
                {"email": mask_email(address), "event_id": entry.get("EventId"), "error": entry.get("ErrorCode")}
            )
    return results


def run_locally(addresses: Sequence[str], source: str) -> list[dict[str, Any]]:
    """The ChangeFunction's handler on one EventBridge-shaped event per address, as a fresh container."""
    from ownpage_sync.observability import logger

    from ownpage_sync_tools.cli.logs import handler_logs_readable
    from ownpage_sync_tools.lambda_local import LocalContext, load_function

    module = load_function("change")
    module.settings.cache_clear()
    module.target.cache_clear()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "eu-west-1"
    results: list[dict[str, Any]] = []
    for address in addresses:
        context = LocalContext(function_name="ownpage-sync-change-local", timeout_seconds=60)
        try:
            with handler_logs_readable(logger.name):
                report = module.handler(change_event(address, source, region), context)
        except ChangeNotApplied as exc:
            results.append({"email": mask_email(address), "error": str(exc)})
            continue
        results.append({"email": mask_email(address), "report": report})
    return results


def _describe(report: dict[str, Any]) -> str:
    done = [f"{action} {count}" for action, count in report["applied"].items() if count]
    if report["queued"]:
        done.append(f"queued for retry {report['queued']} (Ownpage {report['ownpage_unreadable'] or 'refused'})")
    if report["suppressed"]:
        done.append("suppressed on Ownpage: nothing written")
    for reason, count in report["left_to_scheduled_run"].items():
        done.append(f"left to the scheduled run {count} ({reason})")
    if report["rejected"]:
        done.append(f"rejected by Ownpage {report['rejected']}")
    return ", ".join(done) or "nothing to do: Ownpage already matches the source"


def touch_command(args: argparse.Namespace) -> int:
    addresses = _checked(args.addresses)
    source = os.environ.get("CHANGE_EVENT_SOURCE", "").strip() or DEFAULT_EVENT_SOURCE
    if args.stack_function == "change":
        results = run_locally(addresses, source)
        lines = [
            f"{r['email']}: {'FAILED: ' + r['error'] if 'error' in r else _describe(r['report'])}" for r in results
        ]
        print(json.dumps(results, indent=2) if args.json else "\n".join(lines))
        if any("error" in r for r in results):
            raise OutcomeError("some changes could be neither written nor queued", exit_codes.FAILED)
        pending = [r for r in results if r["report"]["queued"] or r["report"]["left_to_scheduled_run"]]
        if pending:
            raise OutcomeError(
                f"{len(pending)} of {len(results)} changes wait for the retry path or the scheduled run",
                exit_codes.NOT_CONVERGED,
            )
        return exit_codes.OK
    bus = os.environ.get("CHANGE_EVENT_BUS", "").strip() or DEFAULT_EVENT_BUS
    results = put_change_events(addresses, bus, source)
    failed = [r for r in results if r["error"]]
    text = f"put {len(results) - len(failed)} {DETAIL_TYPE} event(s) on bus {bus} (source {source})"
    text += "".join(f"\n  {r['email']}: {r['event_id'] or 'REFUSED: ' + str(r['error'])}" for r in results)
    print(json.dumps({"bus": bus, "source": source, "events": results}, indent=2) if args.json else text)
    if failed:
        raise OutcomeError(f"EventBridge refused {len(failed)} of {len(results)} events", exit_codes.FAILED)
    return exit_codes.OK
