"""Retry messages: the readable body, the one operation rule shared by writer and reader, splitting
under the message limits, and the SQS adapter's batches, deadline and refusals (a real boto3 client
with botocore's Stubber, or a recording client where hundreds of examples run: no network)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import InvalidRetryMessage, OwnpageSyncError, RetryQueueError
from ownpage_sync.models import Action, Operation
from ownpage_sync.ports import Failure, QueueReceipt
from ownpage_sync.retry_queue import (
    MAX_BODY_BYTES,
    MAX_MESSAGE_OPERATIONS,
    SQS_MAX_MESSAGE_BYTES,
    RetryMessage,
    SqsRetryQueue,
    check_operation,
    split_messages,
)

pytestmark = pytest.mark.unit

QUEUE_URL = "http://127.0.0.1:1/123456789012/ownpage-sync-retry"
RUN_ID = "20250301T060000Z-abcd1234"
RUN_STARTED_AT = datetime(2025, 3, 1, 6, 0, 0, 250_000, tzinfo=UTC)
FAILED_AT = datetime(2025, 3, 1, 6, 0, 0, tzinfo=UTC)
FAILURE = Failure(
    "unavailable", "HTTP 503 from Ownpage", status=503, attempts=6, first_failed_at=FAILED_AT, last_attempt_at=FAILED_AT
)
# What SQS accepts in a body or a string attribute, restated from its documentation rather than
# imported (moto does not check it): #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD #x10000-#x10FFFF.
SQS_ALLOWED = re.compile("[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*")
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ops(count: int, *, city: str = "Genève") -> list[Operation]:
    return [
        Operation(Action.SUBSCRIBE, f"reader{i:05d}@example.com", guid=f"u-{i}", data={"city": city})
        for i in range(count)
    ]


def message(operations: list[Operation] | None = None) -> RetryMessage:
    return RetryMessage.for_failure(7, RUN_ID, operations or ops(2), FAILURE, RUN_STARTED_AT)


class RecordingSqs:
    """Stands in for the SQS client where a Stubber cannot: the property test sends hundreds of
    examples with unpredictable message counts. It stores every entry and records every call."""

    def __init__(self) -> None:
        self.calls: list[list[dict[str, Any]]] = []

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(Entries)
        return {
            "Successful": [{"Id": e["Id"], "MessageId": "m", "MD5OfMessageBody": "x"} for e in Entries],
            "Failed": [],
        }

    @property
    def bodies(self) -> list[str]:
        return [entry["MessageBody"] for call in self.calls for entry in call]


# -- the body --------------------------------------------------------------------------------------


def test_body_reads_in_a_sensible_order_and_round_trips() -> None:
    # Given a message for two failed operations, one an unsubscribe
    operations = [*ops(1), Operation(Action.UNSUBSCRIBE, "Gone@Example.com", unsubscribed_cause="PUBLISHER")]
    original = message(operations)

    # When it is encoded and parsed back
    body = original.to_json()
    parsed = RetryMessage.from_json(body)

    # Then the reader sees what and why before the long list, non-ASCII as written, and nothing is lost
    keys = list(json.loads(body))
    assert keys[:5] == ["schema_version", "list_id", "run_id", "run_started_at", "last_error"]
    assert keys[-1] == "operations"
    assert "Genève" in body
    assert json.loads(body)["schema_version"] == 2
    assert json.loads(body)["last_error"] == {"kind": "unavailable", "status": 503, "reason": "HTTP 503 from Ownpage"}
    assert json.loads(body)["first_failed_at"] == "2025-03-01T06:00:00.000Z"
    assert json.loads(body)["run_started_at"] == "2025-03-01T06:00:00.250Z"
    assert parsed == original
    assert parsed.invalid == ()


def test_a_message_without_a_run_start_takes_it_from_the_run_id() -> None:
    # Given a version 2 body whose run_started_at is null, and a version 1 body (no such field, and
    # its subscribe still carrying the `subscribed: true` version 1 wrote)
    v2 = message().to_dict() | {"run_started_at": None}
    v1 = {k: v for k, v in message().to_dict().items() if k != "run_started_at"} | {"schema_version": 1}
    v1["operations"][0]["subscribed"] = True

    # When both are parsed
    parsed = [RetryMessage.from_json(json.dumps(body)) for body in (v2, v1)]

    # Then the run's start is the UTC time the run id begins with, and the operations are the same
    assert [m.run_started_at for m in parsed] == [FAILED_AT, FAILED_AT]
    assert [m.schema_version for m in parsed] == [2, 1]
    assert parsed[1].operations == message().operations and parsed[1].invalid == ()


def test_a_run_id_without_a_time_gives_no_run_start() -> None:
    # Given a version 1 body from a run whose id does not start with its time
    body = message().to_dict() | {"schema_version": 1, "run_id": "manual-run.7"}
    del body["run_started_at"]

    # When parsed / Then it is read, with no run start (it can then never be superseded by mistake)
    assert RetryMessage.from_json(json.dumps(body)).run_started_at is None


def test_characters_sqs_cannot_carry_are_escaped() -> None:
    # Given data holding characters outside SQS's allowed set (U+FFFF, NUL, a lone surrogate)
    original = message([*ops(1, city="bad\uffffcity"), *ops(1, city="nul\x00"), *ops(1, city="half\ud800")])

    # When encoded
    body = original.to_json()

    # Then the body is one SQS accepts, and still parses to the same message; splitting (what the
    # queue sends) gives the same body
    assert SQS_ALLOWED.fullmatch(body)
    body.encode("utf-8")  # no lone surrogate left for botocore to choke on
    assert RetryMessage.from_json(body) == original
    assert [sent for _, sent in split_messages(original)] == [body]


def test_attributes_carry_the_reason_and_leave_out_unknowns() -> None:
    # Given a failure without an HTTP status (the run's deadline)
    deadline = Failure("deadline", "the run's time ran out before this batch")
    msg = RetryMessage.for_failure(7, "run-1", ops(3), deadline)

    # When its SQS attributes are built
    attributes = msg.attributes()

    # Then they name the kind, list, run, schema and size; no empty value (SQS refuses those)
    assert attributes["ErrorKind"] == {"DataType": "String", "StringValue": "deadline"}
    assert attributes["OperationCount"]["StringValue"] == "3"
    assert attributes["ListId"]["StringValue"] == "7"
    assert attributes["RunId"]["StringValue"] == "run-1"
    assert attributes["SchemaVersion"]["StringValue"] == "2"
    assert "HttpStatus" not in attributes
    assert all(value["StringValue"] for value in attributes.values())


def test_an_error_reason_sqs_cannot_carry_does_not_stop_the_message() -> None:
    # Given Ownpage's error text holding characters SQS refuses in an attribute (a NUL, a lone surrogate)
    failure = Failure("rejected", "HTTP 400: bad byte \x00 and \udc80 in the payload", status=400)
    msg = RetryMessage.for_failure(7, RUN_ID, ops(1), failure)

    # When its attributes are built
    reason = msg.attributes()["ErrorReason"]["StringValue"]

    # Then the attribute only holds characters SQS accepts; the body keeps the reason exactly
    assert SQS_ALLOWED.fullmatch(reason) and reason.startswith("HTTP 400: bad byte")
    assert RetryMessage.from_json(msg.to_json()).last_error.reason == failure.reason


# -- one operation rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("reader@example.com", "is not an object"),
        ({"action": "delete", "email": "a@example.com"}, "action must be one of"),
        ({"email": "a@example.com"}, "action must be one of"),
        ({"action": "subscribe", "email": None}, "email must be a non-empty string"),
        ({"action": "subscribe", "email": " \t"}, "email must be a non-empty string"),
        (
            {"action": "unsubscribe", "email": "\u200b\ufeff"},
            "email must name an address (it holds invisible characters only)",
        ),
        ({"action": "subscribe", "email": "a" * 321 + "@example.com"}, "email is longer than 320"),
        ({"action": "subscribe", "email": "a@example.com", "guid": 12}, "guid must be a string or null"),
        ({"action": "subscribe", "email": "a@example.com", "data": {"city": 3}}, "data must be an object"),
        ({"action": "subscribe", "email": "a@example.com", "data": ["Paris"]}, "data must be an object"),
        ({"action": "subscribe", "email": "a@example.com", "data": {"bio": "x" * 10_001}}, "data must be"),
        ({"action": "unsubscribe", "email": "a@example.com", "unsubscribed_cause": 1}, "unsubscribed_cause"),
    ],
)
def test_an_entry_that_is_not_an_operation_says_why_without_quoting_it(entry: Any, problem: str) -> None:
    # Given / When an entry is checked
    checked = check_operation(entry)

    # Then the answer is a short reason, never the address
    assert isinstance(checked, str) and problem in checked
    assert "@" not in checked


def test_an_operation_keeps_its_spelling_and_is_keyed_canonically() -> None:
    # Given a body edited by hand with Ownpage's spelling of an address
    body = message().to_dict()
    body["operations"][0]["email"] = "  Reader00000@Example.COM "

    # When parsed
    parsed = RetryMessage.from_json(json.dumps(body))

    # Then the operation writes to Ownpage's spelling, and compares by the canonical key
    assert parsed.operations[0].email == "  Reader00000@Example.COM "
    assert parsed.operations[0].key == "reader00000@example.com"


def test_bad_entries_are_set_aside_and_the_good_ones_kept() -> None:
    # Given a 500-operation body with two entries that are not operations
    body = message(ops(MAX_MESSAGE_OPERATIONS)).to_dict()
    body["operations"][17]["action"] = "delete"
    body["operations"][250] = {"action": "subscribe", "email": "x@example.com", "data": {"city": 3}}

    # When parsed
    parsed = RetryMessage.from_json(json.dumps(body))

    # Then the other 498 are read, in order, and the two are named by index and problem
    assert len(parsed.operations) == MAX_MESSAGE_OPERATIONS - 2
    assert parsed.operations == tuple(op for i, op in enumerate(ops(MAX_MESSAGE_OPERATIONS)) if i not in (17, 250))
    assert [index for index, _ in parsed.invalid] == [17, 250]
    assert "action" in parsed.invalid[0][1] and "data" in parsed.invalid[1][1]


def _valid() -> dict[str, Any]:
    return message(ops(2)).to_dict()


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(schema_version=3), "schema_version"),
        (lambda d: d.update(schema_version=True), "schema_version"),
        (lambda d: d.pop("schema_version"), "schema_version"),
        (lambda d: d.update(list_id="7"), "list_id"),
        (lambda d: d.update(list_id=True), "list_id"),
        (lambda d: d.update(run_id=None), "run_id"),
        (lambda d: d.update(run_id=""), "run_id"),
        (lambda d: d.update(run_id="reader@example.com"), "run_id"),
        (lambda d: d.update(run_id="run-1\nERROR forged log line"), "run_id"),
        (lambda d: d.update(run_id="r" * 129), "run_id"),
        (lambda d: d.update(attempts=0), "attempts"),
        (lambda d: d.update(first_failed_at="yesterday"), "first_failed_at"),
        (lambda d: d.update(last_attempt_at="2025-03-01T06:00:00"), "last_attempt_at"),
        (lambda d: d.update(run_started_at="2025-03-01"), "run_started_at"),
        (lambda d: d.update(last_error="503"), "last_error"),
        (lambda d: d["last_error"].update(kind=""), "last_error.kind"),
        (lambda d: d["last_error"].update(status="503"), "last_error.status"),
        (lambda d: d.update(operations=[]), "operations"),
        (lambda d: d.update(operations={"0": {}}), "operations"),
        (lambda d: d.update(operation_count=5), "operation_count"),
        (lambda d: d.update(part=3, parts=2), "part"),
        (lambda d: d.update(operations=["reader@example.com", {"action": "x"}]), "no valid operation"),
    ],
)
def test_a_bad_envelope_or_no_valid_operation_is_poison(mutate: Callable[[dict[str, Any]], Any], expected: str) -> None:
    # Given a valid body with one defect in its envelope, or without a single valid operation
    body = _valid()
    mutate(body)

    # When parsed
    with pytest.raises(InvalidRetryMessage) as raised:
        RetryMessage.from_json(json.dumps(body))

    # Then the reason names the field, and never quotes the value (an address, a forged log line)
    assert expected in str(raised.value)
    assert "@" not in str(raised.value) and "forged" not in str(raised.value)


@pytest.mark.parametrize("body", ["", "not json", "[1, 2]", "null", '"reader@example.com"'])
def test_bodies_that_are_not_objects_are_poison(body: str) -> None:
    # Given / When / Then: anything but a JSON object is refused, without echoing it
    with pytest.raises(InvalidRetryMessage) as raised:
        RetryMessage.from_json(body)
    assert "@" not in str(raised.value)


# -- splitting --------------------------------------------------------------------------------------


def test_a_large_batch_is_split_into_parts_that_each_fit() -> None:
    # Given 2,000 operations and a 32 KiB body limit
    original = message(ops(2_000))

    # When split
    parts = split_messages(original, max_body_bytes=32_768)

    # Then every part fits, parts are numbered, each body is its part's, and the operations come back
    # complete and in order
    assert len(parts) > 1
    assert all(len(body.encode()) <= 32_768 for _, body in parts)
    assert all(body == part.to_json() for part, body in parts)
    assert [(part.part, part.parts) for part, _ in parts] == [(n, len(parts)) for n in range(1, len(parts) + 1)]
    assert [op for part, _ in parts for op in part.operations] == list(original.operations)


def test_a_full_production_batch_is_cut_into_messages_of_at_most_500_operations() -> None:
    # Given the default batch size of 5,000 operations with typical data
    original = message(ops(5_000))

    # When split under the real limits
    parts = split_messages(original)

    # Then ten messages of 500 carry it (the retry re-checks each operation: a message's cost stays
    # small), each far within SQS's limit
    assert [len(part.operations) for part, _ in parts] == [MAX_MESSAGE_OPERATIONS] * 10
    assert all(len(body.encode()) <= MAX_BODY_BYTES < SQS_MAX_MESSAGE_BYTES for _, body in parts)


def test_escaped_bodies_are_measured_as_sent() -> None:
    # Given operations whose data must be ASCII-escaped (six bytes per character instead of three),
    # and readable non-ASCII data in the same message
    original = message([*ops(200, city="\uffff" * 40), *ops(200, city="é" * 40)])

    # When split under a small limit
    parts = split_messages(original, max_body_bytes=16_384)

    # Then every body as sent fits, is one SQS accepts, and the operations are all there
    assert all(len(body.encode()) <= 16_384 and SQS_ALLOWED.fullmatch(body) for _, body in parts)
    assert [op for part, _ in parts for op in part.operations] == list(original.operations)


def test_an_operation_larger_than_a_message_is_refused_loudly() -> None:
    # Given one operation with a huge data value
    original = message([Operation(Action.SUBSCRIBE, "big@example.com", data={"bio": "x" * 5_000})])

    # When split under a 4 KiB limit
    with pytest.raises(RetryQueueError) as raised:
        split_messages(original, max_body_bytes=4_096)

    # Then it says so without the address
    assert "big@example.com" not in str(raised.value)


# -- the SQS adapter --------------------------------------------------------------------------------


def _batch_answer(entries: int, failed: tuple[int, ...] = ()) -> dict[str, Any]:
    return {
        "Successful": [
            {"Id": str(i), "MessageId": f"m{i}", "MD5OfMessageBody": "x"} for i in range(entries) if i not in failed
        ],
        "Failed": [{"Id": str(i), "SenderFault": True, "Code": "InvalidParameterValue"} for i in failed],
    }


def _client_recording_calls() -> tuple[Any, list[list[dict[str, Any]]]]:
    client = boto3.client("sqs", region_name="eu-west-1")
    calls: list[list[dict[str, Any]]] = []
    client.meta.events.register(
        "provide-client-params.sqs.SendMessageBatch", lambda params, **_: calls.append(params["Entries"])
    )
    return client, calls


def test_put_sends_ten_messages_a_call_with_their_attributes() -> None:
    # Given a real SQS client whose answers are stubbed, and 25 parts' worth of operations
    client, calls = _client_recording_calls()
    queue = SqsRetryQueue(QUEUE_URL, client=client)
    operations = ops(25 * MAX_MESSAGE_OPERATIONS)
    with Stubber(client) as stub:
        for size in (10, 10, 5):
            stub.add_response("send_message_batch", _batch_answer(size))

        # When the failed operations are put
        receipt = queue.put(7, RUN_ID, operations, FAILURE, RUN_STARTED_AT)

        # Then three calls carried the 25 messages in order, each with its attributes
        stub.assert_no_pending_responses()
    assert receipt == QueueReceipt(queued=len(operations), messages=25)
    assert [len(call) for call in calls] == [10, 10, 5]
    sent = [RetryMessage.from_json(entry["MessageBody"]) for call in calls for entry in call]
    assert [op for part in sent for op in part.operations] == operations
    assert {part.run_started_at for part in sent} == {RUN_STARTED_AT}
    assert all(entry["MessageAttributes"]["RunId"]["StringValue"] == RUN_ID for call in calls for entry in call)


def test_a_call_stays_under_the_batch_size_limit() -> None:
    # Given messages of about 200 KiB each (ten would exceed the 1 MiB a call may carry)
    client, calls = _client_recording_calls()
    queue = SqsRetryQueue(QUEUE_URL, client=client)
    operations = [Operation(Action.UPDATE, f"r{i}@example.com", data={"bio": "x" * 9_000}) for i in range(200)]
    with Stubber(client) as stub:
        for _ in range(10):  # more answers than calls: the calls are counted below
            stub.add_response("send_message_batch", _batch_answer(0))

        # When they are put
        receipt = queue.put(7, RUN_ID, operations, FAILURE)

    # Then several calls were needed, none carries 1 MiB or more, and every operation was queued once
    assert receipt.queued == 200 and len(calls) > 1
    assert all(sum(len(e["MessageBody"].encode()) for e in call) < SQS_MAX_MESSAGE_BYTES for call in calls)
    assert sum(len(RetryMessage.from_json(e["MessageBody"]).operations) for call in calls for e in call) == 200


def test_queueing_stops_at_the_deadline_and_says_how_much_was_queued() -> None:
    # Given a queue whose deadline passes during its first call, and 25 messages' worth of operations
    left = [60.0]
    client, calls = _client_recording_calls()
    client.meta.events.register("after-call.sqs.SendMessageBatch", lambda **_: left.__setitem__(0, 0.0))
    queue = SqsRetryQueue(QUEUE_URL, client=client, deadline=Deadline(lambda: left[0]))
    operations = ops(25 * MAX_MESSAGE_OPERATIONS)
    with Stubber(client) as stub:
        stub.add_response("send_message_batch", _batch_answer(10))

        # When the operations are put
        receipt = queue.put(7, RUN_ID, operations, FAILURE)

    # Then one call went out, and the receipt says exactly which operations it stored: the first ones
    assert len(calls) == 1
    stored = [op for e in calls[0] for op in RetryMessage.from_json(e["MessageBody"]).operations]
    assert receipt == QueueReceipt(queued=10 * MAX_MESSAGE_OPERATIONS, messages=10)
    assert stored == operations[: receipt.queued]


def test_no_time_left_queues_nothing() -> None:
    # Given a deadline already past
    client = boto3.client("sqs", region_name="eu-west-1")
    with Stubber(client):
        # When operations are put / Then no call is made and nothing is counted as queued
        receipt = SqsRetryQueue(QUEUE_URL, client=client, deadline=Deadline(lambda: 0.0)).put(
            7, RUN_ID, ops(3), FAILURE
        )
    assert receipt == QueueReceipt(0, 0)


def test_an_entry_refused_once_is_sent_again_alone() -> None:
    # Given SQS refusing the fourth message of a call once, then accepting it
    client, calls = _client_recording_calls()
    queue = SqsRetryQueue(QUEUE_URL, client=client)
    with Stubber(client) as stub:
        stub.add_response("send_message_batch", _batch_answer(10, failed=(3,)))
        stub.add_response("send_message_batch", _batch_answer(4, failed=(0, 1, 2)) | {"Failed": []})

        # When 10 messages' worth of operations are put
        receipt = queue.put(7, RUN_ID, ops(10 * MAX_MESSAGE_OPERATIONS), FAILURE)

    # Then only the refused entry was sent again, and everything counts as queued
    assert [[e["Id"] for e in call] for call in calls] == [[str(i) for i in range(10)], ["3"]]
    assert receipt == QueueReceipt(queued=10 * MAX_MESSAGE_OPERATIONS, messages=10)


def test_sqs_refusing_the_last_entries_reports_exactly_what_was_stored() -> None:
    # Given SQS refusing the last two messages of a call twice
    client, calls = _client_recording_calls()
    queue = SqsRetryQueue(QUEUE_URL, client=client)
    operations = ops(10 * MAX_MESSAGE_OPERATIONS)
    with Stubber(client) as stub:
        stub.add_response("send_message_batch", _batch_answer(10, failed=(8, 9)))
        stub.add_response("send_message_batch", _batch_answer(0) | {"Failed": _batch_answer(10, (8, 9))["Failed"]})

        # When the operations are put
        with pytest.raises(RetryQueueError) as raised:
            queue.put(7, RUN_ID, operations, FAILURE)

    # Then the error counts the eight stored messages and their operations, the first ones in order
    stored = [op for e in calls[0][:8] for op in RetryMessage.from_json(e["MessageBody"]).operations]
    assert (raised.value.queued, raised.value.messages) == (len(stored), 8)
    assert stored == operations[: raised.value.queued]
    assert "refused 2 of 10" in str(raised.value) and "InvalidParameterValue" in str(raised.value)


def test_sqs_refusing_a_later_call_keeps_the_earlier_calls_counted() -> None:
    # Given SQS storing a first call of ten messages, then refusing the whole second call
    client = boto3.client("sqs", region_name="eu-west-1")
    queue = SqsRetryQueue(QUEUE_URL, client=client)
    with Stubber(client) as stub:
        stub.add_response("send_message_batch", _batch_answer(10))
        stub.add_client_error("send_message_batch", service_error_code="KMS.ThrottlingException")

        # When 25 messages' worth are put
        with pytest.raises(RetryQueueError) as raised:
            queue.put(7, RUN_ID, ops(25 * MAX_MESSAGE_OPERATIONS), FAILURE)

    # Then the error says the first call's ten messages are stored, and names the SQS code
    assert raised.value.messages == 10 and raised.value.queued == 10 * MAX_MESSAGE_OPERATIONS
    assert "KMS.ThrottlingException" in str(raised.value)


def test_put_raises_a_project_error_naming_the_queue_when_sqs_refuses() -> None:
    # Given SQS answering that the queue does not exist
    client = boto3.client("sqs", region_name="eu-west-1")
    queue = SqsRetryQueue(QUEUE_URL, client=client)
    with Stubber(client) as stub:
        stub.add_client_error("send_message_batch", service_error_code="AWS.SimpleQueueService.NonExistentQueue")

        # When operations are put
        with pytest.raises(RetryQueueError) as raised:
            queue.put(7, RUN_ID, ops(2), FAILURE)

    # Then the error is the project's, names the queue and the SQS code, says nothing was stored,
    # and carries no address
    assert isinstance(raised.value, OwnpageSyncError)
    assert "ownpage-sync-retry" in str(raised.value)
    assert "NonExistentQueue" in str(raised.value)
    assert (raised.value.queued, raised.value.messages) == (0, 0)
    assert "@" not in str(raised.value)


def test_put_of_nothing_sends_nothing() -> None:
    # Given a client that would fail on any call
    client = boto3.client("sqs", region_name="eu-west-1")
    with Stubber(client):
        # When no operations are put / Then no call is made and no message counted
        assert SqsRetryQueue(QUEUE_URL, client=client).put(7, RUN_ID, [], FAILURE) == QueueReceipt(0, 0)


@pytest.mark.parametrize("run_id", ["", "reader@example.com", "run 1", "r" * 129])
def test_the_writer_refuses_a_run_id_the_reader_would_call_poison(run_id: str) -> None:
    # Given a client that records every call
    client, calls = _client_recording_calls()
    with Stubber(client), pytest.raises(RetryQueueError) as raised:
        # When operations of a run with such an id are put
        SqsRetryQueue(QUEUE_URL, client=client).put(7, run_id, ops(2), FAILURE)

    # Then nothing is sent (every message would go to the DLQ unread), and the id is not quoted
    assert calls == []
    assert (raised.value.queued, raised.value.messages) == (0, 0)
    assert "run id" in str(raised.value) and "@" not in str(raised.value)


def test_the_writer_refuses_what_the_reader_would_set_aside() -> None:
    # Given a batch holding an operation the reader could not read back (a data value over the limit)
    client, calls = _client_recording_calls()
    bad = Operation(Action.SUBSCRIBE, "long@example.com", data={"bio": "x" * 10_001})
    operations = [*ops(3), bad, *ops(2)]
    with Stubber(client) as stub, pytest.raises(RetryQueueError) as raised:
        stub.add_response("send_message_batch", _batch_answer(1))

        # When it is put
        SqsRetryQueue(QUEUE_URL, client=client).put(7, RUN_ID, operations, FAILURE)

    # Then every other operation is queued and counted, before and after it; the refusal says which
    # and why, and names it alone as not stored, so the caller reports it in full (nothing is
    # dropped, no address quoted)
    queued = [RetryMessage.from_json(e["MessageBody"]).operations for call in calls for e in call]
    assert queued == [(*ops(3), *ops(2))]
    assert (raised.value.queued, raised.value.messages, raised.value.unstored) == (5, 1, (bad,))
    assert "operations[3]" in str(raised.value) and "data" in str(raised.value)
    assert "@" not in str(raised.value)


def test_an_operation_no_message_can_hold_is_set_aside_alone() -> None:
    # Given a batch holding one operation larger than a retry message may be (under a 4 KiB limit)
    client, calls = _client_recording_calls()
    big = Operation(Action.SUBSCRIBE, "big@example.com", data={"bio": "x" * 5_000})
    with Stubber(client) as stub, pytest.raises(RetryQueueError) as raised:
        stub.add_response("send_message_batch", _batch_answer(1))

        # When it is put
        SqsRetryQueue(QUEUE_URL, client=client, max_body_bytes=4_096).put(7, RUN_ID, [*ops(2), big], FAILURE)

    # Then the others are queued, and only it is named as not stored, without its address
    assert [RetryMessage.from_json(e["MessageBody"]).operations for call in calls for e in call] == [tuple(ops(2))]
    assert (raised.value.queued, raised.value.unstored) == (2, (big,))
    assert "larger than a retry message" in str(raised.value) and "big@" not in str(raised.value)


# -- writer and reader agree -------------------------------------------------------------------------

ANY_CHARACTER = st.characters(codec=None, exclude_categories=())  # control characters and lone surrogates too
SHORT = st.text(ANY_CHARACTER, max_size=12)
LONG = st.builds(lambda head, fill, size: head + fill * size, SHORT, ANY_CHARACTER, st.integers(300, 330))
HUGE = st.builds(lambda fill, size: fill * size, ANY_CHARACTER, st.integers(9_995, 10_005))
TEXT = st.one_of(SHORT, SHORT, SHORT, LONG)
OPERATIONS = st.builds(
    Operation,
    action=st.sampled_from(Action),
    email=st.one_of(SHORT.filter(str.strip), SHORT.filter(str.strip), LONG, st.just(" \t ")),
    guid=st.none() | TEXT,
    data=st.dictionaries(SHORT, st.one_of(TEXT, TEXT, TEXT, TEXT, HUGE), max_size=3),
    unsubscribed_cause=st.none() | st.sampled_from(["PUBLISHER", "READER"]) | TEXT,
)


def _refused_alone(operation: Operation, max_body_bytes: int, failure: Failure) -> bool:
    try:
        SqsRetryQueue(QUEUE_URL, client=RecordingSqs(), max_body_bytes=max_body_bytes).put(
            7, RUN_ID, [operation], failure
        )
    except RetryQueueError:
        return True
    return False


@PROPERTY
@given(
    operations=st.lists(OPERATIONS, min_size=1, max_size=20),
    reason=TEXT,
    max_body_bytes=st.sampled_from([8_192, MAX_BODY_BYTES]),
)
def test_whatever_the_writer_queues_the_reader_reads_back_equal(
    operations: list[Operation], reason: str, max_body_bytes: int
) -> None:
    # Given any operations (any Unicode, control characters, lone surrogates, strings around every
    # limit) failing for any reason
    sqs = RecordingSqs()
    queue = SqsRetryQueue(QUEUE_URL, client=sqs, max_body_bytes=max_body_bytes)
    failure = Failure("unavailable", reason, status=503, first_failed_at=FAILED_AT, last_attempt_at=FAILED_AT)

    # When the writer queues them
    unstored: tuple[Operation, ...] = ()
    try:
        receipt = queue.put(7, RUN_ID, operations, failure, RUN_STARTED_AT)
    except RetryQueueError as exc:
        # (a refusal counts what it stored, and names exactly the operations that could never be queued)
        receipt = QueueReceipt(exc.queued, exc.messages)
        unstored = tuple(exc.unstored or ())
        assert unstored and all(_refused_alone(op, max_body_bytes, failure) for op in unstored)
        assert receipt.queued + len(unstored) == len(operations)
        assert "@" not in str(exc)

    # Then SQS could carry every call and every message...
    for call in sqs.calls:
        assert len(call) <= 10
        assert sum(len(e["MessageBody"].encode()) for e in call) < SQS_MAX_MESSAGE_BYTES
        for entry in call:
            assert SQS_ALLOWED.fullmatch(entry["MessageBody"])
            assert len(entry["MessageBody"].encode()) <= max_body_bytes
            assert all(SQS_ALLOWED.fullmatch(a["StringValue"]) for a in entry["MessageAttributes"].values())
    # ... and the reader reads back every operation queued, equal and in order, none set aside
    read = [RetryMessage.from_json(body) for body in sqs.bodies]
    assert receipt == QueueReceipt(queued=sum(len(m.operations) for m in read), messages=len(read))
    assert all(m.invalid == () and len(m.operations) <= MAX_MESSAGE_OPERATIONS for m in read)
    assert [op for m in read for op in m.operations] == [op for op in operations if op not in unstored]
    assert all(
        (m.run_id, m.run_started_at, m.last_error.reason) == (RUN_ID, RUN_STARTED_AT, reason[:500]) for m in read
    )


# -- the on-call's view ------------------------------------------------------------------------------


def test_dlq_summary_counts_by_kind_and_sets_poison_apart() -> None:
    # Given two dead letters as SQS returns them: a readable one and a poison one
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
    assert summary.run_ids == [RUN_ID]
    assert "2 h 0 min ago" in text and "@" not in text
