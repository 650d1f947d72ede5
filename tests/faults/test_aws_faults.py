"""Fault matrix, AWS's side and the Lambda's: DynamoDB throttling, SQS refusing sends, Secrets Manager
unavailable or malformed, the deadline reached mid-apply, the process killed mid-run, two runs at
once. moto server plays what it can over HTTP; a botocore event hook (on the clients the handler
builds) or botocore's Stubber plays what it cannot, as each test says. Each test ends in the
two-state invariant of tests/faults/harness.py, then the next run converging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from ownpage_sync.errors import ConfigurationError
from ownpage_sync.retry_queue import SqsRetryQueue
from ownpage_sync.run_ledger import DynamoDbRunLedger
from ownpage_sync.secrets import SecretUnavailable
from ownpage_sync.sources.dynamodb import DynamoDBSource

from tests.conftest import ROOT, FakeLambdaContext
from tests.faults.harness import FaultStack, sqs_hook

pytestmark = pytest.mark.integration


@dataclass
class ScriptedContext(FakeLambdaContext):
    """Lambda's context whose remaining time is whatever `script` says at each look: the deadline
    arrives at a chosen point of the run (after so many writes, so many sends), not at a time."""

    script: Callable[[], float] = lambda: 900.0

    def get_remaining_time_in_millis(self) -> int:
        return int(self.script() * 1000)


def _throttled(**_: Any) -> AWSResponse:
    body = b'{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate exceeded"}'
    return AWSResponse("https://dynamodb", 400, {"Content-Type": "application/x-amz-json-1.0"}, _Raw(body))


class _Raw:
    def __init__(self, body: bytes):
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body

    def read(self, *_: Any) -> bytes:
        return self.body


# -- DynamoDB throttling --------------------------------------------------------------------------------


def test_dynamodb_throttling_the_scan_for_a_while_is_retried_and_the_run_converges(
    stack: FaultStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given DynamoDB throttling the first three Scan calls (botocore event hook answering before the
    # request is sent; botocore's own retries, backoff shortened to nothing, handle them)
    monkeypatch.setattr("botocore.retries.standard.ExponentialBackoff.delay_amount", lambda self, context: 0.0)
    throttles = [3]

    def throttle(**kwargs: Any) -> AWSResponse | None:
        if throttles[0] == 0:
            return None
        throttles[0] -= 1
        return _throttled()

    # When the scheduled run goes
    with sqs_hook("before-send.dynamodb.Scan", throttle):
        report = stack.run()
    # Then the throttling was absorbed: the scan completed and the run converged
    assert throttles == [0]
    assert report["outcome"] == "converged" and report["source"]["subscribers"] == len(stack.people.source)
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    stack.assert_ownpage_equals_source()


def test_dynamodb_throttling_the_scan_past_its_retries_fails_the_run_before_any_write(stack: FaultStack) -> None:
    # Given a source table whose Scan is throttled past every retry (botocore Stubber: the table's
    # description, then ProvisionedThroughputExceededException; moto cannot throttle)
    table = boto3.client("dynamodb").describe_table(TableName=stack.table)["Table"]
    stubbed = boto3.client("dynamodb")
    stubber = Stubber(stubbed)
    schema = {name: table[name] for name in ("TableName", "KeySchema", "AttributeDefinitions")}
    stubber.add_response("describe_table", {"Table": schema})
    stubber.add_client_error("scan", "ProvisionedThroughputExceededException", http_status_code=400)
    stubber.activate()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("ownpage_sync.sources.factory.open_source", lambda settings: DynamoDBSource(settings, stubbed))
        # When the scheduled run goes
        report = stack.run()
    # Then it failed as a source failure, wrote and queued nothing, and said why
    stubber.assert_no_pending_responses()
    assert (report["outcome"], report["error"]["kind"]) == ("failed", "source")
    assert "throttled" in report["error"]["message"] and stack.writes() == []
    # And once DynamoDB recovers, the next run converges
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    stack.converge()


# -- SQS refusing a send ---------------------------------------------------------------------------------


def test_sqs_refusing_every_send_reports_every_operation_and_the_next_run_applies_them(stack: FaultStack) -> None:
    # Given Ownpage refusing every write, and the RetryQueue refusing every send (botocore Stubber:
    # KMS.DisabledException, as when the queue's key is disabled; moto cannot refuse a send)
    stack.faults(fail_writes=True)
    client = boto3.client("sqs")
    stubber = Stubber(client)
    batches = len(stack.people.expected) // 4
    for _ in range(batches):
        stubber.add_client_error("send_message_batch", "KMS.DisabledException", http_status_code=400)
    stubber.activate()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SqsRetryQueue, "client", property(lambda self: client))
        # When the scheduled run goes
        report = stack.run()
    # Then every batch tried the queue once, and every operation is reported in full (masked samples):
    # the run fails loudly (not_applied), nothing silently dropped
    stubber.assert_no_pending_responses()
    assert (report["outcome"], report["error"]["kind"]) == ("failed", "not_applied")
    assert report["counts"]["failed"] == len(stack.people.expected)
    assert "KMS.DisabledException" in json.dumps(report["apply"]["batches"])
    # And once the key is re-enabled, the next run applies them
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    assert ledger.queued == [] and ledger.left == stack.people.expected
    stack.converge()


def test_sqs_refusing_some_messages_of_a_send_reports_exactly_those(stack: FaultStack) -> None:
    # Given Ownpage refusing every write, and the real queue (moto) refusing the first message of the
    # second send: a botocore hook gives that entry a DelaySeconds SQS refuses, alone, as SQS does
    stack.faults(fail_writes=True)
    sends = [0]

    def refuse_second(params: dict[str, Any], **_: Any) -> None:
        sends[0] += 1
        if sends[0] == 2:
            params["Entries"][0]["DelaySeconds"] = 1_800

    # When the scheduled run goes
    with sqs_hook("before-parameter-build.sqs.SendMessageBatch", refuse_second):
        report = stack.run()
    # Then the queue holds every operation but the refused message's, which are reported failed
    assert (report["outcome"], report["counts"]["failed"]) == ("failed", 4)
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    assert len(ledger.left) == 4 and len(ledger.queued) == len(stack.people.expected) - 4
    stack.converge()


# -- Secrets Manager ---------------------------------------------------------------------------------------


@pytest.fixture
def secret(stack: FaultStack, unique: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The Ownpage credentials in Secrets Manager (moto), as deployed, with a provider of this test's own."""
    monkeypatch.delitem(DEFAULT_PROVIDERS, "secrets", raising=False)
    arn = boto3.client("secretsmanager").create_secret(
        Name=f"faults-{unique}/ownpage", SecretString=json.dumps({"client": "demo", "api_key": "demo-key"})
    )["ARN"]
    monkeypatch.delenv("OWNPAGE_CLIENT")
    monkeypatch.delenv("OWNPAGE_API_KEY")
    monkeypatch.setenv("OWNPAGE_SECRET_ID", arn)
    yield arn
    DEFAULT_PROVIDERS.pop("secrets", None)


def _run_expecting(stack: FaultStack, error: type[Exception]) -> str:
    """A run that cannot start: the handler raises (and logs one ERROR line) before any report."""
    with pytest.raises(error) as raised:
        stack.sync_handler.handler({}, FakeLambdaContext())
    return str(raised.value)


@pytest.mark.filterwarnings("ignore:No application metrics")  # the run never started: no metric
@pytest.mark.parametrize(
    ("value", "cause"),
    [("not json", "is not JSON"), ('{"client": "demo"}', '"api_key" is missing'), (None, "not found")],
    ids=["not-json", "no-api-key", "deleted"],
)
def test_a_malformed_or_missing_secret_stops_the_run_before_any_call_and_a_fixed_one_converges(
    stack: FaultStack, secret: str, value: str | None, cause: str
) -> None:
    # Given the Ownpage secret overwritten with something unusable, or deleted (moto server)
    secrets = boto3.client("secretsmanager")
    if value is None:
        secrets.delete_secret(SecretId=secret, ForceDeleteWithoutRecovery=True)
    else:
        secrets.put_secret_value(SecretId=secret, SecretString=value)
    # When the scheduled run goes
    message = _run_expecting(stack, ConfigurationError)
    # Then it says which secret and what is wrong with it (not "NoneType"), without its content, and
    # calls nobody
    assert secret in message and cause in message
    assert "demo" not in message.replace(secret, "")
    assert stack.emulator.state.requests == [] and stack.count(stack.retry_url) == 0
    assert stack.plan_now() == stack.people.expected  # (plans with the local key: Ownpage untouched)
    # And once the secret is fixed (and the 5-minute cache has expired), the next run converges
    fixed = json.dumps({"client": "demo", "api_key": "demo-key"})
    if value is None:
        stack.monkeypatch.setenv(
            "OWNPAGE_SECRET_ID", secrets.create_secret(Name=f"{secret}-2", SecretString=fixed)["ARN"]
        )
    else:
        secrets.put_secret_value(SecretId=secret, SecretString=fixed)
    DEFAULT_PROVIDERS.pop("secrets", None)
    stack.converge()


@pytest.mark.filterwarnings("ignore:No application metrics")
def test_an_unreachable_secrets_manager_is_transient_and_the_next_run_converges(
    stack: FaultStack, secret: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Secrets Manager unreachable (its endpoint a port where nothing listens, one attempt)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    # When the scheduled run goes
    message = _run_expecting(stack, SecretUnavailable)
    # Then it is transient (the next run tries again), and nothing was called or queued
    assert "Secrets Manager unreachable" in message
    assert stack.emulator.state.requests == [] and stack.count(stack.retry_url) == 0
    # And once Secrets Manager is back, the next run converges
    monkeypatch.delenv("AWS_ENDPOINT_URL_SECRETS_MANAGER")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    DEFAULT_PROVIDERS.pop("secrets", None)
    stack.converge()


# -- the Lambda's deadline ---------------------------------------------------------------------------------


def test_the_deadline_reached_mid_apply_queues_the_rest_and_the_next_run_converges(stack: FaultStack) -> None:
    # Given a Lambda whose writes must stop 10 s before its end, and whose remaining time falls from
    # 15 minutes to 8 s once Ownpage has answered two writes (a fake context scripted on the emulator's
    # log): writes stop there, and 3 s remain to queue (the queue stops 5 s before the end)
    stack.env(DEADLINE_MARGIN_SECONDS="10")
    served = lambda: sum(1 for w in stack.writes() if w.status == 200)  # noqa: E731
    context = ScriptedContext(script=lambda: 900.0 if served() < 2 else 8.0)
    # When the scheduled run goes
    report = stack.run(context)
    # Then two batches were applied, every later one queued with kind "deadline", none written
    statuses = [batch["status"] for batch in report["apply"]["batches"]]
    assert statuses == ["applied"] * 2 + ["queued"] * 5 and len(stack.writes()) == 2
    assert {m["MessageAttributes"]["ErrorKind"]["StringValue"] for m in stack.messages()} == {"deadline"}
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    assert len(ledger.queued) == len(stack.people.expected) - 8 and ledger.left == set()
    stack.converge()


def test_queueing_at_the_deadline_stops_in_time_and_leaves_the_rest_to_the_next_run(stack: FaultStack) -> None:
    # Given the deadline reached after two writes, and the time to queue running out after the first
    # message is stored (remaining time scripted on the writes served and the SQS sends made)
    stack.env(DEADLINE_MARGIN_SECONDS="10")
    sends = [0]
    served = lambda: sum(1 for w in stack.writes() if w.status == 200)  # noqa: E731
    context = ScriptedContext(script=lambda: 900.0 if served() < 2 else 8.0 if sends[0] == 0 else 5.0)

    def count_send(**_: Any) -> None:
        sends[0] += 1

    # When the scheduled run goes
    with sqs_hook("after-call.sqs.SendMessageBatch", count_send):
        report = stack.run(context)
    # Then exactly one message was stored; everything else is reported left to the next run
    # (deferred), never half-queued and never lost (the defect: queueing outlasted the deadline)
    assert sends == [1]
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    assert len(ledger.queued) == 4 and report["counts"]["deferred"] == len(stack.people.expected) - 8 - 4
    assert report["left_to_next_run"]["deferred"] == report["counts"]["deferred"]
    assert report["outcome"] == "not_converged"
    stack.converge()


# -- the process killed, two runs at once -------------------------------------------------------------------

CHILD = """
import sys
from ownpage_sync_tools.lambda_local import LocalContext, load_function
load_function("sync").handler({}, LocalContext())
"""


def _start_run_in_another_process() -> subprocess.Popen[str]:
    """A sync run in its own process (another Lambda container), with this test's environment."""
    return subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen[str], seconds: float = 30) -> None:
    limit = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, "the other run ended too early"
        assert time.monotonic() < limit, "the other run did not get there in time"
        time.sleep(0.02)


def test_a_run_killed_mid_apply_is_finished_by_the_next_run_once_its_lease_expires(stack: FaultStack) -> None:
    # Given a run in another process, killed (SIGKILL: no clean-up at all) after two of its seven
    # batches, Ownpage slow enough to catch it there (0.3 s a write)
    stack.faults(latency=0.3, fault_scope="writes")
    process = _start_run_in_another_process()
    _wait_for(lambda: sum(1 for w in stack.writes() if w.status == 200) >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    time.sleep(0.35)  # a write in flight when it died still lands
    stack.faults()
    missing = stack.plan_now()
    assert set() < missing < stack.people.expected
    # When the next scheduled run comes at once
    blocked = stack.run()
    # Then the dead run's lease keeps it out: no call to Ownpage, nothing queued
    assert blocked["outcome"] == "run_in_progress" and len(stack.writes()) <= 3
    stack.assert_nothing_lost_or_doubled(missing, blocked)
    # When the lease has expired (as if RUN_LEASE_SECONDS had passed) and the next run comes
    stack.dynamodb.update_item(
        TableName=stack.run_table,
        Key={"pk": {"S": "lease"}, "sk": {"S": "lease"}},
        UpdateExpression="SET lease_until = :past",
        ExpressionAttributeValues={":past": {"N": str(time.time() - 1)}},
    )
    report = stack.run()
    # Then it applies exactly what the killed run left, once, and the history shows the killed run
    assert report["outcome"] == "converged"
    stack.assert_nothing_lost_or_doubled(missing, report)
    stack.assert_ownpage_equals_source()
    later = datetime.now(UTC) + timedelta(seconds=901)  # once the dead run's own lease time is over
    outcomes = [record.outcome for record in DynamoDbRunLedger(stack.run_table, clock=lambda: later).history()]
    assert outcomes == ["converged", "crashed"]


def test_two_runs_at_once_write_once(stack: FaultStack) -> None:
    # Given a run in another process, writing slowly (0.15 s a write)
    stack.faults(latency=0.15, fault_scope="writes")
    process = _start_run_in_another_process()
    _wait_for(lambda: len(stack.writes()) >= 1, process)
    # When a second run starts meanwhile
    second = stack.run()
    # Then it finds the lease taken and does nothing at all
    assert second["outcome"] == "run_in_progress" and "holds the lease" in second["error"]["message"]
    # And the first run converged alone: seven batches, each written once
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    (first,) = [json.loads(line)["report"] for line in out.splitlines() if '"message":"sync report"' in line]
    assert first["outcome"] == "converged" and len(stack.writes()) == len(stack.people.expected) // 4
    stack.assert_nothing_lost_or_doubled(stack.people.expected, first)
    stack.assert_ownpage_equals_source()
