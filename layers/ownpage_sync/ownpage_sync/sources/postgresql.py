"""PostgreSQL through pg8000: pure Python, so the arm64 layer needs no native wheel.

The full read is a `COPY (query) TO STDOUT` inside a read-only transaction: the server sends text
rows and we split them, about ten times faster than pg8000 decoding a cursor's rows one value at a
time. Parameterised look-ups use a server-side cursor (DECLARE … CURSOR / FETCH n).
"""

from __future__ import annotations

import queue
import re
import ssl
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import pg8000.native
from pg8000.exceptions import DatabaseError, Error, InterfaceError

from ownpage_sync.errors import SourceError, SourceMisconfigured
from ownpage_sync.redaction import redact
from ownpage_sync.sources.sql import (
    SOCKET_MARGIN,
    TRANSLATE_FROM,
    TRANSLATE_TO,
    Chunk,
    Column,
    ConnectionParams,
    password_for,
    tls_context,
)

CURSOR = "ownpage_sync_source"
APPLICATION_NAME = "ownpage-sync"
BYTEA = 17
_AUTH_CODES = ("28000", "28P01")
_READ_ONLY_CODE = "25006"
_TIMEOUT_CODE = "57014"
# SQLSTATE classes and codes that say a setting is wrong: 28 credentials refused, 42 syntax error or
# access rule (no such table or column, permission denied), 3D000 no such database, 25006 the query writes,
# 0A000 the query uses what PostgreSQL cannot do there (a data-modifying WITH inside the sync's wrapper).
_SETTING_CLASSES = ("28", "42")
_SETTING_CODES = ("3D000", "0A000", _READ_ONLY_CODE)
COPY_CHUNKS_AHEAD = 4  # chunks parsed ahead of the reader: memory stays bounded
_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))")
_SIMPLE_ESCAPES = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


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
            raise _error(f"postgresql at {params.location}", exc, params, password) from exc
        # pg8000 has one socket timeout; connect fast, then give reads the statement timeout and a margin.
        sock = getattr(connection, "_usock", None)
        if sock is not None:
            sock.settimeout(statement_timeout + SOCKET_MARGIN)
        try:
            yield PostgresSession(connection, params, password, statement_timeout)
        finally:
            with suppress(Error, OSError):  # already gone; nothing was written
                connection.close()

    def lookup_sql(self, query: str, email: Column, count: int) -> tuple[str, list[Any]]:
        column = "convert_from(ownpage_source.email, 'UTF8')" if email.binary else "ownpage_source.email::text"
        placeholders = ", ".join(f"${number}" for number in range(3, count + 3))
        # New lines around the query: a trailing `-- comment` must not swallow the closing parenthesis.
        return (
            f"SELECT * FROM (\n{query}\n) AS ownpage_source "
            f"WHERE lower(btrim(translate({column}, $1, $2))) IN ({placeholders})",
            [TRANSLATE_FROM, TRANSLATE_TO],
        )


class PostgresSession:
    def __init__(self, connection: Any, params: ConnectionParams, password: str, statement_timeout: float):
        self.connection = connection
        self.params = params
        self.password = password
        self.statement_timeout = statement_timeout

    def _begin(self) -> None:
        connection = self.connection
        connection.run("START TRANSACTION READ ONLY")
        # Per statement: DECLARE, each FETCH and the COPY may each take this long.
        connection.run(f"SET LOCAL statement_timeout = {int(self.statement_timeout * 1000)}")
        # timestamptz values come back in UTC whatever the server's default zone.
        connection.run("SET LOCAL TimeZone = 'UTC'")

    def _failed(self, exc: BaseException) -> SourceError:
        where = f"SOURCE_QUERY failed on postgresql at {self.params.location}"
        return _error(where, exc, self.params, self.password, self.statement_timeout)

    def describe(self, sql: str) -> list[Column]:
        connection = self.connection
        try:
            self._begin()
            connection.run(f"SELECT * FROM (\n{sql}\n) AS ownpage_source LIMIT 0")
            return [
                Column(str(column["name"]).lower(), column.get("type_oid") == BYTEA)
                for column in connection.columns or ()
            ]
        except (Error, OSError) as exc:
            raise self._failed(exc) from exc
        finally:
            with suppress(Error, OSError):
                connection.run("ROLLBACK")

    def stream(self, sql: str, fetch_size: int) -> Iterator[Chunk]:
        """COPY's text rows, parsed in a thread that stays a few chunks ahead of the reader."""
        chunks: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=COPY_CHUNKS_AHEAD)
        stop = threading.Event()
        writer = _CopyParser(chunks, stop, fetch_size)

        def copy() -> None:
            # On any failure or early stop the connection is left as it is: the session's owner
            # closes it (a ROLLBACK now would first read the rest of the COPY).
            try:
                self._begin()
                self.connection.run(f"COPY (\n{sql}\n) TO STDOUT", stream=writer)
                writer.flush()
                self.connection.run("ROLLBACK")  # read-only: nothing to keep
                chunks.put(("done", None))
            except _Stopped:
                pass
            except BaseException as exc:  # handed to the reader, which raises it
                with suppress(queue.Full):
                    chunks.put(("error", exc), timeout=5)

        thread = threading.Thread(target=copy, name="postgresql-copy", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = chunks.get()
                if kind == "rows":
                    yield value
                elif kind == "done":
                    return
                else:
                    if isinstance(value, Error | OSError):
                        raise self._failed(value) from value
                    raise value
        finally:
            stop.set()
            with suppress(queue.Empty):
                while True:
                    chunks.get_nowait()
            thread.join(timeout=5)

    def query(self, sql: str, args: Sequence[Any], fetch_size: int) -> Iterator[Chunk]:
        connection = self.connection
        try:
            self._begin()
            # The extended protocol (execute_unnamed) refuses several statements in one string.
            connection.execute_unnamed(f"DECLARE {CURSOR} NO SCROLL CURSOR FOR\n{sql}\n", vals=tuple(args))
            while True:
                rows = connection.run(f"FETCH FORWARD {int(fetch_size)} FROM {CURSOR}")
                yield rows
                if len(rows) < fetch_size:
                    break
        except (Error, OSError) as exc:
            raise self._failed(exc) from exc
        finally:
            with suppress(Error, OSError):
                connection.run("ROLLBACK")  # read-only: nothing to keep; ends the cursor too


class _Stopped(Exception):
    """The reader went away: stop the COPY (the connection is closed right after)."""


class _CopyParser:
    """pg8000 writes COPY's output here, one text row (one CopyData message) at a time; the rows go
    out in chunks of `size`, each split in bulk (CopyRows). Only an append per row happens here."""

    def __init__(self, chunks: queue.Queue[tuple[str, Any]], stop: threading.Event, size: int):
        self.chunks, self.stop, self.size = chunks, stop, max(1, size)
        self.rest = b""
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        parts = self.parts
        parts.append(data)
        if len(parts) >= self.size:
            self._put()

    def flush(self) -> None:
        if self.rest:
            self.parts.append(b"\n")  # a last row without its newline
        self._put()

    def _put(self) -> None:
        data = self.rest + b"".join(self.parts)
        self.parts = []
        end = data.rfind(b"\n") + 1  # a message is a whole row; a part of one waits for the rest
        self.rest = data[end:]
        if not end:
            return
        rows = CopyRows(data[:end])
        while True:
            if self.stop.is_set():
                raise _Stopped()
            try:
                self.chunks.put(("rows", rows), timeout=0.5)
                return
            except queue.Full:
                continue


class CopyRows:
    """Whole rows of COPY's text format (each ending in a newline), split into fields in one call,
    on first use (a chunk read ahead is spooled as its bytes, and split once, when it is compared).

    A field is UTF-8 bytes as sent, None for NULL (`\\N`); a row holding any other escape is
    unescaped into text (`_fields`). Both forms are what ColumnMap.to_raw and the planner read:
    `column(i)` gives one field of every row (the planner's bulk form), `rows[n]` one row."""

    def __init__(self, data: bytes):
        self.data = data
        self.count = data.count(b"\n")
        self.width = data[: data.index(b"\n")].count(b"\t") + 1
        self.nulls = b"\\" in data
        self._fields: list[bytes | str | None] | None = None

    def __reduce__(self) -> tuple[type[CopyRows], tuple[bytes]]:
        return CopyRows, (self.data,)

    @property
    def fields(self) -> list[bytes | str | None]:
        if self._fields is None:
            self._fields = self._split()
        return self._fields

    def _split(self) -> list[bytes | str | None]:
        data, width = self.data, self.width
        fields: list[bytes | str | None] = list(data.replace(b"\n", b"\t").split(b"\t"))
        if len(fields) != self.count * width + 1:
            raise SourceError("postgresql: COPY sent rows of different widths")
        if self.nulls and data.count(b"\\") != fields.count(b"\\N"):
            escaped = {i // width for i, field in enumerate(fields) if b"\\" in field}  # type: ignore[operator]
            for number in escaped:
                line = b"\t".join(fields[number * width : (number + 1) * width])  # type: ignore[arg-type]
                fields[number * width : (number + 1) * width] = _fields(line)
        return fields

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[list[bytes | str | None]]:
        return (self[number] for number in range(self.count))

    def __getitem__(self, number: int) -> list[bytes | str | None]:
        if not 0 <= number < self.count:
            raise IndexError(number)
        row = self.fields[number * self.width : (number + 1) * self.width]
        return [None if field == b"\\N" else field for field in row] if self.nulls else row

    def column(self, position: int) -> list[bytes | str | None]:
        values = self.fields[position : self.count * self.width : self.width]
        return [None if field == b"\\N" else field for field in values] if self.nulls else values


def _fields(line: bytes) -> list[bytes | None] | list[str | None]:
    """A COPY row holding a backslash: NULLs only (`\\N` fields) stay bytes; other escapes, text."""
    fields = line.split(b"\t")
    if line.count(b"\\") == fields.count(b"\\N"):
        return [None if field == b"\\N" else field for field in fields]
    return [_unescape(field) for field in fields]


def _unescape(field: bytes) -> str | None:
    """One field of COPY's text format: `\\N` is NULL; backslash escapes as PostgreSQL writes them."""
    if field == b"\\N":
        return None

    def replace(match: re.Match[bytes]) -> bytes:
        octal, hexa, char = match.groups()
        if octal is not None:
            return bytes([int(octal, 8) & 0xFF])
        if hexa is not None:
            return bytes([int(hexa, 16)])
        return _SIMPLE_ESCAPES.get(char, char)

    return _ESCAPE.sub(replace, field).decode("utf-8", "surrogateescape")


def _error(
    where: str, exc: BaseException, params: ConnectionParams, password: str, timeout: float | None = None
) -> SourceError:
    """The SourceError for `exc`: SourceMisconfigured when the server's answer says a setting is wrong."""
    code = _sqlstate(exc)
    wrong = code.startswith(_SETTING_CLASSES) or code in _SETTING_CODES
    return (SourceMisconfigured if wrong else SourceError)(f"{where}: {_summary(exc, params, password, timeout)}")


def _sqlstate(exc: BaseException) -> str:
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        return str(exc.args[0].get("C", ""))
    return ""


def _summary(exc: BaseException, params: ConnectionParams, password: str, timeout: float | None = None) -> str:
    """What went wrong, in words an operator can act on, without credentials or addresses."""
    secrets = (password, params.password)
    if isinstance(exc, DatabaseError) and exc.args and isinstance(exc.args[0], dict):
        fields: dict[str, Any] = exc.args[0]
        code, message = str(fields.get("C", "")), redact(str(fields.get("M", "")), secrets)
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
        return f"TLS certificate verification failed ({redact(str(cause.verify_message), secrets)}); set SOURCE_TLS_CA to the CA bundle that signed the server's certificate"
    if isinstance(cause, TimeoutError):
        if timeout is None:
            return f"no connection within {params.connect_timeout:g} s (host unreachable or port filtered?)"
        return f"the server did not answer within {timeout + SOCKET_MARGIN:g} s"
    if isinstance(cause, OSError):
        return f"could not connect ({type(cause).__name__}: {redact(cause.strerror or str(cause), secrets)})"
    return f"{type(exc).__name__}: {redact(str(exc), secrets)}"
