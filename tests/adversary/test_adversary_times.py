"""Adversarial: how Ownpage writes `unsubscribed_at` is not documented (ownpage-api.md lists the field,
not its format). A time read at a coarser precision than the instant it stands for must not make an
earlier consent look newer."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from ownpage_sync.models import Action
from ownpage_sync.ownpage.mapping import PageDecoder
from ownpage_sync.planner import Planner, PlanPolicy
from ownpage_sync.sources.base import RawSubscriber

pytestmark = pytest.mark.unit


def test_a_date_only_unsubscription_is_not_older_than_a_consent_of_the_same_day() -> None:
    # Given Ownpage holding a reader who clicked "unsubscribe" on 10 March 2025 (in the evening), its
    # row giving the day only (emulator: verbatim seeding of "unsubscribed_at": "2025-03-10")
    body = json.dumps(
        [
            {
                "email": "ann@example.org",
                "subscribed": False,
                "unsubscribed_cause": "READER",
                "unsubscribed_at": "2025-03-10",
            }
        ]
    ).encode()
    page, skipped = PageDecoder(())(body)
    assert skipped == 0
    # and the publisher's database holding her consent from that morning, before she unsubscribed
    source = [RawSubscriber("ann@example.org", "row 1", consented_at="2025-03-10T09:00:00Z")]

    # When the run plans
    planner = Planner(PlanPolicy(), (), compare_guid=True, now=datetime(2025, 3, 11, tzinfo=UTC))
    planner.add_ownpage(page)
    planner.add_source(source)
    plan = planner.finish(read_complete=True)

    # Then she stays suppressed: "2025-03-10" says only that day, and a consent of that day is not
    # proven later than her unsubscription
    resubscribed = [op.email for op in plan.operations() if op.action is Action.RESUBSCRIBE]
    assert resubscribed == [], f"re-subscribed by consent: {plan.resubscribed_by_consent}"
    assert len(plan.suppressed) == 1
