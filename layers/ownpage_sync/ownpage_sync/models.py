"""The domain's values: what a source says, what Ownpage holds, and the operations between them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

DATA_PREFIX = "data_"


class Action(StrEnum):
    SUBSCRIBE = "subscribe"
    UNSUBSCRIBE = "unsubscribe"
    UPDATE = "update"


class Cause(StrEnum):
    """Ownpage's unsubscription causes."""

    READER = "READER"
    PUBLISHER = "PUBLISHER"
    HARD_BOUNCE = "HARD_BOUNCE"
    MULTIPLE_BOUNCES = "MULTIPLE_BOUNCES"


def parse_timestamp(value: Any) -> datetime | None:
    """ISO-8601 text, a datetime, a date (midnight UTC) or epoch seconds, as an aware UTC datetime.

    A time without a zone is taken as UTC (documented in docs/configuration.md). Raises ValueError.
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):  # a DATE column: the start of that day, UTC
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(float(value), tz=UTC)
        except (OSError, OverflowError) as exc:  # e.g. an epoch in nanoseconds: past the platform's time_t
            raise ValueError("epoch out of range") from exc
    elif isinstance(value, str):
        text = value.strip()
        # fromisoformat takes "Z" but not "z".
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    else:
        raise ValueError(f"unsupported time value of type {type(value).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def normalise_data_value(value: Any) -> str | None:
    """Data values are compared as text: `42`, `Decimal("42")` and `"42"` are the same value.

    None and the empty string mean "no value"; surrounding white space is not significant.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        value = format(value.normalize(), "f") if value == value.to_integral_value() else str(value)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    return text or None


def normalise_data(values: Mapping[str, Any]) -> dict[str, str]:
    """Normalise every value; drop the ones that mean "no value"."""
    normalised = {name: normalise_data_value(value) for name, value in values.items()}
    return {name: value for name, value in normalised.items() if value is not None}


@dataclass(frozen=True, slots=True)
class SubscriberRecord:
    """One subscriber as the source (the truth) says it. `email` is normalised and valid."""

    email: str
    guid: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)  # attribute name without the data_ prefix
    consented_at: datetime | None = None  # timezone-aware; None when the source has no consent time


@dataclass(frozen=True, slots=True)
class OwnpageSubscriber:
    """One row of the Ownpage list (status=all). `email` is normalised."""

    email: str
    subscribed: bool
    guid: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    unsubscribed_at: datetime | None = None
    unsubscribed_cause: str | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """One write to Ownpage. Serialises to one element of the POST .../subscribers array."""

    action: Action
    email: str
    guid: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    unsubscribed_cause: str | None = None

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"email": self.email}
        if self.action is Action.SUBSCRIBE:
            payload["subscribed"] = True
        elif self.action is Action.UNSUBSCRIBE:
            payload["subscribed"] = False
            payload["unsubscribed_cause"] = self.unsubscribed_cause or Cause.PUBLISHER.value
        # UPDATE omits `subscribed` on purpose: Ownpage then leaves the status as it is.
        if self.guid is not None:
            payload["guid"] = self.guid
        for name, value in self.data.items():
            payload[DATA_PREFIX + name] = value
        return payload

    def to_dict(self) -> dict[str, Any]:
        """The readable form used in SQS messages and plan exports."""
        return {
            "action": self.action.value,
            "email": self.email,
            "guid": self.guid,
            "data": dict(self.data),
            "unsubscribed_cause": self.unsubscribed_cause,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Operation:
        """Inverse of `to_dict`; raises ValueError/KeyError/TypeError on a malformed entry."""
        data = raw.get("data") or {}
        if not isinstance(data, Mapping):
            raise TypeError("operation data must be an object")
        email = raw["email"]
        if not isinstance(email, str) or not email:
            raise ValueError("operation email must be a non-empty string")
        guid = raw.get("guid")
        cause = raw.get("unsubscribed_cause")
        return cls(
            action=Action(raw["action"]),
            email=email,
            guid=None if guid is None else str(guid),
            data={str(k): str(v) for k, v in data.items()},
            unsubscribed_cause=None if cause is None else str(cause),
        )
