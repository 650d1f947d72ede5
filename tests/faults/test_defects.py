"""Fault matrix, the defects issue 10 reproduced: each test plays the fault that showed the defect and
would fail on the code that had it. Faults come from the emulator (over HTTP), moto server, botocore's
Stubber, or the process environment, as each test says."""

from __future__ import annotations

import csv
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from ownpage_sync.applier import BISECT_BUDGET
from ownpage_sync.emails import canonical_key
from ownpage_sync.redaction import CHATTY_LIBRARIES
from ownpage_sync_tools.cli import exit_codes, main

from tests.conftest import load_handler
from tests.faults.harness import FaultStack, Op, a_consenting_reader_with_an_odd_row, population
from tests.integration.helpers import assert_no_leak

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


@pytest.mark.parametrize(
    ("odd", "counted"),
    [
        # before UTC's year 1 (the defect: an uncaught OverflowError, a traceback, exit 1)
        ({"unsubscribed_at": "0001-01-01T00:00:00+01:00"}, "unreadable_times"),
        # placeholders, not times: any opt-in would look newer and lift the suppression
        ({"unsubscribed_at": 0}, "unreadable_times"),
        ({"unsubscribed_at": "1970-01-01T00:00:00Z"}, "unreadable_times"),
    ],
    ids=["year-one", "epoch-zero", "epoch-text"],
)
def test_an_odd_ownpage_value_keeps_the_suppression_and_crashes_nothing(
    build: Any, odd: dict[str, Any], counted: str
) -> None:
    # Given a reader who said no, whose source row carries a consent time, and whose Ownpage row holds
    # an odd value (seeded verbatim)
    stack, said_no = a_consenting_reader_with_an_odd_row(build, odd, consented_at="2025-06-01T00:00:00Z")
    # When the scheduled run goes
    report = stack.run()
    # Then the value is reported unreadable, the reader stays suppressed (nothing written for her),
    # and the run converged
    assert report["outcome"] == "converged"
    assert report["ownpage"][counted] == 1
    assert stack.rows()[said_no]["subscribed"] is not True
    assert stack.rows()[said_no]["unsubscribed_cause"] == "READER"
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)
    stack.assert_ownpage_equals_source()


def test_a_null_status_is_unknown_and_suppresses_rather_than_a_bare_subscribed_row(build: Any) -> None:
    # Given a reader who said no, whose Ownpage row comes back with every status field null (seeded
    # verbatim; the defect: read as a bare row, that is subscribed, so the run called her in step)
    people = population()
    said_no = sorted(people.suppressed)[0]
    stack = build(people)
    row = next(row for row in people.ownpage if row["email"] == said_no)
    nulls = {"subscribed": None, "unsubscribed_at": None, "unsubscribed_cause": None}
    stack.emulator.state.seed(1, [{**row, **nulls}], verbatim=True)
    # When the scheduled run goes
    report = stack.run()
    # Then the status is reported unreadable and she is suppressed (nothing written to her row), while
    # everyone else converges
    assert report["outcome"] == "converged"
    assert report["ownpage"]["unreadable_status"] == 1 and report["suppressed_by_cause"]["UNKNOWN"] == 1
    assert {k: v for k, v in stack.rows()[said_no].items() if k in nulls} == nulls
    stack.assert_nothing_lost_or_doubled(people.expected, report)


def test_an_invisible_character_in_ownpages_spelling_does_not_hide_a_suppression(build: Any) -> None:
    # Given an Ownpage that keeps and matches spellings exactly, holding a reader who said no under a
    # spelling an import left a byte-order mark in (the defect: a second, subscribed row for her)
    people = population()
    said_no = sorted(people.suppressed)[0]
    row = next(row for row in people.ownpage if row["email"] == said_no)
    row["email"] = "\ufeff" + said_no
    stack = build(people)
    stack.faults(matching="exact")
    # When the scheduled run goes
    report = stack.run()
    # Then she is suppressed under that spelling: no row is created beside hers, hers is untouched
    assert report["outcome"] == "converged"
    assert stack.emulator.state.twins == []
    (hers,) = [r for r in stack.emulator.state.subscribers(1) if canonical_key(r["email"]) == said_no]
    assert (hers["email"], hers["subscribed"], hers["unsubscribed_cause"]) == ("\ufeff" + said_no, False, "READER")
    stack.assert_nothing_lost_or_doubled(people.expected, report)


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


# -- no raw address in any log, whatever the log level -------------------------------------------------------


def test_debug_logs_of_a_run_that_queues_hold_no_raw_address(stack: FaultStack) -> None:
    # Given LOG_LEVEL=DEBUG (where botocore prints DynamoDB scan responses and SQS bodies) and Ownpage
    # refusing every write, so that every operation's address travels to SQS
    stack.faults(fail_writes=True)
    env = {**os.environ, "LOG_LEVEL": "DEBUG"}
    # When `ownpage-sync run --json` runs in its own process (its logging configured from scratch)
    cli = str(Path(sys.executable).with_name("ownpage-sync"))
    done = subprocess.run([cli, "run", "--json", "--no-progress"], env=env, capture_output=True, text=True, timeout=120)
    # Then logging below WARNING was on (the AWS SDK's lines, capped at INFO: its DEBUG ones hold the
    # bodies), the run queued everything, and not one address reached stdout or stderr
    assert done.returncode == 4, done.stderr[-500:]
    assert "INFO Found credentials" in done.stderr and "DEBUG" not in done.stderr
    assert json.loads(done.stdout)["counts"]["queued"] == len(stack.people.expected)
    assert_no_leak(done.stdout + done.stderr, stack.people.addresses)
    ledger = stack.assert_nothing_lost_or_doubled(stack.people.expected, json.loads(done.stdout))
    assert set(ledger.queued) == stack.people.expected
    stack.converge()


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()}")


def test_debug_logs_of_the_lambda_handler_hold_no_raw_address(stack: FaultStack) -> None:
    # Given the Lambda runtime's root logger at DEBUG before the handler is imported (as
    # AWS_LAMBDA_LOG_LEVEL=DEBUG sets it), a handler that prints every record raw (no redacting
    # formatter, unlike the CLI's), and Ownpage refusing every write so every address travels to SQS
    root, collector = logging.getLogger(), _Everything()
    chatty = {name: logging.getLogger(name).level for name in CHATTY_LIBRARIES}
    level = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    try:
        stack.sync_handler = load_handler("sync")
        stack.faults(fail_writes=True)
        # When the scheduled run goes
        report = stack.run()
    finally:
        root.removeHandler(collector)
        root.setLevel(level)
        for name, previous in chatty.items():
            logging.getLogger(name).setLevel(previous)
    # Then DEBUG was on, everything was queued, and no record of any library held an address
    assert any(line.startswith("ownpage-sync ") for line in collector.lines)  # the root handler saw the run
    assert report["counts"]["queued"] == len(stack.people.expected)
    assert_no_leak("\n".join(collector.lines), stack.people.addresses)
    stack.assert_nothing_lost_or_doubled(stack.people.expected, report)


class EntityWritingOwnpage(requests.Session):
    """The session the client uses, turning the emulator into an Ownpage that writes the addresses of
    its per-row errors with an HTML entity for the @ (`ann&#64;example.org`)."""

    rewritten = 0

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        response = super().request(method, url, *args, **kwargs)
        if method == "POST" and url.endswith("/subscribers") and b"@" in response.content:
            response._content = response.content.replace(b"@", b"&#64;")
            EntityWritingOwnpage.rewritten += 1
        return response


def test_an_address_written_with_an_entity_in_ownpages_error_is_masked_in_the_json_report(
    build: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given two new readers Ownpage refuses, its errors naming them as refused.0&#64;refused.example
    people = population()
    bad = [f"refused.{i}@{REFUSED}" for i in range(2)]
    people.source += [{"email": e, "user_id": f"r-{i}", "first_name": "R", "city": "Lyon"} for i, e in enumerate(bad)]
    stack = build(people)
    stack.faults(reject_domains=(REFUSED,))
    stack.healthy = stack.emulator.faults
    monkeypatch.setattr("ownpage_sync.ownpage.client.new_session", lambda pool_size: EntityWritingOwnpage())
    EntityWritingOwnpage.rewritten = 0
    # When `ownpage-sync run --json` runs
    code = main(["run", "--json", "--no-progress"])
    out, err = capsys.readouterr()
    # Then the refusals are reported, masked in every form: no address, plain or with &#64;
    assert code == exit_codes.OK
    report = json.loads(out[out.index("{\n") :])
    assert report["apply"]["rejected"] == 2
    assert EntityWritingOwnpage.rewritten >= 1
    assert "&#64;" not in out + err and "refused.0" not in out + err
    assert_no_leak(out + err, people.addresses)
    rejected = frozenset(("subscribe", email) for email in bad)
    stack.assert_nothing_lost_or_doubled(people.expected | rejected, report, rejected=rejected)


# -- late configuration errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"AWS_DEFAULT_REGION": None, "AWS_REGION": None}, "AWS_DEFAULT_REGION"),
        ({"OWNPAGE_API_URL": "http://127.0.0.1:99999/v1"}, "OWNPAGE_API_URL"),
        ({"OWNPAGE_API_URL": "http://[::1/v1"}, "OWNPAGE_API_URL"),
        ({"LOG_LEVEL": "bogus"}, "LOG_LEVEL"),
        (
            {
                "SOURCE_KIND": "postgresql",
                "SOURCE_DSN": "postgresql://127.0.0.1:5432/x",
                "SOURCE_QUERY": "SELECT 1",
                "SOURCE_TLS_CA": "/no/such/ca.pem",
            },
            "SOURCE_TLS_CA",
        ),
    ],
    ids=["no-region", "impossible-port", "unclosed-bracket", "log-level", "missing-ca-file"],
)
def test_a_late_configuration_error_is_one_line_and_status_2_before_any_call(
    stack: FaultStack,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variables: dict[str, str | None],
    named: str,
) -> None:
    # Given one setting the run would only trip over late (the defect: a traceback and status 1)
    for name, value in variables.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    # When `ownpage-sync run` runs
    code = main(["run", "--no-progress"])
    # Then one line names the variable, status 2, and neither Ownpage nor the queue was touched
    err = capsys.readouterr().err
    assert code == exit_codes.CONFIGURATION
    assert err.splitlines()[-1].startswith("ownpage-sync: error: ") and named in err.splitlines()[-1]
    assert "Traceback" not in err
    assert stack.emulator.state.requests == [] and stack.count(stack.retry_url) == 0


def test_aws_region_alone_is_enough(stack: FaultStack, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given AWS_REGION (what Lambda sets) without AWS_DEFAULT_REGION (the defect: NoRegionError)
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    # When `ownpage-sync run` runs, then it converges
    assert main(["run", "--no-progress"]) == exit_codes.OK
    stack.assert_ownpage_equals_source()


# -- exports are checked before the first write --------------------------------------------------------------


def test_an_export_path_is_checked_before_the_first_write_and_the_export_is_private(
    stack: FaultStack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given `run --export-plan` to a directory that does not exist, and to an unknown suffix (the
    # defect: every write applied, then a crash without a report)
    for target in (tmp_path / "no-such-dir" / "plan.csv", tmp_path / "plan.txt"):
        # When it runs
        code = main(["run", "--no-progress", "--export-plan", str(target)])
        # Then it stops with one line naming the path, before reading or writing anything
        assert code == exit_codes.CONFIGURATION
        assert str(target) in capsys.readouterr().err.splitlines()[-1]
        assert stack.emulator.state.requests == [] and not target.exists()
    # When it runs to a writable path
    target = tmp_path / "plan.csv"
    assert main(["run", "--no-progress", "--export-plan", str(target)]) == exit_codes.OK
    # Then the file is private and lists exactly the operations the run applied
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    rows = list(csv.DictReader(target.open(encoding="utf-8")))
    assert {(row["action"], row["email"]) for row in rows} == stack.people.expected and len(rows) == 28
    stack.assert_ownpage_equals_source()
