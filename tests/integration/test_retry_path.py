"""The retry path end to end. The sync function's handler (functions/sync/app.py) runs against a
DynamoDB source and a run table (moto server) and Ownpage (the emulator over HTTP) whose writes fail,
so its applier puts the batches on a real SQS RetryQueue; the retry handler (functions/retry/app.py)
then runs in-process on real SQS events built from received messages, against the same source (or
the local PostgreSQL and MariaDB). moto's own SQS→Lambda trigger ignores partial batch responses, so
the tests play the poller: delete what succeeded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
import requests
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from ownpage_sync.applier import apply_operations
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import RetryQueueError
from ownpage_sync.models import Action, Operation
from ownpage_sync.ownpage import OwnpageClient
from ownpage_sync.ports import Failure, QueueReceipt
from ownpage_sync.retry_queue import MAX_MESSAGE_OPERATIONS, RetryMessage, SqsRetryQueue
from ownpage_sync.run_ledger import DynamoDbRunLedger
from ownpage_sync.secrets import OwnpageCredentials
from ownpage_sync.settings import OwnpageSettings
from ownpage_sync.spellings import SpellingSnapshot
from ownpage_sync_tools.cli import exit_codes, main
from ownpage_sync_tools.localstack import create_run_table
from ownpage_sync_tools.sqs_events import failed_ids, queue_arn, sqs_event

from tests.conftest import REGION, load_handler
from tests.integration.helpers import assert_no_leak, captured_logs
from tests.integration.sql_fixtures import ENGINES, scratch_database

pytestmark = pytest.mark.integration

LIST_ID = 1
MAX_RECEIVE_COUNT = 5
LONG_AGO = "2024-01-01T00:00:00Z"
RUN_ID = "20250301T060000Z-test0001"
FAILURE = Failure("unavailable", "HTTP 503 from Ownpage", status=503)

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
PLANNED = {  # what the run plans for the drift above
    ("unsubscribe", "chloe@example.com"),
    ("resubscribe", "dmitri@example.com"),
    ("subscribe", "anne@example.com"),
    ("subscribe", "farid@example.com"),
    ("update", "bruno@example.com"),
}


@dataclass
class Stack:
    sqs: Any
    dynamodb: Any
    table: str
    retry_url: str
    dlq_url: str
    emulator: Any
    handler: ModuleType
    sync_handler: ModuleType
    monkeypatch: pytest.MonkeyPatch

    def client(self) -> OwnpageClient:
        """Fast retries: the emulator's failures must reach the queue quickly."""
        settings = OwnpageSettings(
            api_url=self.emulator.url, list_id=LIST_ID, secret_id=None, max_attempts=2, backoff_base=0.001,
            backoff_cap=0.005,
        )  # fmt: skip
        return OwnpageClient(settings, OwnpageCredentials("demo", "demo-key"), Deadline.unlimited())

    def run(self, context: Any, *, failing: bool, batch_size: int = 10) -> dict[str, Any]:
        """One scheduled sync run (the real handler), with Ownpage refusing every write or not."""
        self.monkeypatch.setenv("OWNPAGE_BATCH_SIZE", str(batch_size))
        self.emulator.set_faults(fail_writes=failing)
        report: dict[str, Any] = self.sync_handler.handler({}, context)
        self.emulator.set_faults(fail_writes=False)
        return report

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

    def receive_all(self) -> list[dict[str, Any]]:
        """Every message on the RetryQueue, kept invisible until the test ends."""
        found: list[dict[str, Any]] = []
        while batch := self.receive(visibility=300):
            found.extend(batch)
        return found

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

    def use_sql_source(self, engine: str, dsn: str, query: str) -> None:
        """Both functions read this SQL source instead of the DynamoDB table."""
        for name, value in {
            "SOURCE_KIND": engine,
            "SOURCE_DSN": dsn,
            "SOURCE_QUERY": query,
            "SOURCE_TLS": "disable",
        }.items():
            self.monkeypatch.setenv(name, value)
        self.monkeypatch.delenv("SOURCE_TABLE")

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

    def put_source(self, **item: str) -> None:
        self.dynamodb.put_item(TableName=self.table, Item={k: {"S": v} for k, v in item.items()})


@pytest.fixture
def stack(aws: str, unique: str, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """RetryQueue → DLQ after 5 receives (as in the template), a DynamoDB source table keyed by the
    address (stored canonical, as SOURCE_EMAIL_CANONICAL vouches), a run table, the emulator seeded
    with a drifted list, and the environment both functions read."""
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
    create_run_table(dynamodb, f"runs-{unique}")
    # A scheduled run's complete read a moment ago, which saw no address under another spelling: what
    # lets the retry path replay a queued subscribe (spellings.py; the proof itself is tested in
    # tests/unit/test_retrying.py)
    DynamoDbRunLedger(f"runs-{unique}").put_spellings(SpellingSnapshot.of_keys("earlier-run", datetime.now(UTC), []))
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
        "SOURCE_EMAIL_CANONICAL": "true",
        "SOURCE_GUID_ATTRIBUTE": "user_id",
        "SOURCE_DATA_ATTRIBUTES": "firstname=first_name,city=city",
        "RETRY_QUEUE_URL": retry_url,
        "DEAD_LETTER_QUEUE_URL": dlq_url,
        "RUN_TABLE": f"runs-{unique}",
        "DEADLINE_MARGIN_SECONDS": "0",
        # A five-reader list: every change is a large share of it. The guards are tested elsewhere.
        "MAX_UNSUBSCRIBE_RATIO": "1",
        "MAX_RESUBSCRIBE_RATIO": "1",
        "MAX_RESUBSCRIBE_REMOVED_RATIO": "1",
        "MAX_SOURCE_DROP_RATIO": "1",
        "MAX_SOURCE_GROWTH_RATIO": "1000",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Loaded after the environment is set, fresh for each test: their adapters are cached per "container".
    yield Stack(
        sqs, dynamodb, table, retry_url, dlq_url, emulator, load_handler("retry"), load_handler("sync"), monkeypatch
    )


def failed_run(stack: Stack, context: Any, batch_size: int = 10) -> dict[str, Any]:
    """A scheduled run while Ownpage refuses every write: everything it planned is queued."""
    report = stack.run(context, failing=True, batch_size=batch_size)
    assert report["outcome"] == "not_converged", report
    assert report["counts"]["queued"] == len(PLANNED) and report["counts"]["failed"] == 0
    return report


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


def metric_values(stdout: str, name: str) -> list[float]:
    """The values of one metric in the EMF documents the handler printed."""
    values = []
    for line in stdout.splitlines():
        if line.startswith("{") and '"_aws"' in line and f'"{name}"' in line:
            document = json.loads(line)
            value = document[name]
            values.extend(value if isinstance(value, list) else [value])
    return values


# -- the whole path ---------------------------------------------------------------------------------


def test_a_failing_run_is_queued_readably_and_drained_once_ownpage_is_back(stack: Stack, lambda_context: Any) -> None:
    # Given a scheduled run whose every write Ownpage refused
    report = failed_run(stack, lambda_context, batch_size=2)

    # Then nothing is lost: every planned operation is on the RetryQueue, in messages a human can read
    messages = stack.receive(visibility=0)
    assert len(messages) == 3
    body = json.loads(messages[0]["Body"])
    assert list(body)[:5] == ["schema_version", "list_id", "run_id", "run_started_at", "last_error"]
    assert body["schema_version"] == 2 and body["run_id"] == report["run_id"]
    assert body["run_started_at"].startswith(report["started_at"][:19])
    assert body["last_error"]["kind"] == "unavailable" and body["last_error"]["status"] == 503
    assert messages[0]["MessageAttributes"]["ErrorKind"]["StringValue"] == "unavailable"
    queued = [op for m in messages for op in RetryMessage.from_json(m["Body"]).operations]
    assert {(op.action.value, op.email) for op in queued} == PLANNED and len(queued) == len(PLANNED)

    # When Ownpage is back and the retry function drains the queue
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
    failed_run(stack, lambda_context)
    # ... and since then: Anne left the source, Chloé came back to it, and Dmitri unsubscribed himself
    # on Ownpage (READER) — his queued re-subscribe must not be replayed
    stack.dynamodb.delete_item(TableName=stack.table, Key={"email": {"S": "anne@example.com"}})
    stack.put_source(email="chloe@example.com", user_id="u-3", first_name="Chloé", city="Lille")
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


def test_a_duplicate_delivery_and_a_redriven_copy_are_harmless(stack: Stack, lambda_context: Any) -> None:
    # Given one queued message, delivered once successfully
    failed_run(stack, lambda_context)
    (message,) = stack.receive(visibility=0)
    assert stack.deliver([message], lambda_context) == set()
    after_first, posts = stack.rows(), stack.posts()

    # When SQS delivers the same message again (at-least-once delivery), and a copy of it comes back
    # under a new message id (a redrive from the DLQ)
    with captured_logs() as lines:
        again = stack.handler.handler(sqs_event([message], queue_arn(stack.retry_url, REGION), REGION), lambda_context)
        stack.send(message["Body"])
        (copy,) = stack.receive(visibility=0)
        assert copy["MessageId"] != message["MessageId"]
        redriven = stack.deliver([copy], lambda_context)

    # Then both succeed without a single write: everything is already applied
    assert failed_ids(again) == set() and redriven == set()
    assert stack.posts() == posts
    assert stack.rows() == after_first
    assert [(d["sent"], d["stale_by_reason"]) for d in done_lines(lines)] == [(0, {"already_applied": 5})] * 2
    assert stack.count(stack.retry_url) == 0


def test_a_message_older_than_the_last_converged_run_is_superseded(stack: Stack, lambda_context: Any) -> None:
    # Given a run that queued everything, then a later run that converged with Ownpage healthy
    failed_run(stack, lambda_context)
    later = stack.run(lambda_context, failing=False)
    assert later["outcome"] == "converged", later
    # ... after which the reader Anne left the source and the list was edited by hand
    stack.dynamodb.delete_item(TableName=stack.table, Key={"email": {"S": "anne@example.com"}})
    posts = stack.posts()

    # When the first run's message is finally retried
    with captured_logs() as lines:
        stack.drain(lambda_context)

    # Then it is dropped whole, without a read or a write: the later run planned from fresher reads
    (done,) = done_lines(lines)
    assert done["stale_by_reason"] == {"superseded_by_later_run": 5} and done["sent"] == 0
    assert stack.posts() == posts
    assert stack.rows()["anne@example.com"]["subscribed"] is True  # left for the next run, not this message


def test_a_message_failing_five_times_reaches_the_dlq_and_redrive_brings_it_back(
    stack: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given one queued message and Ownpage still refusing writes
    report = failed_run(stack, lambda_context)
    stack.emulator.set_faults(fail_writes=True)

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
    capsys.readouterr()  # the handlers' logs and EMF metrics so far
    assert main(["dlq", "--json", "--wait", "0"]) == exit_codes.OK
    summary = json.loads(capsys.readouterr().out)
    assert summary["examined"] == 1 and summary["by_kind"] == {"unavailable": {"messages": 1, "operations": 5}}
    assert summary["run_ids_sample"] == [report["run_id"]]
    (error,) = summary["by_error"]
    assert (error["kind"], error["status"], error["messages"], error["operations"]) == ("unavailable", 503, 1, 5)
    assert error["reason"].startswith("Ownpage is unavailable") and error["other_reasons"] == 0
    # ... and in its text form, with the HTTP status and the reason beside the kind
    assert main(["dlq", "--wait", "0"]) == exit_codes.OK
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("unavailable")]
    assert row.split()[:4] == ["unavailable", "503", "1", "5"] and "Ownpage is unavailable" in row
    assert stack.count(stack.dlq_url) == 1 and len(stack.receive(stack.dlq_url, visibility=0)) == 1
    # ... and at DEBUG, in a process of its own (nothing else has capped the AWS SDK's loggers there),
    # its logs show neither the message's body nor any address in it
    debug = subprocess.run(
        [str(Path(sys.executable).parent / "ownpage-sync"), "dlq", "--wait", "0"],
        env={**os.environ, "LOG_LEVEL": "DEBUG"},
        capture_output=True,
        text=True,
    )
    assert debug.returncode == exit_codes.OK, debug.stderr
    assert "INFO Found credentials" in debug.stderr  # the SDK's logs do reach the terminal, at INFO
    assert "example.com" not in debug.stderr and "operations" not in debug.stderr

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


# -- one bad part never fails the rest ---------------------------------------------------------------


def test_a_poison_message_fails_alone(stack: Stack, lambda_context: Any) -> None:
    # Given a batch of a valid message and three poison ones: not JSON, an unknown schema, and a valid
    # shape whose run id was forged to smuggle an address and a fake line into the logs
    failed_run(stack, lambda_context)
    forged = "20250301T060000Z-x\nERROR anne@example.com"
    valid = stack.receive(visibility=0)[0]["Body"]
    stack.send("this is not json: anne@example.com")
    stack.send(json.dumps({"schema_version": 99, "operations": [{"email": "anne@example.com"}]}))
    stack.send(json.dumps({**json.loads(valid), "run_id": forged}))
    messages = stack.receive(visibility=0)
    assert len(messages) == 4
    poison = {m["MessageId"] for m in messages if m["Body"] != valid}

    # When the batch is delivered
    with captured_logs() as lines:
        failed = stack.deliver(messages, lambda_context)

    # Then only the poison messages failed; the valid one was applied and deleted
    assert failed == poison
    assert_ownpage_equals_source(stack)
    errors = [json.loads(line) for line in lines if '"retry message failed"' in line]
    assert {e["message_id"] for e in errors} == poison
    assert all(e["kind"] == "poison" and e["level"] == "ERROR" and e["reason"] for e in errors)
    assert all(e.get("run_id") is None for e in errors)  # a forged run id is never logged
    assert_no_leak("\n".join(lines), ADDRESSES)
    assert "ERROR anne" not in "\n".join(lines)


def test_one_bad_operation_does_not_send_a_500_operation_message_to_the_dlq(
    stack: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given 500 new readers in the source, and a message of their 500 subscribes in which one entry
    # was damaged (a hand edit, a bug in an older writer)
    readers = [f"reader{i:03d}@example.org" for i in range(MAX_MESSAGE_OPERATIONS)]
    with boto3.resource("dynamodb").Table(stack.table).batch_writer() as writer:
        for i, email in enumerate(readers):
            writer.put_item(Item={"email": email, "user_id": f"r-{i}", "first_name": "R", "city": "Paris"})
    operations = [Operation(Action.SUBSCRIBE, email) for email in readers]
    body = RetryMessage.for_failure(LIST_ID, RUN_ID, operations, FAILURE).to_dict()
    body["operations"][250]["guid"] = 250
    stack.send(json.dumps(body))

    # When it is delivered
    capsys.readouterr()
    with captured_logs() as lines:
        failed = stack.deliver(stack.receive(visibility=0), lambda_context)

    # Then it succeeds: the 499 good ones are applied with today's data, the bad one is reported (log
    # and metric InvalidRetryOperations), and nothing is left for the DLQ
    assert failed == set()
    rows = stack.rows()
    assert {email for email in readers if rows.get(email, {}).get("subscribed")} == set(readers) - {readers[250]}
    assert rows[readers[0]]["guid"] == "r-0" and rows[readers[0]]["data_city"] == "Paris"
    (done,) = done_lines(lines)
    assert (done["sent"], done["invalid_operations"]) == (499, 1)
    assert metric_values(capsys.readouterr().out, "InvalidRetryOperations") == [1.0]
    assert stack.count(stack.retry_url) == 0 and stack.count(stack.dlq_url) == 0
    assert_no_leak("\n".join(lines), set(readers))


# -- look-ups that cannot be sure ----------------------------------------------------------------------


def test_an_unsubscribe_for_a_reader_back_under_a_mixed_case_key_is_not_replayed(
    stack: Stack, lambda_context: Any
) -> None:
    # Given a table whose keys are not vouched canonical, a run that queued Chloé's unsubscribe, and
    # Chloé back in the source since under a key spelled "Chloe@Example.com" (an exact key look-up
    # for chloe@example.com misses it)
    stack.monkeypatch.setenv("SOURCE_EMAIL_CANONICAL", "false")
    failed_run(stack, lambda_context)
    stack.put_source(email="Chloe@Example.com", user_id="u-3", first_name="Chloé", city="Lille")

    # When the retry runs
    with captured_logs() as lines:
        stack.drain(lambda_context)

    # Then Chloé is not unsubscribed: the look-up cannot prove her gone, the next full run decides;
    # everything the look-up did find is applied
    (done,) = done_lines(lines)
    assert done["stale_by_reason"] == {"undecided": 1} and done["sent"] == 4
    assert stack.rows()["chloe@example.com"]["subscribed"] is True

    # And the next full run, which reads every spelling, keeps her subscribed
    report = stack.run(lambda_context, failing=False)
    assert report["counts"]["to_unsubscribe"] == 0 and stack.rows()["chloe@example.com"]["subscribed"] is True


@pytest.mark.parametrize("engine", ENGINES)
def test_sql_look_ups_find_spellings_with_white_space_and_leave_the_unprovable_undecided(
    stack: Stack, lambda_context: Any, engine: str
) -> None:
    # Given a SQL source where three readers whose unsubscribes were queued came back, spelled with a
    # trailing tab, a trailing no-break space, and (beyond ASCII) a half-composed "ǖ" that SQL's
    # comparison cannot be relied on to match; and a fourth reader truly gone
    back = "\u00fc\u0304nal@example.com"  # ü + combining macron; its canonical key is "ǖnal@example.com"
    queued = ["tab@example.com", "nbsp@example.com", "\u01d6nal@example.com", "gone@example.com"]
    stack.emulator.state.reset()
    stack.emulator.state.seed(LIST_ID, [{"email": email, "subscribed": True} for email in queued])
    with scratch_database(engine) as db:
        table = db.table("email VARCHAR(320), guid VARCHAR(40), data_city VARCHAR(80)")
        rows = [("Tab@Example.com\t", "g-1", "Brest"), ("nbsp@example.com\u00a0", "g-2", "Metz"), (back, "g-3", "Pau")]
        db.insert(table, ["email", "guid", "data_city"], rows)
        stack.use_sql_source(engine, db.dsn, f"SELECT email, guid, data_city FROM {table}")
        SqsRetryQueue(stack.retry_url).put(LIST_ID, RUN_ID, [Operation(Action.UNSUBSCRIBE, e) for e in queued], FAILURE)

        # When the retry runs
        with captured_logs() as lines:
            stack.drain(lambda_context)

    # Then the ASCII keys were found whatever the white space (not replayed), the unprovable one is not
    # replayed either, and only the reader truly gone is unsubscribed
    subscribed = {email for email, row in stack.rows().items() if row["subscribed"]}
    assert subscribed == set(queued) - {"gone@example.com"}
    (done,) = done_lines(lines)
    assert done["sent"] == 1
    reasons = done["stale_by_reason"]
    if engine == "postgresql":  # compares code points: the half-composed spelling is not found
        assert reasons == {"back_in_source": 2, "undecided": 1}
    else:  # MariaDB's unicode_ci collation may match it: found, or undecided, never replayed
        assert reasons in ({"back_in_source": 2, "undecided": 1}, {"back_in_source": 3})


@pytest.mark.parametrize("engine", [*ENGINES, "dynamodb"])
def test_addresses_no_search_can_carry_are_set_aside_and_the_rest_of_their_message_applied(
    stack: Stack, lambda_context: Any, engine: str
) -> None:
    # Given two readers gone from the source whose unsubscribes were queued in one message with two
    # odd spellings Ownpage served: a lone surrogate (neither a URL nor a driver can encode it) and a
    # NUL (PostgreSQL's text cannot hold one)
    gone = ["gone1@example.com", "gone2@example.com"]
    odd = ["\ud800odd@example.com", "nul\x00@example.com"]
    stack.emulator.state.reset()
    stack.emulator.state.seed(LIST_ID, [{"email": email, "subscribed": True} for email in [*gone, *odd]], verbatim=True)
    operations = [Operation(Action.UNSUBSCRIBE, email, unsubscribed_cause="PUBLISHER") for email in [*gone, *odd]]
    SqsRetryQueue(stack.retry_url).put(LIST_ID, RUN_ID, operations, FAILURE)
    with scratch_database("postgresql" if engine == "dynamodb" else engine) as db:
        if engine != "dynamodb":
            table = db.table("email VARCHAR(320), guid VARCHAR(40)")
            db.insert(table, ["email", "guid"], [("still@example.com", "g-1")])
            stack.use_sql_source(engine, db.dsn, f"SELECT email, guid FROM {table}")
        # When the retry function receives the message
        with captured_logs() as lines:
            stack.drain(lambda_context)
    # Then the two good unsubscribes are made at the first receive, and the odd ones are left to the
    # scheduled run, said so (not: every receive fails and the message ends in the dead-letter queue)
    rows = stack.rows()
    assert [rows[email]["subscribed"] for email in gone] == [False, False]
    assert [rows[email]["subscribed"] for email in odd] == [True, True]
    (done,) = done_lines(lines)
    assert done["sent"] == 2 and done["stale_by_reason"] == {"unsearchable": 2}
    assert stack.count(stack.dlq_url) == 0


class ServerIgnoringExact(requests.Session):
    """The session the retry function's Ownpage client uses, turning the emulator into an Ownpage whose
    search ignores `exact=true` (substring matches, one page of them): the parameter never reaches
    it. Every POST body is kept, to see exactly what was sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, Any]] = []

    def request(self, method: str, url: str, params: Any = None, data: Any = None, **kwargs: Any) -> Any:  # type: ignore[override]
        if params:
            params = {name: value for name, value in params.items() if name != "exact"}
        if method == "POST" and data and url.endswith("/subscribers"):
            self.sent.extend(json.loads(data))
        return super().request(method, url, params=params, data=data, **kwargs)


@pytest.mark.parametrize("look_alikes", [3, 150, 600], ids=["one-page", "pages-on", "undecided"])
def test_a_reader_who_said_no_is_never_sent_subscribed_true_when_the_search_ignores_exact(
    stack: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch, look_alikes: int
) -> None:
    # Given Élodie in the source, READER-unsubscribed on Ownpage after a re-subscribe was queued for her
    # (she was unsubscribed by the publisher when the run read her), on an Ownpage whose search ignores
    # `exact` and holds look-alike addresses before hers: within one page of 100, within the 5 pages a
    # look-up reads on, or beyond them
    rows = [{"email": f"{i:03d}elodie@example.com", "subscribed": True} for i in range(look_alikes)]
    stack.emulator.state.reset()
    stack.emulator.state.seed(LIST_ID, [*rows, OWNPAGE[3]])
    session = ServerIgnoringExact()
    monkeypatch.setattr("ownpage_sync.ownpage.transport.new_session", lambda pool_size: session)
    resubscribe = Operation(Action.RESUBSCRIBE, "elodie@example.com", "u-5", {"city": "Genève"})
    SqsRetryQueue(stack.retry_url).put(LIST_ID, RUN_ID, [resubscribe], FAILURE)

    # When the retry runs
    stack.drain(lambda_context)

    # Then Ownpage never receives `subscribed: true` for her: her suppression was seen (the look-up
    # reads on past full pages) and nothing was sent, or, beyond the pages it may read, the search was
    # undecided and she got a subscribe by omission, which leaves an existing row's status alone; her
    # row keeps the READER cause, and no look-alike was written to
    assert all(payload.get("subscribed") is not True for payload in session.sent)
    assert {payload["email"] for payload in session.sent} <= {"elodie@example.com"}
    if look_alikes > 500:
        assert session.sent == [
            {"email": "elodie@example.com", "guid": "u-5", "data_firstname": "Élodie", "data_city": "Genève"}
        ]
    else:
        assert session.sent == []
    elodie = stack.rows()["elodie@example.com"]
    assert (elodie["subscribed"], elodie["unsubscribed_cause"]) == (False, "READER")
    assert all(row["subscribed"] for email, row in stack.rows().items() if email != "elodie@example.com")
    assert stack.emulator.state.violations == []


# -- the writer on a real queue ---------------------------------------------------------------------


def test_whatever_an_address_or_value_holds_survives_a_real_queue(stack: Stack) -> None:
    # Given operations holding what SQS cannot carry as is (NUL, a lone surrogate, U+FFFF) and what it
    # can (emoji, line separators, bidi marks, a no-break space), at the limits of an address and a value
    nasty = [
        Operation(Action.UNSUBSCRIBE, "nul\x00@example.com", unsubscribed_cause="PUBLISHER"),
        Operation(Action.UNSUBSCRIBE, "half\ud800@example.com"),
        Operation(Action.UPDATE, "emoji\U0001f600@example.com", "g\u2028\u202e", {"bio": "\uffff" + "é" * 9_999}),
        Operation(Action.SUBSCRIBE, "x" * 308 + "@example.com", data={"city": "\u00a0Genève\t"}),
    ]

    # When they are queued and received back
    receipt = SqsRetryQueue(stack.retry_url).put(LIST_ID, RUN_ID, nasty, FAILURE)
    (message,) = stack.receive_all()

    # Then the reader reads back exactly what the writer queued
    assert receipt == QueueReceipt(4, 1)
    assert list(RetryMessage.from_json(message["Body"]).operations) == nasty


def test_queueing_stops_at_the_deadline_and_reports_how_many_were_queued(stack: Stack) -> None:
    # Given a run's writes failing, and a retry queue whose time runs out during its first call to SQS
    sqs = boto3.client("sqs")
    left = [60.0]
    sqs.meta.events.register("after-call.sqs.SendMessageBatch", lambda **_: left.__setitem__(0, 0.0))
    queue = SqsRetryQueue(stack.retry_url, client=sqs, deadline=Deadline(lambda: left[0]), max_body_bytes=4_096)
    operations = [Operation(Action.SUBSCRIBE, f"reader{i:03d}@example.org") for i in range(600)]
    stack.emulator.set_faults(fail_writes=True)

    # When the applier sets the failed batch aside
    outcome = apply_operations(
        operations, stack.client(), LIST_ID, batch_size=600, deadline=Deadline.unlimited(), sink=queue, run_id=RUN_ID
    )

    # Then one call's ten messages were stored, the outcome counts exactly their operations as queued
    # (the first ones, in order) and the rest as deferred to the next run; none is failed or lost
    stored = stack.receive_all()
    assert len(stored) == 10 == outcome.queued_messages
    parts = sorted((RetryMessage.from_json(m["Body"]) for m in stored), key=lambda part: part.part)
    assert [op for part in parts for op in part.operations] == operations[: outcome.queued]
    assert 0 < outcome.queued < 600 and outcome.deferred == 600 - outcome.queued
    assert outcome.failed_operations == []
    assert [batch.status for batch in outcome.batches] == ["queued", "deferred"]


def _refuse_entries(sqs: Any, ids: set[str]) -> None:
    """Make the real queue refuse some entries of every SendMessageBatch: moto refuses an entry whose
    DelaySeconds exceeds 900, alone, as SQS does."""

    def delay(params: dict[str, Any], **_: Any) -> None:
        for entry in params["Entries"]:
            if entry["Id"] in ids:
                entry["DelaySeconds"] = 1_800

    sqs.meta.events.register("before-parameter-build.sqs.SendMessageBatch", delay)


def _ten_messages() -> list[Operation]:
    return [Operation(Action.SUBSCRIBE, f"reader{i:04d}@example.org") for i in range(10 * MAX_MESSAGE_OPERATIONS)]


def test_sqs_refusing_the_end_of_a_batch_reports_exactly_what_was_stored(stack: Stack) -> None:
    # Given a real queue refusing the last two of ten messages, even when they are sent again
    sqs = boto3.client("sqs")
    _refuse_entries(sqs, {"8", "9"})
    operations = _ten_messages()

    # When the operations are put
    with pytest.raises(RetryQueueError) as raised:
        SqsRetryQueue(stack.retry_url, client=sqs).put(LIST_ID, RUN_ID, operations, FAILURE)

    # Then the error counts exactly the messages and operations the queue holds: the first ones
    stored = sorted((RetryMessage.from_json(m["Body"]) for m in stack.receive_all()), key=lambda part: part.part)
    assert (raised.value.messages, raised.value.queued) == (len(stored), sum(len(p.operations) for p in stored))
    assert [op for part in stored for op in part.operations] == operations[: raised.value.queued]
    assert raised.value.messages == 8 and "InvalidParameterValue" in str(raised.value)


def test_sqs_refusing_the_middle_of_a_batch_reports_exactly_what_was_stored(stack: Stack) -> None:
    # Given a real queue refusing the fourth of ten messages, even when it is sent again
    sqs = boto3.client("sqs")
    _refuse_entries(sqs, {"3"})
    operations = _ten_messages()

    # When the operations are put
    with pytest.raises(RetryQueueError) as raised:
        SqsRetryQueue(stack.retry_url, client=sqs).put(LIST_ID, RUN_ID, operations, FAILURE)

    # Then the error counts exactly the messages and operations the queue holds, and names exactly the
    # operations it does not (the fourth message's): none lost, none reported twice
    held = stack.receive_all()
    stored = {op.email for m in held for op in RetryMessage.from_json(m["Body"]).operations}
    unstored = {op.email for op in raised.value.unstored or ()}
    refused = {op.email for op in operations[1_500:2_000]}
    assert (raised.value.messages, raised.value.queued) == (len(held), 9 * MAX_MESSAGE_OPERATIONS) == (9, 4_500)
    assert unstored == refused and stored.isdisjoint(unstored)
    assert stored | unstored == {op.email for op in operations}


def test_sqs_refusing_a_send_is_loud_and_loses_nothing(stack: Stack) -> None:
    # Given a retry queue URL that does not exist
    missing = stack.retry_url.rsplit("/", 1)[0] + "/no-such-queue"
    operations = [Operation(Action.SUBSCRIBE, "anne@example.com")]

    # When failed operations are put on it
    with pytest.raises(RetryQueueError) as raised:
        SqsRetryQueue(missing).put(LIST_ID, RUN_ID, operations, FAILURE)

    # Then the error names the queue, not the address
    assert "no-such-queue" in str(raised.value) and "@" not in str(raised.value)

    # And through the applier, the operations are reported as failed rather than dropped
    stack.emulator.set_faults(fail_writes=True)
    outcome = apply_operations(
        operations,
        stack.client(),
        LIST_ID,
        batch_size=10,
        deadline=Deadline.unlimited(),
        sink=SqsRetryQueue(missing),
        run_id=RUN_ID,
    )
    assert outcome.failed_operations == operations and outcome.queued == 0
    assert outcome.batches[0].status == "failed" and "no-such-queue" in (outcome.batches[0].reason or "")


# -- failing handlers ----------------------------------------------------------------------------------


def test_an_all_failed_batch_is_retried_not_deleted(
    stack: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two queued messages and Ownpage still down
    failed_run(stack, lambda_context, batch_size=3)
    stack.emulator.set_faults(fail_writes=True)
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
    stack: Stack, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a message already received four times (the RetryFunction failed it four times), Ownpage down
    failed_run(stack, lambda_context)
    stack.emulator.set_faults(fail_writes=True)
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


def test_a_fixed_api_key_is_picked_up_without_a_new_container(
    stack: Stack, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a queued message, Ownpage healthy, and the retry function started with a wrong API key
    failed_run(stack, lambda_context)
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
