"""Adversarial: the full run's bulk paths (columns, COPY text split at once) against the general path.

An adversarial pass fed both the same rows and found values the bulk path read differently from the
general path, each time in the dangerous direction (a row taken as unchanged or listed where the
general path writes). Each case below failed before it was fixed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from boto3.dynamodb.types import Binary
from ownpage_sync.models import Action, OwnpageSubscriber
from ownpage_sync.planner import Plan, Planner, PlanPolicy
from ownpage_sync.sources.base import RawSubscriber, RowChunks, RowLayout
from ownpage_sync.sources.postgresql import CopyRows
from ownpage_sync.sources.sql import Column, ColumnMap

pytestmark = pytest.mark.unit

ANN = OwnpageSubscriber("ann@example.com", True, "g1", {"city": "Paris"})


def both(ownpage: Sequence[OwnpageSubscriber], chunks: list[Any], columns: ColumnMap) -> tuple[Plan, Plan]:
    """The bulk read (as SqlSource.scan_rows builds it) and the general path, row by row."""
    layout = RowLayout(email=columns.email, guid=columns.guid, data=tuple(columns.data))
    bulk = Planner(PlanPolicy(), ("city",))
    bulk.add_ownpage(ownpage)
    bulk.add_source_rows(RowChunks(layout, iter(chunks), columns.to_raw, frozenset(columns.binary)))
    oracle = Planner(PlanPolicy(), ("city",))
    for row in ownpage:
        oracle.index.add(row)
    number = 0
    for chunk in chunks:
        for row in chunk:
            number += 1
            oracle.add_source_row(columns.to_raw(row, number))
    return bulk.finish(), oracle.finish()


def test_a_sources_bytes_are_text_on_both_paths() -> None:
    # Given a source handing an address and values as UTF-8 bytes (RawSubscriber rows, as a
    # driver may return them), Ownpage holding the same reader with the same values
    rows = [RawSubscriber(b"ann@example.com", "row 1", b"g1", {"city": b"Paris"})]
    bulk = Planner(PlanPolicy(), ("city",))
    bulk.add_ownpage([ANN])
    bulk.add_source(rows)
    oracle = Planner(PlanPolicy(), ("city",))
    oracle.index.add(ANN)
    oracle.add_source_row(rows[0])

    # Then neither path unsubscribes her nor rewrites her values as "b'Paris'"
    for plan in (bulk.finish(), oracle.finish()):
        assert list(plan.operations()) == [] and plan.unchanged == 1


def test_a_binary_column_is_compared_decoded_not_as_copys_hex() -> None:
    # Given a bytea city that COPY sends as `\x5061726973` ("Paris"), and an Ownpage row whose city
    # is that hex text itself
    columns = ColumnMap([Column("email"), Column("guid"), Column("data_city", binary=True)])
    ownpage = [OwnpageSubscriber("ann@example.com", True, "g1", {"city": "\\x5061726973"})]
    chunks = [CopyRows(b"ann@example.com\tg1\t\\\\x5061726973\n")]

    # Then the bulk path leaves the value to the general path, which decodes it and updates the row
    bulk, oracle = both(ownpage, chunks, columns)
    assert list(bulk.operations()) == list(oracle.operations())
    assert [(op.action, dict(op.data)) for op in bulk.operations()] == [(Action.UPDATE, {"city": "Paris"})]


def test_bytes_that_are_not_utf8_compare_as_the_general_path_reads_them() -> None:
    # Given a source field that is not UTF-8 (a SQL_ASCII database) and an Ownpage value holding the
    # lone surrogate the tolerant decoder may give
    columns = ColumnMap([Column("email"), Column("guid"), Column("data_city")])
    ownpage = [OwnpageSubscriber("ann@example.com", True, "g1", {"city": "\udcff"})]
    chunks = [CopyRows(b"ann@example.com\tg1\t\xed\xb3\xbf\n")]

    # Then both paths plan the same write
    bulk, oracle = both(ownpage, chunks, columns)
    assert list(bulk.operations()) == list(oracle.operations()) and bulk.counts() == oracle.counts()


def test_non_ascii_white_space_around_a_value_is_stripped_on_both_paths() -> None:
    # Given a source city ending in a no-break space, and an Ownpage value that kept it
    columns = ColumnMap([Column("email"), Column("guid"), Column("data_city")])
    ownpage = [OwnpageSubscriber("ann@example.com", True, "g1", {"city": "Paris\u00a0"})]
    chunks = [CopyRows("ann@example.com\tg1\tParis\u00a0\n".encode())]

    # Then the bulk path strips it as the general path does: the value written is "Paris"
    bulk, oracle = both(ownpage, chunks, columns)
    assert list(bulk.operations()) == list(oracle.operations())
    assert [dict(op.data) for op in bulk.operations()] == [{"city": "Paris"}]


def test_a_dynamodb_binary_value_is_text_not_a_crash() -> None:
    # Given a DynamoDB item whose mapped attribute and guid are Binary (boto3's type)
    rows = [RawSubscriber("ann@example.com", "item 1", Binary(b"g1"), {"city": Binary(b"Lyon")})]

    # When it is planned against Ownpage holding her with another city
    planner = Planner(PlanPolicy(), ("city",))
    planner.add_ownpage([ANN])
    planner.add_source(rows)

    # Then the run does not crash: the Binary is read as the UTF-8 text it holds
    assert [dict(op.data) for op in planner.finish().operations()] == [{"city": "Lyon"}]
