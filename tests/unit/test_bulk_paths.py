"""The planner's bulk paths decide exactly what its general path decides, row by row.

A full run folds Ownpage's pages as columns (PageDecoder's `SubscribedRows`) and compares the source a
chunk at a time (PostgreSQL's COPY text split in one call, keys found and field hashes compared as
arrays). Those paths are only allowed to conclude "nothing to do" where the general path would; the
oracle here is the general path itself (`OwnpageIndex.add`, `Planner.add_source_row`), fed the same
rows one at a time.
"""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ownpage_sync.emails import canonical_key
from ownpage_sync.index import field_hash, value_hashes
from ownpage_sync.models import OwnpageSubscriber
from ownpage_sync.ownpage.mapping import PageDecoder
from ownpage_sync.planner import Plan, Planner, PlanPolicy
from ownpage_sync.sources.base import RawSubscriber, RowChunks, RowLayout
from ownpage_sync.sources.postgresql import CopyRows
from ownpage_sync.sources.sql import Column, ColumnMap
from ownpage_sync.values import clean_edges, normalise_column, normalise_data_value

from tests.fakes import Row
from tests.unit.test_planner_properties import MAPPED, PROPERTY, ownpage_rows, policies, raw_rows

pytestmark = pytest.mark.unit

COLUMNS = ColumnMap(
    [Column("email"), Column("guid"), Column("consented_at"), Column("data_firstname"), Column("data_city")]
)
LAYOUT = RowLayout(email=COLUMNS.email, guid=COLUMNS.guid, data=tuple(COLUMNS.data))
_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\b": "\\b", "\f": "\\f", "\v": "\\v"}


def copy_text(value: Any) -> bytes:
    """One field as PostgreSQL's COPY … TO STDOUT writes it."""
    if value is None:
        return b"\\N"
    text = value if isinstance(value, str) else str(value)
    return "".join(_ESCAPES.get(char, char) for char in text).encode("utf-8", "surrogatepass")


def copy_lines(rows: list[RawSubscriber]) -> list[bytes]:
    return [
        b"\t".join(
            copy_text(value)
            for value in (row.email, row.guid, row.consented_at, row.data.get("firstname"), row.data.get("city"))
        )
        + b"\n"
        for row in rows
    ]


def with_equal_rows(truth: list[Row], rows: list[RawSubscriber], seed: random.Random) -> list[OwnpageSubscriber]:
    """Ownpage as it is, plus source addresses held subscribed with equal values (mostly: the bulk
    path's "equal") or one value different (its "differs")."""
    read = [row.read() for row in truth]
    for row in rows:
        if isinstance(row.email, str) and canonical_key(row.email) and seed.random() < 0.6:
            values = {name: normalise_data_value(v) if seed.random() < 0.8 else "Other" for name, v in row.data.items()}
            guid = normalise_data_value(row.guid) if seed.random() < 0.8 else "g-other"
            spelling = canonical_key(row.email) if seed.random() < 0.8 else row.email.strip()
            read.append(OwnpageSubscriber(spelling, True, guid, {k: v for k, v in values.items() if v is not None}))
    return read


def same_plans(bulk: Plan, oracle: Plan) -> None:
    assert list(bulk.operations()) == list(oracle.operations())
    assert bulk.suppressed == oracle.suppressed and bulk.counts() == oracle.counts()
    assert (bulk.source.rows_read, bulk.source.subscribers, bulk.source.invalid) == (
        oracle.source.rows_read,
        oracle.source.subscribers,
        oracle.source.invalid,
    )
    assert bulk.source.duplicates + bulk.source.collisions == oracle.source.duplicates + oracle.source.collisions


@PROPERTY
@given(rows=raw_rows(), truth=ownpage_rows(), policy=policies, seed=st.randoms(use_true_random=False))
def test_copy_text_chunks_plan_what_their_rows_plan_one_at_a_time(
    rows: list[RawSubscriber], truth: list[Row], policy: PlanPolicy, seed: random.Random
) -> None:
    # Given the source as PostgreSQL's COPY sends it (NULLs, escapes, white space, any case), in two
    # chunks, and Ownpage holding many of its addresses with equal values
    rows = rows + [rows[i] for i in range(0, len(rows), 3)]  # some rows twice
    lines = copy_lines(rows)
    cut = seed.randint(0, len(lines))
    chunks = [CopyRows(b"".join(part)) for part in (lines[:cut], lines[cut:]) if part]
    read = with_equal_rows(truth, rows, seed)

    # When the chunks are folded in bulk, and their rows one at a time by the general path
    bulk = Planner(policy, MAPPED, compare_guid=True)
    bulk.add_ownpage(read)
    bulk.add_source_rows(RowChunks(LAYOUT, iter(chunks), COLUMNS.to_raw))
    oracle = Planner(policy, MAPPED, compare_guid=True)
    oracle.add_ownpage(read)
    number = 0
    for chunk in chunks:
        for row in chunk:
            number += 1
            oracle.add_source_row(COLUMNS.to_raw(row, number))

    # Then the plans are the same, write for write, and so are the counts
    same_plans(bulk.finish(), oracle.finish())


@PROPERTY
@given(rows=raw_rows(), truth=ownpage_rows(), policy=policies, seed=st.randoms(use_true_random=False))
def test_rows_read_as_a_databases_bytes_plan_what_the_decoded_rows_plan(
    rows: list[RawSubscriber], truth: list[Row], policy: PlanPolicy, seed: random.Random
) -> None:
    # Given the source rows in the bulk form of a database's driver: each a sequence of fields, the
    # text ones (some of them) still UTF-8 bytes, the others as the driver typed them
    layout = RowLayout(email=0, guid=1, data=(("firstname", 2), ("city", 3)))

    def wire(value: object) -> object:
        return value.encode("utf-8") if isinstance(value, str) and seed.random() < 0.8 else value

    def decoded(value: object) -> object:
        return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value

    fields = [[wire(row.email), wire(row.guid), *(wire(row.data.get(name)) for name in MAPPED), row] for row in rows]

    def to_raw(fields_of_row: Sequence[object], number: int) -> RawSubscriber:
        original = fields_of_row[-1]
        assert isinstance(original, RawSubscriber)
        data = {name: decoded(fields_of_row[2 + i]) for i, name in enumerate(MAPPED) if name in original.data}
        return RawSubscriber(
            decoded(fields_of_row[0]), original.where, decoded(fields_of_row[1]), data, original.consented_at
        )

    read = with_equal_rows(truth, rows, seed)

    # When the bulk form is folded, and the rows one at a time by the general path
    bulk = Planner(policy, MAPPED, compare_guid=True)
    bulk.add_ownpage(read)
    bulk.add_source_rows(RowChunks(layout, iter([fields[:5], fields[5:]]), to_raw))
    oracle = Planner(policy, MAPPED, compare_guid=True)
    oracle.add_ownpage(read)
    for row in rows:
        oracle.add_source_row(row)

    # Then the plans are the same, write for write, and so are the counts
    same_plans(bulk.finish(), oracle.finish())


page_emails = st.sampled_from(
    [
        *("ann@example.com", "Ann@Example.com", " ann@example.com ", "bob@example.com", "carl@example.com"),
        *("zoé@example.com", "Zoé@example.com", "straße@example.de", "strasse@example.de", "\ufeffbob@example.com"),
        *("ana@café.fr", "ana@xn--caf-dma.fr", "Ana@XN--CAF-DMA.FR", "ana@xn--bad"),  # a domain in IDNA
        *("", "  "),
    ]
)
page_values = st.sampled_from((None, "Ann", " Ann", "Zoé", "", 42, 4.0, True, "Paris", "Lyon"))
page_status = st.sampled_from((True, True, True, False, None, "yes", 1, "missing"))
page_causes = st.sampled_from((None, "READER", "PUBLISHER", "reader", "HARD_BOUNCE", "LATER"))
page_times = st.sampled_from((None, "2024-03-01T09:30:00Z", "2024-03-01", "garbage", 0))


@st.composite
def ownpage_pages(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """Pages of GET …/subscribers: odd values, several spellings of one key, rows read twice."""
    rows: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(min_value=0, max_value=14))):
        row: dict[str, Any] = {"email": draw(page_emails), "guid": draw(page_values)}
        status = draw(page_status)
        if status != "missing":
            row["subscribed"] = status
        if status is not True:
            row["unsubscribed_cause"] = draw(page_causes)
            row["unsubscribed_at"] = draw(page_times)
        for name in MAPPED:
            row[f"data_{name}"] = draw(page_values)
        rows.append(row)
    rows += draw(st.lists(st.sampled_from(rows), max_size=4)) if rows else []  # read twice
    cut = draw(st.integers(min_value=0, max_value=len(rows)))
    return [rows[:cut], rows[cut:]]


@PROPERTY
@given(pages=ownpage_pages(), source=raw_rows(), policy=policies)
def test_pages_folded_as_columns_plan_what_their_rows_plan_one_at_a_time(
    pages: list[list[dict[str, Any]]], source: list[RawSubscriber], policy: PlanPolicy
) -> None:
    # Given pages as Ownpage sends them, decoded as a full read decodes them (columns for the
    # plainly subscribed rows)
    decoder = PageDecoder(MAPPED)
    decoded = [decoder(json.dumps(page).encode())[0] for page in pages]

    # When the pages are folded in bulk, and their rows one at a time by the general path, in the
    # order the bulk path documents: within a page, the plainly subscribed rows spelled as their key
    # first, then the page's other rows in order
    bulk = Planner(policy, MAPPED, compare_guid=True, now=datetime(2025, 1, 1, tzinfo=UTC))
    oracle = Planner(policy, MAPPED, compare_guid=True, now=datetime(2025, 1, 1, tzinfo=UTC))
    for number, page in enumerate(decoded):
        bulk.add_ownpage(page)
        if number == 0:
            bulk.ownpage_stats()  # settled after the first page, as the read proof does after a pass
        plain = [page.subscribed.row(number) for number in range(len(page.subscribed))]
        keyed = [row for row in plain if row.email and row.email == canonical_key(row.email)]
        for row in [*keyed, *(row for row in plain if row not in keyed), *page.others]:
            oracle.index.add(row)
    for row in source:
        bulk.add_source_row(row)
        oracle.add_source_row(row)

    # Then the plans, and what the read proof is shown, are the same (the masked samples of shared
    # keys in any order: settling merges key by key)
    plan, expected = bulk.finish(), oracle.finish()
    same_plans(plan, expected)
    assert replace(plan.ownpage, samples=sorted(plan.ownpage.samples)) == replace(
        expected.ownpage, samples=sorted(expected.ownpage.samples)
    )


@given(values=st.lists(st.one_of(st.none(), st.text(max_size=6), st.binary(max_size=6), st.integers()), max_size=8))
def test_a_column_is_normalised_and_hashed_as_its_values_one_by_one(values: list[Any]) -> None:
    # Given any column of values (text, a database's bytes, UTF-8 or not, numbers, NULLs, white
    # space anywhere)
    # When it is normalised and hashed in one call
    # Then each hash is that of the value as the general path reads it (normalise_data_value)
    hashes = value_hashes(normalise_column(values)).tolist()
    assert hashes == [field_hash(normalise_data_value(value)) for value in values]


@pytest.mark.parametrize(
    ("joined", "clean"),
    [
        (b"a\x00b c\x00d", True),
        (b"a\x00 b", False),
        (b"a \x00b", False),
        (b" a", False),
        (b"a\x1f", False),
        ("ab\x00cd", True),
        ("é b\x00x", True),
        ("é \x00x", False),
        ("é\x00\u2003x", False),
        ("a\u00a0", False),
    ],
)
def test_edge_space_is_found_in_a_joined_column(joined: bytes | str, clean: bool) -> None:
    assert clean_edges(joined) is clean


def test_addresses_beyond_ascii_are_matched_in_bulk_on_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given Ownpage holding addresses beyond ASCII, spelled as their keys, in a page of columns
    emails = ["josé@exämple.org", "ñandú@例え.jp", "ann@example.com"]
    page = [{"email": email, "subscribed": True, "guid": "g", "data_firstname": "Zoé"} for email in emails]
    planner = Planner(PlanPolicy(), MAPPED, compare_guid=True)
    general: list[str] = []
    monkeypatch.setattr(planner.index, "add", lambda row: general.append(row.email))
    planner.add_ownpage(PageDecoder(MAPPED)(json.dumps(page).encode())[0])

    # And the source spelling them otherwise: in capitals as UTF-8 bytes, decomposed (NFD) as text
    fields = [
        ["JOSÉ@EXÄMPLE.ORG".encode(), b"g", "Zoé".encode(), None],
        [unicodedata.normalize("NFD", " Ñandú@例え.jp"), "g", "Zoé", None],
        [b"Ann@Example.com", b"g", b"Zo\xc3\xa9", None],
    ]
    layout = RowLayout(email=0, guid=1, data=(("firstname", 2), ("city", 3)))

    def to_raw(row: Sequence[Any], number: int) -> RawSubscriber:
        general.append(str(row[0]))
        return COLUMNS.to_raw(row, number)

    planner.add_source_rows(RowChunks(layout, iter([fields]), to_raw))

    # Then every row was matched by columns (neither side's general path ran), and nothing changes
    assert general == []
    plan = planner.finish()
    assert plan.counts()["unchanged"] == 3 and plan.write_count == 0
