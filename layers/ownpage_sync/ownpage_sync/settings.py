"""One typed settings object, built once from the environment; every problem names its variable.

The contract is documented in docs/configuration.md (extend it, don't rename).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlparse

from ownpage_sync.errors import ConfigurationError
from ownpage_sync.guards import GuardLimits
from ownpage_sync.planner import KNOWN_CAUSES, PlanPolicy
from ownpage_sync.values import parse_bool

DEFAULT_API_URL = "https://services.ownpage.fr/v1"
SOURCE_KINDS = ("dynamodb", "postgresql", "mysql")
MAX_BATCH = 20_000
MAX_PAGE = 10_000

T = TypeVar("T")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class OwnpageSettings:
    api_url: str
    list_id: int
    secret_id: str | None  # Secrets Manager secret {"client": ..., "api_key": ...}
    client: str | None = field(default=None, repr=False)  # local use only
    api_key: str | None = field(default=None, repr=False)  # local use only
    batch_size: int = 5_000
    page_size: int = MAX_PAGE
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 20.0
    read_concurrency: int = 8  # pages in flight while the list is read
    read_passes: int = 3  # full reads allowed to prove the read complete (docs/safety.md)


@dataclass(frozen=True)
class SourceSettings:
    kind: str
    # DynamoDB
    table: str | None = None
    email_attribute: str = "email"
    subscribed_attribute: str | None = None
    guid_attribute: str | None = None
    consent_attribute: str | None = None
    data_attributes: Mapping[str, str] = field(default_factory=dict)  # ownpage name -> source attribute
    email_index: str | None = None
    scan_segments: int = 4
    email_canonical: bool = False  # the key/index holds addresses canonical: look-ups are conclusive
    # PostgreSQL / MySQL
    secret_id: str | None = None
    dsn: str | None = field(default=None, repr=False)
    query: str | None = None
    tls: str = "require"  # require | disable
    tls_ca: str | None = None
    iam_auth: bool = False
    statement_timeout: float = 300.0
    fetch_size: int = 5_000


@dataclass(frozen=True)
class Settings:
    ownpage: OwnpageSettings
    source: SourceSettings
    policy: PlanPolicy = PlanPolicy()
    limits: GuardLimits = GuardLimits()
    retry_queue_url: str | None = None
    dead_letter_queue_url: str | None = None
    run_table: str | None = None
    lease_seconds: int = 900
    deadline_margin: float = 20.0  # seconds kept free at the end of a Lambda invocation
    log_level: str = "INFO"
    fast_lane_max_writes: int = 50  # ChangeFunction: more planned writes than this, and it writes none
    # ChangeFunction: writes of all its invocations in one clock hour (UTC), counted in the run table
    fast_lane_max_writes_per_hour: int = 1_000
    # ChangeFunction, an address Ownpage's search did not show: subscribe it when the last complete read
    # proves it new (proven), never (hold), or always (subscribe)
    fast_lane_new_addresses: str = "proven"
    fast_lane_proof_max_age: float = 93_600.0  # seconds a complete read's proof stays usable (26 h)
    # The source is streamed during the Ownpage read into a spool of at most this many MiB in the
    # temporary directory (Lambda's /tmp: 512 MB unless EphemeralStorage says more); 0: read after it.
    source_spool_mb: int = 400

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raise ConfigurationError naming each bad variable."""
        reader = _Reader(os.environ if env is None else env)
        settings = cls(
            ownpage=_ownpage(reader),
            source=_source(reader),
            policy=_policy(reader),
            limits=GuardLimits(
                max_unsubscribe_ratio=reader.number("MAX_UNSUBSCRIBE_RATIO", 0.05, float, low=0.0, high=1.0),
                max_unsubscribe_count=reader.optional_number("MAX_UNSUBSCRIBE_COUNT", int, low=0),
                max_source_drop_ratio=reader.number("MAX_SOURCE_DROP_RATIO", 0.20, float, low=0.0, high=1.0),
                max_resubscribe_ratio=reader.number("MAX_RESUBSCRIBE_RATIO", 0.05, float, low=0.0, high=1.0),
                max_resubscribe_count=reader.optional_number("MAX_RESUBSCRIBE_COUNT", int, low=0),
                max_resubscribe_removed_ratio=reader.number(
                    "MAX_RESUBSCRIBE_REMOVED_RATIO", 0.5, float, low=0.0, high=1.0
                ),
                max_source_growth_ratio=reader.number("MAX_SOURCE_GROWTH_RATIO", 0.20, float, low=0.0, high=1000.0),
            ),
            retry_queue_url=reader.url("RETRY_QUEUE_URL"),
            dead_letter_queue_url=reader.url("DEAD_LETTER_QUEUE_URL"),
            run_table=reader.text("RUN_TABLE"),
            lease_seconds=reader.number("RUN_LEASE_SECONDS", 900, int, low=60, high=86_400),
            deadline_margin=reader.number("DEADLINE_MARGIN_SECONDS", 20.0, float, low=0.0, high=600.0),
            log_level=reader.log_level("LOG_LEVEL"),
            fast_lane_max_writes=reader.number("FAST_LANE_MAX_WRITES", 50, int, low=1, high=MAX_BATCH),
            fast_lane_max_writes_per_hour=reader.number(
                "FAST_LANE_MAX_WRITES_PER_HOUR", 1_000, int, low=1, high=1_000_000
            ),
            fast_lane_new_addresses=reader.choice(
                "FAST_LANE_NEW_ADDRESSES", ("proven", "hold", "subscribe"), default="proven"
            ),
            fast_lane_proof_max_age=reader.number("FAST_LANE_PROOF_MAX_AGE", 93_600.0, float, low=60, high=30 * 86_400),
            source_spool_mb=reader.number("SOURCE_SPOOL_MB", 400, int, low=0, high=10_240),
        )
        reader.raise_if_any()
        return settings


def _shown(value: str, quote: bool = True, limit: int = 40) -> str:
    """A value as an error line quotes it: cut short, control characters escaped (one short line)."""
    printable = value.isprintable()
    body = value if printable else repr(value)[1:-1]  # escaped first, so the cut bounds what is shown
    cut = body if len(body) <= limit else body[:limit] + "…"
    return f"'{cut}'" if quote or not printable else cut


def _scheme(url: str) -> str:
    try:
        return urlparse(url).scheme
    except ValueError:
        return ""


class _Reader:
    """Collects every problem so one failed start names them all, not just the first."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def fail(self, name: str, what: str) -> None:
        self.problems.append(f"{name}: {what}")

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigurationError("invalid configuration: " + "; ".join(self.problems))

    def text(self, name: str, default: str | None = None) -> str | None:
        value = self.env.get(name, "").strip()
        return value or default

    def required(self, name: str, why: str = "is required") -> str:
        value = self.text(name)
        if value is None:
            self.fail(name, why)
            return ""
        return value

    def number(self, name: str, default: T, kind: Callable[[str], T], low: float, high: float | None = None) -> T:
        value = self.optional_number(name, kind, low, high)
        return default if value is None else value

    def optional_number(self, name: str, kind: Callable[[str], T], low: float, high: float | None = None) -> T | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = kind(raw)
        except ValueError:
            expected = {"int": "a whole number", "float": "a number"}.get(getattr(kind, "__name__", ""), "a number")
            self.fail(name, f"expected {expected}, got {_shown(raw)}")
            return None
        # Written as "not within" so NaN (every comparison false) is refused: a NaN ratio would
        # silently disable its guard.
        if not (value >= low and (high is None or value <= high)):  # type: ignore[operator]
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            self.fail(name, f"must be {bounds}, got {_shown(raw, quote=False)}")
            return None
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.text(name, default)
        if value is None:
            self.fail(name, f"is required (one of {', '.join(choices)})")
            return choices[0]
        if value not in choices:
            self.fail(name, f"must be one of {', '.join(choices)}, got {_shown(value)}")
            return choices[0]
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        raw = self.text(name)
        if raw is None:
            return default
        value = parse_bool(raw)
        if value is None:
            self.fail(name, f"expected true or false, got {_shown(raw)}")
            return default
        return value

    def url(self, name: str, default: str | None = None) -> str | None:
        value = self.text(name, default)
        if value is not None:
            try:
                parsed = urlparse(value)
                usable = parsed.scheme in ("http", "https") and bool(parsed.hostname)
            except ValueError:  # an unclosed "[" (IPv6 literal): urlparse itself refuses it
                usable = False
            if not usable:
                self.fail(name, "must be an http(s) URL")
                return value
            try:
                port = parsed.port
            except ValueError:
                port = -1
            if port is not None and not 0 < port < 65_536:
                self.fail(name, "has a port that is not a number between 1 and 65535")
        return value

    def existing_file(self, name: str) -> str | None:
        value = self.text(name)
        if value is not None and not os.path.isfile(value):
            self.fail(name, f"no readable file at {_shown(value)}")
        return value

    def log_level(self, name: str) -> str:
        raw = (self.text(name) or "INFO").upper()
        if raw not in LOG_LEVELS:
            self.fail(name, f"must be one of {', '.join(LOG_LEVELS)}, got {_shown(self.text(name) or '')}")
            return "INFO"
        return raw

    def mapping(self, name: str) -> dict[str, str]:
        """`firstname=first_name,city=town` -> {"firstname": "first_name", "city": "town"}."""
        raw = self.text(name)
        result: dict[str, str] = {}
        if raw is None:
            return result
        for pair in raw.split(","):
            target, sep, attribute = (part.strip() for part in pair.partition("="))
            if not pair.strip():
                continue
            if not sep or not target or not attribute:
                self.fail(name, f"expected name=attribute pairs separated by commas, got {_shown(pair.strip())}")
                continue
            if target.startswith("data_"):
                target = target[len("data_") :]
            if target in result:
                self.fail(name, f"{_shown(target)} is mapped twice")
            result[target] = attribute
        return result


def _ownpage(reader: _Reader) -> OwnpageSettings:
    secret_id = reader.text("OWNPAGE_SECRET_ID")
    client, api_key = reader.text("OWNPAGE_CLIENT"), reader.text("OWNPAGE_API_KEY")
    if secret_id is None and (client is None or api_key is None):
        reader.fail("OWNPAGE_SECRET_ID", "is required (or, for local use only, OWNPAGE_CLIENT and OWNPAGE_API_KEY)")
    list_id = reader.optional_number("OWNPAGE_LIST_ID", int, low=1)
    if list_id is None and reader.text("OWNPAGE_LIST_ID") is None:
        reader.fail("OWNPAGE_LIST_ID", "is required (the id of the Ownpage list to keep in step)")
    return OwnpageSettings(
        api_url=(reader.url("OWNPAGE_API_URL", DEFAULT_API_URL) or DEFAULT_API_URL).rstrip("/"),
        list_id=list_id or 0,
        secret_id=secret_id,
        client=client,
        api_key=api_key,
        batch_size=reader.number("OWNPAGE_BATCH_SIZE", 5_000, int, low=1, high=MAX_BATCH),
        page_size=reader.number("OWNPAGE_PAGE_SIZE", MAX_PAGE, int, low=1, high=MAX_PAGE),
        connect_timeout=reader.number("OWNPAGE_CONNECT_TIMEOUT", 5.0, float, low=0.1, high=60),
        read_timeout=reader.number("OWNPAGE_READ_TIMEOUT", 60.0, float, low=0.1, high=900),
        max_attempts=reader.number("OWNPAGE_MAX_ATTEMPTS", 6, int, low=1, high=20),
        backoff_base=reader.number("OWNPAGE_BACKOFF_BASE", 0.5, float, low=0.0, high=60),
        backoff_cap=reader.number("OWNPAGE_BACKOFF_CAP", 20.0, float, low=0.0, high=300),
        read_concurrency=reader.number("OWNPAGE_READ_CONCURRENCY", 8, int, low=1, high=32),
        read_passes=reader.number("OWNPAGE_READ_PASSES", 3, int, low=1, high=10),
    )


def _source(reader: _Reader) -> SourceSettings:
    kind = reader.choice("SOURCE_KIND", SOURCE_KINDS, default="dynamodb")
    common = {
        "kind": kind,
        "email_attribute": reader.text("SOURCE_EMAIL_ATTRIBUTE", "email") or "email",
        "subscribed_attribute": reader.text("SOURCE_SUBSCRIBED_ATTRIBUTE"),
        "guid_attribute": reader.text("SOURCE_GUID_ATTRIBUTE"),
        "consent_attribute": reader.text("SOURCE_CONSENT_ATTRIBUTE"),
        "data_attributes": reader.mapping("SOURCE_DATA_ATTRIBUTES"),
    }
    if kind == "dynamodb":
        return SourceSettings(
            **common,  # type: ignore[arg-type]
            table=reader.required("SOURCE_TABLE", "is required when SOURCE_KIND=dynamodb"),
            email_index=reader.text("SOURCE_EMAIL_INDEX"),
            scan_segments=reader.number("SOURCE_SCAN_SEGMENTS", 4, int, low=1, high=64),
            email_canonical=reader.flag("SOURCE_EMAIL_CANONICAL"),
        )
    secret_id, dsn = reader.text("SOURCE_SECRET_ID"), reader.text("SOURCE_DSN")
    if secret_id is None and dsn is None:
        reader.fail("SOURCE_SECRET_ID", f"is required when SOURCE_KIND={kind} (or SOURCE_DSN for local use)")
    if dsn is not None and _scheme(dsn).split("+")[0] not in ("postgresql", "postgres", "mysql", "mariadb"):
        reader.fail(
            # No example with user:password@host here: error lines are redacted, and that reads as an address.
            "SOURCE_DSN",
            "must look like postgresql://HOST:5432/DB or mysql://HOST:3306/DB (user and password before the host)",
        )
    return SourceSettings(
        **common,  # type: ignore[arg-type]
        secret_id=secret_id,
        dsn=dsn,
        query=reader.required(
            "SOURCE_QUERY", f"is required when SOURCE_KIND={kind} (a SELECT returning an email column)"
        ),
        tls=reader.choice("SOURCE_TLS", ("require", "disable"), default="require"),
        tls_ca=reader.existing_file("SOURCE_TLS_CA"),
        iam_auth=reader.flag("SOURCE_IAM_AUTH"),
        statement_timeout=reader.number("SOURCE_STATEMENT_TIMEOUT", 300.0, float, low=1, high=3600),
        fetch_size=reader.number("SOURCE_FETCH_SIZE", 5_000, int, low=1, high=100_000),
    )


def _policy(reader: _Reader) -> PlanPolicy:
    cause = reader.choice("UNSUBSCRIBE_CAUSE", ("PUBLISHER", "READER"), default="PUBLISHER")
    raw = reader.text("SUPPRESS_CAUSES")
    if raw is None:
        return PlanPolicy(unsubscribe_cause=cause)
    causes = frozenset(part.strip().upper() for part in raw.split(",") if part.strip())
    unknown = causes - KNOWN_CAUSES
    if unknown:
        reader.fail(
            "SUPPRESS_CAUSES",
            f"unknown cause(s) {_shown(', '.join(sorted(unknown)), quote=False)}; known: {', '.join(sorted(KNOWN_CAUSES))}",
        )
    if not {"HARD_BOUNCE", "MULTIPLE_BOUNCES"} <= causes:
        reader.fail(
            "SUPPRESS_CAUSES",
            "must include HARD_BOUNCE and MULTIPLE_BOUNCES (re-subscribing bounces hurts deliverability)",
        )
    return PlanPolicy(unsubscribe_cause=cause, suppressing_causes=causes)
