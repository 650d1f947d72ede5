"""The read-safety bar, against the emulator over real HTTP playing Ownpage's unknowns the unfriendly
way: rows moving while the list is paged, an Ownpage that keeps and matches its own spelling, a filter
broken the other way (everyone listed again), a run that outlives its lease.

The source here is an in-memory list of rows (tests/fakes.InMemorySource): what is under test is the
read of Ownpage and the writes to it; the real sources have their own tests. The run table is moto's
DynamoDB, over HTTP."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ownpage_sync.deadline import Deadline
from ownpage_sync.lease import LeaseKeeper
from ownpage_sync.ownpage import OwnpageClient
from ownpage_sync.report import Outcome
from ownpage_sync.run_ledger import DynamoDbRunLedger
from ownpage_sync.secrets import OwnpageCredentials
from ownpage_sync.settings import Settings
from ownpage_sync.sources.base import RawSubscriber
from ownpage_sync.sync import RunRequest, SyncServices, run_sync
from ownpage_sync_tools.cli import main as cli
from ownpage_sync_tools.localstack import aws_client, create_run_table

from tests.fakes import InMemorySource

pytestmark = pytest.mark.integration

SUPPRESSING = {"READER", "HARD_BOUNCE", "MULTIPLE_BOUNCES", None}


def settings(emulator: Any, **extra: str) -> Settings:
    return Settings.from_env(
        {
            "OWNPAGE_API_URL": emulator.url,
            "OWNPAGE_LIST_ID": "1",
            "OWNPAGE_CLIENT": "demo",
            "OWNPAGE_API_KEY": "demo-key",
            "SOURCE_KIND": "dynamodb",
            "SOURCE_TABLE": "unused",
            "OWNPAGE_BACKOFF_BASE": "0.01",
            **extra,
        }
    )


def run(emulator: Any, rows: list[RawSubscriber], dry_run: bool = False, ledger: Any = None, **extra: str) -> Any:
    config = settings(emulator, **extra)
    deadline = Deadline.unlimited()
    with OwnpageClient(config.ownpage, OwnpageCredentials("demo", "demo-key"), deadline) as client:
        services = SyncServices(source=InMemorySource(rows), ownpage=client, ledger=ledger)
        return run_sync(config, services, RunRequest(dry_run=dry_run), deadline)


def after_first_page(emulator: Any, change: Callable[[], None]) -> None:
    """`change()` once, right after the next list page is served (someone at Ownpage's dashboard)."""
    serve = emulator.state.page_json
    done: list[bool] = []

    def page_json(list_id: int, read: Any, dice: Any = None) -> bytes:
        body = serve(list_id, read, dice)
        if read.search is None and not done:
            done.append(True)
            change()
        return body

    emulator.state.page_json = page_json


def test_rows_moving_during_every_page_cost_no_consent(emulator: Any) -> None:
    # Given 30,000 readers, one in twenty unsubscribed by themselves or bouncing, all of them still in
    # the publisher's database (a source that does not track Ownpage-side unsubscribes), and a list
    # whose order follows the last change: 25 rows change (and move to the end) after every page read
    causes = ("READER", "HARD_BOUNCE", "MULTIPLE_BOUNCES")
    seeded = [
        {"email": f"reader{n}@example.org", "subscribed": True}
        if n % 20
        else {
            "email": f"reader{n}@example.org",
            "subscribed": False,
            "unsubscribed_cause": causes[n % 3],
            "unsubscribed_at": "2025-01-01T00:00:00Z",
        }
        for n in range(30_000)
    ]
    emulator.state.seed(1, seeded)
    emulator.set_faults(order="last_change", move_per_page=25, seed=3)
    rows = [RawSubscriber(f"reader{n}@example.org", f"row {n}") for n in range(30_000)]

    # When the sync runs against it, paging 1,000 rows at a time
    report = run(emulator, rows, OWNPAGE_PAGE_SIZE="1000")

    # Then rows were really skipped or repeated while paging (the fault bit)...
    assert report.plan.ownpage.repeated_rows > 0
    # ...yet no suppressed reader was re-subscribed, by omission or otherwise
    assert [entry for entry in emulator.state.resubscriptions if entry[1] in SUPPRESSING] == []
    assert report.outcome in (Outcome.CONVERGED, Outcome.NOT_CONVERGED)
    suppressed = {row["email"] for row in seeded if not row["subscribed"]}
    now = {row["email"]: row for row in emulator.state.subscribers(1)}
    assert all(not now[email]["subscribed"] for email in suppressed)

    # And when the list calms down, a second run writes nothing and a dry run plans nothing
    emulator.set_faults(order="insertion", move_per_page=0)
    again = run(emulator, rows, OWNPAGE_PAGE_SIZE="1000")
    assert again.outcome == Outcome.CONVERGED and again.plan.is_empty
    assert again.plan.counts()["suppressed"] == len(suppressed)


def test_an_address_ownpage_sends_with_a_lone_surrogate_is_read_and_written_back_as_sent(emulator: Any) -> None:
    # Given Ownpage holding a reader the publisher lists and one whose address its JSON carries with
    # a lone surrogate escape ("\ud800…": JSON that msgspec refuses and Python reads)
    odd = "\ud800gone@example.org"
    readers = [f"reader{n}@example.org" for n in range(50)]
    emulator.state.seed(1, [{"email": email, "subscribed": True} for email in [*readers, odd]])

    # When the sync runs with a source listing the others
    report = run(emulator, [RawSubscriber(email, f"row {n}") for n, email in enumerate(readers)])

    # Then the page was read, not refused, and that address unsubscribed by Ownpage's own spelling
    # (sent back as JSON's escape): converged, no row added or lost
    assert report.outcome == Outcome.CONVERGED, report.error
    now = {row["email"]: row for row in emulator.state.subscribers(1)}
    assert set(now) == {*readers, odd}
    assert now[odd]["subscribed"] is False and all(now[email]["subscribed"] for email in readers)


@pytest.mark.parametrize(
    "odd",
    [
        {"email": "bare@example.org"},  # no `subscribed` field: the sync reads it subscribed, Ownpage may not
        {"email": "\u200b", "subscribed": False, "unsubscribed_cause": "READER"},  # no usable address
        {"email": "  ", "subscribed": True},
    ],
    ids=["bare row", "invisible address", "blank address"],
)
def test_one_row_the_sync_reads_otherwise_than_ownpage_counts_it_does_not_hold_back_every_subscribe(
    emulator: Any, odd: dict[str, Any]
) -> None:
    # Given Ownpage holding 20 readers and one odd row as it stores it (counted by its own rules:
    # the bare row as unsubscribed), and a source listing the readers, two new ones and the bare row
    readers = [f"reader{n:02d}@example.org" for n in range(22)]
    emulator.state.seed(1, [{"email": email, "subscribed": True} for email in readers[:20]])
    emulator.state.seed(1, [odd], verbatim=True)
    source = [RawSubscriber(email, f"row {n}") for n, email in enumerate([*readers, "bare@example.org"])]

    # When the sync runs twice
    first, second = run(emulator, source), run(emulator, source)

    # Then the read was proven complete both times (the odd row counted as seen, as Ownpage counts
    # it), the new readers were subscribed, and nothing was held back
    assert first.read.complete and second.read.complete, first.read.to_dict()
    assert (first.outcome, second.outcome) == (Outcome.CONVERGED, Outcome.CONVERGED), first.error
    assert first.plan.held == 0
    subscribed = {row["email"] for row in emulator.state.subscribers(1) if row.get("subscribed") is True}
    assert set(readers) <= subscribed
    assert not emulator.state.resubscriptions and not emulator.state.twins


def test_rows_without_an_address_read_again_as_they_move_count_once_in_the_proof(emulator: Any) -> None:
    # Given an Ownpage matching spellings exactly, 30 readers and 10 of them unsubscribed under an
    # upper-case spelling, 20 rows whose address is only spaces, and rows moving while paged (found by
    # an adversarial run: counted per occurrence, the blank rows read again filled the proof's tally)
    emulator.set_faults(matching="exact")
    for n in range(30):
        emulator.state.seed(1, [{"email": f"reader{n:02d}@example.org", "subscribed": True}])
        if n % 3 == 0:
            row = {"email": f"SUPP{n:02d}@EXAMPLE.ORG", "subscribed": False, "unsubscribed_cause": "READER"}
            emulator.state.seed(1, [row])
    emulator.state.seed(1, [{"email": " " * (i + 1), "subscribed": True} for i in range(20)], verbatim=True)
    source = [RawSubscriber(f"reader{n:02d}@example.org", f"row {n}") for n in range(30)]
    source += [RawSubscriber(f"supp{n:02d}@example.org", f"row s{n}") for n in range(0, 30, 3)]
    emulator.set_faults(move_per_page=4, seed=8)

    # When the sync runs, a page of 5 rows at a time
    report = run(emulator, source, OWNPAGE_PAGE_SIZE="5", OWNPAGE_READ_CONCURRENCY="1")

    # Then the blank rows counted once each, the read was proven only once every suppression was seen,
    # and no reader who said no got a second row
    assert report.read.unusable_seen == 20
    assert not report.read.complete or report.plan.counts()["suppressed"] == 10
    assert not emulator.state.twins and not emulator.state.resubscriptions


def test_a_cause_that_only_unicode_upper_casing_makes_publisher_is_never_lifted(emulator: Any) -> None:
    # Given readers unsubscribed with a cause Ownpage spells "publısher" (dotless i) or "PUBLIſHER"
    # (long s), which str.upper() turns into PUBLISHER, and a source listing them
    odd = {
        "dotless@example.org": "publ\u0131sher",
        "longs@example.org": "PUBLI\u017fHER",
        "nbsp@example.org": "PUBLISHER\u00a0",  # and a no-break space that str.strip would take away
    }
    rows = [{"email": email, "subscribed": False, "unsubscribed_cause": cause} for email, cause in odd.items()]
    emulator.state.seed(1, rows, verbatim=True)

    # When the sync runs
    report = run(emulator, [RawSubscriber(email, f"row {n}") for n, email in enumerate(odd)])

    # Then neither is re-subscribed: an unknown cause suppresses
    assert report.outcome == Outcome.CONVERGED, report.error
    assert not emulator.state.resubscriptions
    assert all(row["subscribed"] is False for row in emulator.state.subscribers(1))


def test_an_exact_matching_ownpage_keeps_one_row_per_reader(emulator: Any) -> None:
    # Given an Ownpage that keeps the spelling it was given and matches it exactly, holding readers
    # in spellings of its own: one to unsubscribe, one to update, one to re-subscribe, one in step,
    # one suppressed
    emulator.set_faults(matching="exact")
    emulator.state.seed(
        1,
        [
            {"email": "Gone@Example.NET", "subscribed": True},
            {"email": "ANN@Example.com", "subscribed": True, "data_city": "Lyon"},
            {"email": "Bob@Example.com", "subscribed": False, "unsubscribed_cause": "PUBLISHER"},
            {"email": "Cat@Example.com", "subscribed": True, "data_city": "Nice"},
            {"email": "Dee@Example.com", "subscribed": False, "unsubscribed_cause": "READER"},
            *({"email": f"filler{n}@example.com", "subscribed": True, "data_city": "Rome"} for n in range(60)),
        ],
    )
    rows = [
        RawSubscriber("ann@example.com", "row 1", data={"city": "Paris"}),
        RawSubscriber("bob@example.com", "row 2", data={"city": "Metz"}),
        RawSubscriber("cat@example.com", "row 3", data={"city": "Nice"}),
        RawSubscriber("dee@example.com", "row 4", data={"city": "Oslo"}),
        *(RawSubscriber(f"filler{n}@example.com", f"row {n + 5}", data={"city": "Rome"}) for n in range(60)),
    ]

    # When the sync runs
    report = run(emulator, rows)

    # Then every write reached the stored row, and no row was created beside an existing spelling
    assert report.outcome == Outcome.CONVERGED
    assert emulator.state.twins == []
    stored = {row["email"]: row for row in emulator.state.subscribers(1)}
    assert set(stored) == {
        "Gone@Example.NET",
        "ANN@Example.com",
        "Bob@Example.com",
        "Cat@Example.com",
        "Dee@Example.com",
    } | {f"filler{n}@example.com" for n in range(60)}
    assert stored["Gone@Example.NET"]["subscribed"] is False
    assert stored["ANN@Example.com"]["data_city"] == "Paris"
    assert stored["Bob@Example.com"]["subscribed"] is True
    assert stored["Dee@Example.com"]["subscribed"] is False
    assert emulator.state.resubscriptions == [("Bob@Example.com", "PUBLISHER")]

    # And the second run writes nothing
    before = len([r for r in emulator.state.requests if r.method == "POST" and r.path.endswith("/subscribers")])
    again = run(emulator, rows)
    after = len([r for r in emulator.state.requests if r.method == "POST" and r.path.endswith("/subscribers")])
    assert again.plan.is_empty and after == before


@pytest.mark.parametrize("matching", ["case_insensitive", "exact"])
def test_an_ownpage_that_keeps_domains_in_idna_keeps_each_reader_as_the_source_says(
    emulator: Any, matching: str
) -> None:
    # Given an Ownpage that keeps every domain it is given in IDNA (`xn--`), holding one reader who
    # unsubscribed herself (in that spelling) and another one the source no longer lists
    emulator.set_faults(domains="idna", matching=matching)
    emulator.state.seed(
        1,
        [
            {"email": "ana@xn--caf-dma.fr", "subscribed": False, "unsubscribed_cause": "READER"},
            {"email": "gone@xn--caf-dma.fr", "subscribed": True},
            *({"email": f"filler{n}@example.com", "subscribed": True} for n in range(40)),
        ],
    )
    readers = ["zoë@exämple.org", "Ana@CAFÉ.fr", *(f"filler{n}@example.com" for n in range(40))]
    rows = [RawSubscriber(email, f"row {n}", consented_at="2024-01-01T00:00:00Z") for n, email in enumerate(readers)]

    # When the sync runs three times (the first subscribes Zoë: Ownpage keeps her as `xn--exmple-cua`)
    reports = [run(emulator, rows) for _ in range(3)]

    # Then Zoë stays subscribed, Ana stays unsubscribed (her "no" is later than her consent), the
    # reader gone from the source is unsubscribed, no row is created beside another, and the later
    # runs have nothing to do
    assert [report.outcome for report in reports] == [Outcome.CONVERGED] * 3
    stored = {row["email"]: row for row in emulator.state.subscribers(1)}
    assert stored["zoë@xn--exmple-cua.org"]["subscribed"] is True
    assert stored["ana@xn--caf-dma.fr"]["subscribed"] is False
    assert stored["gone@xn--caf-dma.fr"]["subscribed"] is False
    assert len(stored) == 43 and emulator.state.twins == [] and emulator.state.resubscriptions == []
    assert [op.email for op in reports[0].plan.to_unsubscribe] == ["gone@xn--caf-dma.fr"]  # Ownpage's spelling
    assert reports[1].plan.is_empty and reports[2].plan.is_empty


@pytest.mark.parametrize(
    "spelling",
    ["ana@i\u2764\ufe0f.ws", "ana@\uff43\uff41\uff46é.fr", "ana@\u24d2afé.fr"],
    ids=["emoji-variation-selector", "full-width", "circled"],
)
def test_a_domain_ownpage_maps_in_idna_never_unsubscribes_the_reader_the_source_lists(
    emulator: Any, spelling: str
) -> None:
    # Given an Ownpage keeping domains in IDNA through a mapping (IDNA 2003's: variation selectors
    # dropped, full-width and circled letters made plain), and a source listing a reader whose domain
    # it maps, among others
    emulator.set_faults(domains="idna")
    readers = [spelling, *(f"filler{n}@example.com" for n in range(40))]
    rows = [RawSubscriber(email, f"row {n}") for n, email in enumerate(readers)]
    # When the sync runs three times (the first subscribes her: Ownpage keeps another domain's form)
    reports = [run(emulator, rows) for _ in range(3)]
    # Then she is never unsubscribed: the row Ownpage made of her, and her address as the source
    # spells it, are one reader to a loose matching, so neither write of the pair is made, and the
    # runs say they are not in step (found by an adversarial run)
    assert all(row["subscribed"] for row in emulator.state.subscribers(1))
    assert [r.plan.to_unsubscribe for r in reports] == [(), (), ()]
    assert [r.outcome for r in reports[1:]] == [Outcome.NOT_CONVERGED] * 2 and reports[1].plan.held == 2


@pytest.mark.parametrize(
    ("matching", "ownpage_spelling", "source_spelling"),
    [
        ("exact", "Ana@Example.org", "ana@example.org"),  # an Ownpage keeping and matching its spelling
        ("case_insensitive", unicodedata.normalize("NFD", "josé@example.org"), "josé@example.org"),  # NFD stored
    ],
    ids=["exact-matching", "nfd-spelling"],
)
def test_a_deleted_row_and_a_sign_up_during_the_read_cannot_hide_a_skipped_no(
    emulator: Any, matching: str, ownpage_spelling: str, source_spelling: str
) -> None:
    # Given 2,000 rows: at offset 500 a bounce the publisher no longer lists, at offset 1,000 (the
    # first row of the second page) a reader who unsubscribed herself, in Ownpage's own spelling,
    # whom the publisher's database still lists
    unsubscribed = {"subscribed": False, "unsubscribed_at": "2025-01-01T00:00:00Z"}
    seeded: list[dict[str, Any]] = [{"email": f"reader{n:04d}@example.org", "subscribed": True} for n in range(2000)]
    seeded[500] = {"email": "bounced@example.org", "unsubscribed_cause": "HARD_BOUNCE", **unsubscribed}
    seeded[1000] = {"email": ownpage_spelling, "unsubscribed_cause": "READER", **unsubscribed}
    emulator.state.seed(1, seeded)
    # And, once the first page is served, someone deletes the bounce in the dashboard (the offsets
    # shift: her row moves to the end of the first page) and a reader signs up: the list's total and
    # its unsubscribed rows still add up to what the read saw
    emulator.set_faults(matching=matching, delete_offset=500)
    after_first_page(emulator, lambda: emulator.state.seed(1, [{"email": "newcomer@example.org", "subscribed": True}]))
    rows = [RawSubscriber(str(row["email"]), f"row {n}") for n, row in enumerate(seeded) if n not in (500, 1000)]
    rows += [RawSubscriber(source_spelling, "row ana"), RawSubscriber("newcomer@example.org", "row new")]

    # When the sync runs, paging 1,000 rows at a time
    report = run(emulator, rows, OWNPAGE_PAGE_SIZE="1000")

    # Then the read was not taken as complete on its first pass (a reader's cause was short), the
    # reader's "no" was found, and no row was created beside hers
    assert report.read.passes == ["all", "all"] and report.read.complete
    assert emulator.state.twins == [] and emulator.state.resubscriptions == []
    stored = [row for row in emulator.state.subscribers(1) if row["email"] in (ownpage_spelling, source_spelling)]
    assert [(row["email"], row["subscribed"]) for row in stored] == [(ownpage_spelling, False)]
    assert report.outcome == Outcome.CONVERGED


def test_a_no_the_counts_cannot_show_missing_is_held_when_the_last_read_saw_it_spelled_otherwise(
    emulator: Any, aws: str, unique: str
) -> None:
    # Given an Ownpage that keeps and matches spellings exactly, holding a reader's "no" as
    # `Ana@Example.org` (offset 1,000) whom the publisher lists as `ana@example.org`, and the run
    # table (moto) where the last complete read keeps what it saw of other spellings
    dynamodb = aws_client(aws, "dynamodb")
    create_run_table(dynamodb, f"runs-{unique}")
    ledger = DynamoDbRunLedger(f"runs-{unique}", client=dynamodb)
    unsubscribed = {"subscribed": False, "unsubscribed_cause": "READER", "unsubscribed_at": "2025-01-01T00:00:00Z"}
    seeded: list[dict[str, Any]] = [{"email": f"reader{n:04d}@example.org", "subscribed": True} for n in range(2000)]
    seeded[1000] = {"email": "Ana@Example.org", **unsubscribed}
    emulator.state.seed(1, seeded)
    emulator.set_faults(matching="exact")
    rows = [RawSubscriber(str(row["email"]).lower(), f"row {n}") for n, row in enumerate(seeded)]
    rows.append(RawSubscriber("newcomer@example.org", "row new"))
    first = run(emulator, rows[:-1], ledger=ledger, OWNPAGE_PAGE_SIZE="1000")
    assert first.outcome == Outcome.CONVERGED and first.plan.is_empty

    # When, during the next run's read, a subscribed row already read is deleted (her row slips to
    # the first page, already read), another reader unsubscribes himself and a reader signs up: every
    # count, cause by cause, still adds up to what that read saw
    def dashboard() -> None:
        emulator.state.delete_emails(1, ["reader0500@example.org"])
        emulator.state.seed(1, [{"email": "reader1500@example.org", **unsubscribed}])
        emulator.state.seed(1, [{"email": "newcomer@example.org", "subscribed": True}])

    after_first_page(emulator, dashboard)
    second = run(emulator, rows, ledger=ledger, OWNPAGE_PAGE_SIZE="1000")

    # Then the read passes for complete, but her address, which the last read saw spelled otherwise
    # and this one not at all, is not subscribed: held (reported, not converged), no row beside hers
    assert second.read.complete and second.read.passes == ["all"]
    assert second.plan.to_subscribe == () and second.plan.held == 1 and second.outcome == Outcome.NOT_CONVERGED
    assert emulator.state.twins == [] and emulator.state.resubscriptions == []
    # And the fast lane, reading this run's snapshot, cannot take her for a new address either
    snapshot = ledger.spellings()
    assert snapshot is not None and not snapshot.proves_new("ana@example.org", second.started_at, 3600)

    # And the next run, reading her again, keeps her "no" and has nothing left to do for her
    third = run(emulator, rows, ledger=ledger, OWNPAGE_PAGE_SIZE="1000")
    assert third.outcome == Outcome.CONVERGED and third.plan.held == 0
    assert [
        row["subscribed"] for row in emulator.state.subscribers(1) if row["email"].lower() == "ana@example.org"
    ] == [False]


def _cli_env(monkeypatch: pytest.MonkeyPatch, emulator: Any, table: str, **extra: str) -> None:
    for name, value in {
        "OWNPAGE_API_URL": emulator.url,
        "OWNPAGE_LIST_ID": "1",
        "OWNPAGE_CLIENT": "demo",
        "OWNPAGE_API_KEY": "demo-key",
        "SOURCE_KIND": "dynamodb",
        "SOURCE_TABLE": table,
        "SOURCE_SUBSCRIBED_ATTRIBUTE": "newsletter",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        **extra,
    }.items():
        monkeypatch.setenv(name, value)


def test_re_listing_the_removed_readers_trips_the_guard_and_a_first_run_does_not(
    aws: str, emulator: Any, unique: str, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Given a DynamoDB table of 2,000 readers (moto, over HTTP), and an Ownpage list that is empty
    dynamodb = aws_client(aws, "dynamodb")
    table = f"guard-{unique}"
    dynamodb.create_table(
        TableName=table,
        AttributeDefinitions=[{"AttributeName": "email", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "email", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )

    def put(n: int, listed: bool) -> None:
        dynamodb.put_item(TableName=table, Item={"email": {"S": f"r{n}@example.org"}, "newsletter": {"BOOL": listed}})

    for n in range(2_000):
        put(n, True)
    _cli_env(monkeypatch, emulator, table)

    # When the first run goes onto the empty list
    first = cli(["run", "--json", "--no-progress"])
    first_report = json.loads(capsys.readouterr().out)

    # Then nothing trips: everyone is subscribed, exit 0
    assert (first, first_report["outcome"]) == (0, "converged")
    assert sum(row["subscribed"] for row in emulator.state.subscribers(1)) == 2_000

    # Given the publisher then removed 40 readers, and the next run unsubscribed them
    for n in range(40):
        put(n, False)
    assert cli(["run", "--json", "--no-progress", "--max-unsubscribe", "40"]) == 0
    capsys.readouterr()
    posts = len(emulator.state.requests)

    # When a broken filter lists everyone again
    for n in range(40):
        put(n, True)
    status = cli(["run", "--json", "--no-progress"])
    report = json.loads(capsys.readouterr().out)

    # Then the plan re-subscribing the removed readers writes nothing and exits non-zero, naming the guard
    assert status == 3 and report["outcome"] == "guard_tripped"
    assert [trip["guard"] for trip in report["guards"]["tripped"]] == ["resubscribe_removed"]
    assert [r for r in emulator.state.requests[posts:] if r.method == "POST" and r.path.endswith("/subscribers")] == []
    assert sum(row["subscribed"] for row in emulator.state.subscribers(1)) == 1_960

    # When the publisher confirms it: an allowance one short still writes nothing, the line names the
    # allowance that fits; the exact allowance re-subscribes the 40 and the run converges
    short = cli(["run", "--json", "--no-progress", "--max-resubscribe", "39"])
    err = capsys.readouterr().err
    assert short == 3 and "--max-resubscribe 40" in err
    assert sum(row["subscribed"] for row in emulator.state.subscribers(1)) == 1_960
    assert cli(["run", "--json", "--no-progress", "--max-resubscribe", "40"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "converged"
    assert sum(row["subscribed"] for row in emulator.state.subscribers(1)) == 2_000


def test_a_cli_run_that_outlives_its_lease_cannot_write_beside_another_run(aws: str, unique: str) -> None:
    # Given the stack's run table (moto), a run holding a 60-second lease, and a clock that lets a
    # second run start once that lease has run out (the first run was slow, its heartbeat stalled)
    dynamodb = aws_client(aws, "dynamodb")
    table = f"runs-{unique}"
    create_run_table(dynamodb, table)
    start = datetime.now(UTC)
    first_clock = [start]
    first_ledger = DynamoDbRunLedger(table, client=dynamodb, clock=lambda: first_clock[0])
    keeper = LeaseKeeper(first_ledger, "20260101T000000Z-first", 60, clock=lambda: first_clock[0])
    deadline = Deadline.unlimited()
    deadline.bound_by(keeper.remaining)
    assert deadline.remaining() > 0

    # When the lease ends and another run takes it
    later = start + timedelta(seconds=61)
    second = DynamoDbRunLedger(table, client=dynamodb, clock=lambda: later)
    second.acquire("20260101T000101Z-second", 60)
    first_clock[0] = later

    # Then the first run has no time left at all, and renewing cannot give it back: the second run
    # holds a live lease, so the conditional renewal is refused and the first run stays stopped
    assert deadline.expired()
    keeper.renew()
    assert keeper.lost and deadline.expired()
    assert second.lease() is not None and second.lease().run_id == "20260101T000101Z-second"


def test_an_unsubscribe_that_changed_no_row_keeps_the_run_from_converging_until_it_has(emulator: Any) -> None:
    # Given a reader gone from the source, who unsubscribes herself on Ownpage's side between the
    # run's read and its write
    readers = [f"reader{n:02d}@example.org" for n in range(40)]
    emulator.state.seed(1, [{"email": email, "subscribed": True} for email in [*readers, "gone@example.org"]])
    source = [RawSubscriber(email, f"row {n}") for n, email in enumerate(readers)]
    write = emulator.state.upsert

    def upsert(list_id: int, entries: Any, *args: Any, **kwargs: Any) -> Any:
        write(list_id, [{"email": "gone@example.org", "subscribed": False, "unsubscribed_cause": "READER"}])
        return write(list_id, entries, *args, **kwargs)

    emulator.state.upsert = upsert
    # When the run unsubscribes her (Ownpage's summary: nb_unsubscribed 0 of 1)
    first = run(emulator, source)
    emulator.state.upsert = write
    # Then the run does not claim Ownpage in step on that write (the row it wrote to was not as read:
    # on a case-folding Ownpage, another row); her own cause stays; the next run, reading her as she
    # is, converges
    assert first.outcome == Outcome.NOT_CONVERGED and first.counts()["writes_off_target"] == 1  # WritesOffTarget
    [row] = [row for row in emulator.state.subscribers(1) if row["email"] == "gone@example.org"]
    assert row["unsubscribed_cause"] == "READER"
    assert run(emulator, source).outcome == Outcome.CONVERGED
