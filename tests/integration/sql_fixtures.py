"""Helpers for the SQL source tests: the real local PostgreSQL and MariaDB servers, one scratch table
per test (dropped afterwards), and settings pointing a source at them."""

from __future__ import annotations

import socket
import struct
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pg8000.native
import pymysql
from ownpage_sync.settings import SourceSettings

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
MYSQL_DSN = "mysql://root@127.0.0.1:3306/test"
ENGINES = ("postgresql", "mysql")


@dataclass
class ScratchDatabase:
    """A read-write admin connection to one local server, and the scratch tables a test made."""

    kind: str
    dsn: str
    connection: Any
    tables: list[str] = field(default_factory=list)

    def execute(self, sql: str) -> list[Any]:
        if self.kind == "postgresql":
            return list(self.connection.run(sql) or [])
        with self.connection.cursor() as cursor:
            cursor.execute(sql)
            rows = list(cursor.fetchall())
        self.connection.commit()
        return rows

    def table(self, columns: str) -> str:
        """A new table with these column definitions, dropped when the test ends."""
        name = f"subscribers_{uuid.uuid4().hex[:10]}"
        options = " DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci" if self.kind == "mysql" else ""
        self.execute(f"CREATE TABLE {name} ({columns}){options}")
        self.tables.append(name)
        return name

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        column_list = ", ".join(columns)
        if self.kind == "postgresql":
            # One multi-row INSERT with bound parameters: fast and exact for any value.
            placeholders = ", ".join(
                "(" + ", ".join(f":p{r}_{c}" for c in range(len(columns))) + ")" for r in range(len(rows))
            )
            params = {f"p{r}_{c}": value for r, row in enumerate(rows) for c, value in enumerate(row)}
            self.connection.run(f"INSERT INTO {table} ({column_list}) VALUES {placeholders}", **params)
            return
        with self.connection.cursor() as cursor:
            marks = ", ".join(["%s"] * len(columns))
            cursor.executemany(f"INSERT INTO {table} ({column_list}) VALUES ({marks})", list(rows))
        self.connection.commit()

    def count(self, table: str) -> int:
        return int(self.execute(f"SELECT COUNT(*) FROM {table}")[0][0])

    def drop_all(self) -> None:
        for name in self.tables:
            self.execute(f"DROP TABLE IF EXISTS {name}")


def connect_admin(kind: str) -> Any:
    if kind == "postgresql":
        return pg8000.native.Connection("postgres", host="127.0.0.1", port=5432, database="test", timeout=10)
    return pymysql.connect(
        host="127.0.0.1", port=3306, user="root", password="", database="test", charset="utf8mb4", ssl_disabled=True
    )


@contextmanager
def scratch_database(kind: str) -> Iterator[ScratchDatabase]:
    """An admin connection to one local server; the tables made through it are dropped at the end."""
    connection = connect_admin(kind)
    scratch = ScratchDatabase(kind, PG_DSN if kind == "postgresql" else MYSQL_DSN, connection)
    try:
        yield scratch
    finally:
        scratch.drop_all()
        connection.close()


def sql_settings(db: ScratchDatabase, query: str, **overrides: Any) -> SourceSettings:
    values: dict[str, Any] = {"kind": db.kind, "dsn": db.dsn, "query": query, "tls": "disable", "fetch_size": 500}
    values.update(overrides)
    return SourceSettings(**values)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FakePostgresAuth:
    """A loopback server speaking just enough of PostgreSQL's protocol to ask for a clear-text password
    and refuse it (28P01), recording what the client sent.

    Why a stand-in: the machine's PostgreSQL trusts every loopback connection (pg_hba `trust`), so a
    real server here can neither refuse a wrong password nor show which password a client sent.
    """

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.listener.settimeout(0.05)
        self.stopping = threading.Event()
        self.port = int(self.listener.getsockname()[1])
        self.passwords: list[str] = []
        self.startup_users: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakePostgresAuth:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=5)
        self.listener.close()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with client:
                client.settimeout(5)
                try:
                    self._conversation(client)
                except OSError:
                    continue

    def _conversation(self, client: socket.socket) -> None:
        length = struct.unpack("!i", _read(client, 4))[0]
        startup = _read(client, length - 4)
        parts = startup[4:].split(b"\0")
        params = dict(zip(parts[0::2], parts[1::2], strict=False))
        self.startup_users.append(params.get(b"user", b"").decode())
        client.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        kind = _read(client, 1)
        size = struct.unpack("!i", _read(client, 4))[0]
        payload = _read(client, size - 4)
        if kind == b"p":
            self.passwords.append(payload.rstrip(b"\0").decode())
        fields = b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "app"\0\0'
        client.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)


def _read(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            raise OSError("client went away")
        data += chunk
    return data
