"""`ownpage-sync dlq`'s summary: dead letters grouped by error kind *and* HTTP status, with the reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from ownpage_sync.models import Action, Operation
from ownpage_sync.ports import Failure
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync_tools.cli.queue_commands import DlqSummary

pytestmark = pytest.mark.unit

NOW = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def dead_letter(kind: str, status: int | None, reason: str, operations: int = 2) -> dict[str, object]:
    ops = [Operation(Action.SUBSCRIBE, f"reader.{i}@example.org") for i in range(operations)]
    message = RetryMessage.for_failure(1, "20250301T060000Z-3f9c2a71", ops, Failure(kind, reason, status=status))
    return {"Body": message.to_json(), "Attributes": {"SentTimestamp": "1740812400000"}}


def test_dead_letters_are_grouped_by_kind_and_status_with_their_reason() -> None:
    # Given dead letters: two 503s (different attempt counts), a 401, and an unreadable body
    summary = DlqSummary("ownpage-sync-dead-letter", approximate_visible=4, approximate_in_flight=0)
    summary.add(dead_letter("unavailable", 503, "Ownpage is unavailable (HTTP 503); gave up after 6 attempt(s)"))
    summary.add(dead_letter("unavailable", 503, "Ownpage is unavailable (HTTP 503); gave up after 3 attempt(s)"))
    summary.add(dead_letter("auth", 401, "Ownpage refused the client id or API key", operations=1))
    summary.add({"Body": json.dumps({"schema_version": 99}), "Attributes": {}})
    # When it is summarised
    rows = summary.to_dict(NOW)["by_error"]
    text = summary.render(NOW)
    # Then each kind comes with its HTTP status, its counts and a reason, most frequent first
    assert [(r["kind"], r["status"], r["messages"], r["operations"]) for r in rows] == [
        ("unavailable", 503, 2, 4),
        ("auth", 401, 1, 1),
        ("unreadable (poison)", None, 1, 0),
    ]
    assert rows[0]["other_reasons"] == 1 and rows[1]["reason"] == "Ownpage refused the client id or API key"
    assert "schema_version" in rows[2]["reason"]
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("  ")}
    assert lines["unavailable"].split()[:4] == ["unavailable", "503", "2", "4"]
    assert "(+1 other reasons: --json)" in lines["unavailable"]
    assert lines["auth"].split()[:4] == ["auth", "401", "1", "1"]
    assert lines["unreadable"].split()[:5] == ["unreadable", "(poison)", "-", "1", "0"]
    # And no address appears in the summary
    assert "@" not in text and "@" not in json.dumps(summary.to_dict(NOW))
