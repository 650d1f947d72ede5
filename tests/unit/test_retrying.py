"""The retry path's logic over in-memory fakes of the ports (tests/fakes.py: Ownpage's documented
upsert, a source, a run ledger): what is re-sent, what is dropped as stale and why, what supersedes a
message, and what makes it fail (to be delivered again). The adapters behind the ports are tested
for real in tests/integration/test_retry_path.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import (
    InvalidRetryMessage,
    OwnpageRejected,
    OwnpageUnavailable,
    RetryNotConverged,
    SourceError,
    SourceMisconfigured,
)
from ownpage_sync.models import Action, Operation, OwnpageSubscriber
from ownpage_sync.ports import Failure, OwnpageLookup, Rejection, UpsertResult
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.retrying import (
    ALREADY_APPLIED,
    BACK_IN_SOURCE,
    GONE_FROM_SOURCE,
    IGNORED_BY_OWNPAGE,
    NOT_CONFIRMED,
    NOT_ON_OWNPAGE,
    SUPERSEDED,
    SUPERSEDED_BY_RUN,
    SUPPRESSED_ON_OWNPAGE,
    UNDECIDED,
    UNPROVEN,
    RetryTarget,
    describe_failure,
    retry_message,
)
from ownpage_sync.sources.base import RawSubscriber, SourceLookup
from ownpage_sync.spellings import SpellingSnapshot

from tests.fakes import FakeOwnpage, InMemoryLedger, InMemorySource, Row

pytestmark = pytest.mark.unit

LIST_ID = 3
LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)
RUN_ID = "20250301T060000Z-abcd1234"
RUN_STARTED_AT = datetime(2025, 3, 1, 6, 0, 0, 500_000, tzinfo=UTC)
UNLIMITED = Deadline.unlimited()


class Source(InMemorySource):
    """The source as a look-up sees it: rows by address, some keys it cannot be sure about, and
    spellings it cannot find (as an exact key look-up misses a mixed-case key)."""

    def __init__(
        self, rows: Mapping[str, Mapping[str, str]], inconclusive: Collection[str] = (), missed: Collection[str] = ()
    ):
        super().__init__([RawSubscriber(email, "fake", f"g-{email[0]}", dict(data)) for email, data in rows.items()])
        self.inconclusive = frozenset(inconclusive)
        self.missed = frozenset(missed)
        self.lookups: list[tuple[set[str], set[str]]] = []

    def lookup(self, keys: Collection[str], also: Collection[str] = ()) -> SourceLookup:
        self.lookups.append((set(keys), set(also)))
        found = super().lookup(keys, also)
        rows = [row for row in found.rows if row.email not in self.missed]
        return SourceLookup(rows, self.inconclusive & set(keys))


class Ownpage(FakeOwnpage):
    """FakeOwnpage, plus what a test needs to see or inject: calls, a failure, refused addresses."""

    def __init__(self, rows: Sequence[Row] = (), matching: str = "canonical"):
        super().__init__(rows, matching=matching)
        self.failure: Exception | None = None
        self.invalid: set[str] = set()
        self.found: list[dict[str, list[str]]] = []
        self.full_reads = 0

    def read_pages(self, list_id: int, **kwargs: Any) -> Iterator[list[OwnpageSubscriber]]:
        self.full_reads += 1
        return super().read_pages(list_id, **kwargs)

    def find_many(self, list_id: int, wanted: Mapping[str, Sequence[str]], fields: Sequence[str] = ()) -> OwnpageLookup:
        self.found.append({key: list(spellings) for key, spellings in wanted.items()})
        return super().find_many(list_id, wanted, fields)

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
        if self.failure is not None:
            raise self.failure
        accepted = [op for op in operations if op.email not in self.invalid]
        super().upsert(list_id, accepted)
        rejected = tuple(Rejection(op.email, "email is not valid") for op in operations if op.email in self.invalid)
        return UpsertResult(sent=len(operations), rejected=rejected)

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [payload for post in self.posts for payload in post]


class SloppySearch(Ownpage):
    """An OwnpageLists that does not honour the port's promise to check matches: it answers a look-up
    as a server ignoring `exact` does (every address containing the spelling), cut at `limit` rows as
    one page of the real client's look-up is. A fake because the point is recheck's own safety when
    the rows it is given are not the ones it asked for."""

    def __init__(self, rows: Sequence[Row] = (), limit: int = 100):
        super().__init__(rows)
        self.limit = limit

    def find(self, list_id: int, spellings: Any, fields: Sequence[str] = ()) -> list[OwnpageSubscriber]:
        return self._answer(spellings)[: self.limit]

    def _answer(self, spellings: Any) -> list[OwnpageSubscriber]:
        needles = [spelling.lower() for spelling in spellings]
        return [row.read() for row in self.rows.values() if any(n in row.email.lower() for n in needles)]

    def find_many(self, list_id: int, wanted: Mapping[str, Sequence[str]], fields: Sequence[str] = ()) -> OwnpageLookup:
        # As the real client: an answer that fills every page it may read leaves the key undecided.
        found = super().find_many(list_id, wanted, fields)
        undecided = {key for key, spellings in wanted.items() if len(self._answer(spellings)) >= self.limit}
        return OwnpageLookup(found.rows, frozenset(undecided))


def target(source: Source, ownpage: Ownpage, ledger: InMemoryLedger | None = None) -> RetryTarget:
    return RetryTarget(source, lambda deadline: ownpage, LIST_ID, batch_size=50, ledger=ledger)


def queued(*operations: Operation, run_started_at: datetime | None = RUN_STARTED_AT) -> RetryMessage:
    failure = Failure("unavailable", "HTTP 503", status=503)
    return RetryMessage.for_failure(LIST_ID, RUN_ID, operations, failure, run_started_at)


def sub(email: str, city: str = "Paris") -> Operation:
    return Operation(Action.SUBSCRIBE, email, guid=f"g-{email[0]}", data={"city": city})


def resub(email: str, city: str = "Paris") -> Operation:
    return Operation(Action.RESUBSCRIBE, email, guid=f"g-{email[0]}", data={"city": city})


def unsub(email: str) -> Operation:
    return Operation(Action.UNSUBSCRIBE, email, unsubscribed_cause="PUBLISHER")


def reader_said_no(email: str) -> Row:
    return Row(email, False, guid=f"g-{email[0]}", unsubscribed_cause="READER", unsubscribed_at=LONG_AGO)


# -- what is sent -----------------------------------------------------------------------------------


def test_still_wanted_operations_are_sent_with_todays_data() -> None:
    # Given a queued subscribe whose city changed in the source since, and a queued unsubscribe still due
    source = Source({"anne@example.com": {"city": "Lyon"}})
    ownpage = Ownpage([Row("bruno@example.com", True)])

    # When the message is retried
    result = retry_message(
        queued(sub("anne@example.com", "Paris"), unsub("bruno@example.com")), target(source, ownpage), UNLIMITED
    )

    # Then both are sent, the subscribe by omission with the source's current city; nothing is stale
    assert result.sent == 2 and result.stale_total == 0
    assert result.applied == {"subscribe": 1, "unsubscribe": 1}
    anne = ownpage.rows["anne@example.com"]
    assert anne.subscribed and anne.data["city"] == "Lyon"
    assert ownpage.rows["bruno@example.com"].unsubscribed_cause == "PUBLISHER"
    assert {p["email"]: p.get("subscribed") for p in ownpage.payloads} == {
        "anne@example.com": None,  # no `subscribed` field: a row the look-up missed keeps its status
        "bruno@example.com": False,
    }


def test_a_subscribe_is_sent_the_way_the_planner_would_send_it_now() -> None:
    # Given a queued subscribe (the run's read did not show the row) for a row Ownpage now shows as
    # unsubscribed by the publisher, and the reader in the source
    source = Source({"dmitri@example.com": {"city": "Nantes"}})
    ownpage = Ownpage([Row("Dmitri@Example.com", False, unsubscribed_cause="PUBLISHER", unsubscribed_at=LONG_AGO)])

    # When retried
    result = retry_message(queued(sub("dmitri@example.com", "Nantes")), target(source, ownpage), UNLIMITED)

    # Then it goes out as the planner plans it today: a re-subscribe, to Ownpage's own spelling
    assert result.applied == {"resubscribe": 1}
    assert ownpage.payloads == [
        {"email": "Dmitri@Example.com", "subscribed": True, "guid": "g-d", "data_city": "Nantes"}
    ]


def test_an_unsubscribe_reaches_every_spelling_ownpage_holds() -> None:
    # Given an Ownpage that keeps spellings apart, holding one reader under two, both subscribed,
    # and the reader gone from the source
    source = Source({})
    ownpage = Ownpage([Row("Ann@Example.com", True), Row("ann@example.com ", True)], matching="exact")

    # When a queued unsubscribe for one spelling is retried
    result = retry_message(queued(unsub("Ann@Example.com")), target(source, ownpage), UNLIMITED)

    # Then both rows are unsubscribed, each under its own spelling
    assert result.applied == {"unsubscribe": 2}
    assert sorted(p["email"] for p in ownpage.payloads) == ["Ann@Example.com", "ann@example.com "]


def test_a_duplicate_operation_in_a_message_is_sent_once() -> None:
    # Given a message listing the same subscribe twice
    source = Source({"anne@example.com": {"city": "Paris"}})
    ownpage = Ownpage()

    # When retried
    result = retry_message(queued(sub("anne@example.com"), sub("anne@example.com")), target(source, ownpage), UNLIMITED)

    # Then Ownpage receives it once
    assert result.sent == 1 and len(ownpage.payloads) == 1


def test_the_good_operations_of_a_message_with_a_bad_entry_are_applied(caplog: pytest.LogCaptureFixture) -> None:
    # Given a 500-operation message in which one entry is not an operation (edited by hand, say)
    emails = [f"reader{i:03d}@example.com" for i in range(500)]
    source = Source({email: {"city": "Paris"} for email in emails})
    ownpage = Ownpage()
    body = queued(*map(sub, emails)).to_dict()
    body["operations"][321] = {"action": "subscribe", "email": emails[321], "data": ["not", "an", "object"]}
    message = RetryMessage.from_json(json.dumps(body))

    # When retried
    with caplog.at_level(logging.WARNING, logger="ownpage_sync"):
        result = retry_message(message, target(source, ownpage), UNLIMITED)

    # Then the 499 others are applied, the bad entry is counted and named by index, without its address
    assert result.sent == 499 and result.applied == {"subscribe": 499}
    assert result.invalid == 1 and result.to_log()["invalid_operations"] == 1
    assert set(ownpage.rows) == set(emails) - {emails[321]}
    (warning,) = [r for r in caplog.records if "not operations" in r.getMessage()]
    assert warning.first == (321, "data must be an object of strings")  # type: ignore[attr-defined]
    assert "@" not in str(vars(warning))


# -- what is dropped, and why ------------------------------------------------------------------------


def test_stale_operations_are_dropped_and_counted_by_reason() -> None:
    # Given queued operations each overtaken by a change since they failed
    source = Source(
        {
            "back@example.com": {"city": "Brest"},  # unsubscribe queued, but they are in the source again
            "reader@example.com": {},  # subscribe queued, then they unsubscribed on Ownpage (READER)
            "done@example.com": {"city": "Paris"},  # subscribe queued, already applied by a later run
            "moved@example.com": {"city": "Lyon"},  # update queued; Ownpage row since unsubscribed by us
        },
        inconclusive={"unsure@example.com", "undecided@example.com"},
    )
    ownpage = Ownpage(
        [
            Row("back@example.com", True),  # subscribed, without the source's guid and city
            reader_said_no("reader@example.com"),
            Row("done@example.com", True, guid="g-d", data={"city": "Paris"}),
            Row("moved@example.com", False, unsubscribed_cause="PUBLISHER", unsubscribed_at=LONG_AGO),
            Row("left@example.com", False, unsubscribed_cause="PUBLISHER", unsubscribed_at=LONG_AGO),
            Row("undecided@example.com", True),
        ]
    )
    message = queued(
        sub("gone@example.com"),  # removed from the source since
        unsub("back@example.com"),
        sub("reader@example.com"),
        sub("done@example.com"),
        Operation(Action.UPDATE, "moved@example.com", data={"city": "Lyon"}),
        unsub("left@example.com"),  # already unsubscribed on Ownpage
        unsub("nobody@example.com"),  # no such row on Ownpage
        sub("unsure@example.com"),  # the look-up cannot say it is gone, nor find it
        unsub("undecided@example.com"),  # the look-up cannot say it is gone: the next full run decides
    )

    # When retried
    result = retry_message(message, target(source, ownpage), UNLIMITED)

    # Then nothing is sent — not even the update the planner now wants for the reader back in the
    # source (only the queued direction is ever replayed) — and each is counted under its reason
    assert ownpage.posts == [] and result.sent == 0
    assert result.stale == {
        GONE_FROM_SOURCE: 1,
        BACK_IN_SOURCE: 1,
        SUPPRESSED_ON_OWNPAGE: 1,
        ALREADY_APPLIED: 2,
        SUPERSEDED: 1,
        NOT_ON_OWNPAGE: 1,
        NOT_CONFIRMED: 1,
        UNDECIDED: 1,
    }
    assert ownpage.rows["reader@example.com"].subscribed is False  # the reader's no is respected
    assert ownpage.rows["undecided@example.com"].subscribed is True


def test_an_unsubscribe_is_not_replayed_when_the_look_up_misses_the_readers_new_spelling() -> None:
    # Given a reader gone when the run queued their unsubscribe, back in the source since under a
    # spelling the look-up cannot find (a mixed-case key), which it says it cannot be sure about
    source = Source({"Chloe@Example.com": {}}, inconclusive={"chloe@example.com"}, missed={"Chloe@Example.com"})
    ownpage = Ownpage([Row("chloe@example.com", True)])

    # When the queued unsubscribe is retried
    result = retry_message(queued(unsub("chloe@example.com")), target(source, ownpage), UNLIMITED)

    # Then nothing is sent: the next full run (which reads every spelling) decides
    assert ownpage.posts == [] and result.stale == {UNDECIDED: 1}
    assert ownpage.rows["chloe@example.com"].subscribed is True


@pytest.mark.parametrize("queued_as", [sub, resub], ids=["subscribe", "resubscribe"])
@pytest.mark.parametrize("crowded_out", [False, True], ids=["found", "crowded-out"])
def test_a_reader_who_said_no_is_never_sent_subscribed_true_even_by_a_search_ignoring_exact(
    queued_as: Any, crowded_out: bool
) -> None:
    # Given a reader in the source who unsubscribed on Ownpage (READER) after their subscribe was
    # queued, and look-ups that answer every address containing theirs (subscribed look-alikes not in
    # the source) — with so many look-alikes first, in one variant, that their own row is cut off
    look_alikes = [Row(f"{i:03d}elodie@example.com", True) for i in range(150 if crowded_out else 3)]
    rows = [*look_alikes, reader_said_no("elodie@example.com")]
    ownpage = SloppySearch(rows)
    source = Source({"elodie@example.com": {"city": "Genève"}})

    # When the queued operation is retried
    result = retry_message(queued(queued_as("elodie@example.com", "Genève")), target(source, ownpage), UNLIMITED)

    # Then no `subscribed: true` ever reaches Ownpage, her row keeps the READER cause, and no
    # look-alike is written to (nothing is planned for an address the message does not hold)
    assert ownpage.resubscribed == []
    assert all(p.get("subscribed") is not True for p in ownpage.payloads)
    assert ownpage.rows["elodie@example.com"].unsubscribed_cause == "READER"
    assert {p["email"] for p in ownpage.payloads} <= {"elodie@example.com"}
    if crowded_out:  # not seen: sent by omission, which Ownpage applies to a new address only
        assert ownpage.payloads == [{"email": "elodie@example.com", "guid": "g-e", "data_city": "Genève"}]
    else:
        assert result.stale == {SUPPRESSED_ON_OWNPAGE: 1} and ownpage.posts == []


@pytest.mark.parametrize("in_source", [False, True], ids=["gone", "back-in-source"])
def test_an_unsubscribe_ownpages_search_cannot_decide_is_left_to_the_next_run_never_sent_blind(
    in_source: bool,
) -> None:
    # Given a reader the run read subscribed and queued an unsubscribe for, whom Ownpage's search
    # (ignoring `exact`) crowds out with look-alikes, so the look-up cannot find her row
    look_alikes = [Row(f"{i:03d}marie@example.com", True) for i in range(150)]
    ownpage = SloppySearch([*look_alikes, Row("Marie@Example.com", True)])
    source = Source({"marie@example.com": {}} if in_source else {})

    # When the queued unsubscribe (in Ownpage's spelling) is retried
    result = retry_message(queued(unsub("Marie@Example.com")), target(source, ownpage), UNLIMITED)

    # Then nothing is sent: back in the source, it is dropped as before; gone from it, the unsubscribe
    # is not proven due (her row may be unsubscribed by herself since, and a blind write could restate
    # the cause as the publisher's), so the next full run, which sees her row, decides
    assert ownpage.posts == [] and ownpage.rows["marie@example.com"].subscribed is True
    assert result.stale == ({BACK_IN_SOURCE: 1} if in_source else {UNDECIDED: 1})


# -- superseded messages ------------------------------------------------------------------------------


def test_a_message_older_than_the_last_converged_run_is_superseded() -> None:
    # Given a converged run that started after the run which queued this message
    source = Source({"anne@example.com": {}})
    ownpage = Ownpage()
    ledger = InMemoryLedger(converged_start=RUN_STARTED_AT + timedelta(minutes=30))

    # When the message is retried
    result = retry_message(
        queued(sub("anne@example.com"), unsub("gone@example.com")), target(source, ownpage, ledger), UNLIMITED
    )

    # Then every operation is dropped unread: that run planned from a fresh read of both sides
    assert result.stale == {SUPERSEDED_BY_RUN: 2} and result.sent == 0
    assert source.lookups == [] and ownpage.found == [] and ownpage.posts == []


@pytest.mark.parametrize(
    ("converged_start", "run_started_at"),
    [
        (None, RUN_STARTED_AT),  # no converged run yet
        (RUN_STARTED_AT, RUN_STARTED_AT),  # the message's own run (it queued, so it did not converge)
        (RUN_STARTED_AT - timedelta(days=1), RUN_STARTED_AT),  # an older converged run
        (RUN_STARTED_AT + timedelta(days=1), None),  # no known run start: never superseded by guesswork
    ],
)
def test_a_message_not_older_than_the_last_converged_run_is_retried(
    converged_start: datetime | None, run_started_at: datetime | None
) -> None:
    # Given a message, the ledger's last converged run start, and a complete read that saw no other
    # spelling of the address
    source = Source({"anne@example.com": {}})
    ownpage = Ownpage()
    message = replace(queued(sub("anne@example.com")), run_started_at=run_started_at)
    ledger = InMemoryLedger(converged_start=converged_start)
    ledger.put_spellings(SpellingSnapshot.of_keys("run-2", datetime.now(UTC), []))

    # When retried
    result = retry_message(message, target(source, ownpage, ledger), UNLIMITED)

    # Then it is re-checked and sent
    assert result.sent == 1 and result.stale_total == 0


@pytest.mark.parametrize(
    ("snapshot", "replayed"),
    [
        (SpellingSnapshot.of_keys("run-2", datetime.now(UTC), ["zoe@example.com"]), True),  # another key only
        (SpellingSnapshot.of_keys("run-2", datetime.now(UTC), ["anne@example.com"]), False),  # a twin seen
        (SpellingSnapshot.of_keys("run-2", datetime.now(UTC) - timedelta(days=2), []), False),  # too old
        (None, False),  # no complete read on record
    ],
)
def test_a_queued_subscribe_is_replayed_only_when_the_last_complete_read_saw_no_other_spelling(
    snapshot: SpellingSnapshot | None, replayed: bool
) -> None:
    # Given a queued subscribe, and what the last complete read saw of other spellings
    source = Source({"anne@example.com": {}})
    ownpage = Ownpage()
    ledger = InMemoryLedger()
    ledger.snapshot = snapshot

    # When retried
    result = retry_message(queued(sub("anne@example.com")), target(source, ownpage, ledger), UNLIMITED)

    # Then it is sent only when that read proves Ownpage holds no other spelling of the address (an
    # exact-matching Ownpage's search would miss a suppressed `Anne@Example.com`); otherwise it is left
    # to the next full run, counted
    assert (result.sent, result.stale.get(UNPROVEN, 0)) == ((1, 0) if replayed else (0, 1))
    # ... unless the operator vouches that Ownpage's search finds every spelling
    vouched = replace(target(source, Ownpage(), ledger), search_finds_every_spelling=True)
    assert retry_message(queued(sub("anne@example.com")), vouched, UNLIMITED).sent == 1


def test_a_version_1_message_is_superseded_by_its_run_ids_time() -> None:
    # Given a version 1 body (no run_started_at) from a run that began on 1 March at 06:00
    body = queued(sub("anne@example.com")).to_dict() | {"schema_version": 1}
    del body["run_started_at"]
    message = RetryMessage.from_json(json.dumps(body))
    ownpage = Ownpage()

    # When a run converged later that morning
    ledger = InMemoryLedger(converged_start=datetime(2025, 3, 1, 7, 0, tzinfo=UTC))
    result = retry_message(message, target(Source({"anne@example.com": {}}), ownpage, ledger), UNLIMITED)

    # Then the message is superseded
    assert result.stale == {SUPERSEDED_BY_RUN: 1} and ownpage.posts == []


# -- cost and scope ----------------------------------------------------------------------------------


def test_only_the_message_addresses_are_read_on_either_side() -> None:
    # Given an Ownpage list and a source far larger than the message
    source = Source({f"r{i}@example.com": {"city": "Paris"} for i in range(1_000)})
    ownpage = Ownpage([Row(f"o{i}@example.com", True) for i in range(1_000)])

    # When a message of three operations is retried, one spelled as Ownpage spells it
    message = queued(sub("r1@example.com"), sub("r2@example.com"), unsub("O7@Example.com"))
    retry_message(message, target(source, ownpage), UNLIMITED)

    # Then the source and Ownpage were each asked once, about those three keys (and Ownpage's
    # spelling), the list was never read in full, and nobody else was written to
    assert source.lookups == [({"r1@example.com", "r2@example.com", "o7@example.com"}, {"O7@Example.com"})]
    assert ownpage.found == [
        {
            "o7@example.com": ["O7@Example.com", "o7@example.com"],
            "r1@example.com": ["r1@example.com"],
            "r2@example.com": ["r2@example.com"],
        }
    ]
    assert ownpage.full_reads == 0
    assert {p["email"] for p in ownpage.payloads} == {"r1@example.com", "r2@example.com", "o7@example.com"}


def test_an_address_written_by_one_message_is_read_again_for_the_next() -> None:
    # Given the same message delivered twice (at-least-once delivery, or a redrive)
    source = Source({"ann@example.org": {"city": "Paris"}})
    ownpage = Ownpage()
    retry = target(source, ownpage)
    body = queued(sub("ann@example.org")).to_json()

    # When both copies are retried
    first = retry_message(RetryMessage.from_json(body), retry, UNLIMITED)
    second = retry_message(RetryMessage.from_json(body), retry, UNLIMITED)

    # Then the second sees Ownpage after the first's write, and sends nothing
    assert (first.sent, second.sent) == (1, 0)
    assert second.stale == {ALREADY_APPLIED: 1}
    assert len(ownpage.payloads) == 1


def test_each_invocation_gets_an_ownpage_client_bounded_by_its_own_deadline() -> None:
    # Given a target whose Ownpage factory records the deadline it is given
    handed: list[Deadline] = []
    ownpage = Ownpage()

    def factory(deadline: Deadline) -> Ownpage:
        handed.append(deadline)
        return ownpage

    retry = RetryTarget(Source({"ann@example.org": {}}), factory, LIST_ID)
    deadlines = [Deadline.after(60), Deadline.after(30)]

    # When two messages are retried in two invocations
    for deadline in deadlines:
        retry_message(queued(sub("ann@example.org")), retry, deadline)

    # Then each client was built with that invocation's deadline
    assert handed == deadlines


# -- failing, so SQS delivers again ------------------------------------------------------------------


def test_still_failing_operations_fail_the_message_transiently() -> None:
    # Given Ownpage still down
    ownpage = Ownpage()
    ownpage.failure = OwnpageUnavailable("service unavailable", status=503)

    # When retried
    with pytest.raises(RetryNotConverged) as raised:
        retry_message(queued(sub("anne@example.com")), target(Source({"anne@example.com": {}}), ownpage), UNLIMITED)

    # Then the error is transient, says why, and names no address
    assert raised.value.transient and raised.value.kind == "unavailable"
    assert "@" not in str(raised.value)


def test_no_time_left_fails_the_message_rather_than_losing_it() -> None:
    # Given an invocation whose time is already up
    ownpage = Ownpage()

    # When retried
    with pytest.raises(RetryNotConverged) as raised:
        retry_message(
            queued(sub("anne@example.com")), target(Source({"anne@example.com": {}}), ownpage), Deadline(lambda: 0.0)
        )

    # Then nothing was sent and the message will come back
    assert raised.value.kind == "deadline"
    assert ownpage.posts == []


class IgnoringOwnpage(Ownpage):
    """An Ownpage answering that it ignored the last entry of each write (a guid another entry has),
    while `ignoring`."""

    ignoring = True

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
        if not self.ignoring:
            return super().upsert(list_id, operations)
        super().upsert(list_id, operations[:-1])
        return UpsertResult(sent=len(operations), summary={"duplicate_guid_count": 1})


def test_operations_ownpage_ignored_fail_the_message_rather_than_count_as_applied() -> None:
    # Given two queued subscribes, the second of which Ownpage answers it ignored
    source = Source({"anne@example.com": {}, "bob@example.com": {}})
    ownpage = IgnoringOwnpage()
    message = queued(sub("anne@example.com"), sub("bob@example.com"))
    # When retried
    with pytest.raises(RetryNotConverged) as raised:
        retry_message(message, target(source, ownpage), UNLIMITED)
    # Then the message fails (SQS delivers it again, then parks it), says why, and names no address
    assert raised.value.transient and raised.value.kind == IGNORED_BY_OWNPAGE
    assert "1 of 2 operations" in str(raised.value) and "@" not in str(raised.value)
    # And delivered again, the re-check drops what is in step and sends only what is still missing
    ownpage.ignoring = False
    result = retry_message(message, target(source, ownpage), UNLIMITED)
    assert result.sent == 1 and result.stale_total == 1
    assert {"anne@example.com", "bob@example.com"} <= set(ownpage.rows)


def test_rejected_addresses_are_reported_masked_not_retried() -> None:
    # Given Ownpage refusing one of two addresses as invalid
    source = Source({"anne@example.com": {}, "bad@example.com": {}})
    ownpage = Ownpage()
    ownpage.invalid = {"bad@example.com"}

    # When retried
    result = retry_message(queued(sub("anne@example.com"), sub("bad@example.com")), target(source, ownpage), UNLIMITED)

    # Then the message succeeds, the rejection is counted and sampled masked
    assert result.rejected == 1
    assert result.rejected_samples == ["b***@e***.com"]
    assert "anne@example.com" in ownpage.rows


def test_a_message_for_another_list_is_refused_as_poison() -> None:
    # Given a message for list 99 delivered to the deployment serving list 3
    message = replace(queued(sub("anne@example.com")), list_id=99)
    source, ownpage = Source({}), Ownpage()

    # When retried / Then it is refused before any call
    with pytest.raises(InvalidRetryMessage):
        retry_message(message, target(source, ownpage), UNLIMITED)
    assert source.lookups == [] and ownpage.found == [] and ownpage.posts == []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidRetryMessage("body is not JSON"), "poison"),
        (RetryNotConverged("1 of 1 still failing", kind="unavailable"), "unavailable"),
        (OwnpageRejected("bad request", status=400), "rejected"),
        (SourceError("connection refused"), "source"),
        (SourceMisconfigured("table not found"), "source_configuration"),
        (KeyError("anne@example.com"), "unexpected"),
    ],
)
def test_failures_are_described_without_addresses(error: Exception, kind: str) -> None:
    # Given / When a failure is described for the error log
    described = describe_failure(error)

    # Then it has a stable kind, and a foreign exception's text (which could quote anything) is not used
    assert described["kind"] == kind
    assert "@" not in described["reason"]
