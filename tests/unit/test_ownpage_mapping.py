"""Ownpage's answers as the project's values (ownpage/mapping.py): rows decoded defensively, counts,
the upsert's `errors` as Rejections, and the redaction of every text taken from an answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from ownpage_sync.errors import OwnpageProtocolError
from ownpage_sync.models import OwnpageSubscriber
from ownpage_sync.ownpage.mapping import PageDecoder, counts_from, rejected, rejections
from ownpage_sync.ports import Rejection
from ownpage_sync.redaction import Addresses, redact

pytestmark = pytest.mark.unit

FIELDS = ("city", "zip", "flag")

# Each readable row with what mapping.py documents for it.
ODD_ROWS: list[tuple[dict[str, Any], OwnpageSubscriber]] = [
    ({"email": "yes@example.org", "subscribed": "yes"}, OwnpageSubscriber("yes@example.org", True)),
    ({"email": "yes2@example.org", "subscribed": " YES "}, OwnpageSubscriber("yes2@example.org", True)),
    ({"email": "no@example.org", "subscribed": "no"}, OwnpageSubscriber("no@example.org", False)),
    ({"email": "zero@example.org", "subscribed": 0}, OwnpageSubscriber("zero@example.org", False)),
    # a status that is present but unreadable is unknown (the planner suppresses it)
    ({"email": "maybe@example.org", "subscribed": "maybe"}, OwnpageSubscriber("maybe@example.org", None)),
    ({"email": "two@example.org", "subscribed": 2}, OwnpageSubscriber("two@example.org", None)),
    ({"email": "obj@example.org", "subscribed": {"v": True}}, OwnpageSubscriber("obj@example.org", None)),
    # an explicit null says nothing: unknown (suppresses), unlike a row without the field
    ({"email": "null@example.org", "subscribed": None}, OwnpageSubscriber("null@example.org", None)),
    (
        {"email": "nulls@example.org", "subscribed": None, "unsubscribed_at": None, "unsubscribed_cause": None},
        OwnpageSubscriber("nulls@example.org", None),
    ),
    # no status but a sign of an unsubscription: unknown too, never "subscribed"
    (
        {"email": "nostatus@example.org", "unsubscribed_cause": "publisher"},
        OwnpageSubscriber("nostatus@example.org", None, unsubscribed_cause="PUBLISHER"),
    ),
    ({"email": "bare@example.org"}, OwnpageSubscriber("bare@example.org", True, bare=True)),  # no status: said so
    # a cause that only Unicode upper-casing makes PUBLISHER (dotless i, long s): unknown, kept as sent
    (
        {"email": "dotless@example.org", "subscribed": False, "unsubscribed_cause": " publ\u0131sher"},
        OwnpageSubscriber("dotless@example.org", False, unsubscribed_cause=" publ\u0131sher"),
    ),
    (  # and Unicode white space (str.strip would leave PUBLISHER)
        {"email": "nbsp@example.org", "subscribed": False, "unsubscribed_cause": "PUBLISHER\u00a0"},
        OwnpageSubscriber("nbsp@example.org", False, unsubscribed_cause="PUBLISHER\u00a0"),
    ),
    (
        {"email": "longs@example.org", "subscribed": False, "unsubscribed_cause": "PUBLI\u017fHER"},
        OwnpageSubscriber("longs@example.org", False, unsubscribed_cause="PUBLI\u017fHER"),
    ),
    (
        {"email": "plain@example.org", "subscribed": True, "guid": " g-1 ", "data_city": " Lyon ", "data_zip": 69001},
        OwnpageSubscriber("plain@example.org", True, guid="g-1", data={"city": "Lyon", "zip": "69001"}),
    ),
    (
        {"email": "guid@example.org", "guid": 12345},
        OwnpageSubscriber("guid@example.org", True, guid="12345", bare=True),
    ),
    ({"email": "fguid@example.org", "guid": 7.0}, OwnpageSubscriber("fguid@example.org", True, guid="7", bare=True)),
    (
        {
            "email": "year-one@example.org",
            "subscribed": False,
            "unsubscribed_at": "0001-01-01T00:00:00+01:00",
            "unsubscribed_cause": "hard_bounce",
        },
        OwnpageSubscriber("year-one@example.org", False, unsubscribed_cause="HARD_BOUNCE", bad_time=True),
    ),
    (
        {"email": "nested@example.org", "subscribed": "false", "unsubscribed_at": {"t": 1}},
        OwnpageSubscriber("nested@example.org", False, bad_time=True),
    ),
    (
        {"email": "huge@example.org", "subscribed": False, "unsubscribed_at": 10**20},
        OwnpageSubscriber("huge@example.org", False, bad_time=True),
    ),
    # placeholder times (epoch 0, year 1, 1999): unreadable, so no opt-in can be newer than them
    (
        {"email": "zero-time@example.org", "subscribed": False, "unsubscribed_at": 0, "unsubscribed_cause": "READER"},
        OwnpageSubscriber("zero-time@example.org", False, unsubscribed_cause="READER", bad_time=True),
    ),
    (
        {"email": "epoch-text@example.org", "subscribed": False, "unsubscribed_at": "1970-01-01T00:00:00Z"},
        OwnpageSubscriber("epoch-text@example.org", False, bad_time=True),
    ),
    (
        {"email": "year-one-utc@example.org", "subscribed": False, "unsubscribed_at": "0001-01-01T00:00:00Z"},
        OwnpageSubscriber("year-one-utc@example.org", False, bad_time=True),
    ),
    (
        {"email": "y1999@example.org", "subscribed": False, "unsubscribed_at": "1999-12-31T23:59:59Z"},
        OwnpageSubscriber("y1999@example.org", False, bad_time=True),
    ),
    (
        {"email": "epoch@example.org", "subscribed": False, "unsubscribed_at": 1_700_000_000},
        # epoch seconds: the last moment of that second (the exact moment within it is unknown)
        OwnpageSubscriber(
            "epoch@example.org", False, unsubscribed_at=datetime.fromtimestamp(1_700_000_000.999999, tz=UTC)
        ),
    ),
    (
        {
            "email": "lower@example.org",
            "subscribed": False,
            "unsubscribed_cause": " reader ",
            "unsubscribed_at": "2025-01-31T09:15:02z",
        },
        OwnpageSubscriber(
            "lower@example.org",
            False,
            unsubscribed_cause="READER",
            unsubscribed_at=datetime(2025, 1, 31, 9, 15, 2, 999_999, tzinfo=UTC),  # the end of that second
        ),
    ),
    # a subscribed row's unsubscription time is not read (nor counted as bad)
    (
        {"email": "sub@example.org", "subscribed": True, "unsubscribed_at": "garbage", "unsubscribed_cause": " "},
        OwnpageSubscriber("sub@example.org", True),
    ),
    (
        {"email": "data@example.org", "data_city": 75, "data_zip": 75001.0, "data_flag": True, "data_other": "x"},
        OwnpageSubscriber("data@example.org", True, data={"city": "75", "zip": "75001", "flag": "true"}, bare=True),
    ),
    (
        {"email": "blank@example.org", "data_city": "  ", "data_zip": None},
        OwnpageSubscriber("blank@example.org", True, bare=True),
    ),
    # Ownpage's spelling is kept as it is: it addresses this row in writes
    ({"email": "  Spaced@Example.ORG "}, OwnpageSubscriber("  Spaced@Example.ORG ", True, bare=True)),
]
NO_USABLE_EMAIL: list[dict[str, Any]] = [
    {"guid": "no-email"},
    {"email": ""},
    {"email": "   "},
    {"email": "   ", "subscribed": True},
    {"email": 7, "subscribed": True},
]
NOT_OBJECTS: list[Any] = ["a string", 42, None, ["a", "list"], True]


@pytest.mark.parametrize("junk", [False, True], ids=["objects-only", "with-non-objects"])
def test_odd_row_values_are_mapped_as_documented_and_never_crash(junk: bool) -> None:
    # Given a page of odd rows, rows without a usable email and (on the slow, tolerant path) rows that
    # are not objects at all
    page: list[Any] = [row for row, _ in ODD_ROWS] + NO_USABLE_EMAIL + (NOT_OBJECTS if junk else [])
    # When it is decoded for three attributes
    subscribers, skipped = PageDecoder(FIELDS)(json.dumps(page).encode())
    # Then every readable row is mapped as documented, in order, and the others are counted as skipped
    assert subscribers == [expected for _, expected in ODD_ROWS]
    assert skipped == len(NO_USABLE_EMAIL) + (len(NOT_OBJECTS) if junk else 0)
    assert subscribers[-1].key == "spaced@example.org"


def test_only_the_asked_attributes_are_kept() -> None:
    # Given a row with many attributes
    body = json.dumps([{"email": "a@example.org", "data_city": "Lyon", "data_age": 4, "data_zip": "69001"}])
    # When decoded without fields, and with one
    nothing, _ = PageDecoder(())(body.encode())
    city, _ = PageDecoder(("city",))(body.encode())
    # Then data holds exactly the asked attributes
    assert dict(nothing[0].data) == {}
    assert dict(city[0].data) == {"city": "Lyon"}


@pytest.mark.parametrize("body", [b'{"subscribers": []}', b"null", b'"text"', b"42"])
def test_a_page_that_is_not_an_array_is_a_protocol_error(body: bytes) -> None:
    # Given an answer that is JSON but not an array / When decoded / Then a protocol error naming its type
    with pytest.raises(OwnpageProtocolError, match="expected a JSON array of subscribers"):
        PageDecoder(())(body)


def test_a_page_with_a_lone_surrogate_escape_is_read_by_the_tolerant_path() -> None:
    # Given a page whose JSON holds "\ud800" in an address (msgspec refuses it; Python's json reads it)
    body = b'[{"email": "\\ud800x@example.com", "subscribed": true}, {"email": "ann@example.com", "subscribed": true}]'

    # When it is decoded / Then both rows are read, the odd one with its lone surrogate, not the page failed
    rows, skipped = PageDecoder(FIELDS)(body)
    assert [row.email for row in rows] == ["\ud800x@example.com", "ann@example.com"] and skipped == 0


@pytest.mark.parametrize("body", [b'[{"email": "a@b.co"', b"[1, 2,]", b"\xff"])
def test_a_body_that_is_not_json_is_still_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        PageDecoder(FIELDS)(body)


def test_an_empty_page_decodes_to_nothing() -> None:
    assert PageDecoder(FIELDS)(b"[]") == ([], 0)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"subscribed": 3, "unsubscribed": 2, "cause": {"READER": 2}}, (3, 2, {"READER": 2})),
        (
            {"subscribed": "3", "unsubscribed": 2.0, "cause": {"READER": "x", "HARD_BOUNCE": 1}},
            (3, 2, {"HARD_BOUNCE": 1}),
        ),
        ({"subscribed": 3, "unsubscribed": 0, "cause": None}, (3, 0, {})),
    ],
)
def test_counts_are_read_defensively(payload: dict[str, Any], expected: tuple[int, int, dict[str, int]]) -> None:
    counts = counts_from(payload)
    assert (counts.subscribed, counts.unsubscribed, dict(counts.causes)) == expected


@pytest.mark.parametrize(
    "payload", [[], {"subscribed": 3}, {"subscribed": -1, "unsubscribed": 0}, {"subscribed": True, "unsubscribed": 0}]
)
def test_counts_that_are_not_the_documented_shape_are_a_protocol_error(payload: Any) -> None:
    with pytest.raises(OwnpageProtocolError):
        counts_from(payload)


# -- errors and redaction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        (None, ()),
        ([], ()),
        ("", ()),
        ({}, ()),
        (["email is not valid X@Bad.test"], (Rejection("x@bad.test", "email is not valid <address>"),)),
        ([{"email": "x@bad.test", "error": "email is not valid"}], (Rejection("x@bad.test", "email is not valid"),)),
        ({"x@bad.test": "email is not valid"}, (Rejection("x@bad.test", "<address>: email is not valid"),)),
        ({"email": "y@", "reason": "bounced"}, (Rejection("y@", "bounced"),)),
        # an error naming no address of the batch is still surfaced, with email ""
        (["quota exceeded"], (Rejection("", "quota exceeded"),)),
        (["email is not valid stranger@other.test"], (Rejection("", "email is not valid <address>"),)),
        (["email is not valid stranger&#64;other.test"], (Rejection("", "email is not valid <address>"),)),
        ([42], (Rejection("", "42"),)),
        # one text naming two addresses of the batch gives two rejections
        (
            "2 error(s): y@, x@bad.test",
            (
                Rejection("y@", "2 error(s): <address>, <address>"),
                Rejection("x@bad.test", "2 error(s): <address>, <address>"),
            ),
        ),
    ],
)
def test_rejections_from_every_shape_of_errors(errors: Any, expected: tuple[Rejection, ...]) -> None:
    # Given a batch and one shape of Ownpage's `errors`
    batch = Addresses(["a@example.com", "x@bad.test", "y@"])
    # When mapped / Then the addresses are identified and absent from the reasons
    assert rejections(errors, batch, ()) == expected


def test_an_invalid_address_without_at_sign_is_still_redacted() -> None:
    # Given a batch with an address that has no @ at all
    batch = Addresses(["not-an-address", "a@example.com"])
    # When Ownpage names it
    found = rejections(["email is not valid not-an-address"], batch, ())
    # Then it is identified, and the reason does not repeat it
    assert found == (Rejection("not-an-address", "email is not valid <address>"),)


@pytest.mark.parametrize(
    "spelling",
    [
        "ann@example.org",
        "ann%40example.org",
        "ann%40Example.org",
        "ann&#64;example.org",
        "ann&#064;example.org",
        "ann&#x40;example.org",
        "ann&commat;example.org",
        "ann＠example.org",
        "ann﹫example.org",  # SMALL COMMERCIAL AT
        "ann\\u0040example.org",  # a JSON body's escape, as a proxy's error page may send it
        "ann\\\\u0040example.org",  # the same escaped once more (a JSON body quoted in a JSON string)
        "ann\\x40example.org",  # a Python repr
        "ann\\U00000040example.org",  # its long form
        "ann%2540example.org",  # URL-encoded twice
        "ann&#64example.org",  # an entity without its semicolon
        "ANN@EXAMPLE.ORG",
    ],
)
def test_an_address_is_redacted_however_its_at_sign_is_written(spelling: str) -> None:
    # Given an error text naming an address of no batch, in one spelling
    text = f"1 error(s): email is not valid {spelling} (line 3)"
    # When redacted / Then nothing of it remains but the placeholder
    assert redact(text) == "1 error(s): email is not valid <address> (line 3)"


@pytest.mark.parametrize(
    "spelling",
    [
        "mary.o'connor@example.org",
        '"john.smith"@example.org',
        '"john smith"@example.org',
        "tom&jerry@example.org",
        "a|b`c{d}&e@example.org",
        "SRS0=ab=cd@example.org",
    ],
)
def test_an_address_with_quotes_or_symbols_in_its_local_part_is_redacted_whole(spelling: str) -> None:
    # Given an error text naming such an address (legal, and plausible to the sync), of no batch and
    # of the batch
    text = f"1 error(s): email is not valid {spelling} (line 3)"
    local = spelling.rpartition("@")[0]
    # When redacted / Then nothing of its local part remains (but what looks like a key: `SRS0=`)
    for cleaned in (redact(text), redact(text, (), Addresses([spelling]))):
        assert cleaned.replace("SRS0=", "") == "1 error(s): email is not valid <address> (line 3)", cleaned
        assert local.strip('"') not in cleaned
    # And Ownpage naming it, in capitals, names that row of the batch
    found = rejections([text.upper()], Addresses([spelling, "ann@example.org"]), ())
    assert [rejection.email for rejection in found] == [spelling]


def test_secrets_and_query_values_are_redacted() -> None:
    # Given a text that repeats the token, the key and a URL with credentials and a search
    text = "GET /v1/token?username=demo&password=k3y&search=ann%40example.org failed with token t0k"
    # When redacted with the secrets
    cleaned = redact(text, ("k3y", "t0k"))
    # Then none of them remains
    for secret in ("k3y", "t0k", "ann", "demo"):
        assert secret not in cleaned
    assert "password=<redacted>" in cleaned


def test_a_refusal_names_the_batchs_addresses_in_an_attribute_only() -> None:
    # Given a 400 naming two addresses of the batch (one HTML-encoded), the key and a stranger
    batch = Addresses(["ann@example.org", "b@example.com"])
    cause = "refused for key k3y: b@example.com, ann&#64;example.org, zed%40other.test"
    # When mapped
    error = rejected(400, {"status": 400, "cause": cause}, batch, ("k3y",))
    # Then the message holds none of them; the batch's plainly written address is in the attribute
    message = str(error)
    for leak in ("k3y", "b@example.com", "ann", "zed"):
        assert leak not in message
    assert "b@example.com" in error.rejected_emails
    assert error.status == 400


@pytest.mark.parametrize(
    ("value", "latest"),
    [
        ("2025-03-10", datetime(2025, 3, 10, 23, 59, 59, 999_999, tzinfo=UTC)),  # a day
        ("2025-03-10T09", datetime(2025, 3, 10, 9, 59, 59, 999_999, tzinfo=UTC)),  # an hour
        ("2025-03-10T09:15+01:00", datetime(2025, 3, 10, 8, 15, 59, 999_999, tzinfo=UTC)),  # a minute
        ("2025-03-10T09:15:02Z", datetime(2025, 3, 10, 9, 15, 2, 999_999, tzinfo=UTC)),  # a second
        ("2025-03-10T09:15:02.120Z", datetime(2025, 3, 10, 9, 15, 2, 120_999, tzinfo=UTC)),  # a millisecond
        (1_741_598_102, datetime(2025, 3, 10, 9, 15, 2, 999_999, tzinfo=UTC)),  # epoch seconds
    ],
)
def test_an_unsubscription_time_is_read_as_the_last_moment_it_may_mean(value: object, latest: datetime) -> None:
    # Given Ownpage's unsubscribed_at at some precision (its format is not documented)
    body = json.dumps([{"email": "a@example.org", "subscribed": False, "unsubscribed_at": value}]).encode()
    # When decoded
    (row,), _ = PageDecoder(())(body)
    # Then it is the end of the span the value names: a consent counts as newer only past all of it
    assert row.unsubscribed_at == latest and not row.bad_time
