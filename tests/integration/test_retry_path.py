"""The retry path end to end: the applier puts failing batches on a real SQS RetryQueue (moto server),
the retry handler (functions/retry/app.py) runs in-process on real SQS events built from received
messages, against a DynamoDB source (moto) and Ownpage (the emulator over HTTP). moto's own SQS→Lambda
trigger ignores partial batch responses, so the tests play the poller: delete what succeeded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from ownpage_sync.applier import ApplyOutcome, apply_operations
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import RetryQueueError
from ownpage_sync.models import Action, Operation
from ownpage_sync.ownpage import OwnpageClient
from ownpage_sync.planner import plan_changes
from ownpage_sync.ports import Failure
from ownpage_sync.retry_queue import RetryMessage, SqsRetryQueue
from ownpage_sync.secrets import OwnpageCredentials
from ownpage_sync.settings import OwnpageSettings, Settings
from ownpage_sync.sources.dynamodb import DynamoDBSource
from ownpage_sync.sources.snapshot import build_snapshot
from ownpage_sync_tools.cli import exit_codes, main
from ownpage_sync_tools.sqs_events import failed_ids, queue_arn, sqs_event

from tests.conftest import REGION, load_handler
from tests.integration.helpers import assert_no_leak, captured_logs

pytestmark = pytest.mark.integration

LIST_ID = 1
MAX_RECEIVE_COUNT = 5
LONG_AGO = "2024-01-01T00:00:00Z"

# The source (DynamoDB items) and Ownpage's list before the run, drifted apart in every way that matters.
SOURCE = [
    {"email": "anne@example.com", "user_id": "u-1", "first_name": "Anne", "city": "Paris"},  # new: subscribe
    {"email": "bruno@example.com", "user_id": "u-2", "first_name": "Bruno", "city": "Lyon"},  # moved: update
    {"email": "dmitri@example.com", "user_id": "u-4", "first_name": "Dmitri", "city": "Nantes"},  # resubscribe
    {"email": "elodie@example.com", "user_id": "u-5", "first_name": "Élodie", "city": "Genève"},  # suppressed
    {"email": "farid@example.com", "user_id": "u-6", "first_name": "Farid", "city": "Lille"},  # new: subscribe
]
OWNPAGE = [
    {"email": "bruno@example.com", "guid": "u-2", "subscribed": True, "data_firstname": "Bruno", "data_city": "Paris"},
    {"email": "chloe@example.com", "guid": "u-3", "subscribed": True, "data_firstname": "Chloé"},  # left: unsubscribe
    {
        "email": "dmitri@example.com",
        "guid": "u-4",
        "subscribed": False,
        "unsubscribed_cause": "PUBLISHER",
        "unsubscribed_at": LONG_AGO,
    },
    {
        "email": "elodie@example.com",
        "guid": "u-5",
        "subscribed": False,
        "unsubscribed_cause": "READER",
        "unsubscribed_at": LONG_AGO,
    },
]
ADDRESSES = {item["email"] for item in SOURCE} | {row["email"] for row in OWNPAGE}


@dataclass
class Stack:
    sqs: Any
    dynamodb: Any
    table: str
    retry_url: str
    dlq_url: str
    emulator: Any
    handler: ModuleType

    def client(self) -> OwnpageClient:
        """Fast retries: the emulator's failures must reach the queue quickly."""
        settings = OwnpageSettings(
            api_url=self.emulator.url, list_id=LIST_ID, secret_id=None, max_attempts=2, backoff_base=0.001,
            backoff_cap=0.005,
        )  # fmt: skip
        return OwnpageClient(settings, OwnpageCredentials("demo", "demo-key"), Deadline.unlimited())

    def rows(self) -> dict[str, dict[str, Any]]:
        return {row["email"]: row for row in self.emulator.state.subscribers(LIST_ID)}

    def posts(self) -> int:
        return sum(1 for r in self.emulator.state.requests if r.method == "POST")

    def receive(self, url: str | None = None, visibility: int | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {
            "QueueUrl": url or self.retry_url,
            "MaxNumberOfMessages": 10,
            "AttributeNames": ["All"],
            "MessageAttributeNames": ["All"],
        }
        if visibility is not None:
            params["VisibilityTimeout"] = visibility
        return self.sqs.receive_message(**params).get("Messages", [])

    def deliver(self, messages: list[dict[str, Any]], context: Any) -> set[str]:
        """One Lambda invocation over these messages, as the SQS poller does it: returns the failed ids
        and deletes the rest; an invocation error (every record failed) deletes nothing."""
        event = sqs_event(messages, queue_arn(self.retry_url, REGION), REGION)
        try:
            failed = failed_ids(self.handler.handler(event, context))
        except BatchProcessingError:
            failed = {m["MessageId"] for m in messages}
        for message in messages:
            if message["MessageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.retry_url, ReceiptHandle=message["ReceiptHandle"])
        return failed

    def drain(self, context: Any) -> None:
        while messages := self.receive(visibility=0):
            assert not self.deliver(messages, context), "a retry failed while draining"

    def count(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def send(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.retry_url, MessageBody=body)


@pytest.fixture
def stack(aws: str, unique: str, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """RetryQueue → DLQ after 5 receives (as in the template), a DynamoDB source table, the emulator
    seeded with a drifted list, and the environment the retry function reads."""
    sqs = boto3.client("sqs")
    dlq_url = sqs.create_queue(QueueName=f"ownpage-dlq-{unique}", Attributes={"MessageRetentionPeriod": "1209600"})[
        "QueueUrl"
    ]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)}
    retry_url = sqs.create_queue(
        QueueName=f"ownpage-retry-{unique}",
        Attributes={"RedrivePolicy": json.dumps(redrive), "MaximumMessageSize": "1048576", "VisibilityTimeout": "30"},
    )["QueueUrl"]
    dynamodb = boto3.client("dynamodb")
    table = f"subscribers-{unique}"
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "email", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "email", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for item in SOURCE:
        dynamodb.put_item(TableName=table, Item={k: {"S": v} for k, v in item.items()})
    emulator.state.seed(LIST_ID, OWNPAGE)
    env = {
        "OWNPAGE_API_URL": emulator.url,
        "OWNPAGE_LIST_ID": str(LIST_ID),
        "OWNPAGE_CLIENT": "demo",
        "OWNPAGE_API_KEY": "demo-key",
        "OWNPAGE_MAX_ATTEMPTS": "2",
        "OWNPAGE_BACKOFF_BASE": "0.001",
        "OWNPAGE_BACKOFF_CAP": "0.005",
        "SOURCE_KIND": "dynamodb",
        "SOURCE_TABLE": table,
        "SOURCE_GUID_ATTRIBUTE": "user_id",
        "SOURCE_DATA_ATTRIBUTES": "firstname=first_name,city=city",
        "RETRY_QUEUE_URL": retry_url,
        "DEAD_LETTER_QUEUE_URL": dlq_url,
        "DEADLINE_MARGIN_SECONDS": "0",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Loaded after the environment is set, fresh for each test: its adapters are cached per "container".
    yield Stack(sqs, dynamodb, table, retry_url, dlq_url, emulator, load_handler("retry"))


def plan_and_fail(stack: Stack, batch_size: int = 2) -> tuple[list[Operation], ApplyOutcome]:
    """Plan the run as the sync does, then apply it while Ownpage refuses every write."""
    source = DynamoDBSource(Settings.from_env().source)
    client = stack.client()
    plan = plan_changes(build_snapshot(source.scan()).records, client.iter_subscribers(LIST_ID))
    operations = list(plan.operations())
    stack.emulator.set_faults(fail_writes=True)
    outcome = apply_operations(
        operations,
        client,
        LIST_ID,
        batch_size=batch_size,
        deadline=Deadline.unlimited(),
        sink=SqsRetryQueue(stack.retry_url),
        run_id="20250301T060000Z-test0001",
    )
    return operations, outcome


def assert_ownpage_equals_source(stack: Stack) -> None:
    """Subscribed on Ownpage = the source minus the reader who said no; data and guid from the source."""
    rows = stack.rows()
    subscribed = {email for email, row in rows.items() if row["subscribed"]}
    assert subscribed == {item["email"] for item in SOURCE} - {"elodie@example.com"}
    for item in SOURCE:
        if item["email"] in subscribed:
            row = rows[item["email"]]
            assert (row["guid"], row["data_firstname"], row["data_city"]) == (
                item["user_id"],
                item["first_name"],
                item["city"],
            )
    assert rows["elodie@example.com"]["unsubscribed_cause"] == "READER"
    assert rows["chloe@example.com"]["subscribed"] is False  # unsubscribed, never deleted
    assert stack.emulator.state.violations == []


def done_lines(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if '"retry message done"' in line]


def test_a_failing_run_is_queued_readably_and_drained_once_ownpage_is_back(stack: Stack, lambda_context: Any) -> None:
    # Given a run whose every write Ownpage refuses
    operations, outcome = plan_and_fail(stack)

    # Then nothing is lost: every planned operation is on the RetryQueue, in messages a human can read
    assert len(operations) == 5 and outcome.queued == 5 and not outcome.failed_operations
    messages = stack.receive(visibility=0)
    assert len(messages) == outcome.queued_messages
    body = json.loads(messages[0]["Body"])
    assert list(body)[:4] == ["schema_version", "list_id", "run_id", "last_error"]
    assert body["last_error"]["kind"] == "unavailable" and body["last_error"]["status"] == 503
    assert body["run_id"] == "20250301T060000Z-test0001" and body["attempts"] >= 1
    assert messages[0]["MessageAttributes"]["ErrorKind"]["StringValue"] == "unavailable"
    queued = [op for m in messages for op in RetryMessage.from_json(m["Body"]).operations]
    assert sorted(queued, key=lambda op: (op.email, op.action)) == sorted(
        operations, key=lambda op: (op.email, op.action)
    )

    # When Ownpage is back and the retry function drains the queue
    stack.emulator.set_faults(fail_writes=False)
    with captured_logs() as lines:
        stack.drain(lambda_context)

    # Then Ownpage equals the source, the queue is empty, nothing was dropped as stale, no address logged
    assert_ownpage_equals_source(stack)
    assert stack.count(stack.retry_url) == 0 and stack.count(stack.dlq_url) == 0
    done = done_lines(lines)
    assert sum(line["sent"] for line in done) == 5
    assert sum(line["stale"] for line in done) == 0
    assert_no_leak("\n".join(lines), ADDRESSES)


def test_operations_made_stale_since_are_dropped_not_replayed(stack: Stack, lambda_context: Any) -> None:
    # Given the whole run queued while Ownpage was failing
    plan_and_fail(stack, batch_size=10)
    stack.emulator.set_faults(fail_writes=False)
    # ... and since then: Anne left the source, Chloé came back to it, and Dmitri unsubscribed himself
    # on Ownpage (READER) — his queued re-subscribe must not be replayed
    stack.dynamodb.delete_item(TableName=stack.table, Key={"email": {"S": "anne@example.com"}})
    chloe = {"email": "chloe@example.com", "user_id": "u-3", "first_name": "Chloé", "city": "Lille"}
    stack.dynamodb.put_item(TableName=stack.table, Item={k: {"S": v} for k, v in chloe.items()})
    now = datetime.now(UTC).isoformat()
    reader_said_no = {"subscribed": False, "unsubscribed_cause": "READER", "unsubscribed_at": now}
    stack.emulator.state.seed(LIST_ID, [{**OWNPAGE[2], **reader_said_no}])

    # When the retry runs
    with captured_logs() as lines:
        stack.drain(lambda_context)

    # Then only what is still wanted was sent; each stale operation is counted under its reason
    rows = stack.rows()
    assert "anne@example.com" not in rows  # the stale subscribe never reached Ownpage
    assert rows["chloe@example.com"]["subscribed"] is True  # the stale unsubscribe was not replayed
    assert rows["dmitri@example.com"]["subscribed"] is False
    assert rows["dmitri@example.com"]["unsubscribed_cause"] == "READER"
    assert rows["farid@example.com"]["subscribed"] is True and rows["bruno@example.com"]["data_city"] == "Lyon"
    (done,) = done_lines(lines)
    assert done["sent"] == 2
    assert done["stale_by_reason"] == {"gone_from_source": 1, "back_in_source": 1, "suppressed_on_ownpage": 1}
    assert_no_leak("\n".join(lines), ADDRESSES)


def test_a_duplicate_delivery_is_harmless(stack: Stack, lambda_context: Any) -> None:
    # Given one queued message, delivered once successfully
    plan_and_fail(stack, batch_size=10)
    stack.emulator.set_faults(fail_writes=False)
    (message,) = stack.receive(visibility=0)
    assert stack.deliver([message], lambda_context) == set()
    after_first, posts = stack.rows(), stack.posts()

    # When SQS delivers the same message again (at-least-once delivery)
    with captured_logs() as lines:
        failed = stack.handler.handler(
            sqs_event([message], "arn:aws:sqs:eu-west-1:123456789012:q", REGION), lambda_context
        )

    # Then it succeeds without a single write: everything is already applied
    assert failed_ids(failed) == set()
    assert stack.posts() == posts
    assert stack.rows() == after_first
    (done,) = done_lines(lines)
    assert done["sent"] == 0 and done["stale_by_reason"] == {"already_applied": 5}


def test_a_message_failing_five_times_reaches_the_dlq_and_redrive_brings_it_back(
    stack: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given one queued message and Ownpage still refusing writes
    plan_and_fail(stack, batch_size=10)

    # When it is delivered and fails MAX_RECEIVE_COUNT times
    for attempt in range(1, MAX_RECEIVE_COUNT + 1):
        messages = stack.receive(visibility=0)
        assert len(messages) == 1 and messages[0]["Attributes"]["ApproximateReceiveCount"] == str(attempt)
        with pytest.raises(BatchProcessingError):  # the only record failed: the invocation fails
            stack.handler.handler(sqs_event(messages, queue_arn(stack.retry_url, REGION), REGION), lambda_context)

    # Then the next receive finds it moved to the dead-letter queue
    assert stack.receive(visibility=0) == []
    assert stack.count(stack.dlq_url) == 1

    # ... where `ownpage-sync dlq` summarises it without consuming it
    capsys.readouterr()  # the handler's EMF metrics so far
    assert main(["dlq", "--json", "--wait", "0"]) == exit_codes.OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["examined"] == 1 and summary["by_kind"] == {"unavailable": {"messages": 1, "operations": 5}}
    (error,) = summary["by_error"]
    assert (error["kind"], error["status"], error["messages"], error["operations"]) == ("unavailable", 503, 1, 5)
    assert error["reason"].startswith("Ownpage is unavailable") and error["other_reasons"] == 0
    assert summary["run_ids_sample"] == ["20250301T060000Z-test0001"]
    # ... and in its text form, with the HTTP status and the reason beside the kind
    assert main(["dlq", "--wait", "0"]) == exit_codes.OK
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("unavailable")]
    assert row.split()[:4] == ["unavailable", "503", "1", "5"] and "Ownpage is unavailable" in row
    assert stack.count(stack.dlq_url) == 1 and len(stack.receive(stack.dlq_url, visibility=0)) == 1

    # When Ownpage is fixed and the on-call redrives (moto has no StartMessageMoveTask: the fallback runs)
    stack.emulator.set_faults(fail_writes=False)
    assert main(["redrive", "--json", "--wait", "0"]) == exit_codes.OK
    redriven = json.loads(capsys.readouterr().out)

    # Then it is back on the RetryQueue, and `ownpage-sync retry` drains it through the same handler
    assert redriven["method"] == "manual" and redriven["moved"] == 1 and redriven["fallback_reason"]
    assert stack.count(stack.dlq_url) == 0 and stack.count(stack.retry_url) == 1
    assert main(["retry", "--json", "--wait", "0"]) == exit_codes.OK
    drained = json.loads(capsys.readouterr().out)
    assert drained["succeeded"] == 1 and drained["failed"] == 0
    assert stack.count(stack.retry_url) == 0
    assert_ownpage_equals_source(stack)


def test_a_poison_message_fails_alone(stack: Stack, lambda_context: Any) -> None:
    # Given a batch of a valid message and two poison ones (not JSON; an unknown schema)
    plan_and_fail(stack, batch_size=10)
    stack.emulator.set_faults(fail_writes=False)
    stack.send("this is not json: anne@example.com")
    stack.send(json.dumps({"schema_version": 99, "operations": [{"email": "anne@example.com"}]}))
    messages = stack.receive(visibility=0)
    assert len(messages) == 3
    poison = {m["MessageId"] for m in messages if not m["Body"].startswith('{"schema_version":1')}

    # When the batch is delivered
    with captured_logs() as lines:
        failed = stack.deliver(messages, lambda_context)

    # Then only the poison messages failed; the valid one was applied and deleted
    assert failed == poison
    assert_ownpage_equals_source(stack)
    errors = [json.loads(line) for line in lines if '"retry message failed"' in line]
    assert {e["message_id"] for e in errors} == poison
    assert all(e["kind"] == "poison" and e["level"] == "ERROR" and e["reason"] for e in errors)
    assert_no_leak("\n".join(lines), ADDRESSES)


def test_an_all_failed_batch_is_retried_not_deleted(
    stack: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two queued messages and Ownpage still down
    plan_and_fail(stack, batch_size=3)
    messages = stack.receive(visibility=0)
    assert len(messages) == 2

    # When the batch is delivered and every record fails
    event = sqs_event(messages, queue_arn(stack.retry_url, REGION), REGION)
    with pytest.raises(BatchProcessingError) as raised:
        stack.handler.handler(event, lambda_context)

    # Then the invocation fails (an empty partial response would have deleted the batch): both come back
    assert_no_leak(str(raised.value), ADDRESSES)  # Lambda logs this error as it is
    again = stack.receive(visibility=0)
    assert {m["Body"] for m in again} == {m["Body"] for m in messages}
    assert all(m["Attributes"]["ApproximateReceiveCount"] == "2" for m in again)

    # And `ownpage-sync retry`, going through the same handler, keeps them too and says so
    capsys.readouterr()
    assert main(["retry", "--json", "--wait", "0"]) == exit_codes.NOT_CONVERGED
    printed = capsys.readouterr()
    drained = json.loads(printed.out)
    assert (drained["received"], drained["failed"], drained["succeeded"]) == (2, 2, 0)
    assert stack.count(stack.retry_url) == 2
    # ... in readable lines on stderr: the handler's fields, no Lambda JSON and no made-up context
    failures = [line for line in printed.err.splitlines() if line.startswith("ERROR retry message failed ")]
    assert len(failures) == 2 and all("kind=unavailable" in line and "message_id=" in line for line in failures)
    assert not [line for line in printed.err.splitlines() if line.lstrip().startswith("{")]
    assert "function_arn" not in printed.err and "cold_start" not in printed.err
    assert_no_leak(printed.err, ADDRESSES)
    # ... after warning that it uses up a receive, and with each message's receive count
    assert printed.err.startswith(
        "ownpage-sync: warning: each message `retry` receives uses one of the 5 receives SQS allows it"
    )
    assert sorted(drained["failed_receives"].values()) == [3, 3] and drained["going_to_dlq"] == 0
    assert all('next="delivered again after the visibility timeout (receive 3 of 5)"' in f for f in failures)


def test_a_local_retry_on_a_message_s_last_receive_says_it_goes_to_the_dlq(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a message already received four times (the RetryFunction failed it four times)
    plan_and_fail(stack, batch_size=10)
    for _ in range(MAX_RECEIVE_COUNT - 1):
        stack.receive(visibility=0)
    # When the on-call drains the queue locally while Ownpage is still down
    code = main(["retry", "--wait", "0"])
    printed = capsys.readouterr()
    # Then the report and the error line say this was its last receive
    assert code == exit_codes.NOT_CONVERGED
    assert f"failed on receive {MAX_RECEIVE_COUNT} of {MAX_RECEIVE_COUNT}, its last" in printed.out
    assert printed.err.splitlines()[-1].startswith(
        "ownpage-sync: error: 1 of 1 retry messages still failing, 1 of them on their last receive"
    )
    assert 'next="moves to the dead-letter queue (receive 5 of 5 was the last)"' in printed.err
    # And SQS indeed moves it to the dead-letter queue at the next receive
    assert stack.receive(visibility=0) == []
    assert stack.count(stack.dlq_url) == 1


def test_sqs_refusing_a_send_is_loud_and_loses_nothing(stack: Stack) -> None:
    # Given a retry queue URL that does not exist
    missing = stack.retry_url.rsplit("/", 1)[0] + "/no-such-queue"
    operations = [Operation(Action.SUBSCRIBE, "anne@example.com")]

    # When failed operations are put on it
    with pytest.raises(RetryQueueError) as raised:
        SqsRetryQueue(missing).put(LIST_ID, "run-1", operations, Failure("unavailable", "HTTP 503", status=503))

    # Then the error names the queue, not the address
    assert "no-such-queue" in str(raised.value) and "@" not in str(raised.value)

    # And through the applier, the operations are reported as failed rather than dropped
    stack.emulator.set_faults(fail_writes=True)
    outcome = apply_operations(
        operations, stack.client(), LIST_ID, batch_size=10, deadline=Deadline.unlimited(), sink=SqsRetryQueue(missing)
    )
    assert outcome.failed_operations == operations and outcome.queued == 0
    assert outcome.batches[0].status == "failed" and "no-such-queue" in (outcome.batches[0].reason or "")


def test_a_fixed_api_key_is_picked_up_without_a_new_container(
    stack: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queued message, Ownpage healthy, and the retry function started with a wrong API key
    plan_and_fail(stack, batch_size=10)
    stack.emulator.set_faults(fail_writes=False)
    monkeypatch.setenv("OWNPAGE_API_KEY", "wrong-key")
    (message,) = stack.receive(visibility=0)
    with captured_logs() as lines, pytest.raises(BatchProcessingError):
        stack.handler.handler(sqs_event([message], queue_arn(stack.retry_url, REGION), REGION), lambda_context)
    errors = [json.loads(line) for line in lines if '"retry message failed"' in line]
    assert [e["kind"] for e in errors] == ["auth"]
    assert "wrong-key" not in "\n".join(lines)

    # When the key is fixed (locally the variable; in AWS the secret) and the same warm handler retries
    monkeypatch.setenv("OWNPAGE_API_KEY", "demo-key")
    failed = stack.deliver(stack.receive(visibility=0), lambda_context)

    # Then the message succeeds without a cold start
    assert failed == set()
    assert_ownpage_equals_source(stack)
