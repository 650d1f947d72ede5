"""Adversary round 3, on the rules of the same round (folded pairs, the read proof, convergence): each
broke a rule when written and guards its fix now."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from ownpage_sync.models import Operation, OwnpageSubscriber
from ownpage_sync.planner import PlanPolicy, plan_changes
from ownpage_sync.ports import UpsertResult
from ownpage_sync.report import Outcome
from ownpage_sync.sources.base import RawSubscriber

from tests.adversary.helpers import run_over_fakes
from tests.fakes import FakeOwnpage, Row

pytestmark = pytest.mark.unit


# -- rule 2: a folded pair on a read not proven complete -----------------------------------------------


def test_a_short_read_does_not_unpair_a_folded_pair_and_unsubscribe_the_listed_reader() -> None:
    # Given Ownpage holding the reader as `straße@example.de` (subscribed) and the source listing her as
    # `strasse@example.de` (one row to an Ownpage that matches with case folding), on a read short of
    # its count
    ownpage = [OwnpageSubscriber("straße@example.de", subscribed=True)]
    source = [RawSubscriber("strasse@example.de", "row 1")]

    # When the plan is made
    plan = plan_changes(source, ownpage, PlanPolicy(), read_complete=False)

    # Then neither half of the pair is written (a complete read holds both, docs/safety.md §1)
    assert plan.held >= 1
    assert [op.email for op in plan.to_unsubscribe] == [], "unsubscribes the reader the source lists"


# -- rule 3: an Ownpage that applies fewer entries than sent, and says so in unique_emails_count ------


class DroppingOwnpage(FakeOwnpage):
    """Applies only the first entry of each payload; its summary counts one unique email applied and
    names no duplicate field (ownpage-api.md: only counts that are present are checked)."""

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
        kept = [op.to_payload() for op in operations][:1]
        self.posts.append(kept)
        self.apply(kept)
        return UpsertResult(sent=len(operations), summary={"errors": [], "unique_emails_count": len(kept)})


def test_a_summary_applying_fewer_unique_emails_than_sent_is_not_converged() -> None:
    others = [f"reader{i}@example.org" for i in range(40)]
    ownpage = DroppingOwnpage([Row(email, True) for email in others])
    source = [RawSubscriber(email, f"row {n}") for n, email in enumerate(others)]
    source += [RawSubscriber("new1@example.org", "row a"), RawSubscriber("new2@example.org", "row b")]

    report = run_over_fakes(source, ownpage)

    missing = {"new1@example.org", "new2@example.org"} - ownpage.subscribed_keys()
    assert missing, "the fake should have dropped one"
    assert report.outcome != Outcome.CONVERGED, "converged although Ownpage applied 1 of 2 entries"
