"""Adversarial, over the fault matrix's full stack (moto server + the emulator over HTTP, the real
handlers): Ownpage's unknowns played by the emulator. Each broke a safety rule when it was written
(an adversarial pass) and guards its fix now."""

from __future__ import annotations

from typing import Any

import pytest

from tests.faults.harness import a_consenting_reader_with_an_odd_row, population

pytestmark = pytest.mark.integration


def test_a_date_only_unsubscription_keeps_a_same_day_earlier_consent_from_lifting_it(build: Any) -> None:
    # Given a reader who said no on 10 March 2025, Ownpage giving that day only (seeded verbatim), and
    # the publisher's database holding her consent from 09:00 that day (before she unsubscribed)
    odd = {"unsubscribed_at": "2025-03-10"}
    stack, said_no = a_consenting_reader_with_an_odd_row(build, odd, consented_at="2025-03-10T09:00:00Z")
    # When the scheduled run goes
    report = stack.run()
    # Then her READER row is not re-subscribed
    lifted = [cause for email, cause in stack.emulator.state.resubscriptions if cause != "PUBLISHER"]
    assert lifted == [], f"READER row re-subscribed; by consent: {report['counts'].get('resubscribed_by_consent')}"
    assert stack.rows()[said_no]["subscribed"] is not True


def test_a_reader_row_with_a_numeric_status_is_never_turned_into_a_publisher_removal(build: Any) -> None:
    import boto3

    # Given a reader who said no, whose Ownpage row carries `"subscribed": 1` beside her READER cause
    # and time (seeded verbatim: not subscribed, for the emulator as for the safety rules), and a
    # publisher's database that does not list her today
    people = population()
    said_no = sorted(people.suppressed)[0]
    item = next(item for item in people.source if item["email"] == said_no)
    people.source.remove(item)
    stack = build(people)
    row = next(row for row in people.ownpage if row["email"] == said_no)
    stack.emulator.state.seed(1, [{**row, "subscribed": 1}], verbatim=True)
    # When the scheduled run goes, then the publisher's database lists her again, and the next run goes
    stack.run()
    after_first = dict(stack.rows()[said_no])
    boto3.resource("dynamodb").Table(stack.table).put_item(Item=item)
    stack.run()
    # Then her unsubscription stays hers (READER) and she is never subscribed again
    final = stack.rows()[said_no]
    assert final["subscribed"] is not True, (
        f"mailed again: {stack.emulator.state.resubscriptions}; first run left {after_first}"
    )
    assert after_first.get("unsubscribed_cause") == "READER", f"after the first run: {after_first}"
