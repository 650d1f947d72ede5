"""The fast lane's logic over in-memory fakes of the ports (tests/fakes.py): what a record or an event
names, the cap, what happens when Ownpage cannot be read or the queue refuses, and what Lambda is
told. The real adapters (moto's DynamoDB Streams and SQS, the emulator) are in
tests/integration/test_fast_lane.py."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import ConfigurationError, OwnpageUnavailable, RetryQueueError, RunLedgerUnavailable
from ownpage_sync.fast_lane import (
    EVENT,
    HELD_NEW,
    HELD_RESUBSCRIBE,
    NOT_WRITTEN,
    OVER_BUDGET,
    OVER_CAP,
    STREAM,
    UNDECIDED,
    ChangeBatch,
    ChangeNotApplied,
    ChangeReport,
    FastLanePolicy,
    InvalidChangeEvent,
    apply_changes,
    batch_from_event,
)
from ownpage_sync.models import Operation, OwnpageSubscriber
from ownpage_sync.ports import Failure, QueueReceipt, UpsertResult
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.retrying import RetryTarget, retry_message
from ownpage_sync.settings import Settings
from ownpage_sync.sources.base import RawSubscriber, SourceLookup
from ownpage_sync.spellings import SpellingSnapshot

from tests.fakes import FakeOwnpage, InMemoryLedger, InMemorySource, Row

pytestmark = pytest.mark.unit

LIST_ID = 7
NOW = datetime(2025, 3, 1, 6, 0, 30, tzinfo=UTC)
UNLIMITED = Deadline.unlimited()


def record(
    sequence: str, new: dict[str, Any] | None = None, old: dict[str, Any] | None = None, at: float = 0.0
) -> dict[str, Any]:
    """A DynamoDB Stream record in Lambda's shape (images in DynamoDB JSON)."""
    data: dict[str, Any] = {"SequenceNumber": sequence, "Keys": {"user_id": {"S": sequence}}}
    if at:
        data["ApproximateCreationDateTime"] = at
    if new is not None:
        data["NewImage"] = {name: {"S": value} for name, value in new.items()}
    if old is not None:
        data["OldImage"] = {name: {"S": value} for name, value in old.items()}
    return {"eventName": "MODIFY", "eventSource": "aws:dynamodb", "dynamodb": data}


def event(detail: Any, time: str = "2025-03-01T06:00:00Z") -> dict[str, Any]:
    return {
        "version": "0",
        "id": "ev-1",
        "detail-type": "SubscriberChanged",
        "source": "ownpage-sync",
        "time": time,
        "detail": detail,
    }


class Sink:
    """The RetryQueue as the applier sees it: what was put, or a refusal after `refuse_after`."""

    def __init__(self, refuse_after: int | None = None):
        self.messages: list[RetryMessage] = []
        self.refuse_after = refuse_after

    def put(
        self,
        list_id: int,
        run_id: str,
        operations: Sequence[Operation],
        failure: Failure,
        run_started_at: datetime | None = None,
    ) -> QueueReceipt:
        kept = list(operations) if self.refuse_after is None else list(operations)[: self.refuse_after]
        if kept:
            self.messages.append(RetryMessage.for_failure(list_id, run_id, kept, failure, run_started_at))
        if len(kept) < len(operations):
            raise RetryQueueError(
                "retry queue q refused 1 of 1 messages: KMS.DisabledException", queued=len(kept), messages=1
            )
        return QueueReceipt(len(kept), 1)

    @property
    def operations(self) -> list[tuple[str, str]]:
        return [(op.action.value, op.email) for message in self.messages for op in message.operations]


class Unreadable(FakeOwnpage):
    """Ownpage down: every look-up fails (writes too)."""

    def find_many(self, list_id: int, wanted: Any, fields: Sequence[str] = ()) -> dict[str, list[OwnpageSubscriber]]:
        raise OwnpageUnavailable("HTTP 503 from Ownpage; gave up after 6 attempt(s)", status=503)

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> Any:
        raise OwnpageUnavailable("HTTP 503 from Ownpage", status=503)


def source(*emails: str, conclusive: bool = True) -> InMemorySource:
    return InMemorySource(
        [RawSubscriber(email, f"item {email[0]}", f"g-{email[0]}", {"city": "Lyon"}) for email in emails],
        conclusive=conclusive,
    )


def lane(src: InMemorySource, ownpage: FakeOwnpage) -> RetryTarget:
    return RetryTarget(src, lambda deadline: ownpage, LIST_ID, batch_size=100)


def changes(*emails: str, via: str = STREAM) -> ChangeBatch:
    return (
        batch_from_event({"Records": [record(str(i), new={"email": e}) for i, e in enumerate(emails)]}, "email")
        if via == STREAM
        else batch_from_event(event({"email": emails[0]}), "email")
    )


# -- what a record or an event names ----------------------------------------------------------------------


def test_a_stream_record_names_the_address_in_its_new_and_old_images() -> None:
    # Given a record moving a reader from one address to another, one keyed by the address, one without any
    records = [
        record("100", new={"email": "new@example.com"}, old={"email": "old@example.com"}, at=1740808800.5),
        {"dynamodb": {"SequenceNumber": "101", "Keys": {"email": {"S": "key@example.com"}}}},
        record("102", new={"name": "no address"}),
    ]
    # When the batch is read
    batch = batch_from_event({"Records": records}, "email")
    # Then both addresses of the move are re-checked (the old one may need an unsubscribe), the key
    # serves when it is the address, and the record without one is set aside, not failed
    assert batch.via == STREAM and batch.origins == ("100", "101", "102")
    assert [(c.email, c.origin) for c in batch.changes] == [
        ("new@example.com", "100"),
        ("old@example.com", "100"),
        ("key@example.com", "101"),
    ]
    assert batch.changes[0].changed_at == datetime(2025, 3, 1, 6, 0, 0, 500_000, tzinfo=UTC)
    assert batch.changes[2].changed_at is None
    assert batch.unusable == ("102",)


def test_an_address_stored_as_binary_is_read_from_the_stream_as_its_text_and_no_text_names_no_one() -> None:
    # Given records whose email attribute is a Binary (base64 in Lambda's event): UTF-8 text, and bytes that are not
    text = base64.b64encode("Zoé@example.com".encode()).decode()
    records = [
        {"dynamodb": {"SequenceNumber": "200", "NewImage": {"email": {"B": text}}}},
        {"dynamodb": {"SequenceNumber": "201", "NewImage": {"email": {"B": base64.b64encode(b"\xff\xfe").decode()}}}},
        {"dynamodb": {"SequenceNumber": "202", "NewImage": {"email": {"B": "not base64!"}}}},
        {"dynamodb": {"SequenceNumber": "203", "NewImage": {"email": {"S": "\u200b\ufeff"}}}},  # invisible only
    ]
    # When the batch is read
    batch = batch_from_event({"Records": records}, "email")
    # Then the text is the address (as the scheduled run reads the item), and what is not text is set aside
    assert [(c.email, c.origin) for c in batch.changes] == [("Zoé@example.com", "200")]
    assert batch.unusable == ("201", "202", "203")


def test_a_change_event_names_one_address_and_its_time() -> None:
    batch = batch_from_event(event({"email": " Ann@Example.com "}), "email")
    assert (batch.via, batch.origins) == (EVENT, ("ev-1",))
    (change,) = batch.changes
    assert (change.email, change.changed_at) == (" Ann@Example.com ", datetime(2025, 3, 1, 6, tzinfo=UTC))


@pytest.mark.parametrize(
    "bad",
    [
        {"detail-type": "SomethingElse", "detail": {"email": "a@example.com"}},
        event({}),
        event({"email": ""}),
        event("a@example.com"),
        event({"email": "x" * 400}),
        [],
    ],
)
def test_an_event_that_names_no_address_is_refused_without_quoting_it(bad: Any) -> None:
    with pytest.raises(InvalidChangeEvent) as raised:
        batch_from_event(bad, "email")
    assert "@" not in str(raised.value)


# -- the cap ----------------------------------------------------------------------------------------------


def test_an_invocation_over_the_cap_writes_nothing_and_says_so() -> None:
    # Given four new readers in one batch, and a cap of three writes
    ownpage = FakeOwnpage()
    batch = changes("a@example.com", "b@example.com", "c@example.com", "d@example.com")
    # When the batch is applied
    report = apply_changes(
        batch,
        lane(source("a@example.com", "b@example.com", "c@example.com", "d@example.com"), ownpage),
        Sink(),
        UNLIMITED,
        FastLanePolicy(max_writes=3, new_addresses="subscribe"),
    )
    # Then nothing reached Ownpage; the four writes are counted as left to the scheduled run, masked
    assert ownpage.posts == []
    assert report.left_to_scheduled_run == {OVER_CAP: 4} and report.capped == 4
    assert report.left_samples == ["a***@e***.com", "b***@e***.com", "c***@e***.com", "d***@e***.com"]
    # ... and the records are not failed: retrying them would hit the cap again
    assert report.failed_origins == [] and report.lambda_response() == {"batchItemFailures": []}
    assert ("FastLaneCapped", "Count", 4) in report.metrics()


def test_an_invocation_at_the_cap_writes_everything() -> None:
    ownpage = FakeOwnpage()
    report = apply_changes(
        changes("a@example.com", "b@example.com", "c@example.com"),
        lane(source("a@example.com", "b@example.com", "c@example.com"), ownpage),
        Sink(),
        UNLIMITED,
        FastLanePolicy(max_writes=3, new_addresses="subscribe"),
    )
    assert ownpage.subscribed_keys() == {"a@example.com", "b@example.com", "c@example.com"}
    assert report.capped == 0 and report.applied == {"subscribe": 3}


class LedgerDown(InMemoryLedger):
    def reserve_fast_lane_writes(self, at: datetime, writes: int, budget: int) -> bool:
        raise RunLedgerUnavailable("DynamoDB UpdateItem on run table 'runs' failed: ThrottlingException")


def test_a_trickle_under_the_cap_stops_at_the_hourly_budget_and_the_scheduled_run_gets_the_rest() -> None:
    # Given eight readers subscribed on Ownpage and gone from the source (a runaway producer switching
    # them off a few at a time), a cap of 3 writes per invocation and a budget of 5 an hour
    gone = [f"r{n}@example.com" for n in range(8)]
    ownpage = FakeOwnpage([Row(email, subscribed=True) for email in gone])
    ledger = InMemoryLedger()
    target = replace(lane(source(), ownpage), ledger=ledger)
    policy = FastLanePolicy(max_writes=3, max_writes_per_hour=5)

    def invocation(*emails: str, at: datetime = NOW) -> ChangeReport:
        return apply_changes(changes(*emails), target, Sink(), UNLIMITED, policy, clock=lambda: at)

    # When invocations of two, two and two changes come in the same hour
    first, second, third = invocation(*gone[0:2]), invocation(*gone[2:4]), invocation(*gone[4:6])
    # Then the first two are written (4 of 5) and the third, which would pass the budget, writes none
    assert first.applied == second.applied == {"unsubscribe": 2}
    assert third.applied == {} and third.left_to_scheduled_run == {OVER_BUDGET: 2}
    assert ("FastLaneCapped", "Count", 2) in third.metrics()  # the fast-lane-capped alarm pages
    assert third.failed_origins == []  # acknowledged: the scheduled run, whose guards apply, has them
    assert {key for key in gone if not ownpage.rows[key].subscribed} == set(gone[0:4])
    # And one that still fits goes out, and the next hour has room again
    assert invocation(gone[4]).applied == {"unsubscribe": 1}
    assert invocation(*gone[5:8], at=NOW + timedelta(hours=1)).applied == {"unsubscribe": 3}


def test_a_budget_that_cannot_be_counted_leaves_the_writes_to_the_scheduled_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a run table that cannot be written to just now
    ownpage = FakeOwnpage([Row("a@example.com", subscribed=True)])
    target = replace(lane(source(), ownpage), ledger=LedgerDown())
    # When a change would unsubscribe a reader
    report = apply_changes(changes("a@example.com"), target, Sink(), UNLIMITED, FastLanePolicy())
    # Then nothing is written, the write is left to the scheduled run and counted, the log says why
    assert ownpage.posts == [] and report.left_to_scheduled_run == {OVER_BUDGET: 1}
    assert "hourly budget could not be checked" in caplog.text and "ThrottlingException" in caplog.text


def test_with_ownpage_unreadable_the_hourly_budget_bounds_what_is_queued() -> None:
    # Given a budget already spent this hour, and Ownpage down
    ledger = InMemoryLedger()
    assert ledger.reserve_fast_lane_writes(NOW, 5, 5)
    sink = Sink()
    target = replace(lane(source(), Unreadable()), ledger=ledger)
    # When a change would unsubscribe a reader the source no longer lists
    report = apply_changes(
        changes("a@example.com"), target, sink, UNLIMITED, FastLanePolicy(max_writes_per_hour=5), clock=lambda: NOW
    )
    # Then nothing is queued either: the scheduled run has it
    assert sink.messages == [] and report.left_to_scheduled_run == {OVER_BUDGET: 1}


class IgnoringOwnpage(FakeOwnpage):
    """An Ownpage answering that it ignored the last entry of each write (a guid another entry has)."""

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
        super().upsert(list_id, operations[:-1])
        return UpsertResult(sent=len(operations), summary={"duplicate_guid_count": 1})


def test_writes_ownpage_ignored_are_left_to_the_scheduled_run_and_counted() -> None:
    # Given two readers switching on, the second of whom Ownpage answers it ignored
    ownpage = IgnoringOwnpage()
    batch = changes("a@example.com", "b@example.com")
    # When the batch is applied
    report = apply_changes(
        batch,
        lane(source("a@example.com", "b@example.com"), ownpage),
        Sink(),
        UNLIMITED,
        FastLanePolicy(new_addresses="subscribe"),
    )
    # Then what was not written is left to the scheduled run, said and counted, records acknowledged
    assert report.left_to_scheduled_run == {NOT_WRITTEN: 1}
    assert ("FastLaneNotWritten", "Count", 1) in report.metrics()
    assert report.failed_origins == [] and "b@example.com" not in ownpage.rows


# -- the same rules as a full run -------------------------------------------------------------------------


@pytest.mark.parametrize("unreadable", [False, True], ids=["ownpage up", "ownpage down"])
def test_an_address_no_search_can_carry_is_left_to_the_scheduled_run_and_the_others_written(unreadable: bool) -> None:
    # Given Ownpage holding a reader the source no longer lists, and a change naming her and an
    # address with a lone surrogate (no URL, no database driver can encode it)
    ownpage = Unreadable() if unreadable else FakeOwnpage([Row("gone@example.com", subscribed=True)])
    sink = Sink()
    # When the fast lane re-checks both
    report = apply_changes(
        changes("gone@example.com", "\ud800odd@example.com"), lane(source(), ownpage), sink, UNLIMITED
    )
    # Then hers is written (or queued), and the odd one is left to the scheduled run, counted
    assert report.left_to_scheduled_run[UNDECIDED] == 1 and report.failed_origins == []
    if unreadable:
        assert [op.email for message in sink.messages for op in message.operations] == ["gone@example.com"]
    else:
        assert ownpage.posts == [
            [{"email": "gone@example.com", "subscribed": False, "unsubscribed_cause": "PUBLISHER"}]
        ]


def test_repeated_hints_for_one_address_are_planned_and_written_once() -> None:
    ownpage = FakeOwnpage([Row("a@example.com", subscribed=True, guid="g-a", data={"city": "Paris"})])
    batch = changes("a@example.com", "A@Example.com", " a@example.com")
    report = apply_changes(
        batch, lane(source("a@example.com"), ownpage), Sink(), UNLIMITED, FastLanePolicy(max_writes=1)
    )
    assert report.addresses == 1
    assert ownpage.posts == [[{"email": "a@example.com", "data_city": "Lyon"}]]  # one update, under the cap of 1


def test_an_unsubscribe_the_look_up_cannot_prove_is_left_to_the_scheduled_run() -> None:
    # Given a reader Ownpage has subscribed, gone from a source whose look-ups are not conclusive
    ownpage = FakeOwnpage([Row("gone@example.com", subscribed=True)])
    report = apply_changes(
        changes("gone@example.com"),
        lane(source(conclusive=False), ownpage),
        Sink(),
        UNLIMITED,
        FastLanePolicy(max_writes=10),
    )
    # Then nothing is written, and the unsubscribe is counted as undecided, not failed
    assert ownpage.posts == [] and ownpage.subscribed_keys() == {"gone@example.com"}
    assert report.left_to_scheduled_run == {UNDECIDED: 1} and report.failed_origins == []


def test_by_default_a_new_address_is_held_for_the_scheduled_run_and_the_rest_written() -> None:
    # Given an Ownpage that keeps spellings exactly and holds a suppressed reader as `Eve@X.com`, which
    # an exact search for the source's `eve@x.com` misses; a reader it shows re-subscribable; one to update
    ownpage = FakeOwnpage(
        [
            Row("Eve@Example.com", subscribed=False, unsubscribed_cause="READER", unsubscribed_at=NOW),
            Row("pub@example.com", subscribed=False, unsubscribed_cause="PUBLISHER", unsubscribed_at=NOW),
            Row("upd@example.com", subscribed=True, guid="g-u", data={"city": "Paris"}),
        ],
        matching="exact",
    )
    ownpage.find = lambda list_id, spellings, fields=(): [  # type: ignore[method-assign]
        row.read() for row in ownpage.rows.values() if row.email in set(spellings)
    ]
    batch = changes("eve@example.com", "pub@example.com", "upd@example.com")
    # When the fast lane handles them with the default policy
    report = apply_changes(
        batch, lane(source("eve@example.com", "pub@example.com", "upd@example.com"), ownpage), Sink(), UNLIMITED
    )
    # Then no row is created beside Eve's (she is not mailed), nor is the row the search found
    # re-subscribed (with no complete read on record, a suppressed twin of it cannot be ruled out); the
    # update is written, and it says so
    assert ownpage.twins == [] and set(ownpage.rows) == {"Eve@Example.com", "pub@example.com", "upd@example.com"}
    assert ownpage.resubscribed == []
    assert ownpage.rows["upd@example.com"].data == {"city": "Lyon"}
    assert report.left_to_scheduled_run == {HELD_NEW: 1, HELD_RESUBSCRIBE: 1}
    assert sorted(report.left_samples) == ["e***@e***.com", "p***@e***.com"]
    assert ("FastLaneHeld", "Count", 2) in report.metrics()
    # ... while with subscribe_new the operator vouches that Ownpage's search finds every spelling
    apply_changes(
        batch, lane(source("eve@example.com"), ownpage), Sink(), UNLIMITED, FastLanePolicy(new_addresses="subscribe")
    )
    assert ownpage.twins == ["eve@example.com"]  # what holding prevents on such an Ownpage


def proof_of(now: datetime, *other_spellings: str) -> InMemoryLedger:
    """A run table holding a complete read, taken at `now`, that saw these keys under another spelling."""
    ledger = InMemoryLedger()
    ledger.put_spellings(SpellingSnapshot.of_keys("run-1", now, other_spellings))
    return ledger


def test_a_resubscribe_goes_out_only_when_the_last_complete_read_saw_no_other_spelling() -> None:
    # Given an exact-matching Ownpage holding Pia twice: `Pia@Example.com` unsubscribed by herself
    # (which an exact search for `pia@example.com` misses), `pia@example.com` by the publisher; and
    # Paul, unsubscribed by the publisher, under his one spelling
    ownpage = FakeOwnpage(
        [
            Row("Pia@Example.com", subscribed=False, unsubscribed_cause="READER", unsubscribed_at=NOW),
            Row("pia@example.com", subscribed=False, unsubscribed_cause="PUBLISHER", unsubscribed_at=NOW),
            Row("paul@example.com", subscribed=False, unsubscribed_cause="PUBLISHER", unsubscribed_at=NOW),
        ],
        matching="exact",
    )
    ownpage.find = lambda list_id, spellings, fields=(): [  # type: ignore[method-assign]
        row.read() for row in ownpage.rows.values() if row.email in set(spellings)
    ]
    # ... and a complete read of the list that saw Pia's key under another spelling
    target = RetryTarget(
        source("pia@example.com", "paul@example.com"),
        lambda deadline: ownpage,
        LIST_ID,
        batch_size=100,
        ledger=proof_of(NOW, "pia@example.com"),
    )
    # When both come back in the source
    report = apply_changes(
        changes("pia@example.com", "paul@example.com"), target, Sink(), UNLIMITED, FastLanePolicy(), clock=lambda: NOW
    )
    # Then Paul is re-subscribed; Pia's `subscribed: true` waits for the scheduled run, whose full read
    # sees her own unsubscription
    assert ownpage.resubscribed == [("paul@example.com", "PUBLISHER")]
    assert report.left_to_scheduled_run == {HELD_RESUBSCRIBE: 1} and report.left_samples == ["p***@e***.com"]
    # ... and with a proof older than allowed, Paul waits too
    ownpage.rows["paul@example.com"] = Row("paul@example.com", subscribed=False, unsubscribed_cause="PUBLISHER")
    later = NOW + timedelta(seconds=FastLanePolicy().proof_max_age + 1)
    report = apply_changes(
        changes("paul@example.com"), target, Sink(), UNLIMITED, FastLanePolicy(), clock=lambda: later
    )
    assert report.left_to_scheduled_run == {HELD_RESUBSCRIBE: 1}


def test_with_ownpage_unreadable_and_new_addresses_held_only_the_update_is_queued() -> None:
    sink = Sink()
    report = apply_changes(changes("here@example.com"), lane(source("here@example.com"), Unreadable()), sink, UNLIMITED)
    assert sink.operations == [("update", "here@example.com")]
    assert report.left_to_scheduled_run == {HELD_NEW: 1} and report.queued == 1


# -- failures ---------------------------------------------------------------------------------------------


class PartlySure(InMemorySource):
    """A source whose look-up cannot be sure about some keys (as an exact DynamoDB look-up)."""

    def __init__(self, rows: Sequence[RawSubscriber], unsure: set[str]):
        super().__init__(rows)
        self.unsure = unsure

    def lookup(self, keys: Any, also: Any = ()) -> SourceLookup:
        return SourceLookup(super().lookup(keys, also).rows, frozenset(self.unsure & set(keys)))


def test_with_ownpage_unreadable_the_sources_wishes_are_queued_and_the_retry_path_applies_them() -> None:
    # Given Ownpage down, a source listing one reader, proving another gone, unsure about a third
    src = PartlySure(source("here@example.com").rows, unsure={"unsure@example.com"})
    sink = Sink()
    batch = changes("here@example.com", "gone@example.com", "unsure@example.com")
    # When the fast lane handles the batch
    report = apply_changes(
        batch,
        lane(src, Unreadable()),
        sink,
        UNLIMITED,
        FastLanePolicy(max_writes=10, new_addresses="subscribe"),
        clock=lambda: NOW,
    )
    # Then what the source wants is queued, each direction once, and the undecided one is left
    assert sink.operations == [
        ("subscribe", "here@example.com"),
        ("update", "here@example.com"),
        ("unsubscribe", "gone@example.com"),
    ]
    assert report.queued == 3 and report.ownpage_unreadable == "unavailable" and report.failed_origins == []
    assert report.left_to_scheduled_run == {UNDECIDED: 1}
    (message,) = sink.messages
    assert message.last_error.kind == "unavailable" and "-fast-" in message.run_id
    assert message.run_started_at == NOW

    # When Ownpage is back and the retry path takes the message
    healed = FakeOwnpage([Row("gone@example.com", subscribed=True)])
    result = retry_message(message, lane(src, healed), UNLIMITED)
    # Then it re-plans both sides as they are: the new reader subscribed with the source's data, the
    # one gone unsubscribed (the queued update, a subscribe's twin, is dropped as superseded)
    assert healed.rows["here@example.com"].subscribed and healed.rows["here@example.com"].data == {"city": "Lyon"}
    assert not healed.rows["gone@example.com"].subscribed
    assert result.sent == 2 and result.stale == {"superseded": 1}


def test_records_whose_writes_nothing_could_hold_are_delivered_again() -> None:
    # Given Ownpage down and a queue that stores the first operation only
    batch = changes("one@example.com", "two@example.com")
    report = apply_changes(
        batch,
        lane(source("one@example.com", "two@example.com"), Unreadable()),
        Sink(refuse_after=2),
        UNLIMITED,
        FastLanePolicy(max_writes=10, new_addresses="subscribe"),
    )
    # Then the first reader's two operations are safe on the queue and its record is done; the second
    # one's record is reported failed, so Lambda delivers it again
    assert report.queued == 2 and report.failed_origins == ["1"]
    assert report.lambda_response() == {"batchItemFailures": [{"itemIdentifier": "1"}]}
    assert "KMS.DisabledException" in (report.failure or "")


def test_a_change_event_whose_write_cannot_be_queued_raises_for_lambda_to_retry() -> None:
    # Given Ownpage failing writes, and no retry queue
    report = apply_changes(
        changes("one@example.com", via=EVENT),
        lane(source("one@example.com"), Unreadable()),
        None,
        UNLIMITED,
        FastLanePolicy(max_writes=10, new_addresses="subscribe"),
    )
    # Then the event is failed: raising is how Lambda learns it (and retries, then parks it)
    assert report.failed_origins == ["ev-1"]
    with pytest.raises(ChangeNotApplied) as raised:
        report.lambda_response()
    assert "@" not in str(raised.value)


def test_the_age_of_the_oldest_change_is_measured_once_written() -> None:
    ownpage = FakeOwnpage()
    batch = batch_from_event(
        {
            "Records": [
                record("1", new={"email": "a@example.com"}, at=NOW.timestamp() - 12),
                record("2", new={"email": "b@example.com"}, at=NOW.timestamp() - 3),
            ]
        },
        "email",
    )
    report = apply_changes(
        batch,
        lane(source("a@example.com", "b@example.com"), ownpage),
        Sink(),
        UNLIMITED,
        FastLanePolicy(max_writes=10, new_addresses="subscribe"),
        clock=lambda: NOW,
    )
    assert report.oldest_change_seconds == 12.0
    assert ("FastLaneStreamRecordAge", "Seconds", 12.0) in report.metrics()
    assert ownpage.subscribed_keys() == {"a@example.com", "b@example.com"}


def test_new_addresses_need_a_proof_unless_the_setting_says_otherwise() -> None:
    env = {"OWNPAGE_LIST_ID": "1", "OWNPAGE_SECRET_ID": "s", "SOURCE_TABLE": "t"}
    default = FastLanePolicy.from_settings(Settings.from_env(env))
    assert (default.new_addresses, default.subscribe_new, default.proof_max_age) == ("proven", False, 93_600.0)
    vouched = Settings.from_env({**env, "FAST_LANE_NEW_ADDRESSES": "subscribe", "FAST_LANE_PROOF_MAX_AGE": "3600"})
    assert FastLanePolicy.from_settings(vouched).subscribe_new is True
    assert FastLanePolicy.from_settings(vouched).proof_max_age == 3600.0
    with pytest.raises(ConfigurationError, match="FAST_LANE_NEW_ADDRESSES: must be one of proven, hold, subscribe"):
        Settings.from_env({**env, "FAST_LANE_NEW_ADDRESSES": "yes"})
