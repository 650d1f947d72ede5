"""PostgreSQL through pg8000: pure Python, so the arm64 layer needs no native wheel.

pg8000 reads a whole result into memory, so the query runs behind a server-side cursor
(DECLARE … CURSOR / FETCH n) inside a read-only transaction.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError, Error, InterfaceError

from ownpage_sync.errors import SourceError
from ownpage_sync.sources.sql import SOCKET_MARGIN, Chunk, ConnectionParams, password_for, scrub, tls_context

CURSOR = "ownpage_sync_source"
APPLICATION_NAME = "ownpage-sync"
_AUTH_CODES = ("28000", "28P01")
_READ_ONLY_CODE = "25006"
_TIMEOUT_CODE = "57014"


class PostgresEngine:
    name = "postgresql"

    @contextmanager
    def connect(self, params: ConnectionParams, statement_timeout: float) -> Iterator[PostgresSession]:
        password = password_for(params)
        context = tls_context(params)
        try:
            connection = pg8000.native.Connection(
                user=params.user,
                host=params.host,
                port=params.port,
                database=params.database,
                password=password or None,
                # A context makes TLS mandatory (pg8000 raises "Server refuses SSL"); False never tries.
                ssl_context=context if context is not None else False,
                timeout=params.connect_timeout,
                application_name=APPLICATION_NAME,
            )
        except (Error, OSError) as exc:
            raise SourceError(f"postgresql at {params.location}: {_summary(exc, params, password)}") from exc
        # pg8000 has one socket timeout; connect fast, then give reads the statement timeout and a margin.
        sock = getattr(connection, "_usock", None)
        if sock is not None:
            sock.settimeout(statement_timeout + SOCKET_MARGIN)
        try:
            yield PostgresSession(connection, params, password, statement_timeout)
        finally:
            with suppress(Error, OSError):  # already gone; nothing was written
                connection.close()

    def lookup_sql(self, query: str, count: int) -> str:
        placeholders = ", ".join(f"${number}" for number in range(1, count + 1))
        # New lines around the query: a trailing `-- comment` must not swallow the closing parenthesis.
        return (
            f"SELECT * FROM (\n{query}\n) AS ownpage_source WHERE lower(trim(ownpage_source.email)) IN ({placeholders})"
        )


class PostgresSession:
    def __init__(self, connection: Any, params: ConnectionParams, password: str, statement_timeout: float):
        self.connection = connection
        self.params = params
        self.password = password
        self.statement_timeout = statement_timeout

    def stream(self, sql: str, args: Sequence[str], fetch_size: int) -> Iterator[Chunk]:
        connection = self.connection
        try:
            connection.run("START TRANSACTION READ ONLY")
            # Per statement: DECLARE, then each FETCH, may each take this long.
            connection.run(f"SET LOCAL statement_timeout = {int(self.statement_timeout * 1000)}")
            # timestamptz values come back in UTC whatever the server's default zone.
            connection.run("SET LOCAL TimeZone = 'UTC'")
            # The extended protocol (execute_unnamed) refuses several statements in one string.
            connection.execute_unnamed(f"DECLARE {CURSOR} NO SCROLL CURSOR FOR\n{sql}\n", vals=tuple(args))
            while True:
                rows = connection.run(f"FETCH FORWARD {int(fetch_size)} FROM {CURSOR}")
                names = [column["name"] for column in connection.columns or ()]
                yield names, rows
                if len(rows) < fetch_size:
                    break
        except (Error, OSError) as exc:
            raise SourceError(
                f"SOURCE_QUERY failed on postgresql at {self.params.location}: "
                f"{_summary(exc, self.params, self.password, self.statement_timeout)}"
            ) from exc
        finally:
            with suppress(Error, OSError):
                connection.run("ROLLBACK")  # read-only: nothing to keep; ends the cursor too


def _summary(exc: BaseException, params: ConnectionParams, password: str, timeout: float | None = None) -> str:
    """What went wrong, in words an operator can act on, without credentials or addresses."""
    secrets = (password, params.password)
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        fields: dict[str, Any] = exc.args[0]
        code, message = str(fields.get("C", "")), scrub(str(fields.get("M", "")), secrets)
        if code in _AUTH_CODES:
            return f"authentication failed for user {params.user!r}: {message} (SQLSTATE {code})"
        if code == _READ_ONLY_CODE:
            return f"the query tried to write, refused by the read-only transaction: {message} (SQLSTATE {code})"
        if code == _TIMEOUT_CODE and timeout is not None:
            return f"the query exceeded SOURCE_STATEMENT_TIMEOUT ({timeout:g} s): {message} (SQLSTATE {code})"
        return f"{message} (SQLSTATE {code})"
    cause = exc.__cause__ if isinstance(exc, InterfaceError) and exc.__cause__ is not None else exc
    if isinstance(exc, InterfaceError) and "refuses SSL" in str(exc):
        return "the server does not offer TLS, which SOURCE_TLS=require (the default) needs; use SOURCE_TLS=disable only for a local database"
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed ({scrub(str(cause.verify_message), secrets)}); set SOURCE_TLS_CA to the CA bundle that signed the server's certificate"
    if isinstance(cause, TimeoutError):
        if timeout is None:
            return f"no connection within {params.connect_timeout:g} s (host unreachable or port filtered?)"
        return f"the server did not answer within {timeout + SOCKET_MARGIN:g} s"
    if isinstance(cause, OSError):
        return f"could not connect ({type(cause).__name__}: {scrub(cause.strerror or str(cause), secrets)})"
    return f"{type(exc).__name__}: {scrub(str(exc), secrets)}"
