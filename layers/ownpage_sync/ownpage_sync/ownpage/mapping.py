"""Ownpage's answers as the project's values: subscriber rows, counts, upsert summaries and errors.

Ownpage documents field names, not how strict its values are, so every field is read defensively:
`"subscribed": "yes"`, a numeric guid, a cause in lower case, a time out of datetime's range or a
row that is not an object all map to something safe (an unreadable status suppresses) and are
counted, never crash a run. Some readings are deliberately strict: `"subscribed": null` is a status
that says nothing (unknown, which suppresses), unlike a row without the field; a loosely true status
(`1`, "yes") beside a cause or time of unsubscription is unknown too; an `unsubscribed_at` before
2000 is a placeholder (epoch 0, year 1), and any other is read as the last moment it may mean (a
date alone: the end of that day), so that only a consent proven later is later.
"""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from itertools import compress
from operator import attrgetter
from typing import Any

import msgspec

from ownpage_sync.errors import OwnpageError, OwnpageProtocolError, OwnpageRejected
from ownpage_sync.models import DATA_PREFIX, Operation, OwnpagePage, OwnpageSubscriber, SubscribedRows
from ownpage_sync.ports import Rejection, SubscriberCounts
from ownpage_sync.redaction import Addresses, redact
from ownpage_sync.values import (
    normalise_column,
    normalise_data_value,
    parse_bool,
    parse_count,
    parse_latest_moment,
)

logger = logging.getLogger(__name__)

Page = OwnpagePage

# Earlier than any real unsubscription on Ownpage: an `unsubscribed_at` before it is a placeholder.
EARLIEST_UNSUBSCRIPTION = datetime(2000, 1, 1, tzinfo=UTC)
# What a field missing from a row reads as: None, except `subscribed`, whose absence (a bare row)
# means something other than an explicit null.
_MISSING: dict[str, Any] = {"subscribed": msgspec.UNSET}


def json_type(value: Any) -> str:
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__


class PageDecoder:
    """Decodes a page of GET .../subscribers straight from bytes, keeping only the fields the diff
    needs (msgspec skips the rest without building them). Unreadable rows are counted in `skipped`."""

    def __init__(self, fields: Sequence[str]):
        self.fields = tuple(fields)
        row_type = msgspec.defstruct(
            "OwnpageRow",
            [
                ("email", object, None),
                ("subscribed", object, msgspec.UNSET),
                ("guid", object, None),
                ("unsubscribed_at", object, None),
                ("unsubscribed_cause", object, None),
                *((DATA_PREFIX + name, object, None) for name in self.fields),
            ],
            forbid_unknown_fields=False,
            # Not tracked by the cycle collector: decoded JSON is a tree, so a row can never be part
            # of a cycle, and a million tracked rows make every collection slower (~15% of decoding).
            gc=False,
        )
        self._typed = msgspec.json.Decoder(list[row_type])  # type: ignore[valid-type]
        self._names = tuple(DATA_PREFIX + name for name in self.fields)

    def __call__(self, body: bytes) -> tuple[Page, int]:
        """The page's subscribers and how many rows were skipped (not an object, no usable email)."""
        try:
            rows: list[Any] = self._typed.decode(body)
            get: Callable[[Any, str], Any] = getattr
        except msgspec.DecodeError:
            # Not a list of objects (a row that is a string, a number), or JSON msgspec refuses and
            # Python reads (a lone surrogate escape, "\ud800"): the slow, tolerant path. JSON that is
            # not JSON at all raises here as well.
            generic = json.loads(body)
            if not isinstance(generic, list):
                raise OwnpageProtocolError(
                    f"expected a JSON array of subscribers, got a JSON {json_type(generic)}"
                ) from None
            rows = generic
            get = _get_key
        plain: list[Any] = []
        common = [False] * len(rows)  # which rows are read as columns
        if get is getattr:
            # The common row, read a column at a time: an address, JSON `true`, no unsubscription.
            # Anything else takes the careful path below.
            common = [
                row.subscribed is True
                and row.unsubscribed_cause is None
                and row.unsubscribed_at is None
                and type(row.email) is str
                for row in rows
            ]
            plain = list(compress(rows, common))
            emails = [row.email for row in plain]
            if "" in emails or any(map(str.isspace, emails)):  # no address at all (strip() leaves nothing)
                common = [usual and bool(row.email.strip()) for usual, row in zip(common, rows, strict=True)]
                plain = list(compress(rows, common))
                emails = [row.email for row in plain]
            columns = SubscribedRows(
                emails,
                normalise_column([row.guid for row in plain]),  # type: ignore[arg-type]
                self.fields,
                tuple(normalise_column(list(map(attrgetter(name), plain))) for name in self._names),  # type: ignore[misc]
            )
        else:
            columns = SubscribedRows([], [])
        others: list[OwnpageSubscriber] = []
        others_at: list[int] = []
        skipped = 0
        blank: list[tuple[str, bool]] = []  # skipped rows with a blank address: it, and whether JSON true
        if len(plain) < len(rows):
            # The k-th row not read as columns has (its position - k) plain rows before it.
            for k, at in enumerate(compress(range(len(rows)), map(operator.not_, common))):
                row = rows[at]
                readable = get is getattr or isinstance(row, Mapping)
                subscriber = self._subscriber(row, get) if readable else None
                if subscriber is None:
                    skipped += 1
                    email = get(row, "email") if readable else None
                    if isinstance(email, str):
                        blank.append((email, get(row, "subscribed") is True))
                else:
                    others_at.append(at - k + len(others))
                    others.append(subscriber)
        first = get(rows[0], "email") if rows and (get is getattr or isinstance(rows[0], Mapping)) else None
        last = get(rows[-1], "email") if rows and (get is getattr or isinstance(rows[-1], Mapping)) else None
        return OwnpagePage(columns, others, others_at, _text(first), _text(last), tuple(blank)), skipped

    def _subscriber(self, row: Any, get: Callable[[Any, str], Any]) -> OwnpageSubscriber | None:
        email = get(row, "email")
        if not isinstance(email, str) or not email.strip():
            return None
        raw_status = get(row, "subscribed")
        absent = raw_status is msgspec.UNSET
        subscribed = None if absent else parse_bool(raw_status)
        raw_cause = get(row, "unsubscribed_cause")
        cause = _cause(raw_cause)
        unsubscribed_at, bad_time = None, False
        raw_time = get(row, "unsubscribed_at")
        if raw_time is not None and subscribed is not True:
            try:
                # The latest moment the value may mean: a consent must be proven later than it.
                unsubscribed_at = parse_latest_moment(raw_time)
            except ValueError:
                bad_time = True
            if unsubscribed_at is not None and unsubscribed_at < EARLIEST_UNSUBSCRIPTION:
                unsubscribed_at, bad_time = None, True
        loose = subscribed is True and not isinstance(raw_status, bool)
        if loose and (cause is not None or raw_time not in (None, "")):
            # `1` or "yes" beside a cause or a time of unsubscription: a status only loosely true,
            # contradicted by the row itself. Unknown, which suppresses (only JSON true is trusted).
            subscribed = None
        bare = absent and cause is None and raw_time is None
        if bare:
            # No status field and no sign of an unsubscription: a bare row reads as subscribed. A
            # status that is present but unreadable (null included) stays None: unknown, which suppresses.
            subscribed = True
        data: dict[str, str] = {}
        for name, field_name in zip(self.fields, self._names, strict=True):
            value = normalise_data_value(get(row, field_name))
            if value is not None:
                data[name] = value
        return OwnpageSubscriber(
            email=email,
            subscribed=subscribed,
            guid=normalise_data_value(get(row, "guid")),
            data=data,
            unsubscribed_at=unsubscribed_at,
            unsubscribed_cause=cause,
            bad_time=bad_time,
            bare=bare,
        )


def _cause(value: Any) -> str | None:
    """A cause in upper case, trimmed; both as ASCII only: `str.upper` makes PUBLISHER of "publısher"
    (a dotless i) or "PUBLIſHER" (a long s), `str.strip` of "PUBLISHER\\xa0", and PUBLISHER is the one
    cause a run may lift. A cause with any other character stays as written, unknown: it suppresses."""
    if value is None:
        return None
    text = str(value)
    return (text.strip().upper() or None) if text.isascii() else text


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _get_key(row: Any, name: str) -> Any:
    return row.get(name, _MISSING.get(name))


def counts_from(payload: Any) -> SubscriberCounts:
    """GET .../count as SubscriberCounts; OwnpageProtocolError when it is not the documented shape."""
    if not isinstance(payload, Mapping):
        raise OwnpageProtocolError(f"expected a JSON object of counts, got a JSON {json_type(payload)}")
    subscribed, unsubscribed = parse_count(payload.get("subscribed")), parse_count(payload.get("unsubscribed"))
    if subscribed is None or unsubscribed is None:
        raise OwnpageProtocolError("the count response lacks numeric 'subscribed' and 'unsubscribed'")
    raw_causes = payload.get("cause")
    causes: dict[str, int] = {}
    if isinstance(raw_causes, Mapping):
        for cause, value in raw_causes.items():
            number = parse_count(value)
            if number is not None:
                causes[str(cause)] = number
    return SubscriberCounts(subscribed=subscribed, unsubscribed=unsubscribed, causes=causes)


def is_error_document(summary: Mapping[str, Any]) -> bool:
    """Ownpage's error body (`{"status": 400, "cause": ...}`) served with a 2xx status."""
    status = summary.get("status")
    return isinstance(status, int) and status >= 400 and "cause" in summary and "unique_emails_count" not in summary


def rejected(status: int, payload: Any, addresses: Addresses, secrets: Sequence[str]) -> OwnpageRejected:
    """A 4xx answer as an exception whose message names no address; the named ones go in an attribute."""
    cause = error_text(payload)
    error = OwnpageRejected(redact(cause, secrets, addresses) or "refused without a reason", status=status)
    error.rejected_emails = tuple(addresses.find(cause))
    return error


def unaccounted(
    summary: Mapping[str, Any], found: Sequence[Rejection], addresses: Addresses, secrets: Sequence[str]
) -> OwnpageError:
    """A 2xx answer to a write without a readable `unique_emails_count` (an error document of its own
    shape, `{}`, refusals only): what Ownpage wrote cannot be told, so nothing is taken as written.
    Rows it names are refused like a whole-batch refusal naming them (the rest is sent again);
    otherwise the batch is set aside (queued, re-checked by the retry path before it is sent again)."""
    named = tuple(dict.fromkeys(rejection.email for rejection in found if rejection.email))
    if named:
        error = OwnpageRejected(next(rejection.reason for rejection in found if rejection.email))
        error.rejected_emails = named
        return error
    detail = redact(error_text({k: v for k, v in summary.items() if k != "errors"}), secrets, addresses, limit=200)
    if found:
        detail = found[0].reason
    return OwnpageProtocolError(
        f"Ownpage's answer to a write does not say what it wrote (no unique_emails_count; {detail}): "
        "nothing of the batch is taken as written"
    )


def error_text(payload: Any) -> str:
    if isinstance(payload, Mapping):
        for key in ("cause", "message", "error", "errors", "detail"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, list) and value:
                return "; ".join(str(item) for item in value)
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, ensure_ascii=False, default=str)


def rejections(errors: Any, addresses: Addresses, secrets: Sequence[str]) -> tuple[Rejection, ...]:
    """Ownpage's `errors` (absent, a string, a list of strings or objects, an object) as Rejections.

    An entry naming no address of the batch is a Rejection with email "" (reported, never lost)."""
    if errors is None or errors == "" or errors == [] or errors == {}:
        return ()
    if isinstance(errors, str | Mapping):
        items: list[Any] = [errors]
        if isinstance(errors, Mapping) and not _email_field(errors):
            # {"user1@": "email is not valid", ...}: one entry per key
            items = [f"{key}: {value}" for key, value in errors.items()]
    elif isinstance(errors, list):
        items = errors
    else:
        items = [errors]
    found: list[Rejection] = []
    for item in items:
        if isinstance(item, Mapping):
            named = _email_field(item)
            reason_source = next(
                (item[key] for key in ("reason", "error", "message", "cause", "description") if item.get(key)),
                None,
            )
            rest = {k: v for k, v in item.items() if k not in ("email", "address", "mail")}
            text = str(reason_source) if reason_source is not None else json.dumps(rest, default=str)
            email = addresses.lookup(named) if named is not None else None
            if email is not None:
                found.append(Rejection(email, redact(text, secrets, addresses) or "rejected"))
                continue
            # No address of the batch (another spelling of one, its domain in IDNA...): as an entry
            # naming no row, which the caller narrows down rather than take the row for written.
            text = json.dumps(dict(item), ensure_ascii=False, default=str)
        else:
            text = str(item)
        named_emails = addresses.find(text)
        reason = redact(text, secrets, addresses) or "rejected"
        found.extend(Rejection(email, reason) for email in named_emails or [""])
    return tuple(found)


def _email_field(item: Mapping[Any, Any]) -> str | None:
    for key in ("email", "address", "mail"):
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def check_counts(
    list_id: int,
    summary: Mapping[str, Any],
    operations: Sequence[Operation],
    unique: int,
    found: Sequence[Rejection],
) -> None:
    """Warn (counts only) when Ownpage's summary does not add up to what was sent.

    Each entry sent should land in one bucket: rejected (`errors`), a duplicate address, a duplicate
    guid, or applied (`unique_emails_count`). Only counts that are present are checked.
    """
    sent = len(operations)
    reported = {
        key: parse_count(summary.get(key))
        for key in ("unique_emails_count", "duplicate_emails_count", "duplicate_guid_count")
    }
    changed = sum(parse_count(summary.get(key)) or 0 for key in ("nb_subscribed", "nb_unsubscribed"))
    problems: list[str] = []
    applied = reported["unique_emails_count"]
    if applied is not None and applied > unique:
        problems.append("unique_emails_count")
    if None not in reported.values():
        accounted = sum(value or 0 for value in reported.values())
        if not sent - len(found) <= accounted <= sent:
            problems.append("buckets")
    if changed > sent:
        problems.append("nb_subscribed+nb_unsubscribed")
    if problems:
        logger.warning(
            "Ownpage summary disagrees with the batch sent",
            extra={
                "list_id": list_id,
                "sent": sent,
                "unique_sent": unique,
                "rejected": len(found),
                **reported,
                "changed": changed,
                "fields": problems,
            },
        )
