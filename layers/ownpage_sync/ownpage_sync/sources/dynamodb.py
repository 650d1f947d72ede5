"""DynamoDB source: a paginated, parallel Scan of the publisher's table, and point look-ups.

Only the attributes the sync needs are read (ProjectionExpression). Look-ups use the table's key
when the email attribute is its partition key, or a configured index; without either there is no
look-up (a scan per retried message would cost as much as the table: the next full run decides).
Key and index look-ups are exact, so they are conclusive only when the operator vouches that the
addresses are stored canonical (SOURCE_EMAIL_CANONICAL). Table look-ups are strongly consistent
(ConsistentRead): a reader written a moment ago is found. A global secondary index is only ever
eventually consistent (the fast lane reacts within milliseconds of a write, before the index may
show it), so it only names items: they are read from the table, which decides their state, and an
address the index names no item for stays inconclusive.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from boto3.dynamodb.types import Binary, TypeDeserializer
from botocore.exceptions import BotoCoreError, ClientError

from ownpage_sync import aws
from ownpage_sync.emails import canonical_key, idna_spelling, mask_email
from ownpage_sync.errors import ConfigurationError, SourceError, SourceMisconfigured
from ownpage_sync.redaction import redact
from ownpage_sync.settings import SourceSettings
from ownpage_sync.sources.base import RawSubscriber, RowChunks, SourceLookup, SourceShape, chunked
from ownpage_sync.values import parse_bool

logger = logging.getLogger(__name__)

BATCH_GET_LIMIT = 100  # DynamoDB's maximum keys per BatchGetItem
UNPROCESSED_ATTEMPTS = 8
_THROTTLED = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded", "LimitExceededException"}
)
_DENIED = frozenset({"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException"})
_MAX_KEY_TEXT = 64
_deserializer = TypeDeserializer()


def is_subscribed(value: Any) -> bool:
    """The subscribed flag, read with values.parse_bool: only a true value subscribes."""
    return parse_bool(value) is True


@dataclass(frozen=True)
class _Index:
    name: str
    partition_key: str


@dataclass(frozen=True)
class _Schema:
    partition_key: str
    sort_key: str | None
    indexes: Mapping[str, _Index] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.partition_key,) if self.sort_key is None else (self.partition_key, self.sort_key)


class _Names:
    """ExpressionAttributeNames placeholders: attribute names may be reserved words or hold dots."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def ref(self, attribute: str) -> str:
        for placeholder, name in self.names.items():
            if name == attribute:
                return placeholder
        placeholder = f"#a{len(self.names)}"
        self.names[placeholder] = attribute
        return placeholder


class DynamoDBSource:
    """A `SubscriberSource` over one DynamoDB table."""

    def __init__(self, settings: SourceSettings, client: Any = None, page_limit: int | None = None):
        if not settings.table:
            raise ConfigurationError("SOURCE_TABLE: is required when SOURCE_KIND=dynamodb")
        self.table = settings.table
        self.email_attribute = settings.email_attribute
        self.subscribed_attribute = settings.subscribed_attribute
        self.guid_attribute = settings.guid_attribute
        self.consent_attribute = settings.consent_attribute
        self.data_attributes = dict(settings.data_attributes)
        self.email_index = settings.email_index
        self.email_canonical = settings.email_canonical
        self.segments = max(1, settings.scan_segments)
        self.page_limit = page_limit  # items per Scan/Query page; None lets DynamoDB fill 1 MB pages
        self.description = f"dynamodb table {self.table}"
        # One low-level client, shared by the segment threads (botocore clients are thread-safe);
        # "standard" retries back off on throttling before an error reaches us.
        self.client = client or aws.client(
            "dynamodb",
            retries={"mode": "standard", "max_attempts": 10},
            max_pool_connections=max(10, self.segments + 2),
            connect_timeout=5,
            read_timeout=60,
        )
        self._schema: _Schema | None = None

    # -- the port ---------------------------------------------------------------------------------

    def scan(self) -> Iterator[RawSubscriber]:
        """Every item whose subscribed attribute is true (every item when none is configured)."""
        schema = self.schema()
        number = 0
        for page in self._scan_pages(schema):
            for item in page:
                number += 1
                row = self._to_raw(item, schema, number)
                if row is not None:
                    yield row

    def scan_rows(self) -> RowChunks:
        return chunked(self.scan(), tuple(self.data_attributes))

    def shape(self) -> SourceShape:
        """The mapped attributes (DescribeTable: a missing table or a denied role fails here)."""
        self.schema()
        return SourceShape(
            guid=self.guid_attribute is not None,
            data=tuple(self.data_attributes),
            consent=self.consent_attribute is not None,
        )

    @property
    def can_look_up(self) -> bool:
        return self.schema().partition_key == self.email_attribute or bool(self.email_index)

    def lookup(self, keys: Collection[str], also: Collection[str] = ()) -> SourceLookup:
        """Current subscribers among these canonical keys, plus items stored under the `also`
        spellings (a key look-up is exact: Ownpage's spelling of an address is worth a try too).

        Conclusive only with SOURCE_EMAIL_CANONICAL=true (the operator vouches that the key or index
        holds canonical addresses), and through an index only for the addresses it names an item for
        (it may not show a write yet); without a key or index on the address nothing can be looked up.
        """
        given = {email for email in (*keys, *also) if email}
        wanted = sorted(given | set(filter(None, map(idna_spelling, given))))  # `café` stored as `xn--caf-dma`
        every = frozenset(key for key in keys if key)
        schema = self.schema()
        if not wanted:
            return SourceLookup([])
        named: set[str] | None = None  # through an index: the keys it named an item for
        if schema.partition_key == self.email_attribute:
            items: Iterable[dict[str, Any]] = self._by_table_key(schema, wanted)
        elif self.email_index:
            named = set()
            items = self._by_index(schema, wanted, named)
        else:
            logger.warning(
                "no look-up possible: the address is neither the table's key nor SOURCE_EMAIL_INDEX",
                extra={"table": self.table, "addresses": len(wanted)},
            )
            return SourceLookup([], every)
        rows = []
        for number, item in enumerate(items, start=1):
            row = self._to_raw(item, schema, number)
            if row is not None:
                rows.append(row)
        if not self.email_canonical:
            return SourceLookup(rows, every)
        return SourceLookup(rows, frozenset() if named is None else every - named)

    # -- table shape ------------------------------------------------------------------------------

    def schema(self) -> _Schema:
        """The table's key schema and indexes (DescribeTable, once)."""
        if self._schema is None:
            table = self._call("describe_table", TableName=self.table)["Table"]
            keys = {key["KeyType"]: key["AttributeName"] for key in table["KeySchema"]}
            indexes: dict[str, _Index] = {}
            for index in [*table.get("GlobalSecondaryIndexes", []), *table.get("LocalSecondaryIndexes", [])]:
                index_keys = {key["KeyType"]: key["AttributeName"] for key in index["KeySchema"]}
                indexes[index["IndexName"]] = _Index(name=index["IndexName"], partition_key=index_keys["HASH"])
            self._schema = _Schema(keys["HASH"], keys.get("RANGE"), indexes)
        return self._schema

    def _attributes(self, schema: _Schema) -> list[str]:
        wanted = [self.email_attribute, *schema.keys]
        for optional in (self.subscribed_attribute, self.guid_attribute, self.consent_attribute):
            if optional:
                wanted.append(optional)
        wanted.extend(self.data_attributes.values())
        return list(dict.fromkeys(wanted))

    def _projection(self, schema: _Schema, names: _Names, attributes: Iterable[str] | None = None) -> str:
        return ", ".join(names.ref(attribute) for attribute in (attributes or self._attributes(schema)))

    # -- reading ----------------------------------------------------------------------------------

    def _scan_pages(self, schema: _Schema) -> Iterator[list[dict[str, Any]]]:
        names = _Names()
        request: dict[str, Any] = {"TableName": self.table, "ProjectionExpression": self._projection(schema, names)}
        request["ExpressionAttributeNames"] = names.names
        if self.page_limit:
            request["Limit"] = self.page_limit
        if self.segments == 1:
            yield from self._pages("scan", request)
        else:
            yield from self._parallel_pages(request)

    def _pages(self, operation: str, request: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        request = dict(request)
        while True:
            page = self._call(operation, **request)
            yield page.get("Items", [])
            last_key = page.get("LastEvaluatedKey")
            if not last_key:
                return
            request["ExclusiveStartKey"] = last_key

    def _parallel_pages(self, request: dict[str, Any]) -> Iterator[list[dict[str, Any]]]:
        """Pages of every segment, as they come; a bounded queue keeps memory to a few pages."""
        pages: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=self.segments * 2)
        stop = threading.Event()

        def put(message: tuple[str, Any]) -> bool:
            while not stop.is_set():
                try:
                    pages.put(message, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work(segment: int) -> None:
            try:
                for page in self._pages("scan", {**request, "Segment": segment, "TotalSegments": self.segments}):
                    if not put(("page", page)):
                        return
                put(("done", segment))
            except Exception as exc:  # handed to the consumer, which raises it
                put(("error", exc))

        threads = [
            threading.Thread(target=work, args=(segment,), name=f"scan-segment-{segment}", daemon=True)
            for segment in range(self.segments)
        ]
        for thread in threads:
            thread.start()
        try:
            running = len(threads)
            while running:
                kind, value = pages.get()
                if kind == "page":
                    yield value
                elif kind == "done":
                    running -= 1
                else:
                    raise value
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)

    def _by_table_key(self, schema: _Schema, wanted: list[str]) -> Iterator[dict[str, Any]]:
        if schema.sort_key is None:
            keys = [{self.email_attribute: {"S": email}} for email in wanted]
            yield from self._batch_get(schema, keys)
        else:  # several items per address: query the partition
            yield from self._query_each(schema, None, self.email_attribute, wanted, self._attributes(schema))

    def _by_index(self, schema: _Schema, wanted: list[str], named: set[str]) -> Iterator[dict[str, Any]]:
        """The items the index names for these addresses, read from the table (strongly consistent:
        the index may lag it); the keys of the addresses it named an item for are added to `named`."""
        index = schema.indexes.get(self.email_index or "")
        if index is None:
            raise SourceMisconfigured(
                f"dynamodb table {self.table!r} has no index {self.email_index!r} (SOURCE_EMAIL_INDEX)"
            )
        keys: dict[tuple[str, ...], dict[str, Any]] = {}
        attributes = list(dict.fromkeys([*schema.keys, index.partition_key]))
        for item in self._query_each(schema, index.name, index.partition_key, wanted, attributes):
            value = item.get(index.partition_key, {}).get("S")
            if isinstance(value, str):
                named.add(canonical_key(value))
            key = {name: item[name] for name in schema.keys}
            keys[tuple(repr(key[name]) for name in schema.keys)] = key
        yield from self._batch_get(schema, list(keys.values()))

    def _query_each(
        self, schema: _Schema, index: str | None, key_attribute: str, wanted: list[str], attributes: list[str]
    ) -> Iterator[dict[str, Any]]:
        for email in wanted:
            names = _Names()
            request: dict[str, Any] = {
                "TableName": self.table,
                "KeyConditionExpression": f"{names.ref(key_attribute)} = :email",
                "ExpressionAttributeValues": {":email": {"S": email}},
                "ProjectionExpression": self._projection(schema, names, attributes),
            }
            request["ExpressionAttributeNames"] = names.names
            if index is not None:
                request["IndexName"] = index
            else:
                request["ConsistentRead"] = True
            if self.page_limit:
                request["Limit"] = self.page_limit
            for page in self._pages("query", request):
                yield from page

    def _batch_get(self, schema: _Schema, keys: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        names = _Names()
        projection = self._projection(schema, names)
        for start in range(0, len(keys), BATCH_GET_LIMIT):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": keys[start : start + BATCH_GET_LIMIT],
                    "ConsistentRead": True,
                    "ProjectionExpression": projection,
                    "ExpressionAttributeNames": names.names,
                }
            }
            for attempt in range(UNPROCESSED_ATTEMPTS):
                answer = self._call("batch_get_item", RequestItems=request)
                yield from answer.get("Responses", {}).get(self.table, [])
                request = answer.get("UnprocessedKeys") or {}
                if not request:
                    break
                time.sleep(min(2.0, 0.05 * 2**attempt))  # DynamoDB asks us to slow down
            else:
                raise SourceError(
                    f"dynamodb table {self.table!r}: batch_get_item still throttled after {UNPROCESSED_ATTEMPTS} attempts"
                )

    # -- mapping and errors -----------------------------------------------------------------------

    def _to_raw(self, item: Mapping[str, Any], schema: _Schema, number: int) -> RawSubscriber | None:
        values = {name: _deserialize(value) for name, value in item.items()}
        if self.subscribed_attribute and not is_subscribed(values.get(self.subscribed_attribute)):
            return None
        return RawSubscriber(
            email=values.get(self.email_attribute),
            where=self._where(values, schema, number),
            guid=values.get(self.guid_attribute) if self.guid_attribute else None,
            data={name: values.get(attribute) for name, attribute in self.data_attributes.items()},
            consented_at=values.get(self.consent_attribute) if self.consent_attribute else None,
        )

    def _where(self, values: Mapping[str, Any], schema: _Schema, number: int) -> str:
        if self.email_attribute in schema.keys:
            return f"item #{number}"  # the key is the address itself: never in a report
        return "item " + ", ".join(f"{name}={_key_text(values.get(name))}" for name in schema.keys)

    def _call(self, operation: str, **request: Any) -> Any:
        try:
            return getattr(self.client, operation)(**request)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "Unknown"))
            if code == "ResourceNotFoundException":
                raise SourceMisconfigured(
                    f"dynamodb table {self.table!r}: not found (check SOURCE_TABLE, SOURCE_EMAIL_INDEX and the region)"
                ) from exc
            if code in _DENIED:
                raise SourceMisconfigured(
                    f"dynamodb table {self.table!r}: access denied to {operation} (check the function's IAM policy)"
                ) from exc
            if code in _THROTTLED:
                reason = f"{operation} still throttled after retries ({code})"
            else:
                reason = f"{operation} failed: {code}: {redact(str(error.get('Message', '')))}"
            raise SourceError(f"dynamodb table {self.table!r}: {reason}") from exc
        except BotoCoreError as exc:
            raise SourceError(
                f"dynamodb table {self.table!r}: {operation} could not reach DynamoDB: {type(exc).__name__}"
            ) from exc


def _deserialize(value: Any) -> Any:
    """An attribute as Python; a Binary as its bytes, as the SQL sources give a binary column (an
    address stored as Binary is then read as the UTF-8 text it holds, like theirs)."""
    try:
        plain = _deserializer.deserialize(value)
    except (TypeError, ValueError):
        return None
    return plain.value if isinstance(plain, Binary) else plain


def _key_text(value: Any) -> str:
    # Single-table designs put addresses in keys ("USER#a@b.c"): such a value is shown masked.
    text = str(value)
    text = mask_email(text) if "@" in text else text
    return text if len(text) <= _MAX_KEY_TEXT else text[: _MAX_KEY_TEXT - 1] + "…"
