"""Adversarial tests: scenarios that broke a safety rule when an adversarial pass wrote them; each
guards its fix now.

Each test plays one way Ownpage's documented unknowns (ownpage-api.md) or documented behaviour can
turn out, over the in-memory fakes, and asserts the rule. They xpass once the break is fixed."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from ownpage_sync.models import Operation, OwnpageSubscriber
from ownpage_sync.ports import SubscriberCounts, UpsertResult
from ownpage_sync.report import Outcome
from ownpage_sync.sources.base import RawSubscriber

from tests.adversary.helpers import run_over_fakes
from tests.fakes import FakeOwnpage, Row

pytestmark = pytest.mark.unit


# -- rule 3: Ownpage ignores an entry whose guid another entry of the payload has ---------------------


class GuidDedupingOwnpage(FakeOwnpage):
    """ownpage-api.md: `duplicate_guid_count` (ignored: same guid twice). The later entry of a payload
    with an explicit guid already seen in that payload is ignored, and counted in the summary."""

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
        seen: set[str] = set()
        kept: list[dict[str, Any]] = []
        ignored = 0
        for payload in (op.to_payload() for op in operations):
            guid = payload.get("guid")
            if guid is not None and guid in seen:
                ignored += 1
                continue
            if guid is not None:
                seen.add(guid)
            kept.append(payload)
        self.posts.append(kept)
        self.apply(kept)
        summary = {
            "errors": [],
            "unique_emails_count": len(kept),
            "duplicate_emails_count": 0,
            "duplicate_guid_count": ignored,
        }
        return UpsertResult(sent=len(operations), summary=summary)


def test_a_subscribe_ownpage_ignored_for_a_shared_guid_is_not_converged() -> None:
    # Given two readers of one household account in the source (one guid, two addresses) and an
    # Ownpage that ignores the second entry of a payload with a guid already seen (documented)
    source = [
        RawSubscriber("ann@example.org", "row 1", guid="acct-42"),
        RawSubscriber("bob@example.org", "row 2", guid="acct-42"),
    ]
    ownpage = GuidDedupingOwnpage([Row(f"reader{i}@example.org", True) for i in range(40)])
    source += [RawSubscriber(f"reader{i}@example.org", f"row {i + 3}") for i in range(40)]

    # When the scheduled run goes
    first = run_over_fakes(source, ownpage)

    # Then Ownpage lacks one of them after the run (the plan knew: source.shared_guid), so the run may
    # not claim Ownpage is in step (the next run sends the second alone; n sharing readers take n-1
    # runs, each reporting converged)
    assert first.plan is not None and first.plan.source.shared_guid == 1
    assert "ann@example.org" in ownpage.subscribed_keys() and "bob@example.org" not in ownpage.subscribed_keys()
    assert first.outcome != Outcome.CONVERGED, "converged although Ownpage ignored bob's subscribe"


# -- rule 1: a read proven only by an /count that undercounts unsubscribed rows ----------------------


class StaleUnsubscribedCount(FakeOwnpage):
    """An Ownpage that answers `status=all` with its subscribed rows only (emulator: ignore_status_all)
    and whose /count `unsubscribed` lags (0) while its `cause` breakdown is right (emulator: count_skew
    leaves `cause` alone)."""

    def count(self, list_id: int) -> SubscriberCounts:
        causes: dict[str, int] = {"READER": 0, "HARD_BOUNCE": 0, "MULTIPLE_BOUNCES": 0, "PUBLISHER": 0}
        for row in self.rows.values():
            if not row.subscribed and row.unsubscribed_cause in causes:
                causes[row.unsubscribed_cause] += 1
        on = sum(row.subscribed for row in self.rows.values())
        return SubscriberCounts(subscribed=on, unsubscribed=0, causes=causes)

    def read_pages(self, list_id: int, *, status: str = "all", **kwargs: Any) -> Iterator[list[OwnpageSubscriber]]:
        yield [row.read() for row in self.rows.values() if row.subscribed == (status != "unsubscribed")]


def test_a_count_whose_causes_show_an_unread_reader_does_not_prove_the_read() -> None:
    # Given an exact-matching Ownpage holding a reader who unsubscribed as `Ann@Example.org`, whose
    # count says 0 unsubscribed but READER: 1, and whose `status=all` read shows subscribed rows only
    truth = [Row("Ann@Example.org", False, unsubscribed_cause="READER"), Row("bob@example.org", True)]
    ownpage = StaleUnsubscribedCount(truth, matching="exact")
    source = [RawSubscriber("ann@example.org", "row 1"), RawSubscriber("bob@example.org", "row 2")]

    # When the scheduled run goes
    report = run_over_fakes(source, ownpage)

    # Then no subscribed row is created beside hers (the cause breakdown says a READER row was not read)
    assert ownpage.twins == [], f"twin created; read {report.read.to_dict() if report.read else None}"
    assert "ann@example.org" not in ownpage.subscribed_keys()
