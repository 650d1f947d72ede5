"""Fault matrix, Ownpage's side: every fault is played by the emulator over real HTTP (docs/emulator.md),
against the real SyncFunction handler with its source in DynamoDB and its RetryQueue in SQS (moto
server). Each test ends in the two-state invariant of tests/faults/harness.py, then shows the next
run converging."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from tests.conftest import FakeLambdaContext
from tests.faults.harness import FaultStack, population

pytestmark = pytest.mark.integration


def test_the_population_plans_every_kind_of_change(stack: FaultStack) -> None:
    # Given the matrix's drifted population, Ownpage healthy
    # When a dry run plans
    planned = stack.plan_now()
    # Then it plans what the population was built to need: the oracle every other test relies on
    assert planned == stack.people.expected
    assert {action for action, _ in planned} == {"subscribe", "update", "resubscribe", "unsubscribe"}


# -- 503, 429 -----------------------------------------------------------------------------------------


def test_a_503_burst_with_a_short_retry_after_is_waited_out_and_the_run_converges(stack: FaultStack) -> None:
    # Given Ownpage answering its next three writes 503 with Retry-After: 0.2 s
    stack.env(OWNPAGE_MAX_ATTEMPTS="4")
    stack.faults(error_burst=3, error_status=503, retry_after=0.2, fault_scope="writes")
    # When the scheduled run goes
    report = stack.run()
    # Then Retry-After was honoured (no write within 0.2 s of a 503) and the run converged
    writes = stack.writes()
    assert [w.status for w in writes[:4]] == [503, 503, 503, 200]
    assert all(later.time - earlier.time >= 0.19 for earlier, later in itertools.pairwise(writes[:4]))
    assert report["outcome"] == "converged"
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    stack.assert_ownpage_equals_source()


def test_a_503_burst_with_a_retry_after_longer_than_the_run_has_left_queues_at_once(stack: FaultStack) -> None:
    # Given Ownpage answering every write 503 with Retry-After: one hour, and a run with ten minutes left
    stack.env(OWNPAGE_MAX_ATTEMPTS="6")
    stack.faults(error_burst=1_000, error_status=503, retry_after=3600, fault_scope="writes")
    # When the scheduled run goes
    started = time.monotonic()
    report = stack.run(FakeLambdaContext(remaining_ms=600_000))
    # Then no call slept towards the hour: each batch gave up at once and was queued, nothing lost
    assert time.monotonic() - started < 20
    assert report["outcome"] == "not_converged"
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    assert set(ledger.queued) == stack.people.expected
    # And once Ownpage is back, the retry path and the next run converge
    stack.converge()


def test_429_throttling_is_honoured_and_the_run_converges(stack: FaultStack) -> None:
    # Given Ownpage throttling 40% of its calls with 429 and a short Retry-After
    stack.env(OWNPAGE_MAX_ATTEMPTS="10")
    stack.faults(error_rate=0.4, error_status=429, retry_after=0.01, seed=3)
    # When the scheduled run goes
    report = stack.run()
    # Then the throttling was met, and everything applied once
    assert sum(1 for r in stack.emulator.state.requests if r.status == 429) >= 3
    assert report["outcome"] == "converged", report["apply"]["batches"]
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    stack.assert_ownpage_equals_source()


# -- dropped connections, slow answers -----------------------------------------------------------------


def test_connections_dropped_before_a_write_is_applied_are_retried_and_the_run_converges(stack: FaultStack) -> None:
    # Given Ownpage closing half of the write connections without a byte, before applying anything
    stack.env(OWNPAGE_MAX_ATTEMPTS="10")
    stack.faults(drop_rate=0.5, fault_scope="writes", seed=5)
    # When the scheduled run goes
    report = stack.run()
    # Then drops were met (status 0 in the emulator's log), retried, and each operation applied once
    assert sum(1 for w in stack.writes() if w.status == 0) >= 2
    assert report["outcome"] == "converged", report["apply"]["batches"]
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    stack.assert_ownpage_equals_source()


def test_connections_dropped_after_a_write_is_applied_double_nothing(stack: FaultStack) -> None:
    # Given Ownpage applying half of the writes and then losing the answer (a gateway timing out)
    stack.env(OWNPAGE_MAX_ATTEMPTS="10")
    stack.faults(drop_rate=0.5, drop_after_write=True, fault_scope="writes", seed=5)
    # When the scheduled run goes
    report = stack.run()
    # Then the retried writes were idempotent: one row per reader, the run converged
    assert sum(1 for w in stack.writes() if w.status == 0) >= 2
    assert report["outcome"] == "converged", report["apply"]["batches"]
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    stack.assert_ownpage_equals_source()


def test_every_write_applied_but_unanswered_is_queued_and_the_retry_path_finds_it_applied(stack: FaultStack) -> None:
    # Given Ownpage applying every write and losing every answer
    stack.faults(drop_rate=1.0, drop_after_write=True, fault_scope="writes")
    # When the scheduled run goes
    report = stack.run()
    # Then what the run could not confirm is queued, exactly once each, though Ownpage holds it
    assert report["outcome"] == "not_converged"
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report, applied_unanswered=True)
    assert set(ledger.queued) == stack.people.expected
    # And the retry path re-checks before sending: the applied ones are dropped as already applied
    writes = len(stack.writes())
    stack.converge()
    queued_and_applied = stack.people.expected - ledger.missing
    assert queued_and_applied and len(stack.writes()) - writes <= len(ledger.missing)


@pytest.mark.parametrize(
    ("faults", "outcome"),
    [
        ({"latency": 0.3, "latency_rate": 0.3, "seed": 2}, "converged"),  # some calls, reads and writes
        ({"latency": 0.3, "fault_scope": "writes"}, "not_converged"),  # every write, applied late
        ({"latency": 0.3, "fault_scope": "reads"}, "failed"),  # every read: the run cannot plan
    ],
    ids=["some-calls", "every-write", "every-read"],
)
def test_answers_slower_than_the_read_timeout_lose_and_double_nothing(
    stack: FaultStack, faults: dict[str, object], outcome: str
) -> None:
    # Given Ownpage answering later than the client's read timeout (0.1 s): the client gives up, the
    # emulator still applies a slow write once its sleep ends
    stack.env(OWNPAGE_READ_TIMEOUT="0.1", OWNPAGE_MAX_ATTEMPTS="8" if outcome == "converged" else "2")
    stack.faults(**faults)
    # When the scheduled run goes
    report = stack.run()
    time.sleep(0.35)  # the slow writes still in the emulator land
    # Then the run ends as expected, and nothing is lost or doubled
    assert report["outcome"] == outcome, report.get("apply", report.get("error"))
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report, applied_unanswered=outcome != "converged")
    if outcome == "failed":
        assert report["error"]["kind"] == "ownpage_unavailable" and stack.writes() == []
    stack.converge()


# -- tokens, pages that are not the API's ---------------------------------------------------------------


def test_a_token_expiring_in_the_middle_of_paging_is_renewed_and_the_run_converges(stack: FaultStack) -> None:
    # Given pages of 5 rows read one at a time, and tokens that answer 3 calls each
    stack.env(OWNPAGE_PAGE_SIZE="5", OWNPAGE_READ_CONCURRENCY="1")
    stack.faults(token_lifetime_calls=3)
    # When the scheduled run goes
    report = stack.run()
    # Then tokens expired between pages of the read and were renewed, and the run converged
    requests = stack.emulator.state.requests
    pages = [r for r in requests if r.method == "GET" and r.path.endswith("/subscribers")]
    assert len(pages) >= 5 and any(r.status == 401 for r in pages[1:-1])
    assert sum(1 for r in requests if r.path == "/token") >= 3
    assert report["outcome"] == "converged" and report["read"]["complete"] is True
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    stack.assert_ownpage_equals_source()


@pytest.mark.parametrize(
    ("faults", "outcome", "kind"),
    [
        ({"error_burst": 3, "html_errors": True, "error_status": 502}, "converged", None),
        ({"html_ok_rate": 0.3, "seed": 4}, "converged", None),
        ({"html_ok_rate": 1.0, "fault_scope": "writes"}, "not_converged", "protocol"),
    ],
    ids=["html-502-burst", "html-200-some", "html-200-every-write"],
)
def test_an_html_page_instead_of_the_api_is_retried_then_queued(
    stack: FaultStack, faults: dict[str, object], outcome: str, kind: str | None
) -> None:
    # Given a proxy in front of Ownpage answering nginx-like HTML pages, with an error status or 200
    stack.env(OWNPAGE_MAX_ATTEMPTS="8")
    stack.faults(**faults)
    # When the scheduled run goes
    report = stack.run()
    # Then the pages were never taken for an answer: retried, and what still failed is queued
    assert report["outcome"] == outcome, report.get("apply")
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    if kind is not None:
        kinds = [m["MessageAttributes"]["ErrorKind"]["StringValue"] for m in stack.messages()]
        assert kind in kinds and set(kinds) <= {kind, "unavailable"}  # later batches: the breaker
        assert set(ledger.queued) == stack.people.expected
    stack.converge()


# -- per-row refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["strings", "objects", "unnamed"])
def test_per_row_errors_in_any_shape_reject_only_their_rows(build: Any, shape: str) -> None:
    # Given three new readers at a domain Ownpage refuses, and Ownpage listing them in `errors` as
    # strings ("email is not valid <address>"), objects ({"email": ..., "error": ...}), or strings
    # that do not say which row ("email is not valid")
    people = population()
    bad = [f"refused.{i}@refused.example" for i in range(3)]
    people.source += [
        {"email": email, "user_id": f"r-{i}", "first_name": "R", "city": "Lyon"} for i, email in enumerate(bad)
    ]
    stack = build(people)
    stack.faults(reject_domains=("refused.example",), errors_shape=shape)
    stack.healthy = stack.emulator.faults  # the refusals are permanent
    rejected = frozenset(("subscribe", email) for email in bad)
    # When the scheduled run goes
    report = stack.run()
    # Then only those three are refused (permanent, reported masked, never queued), the rest applied
    assert report["outcome"] == "converged"
    assert report["apply"]["rejected"] == 3 and len(report["apply"]["rejected_samples"]) == 3
    planned = stack.people.expected | rejected
    stack.assert_nothing_lost_or_doubled(planned, report, rejected=rejected)
    stack.converge(rejected=rejected)


def test_an_unsubscribe_ownpage_refuses_is_counted_on_its_own_every_run_until_it_is_made(build: Any) -> None:
    # Given a reader gone from the source whom Ownpage holds subscribed, at a domain it now refuses
    people = population()
    people.ownpage.append({"email": "left.0001@refused.example", "subscribed": True})
    stack = build(people)
    stack.faults(reject_domains=("refused.example",))
    # When the scheduled run goes
    report = stack.run()
    # Then her unsubscribe is refused, counted apart from refused subscribes (Ownpage still mails a
    # reader who left) and logged as an error; permanent like any refusal, it does not hold the run
    assert report["counts"]["unsubscribes_refused"] == 1 and report["apply"]["rejected"] == 1
    assert report["outcome"] == "converged"
    assert any("Ownpage refused to unsubscribe readers" in line for line in stack.logs)
    assert stack.emulator.state.subscriber(1, "left.0001@refused.example")["subscribed"] is True
    # And once Ownpage takes it, the next run makes it
    stack.faults(reject_domains=())
    again = stack.run()
    assert again["counts"]["unsubscribes_refused"] == 0
    assert stack.emulator.state.subscriber(1, "left.0001@refused.example")["subscribed"] is False


def test_a_200_with_only_errors_for_a_batch_it_refused_whole_rejects_those_rows_and_writes_the_rest(
    build: Any,
) -> None:
    # Given three new readers at a domain Ownpage refuses, and an Ownpage that refuses the whole batch
    # for them but answers 200 with only its `errors`, no counts (emulator: invalid_mode=whole_batch_200)
    people = population()
    bad = [f"refused.{i}@refused.example" for i in range(3)]
    people.source += [
        {"email": email, "user_id": f"r-{i}", "first_name": "R", "city": "Lyon"} for i, email in enumerate(bad)
    ]
    stack = build(people)
    stack.faults(reject_domains=("refused.example",), invalid_mode="whole_batch_200")
    stack.healthy = stack.emulator.faults
    rejected = frozenset(("subscribe", email) for email in bad)
    # When the scheduled run goes
    report = stack.run()
    # Then the three are refused, and the rest, which that answer did not write, is sent again and written
    assert report["outcome"] == "converged", report["apply"]["batches"]
    assert report["apply"]["rejected"] == 3
    stack.assert_nothing_lost_or_doubled(stack.people.expected | rejected, report, rejected=rejected)
    stack.converge(rejected=rejected)


@pytest.mark.parametrize("answer", ["empty", "error_document"])
def test_a_write_answered_without_saying_what_it_wrote_is_queued_never_taken_as_written(
    stack: FaultStack, answer: str
) -> None:
    # Given an Ownpage answering every write 200 without its counts: `{}` after writing it, or an error
    # document of its own shape ({"status": 500, "message": ...}) without writing anything
    stack.faults(write_answer=answer)
    # When the scheduled run goes
    report = stack.run()
    # Then nothing is counted as written: every planned operation is queued once, the run not converged
    assert report["outcome"] == "not_converged"
    assert report["counts"]["subscribed"] == report["counts"]["unsubscribed"] == report["counts"]["updated"] == 0
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report, applied_unanswered=answer == "empty")
    assert set(ledger.queued) == stack.people.expected
    assert "does not say what it wrote" in report["apply"]["batches"][0]["reason"]
    # And once Ownpage answers as documented, the retry path re-checks and the next run converges
    stack.converge()


def test_an_error_naming_a_row_in_a_spelling_of_its_own_is_narrowed_down_not_taken_as_written(
    build: Any,
) -> None:
    # Given a new reader at a domain with an accent that Ownpage refuses, named in `errors` with the
    # domain in IDNA (zoë@xn--refus-fsa.example), which is none of the batch's spellings
    people = population()
    people.source.append({"email": "zoë@refusé.example", "user_id": "r-z", "first_name": "Zoë", "city": "Lyon"})
    stack = build(people)
    stack.faults(reject_domains=("refusé.example",), errors_shape="objects_idna")
    stack.healthy = stack.emulator.faults
    rejected = frozenset({("subscribe", "zoë@refusé.example")})
    # When the scheduled run goes
    report = stack.run()
    # Then bisection finds the row, reported rejected once, and everything else is written
    assert report["outcome"] == "converged"
    assert report["apply"]["rejected"] == 1
    stack.assert_nothing_lost_or_doubled(stack.people.expected | rejected, report, rejected=rejected)
    stack.converge(rejected=rejected)


# -- Ownpage down ------------------------------------------------------------------------------------------


def test_ownpage_down_for_every_call_of_the_run_writes_nothing_and_the_next_run_converges(stack: FaultStack) -> None:
    # Given Ownpage answering every call 503 for the whole run
    stack.faults(error_rate=1.0)
    # When the scheduled run goes
    report = stack.run()
    # Then it failed before planning, wrote and queued nothing, and said why
    assert (report["outcome"], report["error"]["kind"]) == ("failed", "ownpage_unavailable")
    assert stack.writes() == []
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    stack.converge()


def test_ownpage_refusing_every_write_of_the_run_queues_everything_once(stack: FaultStack) -> None:
    # Given Ownpage reading fine but refusing every write for the whole run
    stack.faults(fail_writes=True)
    # When the scheduled run goes
    report = stack.run()
    # Then every planned operation is queued exactly once (most without a call, the breaker open)
    assert report["outcome"] == "not_converged"
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    assert set(ledger.queued) == stack.people.expected
    assert len(stack.writes()) < len(stack.people.expected) / 4 * 2  # not every batch tried twice
    stack.converge()
