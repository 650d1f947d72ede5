"""A scenario's source as a table in the local PostgreSQL or MariaDB, for the demo and the tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

COLUMNS = ("user_id", "email", "newsletter", "first_name", "city", "consented_at")
LOCAL = {
    "postgresql": {"host": "127.0.0.1", "port": 5432, "username": "postgres", "password": "", "dbname": "test"},
    "mysql": {"host": "127.0.0.1", "port": 3306, "username": "root", "password": "", "dbname": "test"},
}


def connect_local(kind: str) -> Any:
    """An admin connection to the machine's own server (trust / empty-password logins)."""
    local = LOCAL[kind]
    if kind == "postgresql":
        import pg8000.native

        return pg8000.native.Connection(
            local["username"], host=local["host"], port=local["port"], database=local["dbname"], timeout=10
        )
    import pymysql

    return pymysql.connect(
        host=local["host"],
        port=local["port"],
        user=local["username"],
        password="",
        database=local["dbname"],
        charset="utf8mb4",
        ssl_disabled=True,
    )


def subscriber_query(table: str) -> str:
    """The SOURCE_QUERY reading the table: every row it returns is a subscriber."""
    return (
        f"SELECT email, user_id AS guid, consented_at, first_name AS data_firstname, city AS data_city "
        f"FROM {table} WHERE newsletter"
    )


def create_and_seed(connection: Any, kind: str, table: str, items: Iterable[dict[str, Any]]) -> None:
    """(Re)create `table` and insert the scenario's source items."""
    rows = [
        tuple(item[c][:19].replace("T", " ") if kind == "mysql" and c == "consented_at" else item[c] for c in COLUMNS)
        for item in items
    ]
    if kind == "postgresql":
        connection.run(f"DROP TABLE IF EXISTS {table}")
        connection.run(
            f"CREATE TABLE {table} (user_id VARCHAR(20) PRIMARY KEY, email VARCHAR(320), newsletter BOOLEAN,"
            " first_name VARCHAR(100), city VARCHAR(100), consented_at TIMESTAMPTZ)"
        )
        # One statement of column arrays: far faster than row-by-row inserts.
        connection.run(
            f"INSERT INTO {table} ({', '.join(COLUMNS)}) SELECT * FROM unnest("
            "CAST(:a AS text[]), CAST(:b AS text[]), CAST(:c AS boolean[]), CAST(:d AS text[]),"
            " CAST(:e AS text[]), CAST(:f AS timestamptz[]))",
            **{name: [row[i] for row in rows] for i, name in enumerate("abcdef")},
        )
        return
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
        cursor.execute(
            f"CREATE TABLE {table} (user_id VARCHAR(20) PRIMARY KEY, email VARCHAR(320), newsletter TINYINT(1),"
            " first_name VARCHAR(100), city VARCHAR(100), consented_at DATETIME)"
            " DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci"
        )
        marks = ", ".join(["%s"] * len(COLUMNS))
        for start in range(0, len(rows), 5000):
            cursor.executemany(
                f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({marks})", rows[start : start + 5000]
            )
    connection.commit()


def drop(connection: Any, kind: str, table: str) -> None:
    if kind == "postgresql":
        connection.run(f"DROP TABLE IF EXISTS {table}")
        return
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")
    connection.commit()
