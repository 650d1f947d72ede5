"""The I/O floor: the least any sync must spend reading both sides here, measured on the same
services, in the same process as the run, before and after it (the faster of each is kept).

- Ownpage: every page of the list (`status=all`, the run's page size) fetched with the library's own
  `requests` session and pool (`transport.new_session`), as many in flight as the run's read
  concurrency, each body read to its last byte and dropped.
- PostgreSQL: the run's own query as `COPY (query) TO STDOUT` on a pg8000 connection (the driver the
  source adapter uses), each CopyData message (one row) dropped as it arrives.
- DynamoDB: the run's projected parallel Scan (same segments) through botocore, which parses every
  page (it hands out no raw bytes); the items are dropped.

The parse floor adds what no Python sync can skip: each page decoded by msgspec into a struct of the
fields the diff needs (the library's decoder, without its per-row mapping), each COPY row decoded and
split into its fields.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import msgspec
from ownpage_sync.ownpage.transport import TOKEN_HEADER, new_session
from ownpage_sync.settings import Settings

DEFINITION = (
    "I/O floor = the Ownpage list paged over HTTP (status=all, the run's page size, the library's requests "
    "session and pool, the run's concurrency; bodies read to the last byte, not decoded) + the source streamed "
    "(PostgreSQL: the run's query as COPY … TO STDOUT through pg8000, each row message dropped; DynamoDB: the "
    "same parallel Scan through botocore, items dropped). Parse floor = the same, plus each page decoded by "
    "msgspec into a struct of the diff's fields and each COPY row split into its fields. Both measured in the "
    "run's process before and after the run; the faster of each part is kept."
)


@dataclass
class Floor:
    ownpage: float  # seconds: the list's bytes
    source: float  # seconds: the source's bytes
    ownpage_parsed: float  # seconds: the list, decoded
    source_parsed: float  # seconds: the source, split into fields
    ownpage_bytes: int
    source_bytes: int  # bytes (PostgreSQL) or items (DynamoDB)

    @property
    def total(self) -> float:
        return self.ownpage + self.source

    @property
    def parsed_total(self) -> float:
        return self.ownpage_parsed + self.source_parsed

    def best(self, other: Floor) -> Floor:
        return Floor(
            min(self.ownpage, other.ownpage),
            min(self.source, other.source),
            min(self.ownpage_parsed, other.ownpage_parsed),
            min(self.source_parsed, other.source_parsed),
            max(self.ownpage_bytes, other.ownpage_bytes),
            max(self.source_bytes, other.source_bytes),
        )

    def to_dict(self) -> dict[str, float]:
        return {
            "ownpage": self.ownpage,
            "source": self.source,
            "ownpage_parsed": self.ownpage_parsed,
            "source_parsed": self.source_parsed,
            "ownpage_bytes": self.ownpage_bytes,
            "source_bytes": self.source_bytes,
            "total": self.total,
            "parsed_total": self.parsed_total,
        }


def page_decoder(fields: Sequence[str]) -> Callable[[bytes], Any]:
    """msgspec, into the fields PageDecoder keeps (email, status, guid, unsubscription, data_*)."""
    row = msgspec.defstruct(
        "FloorRow",
        [
            ("email", object, None),
            ("subscribed", object, None),
            ("guid", object, None),
            ("unsubscribed_at", object, None),
            ("unsubscribed_cause", object, None),
            *((f"data_{name}", object, None) for name in fields),
        ],
    )
    return msgspec.json.Decoder(list[row]).decode  # type: ignore[valid-type]


def ownpage_floor(settings: Settings, decode: Callable[[bytes], Any] | None = None) -> tuple[float, int]:
    """Seconds to fetch every page (and decode it, with `decode`), and how many bytes came."""
    ownpage = settings.ownpage
    base = ownpage.api_url.rstrip("/")
    session = new_session(ownpage.read_concurrency + 2)
    try:
        credentials = {"username": ownpage.client, "password": ownpage.api_key}
        token_answer = session.post(f"{base}/token", json=credentials, timeout=30)
        token_answer.raise_for_status()
        headers = {"Accept": "application/json", TOKEN_HEADER: token_answer.json()["token"]}
        url = f"{base}/newsletters/lists/{ownpage.list_id}/subscribers"
        counts = session.get(f"{url}/count", headers=headers, timeout=30)
        counts.raise_for_status()
        rows = int(counts.json()["subscribed"]) + int(counts.json()["unsubscribed"])
        size = ownpage.page_size

        def fetch(offset: int) -> int:
            params: dict[str, str | int] = {"status": "all", "offset": offset, "count": size}
            answer = session.get(url, params=params, headers=headers, timeout=60)
            answer.raise_for_status()
            if decode is not None:
                decode(answer.content)
            return len(answer.content)

        offsets = [page * size for page in range(max(1, math.ceil(rows / size)))]
        began = time.perf_counter()
        with ThreadPoolExecutor(max_workers=ownpage.read_concurrency) as pool:
            received = sum(pool.map(fetch, offsets))
        return time.perf_counter() - began, received
    finally:
        session.close()


class _Discard:
    """pg8000 writes each CopyData message (one text row) here; only its size is kept."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)


class _Split(_Discard):
    def write(self, data: bytes) -> None:
        self.size += len(data)
        bytes(data)[:-1].decode("utf-8").split("\t")


def postgresql_floor(settings: Settings, sink: _Discard) -> tuple[float, int]:
    import pg8000.native
    from ownpage_sync.sources.sql import connection_params, strip_query

    params = connection_params(settings.source)
    connection = pg8000.native.Connection(
        user=params.user,
        host=params.host,
        port=params.port,
        database=params.database,
        password=params.password or None,
        ssl_context=False,
        timeout=params.connect_timeout,
    )
    try:
        began = time.perf_counter()
        connection.run("START TRANSACTION READ ONLY")
        connection.run(f"COPY (\n{strip_query(settings.source.query or '')}\n) TO STDOUT", stream=sink)
        connection.run("ROLLBACK")
        return time.perf_counter() - began, sink.size
    finally:
        connection.close()


def dynamodb_floor(settings: Settings) -> tuple[float, int]:
    from ownpage_sync import aws

    source = settings.source
    segments = max(1, source.scan_segments)
    client = aws.client("dynamodb", max_pool_connections=segments + 2)
    keys = [key["AttributeName"] for key in client.describe_table(TableName=source.table)["Table"]["KeySchema"]]
    optional = (source.subscribed_attribute, source.guid_attribute, source.consent_attribute)
    attributes = [source.email_attribute, *keys, *(name for name in optional if name), *source.data_attributes.values()]
    names = {f"#a{i}": name for i, name in enumerate(dict.fromkeys(attributes))}
    request: dict[str, Any] = {
        "TableName": source.table,
        "ProjectionExpression": ", ".join(names),
        "ExpressionAttributeNames": names,
    }
    items = [0] * segments
    lock = threading.Lock()

    def scan(segment: int) -> None:
        page_request = {**request, "Segment": segment, "TotalSegments": segments}
        while True:
            page = client.scan(**page_request)
            with lock:
                items[segment] += len(page.get("Items", ()))
            if not page.get("LastEvaluatedKey"):
                return
            page_request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=segments) as pool:
        list(pool.map(scan, range(segments)))
    return time.perf_counter() - began, sum(items)


def measure_floor(settings: Settings, fields: Sequence[str]) -> Floor:
    """Both floors once. `fields`: the mapped data attributes (what the run's decoder keeps)."""
    ownpage_seconds, ownpage_bytes = ownpage_floor(settings)
    ownpage_parsed, _ = ownpage_floor(settings, page_decoder(fields))
    if settings.source.kind == "postgresql":
        source_seconds, source_bytes = postgresql_floor(settings, _Discard())
        source_parsed, _ = postgresql_floor(settings, _Split())
    else:  # botocore parses anyway: both floors are the same scan
        source_seconds, source_bytes = dynamodb_floor(settings)
        source_parsed = source_seconds
    return Floor(ownpage_seconds, source_seconds, ownpage_parsed, source_parsed, ownpage_bytes, source_bytes)
