"""Retry messages: the readable body, its strict validation, splitting under SQS's size limit, and the
SQS adapter's refusal path (a real boto3 client with botocore's Stubber: no network)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import boto3
import pytest
from botocore.stub import Stubber
from ownpage_sync.errors import InvalidRetryMessage, OwnpageSyncError, RetryQueueError
from ownpage_sync.models import Action, Operation
from ownpage_sync.ports import Failure
from ownpage_sync.retry_queue import (
    MAX_BODY_BYTES,
    SQS_MAX_MESSAGE_BYTES,
    RetryMessage,
    SqsRetryQueue,
    split_messages,
)

pytestmark = pytest.mark.unit

QUEUE_URL = "http://127.0.0.1:1/123456789012/ownpage-sync-retry"
FAILED_AT = datetime(2025, 3, 1, 6, 0, 0, tzinfo=UTC)
FAILURE = Failure(
    "unavailable", "HTTP 503 from Ownpage", status=503, attempts=6, first_failed_at=FAILED_AT, last_attempt_at=FAILED_AT
)


def ops(count: int, *, city: str = "Genève") -> list[Operation]:
    return [
        Operation(Action.SUBSCRIBE, f"reader{i:05d}@example.com", guid=f"u-{i}", data={"city": city})
        for i in range(count)
    ]


def message(operations: list[Operation] | None = None) -> RetryMessage:
    return RetryMessage.for_failure(7, "20250301T060000Z-abcd1234", operations or ops(2), FAILURE)


def test_body_reads_in_a_sensible_order_and_round_trips() -> None:
    # Given a message for two failed operations, one an unsubscribe
    operations = [*ops(1), Operation(Action.UNSUBSCRIBE, "gone@example.com", unsubscribed_cause="PUBLISHER")]
    original = message(operations)

    # When it is encoded and parsed back
    body = original.to_json()
    parsed = RetryMessage.from_json(body)

    # Then the reader sees what and why before the long list, non-ASCII as written, and nothing is lost
    keys = list(json.loads(body))
    assert keys[:4] == ["schema_version", "list_id", "run_id", "last_error"]
    assert keys[-1] == "operations"
    assert "Genève" in body
    assert json.loads(body)["last_error"] == {"kind": "unavailable", "status": 503, "reason": "HTTP 503 from Ownpage"}
    assert json.loads(body)["first_failed_at"] == "2025-03-01T06:00:00.000Z"
    assert parsed == original


def test_characters_sqs_cannot_carry_are_escaped() -> None:
    # Given data holding a character outside SQS's allowed set (U+FFFF)
    original = message(ops(1, city="bad\uffffcity"))

    # When encoded
    body = original.to_json()

    # Then the body is pure ASCII escapes for it, and still parses to the same message
    assert "\uffff" not in body
    assert RetryMessage.from_json(body) == original


def test_attributes_carry_the_reason_and_leave_out_unknowns() -> None:
    # Given a failure without an HTTP status (the run's deadline)
    deadline = Failure("deadline", "the run's time ran out before this batch")
    msg = RetryMessage.for_failure(7, "run-1", ops(3), deadline)

    # When its SQS attributes are built
    attributes = msg.attributes()

    # Then they name the kind, list, run and size; no empty value (SQS refuses those)
    assert attributes["ErrorKind"] == {"DataType": "String", "StringValue": "deadline"}
    assert attributes["OperationCount"]["StringValue"] == "3"
    assert attributes["ListId"]["StringValue"] == "7"
    assert "HttpStatus" not in attributes
    assert all(value["StringValue"] for value in attributes.values())


def test_a_large_batch_is_split_into_parts_that_each_fit() -> None:
    # Given 2,000 operations and a 32 KiB body limit
    original = message(ops(2_000))

    # When split
    parts = split_messages(original, max_body_bytes=32_768)

    # Then every part fits, parts are numbered, and the operations come back complete and in order
    assert len(parts) > 1
    assert all(len(part.to_json().encode()) <= 32_768 for part in parts)
    assert [(part.part, part.parts) for part in parts] == [(n, len(parts)) for n in range(1, len(parts) + 1)]
    assert [op for part in parts for op in part.operations] == list(original.operations)


def test_a_full_production_batch_fits_in_one_message() -> None:
    # Given the default batch size of 5,000 operations with typical data
    original = message(ops(5_000))

    # When split under the real limit (1 MiB minus attribute headroom)
    parts = split_messages(original)

    # Then one message carries it, within SQS's limit
    assert len(parts) == 1
    assert len(parts[0].to_json().encode()) <= MAX_BODY_BYTES < SQS_MAX_MESSAGE_BYTES


def test_escaped_bodies_are_measured_as_sent() -> None:
    # Given operations whose data must be ASCII-escaped (six bytes per character instead of three)
    original = message(ops(400, city="\uffff" * 40))

    # When split under a small limit
    parts = split_messages(original, max_body_bytes=16_384)

    # Then every encoded part still fits
    assert all(len(part.to_json().encode()) <= 16_384 for part in parts)
    assert sum(len(part.operations) for part in parts) == 400


def test_an_operation_larger_than_a_message_is_refused_loudly() -> None:
    # Given one operation with a huge data value
    original = message([Operation(Action.SUBSCRIBE, "big@example.com", data={"bio": "x" * 5_000})])

    # When split under a 4 KiB limit
    with pytest.raises(RetryQueueError) as raised:
        split_messages(original, max_body_bytes=4_096)

    # Then it says so without the address
    assert "big@example.com" not in str(raised.value)


def _valid() -> dict:
    return message(ops(2)).to_dict()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(schema_version=2), "schema_version"),
        (lambda d: d.pop("schema_version"), "schema_version"),
        (lambda d: d.update(list_id="7"), "list_id"),
        (lambda d: d.update(list_id=True), "list_id"),
        (lambda d: d.update(run_id=None), "run_id"),
        (lambda d: d.update(attempts=0), "attempts"),
        (lambda d: d.update(first_failed_at="yesterday"), "first_failed_at"),
        (lambda d: d.update(last_attempt_at="2025-03-01T06:00:00"), "last_attempt_at"),
        (lambda d: d.update(last_error="503"), "last_error"),
        (lambda d: d["last_error"].update(kind=""), "last_error.kind"),
        (lambda d: d["last_error"].update(status="503"), "last_error.status"),
        (lambda d: d.update(operations=[]), "operations"),
        (lambda d: d.update(operation_count=5), "operation_count"),
        (lambda d: d.update(part=3, parts=2), "part"),
        (lambda d: d["operations"][1].update(action="delete"), "operations[1].action"),
        (lambda d: d["operations"][0].update(email="reader00000@"), "operations[0].email"),
        (lambda d: d["operations"][0].update(email=None), "operations[0].email"),
        (lambda d: d["operations"][0].update(data={"city": 3}), "operations[0].data"),
        (lambda d: d["operations"][0].update(guid=12), "operations[0].guid"),
        (lambda d: d["operations"].append("reader@example.com"), "operations[2]"),
    ],
)
def test_malformed_bodies_are_refused_with_a_short_reason(mutate, expected: str) -> None:
    # Given a valid body with one defect
    body = _valid()
    mutate(body)

    # When parsed
    with pytest.raises(InvalidRetryMessage) as raised:
        RetryMessage.from_json(json.dumps(body))

    # Then the reason names the field, and never an address
    assert expected in str(raised.value)
    assert "@" not in str(raised.value)


@pytest.mark.parametrize("body", ["", "not json", "[1, 2]", "null", '"reader@example.com"'])
def test_bodies_that_are_not_objects_are_poison(body: str) -> None:
    # Given / When / Then: anything but a JSON object is refused, without echoing it
    with pytest.raises(InvalidRetryMessage) as raised:
        RetryMessage.from_json(body)
    assert "@" not in str(raised.value)


def test_addresses_are_normalised_on_parse() -> None:
    # Given a body edited by hand with a differently spelled address
    body = _valid()
    body["operations"][0]["email"] = "  Reader00000@Example.COM "

    # When parsed
    parsed = RetryMessage.from_json(json.dumps(body))

    # Then the operation uses the canonical form every comparison uses
    assert parsed.operations[0].email == "reader00000@example.com"


def test_put_sends_each_part_with_its_attributes() -> None:
    # Given a real SQS client whose answers are stubbed, and a queue limited to small messages
    client = boto3.client("sqs", region_name="eu-west-1")
    queue = SqsRetryQueue(QUEUE_URL, client=client, max_body_bytes=16_384)
    operations = ops(300)
    with Stubber(client) as stub:
        for _ in range(len(split_messages(message(operations), 16_384))):
            stub.add_response("send_message", {"MessageId": "m", "MD5OfMessageBody": "x"})

        # When the failed operations are put
        written = queue.put(7, "20250301T060000Z-abcd1234", operations, FAILURE)

        # Then as many messages were sent as parts were needed
        stub.assert_no_pending_responses()
    assert written > 1


def test_put_raises_a_project_error_naming_the_queue_when_sqs_refuses() -> None:
    # Given SQS answering that the queue does not exist
    client = boto3.client("sqs", region_name="eu-west-1")
    queue = SqsRetryQueue(QUEUE_URL, client=client)
    with Stubber(client) as stub:
        stub.add_client_error("send_message", service_error_code="AWS.SimpleQueueService.NonExistentQueue")

        # When operations are put
        with pytest.raises(RetryQueueError) as raised:
            queue.put(7, "run-1", ops(2), FAILURE)

    # Then the error is the project's, names the queue and the SQS code, and carries no address
    assert isinstance(raised.value, OwnpageSyncError)
    assert "ownpage-sync-retry" in str(raised.value)
    assert "NonExistentQueue" in str(raised.value)
    assert "@" not in str(raised.value)


def test_put_of_nothing_sends_nothing() -> None:
    # Given a client that would fail on any call
    client = boto3.client("sqs", region_name="eu-west-1")
    with Stubber(client):
        # When no operations are put / Then no call is made and no message counted
        assert SqsRetryQueue(QUEUE_URL, client=client).put(7, "run-1", [], FAILURE) == 0


def test_dlq_summary_counts_by_kind_and_sets_poison_apart() -> None:
    # Given two dead letters as SQS returns them: a readable one and a poison one
    from datetime import timedelta

    from ownpage_sync_tools.cli.queue_commands import DlqSummary

    sent = int(FAILED_AT.timestamp() * 1000)
    readable = {"Body": message(ops(3)).to_json(), "Attributes": {"SentTimestamp": str(sent)}}
    poison = {"Body": "reader00001@example.com was here", "Attributes": {"SentTimestamp": str(sent + 60_000)}}
    summary = DlqSummary("ownpage-sync-dead-letter", approximate_visible=2, approximate_in_flight=0)

    # When both are added and the summary rendered two hours later
    summary.add(readable)
    summary.add(poison)
    text = summary.render(FAILED_AT + timedelta(hours=2))

    # Then kinds, operations, ages and run ids are reported, and the poison body is never echoed
    assert {kind: vars(s) for kind, s in summary.by_kind.items()} == {
        "unavailable": {"messages": 1, "operations": 3},
        "unreadable (poison)": {"messages": 1, "operations": 0},
    }
    assert summary.run_ids == ["20250301T060000Z-abcd1234"]
    assert "2 h 0 min ago" in text and "@" not in text
