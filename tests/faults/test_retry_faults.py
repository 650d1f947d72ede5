"""Fault matrix, the retry path: what SQS and people do to queued operations. A scheduled run with
Ownpage refusing every write queues everything on the RetryQueue (moto server); the real
RetryFunction handler then runs in-process on real SQS events built from received messages (moto's
own trigger ignores partial batch responses), against the emulator. Each test ends in the two-state
invariant (the queues include the dead-letter queue), then convergence."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ownpage_sync_tools.cli import exit_codes, main

from tests.faults.harness import LONG_AGO, FaultStack

pytestmark = pytest.mark.integration


def everything_queued(stack: FaultStack, batch_size: int = 4) -> dict[str, Any]:
    """A run whose every write Ownpage refused: all it planned is on the RetryQueue, once each."""
    stack.env(OWNPAGE_BATCH_SIZE=str(batch_size))
    stack.faults(fail_writes=True)
    report = stack.run()
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    assert set(ledger.queued) == stack.people.expected
    stack.faults()
    return report


def test_duplicate_deliveries_of_every_message_write_nothing_twice(stack: FaultStack) -> None:
    # Given everything queued, and the retry function draining the queue with Ownpage back
    everything_queued(stack)
    messages = stack.receive(visibility=60)
    assert stack.deliver(messages) == set()
    writes = len(stack.writes())
    # When SQS delivers every one of those messages again (at-least-once delivery), twice
    for _ in range(2):
        assert stack.deliver(messages) == set()
    # Then not one more write: each re-check found its operations already applied
    assert len(stack.writes()) == writes
    stack.converge()


def test_a_message_redriven_from_the_dead_letter_queue_is_applied_once(
    stack: FaultStack, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given everything queued in two messages, and Ownpage down for five deliveries of each: SQS moves
    # them to the dead-letter queue (moto's RedrivePolicy, maxReceiveCount 5)
    everything_queued(stack, batch_size=20)
    stack.faults(fail_writes=True)
    for _ in range(4):  # (the ledger's look at the queue was the first receive)
        messages = stack.receive()
        assert len(messages) == 2 and stack.deliver(messages) == {m["MessageId"] for m in messages}
    assert stack.receive() == [] and stack.count(stack.dlq_url) == 2
    # Then nothing is lost on the way: the dead-letter queue holds every operation, once each
    ledger = stack.ledger(stack.people.expected, {})
    assert sorted(ledger.queued) == sorted(stack.people.expected)
    stack.faults()
    capsys.readouterr()  # the handlers' metrics so far
    assert main(["redrive", "--json", "--wait", "0"]) == exit_codes.OK
    assert json.loads(capsys.readouterr().out)["moved"] == 2
    assert stack.count(stack.dlq_url) == 0 and stack.count(stack.retry_url) == 2
    # Then the retry function applies them, and the next run finds nothing to do
    stack.converge()


def test_a_poison_message_fails_alone_and_the_others_of_its_batch_are_applied(stack: FaultStack) -> None:
    # Given everything queued in two messages, and beside them a body no retry function can read,
    # naming an address, and a copy of a real message whose run id was forged to smuggle an address
    # and a fake line into the logs (the defect: a forged run_id logged raw)
    everything_queued(stack, batch_size=20)
    real = json.loads(stack.receive()[0]["Body"])
    stack.sqs.send_message(QueueUrl=stack.retry_url, MessageBody="not a retry message: new.0007@example.org")
    forged = {**real, "run_id": "20250301T060000Z-x\nERROR new.0007@example.org"}
    stack.sqs.send_message(QueueUrl=stack.retry_url, MessageBody=json.dumps(forged))
    messages = stack.receive(visibility=60)
    assert len(messages) == 4
    poison = {m["MessageId"] for m in messages if m["Body"].startswith("not a") or "-x\\nERROR" in m["Body"]}
    # When the batch is delivered (deliver checks no log line holds an address)
    failed = stack.deliver(messages)
    # Then only the poison failed (it stays for the dead-letter queue); every operation was applied
    assert failed == poison and len(poison) == 2
    errors = [json.loads(line) for line in stack.logs if '"retry message failed"' in line]
    assert sorted((e["kind"], e["message_id"], e.get("run_id")) for e in errors) == sorted(
        ("poison", message_id, None) for message_id in poison
    )
    assert not any("ERROR new." in line for line in stack.logs)
    assert stack.plan_now() == set() and stack.queued() == []
    stack.assert_ownpage_equals_source()


def test_a_batch_where_every_record_fails_is_kept_whole(stack: FaultStack) -> None:
    # Given everything queued and Ownpage still down
    everything_queued(stack)
    stack.faults(fail_writes=True)
    messages = stack.receive()
    # When a batch is delivered and every record fails (Powertools raises: the invocation fails)
    failed = stack.deliver(messages)
    # Then nothing was deleted: the queue still holds every operation, exactly once
    assert failed == {m["MessageId"] for m in messages}
    ledger = stack.ledger(stack.people.expected, {})
    assert sorted(ledger.queued) == sorted(stack.people.expected)
    stack.converge()


def test_stale_operations_are_dropped_not_replayed(stack: FaultStack) -> None:
    # Given everything queued, and since then: a new reader left the source, a reader the run
    # unsubscribes came back to it, a reader the run re-subscribes said no on Ownpage (READER)
    everything_queued(stack)
    people = stack.people
    left = next(key for action, key in sorted(people.expected) if action == "subscribe")
    back = next(key for action, key in sorted(people.expected) if action == "unsubscribe")
    said_no = next(key for action, key in sorted(people.expected) if action == "resubscribe")
    stack.dynamodb.delete_item(TableName=stack.table, Key={"email": {"S": left}})
    returning = {"email": back, "user_id": "u-back", "first_name": "Anne", "city": "Lyon"}
    stack.dynamodb.put_item(TableName=stack.table, Item={k: {"S": v} for k, v in returning.items()})
    row = next(row for row in people.ownpage if row["email"] == said_no)
    stack.emulator.state.seed(1, [{**row, "unsubscribed_cause": "READER", "unsubscribed_at": LONG_AGO}])
    people.source = [item for item in people.source if item["email"] != left] + [returning]
    people.ownpage = [r for r in people.ownpage if r["email"] not in (back, said_no)]
    people.suppressed.add(said_no)
    # When the retry function drains the queue
    stack.drain()
    # Then the three were dropped, each under its reason, not replayed: nothing needs undoing
    reasons: dict[str, int] = {}
    for line in stack.logs:
        if '"retry message done"' in line:
            for reason, count in json.loads(line)["stale_by_reason"].items():
                reasons[reason] = reasons.get(reason, 0) + count
    assert reasons == {"gone_from_source": 1, "back_in_source": 1, "suppressed_on_ownpage": 1}
    assert stack.plan_now() == {("update", back)}  # its new guid and data: the next full run's to write
    assert stack.rows()[said_no]["unsubscribed_cause"] == "READER" and left not in stack.rows()
    stack.converge()


def test_a_message_whose_operations_are_partly_bad_applies_the_good_ones(stack: FaultStack) -> None:
    # Given everything queued, and one message damaged by hand: one entry's guid made a number
    everything_queued(stack, batch_size=20)
    first = stack.receive()[0]
    body = json.loads(first["Body"])
    damaged = body["operations"][3]
    damaged["guid"] = 250
    stack.sqs.delete_message(QueueUrl=stack.retry_url, ReceiptHandle=first["ReceiptHandle"])
    stack.sqs.send_message(QueueUrl=stack.retry_url, MessageBody=json.dumps(body))
    # When the retry function drains the queue
    stack.drain()
    # Then the message succeeded: every good operation applied, the bad entry reported and skipped,
    # nothing left for the dead-letter queue; only the damaged operation is still missing
    done = [json.loads(line) for line in stack.logs if '"retry message done"' in line]
    assert sum(d["invalid_operations"] for d in done) == 1
    assert stack.plan_now() == {(damaged["action"], damaged["email"])}
    assert stack.count(stack.dlq_url) == 0
    # And the next full run applies it
    stack.converge()
