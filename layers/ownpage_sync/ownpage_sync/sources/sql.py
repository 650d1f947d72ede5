"""PostgreSQL and MySQL sources: the user's own SELECT, run read-only and streamed in chunks.

What is common to both engines lives here (connection settings, column mapping, look-ups, error
messages); the driver specifics live in postgresql.py (pg8000) and mysql.py (PyMySQL).
"""

from __future__ import annotations

import logging
import re
import ssl
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from ownpage_sync.emails import mask_email
from ownpage_sync.errors import ConfigurationError, SourceError
from ownpage_sync.settings import SourceSettings
from ownpage_sync.sources.base import RawSubscriber

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds; a database in the same VPC answers in milliseconds, so fail fast
SOCKET_MARGIN = 30.0  # socket reads wait this much longer than the server-side statement timeout
LOOKUP_CHUNK = 500  # addresses per look-up query (bound parameters)
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306}
_ENGINE_NAMES = {  # the `engine` field RDS writes into its secrets, and DSN schemes
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "aurora-postgresql": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
    "aurora-mysql": "mysql",
    "aurora": "mysql",
}
# Something shaped like an address inside a database error ("invalid input syntax: "a@b.c"").
_ADDRESS_LIKE = re.compile(r"[^\s@'\"`(),;:<>\[\]]+@[^\s@'\"`(),;:<>\[\]]+")
_MAX_DETAIL = 300


@dataclass(frozen=True)
class ConnectionParams:
    """Where and how to connect. The password never appears in repr, logs or messages."""

    engine: str  # "postgresql" or "mysql"
    host: str
    port: int
    user: str
    database: str | None
    password: str | None = field(default=None, repr=False)
    tls: str = "require"  # require | disable
    tls_ca: str | None = None
    iam_auth: bool = False
    connect_timeout: float = CONNECT_TIMEOUT

    @property
    def location(self) -> str:
        return f"{self.host}:{self.port}/{self.database or ''}"


def connection_params(settings: SourceSettings, secret: Mapping[str, Any] | None = None) -> ConnectionParams:
    """Connection settings from an RDS-shaped secret, or else from SOURCE_DSN (local use)."""
    if secret is not None:
        return _from_secret(settings, secret)
    if settings.dsn:
        return _from_dsn(settings, settings.dsn)
    raise ConfigurationError(f"SOURCE_SECRET_ID: is required when SOURCE_KIND={settings.kind} (or SOURCE_DSN)")


def _from_secret(settings: SourceSettings, secret: Mapping[str, Any]) -> ConnectionParams:
    name = f"SOURCE_SECRET_ID: secret {settings.secret_id!r}"
    engine = secret.get("engine")
    if isinstance(engine, str) and engine.strip():
        family = _ENGINE_NAMES.get(engine.strip().lower())
        if family is None:
            raise ConfigurationError(f"{name} names an unsupported engine {engine!r}")
        if family != settings.kind:
            raise ConfigurationError(f"{name} is for engine {engine!r}, but SOURCE_KIND={settings.kind}")
    host, user = secret.get("host"), secret.get("username")
    if not isinstance(host, str) or not host.strip() or not isinstance(user, str) or not user:
        raise ConfigurationError(f'{name} must hold non-empty "host" and "username" strings')
    password = secret.get("password")
    if not settings.iam_auth and not isinstance(password, str):
        raise ConfigurationError(f'{name} must hold a "password" string (or set SOURCE_IAM_AUTH=true)')
    dbname = secret.get("dbname")
    return ConnectionParams(
        engine=settings.kind,
        host=host.strip(),
        port=_port(secret.get("port"), settings.kind, f"{name} has"),
        user=user,
        database=str(dbname) if dbname else None,
        password=password if isinstance(password, str) else None,
        tls=settings.tls,
        tls_ca=settings.tls_ca,
        iam_auth=settings.iam_auth,
    )


def _from_dsn(settings: SourceSettings, dsn: str) -> ConnectionParams:
    # The DSN may hold a password: no message below may quote it.
    parsed = urlparse(dsn)
    family = _ENGINE_NAMES.get(parsed.scheme.split("+")[0].lower())
    if family is None:
        raise ConfigurationError("SOURCE_DSN: must start with postgresql:// or mysql://")
    if family != settings.kind:
        raise ConfigurationError(f"SOURCE_DSN: is a {family} address, but SOURCE_KIND={settings.kind}")
    try:
        host, port = parsed.hostname, parsed.port
    except ValueError:
        raise ConfigurationError("SOURCE_DSN: the port is not a number") from None
    if not host or not parsed.username:
        raise ConfigurationError("SOURCE_DSN: must name a user and a host (scheme://user:pass@host:port/db)")
    database = unquote(parsed.path.lstrip("/")) or None
    return ConnectionParams(
        engine=settings.kind,
        host=host,
        port=port or DEFAULT_PORTS[settings.kind],
        user=unquote(parsed.username),
        database=database,
        password=unquote(parsed.password) if parsed.password is not None else None,
        tls=settings.tls,
        tls_ca=settings.tls_ca,
        iam_auth=settings.iam_auth,
    )


def _port(value: Any, kind: str, where: str) -> int:
    if value is None or value == "":
        return DEFAULT_PORTS[kind]
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f'{where} a "port" that is not a number') from None
    if not 0 < port < 65_536:
        raise ConfigurationError(f'{where} a "port" out of range')
    return port


def tls_context(params: ConnectionParams) -> ssl.SSLContext | None:
    """The TLS context (certificate chain and host name verified), or None when TLS is disabled."""
    if params.tls == "disable":
        return None
    try:
        return ssl.create_default_context(cafile=params.tls_ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"SOURCE_TLS_CA: cannot load the CA bundle {params.tls_ca!r}: {type(exc).__name__}"
        ) from None


def password_for(params: ConnectionParams) -> str:
    """The stored password, or a fresh IAM authentication token (valid 15 minutes)."""
    if not params.iam_auth:
        return params.password or ""
    if params.tls == "disable":
        logger.warning("IAM database authentication without TLS: RDS refuses such logins", extra={"host": params.host})
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        token: str = boto3.client("rds").generate_db_auth_token(
            DBHostname=params.host, Port=params.port, DBUsername=params.user
        )
    except (BotoCoreError, ClientError) as exc:
        raise SourceError(f"could not create an IAM database authentication token: {type(exc).__name__}") from exc
    return token


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """A database message made safe to show: secrets blanked, addresses masked, length capped."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = _ADDRESS_LIKE.sub(lambda match: mask_email(match.group(0)), text)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


Chunk = tuple[Sequence[str], Sequence[Sequence[Any]]]


class ReadOnlySession(Protocol):
    """One connection, reading inside a read-only transaction with a statement timeout."""

    def stream(self, sql: str, args: Sequence[str], fetch_size: int) -> Iterator[Chunk]:
        """(column names, rows) chunks of at most fetch_size rows; at least one chunk, even if empty."""
        ...


class SqlEngine(Protocol):
    name: str

    def connect(self, params: ConnectionParams, statement_timeout: float) -> AbstractContextManager[ReadOnlySession]:
        """An open read-only session; raises SourceError with a clear, credential-free message."""
        ...

    def lookup_sql(self, query: str, count: int) -> str:
        """The user's query as a subquery, filtered by `count` normalised addresses (bound parameters)."""
        ...


def engine_for(kind: str) -> SqlEngine:
    """The driver adapter of an engine (imported on demand: a DynamoDB deployment never loads drivers)."""
    if kind == "postgresql":
        from ownpage_sync.sources.postgresql import PostgresEngine

        return PostgresEngine()
    if kind == "mysql":
        from ownpage_sync.sources.mysql import MySqlEngine

        return MySqlEngine()
    raise ConfigurationError(f"SOURCE_KIND: {kind!r} is not an SQL engine")


def strip_query(query: str) -> str:
    """The query without trailing semicolons, so it can be wrapped in a cursor or a subquery."""
    text = query.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise ConfigurationError("SOURCE_QUERY: is empty")
    return text


class ColumnMap:
    """Where the columns the sync understands are in a result row (names matched case-insensitively)."""

    def __init__(self, names: Sequence[str]):
        lowered = [str(name).lower() for name in names]
        if "email" not in lowered:
            shown = ", ".join(lowered[:20]) or "none"
            raise SourceError(f"SOURCE_QUERY returned no `email` column (columns: {shown})")
        self.email = lowered.index("email")
        self.guid = lowered.index("guid") if "guid" in lowered else None
        self.consent = lowered.index("consented_at") if "consented_at" in lowered else None
        self.data = [
            (name[len("data_") :], i) for i, name in enumerate(lowered) if name.startswith("data_") and name != "data_"
        ]

    def to_raw(self, row: Sequence[Any], number: int) -> RawSubscriber:
        return RawSubscriber(
            email=_text(row[self.email]),
            where=f"row {number}",
            guid=None if self.guid is None else _text(row[self.guid]),
            data={name: _text(row[i]) for name, i in self.data},
            consented_at=None if self.consent is None else row[self.consent],
        )


_BINARY = (bytes, bytearray, memoryview)


def _text(value: Any) -> Any:
    # Binary columns (VARBINARY, bytea) come back as bytes; UTF-8 is what addresses are stored in.
    # (A type test, not isinstance: this runs for every cell of the audience.)
    if type(value) in _BINARY:
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


class SqlSource:
    """A `SubscriberSource` over PostgreSQL or MySQL/MariaDB."""

    def __init__(self, settings: SourceSettings, params: ConnectionParams, engine: SqlEngine | None = None):
        if not settings.query:
            raise ConfigurationError(f"SOURCE_QUERY: is required when SOURCE_KIND={settings.kind}")
        self.query = strip_query(settings.query)
        self.params = params
        self.statement_timeout = settings.statement_timeout
        self.fetch_size = settings.fetch_size
        self.engine = engine or engine_for(params.engine)
        self.description = (
            f"{self.engine.name} database {params.database or '(default)'} on {params.host}:{params.port}"
        )

    def scan(self) -> Iterator[RawSubscriber]:
        """Every row of SOURCE_QUERY, streamed."""
        with self.engine.connect(self.params, self.statement_timeout) as session:
            yield from self._rows(session, self.query, ())

    def lookup(self, emails: Collection[str]) -> Iterator[RawSubscriber]:
        """Rows of SOURCE_QUERY whose `lower(trim(email))` is one of these normalised addresses.

        SQL's lower/trim are close to, not exactly, normalise_email (trim removes spaces only; no
        NFC, so the NFD spelling is asked for too). The caller normalises again and filters.
        """
        # The NFD spelling too: SQL cannot apply NFC, and a stored address may be decomposed.
        wanted = sorted({form for email in emails if email for form in (email, unicodedata.normalize("NFD", email))})
        if not wanted:
            return
        with self.engine.connect(self.params, self.statement_timeout) as session:
            for start in range(0, len(wanted), LOOKUP_CHUNK):
                chunk = wanted[start : start + LOOKUP_CHUNK]
                sql = self.engine.lookup_sql(self.query, len(chunk))
                yield from self._rows(session, sql, chunk)

    def _rows(self, session: ReadOnlySession, sql: str, args: Sequence[str]) -> Iterator[RawSubscriber]:
        columns: ColumnMap | None = None
        number = 1
        for names, rows in session.stream(sql, args, self.fetch_size):
            if columns is None:
                columns = ColumnMap(names)
                logger.debug(
                    "source query columns",
                    extra={"source": self.description, "columns": [str(n) for n in names]},
                )
            for row in rows:
                yield columns.to_raw(row, number)
                number += 1
