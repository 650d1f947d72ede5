"""Fault matrix, bad input: the settings parser, the retry-message parser and the planner fuzzed with
hypothesis (any Unicode, control characters and lone surrogates, very long strings, wrong types). No
network: these are the three places where text from outside becomes the project's values.

Example counts are modest (the suite must stay fast); the strategies lean on the edges instead."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ownpage_sync.emails import canonical_key, is_plausible_email
from ownpage_sync.errors import ConfigurationError, InvalidRetryMessage
from ownpage_sync.models import Action, OwnpageSubscriber
from ownpage_sync.planner import plan_changes
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.settings import Settings
from ownpage_sync.sources.base import RawSubscriber

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SETTINGS_SOURCE = (Path(__file__).resolve().parents[2] / "layers/ownpage_sync/ownpage_sync/settings.py").read_text()

ANY_CHARACTER = st.characters(codec=None, exclude_categories=())  # control characters, lone surrogates
SHORT = st.text(ANY_CHARACTER, max_size=12)
LONG = st.builds(lambda head, fill, size: head + fill * size, SHORT, ANY_CHARACTER, st.integers(300, 12_000))
NUMBERISH = st.sampled_from(
    ["1", "0", "-1", "1e999", "nan", "inf", "-inf", "0x10", "1_000", "١٢", "１", " 5 ", "5.", ".5", "9" * 5000, "1/2"]
)
URLISH = st.builds(
    lambda scheme, rest: scheme + rest,
    st.sampled_from(["http://", "https://", "postgresql://", "mysql://", "ftp://", "", "http://[", "https://[::1"]),
    st.one_of(SHORT, st.sampled_from(["[::1", "]:80", "host:99999", "host:-1", "host:port", "h:8080/v1", "[x]:1"])),
)
SETTING_VALUE = st.one_of(SHORT, SHORT, LONG, NUMBERISH, URLISH, st.sampled_from(["true", "no", "maybe", "", " "]))


# -- the settings parser ---------------------------------------------------------------------------------

# Every variable Settings.from_env reads, taken from its source so a new one is fuzzed without asking.
VARIABLES = sorted(set(re.findall(r'reader\.\w+\(\s*"([A-Z][A-Z0-9_]+)"', SETTINGS_SOURCE)))
BASES = {
    "dynamodb": {"OWNPAGE_LIST_ID": "1", "OWNPAGE_CLIENT": "c", "OWNPAGE_API_KEY": "k", "SOURCE_TABLE": "t"},
    "postgresql": {
        "OWNPAGE_LIST_ID": "1",
        "OWNPAGE_SECRET_ID": "s",
        "SOURCE_KIND": "postgresql",
        "SOURCE_DSN": "postgresql://db.internal:5432/news",
        "SOURCE_QUERY": "SELECT email FROM readers",
    },
}


def test_the_fuzzed_variables_are_every_setting() -> None:
    assert len(VARIABLES) >= 40 and {"OWNPAGE_API_URL", "SOURCE_DSN", "LOG_LEVEL", "SUPPRESS_CAUSES"} <= set(VARIABLES)


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), name=st.sampled_from(VARIABLES), value=SETTING_VALUE)
@example(base="dynamodb", name="OWNPAGE_API_URL", value="http://[::1")
@example(base="dynamodb", name="RETRY_QUEUE_URL", value="https://[x")
@example(base="postgresql", name="SOURCE_DSN", value="postgresql://[::1/db")
@example(base="dynamodb", name="OWNPAGE_API_URL", value="https://host:99999/v1")
@example(base="dynamodb", name="OWNPAGE_BATCH_SIZE", value="9" * 5000)
def test_a_malformed_setting_is_one_clear_line_naming_its_variable(base: str, name: str, value: str) -> None:
    # Given a valid environment with one variable set to anything at all
    env = {**BASES[base], name: value}
    # When the settings are read
    try:
        Settings.from_env(env)
    except ConfigurationError as exc:
        # Then a refusal is one short line that names the variable: never a traceback of another kind
        message = str(exc)
        assert message.startswith("invalid configuration: ") and name in message
        assert "\n" not in message and "\r" not in message and len(message) < 600, message[:200]
        assert message.isprintable(), "control characters are quoted, not printed"


@FUZZ
@given(values=st.dictionaries(st.sampled_from(VARIABLES), SETTING_VALUE, max_size=6))
def test_any_environment_gives_settings_or_one_configuration_error(values: dict[str, str]) -> None:
    # Given several variables at once set to anything, on either source kind
    for base in BASES.values():
        try:
            Settings.from_env({**base, **values})
        except ConfigurationError as exc:
            # Then every problem is reported in the one line, each named
            assert "\n" not in str(exc) and str(exc).startswith("invalid configuration: ")


# -- the retry-message parser -----------------------------------------------------------------------------

JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | SHORT | LONG | st.just("a@b.example"),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(SHORT, inner, max_size=4),
    max_leaves=12,
)
TIMES = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda moment: moment.isoformat()),
    st.sampled_from(
        ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2025-01-01T00:00:00", "2025-13-01T00:00:00Z"]
    ),
    SHORT,
)
VALID = {
    "schema_version": 2,
    "list_id": 1,
    "run_id": "20250301T060000Z-fuzz0001",
    "run_started_at": "2025-03-01T06:00:00.000Z",
    "last_error": {"kind": "unavailable", "status": 503, "reason": "HTTP 503"},
    "attempts": 2,
    "first_failed_at": "2025-03-01T06:00:41.118Z",
    "last_attempt_at": "2025-03-01T06:01:37.902Z",
    "part": 1,
    "parts": 1,
    "operation_count": 2,
    "operations": [
        {"action": "subscribe", "email": "anne@example.org", "guid": "u-1", "data": {"city": "Lyon"}},
        {"action": "unsubscribe", "email": "bob@example.org", "unsubscribed_cause": "PUBLISHER"},
    ],
}
FIELDS = sorted(VALID)


def _read(body: str) -> RetryMessage | None:
    """The message, or None when it is poison; any other exception fails the test."""
    try:
        return RetryMessage.from_json(body)
    except InvalidRetryMessage as exc:
        assert "@" not in str(exc), "a refusal quotes nothing from the body"
        return None


@FUZZ
@given(body=st.one_of(SHORT, LONG, JSON_VALUE.map(json.dumps)))
def test_any_body_is_a_retry_message_or_poison(body: str) -> None:
    _read(body)


@FUZZ
@given(field=st.sampled_from(FIELDS), value=st.one_of(JSON_VALUE, TIMES))
@example(field="first_failed_at", value="0001-01-01T00:00:00+01:00")
@example(field="run_started_at", value="0001-01-01T00:00:00+01:00")
@example(field="last_attempt_at", value="9999-12-31T23:59:59-01:00")
def test_one_field_of_any_shape_gives_a_message_or_poison(field: str, value: Any) -> None:
    # Given a valid message with one field replaced by any JSON value
    body = json.dumps({**VALID, field: value})
    # When it is read, it is a message (whose times are all aware and in UTC) or poison: never a crash
    message = _read(body)
    if message is not None:
        for moment in (message.first_failed_at, message.last_attempt_at, message.run_started_at):
            assert moment is None or moment.utcoffset() == timedelta(0)


@FUZZ
@given(entry=st.dictionaries(st.sampled_from(["action", "email", "guid", "data", "unsubscribed_cause"]), JSON_VALUE))
def test_an_operation_of_any_shape_is_read_or_set_aside_alone(entry: dict[str, Any]) -> None:
    # Given a message whose second operation is anything at all
    body = json.dumps({**VALID, "operations": [VALID["operations"][0], entry]})
    message = _read(body)
    # Then the good operation is always read, and the other either read or set aside (never both lost)
    assert message is not None
    assert message.operations[0].email == "anne@example.org"
    assert len(message.operations) + len(message.invalid) == 2


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_a_deeply_nested_body_is_poison(depth: int) -> None:
    assert _read("[" * depth + "]" * depth) is None
    assert _read('{"a":' * depth + "1" + "}" * depth) is None


# -- the planner ---------------------------------------------------------------------------------------------

WEIRD = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=8),
    st.decimals(allow_nan=True),
    st.dictionaries(SHORT, SHORT, max_size=2),
    st.lists(SHORT, max_size=2),
    st.datetimes(),
    st.datetimes(timezones=st.timezones()),
)
ADDRESS = st.one_of(
    st.sampled_from(["anne@example.org", " ANNE@Example.org\t", "zoë@exämple.org", "a@b", "", "x" * 400 + "@e.org"]),
    st.builds(lambda local, domain: f"{local}@{domain}", SHORT, st.sampled_from(["example.org", "exämple.org", ""])),
    SHORT,
    LONG,
)
SOURCE_ROW = st.builds(
    RawSubscriber,
    email=st.one_of(ADDRESS, ADDRESS, ADDRESS, WEIRD),
    where=st.sampled_from(["row 1", "item id=7"]),
    guid=st.one_of(st.none(), SHORT, LONG, WEIRD),
    data=st.dictionaries(st.sampled_from(["city", "firstname"]), st.one_of(SHORT, LONG, WEIRD), max_size=2),
    consented_at=st.one_of(st.none(), TIMES, WEIRD),
)
OWNPAGE_ROW = st.builds(
    OwnpageSubscriber,
    email=ADDRESS.filter(lambda text: bool(text.strip())),
    subscribed=st.sampled_from([True, False, None]),
    guid=st.one_of(st.none(), SHORT),
    data=st.dictionaries(st.sampled_from(["city", "firstname"]), SHORT, max_size=2),
    unsubscribed_at=st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
    unsubscribed_cause=st.one_of(st.none(), st.sampled_from(["READER", "PUBLISHER", "HARD_BOUNCE", "reader"]), SHORT),
    bad_time=st.booleans(),
)


@FUZZ
@given(source=st.lists(SOURCE_ROW, max_size=12), ownpage=st.lists(OWNPAGE_ROW, max_size=12))
@example(
    source=[RawSubscriber("anne@example.org", "row 1", consented_at="0001-01-01T00:00:00+01:00")],
    ownpage=[
        OwnpageSubscriber(
            "anne@example.org", False, unsubscribed_at=datetime(2024, 1, 1, tzinfo=UTC), unsubscribed_cause="READER"
        )
    ],
)
@example(source=[RawSubscriber(Decimal("NaN"), "row 1", guid=float("nan"), data={"city": b"\x00"})], ownpage=[])
def test_the_planner_takes_any_rows_and_keeps_every_rule(
    source: list[RawSubscriber], ownpage: list[OwnpageSubscriber]
) -> None:
    # Given any source rows (addresses, guids, data and consent times of any type and content) and any
    # Ownpage rows, when a plan is made
    plan = plan_changes(source, ownpage)
    # Then it never crashes, every row is accounted for, and the writes keep the rules
    assert plan.source.rows_read == len(source)
    listed = {canonical_key(row.email) for row in source if isinstance(row.email, str)} - {""}
    shown = {row.key: row for row in ownpage}
    suppressed = {canonical_key(item.email) for item in plan.suppressed}
    seen: set[tuple[str, str]] = set()
    for op in plan.operations():
        assert op.action in Action and isinstance(op.email, str) and op.email.strip()
        family = "subscribe" if op.action in (Action.SUBSCRIBE, Action.RESUBSCRIBE) else op.action.value
        # one write per address and kind (an unsubscribe per spelling Ownpage holds subscribed)
        target = op.email if op.action is Action.UNSUBSCRIBE else op.key
        assert (family, target) not in seen
        seen.add((family, target))
        if op.action is Action.UNSUBSCRIBE:
            # ... except the subscribed spelling of a key Ownpage holds suppressed under another
            # (docs/safety.md §3): she said no, whatever the spelling
            assert op.key not in listed or op.key in suppressed, "whatever the source lists is never unsubscribed"
        elif op.key not in shown:
            assert op.action is not Action.RESUBSCRIBE and is_plausible_email(op.key)
        json.dumps(op.to_payload())  # what Ownpage is sent is JSON
    for problem in plan.source.samples:
        for text in problem.to_dict().values():
            assert not re.search(r"[^*\s]@", text) or "***@" in text, "samples are masked"
