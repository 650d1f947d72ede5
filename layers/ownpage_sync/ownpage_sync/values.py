"""Reading loosely typed values from outside (Ownpage's JSON, database columns, settings, events).

One vocabulary for each kind of value, whoever sends it: a flag is read the same way from a DynamoDB
attribute, an Ownpage row and an environment variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

TRUE_WORDS = frozenset({"true", "t", "yes", "y", "on", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "off", "0"})


def parse_bool(value: Any) -> bool | None:
    """True/False for a JSON boolean, the numbers 1/0, or the words of TRUE_WORDS/FALSE_WORDS in any
    case (surrounding spaces ignored); None for anything else (the caller decides what that means)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | Decimal):
        return True if value == 1 else False if value == 0 else None
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return None


def parse_timestamp(value: Any) -> datetime | None:
    """ISO-8601 text, a datetime, a date (midnight UTC) or epoch seconds, as an aware UTC datetime.

    A time without a zone is taken as UTC (docs/configuration.md). None and "" mean no time. Raises
    ValueError for anything unreadable or out of datetime's range (year 1 at +01:00, epochs in
    nanoseconds): callers count such values and treat them as absent, never crash on them.
    """
    if value is None or value == "":
        return None
    try:
        if isinstance(value, datetime):
            moment = value
        elif isinstance(value, date):  # a DATE column: the start of that day, UTC
            moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
        elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            moment = datetime.fromtimestamp(float(value), tz=UTC)
        elif isinstance(value, str):
            text = value.strip()
            # fromisoformat takes "Z" but not "z".
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        else:
            raise ValueError(f"unsupported time value of type {type(value).__name__}")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)
    except (OverflowError, OSError) as exc:
        raise ValueError("time out of range") from exc


# The time part of ISO-8601 text, for its precision: hours, then :minutes, :seconds, .fraction.
_TIME_PRECISION = re.compile(r"[T ](\d{2})(:?\d{2})?(:?\d{2})?(?:[.,](\d+))?")


def parse_latest_moment(value: Any) -> datetime | None:
    """`parse_timestamp`, rounded up to the end of the precision the value was given in: a date alone
    is the last moment of that day, `09:15` the last of that minute, epoch seconds the last of that
    second. For a time whose exact moment within that span is unknown (when a reader unsubscribed),
    so that only a moment proven later counts as later. Raises ValueError as parse_timestamp does."""
    moment = parse_timestamp(value)
    if moment is None:
        return None
    if isinstance(value, str):
        match = _TIME_PRECISION.search(value.strip())
        if match is None:
            span = timedelta(days=1)
        elif match.group(4):
            span = timedelta(seconds=10 ** -min(len(match.group(4)), 6))
        elif match.group(3):
            span = timedelta(seconds=1)
        else:
            span = timedelta(minutes=1) if match.group(2) else timedelta(hours=1)
    elif isinstance(value, int) and not isinstance(value, bool):
        span = timedelta(seconds=1)
    elif isinstance(value, date) and not isinstance(value, datetime):
        span = timedelta(days=1)
    else:
        return moment
    try:
        return moment + span - timedelta(microseconds=1)
    except OverflowError as exc:
        raise ValueError("time out of range") from exc


def normalise_data_value(value: Any) -> str | None:
    """Data values are compared as text: `42`, `Decimal("42")`, `42.0` and `"42"` are the same value.

    None and the empty string mean "no value"; surrounding white space is not significant. Bytes
    (a database's binary column, DynamoDB's Binary) are UTF-8 text, undecodable bytes kept as
    surrogates, as every source adapter reads them.
    """
    if value is None:
        return None
    if type(value) is str:  # the common case first: no isinstance chain for every cell
        return value.strip() or None
    if isinstance(getattr(value, "value", None), bytes | bytearray):  # boto3's Binary
        value = value.value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "surrogateescape").strip() or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        if not value.is_finite():
            return str(value)
        # A whole number as its digits, exactly: normalize() would round to 28 digits, and a DynamoDB
        # number or a DECIMAL(38) guid has up to 38.
        value = str(int(value)) if value == value.to_integral_value() else str(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def normalise_data(values: Mapping[str, Any]) -> dict[str, str]:
    """Normalise every value; drop the ones that mean "no value"."""
    normalised = {name: normalise_data_value(value) for name, value in values.items()}
    return {name: value for name, value in normalised.items() if value is not None}


def parse_count(value: Any) -> int | None:
    """A whole, non-negative count from JSON (a number or digits as text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


# What str.strip() removes from ASCII text (the separators \x1c-\x1f included), for bytes.
ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())
# Every byte strip() removes, as \x01 (and \x01 itself, so that it cannot pass for a separator).
_MARK_SPACE = bytes(1 if byte in ASCII_SPACE or byte == 1 else byte for byte in range(256))
_NUL_SPACE = re.compile(r"\x00\s")  # a literal first: searched at C speed


def _utf8(data: bytes) -> str:
    """UTF-8 text, or one that clean_edges refuses (the bytes are not UTF-8: value by value, then)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return " "


def clean_edges(joined: bytes | str) -> bool:
    """Whether no value of these, joined by NUL, starts or ends with white space strip() removes
    (a value holding \x01 may be taken for one that does: the caller then strips value by value)."""
    if isinstance(joined, str):
        if not joined.isascii():
            return not (
                joined[:1].isspace()
                or joined[-1:].isspace()
                or _NUL_SPACE.search(joined)
                or _NUL_SPACE.search(joined[::-1])
            )
        joined = joined.encode()
    marked = joined.translate(_MARK_SPACE)
    return not (marked[:1] == b"\x01" or marked[-1:] == b"\x01" or b"\x00\x01" in marked or b"\x01\x00" in marked)


def normalise_column(values: Sequence[Any]) -> list[str | bytes | None]:
    """normalise_data_value over a column of values, except that UTF-8 bytes already normalised
    stay bytes (they hash as their text does): a column already normalised, the common case, is
    checked at once rather than value by value."""
    kinds = set(map(type, values))
    present = values  # the values beside the NULLs (None stays None): what needs a look
    if type(None) in kinds:
        kinds.discard(type(None))
        if not kinds:
            return list(values)
        present = list(filter(None, values)) if len(kinds) == 1 else values
    if kinds == {bytes} and b"" not in values:
        joined = b"\x00".join(present)
        if clean_edges(joined if joined.isascii() else _utf8(joined)):
            return list(values)
    if kinds == {str} and "" not in values and clean_edges("\x00".join(present)):
        return list(values)
    return [
        value.strip(ASCII_SPACE) or None if type(value) is bytes and value.isascii() else normalise_data_value(value)
        for value in values
    ]


# A lone surrogate: Ownpage's JSON may hold "\ud800", which Python reads but UTF-8 cannot encode.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(value: Any, unsafe: re.Pattern[str] = LONE_SURROGATE, **options: Any) -> str:
    """JSON text, non-ASCII kept readable; when it holds a character its carrier cannot take (by
    default a lone surrogate, which UTF-8 cannot encode), JSON's \\u escapes instead, which carry
    every character back as it came."""
    text = json.dumps(value, ensure_ascii=False, **options)
    return json.dumps(value, ensure_ascii=True, **options) if unsafe.search(text) else text


def json_utf8(value: Any, **options: Any) -> bytes:
    """json_text as UTF-8 bytes (a request body, an export)."""
    return json_text(value, **options).encode("utf-8")
