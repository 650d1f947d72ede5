"""Retry messages: operations Ownpage kept refusing, stored on the SQS RetryQueue for the retry function.

A message explains itself to someone reading it in the SQS console: what failed (last_error), when,
how often, for which list and run, and every operation in the form of `Operation.to_dict()`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from ownpage_sync.emails import is_valid_email, normalise_email
from ownpage_sync.errors import InvalidRetryMessage, RetryQueueError
from ownpage_sync.models import Action, Operation
from ownpage_sync.ports import Failure

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# SQS counts the body and the message attributes against one limit (1 MiB since 2025). Attributes
# here are a few hundred bytes; the headroom also covers a redrive adding its own.
SQS_MAX_MESSAGE_BYTES = 1_048_576
ATTRIBUTE_HEADROOM_BYTES = 16_384
MAX_BODY_BYTES = SQS_MAX_MESSAGE_BYTES - ATTRIBUTE_HEADROOM_BYTES
MAX_REASON_CHARS = 500  # in the body; the attribute copy is shorter still
MAX_ATTRIBUTE_REASON_CHARS = 256
_ACTIONS = frozenset(action.value for action in Action)


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
    part: int = 1  # a batch too large for one message is split: part `part` of `parts`
    parts: int = 1
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def for_failure(cls, list_id: int, run_id: str, operations: Sequence[Operation], failure: Failure) -> RetryMessage:
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
        )

    def to_dict(self) -> dict[str, Any]:
        # Key order is for the human reading the console: what and why first, the long list last.
        return {
            "schema_version": self.schema_version,
            "list_id": self.list_id,
            "run_id": self.run_id,
            "last_error": self.last_error.to_dict(),
            "attempts": self.attempts,
            "first_failed_at": _timestamp(self.first_failed_at),
            "last_attempt_at": _timestamp(self.last_attempt_at),
            "part": self.part,
            "parts": self.parts,
            "operation_count": len(self.operations),
            "operations": [operation.to_dict() for operation in self.operations],
        }

    def to_json(self) -> str:
        """Compact JSON, non-ASCII kept readable unless SQS could not carry a character of it."""
        body = json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))
        if not _sqs_safe(body):
            body = json.dumps(self.to_dict(), ensure_ascii=True, separators=(",", ":"))
        return body

    @classmethod
    def from_json(cls, body: str) -> RetryMessage:
        """Parse and validate a body; raise InvalidRetryMessage (never quoting an address) when malformed."""
        try:
            raw = json.loads(body)
        except (TypeError, ValueError):
            raise InvalidRetryMessage("body is not JSON") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> RetryMessage:
        if not isinstance(raw, dict):
            raise InvalidRetryMessage("body is not a JSON object")
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION or isinstance(version, bool):
            raise InvalidRetryMessage(f"schema_version must be {SCHEMA_VERSION}, got {_shape(version)}")
        list_id = _integer(raw, "list_id", low=1)
        run_id = raw.get("run_id")
        if not isinstance(run_id, str):
            raise InvalidRetryMessage("run_id must be a string")
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
        operations = _operations(raw.get("operations"))
        if raw.get("operation_count", len(operations)) != len(operations):
            raise InvalidRetryMessage("operation_count does not match the operations listed")
        return cls(
            list_id=list_id,
            run_id=run_id,
            operations=operations,
            last_error=LastError(kind, reason, status),
            attempts=_integer(raw, "attempts", low=1),
            first_failed_at=_datetime(raw, "first_failed_at"),
            last_attempt_at=_datetime(raw, "last_attempt_at"),
            part=part,
            parts=parts,
        )

    def attributes(self) -> dict[str, dict[str, str]]:
        """SQS message attributes: the reason, filterable and visible without opening the body."""
        values: dict[str, tuple[str, str | int | None]] = {
            "ErrorKind": ("String", self.last_error.kind),
            "HttpStatus": ("Number", self.last_error.status),
            "ErrorReason": ("String", self.last_error.reason[:MAX_ATTRIBUTE_REASON_CHARS]),
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


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sqs_safe(body: str) -> bool:
    """Whether every character is one SQS accepts (#x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000+)."""
    return all(
        ch in "\t\n\r" or "\x20" <= ch <= "\ud7ff" or "\ue000" <= ch <= "\ufffd" or ch >= "\U00010000" for ch in body
    )


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
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidRetryMessage(f"{name} must be an ISO-8601 time with a zone")
    return moment.astimezone(UTC)


def _operations(raw: Any) -> tuple[Operation, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRetryMessage("operations must be a non-empty array")
    operations = []
    for index, entry in enumerate(raw):
        where = f"operations[{index}]"
        if not isinstance(entry, dict):
            raise InvalidRetryMessage(f"{where} must be an object")
        action = entry.get("action")
        if not isinstance(action, str) or action not in _ACTIONS:
            raise InvalidRetryMessage(f"{where}.action must be one of {', '.join(sorted(_ACTIONS))}")
        email = entry.get("email")
        if not isinstance(email, str) or not is_valid_email(normalise_email(email)):
            raise InvalidRetryMessage(f"{where}.email is not a valid address")
        guid, data, cause = entry.get("guid"), entry.get("data"), entry.get("unsubscribed_cause")
        if guid is not None and not isinstance(guid, str):
            raise InvalidRetryMessage(f"{where}.guid must be a string or null")
        if data is not None and not (isinstance(data, dict) and all(isinstance(value, str) for value in data.values())):
            raise InvalidRetryMessage(f"{where}.data must be an object of strings")
        if cause is not None and not isinstance(cause, str):
            raise InvalidRetryMessage(f"{where}.unsubscribed_cause must be a string or null")
        operation = Operation.from_dict(entry)
        operations.append(
            Operation(
                operation.action,
                normalise_email(operation.email),
                operation.guid,
                operation.data,
                operation.unsubscribed_cause,
            )
        )
    return tuple(operations)


def split_messages(message: RetryMessage, max_body_bytes: int = MAX_BODY_BYTES) -> list[RetryMessage]:
    """Cut a message into parts whose encoded bodies each fit in `max_body_bytes` (order kept)."""
    envelope = len(replace(message, operations=()).to_json().encode())
    # Generous allowance for the envelope growing when part/parts/operation_count gain digits.
    budget = max_body_bytes - envelope - 64
    groups: list[list[Operation]] = [[]]
    used = 0
    for operation in message.operations:
        size = len(json.dumps(operation.to_dict(), ensure_ascii=False, separators=(",", ":")).encode()) + 1
        if size > budget:
            raise RetryQueueError(f"one operation is larger than a retry message may be ({size} bytes)")
        if used + size > budget and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append(operation)
        used += size
    parts = [
        replace(message, operations=tuple(group), part=number, parts=len(groups))
        for number, group in enumerate(groups, start=1)
    ]
    for part in parts:
        # to_json may fall back to ASCII escapes, which are longer: measure what is really sent.
        if len(part.to_json().encode()) > max_body_bytes and len(part.operations) > 1:
            return _halve(message, max_body_bytes)
    return parts


def _halve(message: RetryMessage, max_body_bytes: int) -> list[RetryMessage]:
    """Slow path for bodies that must be ASCII-escaped: split by halves until every part fits."""
    pending = [list(message.operations)]
    groups: list[list[Operation]] = []
    while pending:
        group = pending.pop(0)
        body = replace(message, operations=tuple(group)).to_json()
        if len(body.encode()) + 64 <= max_body_bytes or len(group) == 1:
            groups.append(group)
        else:
            middle = len(group) // 2
            pending[:0] = [group[:middle], group[middle:]]
    return [
        replace(message, operations=tuple(group), part=number, parts=len(groups))
        for number, group in enumerate(groups, start=1)
    ]


def queue_name(queue_url: str) -> str:
    """The queue's name (last path segment of its URL), for messages and logs."""
    return queue_url.rstrip("/").rsplit("/", 1)[-1]


class SqsRetryQueue:
    """The RetryQueue (ports.FailedOperationsSink): one or more messages per failed batch."""

    def __init__(self, queue_url: str, client: Any = None, max_body_bytes: int = MAX_BODY_BYTES):
        self.queue_url = queue_url
        self.name = queue_name(queue_url)
        self.max_body_bytes = max_body_bytes
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client(
                "sqs",
                config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20),
            )
        return self._client

    def put(self, list_id: int, run_id: str, operations: Sequence[Operation], failure: Failure) -> int:
        """Send the operations as messages within SQS's size limit; return how many were written.

        Raises RetryQueueError if SQS refuses any of them. Parts sent before the refusal stay queued:
        the caller reports the whole batch as failed, and replaying those parts later is harmless.
        """
        if not operations:
            return 0
        message = RetryMessage.for_failure(list_id, run_id, operations, failure)
        parts = split_messages(message, self.max_body_bytes)
        for part in parts:
            self._send(part)
        log.info(
            "failed operations queued for retry",
            extra={
                "queue": self.name,
                "list_id": list_id,
                "run_id": run_id,
                "operations": len(operations),
                "messages": len(parts),
                "error_kind": failure.kind,
            },
        )
        return len(parts)

    def _send(self, message: RetryMessage) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.send_message(
                QueueUrl=self.queue_url, MessageBody=message.to_json(), MessageAttributes=message.attributes()
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "unknown")
            raise RetryQueueError(
                f"retry queue {self.name} refused {len(message.operations)} operations "
                f"(part {message.part} of {message.parts}): {code}"
            ) from exc
        except BotoCoreError as exc:
            raise RetryQueueError(
                f"retry queue {self.name} could not be reached for {len(message.operations)} operations "
                f"(part {message.part} of {message.parts}): {type(exc).__name__}"
            ) from exc
