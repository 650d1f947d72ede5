"""The retry path's logic over in-memory fakes of the source and of Ownpage: what is re-sent, what is
dropped as stale and why, and what makes a message fail (to be delivered again)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import (
    InvalidRetryMessage,
    OwnpageRejected,
    OwnpageUnavailable,
    RetryNotConverged,
    SourceError,
)
from ownpage_sync.models import Action, Operation, OwnpageSubscriber
from ownpage_sync.ports import Failure, Rejection, SubscriberCounts, UpsertResult
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.retrying import (
    ALREADY_APPLIED,
    BACK_IN_SOURCE,
    GONE_FROM_SOURCE,
    LOOKUP_THRESHOLD,
    SUPERSEDED,
    SUPPRESSED_ON_OWNPAGE,
    RetryTarget,
    describe_failure,
    retry_message,
)
from ownpage_sync.sources.base import RawSubscriber

pytestmark = pytest.mark.unit

LIST_ID = 3
LONG_AGO = datetime(2024, 1, 1, tzinfo=UTC)


class FakeSource:
    description = "in-memory source"

    def __init__(self, rows: dict[str, dict[str, str]]):
        self.rows = rows  # email -> data
        self.lookups: list[set[str]] = []

    def scan(self) -> Iterator[RawSubscriber]:
        for email, data in self.rows.items():
            yield RawSubscriber(email, where="fake", guid=f"g-{email[0]}", data=data)

    def lookup(self, emails: Collection[str]) -> Iterator[RawSubscriber]:
        self.lookups.append(set(emails))
        return (row for row in self.scan() if row.email in emails)


class FakeOwnpage:
    """Ownpage's list as a dict; upsert applies operations like the real API does."""

    def __init__(self, rows: Sequence[OwnpageSubscriber] = ()):
        self.rows = {row.email: row for row in rows}
        self.failure: Exception | None = None
        self.invalid: set[str] = set()
        self.sent: list[Operation] = []
        self.get_calls = 0
        self.iter_calls = 0

    def iter_subscribers(self, list_id: int, progress: object = None) -> Iterator[OwnpageSubscriber]:
        self.iter_calls += 1
        yield from list(self.rows.values())

    def get_subscriber(self, list_id: int, email: str) -> OwnpageSubscriber | None:
        self.get_calls += 1
        return self.rows.get(email)

    def count(self, list_id: int) -> SubscriberCounts:
        return SubscriberCounts(sum(r.subscribed for r in self.rows.values()), 0)

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
        if self.failure is not None:
            raise self.failure
        rejected = tuple(Rejection(op.email, "email is not valid") for op in operations if op.email in self.invalid)
        for op in operations:
            if op.email in self.invalid:
                continue
            self.sent.append(op)
            row = self.rows.get(op.email, OwnpageSubscriber(op.email, subscribed=True))
            data = {**row.data, **op.data}
            if op.action is Action.SUBSCRIBE:
                row = replace(row, subscribed=True, unsubscribed_cause=None, unsubscribed_at=None)
            elif op.action is Action.UNSUBSCRIBE:
                row = replace(row, subscribed=False, unsubscribed_cause=op.unsubscribed_cause)
            self.rows[op.email] = replace(row, data=data, guid=op.guid or row.guid)
        return UpsertResult(sent=len(operations), rejected=rejected)


def target(source: FakeSource, ownpage: FakeOwnpage, deadline: Deadline | None = None) -> RetryTarget:
    return RetryTarget(source, ownpage, LIST_ID, deadline or Deadline.unlimited(), batch_size=50)


def queued(*operations: Operation) -> RetryMessage:
    return RetryMessage.for_failure(LIST_ID, "run-1", operations, Failure("unavailable", "HTTP 503", status=503))


def sub(email: str, city: str = "Paris") -> Operation:
    return Operation(Action.SUBSCRIBE, email, guid=f"g-{email[0]}", data={"city": city})


def unsub(email: str) -> Operation:
    return Operation(Action.UNSUBSCRIBE, email, unsubscribed_cause="PUBLISHER")


def test_still_wanted_operations_are_sent_with_todays_data() -> None:
    # Given a queued subscribe whose city changed in the source since, and a queued unsubscribe still due
    source = FakeSource({"anne@example.com": {"city": "Lyon"}})
    ownpage = FakeOwnpage([OwnpageSubscriber("bruno@example.com", subscribed=True)])

    # When the message is retried
    result = retry_message(
        queued(sub("anne@example.com", "Paris"), unsub("bruno@example.com")), target(source, ownpage)
    )

    # Then both are sent, the subscribe with the source's current city; nothing is stale
    assert result.sent == 2 and result.stale_total == 0
    assert ownpage.rows["anne@example.com"].subscribed and ownpage.rows["anne@example.com"].data["city"] == "Lyon"
    assert ownpage.rows["bruno@example.com"].subscribed is False
    assert result.applied == {"subscribe": 1, "unsubscribe": 1}


def test_stale_operations_are_dropped_and_counted_by_reason() -> None:
    # Given queued operations each overtaken by a change since they failed
    source = FakeSource(
        {
            "back@example.com": {},  # an unsubscribe was queued, but they are in the source again
            "reader@example.com": {},  # subscribe queued, then they unsubscribed on Ownpage (READER)
            "done@example.com": {"city": "Paris"},  # subscribe queued, already applied by a later run
            "moved@example.com": {"city": "Lyon"},  # update queued; Ownpage row since unsubscribed by us
        }
    )
    ownpage = FakeOwnpage(
        [
            OwnpageSubscriber("back@example.com", subscribed=True),
            OwnpageSubscriber("reader@example.com", False, unsubscribed_cause="READER", unsubscribed_at=LONG_AGO),
            OwnpageSubscriber("done@example.com", True, guid="g-d", data={"city": "Paris"}),
            OwnpageSubscriber("moved@example.com", False, unsubscribed_cause="PUBLISHER"),
            OwnpageSubscriber("left@example.com", False, unsubscribed_cause="PUBLISHER"),
        ]
    )
    message = queued(
        sub("gone@example.com"),  # removed from the source since
        unsub("back@example.com"),
        sub("reader@example.com"),
        sub("done@example.com"),
        Operation(Action.UPDATE, "moved@example.com", data={"city": "Lyon"}),
        unsub("left@example.com"),  # already unsubscribed on Ownpage
    )

    # When retried
    result = retry_message(message, target(source, ownpage))

    # Then nothing is sent, and each is counted under its reason
    assert ownpage.sent == []
    assert result.sent == 0
    assert result.stale == {
        GONE_FROM_SOURCE: 1,
        BACK_IN_SOURCE: 1,
        SUPPRESSED_ON_OWNPAGE: 1,
        ALREADY_APPLIED: 2,
        SUPERSEDED: 1,
    }
    assert ownpage.rows["reader@example.com"].subscribed is False  # the reader's no is respected


def test_a_duplicate_operation_in_a_message_is_sent_once() -> None:
    # Given a message listing the same subscribe twice
    source = FakeSource({"anne@example.com": {"city": "Paris"}})
    ownpage = FakeOwnpage()

    # When retried
    result = retry_message(queued(sub("anne@example.com"), sub("anne@example.com")), target(source, ownpage))

    # Then Ownpage receives it once
    assert result.sent == 1 and len(ownpage.sent) == 1


def test_few_addresses_are_looked_up_one_by_one_many_by_one_read() -> None:
    # Given a small message and a large one
    small = [sub(f"r{i}@example.com") for i in range(3)]
    large = [sub(f"r{i}@example.com") for i in range(LOOKUP_THRESHOLD + 1)]
    source = FakeSource({op.email: {"city": "Paris"} for op in large})
    few, many = FakeOwnpage(), FakeOwnpage()

    # When each is retried
    retry_message(queued(*small), target(source, few))
    retry_message(queued(*large), target(source, many))

    # Then the small one used exact look-ups, the large one a single list read
    assert (few.get_calls, few.iter_calls) == (3, 0)
    assert (many.get_calls, many.iter_calls) == (0, 1)
    assert len(many.sent) == LOOKUP_THRESHOLD + 1


def test_the_source_is_asked_only_about_the_message_addresses() -> None:
    # Given a source holding more subscribers than the message mentions
    source = FakeSource({"anne@example.com": {}, "other@example.com": {}})
    ownpage = FakeOwnpage()

    # When retried
    retry_message(queued(sub("anne@example.com")), target(source, ownpage))

    # Then the look-up named only the message's address, and nobody else was subscribed
    assert source.lookups == [{"anne@example.com"}]
    assert set(ownpage.rows) == {"anne@example.com"}


def test_still_failing_operations_fail_the_message_transiently() -> None:
    # Given Ownpage still down
    source = FakeSource({"anne@example.com": {}})
    ownpage = FakeOwnpage()
    ownpage.failure = OwnpageUnavailable("service unavailable", status=503)

    # When retried
    with pytest.raises(RetryNotConverged) as raised:
        retry_message(queued(sub("anne@example.com")), target(source, ownpage))

    # Then the error is transient, says why, and names no address
    assert raised.value.transient and raised.value.kind == "unavailable"
    assert "@" not in str(raised.value)


def test_no_time_left_fails_the_message_rather_than_losing_it() -> None:
    # Given an invocation whose time is already up
    source = FakeSource({"anne@example.com": {}})
    ownpage = FakeOwnpage()

    # When retried
    with pytest.raises(RetryNotConverged) as raised:
        retry_message(queued(sub("anne@example.com")), target(source, ownpage, Deadline(lambda: 0.0)))

    # Then nothing was sent and the message will come back
    assert raised.value.kind == "deadline"
    assert ownpage.sent == []


def test_rejected_addresses_are_reported_masked_not_retried() -> None:
    # Given Ownpage refusing one of two addresses as invalid
    source = FakeSource({"anne@example.com": {}, "bad@example.com": {}})
    ownpage = FakeOwnpage()
    ownpage.invalid = {"bad@example.com"}

    # When retried
    result = retry_message(queued(sub("anne@example.com"), sub("bad@example.com")), target(source, ownpage))

    # Then the message succeeds, the rejection is counted and sampled masked
    assert result.rejected == 1
    assert result.rejected_samples == ["b***@e***.com"]
    assert "anne@example.com" in ownpage.rows


def test_a_message_for_another_list_is_refused_as_poison() -> None:
    # Given a message for list 99 delivered to the deployment serving list 3
    message = replace(queued(sub("anne@example.com")), list_id=99)

    # When retried / Then it is refused before any call
    ownpage = FakeOwnpage()
    with pytest.raises(InvalidRetryMessage):
        retry_message(message, target(FakeSource({}), ownpage))
    assert ownpage.get_calls == 0 and ownpage.sent == []


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (InvalidRetryMessage("body is not JSON"), "poison"),
        (RetryNotConverged("1 of 1 still failing", kind="unavailable"), "unavailable"),
        (OwnpageRejected("bad request", status=400), "rejected"),
        (SourceError("table not found"), "source"),
        (KeyError("anne@example.com"), "unexpected"),
    ],
)
def test_failures_are_described_without_addresses(error: Exception, kind: str) -> None:
    # Given / When a failure is described for the error log
    described = describe_failure(error)

    # Then it has a stable kind, and a foreign exception's text (which could quote anything) is not used
    assert described["kind"] == kind
    assert "@" not in described["reason"]


def test_a_batch_of_large_messages_reads_ownpage_once() -> None:
    # Given a batch of three messages, two of them too large for one-by-one look-ups, and a poison body
    many = [f"reader{i}@example.org" for i in range(LOOKUP_THRESHOLD * 2 + 2)]
    source = FakeSource({email: {"city": "Paris"} for email in many})
    ownpage = FakeOwnpage()
    retry = target(source, ownpage)
    first, second = many[: LOOKUP_THRESHOLD + 1], many[LOOKUP_THRESHOLD + 1 :]
    bodies = [queued(*map(sub, first)).to_json(), queued(*map(sub, second)).to_json(), "{not json"]
    # When the batch starts and both good messages are retried
    retry.start_batch(bodies)
    results = [retry_message(RetryMessage.from_json(body), retry) for body in bodies[:2]]
    # Then Ownpage's list was read once for the whole batch, and every subscribe was sent
    assert ownpage.iter_calls == 1 and ownpage.get_calls == 0
    assert [result.sent for result in results] == [len(first), len(second)]
    assert {op.email for op in ownpage.sent} == set(many)


def test_an_address_written_by_one_message_is_read_again_for_the_next() -> None:
    # Given one batch delivering the same subscribe twice (a duplicate delivery)
    source = FakeSource({"ann@example.org": {"city": "Paris"}})
    ownpage = FakeOwnpage()
    retry = target(source, ownpage)
    body = queued(sub("ann@example.org")).to_json()
    retry.start_batch([body, body])
    # When both copies are retried
    first = retry_message(RetryMessage.from_json(body), retry)
    second = retry_message(RetryMessage.from_json(body), retry)
    # Then the second sees Ownpage after the first's write, and sends nothing
    assert (first.sent, second.sent) == (1, 0)
    assert second.stale == {ALREADY_APPLIED: 1}
    assert len(ownpage.sent) == 1
