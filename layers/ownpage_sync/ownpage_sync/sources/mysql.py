"""MySQL and MariaDB through PyMySQL: pure Python, so the arm64 layer needs no native wheel.

Rows are streamed with an unbuffered cursor (SSCursor) inside a read-only transaction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import pymysql
import pymysql.cursors

from ownpage_sync.errors import SourceError, SourceMisconfigured
from ownpage_sync.redaction import redact
from ownpage_sync.sources.sql import (
    KEY_CHARACTERS,
    SOCKET_MARGIN,
    Chunk,
    Column,
    ConnectionParams,
    password_for,
    tls_context,
)

PROGRAM_NAME = "ownpage-sync"
_AUTH_CODES = (1044, 1045, 1698)
_READ_ONLY_CODES = (1792, 1290)  # read-only transaction; server running with --read-only
_TIMEOUT_CODES = (1969, 3024)  # MariaDB max_statement_time; MySQL max_execution_time
_CONNECT_CODES = (2002, 2003, 2005, 2006, 2013)
_TLS_UNSUPPORTED = 2026
# Errors that say a setting is wrong: credentials or a privilege refused (1142, 1143, 1227, 1370), no such
# database, table, column or function (1049, 1146, 1109, 1054, 1305), the query ambiguous (1052), naming a
# column twice (1060: the sync reads it as a subquery) or not parsing (1064), or writing.
_SETTING_CODES = (
    *_AUTH_CODES,
    *_READ_ONLY_CODES,
    *(1049, 1052, 1054, 1060, 1064, 1109, 1142, 1143, 1146, 1227, 1305, 1370),
)
BINARY_CHARSET = 63


class MySqlEngine:
    name = "mysql"

    @contextmanager
    def connect(self, params: ConnectionParams, statement_timeout: float) -> Iterator[MySqlSession]:
        password = password_for(params)
        context = tls_context(params)
        # PyMySQL tries TLS and silently falls back when given no option: a context makes it mandatory.
        tls: dict[str, Any] = {"ssl": context} if context is not None else {"ssl_disabled": True}
        try:
            connection = pymysql.connect(
                host=params.host,
                port=params.port,
                user=params.user,
                password=password.encode("utf-8"),  # PyMySQL would encode a str as latin-1
                database=params.database,
                charset="utf8mb4",
                connect_timeout=params.connect_timeout,
                read_timeout=statement_timeout + SOCKET_MARGIN,
                write_timeout=statement_timeout + SOCKET_MARGIN,
                autocommit=False,
                local_infile=False,
                program_name=PROGRAM_NAME,
                **tls,
            )
        except (pymysql.MySQLError, OSError) as exc:
            raise _error(f"mysql at {params.location}", exc, params, password) from exc
        try:
            session = MySqlSession(connection, params, password, statement_timeout)
            session.configure()
            yield session
        finally:
            with suppress(pymysql.MySQLError, OSError):  # already gone; nothing was written
                connection.close()

    def lookup_sql(self, query: str, email: Column, count: int) -> tuple[str, list[Any]]:
        placeholders = ", ".join(["%s"] * count)
        # PyMySQL formats `%` client-side when parameters are given: the user's `LIKE 'a%'` must survive.
        escaped = query.replace("%", "%%")
        # MySQL has no translate(): one REPLACE per character canonical_key strips or maps.
        expression = "CONVERT(ownpage_source.email USING utf8mb4)"
        leading: list[Any] = []
        for source, target in KEY_CHARACTERS:
            expression = f"REPLACE({expression}, %s, %s)"
            leading += [source, target]
        return (
            f"SELECT * FROM (\n{escaped}\n) AS ownpage_source WHERE LOWER(TRIM({expression})) IN ({placeholders})",
            leading,
        )


class MySqlSession:
    def __init__(self, connection: Any, params: ConnectionParams, password: str, statement_timeout: float):
        self.connection = connection
        self.params = params
        self.password = password
        self.statement_timeout = statement_timeout

    def configure(self) -> None:
        """Session settings every read relies on."""
        mariadb = "mariadb" in str(self.connection.get_server_info()).lower()
        statements = [
            # DATETIME is returned as stored; TIMESTAMP is converted to this zone: make it UTC.
            "SET SESSION time_zone = '+00:00'",
            # Every transaction of this session is read-only, even after a DDL's implicit commit.
            "SET SESSION TRANSACTION READ ONLY",
            # The server gives up on a client that reads slowly after this long.
            f"SET SESSION net_write_timeout = {int(self.statement_timeout + SOCKET_MARGIN)}",
            f"SET SESSION max_statement_time = {self.statement_timeout:.3f}"
            if mariadb
            else f"SET SESSION max_execution_time = {int(self.statement_timeout * 1000)}",
        ]
        try:
            with self.connection.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        except (pymysql.MySQLError, OSError) as exc:
            raise _error(f"mysql at {self.params.location}", exc, self.params, self.password) from exc

    def describe(self, sql: str) -> list[Column]:
        cursor = self.connection.cursor()
        try:
            cursor.execute("START TRANSACTION READ ONLY")
            cursor.execute(f"SELECT * FROM (\n{sql.replace('%', '%%')}\n) AS ownpage_source LIMIT 0", ())
            fields = getattr(getattr(cursor, "_result", None), "fields", None) or ()
            charsets = [getattr(field, "charsetnr", None) for field in fields]
            names = [column[0] for column in cursor.description or ()]
            return [
                Column(str(name).lower(), i < len(charsets) and charsets[i] == BINARY_CHARSET)
                for i, name in enumerate(names)
            ]
        except (pymysql.MySQLError, OSError) as exc:
            raise self._failed(exc) from exc
        finally:
            with suppress(pymysql.MySQLError, OSError):
                cursor.close()
                self.connection.rollback()

    def _failed(self, exc: BaseException) -> SourceError:
        where = f"SOURCE_QUERY failed on mysql at {self.params.location}"
        return _error(where, exc, self.params, self.password, self.statement_timeout)

    def stream(self, sql: str, fetch_size: int) -> Iterator[Chunk]:
        return self.query(sql.replace("%", "%%"), (), fetch_size)

    def query(self, sql: str, args: Sequence[Any], fetch_size: int) -> Iterator[Chunk]:
        cursor = self.connection.cursor(pymysql.cursors.SSCursor)
        finished = False
        try:
            cursor.execute("START TRANSACTION READ ONLY")
            cursor.execute(sql, tuple(args))
            while True:
                rows = cursor.fetchmany(fetch_size)
                yield rows
                if len(rows) < fetch_size:
                    break
            finished = True
        except (pymysql.MySQLError, OSError) as exc:
            raise self._failed(exc) from exc
        finally:
            self._end(cursor, finished)

    def _end(self, cursor: Any, finished: bool) -> None:
        try:
            if finished:
                cursor.close()
                self.connection.rollback()  # read-only: nothing to keep
            else:
                # Stopped early or failed: rows may still be in flight, and draining them would read
                # the rest of the audience. Drop the connection instead, and tell PyMySQL's result
                # not to drain it later (its __del__ would read from the closed socket).
                result = getattr(cursor, "_result", None)
                if result is not None and hasattr(result, "unbuffered_active"):
                    result.unbuffered_active = False
                self.connection.close()
        except (pymysql.MySQLError, OSError):
            pass


def _error(
    where: str, exc: BaseException, params: ConnectionParams, password: str, timeout: float | None = None
) -> SourceError:
    """The SourceError for `exc`: SourceMisconfigured when the server's answer says a setting is wrong."""
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    wrong = code in _SETTING_CODES
    return (SourceMisconfigured if wrong else SourceError)(f"{where}: {_summary(exc, params, password, timeout)}")


def _summary(exc: BaseException, params: ConnectionParams, password: str, timeout: float | None = None) -> str:
    """What went wrong, in words an operator can act on, without credentials or addresses."""
    secrets = (password, params.password)
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    message = redact(str(exc.args[1]) if len(exc.args) > 1 else str(exc), secrets)
    if code in _AUTH_CODES:
        return f"authentication failed for user {params.user!r}: {message} (error {code})"
    if code in _READ_ONLY_CODES:
        return f"the query tried to write, refused by the read-only transaction: {message} (error {code})"
    if code in _TIMEOUT_CODES and timeout is not None:
        return f"the query exceeded SOURCE_STATEMENT_TIMEOUT ({timeout:g} s): {message} (error {code})"
    if code == _TLS_UNSUPPORTED:
        return "the server does not offer TLS, which SOURCE_TLS=require (the default) needs; use SOURCE_TLS=disable only for a local database"
    if code in _CONNECT_CODES:
        if "CERTIFICATE_VERIFY_FAILED" in message:
            return f"TLS certificate verification failed ({message}); set SOURCE_TLS_CA to the CA bundle that signed the server's certificate"
        if "timed out" in message and timeout is None:
            return f"no connection within {params.connect_timeout:g} s (host unreachable or port filtered?): {message}"
        return f"could not connect: {message} (error {code})"
    if code is not None:
        return f"{message} (error {code})"
    return f"{type(exc).__name__}: {message}"
