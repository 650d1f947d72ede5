"""The fault matrix's stack and its one invariant (docs/reliability.md).

A stack is the real SyncFunction and RetryFunction handlers (functions/*/app.py, in-process: Lambda
cannot run here) against a DynamoDB source table, a run table and an SQS RetryQueue with its
dead-letter queue on the moto server, and Ownpage played by the emulator, all over HTTP.

The invariant, after any fault: **Ownpage equals the source, or every planned operation not applied
is on the retry queue (or the dead-letter queue) or reported as left to the next run: exactly, none
lost, none doubled.** It is checked on sets of (action, canonical key) taken from three independent
places: what Ownpage holds (a dry run against the emulator's state, faults off, plans exactly what
is still missing), what the queues hold (read over HTTP from moto), and what the run report says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import boto3
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from ownpage_sync import wiring
from ownpage_sync.deadline import Deadline
from ownpage_sync.emails import canonical_key
from ownpage_sync.errors import InvalidRetryMessage, RunFailed
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.settings import Settings
from ownpage_sync.sync import RunRequest, run_sync
from ownpage_sync_tools.emulator import Faults
from ownpage_sync_tools.localstack import create_queues, create_run_table
from ownpage_sync_tools.sqs_events import failed_ids, queue_arn, sqs_event

from tests.conftest import REGION, FakeLambdaContext, load_handler
from tests.integration.helpers import assert_no_leak, captured_logs

LIST_ID = 1
LONG_AGO = "2024-01-01T00:00:00Z"
Op = tuple[str, str]  # (action, canonical key)


@dataclass
class Population:
    """A source and an Ownpage list that drifted apart in every way the planner knows, small enough
    to run in a second and large enough for several batches."""

    source: list[dict[str, str]] = field(default_factory=list)  # DynamoDB items
    ownpage: list[dict[str, Any]] = field(default_factory=list)  # emulator seed rows
    expected: set[Op] = field(default_factory=set)  # what the first plan must be
    suppressed: set[str] = field(default_factory=set)  # READER-unsubscribed keys the source still lists

    @property
    def addresses(self) -> set[str]:
        return {item["email"] for item in self.source} | {row["email"] for row in self.ownpage}


def population(
    *, in_step: int = 6, new: int = 14, changed: int = 5, publisher: int = 3, reader: int = 2, gone: int = 6
) -> Population:
    people = Population()
    number = 0

    def person(kind: str) -> dict[str, str]:
        nonlocal number
        number += 1
        return {
            "email": f"{kind}.{number:04d}@example.org",
            "user_id": f"u-{number:04d}",
            "first_name": "Zoë" if number % 3 == 0 else "Anne",
            "city": "Genève" if number % 2 == 0 else "Lyon",
        }

    def row(item: dict[str, str], **changes: Any) -> dict[str, Any]:
        seeded = {
            "email": item["email"],
            "guid": item["user_id"],
            "subscribed": True,
            "data_firstname": item["first_name"],
            "data_city": item["city"],
            "send_count": 7,
        }
        return {**seeded, **changes}

    for _ in range(in_step):
        item = person("steady")
        people.source.append(item)
        people.ownpage.append(row(item))
    for _ in range(new):
        item = person("new")
        people.source.append(item)
        people.expected.add(("subscribe", item["email"]))
    for _ in range(changed):
        item = person("moved")
        people.source.append(item)
        people.ownpage.append(row(item, data_city="Somewhere else"))
        people.expected.add(("update", item["email"]))
    for _ in range(publisher):
        item = person("back")
        people.source.append(item)
        people.ownpage.append(row(item, subscribed=False, unsubscribed_cause="PUBLISHER", unsubscribed_at=LONG_AGO))
        people.expected.add(("resubscribe", item["email"]))
    for _ in range(reader):
        item = person("said-no")
        people.source.append(item)
        people.ownpage.append(row(item, subscribed=False, unsubscribed_cause="READER", unsubscribed_at=LONG_AGO))
        people.suppressed.add(item["email"])
    for _ in range(gone):
        item = person("gone")
        people.ownpage.append(row(item))
        people.expected.add(("unsubscribe", item["email"]))
    return people


def ops_of(operations: Iterable[Any]) -> list[Op]:
    return [(op.action.value, canonical_key(op.email)) for op in operations]


@dataclass
class Ledger:
    """Where the planned operations ended up after one faulty run."""

    planned: set[Op]
    missing: set[Op]  # not in Ownpage now (what a dry run plans)
    queued: list[Op]  # on the RetryQueue and the dead-letter queue, one entry per queued operation
    report: dict[str, Any]

    @property
    def left(self) -> set[Op]:
        """Missing and on no queue: must be exactly what the report says it left."""
        return self.missing - set(self.queued)


class FaultStack:
    def __init__(self, emulator: Any, monkeypatch: Any, people: Population, names: dict[str, str]):
        self.emulator = emulator
        self.monkeypatch = monkeypatch
        self.people = people
        self.sqs = boto3.client("sqs")
        self.dynamodb = boto3.client("dynamodb")
        self.retry_url, self.dlq_url = names["retry_url"], names["dlq_url"]
        self.table, self.run_table = names["table"], names["run_table"]
        self.sync_handler: ModuleType = load_handler("sync")
        self.retry_handler: ModuleType = load_handler("retry")
        self.logs: list[str] = []
        self.healthy = Faults()  # Ownpage once the fault is over (a test may keep permanent refusals)

    # -- running -------------------------------------------------------------------------------------

    def env(self, **values: str) -> None:
        for name, value in values.items():
            self.monkeypatch.setenv(name, value)

    def faults(self, **fields: Any) -> None:
        self.emulator.set_faults(Faults(**fields))

    def run(self, context: Any = None, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """One scheduled run through the real handler; its report, also when the run failed (the
        handler then raises, and the report is the one it logged). No raw address in any log line."""
        context = context or FakeLambdaContext()
        with captured_logs() as lines, suppress(RunFailed):  # a failed run raises after logging its report
            self.sync_handler.handler(event or {}, context)
        self.logs.extend(lines)
        assert_no_leak("\n".join(lines), self.people.addresses)
        reports = [json.loads(line)["report"] for line in lines if '"message":"sync report"' in line]
        assert len(reports) == 1, "one report per run"
        report: dict[str, Any] = reports[0]
        return report

    def plan_now(self) -> set[Op]:
        """What Ownpage lacks now: a dry run with every fault off (the emulator's faults are restored)."""
        faults = self.emulator.faults
        self.emulator.set_faults(Faults())
        # The test's own view of Ownpage: the local key, whatever secret the functions are given
        env = {name: value for name, value in os.environ.items() if name != "OWNPAGE_SECRET_ID"}
        env.update(OWNPAGE_CLIENT="demo", OWNPAGE_API_KEY="demo-key")
        try:
            settings = Settings.from_env(env)
            services = wiring.sync_services(settings, Deadline.unlimited())
            report = run_sync(settings, services, RunRequest(dry_run=True), Deadline.unlimited())
        finally:
            self.emulator.set_faults(faults)
        assert report.plan is not None, report.error
        operations = ops_of(report.plan.operations())
        assert len(operations) == len(set(operations))
        return set(operations)

    # -- the queues ------------------------------------------------------------------------------------

    def messages(self, url: str | None = None) -> list[dict[str, Any]]:
        """Every message on a queue, read over HTTP and made visible again at once (one receive each)."""
        url = url or self.retry_url
        found: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                VisibilityTimeout=300,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            if not batch:
                break
            found.extend(batch)
        for start in range(0, len(found), 10):
            self.sqs.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(found[start : start + 10])
                ],
            )
        return found

    def queued(self) -> list[Op]:
        """Every operation on the RetryQueue and the dead-letter queue, once per time it is there (a
        poison body holds none)."""
        found: list[Op] = []
        for body in (m["Body"] for url in (self.retry_url, self.dlq_url) for m in self.messages(url)):
            with suppress(InvalidRetryMessage):
                found.extend(ops_of(RetryMessage.from_json(body).operations))
        return found

    def deliver(self, messages: list[dict[str, Any]], context: Any = None) -> set[str]:
        """One RetryFunction invocation over these messages, as Lambda's poller does it: the failed
        ids are kept, the rest deleted; an invocation error (every record failed) deletes nothing."""
        event = sqs_event(messages, queue_arn(self.retry_url, REGION), REGION)
        with captured_logs() as lines:
            try:
                failed = failed_ids(self.retry_handler.handler(event, context or FakeLambdaContext()))
            except BatchProcessingError:
                failed = {m["MessageId"] for m in messages}
        self.logs.extend(lines)
        assert_no_leak("\n".join(lines), self.people.addresses)
        for message in messages:
            if message["MessageId"] not in failed:
                self.sqs.delete_message(QueueUrl=self.retry_url, ReceiptHandle=message["ReceiptHandle"])
        return failed

    def receive(self, visibility: int = 0) -> list[dict[str, Any]]:
        return self.sqs.receive_message(
            QueueUrl=self.retry_url,
            MaxNumberOfMessages=10,
            VisibilityTimeout=visibility,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])

    def drain(self, redeliveries: int = 0) -> None:
        """The RetryFunction empties the RetryQueue, Ownpage healthy. `redeliveries`: how many times a
        message may fail and come back (each time the retry path re-checks, so it makes progress)."""
        self.emulator.set_faults(self.healthy)
        failures = 0
        for _ in range(20):
            messages = self.receive(visibility=0 if redeliveries else 60)
            if not messages:
                assert self.count(self.dlq_url) == 0, "a message reached the dead-letter queue"
                return
            failures += len(self.deliver(messages))
            assert failures <= redeliveries, "a retry failed while Ownpage is healthy"
        raise AssertionError("the RetryQueue did not drain")

    def count(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(attributes["ApproximateNumberOfMessagesNotVisible"])

    # -- Ownpage ---------------------------------------------------------------------------------------

    def rows(self) -> dict[str, dict[str, Any]]:
        return {canonical_key(row["email"]): row for row in self.emulator.state.subscribers(LIST_ID)}

    def writes(self) -> list[Any]:
        """The upserts Ownpage received (answered, refused or dropped)."""
        return [r for r in self.emulator.state.requests if r.method == "POST" and r.path.endswith("/subscribers")]

    # -- the invariant ---------------------------------------------------------------------------------

    def ledger(self, planned: set[Op], report: dict[str, Any]) -> Ledger:
        return Ledger(planned, self.plan_now(), self.queued(), report)

    def assert_nothing_lost_or_doubled(
        self,
        planned: set[Op],
        report: dict[str, Any],
        *,
        applied_unanswered: bool = False,
        rejected: frozenset[Op] = frozenset(),
    ) -> Ledger:
        """The two-state invariant, exactly (module docstring). `applied_unanswered`: the fault lost
        answers to writes Ownpage applied, so a queued operation may already be in Ownpage (the retry
        path finds it already applied). `rejected`: operations Ownpage refuses for good (reported)."""
        ledger = self.ledger(planned, report)
        queued = set(ledger.queued)
        counts = report.get("counts", {})
        # Nothing undone or invented by the fault, nothing queued twice or that was never planned
        assert ledger.missing <= planned, sorted(ledger.missing - planned)
        assert len(ledger.queued) == len(queued), "an operation is on the queues twice"
        assert queued <= planned, sorted(queued - planned)
        # Every queued operation is still needed, unless Ownpage applied it and its answer was lost
        if not applied_unanswered:
            assert queued <= ledger.missing, sorted(queued - ledger.missing)
        assert rejected <= ledger.missing
        left = ledger.left - rejected
        if "apply" not in report:
            # The run stopped before its first write (a failure, a guard, another run's lease): it left
            # everything to the next run and said why
            assert report["outcome"] in ("failed", "run_in_progress", "guard_tripped"), report["outcome"]
            assert ledger.missing == planned and not queued
            assert report["outcome"] != "failed" or report.get("error"), report
            return ledger
        # The report counts exactly what the queues hold and what is missing from them
        assert counts["queued"] == len(ledger.queued), (counts["queued"], len(ledger.queued))
        assert len(left) == counts["deferred"] + counts["held"] + counts["failed"], (len(left), counts)
        assert counts["rejected"] == len(rejected)
        # Each planned operation in exactly one of the report's buckets, and the applied ones really are
        applied = counts["subscribed"] + counts["unsubscribed"] + counts["updated"]
        in_buckets = applied + counts["rejected"] + counts["queued"] + counts["deferred"] + counts["failed"]
        assert in_buckets + counts["held"] == len(planned), (in_buckets, counts["held"], len(planned))
        assert len(planned - ledger.missing) == applied + len(queued - ledger.missing)
        if report["outcome"] == "converged":
            assert ledger.missing == rejected and not queued
        else:
            assert report["outcome"] in ("not_converged", "failed"), report["outcome"]
            assert report["outcome"] == "failed" if counts["failed"] else report["outcome"] == "not_converged"
        self.assert_no_harm()
        return ledger

    def assert_no_harm(self) -> None:
        """No delete called, no reader re-subscribed against their will, no second row for one reader."""
        state = self.emulator.state
        assert state.violations == []
        assert {cause for _, cause in state.resubscriptions} <= {"PUBLISHER"}
        assert state.twins == []

    def assert_ownpage_equals_source(self, rejected: Iterable[str] = ()) -> None:
        """Subscribed on Ownpage = the source minus who said no; guid and data from the source; the rest
        unsubscribed by the publisher, never deleted (their history kept)."""
        rows = self.rows()
        listed = {item["email"]: item for item in self.people.source}
        wanted = set(listed) - self.people.suppressed - set(rejected)
        assert {key for key, row in rows.items() if row["subscribed"] is True} == wanted
        for key in wanted:
            item, row = listed[key], rows[key]
            assert (row["guid"], row["data_firstname"], row["data_city"]) == (
                item["user_id"],
                item["first_name"],
                item["city"],
            ), key
        for seeded in self.people.ownpage:
            row = rows[canonical_key(seeded["email"])]
            assert row["send_count"] == seeded["send_count"], "history must survive"
            if seeded["email"] in self.people.suppressed:
                assert row["unsubscribed_cause"] == "READER"
            elif seeded["email"] not in listed:
                assert row["subscribed"] is False and row["unsubscribed_cause"] == "PUBLISHER"
        self.assert_no_harm()

    def converge(self, rejected: frozenset[Op] = frozenset(), redeliveries: int = 0) -> dict[str, Any]:
        """After the fault: the RetryFunction drains the queue and the next scheduled run finds Ownpage
        equal to the source (only permanent refusals left), with nothing on any queue."""
        self.drain(redeliveries)
        report = self.run()
        assert report["outcome"] == "converged", report
        assert self.plan_now() == set(rejected)
        assert self.count(self.retry_url) == 0 and self.count(self.dlq_url) == 0
        self.assert_ownpage_equals_source(rejected={key for _, key in rejected})
        return report


def a_consenting_reader_with_an_odd_row(
    build: Callable[[Population], FaultStack], odd: dict[str, Any], consented_at: str
) -> tuple[FaultStack, str]:
    """The stack, with a reader who said no whose source row carries `consented_at` (read through
    SOURCE_CONSENT_ATTRIBUTE) and whose Ownpage row is overlaid with `odd`, seeded verbatim."""
    people = population()
    said_no = sorted(people.suppressed)[0]
    next(item for item in people.source if item["email"] == said_no)["consented_at"] = consented_at
    stack = build(people)
    stack.env(SOURCE_CONSENT_ATTRIBUTE="consented_at")
    row = next(row for row in people.ownpage if row["email"] == said_no)
    stack.emulator.state.seed(1, [{**row, **odd}], verbatim=True)
    return stack, said_no


@contextmanager
def sqs_hook(event: str, handler: Callable[..., Any]) -> Iterator[None]:
    """A botocore event handler on every client boto3's default session makes while it is active (the
    handlers build their own clients)."""
    session = boto3.DEFAULT_SESSION or boto3.Session()
    boto3.DEFAULT_SESSION = session
    session.events.register(event, handler)
    try:
        yield
    finally:
        session.events.unregister(event, handler)


def create_stack(people: Population, unique: str) -> dict[str, str]:
    """Queues, source table and run table on the moto server (AWS_ENDPOINT_URL already points at it)."""
    sqs, dynamodb = boto3.client("sqs"), boto3.client("dynamodb")
    retry_url, dlq_url = create_queues(sqs, f"faults-{unique}")
    table, run_table = f"faults-{unique}-subscribers", f"faults-{unique}-runs"
    dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "email", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "email", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with boto3.resource("dynamodb").Table(table).batch_writer() as writer:
        for item in people.source:
            writer.put_item(Item=item)
    create_run_table(dynamodb, run_table)
    return {"retry_url": retry_url, "dlq_url": dlq_url, "table": table, "run_table": run_table}


def environment(names: dict[str, str], emulator_url: str) -> dict[str, str]:
    """Both functions' settings: fast retries (a failing batch reaches the queue in milliseconds),
    small batches (several per run), guards opened (a small list makes every change a large share)."""
    return {
        "OWNPAGE_API_URL": emulator_url,
        "OWNPAGE_LIST_ID": str(LIST_ID),
        "OWNPAGE_CLIENT": "demo",
        "OWNPAGE_API_KEY": "demo-key",
        "OWNPAGE_BATCH_SIZE": "4",
        "OWNPAGE_PAGE_SIZE": "100",
        "OWNPAGE_MAX_ATTEMPTS": "2",
        "OWNPAGE_BACKOFF_BASE": "0.001",
        "OWNPAGE_BACKOFF_CAP": "0.005",
        "SOURCE_KIND": "dynamodb",
        "SOURCE_TABLE": names["table"],
        "SOURCE_EMAIL_CANONICAL": "true",
        "SOURCE_SCAN_SEGMENTS": "1",
        "SOURCE_GUID_ATTRIBUTE": "user_id",
        "SOURCE_DATA_ATTRIBUTES": "firstname=first_name,city=city",
        "RETRY_QUEUE_URL": names["retry_url"],
        "DEAD_LETTER_QUEUE_URL": names["dlq_url"],
        "RUN_TABLE": names["run_table"],
        "RETRY_MAX_RECEIVE_COUNT": "5",
        "DEADLINE_MARGIN_SECONDS": "0",
        "MAX_UNSUBSCRIBE_RATIO": "1",
        "MAX_RESUBSCRIBE_RATIO": "1",
        "MAX_RESUBSCRIBE_REMOVED_RATIO": "1",
        "MAX_SOURCE_DROP_RATIO": "1",
        "MAX_SOURCE_GROWTH_RATIO": "1000",
        "POWERTOOLS_LOG_LEVEL": "INFO",
    }
