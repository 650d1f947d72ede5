"""The DynamoDB source against moto's server over HTTP: paging, parallel segments, the subscribed
filter, attribute mapping, and look-ups by key, by index and by scan."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from decimal import Decimal
from typing import Any

import boto3
import boto3.dynamodb.types
import pytest
from botocore.stub import Stubber
from ownpage_sync.emails import canonical_key
from ownpage_sync.errors import SourceError, SourceMisconfigured
from ownpage_sync.planner import plan_changes
from ownpage_sync.settings import SourceSettings
from ownpage_sync.sources.base import RawSubscriber
from ownpage_sync.sources.dynamodb import DynamoDBSource, is_subscribed
from ownpage_sync.sources.factory import open_source

pytestmark = pytest.mark.integration


class Calls:
    """What the source asked DynamoDB, recorded from the real client's own events."""

    def __init__(self, source: DynamoDBSource):
        self.requests: list[tuple[str, dict[str, Any]]] = []
        source.client.meta.events.register("provide-client-params.dynamodb.*", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.requests.append((model.name, dict(params)))

    def count(self, operation: str) -> int:
        return sum(1 for name, _ in self.requests if name == operation)

    def of(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.requests if name == operation]


@pytest.fixture
def tables(aws: str, unique: str) -> Iterator[Any]:
    """Creates tables on the moto server and deletes them afterwards."""
    client = boto3.client("dynamodb")
    made: list[str] = []

    def create(
        key: str,
        sort_key: str | None = None,
        index: tuple[str, str, str] | None = None,  # (name, partition key, projection type)
    ) -> Any:
        name = f"subscribers-{unique}-{len(made)}"
        attributes = {key, *([sort_key] if sort_key else []), *([index[1]] if index else [])}
        request: dict[str, Any] = {
            "TableName": name,
            "KeySchema": [{"AttributeName": key, "KeyType": "HASH"}]
            + ([{"AttributeName": sort_key, "KeyType": "RANGE"}] if sort_key else []),
            "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in sorted(attributes)],
            "BillingMode": "PAY_PER_REQUEST",
        }
        if index:
            request["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": index[0],
                    "KeySchema": [{"AttributeName": index[1], "KeyType": "HASH"}],
                    "Projection": {"ProjectionType": index[2]},
                }
            ]
        client.create_table(**request)
        made.append(name)
        return boto3.resource("dynamodb").Table(name)

    yield create
    for name in made:
        with suppress(client.exceptions.ResourceNotFoundException):
            client.delete_table(TableName=name)


def put(table: Any, items: list[dict[str, Any]]) -> None:
    with table.batch_writer() as writer:
        for item in items:
            writer.put_item(Item=item)


def settings(table: Any, **overrides: Any) -> SourceSettings:
    return SourceSettings(kind="dynamodb", table=table.name, **overrides)


def test_scan_reads_every_page_and_only_the_mapped_attributes(tables: Any) -> None:
    # Given 230 items with configured attribute names (a reserved word and a dotted name among them)
    # and an attribute the sync must not read
    table = tables("id")
    put(
        table,
        [
            {
                "id": f"u{n:04d}",
                "mail": f"Reader{n}@Example.com",
                "user.id": f"guid-{n}",
                "opted_in": "2024-05-01T10:00:00Z",
                "first_name": f"Name{n}",
                "location": "Paris",
                "private_notes": "never read",
            }
            for n in range(230)
        ],
    )
    source = DynamoDBSource(
        settings(
            table,
            email_attribute="mail",
            guid_attribute="user.id",
            consent_attribute="opted_in",
            data_attributes={"firstname": "first_name", "city": "location"},
        ),
        page_limit=25,
    )
    calls = Calls(source)

    # When the table is scanned
    rows = list(source.scan())
    planned = {op.email: op for op in plan_changes(rows, []).to_subscribe}

    # Then every page was read, each item once, and only the needed attributes were asked for
    assert calls.count("Scan") >= 230 // 25
    assert len(rows) == 230 and len(planned) == 230
    (first_request,) = calls.of("Scan")[:1]
    projected = {
        first_request["ExpressionAttributeNames"][ref] for ref in first_request["ProjectionExpression"].split(", ")
    }
    assert projected == {"id", "mail", "user.id", "opted_in", "first_name", "location"}
    record = planned["reader7@example.com"]
    assert (record.guid, dict(record.data)) == ("guid-7", {"firstname": "Name7", "city": "Paris"})
    (raw,) = [row for row in rows if row.guid == "guid-7"]
    assert raw.consented_at == "2024-05-01T10:00:00Z"
    assert source.shape().data == ("firstname", "city") and source.shape().consent
    assert {row.where for row in rows if row.guid == "guid-7"} == {"item id=u0007"}


def test_binary_addresses_and_long_numbers_are_read_exactly(tables: Any) -> None:
    # Given an address stored as Binary (valid UTF-8, and not), and a guid of 38 digits (DynamoDB's
    # whole precision, past Python's 28-digit default)
    table = tables("id")
    long_guid = Decimal("12345678901234567890123456789012345678")
    put(
        table,
        [
            {"id": "1", "email": boto3.dynamodb.types.Binary("zoë@example.com".encode()), "guid": long_guid},
            {"id": "2", "email": boto3.dynamodb.types.Binary(b"\xffbad@example.com")},
            {"id": "3", "email": "plain@example.com"},
        ],
    )
    source = DynamoDBSource(settings(table, guid_attribute="guid"))
    # When the table is scanned and planned (one odd item must not stop the run)
    plan = plan_changes(list(source.scan()), [])
    # Then the Binary address is the text it holds, the undecodable one is one more address of its own,
    # and the guid is sent digit for digit
    planned = {op.email: op for op in plan.to_subscribe}
    assert {"zoë@example.com", "plain@example.com"} <= set(planned) and plan.source.rows_read == 3
    assert planned["zoë@example.com"].guid == "12345678901234567890123456789012345678"


def test_parallel_segments_read_each_item_exactly_once(tables: Any) -> None:
    # Given 300 items and a scan split into 4 segments
    table = tables("id")
    put(table, [{"id": f"u{n}", "email": f"r{n}@example.com"} for n in range(300)])
    source = DynamoDBSource(settings(table, scan_segments=4), page_limit=20)
    calls = Calls(source)

    # When it is scanned
    emails = Counter(row.email for row in source.scan())

    # Then all four segments were read (in threads) and no item is missing or repeated
    assert {params["Segment"] for params in calls.of("Scan")} == {0, 1, 2, 3}
    assert all(params["TotalSegments"] == 4 for params in calls.of("Scan"))
    assert set(emails) == {f"r{n}@example.com" for n in range(300)}
    assert set(emails.values()) == {1}


def test_a_failing_segment_stops_the_scan_with_a_source_error(tables: Any) -> None:
    # Given a parallel scan of a table deleted after the source described it
    table = tables("id")
    put(table, [{"id": "u1", "email": "a@example.com"}])
    source = DynamoDBSource(settings(table, scan_segments=3))
    source.schema()
    table.delete()
    # When it is scanned / Then a worker thread's error reaches the caller as a SourceError
    with pytest.raises(SourceError, match="not found"):
        list(source.scan())


def test_subscribed_attribute_keeps_only_true_items(tables: Any) -> None:
    # Given items whose subscribed flag takes every shape found in real tables
    table = tables("id")
    flags: dict[str, Any] = {
        "bool-true": True,
        "bool-false": False,
        "text-true": "true",
        "text-upper": "TRUE",
        "text-yes": " yes ",
        "text-no": "no",
        "number-1": Decimal(1),
        "number-0": Decimal(0),
        "text-1": "1",
        "null": None,
    }
    items = [{"id": name, "email": f"{name}@example.com", "subscribed": value} for name, value in flags.items()]
    items.append({"id": "missing", "email": "missing@example.com"})
    put(table, items)

    # When it is scanned with SOURCE_SUBSCRIBED_ATTRIBUTE
    source = open_source(settings(table, subscribed_attribute="subscribed"))
    found = {row.email.split("@")[0] for row in source.scan()}

    # Then only true-ish values count: BOOL true, the number 1, and true/yes/1 text in any case
    assert found == {"bool-true", "text-true", "text-upper", "text-yes", "number-1", "text-1"}
    assert not is_subscribed("2") and not is_subscribed(Decimal("1.5"))


def test_lookup_by_table_key_uses_batch_get(tables: Any) -> None:
    # Given a table keyed by the (normalised) address, and one item stored in another spelling
    table = tables("email")
    put(
        table,
        [
            {"email": "foo@example.com", "subscribed": True, "first_name": "Foo"},
            {"email": "off@example.com", "subscribed": False},
            {"email": "Mixed@Example.com", "subscribed": True},
        ],
    )
    source = DynamoDBSource(
        settings(table, subscribed_attribute="subscribed", data_attributes={"firstname": "first_name"})
    )
    calls = Calls(source)
    wanted = {"foo@example.com", "off@example.com", "mixed@example.com", "absent@example.com"}
    wanted |= {f"filler{n}@example.net" for n in range(150)}

    # When the retry path looks addresses up
    lookup = source.lookup(wanted)
    found = by_key(lookup.rows, wanted)

    # Then the key look-up finds the subscribed item by its exact key, in batches of 100, without a
    # scan; the item stored as "Mixed@Example.com" is not found (key look-ups are exact), which is why
    # such a look-up is not conclusive unless the operator vouches for canonical addresses
    assert set(found) == {"foo@example.com"}
    assert found["foo@example.com"].data == {"firstname": "Foo"}
    assert calls.count("BatchGetItem") == 2 and calls.count("Scan") == 0
    assert lookup.inconclusive == wanted
    # And the table is read strongly consistent: a reader written a moment ago is found
    assert all(
        request["ConsistentRead"] for params in calls.of("BatchGetItem") for request in params["RequestItems"].values()
    )


def test_lookup_tries_other_spellings_and_is_conclusive_when_addresses_are_canonical(tables: Any) -> None:
    # Given a table keyed by the address, one item stored in Ownpage's spelling, one with its domain in IDNA
    table = tables("email")
    put(table, [{"email": "Mixed@Example.com"}, {"email": "foo@example.com"}, {"email": "ana@xn--caf-dma.fr"}])
    source = DynamoDBSource(settings(table, email_canonical=True))
    keys = {"mixed@example.com", "foo@example.com", "ana@café.fr"}

    # When the key and Ownpage's spelling are both tried
    lookup = source.lookup(keys, also={"Mixed@Example.com"})

    # Then the item is found by the spelling, the IDNA one by its key's IDNA spelling, and
    # SOURCE_EMAIL_CANONICAL makes absences conclusive
    assert set(by_key(lookup.rows, keys)) == keys
    assert lookup.inconclusive == frozenset()


def test_lookup_by_partition_key_with_a_sort_key_queries(tables: Any) -> None:
    # Given a table keyed by address and list name (several items per address)
    table = tables("email", sort_key="list")
    put(table, [{"email": "foo@example.com", "list": name, "guid": "g1"} for name in ("news", "offers")])
    source = DynamoDBSource(settings(table, guid_attribute="guid"))
    calls = Calls(source)

    # When it is looked up
    found = by_key(
        source.lookup({"foo@example.com", "absent@example.com"}).rows, {"foo@example.com", "absent@example.com"}
    )

    # Then each address is one strongly consistent Query of its partition, and the two items collapse
    # into one subscriber
    assert set(found) == {"foo@example.com"} and found["foo@example.com"].guid == "g1"
    assert calls.count("Query") == 2 and calls.count("Scan") == 0
    assert all(params["ConsistentRead"] for params in calls.of("Query"))


def test_lookup_by_index_reads_the_items_from_the_table_and_proves_no_absence(tables: Any) -> None:
    # Given a table keyed by id with an index on the canonical address (projection ALL), vouched for
    table = tables("id", index=("by-email", "email", "ALL"))
    put(table, [{"id": "u1", "email": "foo@example.com", "first_name": "Foo"}, {"id": "u2", "email": "b@example.com"}])
    source = DynamoDBSource(
        settings(table, email_index="by-email", email_canonical=True, data_attributes={"firstname": "first_name"})
    )
    calls = Calls(source)

    # When an address present and one absent are looked up
    lookup = source.lookup({"foo@example.com", "gone@example.com"})
    found = by_key(lookup.rows, {"foo@example.com"})

    # Then the index names the item and the item is read from the table, strongly consistent (an index
    # is only eventually consistent: it may not show a write yet, or still show a deleted item)
    assert set(found) == {"foo@example.com"} and found["foo@example.com"].data == {"firstname": "Foo"}
    assert [params.get("IndexName") for params in calls.of("Query")] == ["by-email", "by-email"]
    assert all(
        request["ConsistentRead"] for params in calls.of("BatchGetItem") for request in params["RequestItems"].values()
    )
    assert calls.count("Scan") == 0
    # And, for the same reason, an address the index names no item for is not proven gone, while the
    # one it named is decided by the table's item
    assert lookup.inconclusive == {"gone@example.com"}


def test_lookup_by_keys_only_index_on_a_normalised_copy_finds_any_spelling(tables: Any) -> None:
    # Given addresses stored in mixed case, with a KEYS_ONLY index on a normalised copy of them
    table = tables("id", index=("by-email-lower", "email_lower", "KEYS_ONLY"))
    put(
        table,
        [
            {"id": "u1", "email": "Foo@Example.COM", "email_lower": "foo@example.com", "first_name": "Foo"},
            {"id": "u2", "email": "Bar@Example.COM", "email_lower": "bar@example.com", "first_name": "Bar"},
        ],
    )
    source = DynamoDBSource(settings(table, email_index="by-email-lower", data_attributes={"firstname": "first_name"}))
    calls = Calls(source)

    # When the normalised address is looked up
    found = by_key(source.lookup({"foo@example.com"}).rows, {"foo@example.com"})

    # Then the index gives the key and the item itself is read from the table (the index lacks first_name)
    assert set(found) == {"foo@example.com"} and found["foo@example.com"].data == {"firstname": "Foo"}
    assert calls.count("Query") == 1 and calls.count("BatchGetItem") == 1


def test_lookup_without_key_or_index_reads_nothing_and_decides_nothing(tables: Any) -> None:
    # Given a table keyed by id, with no index on the address
    table = tables("id")
    put(table, [{"id": "u1", "email": "foo@example.com"}, {"id": "u2", "email": "other@example.com"}])
    source = DynamoDBSource(settings(table))
    calls = Calls(source)

    # When addresses are looked up
    lookup = source.lookup({"foo@example.com", "absent@example.com"})

    # Then no scan is made (one per retried message would cost as much as the table), nothing is
    # found, and no absence is conclusive: the retry path leaves those operations to the next full run
    assert lookup.rows == [] and lookup.inconclusive == {"foo@example.com", "absent@example.com"}
    assert calls.count("Scan") == 0 and calls.count("Query") == 0 and not source.can_look_up


def test_missing_table_and_unknown_index_are_clear_source_errors(tables: Any, unique: str) -> None:
    # Given a table name that does not exist, and an index name that does not
    missing = DynamoDBSource(SourceSettings(kind="dynamodb", table=f"nowhere-{unique}"))
    table = tables("id")
    wrong_index = DynamoDBSource(settings(table, email_index="no-such-index"))
    # When they are read / Then the errors say what is wrong, naming the table or the index: settings to fix
    with pytest.raises(SourceMisconfigured, match=rf"'nowhere-{unique}': not found"):
        list(missing.scan())
    with pytest.raises(SourceMisconfigured, match="no index 'no-such-index'"):
        wrong_index.lookup(["a@example.com"])


@pytest.mark.parametrize(
    ("code", "expected", "setting"),
    [
        ("AccessDeniedException", "access denied to describe_table", True),
        ("ProvisionedThroughputExceededException", "still throttled after retries", False),
    ],
)
def test_denied_and_throttled_become_source_errors(code: str, expected: str, setting: bool) -> None:
    # Given DynamoDB answering with an error moto cannot produce on demand (it enforces no IAM and
    # never throttles): botocore's Stubber stands in for the answer, nothing else is faked
    client = boto3.client("dynamodb", region_name="eu-west-1")
    stubber = Stubber(client)
    stubber.add_client_error("describe_table", service_error_code=code, service_message="no")
    source = DynamoDBSource(SourceSettings(kind="dynamodb", table="subscribers"), client=client)
    # When the source is read / Then a SourceError names the table and the reason
    with stubber, pytest.raises(SourceError, match=expected) as caught:
        list(source.scan())
    assert "'subscribers'" in str(caught.value)
    # A refused permission is a setting to fix; throttling is a service to wait for
    assert isinstance(caught.value, SourceMisconfigured) is setting


def by_key(rows: list[RawSubscriber], keys: set[str]) -> dict[str, RawSubscriber]:
    """The rows of these keys, by key (a look-up may return others; the caller keys them again)."""
    return {canonical_key(row.email): row for row in rows if canonical_key(row.email) in keys}
