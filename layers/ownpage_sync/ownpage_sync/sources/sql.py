"""PostgreSQL and MySQL sources: the user's own SELECT, run read-only and streamed.

What is common to both engines lives here (connection settings, column mapping, look-ups, error
messages); the driver specifics live in postgresql.py (pg8000) and mysql.py (PyMySQL), which import
this module and never the other way round. sources/factory.py picks the engine.
"""

from __future__ import annotations

import logging
import ssl
import unicodedata
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from ownpage_sync.emails import INVISIBLE, idna_spelling
from ownpage_sync.errors import ConfigurationError, SourceError, SourceMisconfigured
from ownpage_sync.settings import SourceSettings
from ownpage_sync.sources.base import RawSubscriber, RowChunks, RowLayout, SourceLookup, SourceShape

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0  # seconds; a database in the same VPC answers in milliseconds, so fail fast
SOCKET_MARGIN = 30.0  # socket reads wait this much longer than the server-side statement timeout
LOOKUP_CHUNK = 1_000  # addresses per look-up query (bound parameters)
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
# What canonical_key removes or maps that SQL's TRIM/LOWER do not, as (character, replacement):
# every character Python strips as white space (to a space, which TRIM removes), the three non-ASCII
# characters whose canonical form is ASCII (emails.ASCII_FROM_NON_ASCII), and the invisible format
# characters (emails.INVISIBLE, removed). With these, the look-up expression equals canonical_key for
# every stored spelling whose key is printable ASCII.
WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace() and chr(c) != " ")
TO_ASCII = {"\u212a": "k", "\u037e": ";", "\u1fef": "`"}
KEY_CHARACTERS: tuple[tuple[str, str], ...] = (
    *((character, " ") for character in WHITESPACE),
    *TO_ASCII.items(),
    *((character, "") for character in INVISIBLE),  # last: translate() deletes what `to` has no match for
)
TRANSLATE_FROM = "".join(character for character, _ in KEY_CHARACTERS)
TRANSLATE_TO = "".join(replacement for _, replacement in KEY_CHARACTERS)


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
        raise ConfigurationError(
            "SOURCE_DSN: must name a user and a host (scheme://, the user and password, then the host)"
        )
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
    from botocore.exceptions import BotoCoreError, ClientError

    from ownpage_sync.aws import client

    try:
        token: str = client("rds").generate_db_auth_token(
            DBHostname=params.host, Port=params.port, DBUsername=params.user
        )
    except (BotoCoreError, ClientError) as exc:
        raise SourceError(f"could not create an IAM database authentication token: {type(exc).__name__}") from exc
    return token


@dataclass(frozen=True)
class Column:
    name: str  # lower case
    binary: bool = False  # bytea / VARBINARY: decoded as UTF-8 text


Chunk = Sequence[Sequence[Any]]


class ReadOnlySession(Protocol):
    """One connection, reading inside read-only transactions with a statement timeout."""

    def describe(self, sql: str) -> list[Column]:
        """The columns `sql` returns, without reading a row."""
        ...

    def stream(self, sql: str, fetch_size: int) -> Iterator[Chunk]:
        """Every row of `sql` (no parameters), in chunks; the engine's fastest way. A text field may
        come as its UTF-8 bytes, undecoded (PostgreSQL's COPY), or None."""
        ...

    def query(self, sql: str, args: Sequence[Any], fetch_size: int) -> Iterator[Chunk]:
        """The rows of a parameterised `sql`, in chunks."""
        ...


class SqlEngine(Protocol):
    name: str

    def connect(self, params: ConnectionParams, statement_timeout: float) -> AbstractContextManager[ReadOnlySession]:
        """An open read-only session; raises SourceError with a clear, credential-free message."""
        ...

    def lookup_sql(self, query: str, email: Column, count: int) -> tuple[str, list[Any]]:
        """The user's query as a subquery filtered on the canonical form of its email column against
        `count` keys, and the parameters that precede the keys."""
        ...


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

    def __init__(self, columns: Sequence[Column]):
        names = [column.name for column in columns]
        if "email" not in names:
            shown = ", ".join(names[:20]) or "none"
            raise SourceMisconfigured(f"SOURCE_QUERY returned no `email` column (columns: {shown})")
        twice = sorted({name for name in names if names.count(name) > 1 and _understood(name)})
        if twice:
            shown = ", ".join(f"`{name}`" for name in twice)
            raise SourceMisconfigured(
                f"SOURCE_QUERY returned {shown} more than once (names are matched case-insensitively): "
                "which one is meant is not clear; select each once, or rename the others with AS"
            )
        self.columns = list(columns)
        self.email = names.index("email")
        self.guid = names.index("guid") if "guid" in names else None
        self.consent = names.index("consented_at") if "consented_at" in names else None
        self.data = [(name[len("data_") :], i) for i, name in enumerate(names) if _is_data(name)]
        self.binary = [i for i, column in enumerate(columns) if column.binary]

    @property
    def shape(self) -> SourceShape:
        return SourceShape(
            guid=self.guid is not None, data=tuple(name for name, _ in self.data), consent=self.consent is not None
        )

    def to_raw(self, row: Sequence[Any], number: int) -> RawSubscriber:
        """A row as RawSubscriber. Fields may be a driver's values, or text still as UTF-8 bytes
        (PostgreSQL's COPY rows, see ReadOnlySession.stream); binary columns hold UTF-8 text."""
        binary = self.binary
        if binary or bytes in map(type, row):
            row = [
                _text(value)
                if i in binary
                else value.decode("utf-8", "surrogateescape")
                if type(value) is bytes
                else value
                for i, value in enumerate(row)
            ]
        guid, consent = self.guid, self.consent
        return RawSubscriber(
            row[self.email],
            f"row {number}",
            None if guid is None else row[guid],
            {name: row[i] for name, i in self.data},
            None if consent is None else row[consent],
        )


_BINARY = (bytes, bytearray, memoryview)


def _understood(name: str) -> bool:
    """A column the sync reads (other columns may repeat: they are ignored)."""
    return name in ("email", "guid", "consented_at") or _is_data(name)


def _is_data(name: str) -> bool:
    return name.startswith("data_") and name != "data_"


def _text(value: Any) -> Any:
    # Binary columns (VARBINARY, bytea) hold UTF-8 text for addresses; PostgreSQL's COPY writes them
    # as `\x` and hex digits.
    if isinstance(value, str) and value.startswith("\\x"):
        try:
            value = bytes.fromhex(value[2:])
        except ValueError:
            return value
    if type(value) in _BINARY:
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


def conclusive(key: str) -> bool:
    """Whether the SQL look-up expression finds every stored spelling of this key: printable ASCII
    keys only (a database's own lower-casing of other letters, and Unicode forms, vary)."""
    return key.isascii() and key.isprintable() and " " not in key


class SqlSource:
    """A `SubscriberSource` over PostgreSQL or MySQL/MariaDB."""

    def __init__(self, settings: SourceSettings, params: ConnectionParams, engine: SqlEngine):
        if not settings.query:
            raise ConfigurationError(f"SOURCE_QUERY: is required when SOURCE_KIND={settings.kind}")
        self.query = strip_query(settings.query)
        self.params = params
        self.statement_timeout = settings.statement_timeout
        self.fetch_size = settings.fetch_size
        self.engine = engine
        self.description = (
            f"{self.engine.name} database {params.database or '(default)'} on {params.host}:{params.port}"
        )
        self._columns: ColumnMap | None = None

    def shape(self) -> SourceShape:
        return self._map().shape

    def _map(self, session: ReadOnlySession | None = None) -> ColumnMap:
        if self._columns is None:
            if session is None:
                with self.engine.connect(self.params, self.statement_timeout) as opened:
                    self._columns = ColumnMap(opened.describe(self.query))
            else:
                self._columns = ColumnMap(session.describe(self.query))
            logger.debug("source query columns", extra={"source": self.description, "columns": self._columns.shape})
        return self._columns

    def scan(self) -> Iterator[RawSubscriber]:
        """Every row of SOURCE_QUERY, streamed."""
        read = self.scan_rows()
        number = 0
        for chunk in read.chunks:
            for row in chunk:
                number += 1
                yield read.to_raw(row, number)

    def scan_rows(self) -> RowChunks:
        """Every row of SOURCE_QUERY, streamed in the session's chunks (the planner's bulk form)."""
        columns = self._map()
        layout = RowLayout(email=columns.email, guid=columns.guid, data=tuple(columns.data))

        def chunks() -> Iterator[Sequence[Sequence[Any]]]:
            with self.engine.connect(self.params, self.statement_timeout) as session:
                self._map(session)
                yield from session.stream(self.query, self.fetch_size)

        return RowChunks(layout, chunks(), columns.to_raw, frozenset(columns.binary))

    def lookup(self, keys: Collection[str], also: Collection[str] = ()) -> SourceLookup:
        """Rows of SOURCE_QUERY whose email column, trimmed of any white space and lower-cased in
        SQL, is one of these keys (or their NFD spelling: SQL cannot compose Unicode). Conclusive
        for printable ASCII keys (see `conclusive`); the caller keys every row again. A key whose domain
        is not ASCII is looked up in its IDNA spelling too (`café` as `xn--caf-dma`)."""
        forms = {form for key in keys if key for form in (key, unicodedata.normalize("NFD", key))}
        wanted = sorted(forms | set(filter(None, map(idna_spelling, forms))))
        rows: list[RawSubscriber] = []
        if wanted:
            with self.engine.connect(self.params, self.statement_timeout) as session:
                columns = self._map(session)
                email = columns.columns[columns.email]
                number = 0
                for start in range(0, len(wanted), LOOKUP_CHUNK):
                    chunk = wanted[start : start + LOOKUP_CHUNK]
                    sql, leading = self.engine.lookup_sql(self.query, email, len(chunk))
                    for result in session.query(sql, [*leading, *chunk], self.fetch_size):
                        for row in result:
                            number += 1
                            rows.append(columns.to_raw(row, number))
        return SourceLookup(rows, frozenset(key for key in keys if not conclusive(key)))
