"""Retry messages: operations Ownpage kept refusing, stored on the SQS RetryQueue for the retry function.

A message explains itself to someone reading it in the SQS console: what failed (last_error), when,
how often, for which list and run, and every operation in the form of `Operation.to_dict()`.

Writer and reader apply one rule to an operation (`check_operation`): the writer sets a bad one
aside on its own instead of queueing it, and the reader skips (and reports) a bad one without
failing the good operations of the same message.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ownpage_sync import aws
from ownpage_sync.deadline import Deadline
from ownpage_sync.emails import MAX_LENGTH, canonical_key
from ownpage_sync.errors import InvalidRetryMessage, RetryQueueError
from ownpage_sync.models import Action, Operation
from ownpage_sync.ports import Failure, QueueReceipt
from ownpage_sync.values import json_text

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 (before addresses kept Ownpage's spelling) is still read
# SQS counts the body and the message attributes against one limit (1 MiB since 2025), and a
# SendMessageBatch call against the same limit in all. Messages stay far below it: the retry
# function re-checks every operation of a message against Ownpage, one look-up each, so a message's
# cost must stay small (docs/scaling.md).
SQS_MAX_MESSAGE_BYTES = 1_048_576
ATTRIBUTE_HEADROOM_BYTES = 16_384
MAX_BODY_BYTES = 256 * 1024
MAX_MESSAGE_OPERATIONS = 500
SEND_BATCH = 10  # SQS's maximum entries per SendMessageBatch
MAX_REASON_CHARS = 500  # in the body; the attribute copy is shorter still
MAX_ATTRIBUTE_REASON_CHARS = 256
MAX_DATA_VALUE_CHARS = 10_000
_ACTIONS = {action.value: action for action in Action}
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,127}")
# Characters SQS refuses in a body (it accepts #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000+).
_SQS_UNSAFE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def check_operation(entry: Any) -> Operation | str:
    """An operation from its message form, or why it cannot be one (never quoting an address)."""
    if not isinstance(entry, Mapping):
        return "is not an object"
    raw_action = entry.get("action")
    action = _ACTIONS.get(raw_action) if isinstance(raw_action, str) else None
    if action is None:
        return f"action must be one of {', '.join(sorted(_ACTIONS))}"
    email = entry.get("email")
    if not isinstance(email, str) or not email.strip():
        return "email must be a non-empty string"
    if not canonical_key(email):
        return "email must name an address (it holds invisible characters only)"
    if len(email) > MAX_LENGTH:
        return f"email is longer than {MAX_LENGTH} characters"
    guid, data, cause = entry.get("guid"), entry.get("data"), entry.get("unsubscribed_cause")
    if guid is not None and not isinstance(guid, str):
        return "guid must be a string or null"
    if data is None:
        data = {}
    if not isinstance(data, Mapping) or not all(
        isinstance(name, str) and isinstance(value, str) and len(value) <= MAX_DATA_VALUE_CHARS
        for name, value in data.items()
    ):
        return "data must be an object of strings"
    if cause is not None and not isinstance(cause, str):
        return "unsubscribed_cause must be a string or null"
    return Operation(action, email, guid, dict(data), cause)


@dataclass(frozen=True)
class LastError:
    """The error that sent the operations to the queue: a stable kind, the HTTP status, a short reason."""

    kind: str
    reason: str
    status: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "status": self.status, "reason": self.reason}


@dataclass(frozen=True)
class RetryMessage:
    """One SQS message body: operations of one list and one run, and why they are waiting."""

    list_id: int
    run_id: str
    operations: tuple[Operation, ...]
    last_error: LastError
    attempts: int = 1
    first_failed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_attempt_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    run_started_at: datetime | None = None  # a message older than the last converged run is superseded
    part: int = 1  # a batch too large for one message is split: part `part` of `parts`
    parts: int = 1
    schema_version: int = SCHEMA_VERSION
    invalid: tuple[tuple[int, str], ...] = ()  # (index, problem) of entries the reader set aside

    @classmethod
    def for_failure(
        cls,
        list_id: int,
        run_id: str,
        operations: Sequence[Operation],
        failure: Failure,
        run_started_at: datetime | None = None,
    ) -> RetryMessage:
        now = datetime.now(UTC)
        last_attempt_at = failure.last_attempt_at or now
        return cls(
            list_id=list_id,
            run_id=run_id,
            operations=tuple(operations),
            last_error=LastError(failure.kind, failure.reason[:MAX_REASON_CHARS], failure.status),
            attempts=max(1, failure.attempts),
            first_failed_at=failure.first_failed_at or last_attempt_at,
            last_attempt_at=last_attempt_at,
            run_started_at=run_started_at,
        )

    def envelope(self) -> dict[str, Any]:
        # Key order is for the human reading the console: what and why first, the long list last.
        return {
            "schema_version": self.schema_version,
            "list_id": self.list_id,
            "run_id": self.run_id,
            "run_started_at": _timestamp(self.run_started_at) if self.run_started_at else None,
            "last_error": self.last_error.to_dict(),
            "attempts": self.attempts,
            "first_failed_at": _timestamp(self.first_failed_at),
            "last_attempt_at": _timestamp(self.last_attempt_at),
            "part": self.part,
            "parts": self.parts,
            "operation_count": len(self.operations),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.envelope(), "operations": [operation.to_dict() for operation in self.operations]}

    def to_json(self) -> str:
        """Compact JSON, non-ASCII kept readable unless SQS could not carry a character of it."""
        return _body(self.envelope(), [_encode(op) for op in self.operations])

    @classmethod
    def from_json(cls, body: str) -> RetryMessage:
        """Parse and validate a body; raise InvalidRetryMessage (never quoting an address) when malformed."""
        try:
            raw = json.loads(body)
        except (TypeError, ValueError):
            raise InvalidRetryMessage("body is not JSON") from None
        except RecursionError:  # arrays or objects nested thousands deep: no writer makes these
            raise InvalidRetryMessage("body nests too deeply to be a retry message") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> RetryMessage:
        if not isinstance(raw, dict):
            raise InvalidRetryMessage("body is not a JSON object")
        version = raw.get("schema_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise InvalidRetryMessage(
                f"schema_version must be one of {', '.join(map(str, READABLE_VERSIONS))}, got {_shape(version)}"
            )
        list_id = _integer(raw, "list_id", low=1)
        run_id = raw.get("run_id")
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise InvalidRetryMessage("run_id must be a run id (letters, digits and :._- only)")
        error = raw.get("last_error")
        if not isinstance(error, dict):
            raise InvalidRetryMessage("last_error must be an object")
        kind, reason, status = error.get("kind"), error.get("reason"), error.get("status")
        if not isinstance(kind, str) or not kind:
            raise InvalidRetryMessage("last_error.kind must be a non-empty string")
        if not isinstance(reason, str):
            raise InvalidRetryMessage("last_error.reason must be a string")
        if status is not None and (not isinstance(status, int) or isinstance(status, bool)):
            raise InvalidRetryMessage("last_error.status must be an integer or null")
        part, parts = _integer(raw, "part", low=1), _integer(raw, "parts", low=1)
        if part > parts:
            raise InvalidRetryMessage("part must not exceed parts")
        entries = raw.get("operations")
        if not isinstance(entries, list) or not entries:
            raise InvalidRetryMessage("operations must be a non-empty array")
        if raw.get("operation_count", len(entries)) != len(entries):
            raise InvalidRetryMessage("operation_count does not match the operations listed")
        operations: list[Operation] = []
        invalid: list[tuple[int, str]] = []
        for index, entry in enumerate(entries):
            checked = check_operation(entry)
            if isinstance(checked, str):
                invalid.append((index, checked))
            else:
                # Version 1 sent a subscribe with `subscribed: true`; it is read as a subscribe all the
                # same: the retry path re-plans each operation against what Ownpage shows now.
                operations.append(checked)
        if not operations:
            raise InvalidRetryMessage(f"no valid operation (operations[{invalid[0][0]}]: {invalid[0][1]})")
        started = raw.get("run_started_at")
        return cls(
            list_id=list_id,
            run_id=run_id,
            operations=tuple(operations),
            last_error=LastError(kind, reason[:MAX_REASON_CHARS], status),
            attempts=_integer(raw, "attempts", low=1),
            first_failed_at=_datetime(raw, "first_failed_at"),
            last_attempt_at=_datetime(raw, "last_attempt_at"),
            run_started_at=_datetime(raw, "run_started_at") if started is not None else _started_from(run_id),
            part=part,
            parts=parts,
            schema_version=version,
            invalid=tuple(invalid),
        )

    def attributes(self) -> dict[str, dict[str, str]]:
        """SQS message attributes: the reason, filterable and visible without opening the body."""
        values: dict[str, tuple[str, str | int | None]] = {
            "ErrorKind": ("String", self.last_error.kind),
            "HttpStatus": ("Number", self.last_error.status),
            # An attribute has no escapes: a character SQS would refuse (or botocore fail to encode) is replaced.
            "ErrorReason": ("String", _SQS_UNSAFE.sub("\ufffd", self.last_error.reason[:MAX_ATTRIBUTE_REASON_CHARS])),
            "ListId": ("Number", self.list_id),
            "RunId": ("String", self.run_id),
            "OperationCount": ("Number", len(self.operations)),
            "SchemaVersion": ("Number", self.schema_version),
        }
        # SQS refuses empty attribute values: leave out what is unknown.
        return {
            name: {"DataType": kind, "StringValue": str(value)}
            for name, (kind, value) in values.items()
            if value is not None and str(value) != ""
        }


def _started_from(run_id: str) -> datetime | None:
    """A version 1 message has no run_started_at; the run id starts with the run's UTC start."""
    try:
        return datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def _json(value: Any) -> str:
    """Compact JSON, non-ASCII kept readable unless SQS could not carry a character of it: then
    JSON's \\u escapes (which carry any character) for this piece alone, so it is measured as sent."""
    return json_text(value, _SQS_UNSAFE, separators=(",", ":"))


def _encode(operation: Operation) -> str:
    return _json(operation.to_dict())


def _body(envelope: Mapping[str, Any], operations: Sequence[str]) -> str:
    return _json(dict(envelope))[:-1] + ',"operations":[' + ",".join(operations) + "]}"


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _shape(value: Any) -> str:
    """Describe a bad value without quoting free text (which could be an address)."""
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return json.dumps(value)
    return type(value).__name__


def _integer(raw: Mapping[str, Any], name: str, low: int) -> int:
    value = raw.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InvalidRetryMessage(f"{name} must be an integer of at least {low}, got {_shape(value)}")
    return value


def _datetime(raw: Mapping[str, Any], name: str) -> datetime:
    value = raw.get(name)
    try:
        text = value.replace("Z", "+00:00") if isinstance(value, str) else None
        moment = datetime.fromisoformat(text) if text is not None else None
        # In UTC, or out of datetime's range (year 1 at +01:00): converted here, where it is caught.
        moment = moment.astimezone(UTC) if moment is not None and moment.tzinfo is not None else None
    except (ValueError, OverflowError):
        moment = None
    if moment is None:
        raise InvalidRetryMessage(f"{name} must be an ISO-8601 time with a zone")
    return moment


def _operation_budget(message: RetryMessage, max_body_bytes: int) -> int:
    """Bytes a part's operations may take: the body limit less its envelope (digits of part/parts grow)."""
    return max_body_bytes - len(json.dumps(message.envelope()).encode()) - 128


def split_messages(
    message: RetryMessage,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_operations: int = MAX_MESSAGE_OPERATIONS,
    encoded: Sequence[str] | None = None,
) -> list[tuple[RetryMessage, str]]:
    """Cut a message into parts of at most `max_operations` whose bodies fit in `max_body_bytes`
    (order kept): each part with its body, every operation encoded once (`encoded`: already done)."""
    encoded = [_encode(op) for op in message.operations] if encoded is None else list(encoded)
    sizes = [len(text.encode()) + 1 for text in encoded]
    budget = _operation_budget(message, max_body_bytes)
    groups: list[tuple[int, int]] = []
    start, used = 0, 0
    for index, size in enumerate(sizes):
        if size > budget:
            raise RetryQueueError(f"one operation is larger than a retry message may be ({size} bytes)")
        if index > start and (used + size > budget or index - start >= max_operations):
            groups.append((start, index))
            start, used = index, 0
        used += size
    groups.append((start, len(sizes)))
    parts = []
    for number, (first, last) in enumerate(groups, start=1):
        part = replace(message, operations=message.operations[first:last], part=number, parts=len(groups))
        parts.append((part, _body(part.envelope(), encoded[first:last])))
    return parts


def queue_name(queue_url: str) -> str:
    """The queue's name (last path segment of its URL), for messages and logs."""
    return queue_url.rstrip("/").rsplit("/", 1)[-1]


class SqsRetryQueue:
    """The RetryQueue (ports.FailedOperationsSink): small self-explaining messages, sent ten at a time,
    as long as its deadline allows (the run's writes stop earlier, leaving time to queue)."""

    def __init__(
        self,
        queue_url: str,
        client: Any = None,
        deadline: Deadline | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ):
        self.queue_url = queue_url
        self.name = queue_name(queue_url)
        self.deadline = deadline or Deadline.unlimited()
        self.max_body_bytes = max_body_bytes
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client(
                "sqs", retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20
            )
        return self._client

    def put(
        self,
        list_id: int,
        run_id: str,
        operations: Sequence[Operation],
        failure: Failure,
        run_started_at: datetime | None = None,
    ) -> QueueReceipt:
        """Send the operations as messages, in order; stop when the deadline is reached (the rest is
        the caller's to defer). Raises RetryQueueError (with what was stored, and exactly which
        operations were not) if SQS refuses, or for an operation no retry message can carry."""
        if not operations:
            return QueueReceipt(0, 0)
        if not _RUN_ID.fullmatch(run_id):
            raise RetryQueueError(f"retry queue {self.name}: the run id is not one the retry function reads")
        message = RetryMessage.for_failure(list_id, run_id, operations, failure, run_started_at)
        encoded = [_encode(op) for op in operations]
        # What the reader would set aside (or no message can hold) is not queued, and only that:
        # every other operation is queued as usual, then the refusal names exactly what the queue
        # does not hold (the bad ones, and any good one SQS refused or the deadline left out), never
        # dropping any silently.
        budget = _operation_budget(message, self.max_body_bytes)
        bad: list[tuple[int, str]] = []
        for index, (operation, text) in enumerate(zip(operations, encoded, strict=True)):
            checked = check_operation(operation.to_dict())
            size = len(text.encode()) + 1
            if isinstance(checked, str):
                bad.append((index, checked))
            elif size > budget:
                bad.append((index, f"is larger than a retry message may be ({size} bytes)"))
        if bad:
            refused = {index for index, _ in bad}
            good = [op for index, op in enumerate(operations) if index not in refused]
            try:
                stored = self.put(list_id, run_id, good, failure, run_started_at)
                unqueued = good[stored.queued :]
            except RetryQueueError as exc:
                stored = QueueReceipt(exc.queued, exc.messages)
                unqueued = list(exc.unstored) if exc.unstored is not None else good[exc.queued :]
            first, problem = bad[0]
            raise RetryQueueError(
                f"retry queue {self.name}: {len(bad)} operation(s) cannot be queued (operations[{first}]: {problem})",
                queued=stored.queued,
                messages=stored.messages,
                unstored=(*(operations[index] for index, _ in bad), *unqueued),
            )
        parts = split_messages(message, self.max_body_bytes, encoded=encoded)
        queued = messages = 0
        batch: list[tuple[RetryMessage, str]] = []
        batch_bytes = 0
        for number, part in enumerate([*parts, None]):
            full = part is None or len(batch) == SEND_BATCH
            if (
                part is not None
                and batch_bytes + len(part[1].encode()) + ATTRIBUTE_HEADROOM_BYTES > SQS_MAX_MESSAGE_BYTES
            ):
                full = True
            if full and batch:
                if self.deadline.expired():
                    break
                refused, error = self._send(batch)
                if refused:
                    # Exactly what the queue holds is counted; the rest (refused, and not yet sent)
                    # goes back to the caller to report in full.
                    kept = [sent for index, (sent, _) in enumerate(batch) if index not in refused]
                    unstored = [
                        op for index, (sent, _) in enumerate(batch) if index in refused for op in sent.operations
                    ]
                    unstored += [op for later, _ in parts[number:] for op in later.operations]
                    raise RetryQueueError(
                        error,
                        queued=queued + sum(len(sent.operations) for sent in kept),
                        messages=messages + len(kept),
                        unstored=tuple(unstored),
                    )
                queued += sum(len(sent.operations) for sent, _ in batch)
                messages += len(batch)
                batch, batch_bytes = [], 0
            if part is not None:
                batch.append(part)
                batch_bytes += len(part[1].encode()) + ATTRIBUTE_HEADROOM_BYTES
        log.info(
            "failed operations queued for retry",
            extra={
                "queue": self.name,
                "list_id": list_id,
                "run_id": run_id,
                "operations": len(operations),
                "queued": queued,
                "messages": messages,
                "error_kind": failure.kind,
            },
        )
        return QueueReceipt(queued, messages)

    def _send(self, batch: Sequence[tuple[RetryMessage, str]]) -> tuple[set[int], str]:
        """Send up to ten messages; the positions SQS did not store (after one more try), and why."""
        from botocore.exceptions import BotoCoreError, ClientError

        entries = [
            {"Id": str(index), "MessageBody": body, "MessageAttributes": part.attributes()}
            for index, (part, body) in enumerate(batch)
        ]
        operations = sum(len(part.operations) for part, _ in batch)
        pending = set(range(len(entries)))
        try:
            for _ in range(2):  # SQS may refuse single entries: try those once more, then give up
                answer = self.client.send_message_batch(
                    QueueUrl=self.queue_url, Entries=[entries[index] for index in sorted(pending)]
                )
                failed = answer.get("Failed") or []
                pending = {int(entry["Id"]) for entry in failed}
                if not pending:
                    return set(), ""
            code = failed[0].get("Code", "unknown")
            return pending, f"retry queue {self.name} refused {len(pending)} of {len(batch)} messages: {code}"
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            return pending, f"retry queue {self.name} refused {operations} operations: {code}"
        except BotoCoreError as exc:
            return (
                pending,
                f"retry queue {self.name} could not be reached for {operations} operations: {type(exc).__name__}",
            )
