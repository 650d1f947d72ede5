"""Fault matrix, the defects issue 10 reproduced: each test plays the fault that showed the defect and
would fail on the code that had it. Faults come from the emulator (over HTTP), moto server, botocore's
Stubber, or the process environment, as each test says."""

from __future__ import annotations

from typing import Any

import pytest
from ownpage_sync.applier import BISECT_BUDGET

from tests.faults.harness import FaultStack, Op, population

pytestmark = pytest.mark.integration

REFUSED = "refused.example"


def _with_refused(new: int, bad_every: int) -> tuple[Any, frozenset[Op]]:
    """A population of `new` readers to subscribe, every `bad_every`-th at a domain Ownpage refuses
    (addresses sort by number, so the bad rows are spread through the batch)."""
    people = population(in_step=2, new=0, changed=0, publisher=0, reader=0, gone=0)
    bad: set[Op] = set()
    for i in range(new):
        email = f"new.{i:04d}@{REFUSED if i % bad_every == bad_every - 1 else 'example.org'}"
        people.source.append({"email": email, "user_id": f"n-{i:04d}", "first_name": "Anne", "city": "Lyon"})
        (bad if REFUSED in email else people.expected).add(("subscribe", email))
    return people, frozenset(bad)


# -- bisection keeps its results, and counts every call ----------------------------------------------


def test_bisection_isolates_unnamed_bad_rows_within_its_budget(build: Any) -> None:
    # Given one batch of 40 new readers, two of them refused, and an Ownpage that refuses the whole
    # batch with a 400 naming no address (emulator: invalid_mode=whole_batch_unnamed)
    people, bad = _with_refused(40, bad_every=20)
    stack = build(people)
    stack.env(OWNPAGE_BATCH_SIZE="40")
    stack.faults(reject_domains=(REFUSED,), invalid_mode="whole_batch_unnamed")
    stack.healthy = stack.emulator.faults
    # When the scheduled run goes
    report = stack.run()
    # Then bisection found exactly the two, applied the other 38, and stayed within its budget
    assert report["outcome"] == "converged"
    assert report["apply"]["rejected"] == 2 and report["counts"]["subscribed"] == 38
    assert len(stack.writes()) <= 1 + BISECT_BUDGET
    stack.assert_nothing_lost_or_doubled(people.expected | bad, report, rejected=bad)
    stack.converge(rejected=bad)


def test_bisection_out_of_budget_keeps_what_it_applied_and_queues_exactly_the_rest(build: Any) -> None:
    # Given one batch of 200 new readers, 16 of them refused, spread out, and the unnamed 400: isolating
    # them takes more than the 64 extra calls a batch may use (the defect: 441 of 1,000 really applied,
    # reported 0 applied and 1,000 queued; 125 calls against 64)
    people, bad = _with_refused(200, bad_every=12)
    stack = build(people)
    stack.env(OWNPAGE_BATCH_SIZE="200")
    stack.faults(reject_domains=(REFUSED,), invalid_mode="whole_batch_unnamed")
    stack.healthy = stack.emulator.faults
    planned = people.expected | bad
    # When the scheduled run goes
    report = stack.run()
    # Then every call counted against the budget, what went through is reported applied, and the queue
    # holds exactly what is still missing (bad rows not isolated included), each once, kind "rejected"
    assert len(stack.writes()) == 1 + BISECT_BUDGET
    assert report["outcome"] == "not_converged"
    applied = report["counts"]["subscribed"]
    assert 0 < applied < len(people.expected)
    queued_ops = set(stack.queued())
    isolated = frozenset(op for op in bad if op not in queued_ops)
    ledger = stack.assert_nothing_lost_or_doubled(planned, report, rejected=isolated)
    assert len(planned - ledger.missing) == applied
    assert {m["MessageAttributes"]["ErrorKind"]["StringValue"] for m in stack.messages()} == {"rejected"}
    # And the retry path (a message may need a redelivery or two: each re-check drops what the last
    # attempt applied) and the next run apply the rest, the refused rows reported
    stack.converge(rejected=bad, redeliveries=3)


# -- the breaker probes again ----------------------------------------------------------------------------


def test_an_open_breaker_probes_and_ownpage_back_gets_the_rest_of_the_run(
    stack: FaultStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given Ownpage failing the first four batches' writes (two attempts each) and then healthy, and
    # the breaker's first probe due at once (FIRST_PROBE_AFTER 10 s in production: patched to 0)
    monkeypatch.setattr("ownpage_sync.applier.FIRST_PROBE_AFTER", 0.0)
    stack.faults(error_burst=8, fault_scope="writes")
    # When the scheduled run goes
    report = stack.run()
    # Then three failed batches opened the breaker, the first probe (batch 3) failed, the second
    # (batch 4) succeeded and closed it: every later batch was applied, not queued
    statuses = [batch["status"] for batch in report["apply"]["batches"]]
    assert statuses == ["queued"] * 4 + ["applied"] * 3
    assert report["outcome"] == "not_converged"
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    assert len(ledger.queued) == 16
    stack.converge()


# -- a paged read that never ends ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["ignore_offset", "never_empty"])
def test_a_read_that_would_never_end_is_cut_and_the_run_writes_nothing(stack: FaultStack, fault: str) -> None:
    # Given pages of 5 rows from a server that serves the first page whatever the offset, or repeats
    # its last page past the end (the defect: 521 calls in 25 s until killed)
    stack.env(OWNPAGE_PAGE_SIZE="5", OWNPAGE_READ_CONCURRENCY="1")
    stack.faults(**{fault: True})
    # When the scheduled run goes
    report = stack.run()
    # Then the read was cut within a handful of calls, with a clear error, and nothing was written
    pages = [r for r in stack.emulator.state.requests if r.method == "GET" and r.path.endswith("/subscribers")]
    assert len(pages) <= 12
    assert report["outcome"] == "failed" and report["error"]["kind"].startswith("ownpage_")
    assert "offset" in report["error"]["message"] or "past" in report["error"]["message"]
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    stack.converge()


# -- an odd time from Ownpage ---------------------------------------------------------------------------------


def test_an_unreadable_ownpage_time_keeps_the_suppression_and_crashes_nothing(build: Any) -> None:
    # Given a reader who said no, whose source row carries a consent time, and whose Ownpage row says
    # unsubscribed_at "0001-01-01T00:00:00+01:00" (seeded verbatim: before UTC's year 1; the defect:
    # an uncaught OverflowError, a traceback, exit 1)
    people = population()
    said_no = sorted(people.suppressed)[0]
    next(item for item in people.source if item["email"] == said_no)["consented_at"] = "2025-06-01T00:00:00Z"
    stack = build(people)
    stack.env(SOURCE_CONSENT_ATTRIBUTE="consented_at")
    row = next(row for row in people.ownpage if row["email"] == said_no)
    stack.emulator.state.seed(1, [{**row, "unsubscribed_at": "0001-01-01T00:00:00+01:00"}], verbatim=True)
    # When the scheduled run goes
    report = stack.run()
    # Then the time is reported unreadable, the reader stays suppressed, and the run converged
    assert report["outcome"] == "converged"
    assert report["ownpage"]["unreadable_times"] == 1
    assert stack.rows()[said_no]["subscribed"] is False
    stack.assert_nothing_lost_or_doubled(people.expected, report)
    stack.assert_ownpage_equals_source()


# -- one bad operation is set aside on its own ----------------------------------------------------------


def test_one_operation_the_reader_would_refuse_is_set_aside_alone_and_the_rest_of_its_batch_queued(
    build: Any,
) -> None:
    # Given a reader whose city is longer than a retry message may carry (10,001 characters), planned
    # in the middle of a batch, and Ownpage refusing every write (the defect: the writer queued what
    # the reader rejects, and 4,999 good operations went to the dead-letter queue with it)
    people = population()
    huge = next(item for item in people.source if item["email"].startswith("new."))
    huge["city"] = "x" * 10_001
    stack = build(people)
    stack.env(OWNPAGE_BATCH_SIZE="28")  # one batch: the bad operation has good ones before and after it
    stack.faults(fail_writes=True)
    # When the scheduled run goes
    report = stack.run()
    # Then only that operation is reported not applied (the run fails loudly, masked sample), every
    # other one of its batch is on the queue, once, and readable by the retry function
    assert (report["outcome"], report["counts"]["failed"]) == ("failed", 1)
    assert report["apply"]["failed_samples"] == [{"action": "subscribe", "email": "n***@e***.org"}]
    ledger = stack.assert_nothing_lost_or_doubled(people.expected, report)
    assert ledger.left == {("subscribe", huge["email"])}
    assert len(ledger.queued) == len(people.expected) - 1
    # And the retry function applies the queued ones, the next run the one set aside
    stack.converge()
