"""The fast lane end to end: the ChangeFunction's handler (functions/change/app.py) on real DynamoDB
Stream records and real EventBridge events, against a DynamoDB source and SQS queues in moto's server
and Ownpage played by the emulator over HTTP, some of its unfriendly variants included.

moto keeps the table's stream (new and old images) but cannot run an event source mapping: Lambda
needs Docker, absent here. So the tests read the records from moto's DynamoDB Streams with boto3, as
the mapping would, and call the handler in-process with them in Lambda's shape
(ownpage_sync_tools.change_events). Change events are put with `ownpage-sync touch` on moto's
EventBridge, whose rule forwards them to an SQS queue the test reads: the handler gets the event
exactly as EventBridge built it. The retry handler and the sync handler run in-process the same way.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

import boto3
import pytest
from ownpage_sync.fast_lane import ChangeNotApplied
from ownpage_sync.run_ledger import DynamoDbRunLedger
from ownpage_sync_tools.change_events import StreamReader, stream_event
from ownpage_sync_tools.cli import main
from ownpage_sync_tools.localstack import EMAIL_INDEX, create_queues, create_run_table, create_source_table
from ownpage_sync_tools.sqs_events import failed_ids, queue_arn, sqs_event

from tests.conftest import REGION, load_handler
from tests.integration.helpers import assert_no_leak, captured_logs
from tests.integration.test_retry_path import metric_values

pytestmark = pytest.mark.integration

LIST_ID = 1
LONG_AGO = "2025-01-01T00:00:00+00:00"
# The publisher's table (keyed by user id, the address in an index, stored canonical) and Ownpage's
# list, in step to begin with: Chloé unsubscribed herself on Ownpage (a suppression), Dmitri opted out.
SOURCE = [
    {"user_id": "u-1", "email": "anne@example.com", "newsletter": True, "first_name": "Anne", "city": "Paris"},
    {"user_id": "u-2", "email": "bruno@example.com", "newsletter": True, "first_name": "Bruno", "city": "Lyon"},
    {"user_id": "u-3", "email": "chloe@example.com", "newsletter": True, "first_name": "Chloé", "city": "Nantes"},
    {"user_id": "u-4", "email": "dmitri@example.com", "newsletter": False, "first_name": "Dmitri", "city": "Lille"},
]
OWNPAGE = [
    {"email": "anne@example.com", "guid": "u-1", "subscribed": True, "data_firstname": "Anne", "data_city": "Paris"},
    {"email": "bruno@example.com", "guid": "u-2", "subscribed": True, "data_firstname": "Bruno", "data_city": "Lyon"},
    {
        "email": "chloe@example.com",
        "guid": "u-3",
        "subscribed": False,
        "unsubscribed_cause": "READER",
        "unsubscribed_at": LONG_AGO,
        "data_firstname": "Chloé",
        "data_city": "Nantes",
    },
]
ADDRESSES = {item["email"] for item in SOURCE} | {
    "farid@example.com",
    "farid.b@example.com",
    "gaelle@example.com",
    "Gaelle@Example.com",
    "hugo@example.com",
    "Chloe@Example.com",
    "CHLOE@example.com",
}


@dataclass
class Lane:
    dynamodb: Any
    sqs: Any
    table: str
    stream: StreamReader
    retry_url: str
    tap_url: str  # where moto's EventBridge rule forwards SubscriberChanged events
    emulator: Any
    change: ModuleType
    monkeypatch: pytest.MonkeyPatch

    # -- the publisher's side ----------------------------------------------------------------------
    def update(self, user_id: str, **values: Any) -> None:
        names = {f"#{name}": name for name in values}
        self.dynamodb.update_item(
            TableName=self.table,
            Key={"user_id": {"S": user_id}},
            UpdateExpression="SET " + ", ".join(f"#{name} = :{name}" for name in values),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={f":{name}": _attribute(value) for name, value in values.items()},
        )

    def put(self, **item: Any) -> None:
        self.dynamodb.put_item(TableName=self.table, Item={k: _attribute(v) for k, v in item.items()})

    def delete(self, user_id: str) -> None:
        self.dynamodb.delete_item(TableName=self.table, Key={"user_id": {"S": user_id}})

    def touch(self, *addresses: str) -> list[dict[str, Any]]:
        """`ownpage-sync touch` puts the events; EventBridge's rule forwards them; they come back here."""
        assert main(["touch", *addresses]) == 0
        events: list[dict[str, Any]] = []
        while len(events) < len(addresses):
            messages = self.sqs.receive_message(QueueUrl=self.tap_url, MaxNumberOfMessages=10).get("Messages", [])
            assert messages, "EventBridge delivered fewer events than were put"
            events += [json.loads(m["Body"]) for m in messages]
            for message in messages:
                self.sqs.delete_message(QueueUrl=self.tap_url, ReceiptHandle=message["ReceiptHandle"])
        return events

    # -- the functions --------------------------------------------------------------------------------
    def deliver(self, records: list[dict[str, Any]], context: Any) -> dict[str, Any]:
        """One invocation of the ChangeFunction on these stream records, as the mapping would make it."""
        response: dict[str, Any] = self.change.handler(stream_event(records, self.stream.stream_arn, REGION), context)
        return response

    def flush(self, context: Any) -> dict[str, Any]:
        """Every record since the last read, in one invocation."""
        return self.deliver(self.stream.read(), context)

    def retry(self, context: Any) -> None:
        """The retry function on every message waiting on the RetryQueue (and the poller's deletes)."""
        handler = load_handler("retry").handler
        while messages := self.sqs.receive_message(
            QueueUrl=self.retry_url, MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
        ).get("Messages", []):
            response = handler(sqs_event(messages, queue_arn(self.retry_url, REGION), REGION), context)
            assert failed_ids(response) == set()
            for message in messages:
                self.sqs.delete_message(QueueUrl=self.retry_url, ReceiptHandle=message["ReceiptHandle"])

    def scheduled_run(self, context: Any, dry_run: bool = False) -> dict[str, Any]:
        report: dict[str, Any] = load_handler("sync").handler({"dry_run": dry_run}, context)
        return report

    # -- what Ownpage holds -----------------------------------------------------------------------------
    def rows(self) -> dict[str, dict[str, Any]]:
        return {row["email"]: row for row in self.emulator.state.subscribers(LIST_ID)}

    def subscribed(self) -> set[str]:
        return {email for email, row in self.rows().items() if row["subscribed"]}


def _attribute(value: Any) -> dict[str, Any]:
    return {"BOOL": value} if isinstance(value, bool) else {"S": str(value)}


@pytest.fixture
def lane(aws: str, unique: str, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lane]:
    """The source table with its stream, the RetryQueue, a rule on moto's default bus forwarding
    SubscriberChanged events to a queue, Ownpage seeded in step, and the functions' environment."""
    dynamodb, sqs, events = boto3.client("dynamodb"), boto3.client("sqs"), boto3.client("events")
    table = f"lane-{unique}"
    stream_arn = create_source_table(dynamodb, table, stream=True)
    assert stream_arn is not None
    for item in SOURCE:
        dynamodb.put_item(TableName=table, Item={k: _attribute(v) for k, v in item.items()})
    reader = StreamReader(boto3.client("dynamodbstreams"), stream_arn)
    reader.read()  # the seeding is history: the mapping starts at LATEST
    retry_url, _ = create_queues(sqs, f"lane-{unique}")
    tap_url = sqs.create_queue(QueueName=f"lane-{unique}-events")["QueueUrl"]
    tap_arn = sqs.get_queue_attributes(QueueUrl=tap_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    rule = f"lane-{unique}"
    events.put_rule(Name=rule, EventPattern=json.dumps({"source": [unique], "detail-type": ["SubscriberChanged"]}))
    events.put_targets(Rule=rule, Targets=[{"Id": "tap", "Arn": tap_arn}])
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
        "SOURCE_EMAIL_INDEX": EMAIL_INDEX,
        "SOURCE_EMAIL_CANONICAL": "true",
        "SOURCE_SUBSCRIBED_ATTRIBUTE": "newsletter",
        "SOURCE_GUID_ATTRIBUTE": "user_id",
        "SOURCE_CONSENT_ATTRIBUTE": "consented_at",
        "SOURCE_DATA_ATTRIBUTES": "firstname=first_name,city=city",
        "RETRY_QUEUE_URL": retry_url,
        "DEADLINE_MARGIN_SECONDS": "0",
        "CHANGE_EVENT_SOURCE": unique,
        # The scheduled run on a four-reader list: any change is a large share of it.
        "MAX_UNSUBSCRIBE_RATIO": "1",
        "MAX_RESUBSCRIBE_RATIO": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Loaded after the environment is set, fresh for each test: its adapters are cached per "container".
    yield Lane(dynamodb, sqs, table, reader, retry_url, tap_url, emulator, load_handler("change"), monkeypatch)


# -- the bar --------------------------------------------------------------------------------------------


def test_a_reader_switched_off_in_the_source_is_unsubscribed_with_no_scheduled_run(
    lane: Lane, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given Anne switching the newsletter off, and Bruno's account deleted
    lane.update("u-1", newsletter=False)
    lane.delete("u-2")
    # When the stream's records reach the fast lane (and no scheduled run happens)
    with captured_logs() as lines:
        response = lane.flush(lambda_context)
    # Then Anne is unsubscribed by the publisher, never deleted, and no record is delivered again: the
    # index named her item and the table's item says she is off
    assert response == {"batchItemFailures": []}
    rows = lane.rows()
    assert (rows["anne@example.com"]["subscribed"], rows["anne@example.com"]["unsubscribed_cause"]) == (
        False,
        "PUBLISHER",
    )
    assert rows["anne@example.com"]["guid"] == "u-1"  # the row and its history are still there
    assert lane.emulator.state.violations == []
    # ... while Bruno's unsubscribe waits for the scheduled run: the index names no item for him, and an
    # index (eventually consistent) cannot prove he did not sign up again a moment ago
    assert rows["bruno@example.com"]["subscribed"] is True
    # ... counted, with how long the changes took to reach Ownpage, and without an address in any line
    printed = capsys.readouterr().out
    assert metric_values(printed, "FastLaneUnsubscribed") == [1.0]
    assert metric_values(printed, "FastLaneUndecided") == [1.0]
    (age,) = metric_values(printed, "FastLaneStreamRecordAge")
    assert 0 <= age < 60
    (report,) = [json.loads(line)["report"] for line in lines if '"fast lane report"' in line]
    assert report["applied"] == {"unsubscribe": 1} and report["via"] == "stream"
    assert_no_leak("\n".join(lines) + printed, ADDRESSES)
    # When the scheduled run comes, it unsubscribes Bruno too
    lane.scheduled_run(lambda_context)
    assert lane.rows()["bruno@example.com"]["unsubscribed_cause"] == "PUBLISHER"


def test_a_reader_switched_on_is_subscribed_by_a_stream_record_or_a_change_event(
    lane: Lane, lambda_context: Any
) -> None:
    # Given Anne switched off by an earlier change, now switching back on, and Bruno moving to another city
    lane.update("u-1", newsletter=False)
    lane.flush(lambda_context)
    lane.update("u-1", newsletter=True)
    lane.update("u-2", city="Bordeaux")
    # When their stream records reach the fast lane
    with captured_logs() as lines:
        assert lane.flush(lambda_context) == {"batchItemFailures": []}
    # Then Bruno's city follows, while Anne's re-subscribe waits for the scheduled run: with no complete
    # read on record (no run table here), a suppressed twin of her row under another spelling, which
    # Ownpage's search would miss, cannot be ruled out
    rows = lane.rows()
    assert (rows["bruno@example.com"]["subscribed"], rows["bruno@example.com"]["data_city"]) == (True, "Bordeaux")
    assert rows["anne@example.com"]["subscribed"] is False
    (report,) = [json.loads(line)["report"] for line in lines if '"fast lane report"' in line]
    assert report["left_to_scheduled_run"] == {"resubscribe": 1}
    # When the scheduled run comes, Anne's own row is subscribed again (its read showed it unsubscribed
    # by the publisher), with the source's data
    lane.scheduled_run(lambda_context)
    rows = lane.rows()
    assert (rows["anne@example.com"]["subscribed"], rows["anne@example.com"]["data_city"]) == (True, "Paris")
    assert [cause for _, cause in lane.emulator.state.resubscriptions] == ["PUBLISHER"]

    # Given readers Ownpage has never seen: Dmitri opting in, Farid signing up
    lane.update("u-4", newsletter=True)
    lane.put(user_id="u-6", email="farid@example.com", newsletter=True, first_name="Farid", city="Genève")
    # When the fast lane handles them with no complete read on record (no run table here)
    assert lane.flush(lambda_context) == {"batchItemFailures": []}
    # Then they wait for the scheduled run: only its full read proves they are not on Ownpage already
    assert not {"dmitri@example.com", "farid@example.com"} & set(lane.rows())
    assert lane.scheduled_run(lambda_context, dry_run=True)["counts"]["to_subscribe"] == 2

    # Given an operator who knows Ownpage's search finds every spelling (so does this emulator), and a
    # source whose application sends change events rather than a stream
    lane.monkeypatch.setenv("FAST_LANE_NEW_ADDRESSES", "subscribe")
    lane.change = load_handler("change")
    lane.put(user_id="u-7", email="gaelle@example.com", newsletter=True, first_name="Gaëlle", city="Lyon")
    lane.stream.read()  # not through the stream this time
    # When the application says so with `ownpage-sync touch` and EventBridge delivers the event
    (event,) = lane.touch("Gaelle@Example.com")
    assert (event["detail-type"], event["detail"]) == ("SubscriberChanged", {"email": "Gaelle@Example.com"})
    report = lane.change.handler(event, lambda_context)
    # Then the address is read again in the source and subscribed with its data
    assert report["applied"] == {"subscribe": 1} and report["via"] == "event"
    assert (lane.rows()["gaelle@example.com"]["subscribed"], lane.rows()["gaelle@example.com"]["guid"]) == (True, "u-7")


def test_the_fast_lane_never_resubscribes_a_suppressed_address(lane: Lane, lambda_context: Any) -> None:
    # Given Chloé suppressed on Ownpage (she unsubscribed there), still listed by the source
    lane.monkeypatch.setenv("FAST_LANE_NEW_ADDRESSES", "subscribe")  # even so
    lane.change = load_handler("change")
    # ... her record changing, and an event naming her in another spelling
    lane.update("u-3", city="Québec")
    (event,) = lane.touch("CHLOE@example.com")
    # When the fast lane handles both
    assert lane.flush(lambda_context) == {"batchItemFailures": []}
    report = lane.change.handler(event, lambda_context)
    # Then she stays unsubscribed for her reason, and the report says why nothing was written
    chloe = lane.rows()["chloe@example.com"]
    assert (chloe["subscribed"], chloe["unsubscribed_cause"], chloe["data_city"]) == (False, "READER", "Nantes")
    assert lane.emulator.state.resubscriptions == []
    assert (report["suppressed"], report["applied"]) == (1, {})

    # When she opts in again on the publisher's site (a consent newer than her unsubscribe)
    lane.update("u-3", consented_at=datetime.now(UTC).isoformat())
    lane.flush(lambda_context)
    # Then the same rule as a full run's re-subscribes her: a newer consent lifts the suppression
    assert lane.rows()["chloe@example.com"]["subscribed"] is True
    assert [cause for _, cause in lane.emulator.state.resubscriptions] == ["READER"]


def test_on_an_ownpage_matching_spellings_exactly_a_suppressed_reader_gets_no_second_row(
    lane: Lane, lambda_context: Any
) -> None:
    # Given an Ownpage that keeps and matches spellings exactly (and whose search ignores `exact`),
    # holding Chloé, suppressed, as `Chloe@Example.com`, and another reader whose address contains hers
    lane.emulator.set_faults(matching="exact", ignore_exact=True)
    lane.emulator.state.reset()
    lane.emulator.state.seed(LIST_ID, [*OWNPAGE[:2], {**OWNPAGE[2], "email": "Chloe@Example.com"}])
    lane.emulator.state.seed(LIST_ID, [{"email": "chloe@example.com.au", "subscribed": True}])
    # ... and her record changing in the source, which spells her `chloe@example.com`
    lane.update("u-3", city="Québec")
    # When the fast lane handles it as deployed by default
    with captured_logs() as lines:
        assert lane.flush(lambda_context) == {"batchItemFailures": []}
    # Then no row is created beside hers (it would be subscribed, and mailed): the search cannot show
    # her, so the subscribe waits for the scheduled run, whose full read does
    assert lane.emulator.state.twins == [] and lane.emulator.state.resubscriptions == []
    assert "chloe@example.com" not in lane.rows()
    (report,) = [json.loads(line)["report"] for line in lines if '"fast lane report"' in line]
    assert report["left_to_scheduled_run"] == {"new_address": 1} and report["applied"] == {}
    assert lane.rows()["chloe@example.com.au"]["subscribed"] is True  # a substring match, not hers
    # When the scheduled run comes
    run = lane.scheduled_run(lambda_context)
    # Then it sees her row, and keeps her suppressed
    assert run["counts"]["to_subscribe"] == 0 and run["counts"]["suppressed"] == 1
    chloe = lane.emulator.state.subscriber(LIST_ID, "Chloe@Example.com")
    assert (chloe["subscribed"], chloe["unsubscribed_cause"]) == (False, "READER")
    assert lane.emulator.state.twins == []


def test_a_new_address_is_subscribed_at_once_when_the_last_complete_read_proves_it_new(
    lane: Lane, lambda_context: Any, unique: str
) -> None:
    # Given an Ownpage that keeps and matches spellings exactly (its search ignoring `exact`), holding
    # Chloé, suppressed, as `Chloe@Example.com`; the stack's run table; and a scheduled run that read
    # the whole list (and kept which addresses it saw under another spelling)
    lane.emulator.set_faults(matching="exact", ignore_exact=True)
    lane.emulator.state.reset()
    lane.emulator.state.seed(LIST_ID, [*OWNPAGE[:2], {**OWNPAGE[2], "email": "Chloe@Example.com"}])
    create_run_table(lane.dynamodb, f"runs-{unique}")
    lane.monkeypatch.setenv("RUN_TABLE", f"runs-{unique}")
    lane.change = load_handler("change")
    assert lane.scheduled_run(lambda_context)["read"]["complete"] is True
    lane.stream.read()

    # When Farid signs up and Chloé's record changes (the source spells her `chloe@example.com`), and
    # the fast lane handles both as deployed by default (FAST_LANE_NEW_ADDRESSES=proven)
    lane.put(user_id="u-6", email="farid@example.com", newsletter=True, first_name="Farid", city="Genève")
    lane.update("u-3", city="Québec")
    with captured_logs() as lines:
        assert lane.flush(lambda_context) == {"batchItemFailures": []}

    # Then Farid is subscribed at once, the read having seen no other spelling of his address; Chloé's
    # subscribe waits (the read saw her under another spelling, which the search cannot find): no twin
    (report,) = [json.loads(line)["report"] for line in lines if '"fast lane report"' in line]
    assert report["applied"] == {"subscribe": 1} and report["left_to_scheduled_run"] == {"new_address": 1}
    assert lane.rows()["farid@example.com"]["subscribed"] is True
    assert "chloe@example.com" not in lane.rows() and lane.emulator.state.twins == []

    # When Anne switches the newsletter off, and on again
    lane.update("u-1", newsletter=False)
    lane.flush(lambda_context)
    assert lane.rows()["anne@example.com"]["unsubscribed_cause"] == "PUBLISHER"
    lane.update("u-1", newsletter=True)
    lane.flush(lambda_context)
    # Then she is re-subscribed at once: the same read saw no other spelling of her address
    assert lane.rows()["anne@example.com"]["subscribed"] is True
    assert [cause for _, cause in lane.emulator.state.resubscriptions] == ["PUBLISHER"]

    # Given that proof older than the fast lane may use (FAST_LANE_PROOF_MAX_AGE), and Hugo signing up
    lane.monkeypatch.setenv("FAST_LANE_PROOF_MAX_AGE", "60")
    lane.change = load_handler("change")
    table = DynamoDbRunLedger(f"runs-{unique}")
    kept = table.spellings()
    assert kept is not None
    table.put_spellings(replace(kept, read_at=kept.read_at - timedelta(hours=2)))
    lane.put(user_id="u-8", email="hugo@example.com", newsletter=True, first_name="Hugo", city="Metz")
    # When the fast lane handles him
    lane.flush(lambda_context)
    # Then he waits for the scheduled run, which subscribes him (the list doubling is this test's doing:
    # no growth guard for it); nothing is left over
    assert "hugo@example.com" not in lane.rows()
    lane.monkeypatch.setenv("MAX_SOURCE_GROWTH_RATIO", "10")
    assert lane.scheduled_run(lambda_context)["outcome"] == "converged"
    assert lane.rows()["hugo@example.com"]["subscribed"] is True
    assert lane.scheduled_run(lambda_context, dry_run=True)["counts"]["to_subscribe"] == 0
    chloe = lane.emulator.state.subscriber(LIST_ID, "Chloe@Example.com")
    assert (chloe["subscribed"], chloe["unsubscribed_cause"]) == (False, "READER")
    assert lane.emulator.state.twins == []


@pytest.mark.parametrize("outage", ["writes", "everything"])
def test_with_ownpage_failing_the_change_waits_on_the_retry_queue_and_lands_when_it_heals(
    lane: Lane, lambda_context: Any, outage: str
) -> None:
    # Given Ownpage refusing writes (or every call), while Anne switches off and Bruno moves
    lane.emulator.set_faults(**({"fail_writes": True} if outage == "writes" else {"error_rate": 1.0}))
    lane.update("u-1", newsletter=False)
    lane.update("u-2", city="Rennes")
    # When the fast lane handles the records
    with captured_logs() as lines:
        response = lane.flush(lambda_context)
    # Then nothing is lost: the records are done, the changes wait on the RetryQueue, marked as the
    # fast lane's, with the reason
    assert response == {"batchItemFailures": []}
    messages = lane.sqs.receive_message(QueueUrl=lane.retry_url, MaxNumberOfMessages=10, VisibilityTimeout=0)[
        "Messages"
    ]
    bodies = [json.loads(m["Body"]) for m in messages]
    assert bodies and all("-fast-" in body["run_id"] for body in bodies)
    assert {body["last_error"]["kind"] for body in bodies} == {"unavailable"}
    queued = {(op["action"], op["email"]) for body in bodies for op in body["operations"]}
    assert queued == {("unsubscribe", "anne@example.com"), ("update", "bruno@example.com")}
    assert lane.subscribed() == {"anne@example.com", "bruno@example.com"}
    assert lane.rows()["bruno@example.com"]["data_city"] == "Lyon"
    assert_no_leak("\n".join(lines), ADDRESSES)

    # When Ownpage heals and the retry function drains the queue
    lane.emulator.set_faults(fail_writes=False, error_rate=0.0)
    lane.retry(lambda_context)
    # Then the changes are in Ownpage, as the source says now
    rows = lane.rows()
    assert (rows["anne@example.com"]["subscribed"], rows["anne@example.com"]["unsubscribed_cause"]) == (
        False,
        "PUBLISHER",
    )
    assert (rows["bruno@example.com"]["subscribed"], rows["bruno@example.com"]["data_city"]) == (True, "Rennes")
    assert lane.emulator.state.violations == []


def test_duplicated_and_out_of_order_records_end_in_the_sources_current_state(lane: Lane, lambda_context: Any) -> None:
    # Given Anne switching off, on, off and on again with a new city, and Bruno on, then off
    lane.update("u-1", newsletter=False)
    lane.update("u-1", newsletter=True)
    lane.update("u-1", newsletter=False)
    lane.update("u-1", newsletter=True, city="Marseille")
    lane.update("u-2", city="Lyon 2e")
    lane.update("u-2", newsletter=False)
    records = lane.stream.read()
    assert len(records) == 6
    # When the records arrive in reverse order, each twice, one invocation each, oldest last
    shuffled = [record for record in reversed(records) for _ in range(2)]
    for record in shuffled:
        assert lane.deliver([record], lambda_context) == {"batchItemFailures": []}
    # ... and once more all together, shuffled
    random.Random(7).shuffle(shuffled)
    assert lane.deliver(shuffled, lambda_context) == {"batchItemFailures": []}
    # Then Ownpage shows the source as it is now, whatever the order the hints came in
    rows = lane.rows()
    assert (rows["anne@example.com"]["subscribed"], rows["anne@example.com"]["data_city"]) == (True, "Marseille")
    assert (rows["bruno@example.com"]["subscribed"], rows["bruno@example.com"]["unsubscribed_cause"]) == (
        False,
        "PUBLISHER",
    )
    assert lane.emulator.state.violations == [] and lane.emulator.state.twins == []


@pytest.mark.parametrize("new_addresses", ["subscribe", "hold"])
def test_the_scheduled_run_after_a_burst_of_fast_lane_changes_plans_nothing(
    lane: Lane, lambda_context: Any, new_addresses: str, capsys: pytest.CaptureFixture[str]
) -> None:
    lane.monkeypatch.setenv("FAST_LANE_NEW_ADDRESSES", new_addresses)
    lane.change = load_handler("change")
    # Given a burst of every kind of change, through the stream in small batches and through events
    lane.update("u-1", newsletter=False)  # off
    lane.update("u-2", city="Rennes", first_name="Bruno-Luc")  # data
    lane.update("u-3", city="Québec")  # suppressed: nothing to write
    lane.update("u-4", newsletter=True)  # on, new to Ownpage
    lane.put(user_id="u-6", email="farid@example.com", newsletter=True, first_name="Farid", city="Genève")  # new
    lane.update("u-6", email="farid.b@example.com")  # moved to another address: the old one goes
    lane.update("u-1", newsletter=True)  # back on
    lane.update("u-1", newsletter=False)  # and off again
    records = lane.stream.read()
    for start in range(0, len(records), 3):
        assert lane.deliver(records[start : start + 3], lambda_context) == {"batchItemFailures": []}
    lane.put(user_id="u-8", email="hugo@example.com", newsletter=True, first_name="Hugo", city="Lille")
    (event,) = lane.touch("hugo@example.com")
    lane.change.handler(event, lambda_context)
    held = sum(metric_values(capsys.readouterr().out, "FastLaneHeld"))
    # When the scheduled run plans (a dry run: it would write exactly what it plans)
    counts = lane.scheduled_run(lambda_context, dry_run=True)["counts"]
    # Then it finds nothing left to do but what the fast lane said it held for it
    assert (counts["to_unsubscribe"], counts["to_update"], counts["suppressed"]) == (0, 0, 1), counts
    if new_addresses == "subscribe":
        assert held == 0 and counts["to_subscribe"] == 0
        assert lane.subscribed() == {
            "bruno@example.com",
            "dmitri@example.com",
            "farid.b@example.com",
            "hugo@example.com",
        }
    else:
        # Dmitri, Farid's new address (his first one was gone from the source when it was read), Hugo
        assert held == 3 and counts["to_subscribe"] == 3
        assert lane.subscribed() == {"bruno@example.com"}


# -- what the fast lane leaves to others ------------------------------------------------------------------


def test_an_invocation_over_the_cap_writes_nothing_and_the_scheduled_run_makes_the_changes(
    lane: Lane, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a cap of two writes, and three readers switching off at once
    lane.monkeypatch.setenv("FAST_LANE_MAX_WRITES", "2")
    lane.change = load_handler("change")
    lane.put(user_id="u-6", email="farid@example.com", newsletter=True, first_name="Farid", city="Genève")
    lane.scheduled_run(lambda_context)
    for user_id in ("u-1", "u-2", "u-6"):
        lane.update(user_id, newsletter=False)
    # When the batch reaches the fast lane
    with captured_logs() as lines:
        response = lane.flush(lambda_context)
    # Then nothing is written, nothing is failed, and it says so: logged, counted (the stack alarms on it)
    assert response == {"batchItemFailures": []}
    assert lane.subscribed() == {"anne@example.com", "bruno@example.com", "farid@example.com"}
    assert any('"fast lane cap reached: nothing written' in line for line in lines)
    assert metric_values(capsys.readouterr().out, "FastLaneCapped") == [3.0]
    assert_no_leak("\n".join(lines), ADDRESSES)
    # When the scheduled run comes
    report = lane.scheduled_run(lambda_context)
    # Then it makes them, under its own guards
    assert report["outcome"] == "converged" and report["counts"]["unsubscribed"] == 3
    assert lane.subscribed() == set()


def test_a_trickle_past_the_hourly_budget_is_left_to_the_scheduled_run(
    lane: Lane, lambda_context: Any, unique: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the stack's run table, a budget of two writes an hour, and readers switching off one
    # batch at a time, each batch under the per-invocation cap
    create_run_table(lane.dynamodb, f"runs-{unique}")
    lane.monkeypatch.setenv("RUN_TABLE", f"runs-{unique}")
    lane.monkeypatch.setenv("FAST_LANE_MAX_WRITES_PER_HOUR", "2")
    lane.change = load_handler("change")
    lane.put(user_id="u-6", email="farid@example.com", newsletter=True, first_name="Farid", city="Genève")
    lane.scheduled_run(lambda_context)
    lane.stream.read()
    capsys.readouterr()
    # When three batches of one change each reach the fast lane
    with captured_logs() as lines:
        for user_id in ("u-1", "u-2", "u-6"):
            lane.update(user_id, newsletter=False)
            assert lane.flush(lambda_context) == {"batchItemFailures": []}
    # Then the first two are written and the third, past the budget, is not: logged and counted
    assert lane.subscribed() == {"farid@example.com"}
    assert any('"fast lane hourly budget reached: nothing written' in line for line in lines)
    assert metric_values(capsys.readouterr().out, "FastLaneCapped") == [0.0, 0.0, 1.0]
    assert_no_leak("\n".join(lines), ADDRESSES)
    # When the scheduled run comes (every reader of this tiny list left the source: no drop guard for
    # that, the test's doing), it makes it
    lane.monkeypatch.setenv("MAX_SOURCE_DROP_RATIO", "1")
    report = lane.scheduled_run(lambda_context)
    assert (report["outcome"], report["counts"]["unsubscribed"]) == ("converged", 1)
    assert lane.subscribed() == set()


def test_an_unsubscribe_the_look_up_cannot_prove_is_left_to_the_scheduled_run(
    lane: Lane, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a table whose index is not vouched canonical: "not found" proves nothing there
    lane.monkeypatch.setenv("SOURCE_EMAIL_CANONICAL", "false")
    lane.change = load_handler("change")
    lane.update("u-1", newsletter=False)
    lane.update("u-2", city="Rennes")
    # When the records reach the fast lane
    assert lane.flush(lambda_context) == {"batchItemFailures": []}
    # Then the update is made, the unsubscribe waits for the scheduled run (counted), which makes it
    assert lane.rows()["bruno@example.com"]["data_city"] == "Rennes"
    assert lane.subscribed() == {"anne@example.com", "bruno@example.com"}
    assert metric_values(capsys.readouterr().out, "FastLaneUndecided") == [1.0]
    lane.scheduled_run(lambda_context)
    assert lane.subscribed() == {"bruno@example.com"}


def test_a_change_nothing_could_hold_is_delivered_again(lane: Lane, lambda_context: Any) -> None:
    # Given Ownpage refusing writes and a RetryQueue that is gone
    lane.monkeypatch.setenv("RETRY_QUEUE_URL", lane.retry_url.rsplit("/", 1)[0] + "/no-such-queue")
    lane.change = load_handler("change")
    lane.emulator.set_faults(fail_writes=True)
    lane.update("u-2", city="Rennes")
    lane.update("u-1", newsletter=False)
    records = lane.stream.read()
    # When the records reach the fast lane
    response = lane.deliver(records, lambda_context)
    # Then Lambda is told which records failed (it retries from the first, then parks them)
    assert {item["itemIdentifier"] for item in response["batchItemFailures"]} == {
        record["dynamodb"]["SequenceNumber"] for record in records
    }
    # ... and a change event raises, so Lambda retries it and then parks it with its error
    (event,) = lane.touch("anne@example.com")
    with pytest.raises(ChangeNotApplied) as raised:
        lane.change.handler(event, lambda_context)
    assert "no-such-queue" in str(raised.value) and "@" not in str(raised.value)


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_records_naming_no_address_are_reported_and_a_malformed_event_fails(
    lane: Lane, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given an item without any address (a stream of keys only would look the same)
    lane.put(user_id="u-9", newsletter=True, first_name="Nobody")
    # When its record reaches the fast lane, it is counted, not failed (it would block its shard)
    assert lane.flush(lambda_context) == {"batchItemFailures": []}
    assert metric_values(capsys.readouterr().out, "FastLaneUnusableRecords") == [1.0]
    # And an event without an address is an error (Lambda retries it, then parks it for on-call)
    with pytest.raises(Exception, match=r"detail\.email must be a non-empty string"):
        lane.change.handler({"detail-type": "SubscriberChanged", "id": "e-1", "detail": {}}, lambda_context)


def test_touch_local_runs_the_change_function_here(
    lane: Lane, lambda_context: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given Anne switching off (and nothing delivering the stream)
    lane.update("u-1", newsletter=False)
    # When an operator runs the ChangeFunction's code on her address from a terminal
    code = main(["touch", "--local", "anne@example.com"])
    printed = capsys.readouterr()
    # Then it is unsubscribed, and the terminal says so without the address
    assert code == 0, printed.err
    assert printed.out.strip() == "a***@e***.com: unsubscribe 1"
    assert lane.rows()["anne@example.com"]["subscribed"] is False
    assert_no_leak(printed.out + printed.err, ADDRESSES)


def test_touch_says_in_one_line_when_the_bus_is_not_there(lane: Lane, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a bus name that is wrong
    lane.monkeypatch.setenv("CHANGE_EVENT_BUS", "no-such-bus")
    # When an event is put on it, or an address is empty
    missing = main(["touch", "anne@example.com"])
    empty = main(["touch", " "])
    # Then each is one line naming what is wrong (a name: configuration), without the address
    assert (missing, empty) == (2, 2)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("ownpage-sync: error: AWS refused PutEvents: ResourceNotFoundException")
    assert lines[1] == "ownpage-sync: error: an ADDRESS must be a non-empty string of at most 320 characters"
    assert_no_leak("\n".join(lines), ADDRESSES)
