"""An error escaping a handler is logged as one JSON line with level ERROR before Lambda sees it, so the
runbook's Logs Insights `filter level = "ERROR"` finds a bad setting at start-up too."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from ownpage_sync.errors import ConfigurationError

from tests.conftest import load_handler
from tests.integration.helpers import captured_logs

pytestmark = pytest.mark.unit

SETTING = re.compile(r"^(OWNPAGE|SOURCE|RETRY|DEAD|RUN|MAX|UNSUBSCRIBE|SUPPRESS|DEADLINE|EXPORT)_")


@pytest.fixture(autouse=True)
def _no_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if SETTING.match(name):
            monkeypatch.delenv(name)
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")


def errors(lines: list[str]) -> list[dict[str, Any]]:
    return [entry for entry in map(json.loads, lines) if entry["level"] == "ERROR"]


def test_a_configuration_error_at_sync_start_up_is_an_error_line(lambda_context: Any) -> None:
    # Given a SyncFunction deployed without its settings
    handler = load_handler("sync").handler
    # When it is invoked
    with captured_logs() as lines, pytest.raises(ConfigurationError):
        handler({}, lambda_context)
    # Then one JSON ERROR line names the error, with the invocation's context, before it is re-raised
    (entry,) = errors(lines)
    assert entry["message"] == "sync invocation failed"
    assert entry["error_type"] == "ConfigurationError" and "OWNPAGE_LIST_ID: is required" in entry["error"]
    assert entry["function_request_id"] == lambda_context.aws_request_id
    assert entry["stack"] and all("File " in frame for frame in entry["stack"])


def test_an_unexpected_error_is_logged_with_its_address_masked(
    lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a sync handler whose run fails with a foreign exception quoting an address
    module = load_handler("sync")

    def broken(*_: Any) -> Any:
        raise RuntimeError("cannot encode paul.durand@example.org")

    monkeypatch.setattr(module.Settings, "from_env", broken)
    # When it is invoked
    with captured_logs() as lines, pytest.raises(RuntimeError):
        module.handler({}, lambda_context)
    # Then the error line masks the address
    (entry,) = errors(lines)
    assert entry["error"] == "cannot encode <address>"
    assert "paul.durand" not in "\n".join(lines)


def test_a_retry_batch_that_fails_entirely_is_an_error_line(lambda_context: Any) -> None:
    # Given a RetryFunction without its settings and one message
    handler = load_handler("retry").handler
    event = {
        "Records": [
            {
                "messageId": "m-1",
                "receiptHandle": "r-1",
                "body": "{}",
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:eu-west-1:123456789012:ownpage-sync-retry",
                "awsRegion": "eu-west-1",
            }
        ]
    }
    # When the batch is delivered
    with captured_logs() as lines, pytest.raises(BatchProcessingError):
        handler(event, lambda_context)
    # Then the record's failure and the invocation's failure are both ERROR lines
    messages = [entry["message"] for entry in errors(lines)]
    assert messages == ["retry message failed", "retry invocation failed"]
