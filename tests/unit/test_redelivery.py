"""A failed retry message's fate follows the queue's maxReceiveCount: delivered again, or dead-lettered."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from ownpage_sync.errors import ConfigurationError
from ownpage_sync.redelivery import Redelivery

from tests.conftest import load_handler
from tests.integration.helpers import captured_logs

pytestmark = pytest.mark.unit


def test_the_wording_depends_on_the_receive_count_against_the_limit() -> None:
    five = Redelivery.from_env({"RETRY_MAX_RECEIVE_COUNT": "5"})
    assert five.after_failure(2) == "delivered again after the visibility timeout (receive 2 of 5)"
    assert not five.is_last(4)
    assert five.after_failure(5) == "moves to the dead-letter queue (receive 5 of 5 was the last)"
    assert five.is_last(5) and five.is_last(6)
    unknown = Redelivery.from_env({})
    assert not unknown.is_last(100)
    assert "unless receive 3 was the queue's last" in unknown.after_failure(3)


@pytest.mark.parametrize(
    ("raw", "phrase"), [("five", "expected a whole number"), ("0", "must be between 1 and 1000, got 0")]
)
def test_a_malformed_limit_names_the_variable(raw: str, phrase: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Redelivery.from_env({"RETRY_MAX_RECEIVE_COUNT": raw})
    assert "RETRY_MAX_RECEIVE_COUNT: " + phrase in str(raised.value)


def sqs_record(receives: int) -> dict[str, Any]:
    return {
        "messageId": f"m-{receives}",
        "receiptHandle": "r",
        "body": "not a retry message",  # poison: fails at once, without any call
        "attributes": {"ApproximateReceiveCount": str(receives)},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:ownpage-sync-retry",
        "awsRegion": "eu-west-1",
    }


@pytest.fixture
def retry_handler(monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in [n for n in os.environ if n.startswith(("OWNPAGE_", "SOURCE_", "RETRY_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    monkeypatch.setenv("RETRY_MAX_RECEIVE_COUNT", "5")
    return load_handler("retry").handler


def test_the_retry_log_says_whether_a_failed_message_comes_back_or_goes_to_the_dlq(
    retry_handler: Any, lambda_context: Any
) -> None:
    # Given two failing messages: one on its second receive, one on its fifth (the queue's last)
    event = {"Records": [sqs_record(2), sqs_record(5)]}
    # When the batch is delivered
    with captured_logs() as lines, pytest.raises(BatchProcessingError):
        retry_handler(event, lambda_context)
    # Then only the first is said to come back; the last-receive one is said to go to the DLQ
    failed = {e["message_id"]: e for e in map(json.loads, lines) if e["message"] == "retry message failed"}
    assert failed["m-2"]["next"] == "delivered again after the visibility timeout (receive 2 of 5)"
    assert failed["m-2"]["last_receive"] is False and failed["m-2"]["receives"] == 2
    assert failed["m-5"]["next"] == "moves to the dead-letter queue (receive 5 of 5 was the last)"
    assert failed["m-5"]["last_receive"] is True
    assert not any("delivered again" in e.get("reason", "") for e in failed.values())


def test_a_malformed_limit_fails_the_invocation_with_an_error_line(
    retry_handler: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETRY_MAX_RECEIVE_COUNT", "lots")
    with captured_logs() as lines, pytest.raises(ConfigurationError):
        retry_handler({"Records": [sqs_record(1)]}, lambda_context)
    (entry,) = [e for e in map(json.loads, lines) if e["level"] == "ERROR"]
    assert entry["message"] == "retry invocation failed" and "RETRY_MAX_RECEIVE_COUNT" in entry["error"]
