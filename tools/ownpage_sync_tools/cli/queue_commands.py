"""`ownpage-sync retry | dlq | redrive`: the retry path from a terminal.

`retry` drains the RetryQueue once through the real retry handler (functions/retry/app.py), `dlq`
looks at the dead-letter queue without consuming it, `redrive` moves the dead letters back to the
RetryQueue. Only the queue URLs are required for `dlq` and `redrive`; `retry` needs the whole
configuration, like the Lambda.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ownpage_sync.errors import ConfigurationError
from ownpage_sync.retry_queue import queue_name

from ownpage_sync_tools.cli import exit_codes
from ownpage_sync_tools.cli.errors import OutcomeError

RECEIVE_BATCH = 10  # SQS's maximum per ReceiveMessage
PEEK_VISIBILITY_SECONDS = 30  # how long `dlq` hides a message it is reading before making it visible again
MOVE_VISIBILITY_SECONDS = 60  # how long `redrive --manual` has to copy one message before it reappears
MAX_RUN_ID_SAMPLES = 5
MAX_LISTED_FAILURES = 10
# Codes under which StartMessageMoveTask is simply not there (an emulator, an old endpoint).
_MOVE_TASK_UNAVAILABLE = (
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
    "InvalidAction",
    "NotImplemented",
    "UnknownOperation",
    "500",
    "501",
)


def register(subparsers: Any) -> None:
    retry = subparsers.add_parser(
        "retry",
        help="drain the RetryQueue once, locally, through the retry function's handler",
        description="Receive the messages on RETRY_QUEUE_URL and run them through functions/retry/app.py "
        "exactly as Lambda would (re-check against the source and Ownpage now, re-send, drop stale). "
        "Messages that succeed are deleted; failed ones are made visible again for the next attempt. "
        "Needs the same configuration as the Lambda (docs/configuration.md). Handler log lines go to stderr.",
    )
    retry.add_argument("--max-messages", type=_positive, default=1_000, help="stop after this many (default 1000)")
    retry.add_argument("--time-budget", type=_positive, default=900, help="seconds per batch, like a timeout")
    _common(retry)
    retry.set_defaults(handler=retry_command, stack_function="retry")

    dlq = subparsers.add_parser(
        "dlq",
        help="summarise the dead-letter queue without consuming it",
        description="Summarise DEAD_LETTER_QUEUE_URL: messages by error kind, operations, oldest age, a "
        f"sample of run ids. Messages are received with a {PEEK_VISIBILITY_SECONDS}-second visibility "
        "timeout and then made visible again at once: nothing is deleted or moved (their receive count "
        "grows by one, as when you poll them in the SQS console).",
    )
    dlq.add_argument("--max-messages", type=_positive, default=100, help="read at most this many (default 100)")
    _common(dlq)
    dlq.set_defaults(handler=dlq_command, stack_function=None)

    redrive = subparsers.add_parser(
        "redrive",
        help="move the dead letters back to the RetryQueue",
        description="Move every message of DEAD_LETTER_QUEUE_URL back to RETRY_QUEUE_URL, like the console's "
        "'Start DLQ redrive': with StartMessageMoveTask (runs in the background), or, where that API is not "
        "available or with --manual, by receiving, re-sending and deleting each message. Fix the cause first: "
        "redriven messages are retried at once.",
    )
    redrive.add_argument("--manual", action="store_true", help="copy messages one by one instead of a move task")
    redrive.add_argument("--max-messages", type=_positive, default=10_000, help="--manual: at most this many")
    _common(redrive)
    redrive.set_defaults(handler=redrive_command, stack_function=None)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--wait", type=float, default=1.0, help="seconds to long-poll an empty queue (default 1)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# -- shared plumbing -----------------------------------------------------------------------------


def _queue_url(variable: str, purpose: str) -> str:
    value = os.environ.get(variable, "").strip()
    if not value:
        raise ConfigurationError(f"{variable}: is required for {purpose} (see the stack's outputs)")
    return value


def _sqs(max_attempts: int = 5) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("sqs", config=Config(retries={"mode": "standard", "max_attempts": max_attempts}))


def _receive(client: Any, url: str, wait: float, visibility: int | None = None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {
        "QueueUrl": url,
        "MaxNumberOfMessages": RECEIVE_BATCH,
        "WaitTimeSeconds": int(wait),
        "AttributeNames": ["All"],
        "MessageAttributeNames": ["All"],
    }
    if visibility is not None:
        params["VisibilityTimeout"] = visibility
    messages: list[dict[str, Any]] = client.receive_message(**params).get("Messages", [])
    return messages


def _chunks(items: Sequence[Any], size: int = RECEIVE_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _make_visible(client: Any, url: str, receipts: Sequence[str]) -> None:
    for chunk in _chunks(receipts):
        entries = [{"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": 0} for i, r in enumerate(chunk)]
        client.change_message_visibility_batch(QueueUrl=url, Entries=entries)


def _delete(client: Any, url: str, receipts: Sequence[str]) -> None:
    for chunk in _chunks(receipts):
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
        client.delete_message_batch(QueueUrl=url, Entries=entries)


def _print(payload: Mapping[str, Any], text: str, args: argparse.Namespace) -> None:
    print(json.dumps(payload, indent=2) if args.json else text)


# -- retry ---------------------------------------------------------------------------------------


@dataclass
class DrainResult:
    queue: str
    max_receive_count: int | None = None  # the queue's, from its RedrivePolicy
    received: int = 0
    succeeded: int = 0
    failed: int = 0
    batches: int = 0
    failed_receives: dict[str, int] = field(default_factory=dict)  # message id -> its receive count now

    @property
    def failed_ids(self) -> list[str]:
        return list(self.failed_receives)

    @property
    def going_to_dlq(self) -> int:
        """Failed messages this drain used the last receive of: SQS dead-letters them on the next one."""
        limit = self.max_receive_count
        return 0 if limit is None else sum(1 for count in self.failed_receives.values() if count >= limit)

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "going_to_dlq": self.going_to_dlq}


def max_receive_count(client: Any, url: str) -> int | None:
    """The queue's maxReceiveCount (its RedrivePolicy), or None when it has no dead-letter queue."""
    attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=["RedrivePolicy"])["Attributes"]
    policy = attributes.get("RedrivePolicy")
    if not policy:
        return None
    count = json.loads(policy).get("maxReceiveCount")
    return int(count) if count is not None else None


@contextmanager
def _receive_limit_for_the_handler(limit: int | None) -> Iterator[None]:
    """The handler words its failures by RETRY_MAX_RECEIVE_COUNT; locally, take the queue's own."""
    if limit is None or os.environ.get("RETRY_MAX_RECEIVE_COUNT", "").strip():
        yield
        return
    os.environ["RETRY_MAX_RECEIVE_COUNT"] = str(limit)
    try:
        yield
    finally:
        os.environ.pop("RETRY_MAX_RECEIVE_COUNT", None)


def drain(url: str, max_messages: int, time_budget: float, wait: float, client: Any = None) -> DrainResult:
    """Receive → handler → delete the successes, until the queue looks empty; failures reappear at the end."""
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
    from ownpage_sync.observability import logger

    from ownpage_sync_tools.cli.logs import handler_logs_readable
    from ownpage_sync_tools.lambda_local import LocalContext, load_function
    from ownpage_sync_tools.sqs_events import failed_ids, queue_arn, sqs_event

    client = client or _sqs()
    module = load_function("retry")
    # One command is one fresh "container": no settings, adapters or limits cached by an earlier drain.
    module.settings.cache_clear()
    module.target.cache_clear()
    module.redelivery.cache_clear()
    region = client.meta.region_name
    arn = queue_arn(url, region)
    result = DrainResult(queue_name(url), max_receive_count(client, url))
    failed_receipts: list[str] = []
    try:
        with _receive_limit_for_the_handler(result.max_receive_count):
            while result.received < max_messages:
                messages = _receive(client, url, wait)[: max_messages - result.received]
                if not messages:
                    break
                result.received += len(messages)
                result.batches += 1
                context = LocalContext(function_name="ownpage-sync-retry-local", timeout_seconds=time_budget)
                try:
                    with handler_logs_readable(logger.name):
                        failed = failed_ids(module.handler(sqs_event(messages, arn, region), context))
                except BatchProcessingError:
                    failed = {m["MessageId"] for m in messages}  # every record failed: keep the whole batch
                _delete(client, url, [m["ReceiptHandle"] for m in messages if m["MessageId"] not in failed])
                for message in messages:
                    if message["MessageId"] in failed:
                        failed_receipts.append(message["ReceiptHandle"])
                        receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 0))
                        result.failed_receives[message["MessageId"]] = receives
    finally:
        # Hidden until now so this drain does not pick them up again; the deployed function may.
        _make_visible(client, url, failed_receipts)
    result.failed = len(failed_receipts)
    result.succeeded = result.received - result.failed
    return result


def _receive_warning(queue: str, limit: int | None) -> str:
    if limit is None:
        return f"{queue} has no dead-letter queue: a message that fails here comes back until it expires"
    return (
        f"each message `retry` receives uses one of the {limit} receives SQS allows it on {queue} "
        f"(the RetryFunction gets the rest); one that fails its receive {limit} of {limit} moves to the "
        "dead-letter queue"
    )


def retry_command(args: argparse.Namespace) -> int:
    from ownpage_sync.settings import Settings

    url = _queue_url("RETRY_QUEUE_URL", "`retry`")
    Settings.from_env()  # fail here, naming every bad variable, rather than once per message
    client = _sqs()
    print(
        f"ownpage-sync: warning: {_receive_warning(queue_name(url), max_receive_count(client, url))}", file=sys.stderr
    )
    result = drain(url, args.max_messages, args.time_budget, args.wait, client=client)
    text = (
        f"retry queue {result.queue}: {result.received} messages in {result.batches} batches; "
        f"{result.succeeded} done and deleted, {result.failed} failed and visible again"
    )
    limit = f" of {result.max_receive_count}" if result.max_receive_count else ""
    for message_id, receives in list(result.failed_receives.items())[:MAX_LISTED_FAILURES]:
        last = result.max_receive_count is not None and receives >= result.max_receive_count
        text += f"\n  {message_id}: failed on receive {receives}{limit}" + (
            ", its last: SQS moves it to the dead-letter queue at the next receive" if last else ""
        )
    if result.failed > MAX_LISTED_FAILURES:
        text += f"\n  ... and {result.failed - MAX_LISTED_FAILURES} more"
    if result.failed:
        text += "\nper-message reasons are in the handler's log lines (stderr): look for 'retry message failed'"
    _print(result.to_dict(), text, args)
    if result.failed:
        going = f", {result.going_to_dlq} of them on their last receive" if result.going_to_dlq else ""
        raise OutcomeError(
            f"{result.failed} of {result.received} retry messages still failing{going} "
            f"(visible again on {result.queue})",
            exit_codes.NOT_CONVERGED,
        )
    return exit_codes.OK


# -- dlq -----------------------------------------------------------------------------------------


@dataclass
class KindSummary:
    messages: int = 0
    operations: int = 0


@dataclass
class ErrorSummary:
    """Dead letters that failed the same way: one error kind and HTTP status, their reasons counted."""

    messages: int = 0
    operations: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def to_dict(self, kind: str, status: int | None) -> dict[str, Any]:
        ((reason, _),) = self.reasons.most_common(1) or [("", 0)]
        return {
            "kind": kind,
            "status": status,
            "messages": self.messages,
            "operations": self.operations,
            "reason": reason,
            "other_reasons": len(self.reasons) - 1 if self.reasons else 0,
        }


@dataclass
class DlqSummary:
    queue: str
    approximate_visible: int
    approximate_in_flight: int
    examined: int = 0
    operations: int = 0
    by_kind: dict[str, KindSummary] = field(default_factory=dict)
    by_error: dict[tuple[str, int | None], ErrorSummary] = field(default_factory=dict)
    oldest_sent_at: datetime | None = None
    oldest_failure_at: datetime | None = None
    run_ids: list[str] = field(default_factory=list)
    lists: list[int] = field(default_factory=list)

    def add(self, message: Mapping[str, Any]) -> None:
        from ownpage_sync.errors import InvalidRetryMessage
        from ownpage_sync.retry_queue import RetryMessage

        self.examined += 1
        try:
            parsed: RetryMessage | None = RetryMessage.from_json(message.get("Body", ""))
            reason = parsed.last_error.reason
        except InvalidRetryMessage as exc:
            parsed, reason = None, str(exc)  # says what is wrong with the body, never quotes it
        kind = "unreadable (poison)" if parsed is None else parsed.last_error.kind
        status = None if parsed is None else parsed.last_error.status
        summary = self.by_kind.setdefault(kind, KindSummary())
        summary.messages += 1
        error = self.by_error.setdefault((kind, status), ErrorSummary())
        error.messages += 1
        error.reasons[reason] += 1
        sent = message.get("Attributes", {}).get("SentTimestamp")
        if sent is not None:
            moment = datetime.fromtimestamp(int(sent) / 1000, tz=UTC)
            self.oldest_sent_at = min(filter(None, (self.oldest_sent_at, moment)))
        if parsed is None:
            return
        summary.operations += len(parsed.operations)
        error.operations += len(parsed.operations)
        self.operations += len(parsed.operations)
        self.oldest_failure_at = min(filter(None, (self.oldest_failure_at, parsed.first_failed_at)))
        if parsed.run_id not in self.run_ids and len(self.run_ids) < MAX_RUN_ID_SAMPLES:
            self.run_ids.append(parsed.run_id)
        if parsed.list_id not in self.lists:
            self.lists.append(parsed.list_id)

    def to_dict(self, now: datetime) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "approximate_visible": self.approximate_visible,
            "approximate_in_flight": self.approximate_in_flight,
            "examined": self.examined,
            "operations": self.operations,
            "by_kind": {kind: vars(s) for kind, s in sorted(self.by_kind.items())},
            "by_error": [error.to_dict(kind, status) for (kind, status), error in self._errors()],
            "oldest_sent_at": self.oldest_sent_at.isoformat() if self.oldest_sent_at else None,
            "oldest_age_seconds": round((now - self.oldest_sent_at).total_seconds()) if self.oldest_sent_at else None,
            "oldest_failure_at": self.oldest_failure_at.isoformat() if self.oldest_failure_at else None,
            "run_ids_sample": self.run_ids,
            "list_ids": self.lists,
        }

    def render(self, now: datetime) -> str:
        lines = [
            f"dead-letter queue {self.queue}: about {self.approximate_visible} messages visible, "
            f"{self.approximate_in_flight} in flight"
        ]
        if not self.examined:
            lines.append("nothing to read: the dead-letter queue is empty")
            return "\n".join(lines)
        lines.append(f"examined {self.examined} messages holding {self.operations} operations")
        lines.append("by error (what to do: docs/runbook.md, 'Decide by error kind'):")
        rows = [("KIND", "HTTP", "MESSAGES", "OPERATIONS", "REASON (why it was queued)")]
        for (kind, status), error in self._errors():
            summary = error.to_dict(kind, status)
            reason = _shorten(summary["reason"]) or "-"
            if summary["other_reasons"]:
                reason += f" (+{summary['other_reasons']} other reasons: --json)"
            rows.append((kind, str(status or "-"), str(error.messages), str(error.operations), reason))
        widths = [max(len(row[column]) for row in rows) for column in range(4)]
        for row in rows:
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]), row[3].rjust(widths[3])]
            lines.append("  " + "  ".join(cells) + "  " + row[4])
        if self.oldest_sent_at is not None:
            age = _age((now - self.oldest_sent_at).total_seconds())
            lines.append(f"oldest message: first sent {self.oldest_sent_at:%Y-%m-%d %H:%M:%S} UTC ({age} ago)")
        if self.oldest_failure_at is not None:
            lines.append(f"oldest failure: {self.oldest_failure_at:%Y-%m-%d %H:%M:%S} UTC")
        lines.append(f"run ids (sample): {', '.join(self.run_ids) or '-'}")
        lines.append("nothing was consumed: every message read is visible again")
        return "\n".join(lines)

    def _errors(self) -> list[tuple[tuple[str, int | None], ErrorSummary]]:
        return sorted(self.by_error.items(), key=lambda item: (-item[1].messages, item[0][0], item[0][1] or 0))


def _shorten(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _age(seconds: float) -> str:
    minutes, _ = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def summarise_dlq(url: str, max_messages: int, wait: float, client: Any = None) -> DlqSummary:
    """Read up to `max_messages` dead letters, then make every one visible again."""
    client = client or _sqs()
    counts = client.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    summary = DlqSummary(
        queue_name(url),
        int(counts.get("ApproximateNumberOfMessages", 0)),
        int(counts.get("ApproximateNumberOfMessagesNotVisible", 0)),
    )
    receipts: list[str] = []
    try:
        while summary.examined < max_messages:
            messages = _receive(client, url, wait, visibility=PEEK_VISIBILITY_SECONDS)
            if not messages:
                break
            for message in messages[: max_messages - summary.examined]:
                summary.add(message)
            receipts += [m["ReceiptHandle"] for m in messages]
    finally:
        _make_visible(client, url, receipts)
    return summary


def dlq_command(args: argparse.Namespace) -> int:
    url = _queue_url("DEAD_LETTER_QUEUE_URL", "`dlq`")
    summary = summarise_dlq(url, args.max_messages, args.wait)
    now = datetime.now(UTC)
    _print(summary.to_dict(now), summary.render(now), args)
    return exit_codes.OK


# -- redrive -------------------------------------------------------------------------------------


@dataclass
class RedriveResult:
    source: str
    destination: str
    method: str  # move_task | manual
    task_handle: str | None = None
    approximate_to_move: int | None = None
    moved: int = 0
    failed: int = 0
    fallback_reason: str | None = None
    error: str | None = None  # why a manual move stopped early


def _queue_arn(client: Any, url: str) -> str:
    arn: str = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return arn


def _start_move_task(dlq_url: str, retry_url: str, result: RedriveResult, client: Any) -> bool:
    """True when a move task started; False (with the reason) when the API is not available here."""
    from botocore.exceptions import BotoCoreError, ClientError

    once = _sqs(max_attempts=1)  # an unavailable API must not be retried with backoff
    try:
        source_arn, destination_arn = _queue_arn(client, dlq_url), _queue_arn(client, retry_url)
        task = once.start_message_move_task(SourceArn=source_arn, DestinationArn=destination_arn)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "unknown"))
        if code not in _MOVE_TASK_UNAVAILABLE and not code.startswith("5"):
            raise
        result.fallback_reason = f"StartMessageMoveTask unavailable ({code})"
        return False
    except BotoCoreError as exc:
        result.fallback_reason = f"StartMessageMoveTask unavailable ({type(exc).__name__})"
        return False
    result.task_handle = task.get("TaskHandle")
    counts = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["ApproximateNumberOfMessages"])
    result.approximate_to_move = int(counts["Attributes"].get("ApproximateNumberOfMessages", 0))
    return True


def _attributes_for_send(attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    keep = ("DataType", "StringValue", "BinaryValue")
    return {name: {k: v for k, v in value.items() if k in keep} for name, value in attributes.items()}


def move_messages(
    dlq_url: str, retry_url: str, max_messages: int, wait: float, result: RedriveResult, client: Any
) -> None:
    """Receive → send to the RetryQueue → delete, one message at a time; stop at the first refusal
    (what was not moved stays on the dead-letter queue, visible again)."""
    from botocore.exceptions import BotoCoreError, ClientError

    while result.moved < max_messages:
        messages = _receive(client, dlq_url, wait, visibility=MOVE_VISIBILITY_SECONDS)
        if not messages:
            return
        for index, message in enumerate(messages):
            if result.moved >= max_messages:
                _make_visible(client, dlq_url, [m["ReceiptHandle"] for m in messages[index:]])
                return
            try:
                client.send_message(
                    QueueUrl=retry_url,
                    MessageBody=message["Body"],
                    MessageAttributes=_attributes_for_send(message.get("MessageAttributes", {})),
                )
            except (ClientError, BotoCoreError) as exc:
                code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
                result.failed += 1
                result.error = f"the RetryQueue refused a message: {code or type(exc).__name__}"
                _make_visible(client, dlq_url, [m["ReceiptHandle"] for m in messages[index:]])
                return
            # Deleted only once the copy is on the RetryQueue: a crash here duplicates, never loses.
            client.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
            result.moved += 1


def redrive(
    dlq_url: str, retry_url: str, manual: bool, max_messages: int, wait: float, client: Any = None
) -> RedriveResult:
    client = client or _sqs()
    result = RedriveResult(queue_name(dlq_url), queue_name(retry_url), method="move_task")
    if not manual and _start_move_task(dlq_url, retry_url, result, client):
        return result
    result.method = "manual"
    move_messages(dlq_url, retry_url, max_messages, wait, result, client)
    return result


def redrive_command(args: argparse.Namespace) -> int:
    dlq_url = _queue_url("DEAD_LETTER_QUEUE_URL", "`redrive`")
    retry_url = _queue_url("RETRY_QUEUE_URL", "`redrive`")
    result = redrive(dlq_url, retry_url, args.manual, args.max_messages, args.wait)
    if result.method == "move_task":
        text = (
            f"move task {result.task_handle} started: about {result.approximate_to_move} messages from "
            f"{result.source} back to {result.destination}. It runs in the background; "
            "follow it with `ownpage-sync dlq` (the count falls to 0)."
        )
    else:
        why = f"{result.fallback_reason}; " if result.fallback_reason else ""
        text = f"{why}moved {result.moved} messages one by one from {result.source} back to {result.destination}"
        if result.error:
            text += f"\nSTOPPED: {result.error}; the rest is still on {result.source}"
    _print(vars(result), text, args)
    if result.error:
        raise OutcomeError(f"redrive stopped after {result.moved} messages: {result.error}", exit_codes.FAILED)
    return exit_codes.OK
