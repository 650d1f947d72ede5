"""The PostgreSQL and MySQL sources over real connections to the machine's PostgreSQL and MariaDB.

Every test taking the `db` fixture runs against both servers. Rows go through the same planner the
sync uses (against an empty list), so the assertions are about what the sync would see.
"""

from __future__ import annotations

import json
import time
import tracemalloc
import unicodedata
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import boto3
import pytest
from ownpage_sync.emails import canonical_key
from ownpage_sync.errors import ConfigurationError, SourceError, SourceMisconfigured
from ownpage_sync.planner import plan_changes
from ownpage_sync.redaction import redact
from ownpage_sync.settings import Settings, SourceSettings
from ownpage_sync.sources.factory import open_source
from ownpage_sync.sources.postgresql import PostgresEngine
from ownpage_sync.sources.prefetch import SourcePrefetch
from ownpage_sync.sources.sql import SqlSource, connection_params
from ownpage_sync.values import parse_timestamp

from tests.integration.sql_fixtures import (
    ENGINES,
    FakePostgresAuth,
    ScratchDatabase,
    closed_port,
    scratch_database,
    sql_settings,
)

pytestmark = pytest.mark.integration

PG_TYPES = {"id": "SERIAL PRIMARY KEY", "text": "TEXT", "aware": "TIMESTAMPTZ", "naive": "TIMESTAMP", "flag": "BOOLEAN"}
MY_TYPES = {
    "id": "INT AUTO_INCREMENT PRIMARY KEY",
    "text": "VARCHAR(320)",
    "aware": "TIMESTAMP NULL",
    "naive": "DATETIME",
    "flag": "BOOLEAN",
}
QUERY = (
    "SELECT email, user_guid AS guid, first_name AS data_firstname, city AS data_city, notes FROM {table} ORDER BY id"
)


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest) -> Iterator[ScratchDatabase]:
    """Each test taking it runs once against PostgreSQL and once against MariaDB."""
    with scratch_database(request.param) as scratch:
        yield scratch


def subscribers_table(db: ScratchDatabase) -> str:
    types = PG_TYPES if db.kind == "postgresql" else MY_TYPES
    columns = (
        f"id {types['id']}, email {types['text']}, user_guid {types['text']}, first_name {types['text']}, "
        f"city {types['text']}, notes {types['text']}, active {types['flag']} DEFAULT TRUE"
    )
    return db.table(columns)


def test_scan_maps_columns_and_the_planner_keys_them(db: ScratchDatabase) -> None:
    # Given mixed-case and Unicode addresses, NULLs, an invalid address and duplicate rows
    table = subscribers_table(db)
    rows = [
        ("Foo.Bar@Example.COM", "g1", "Ann", "Paris", "ignored"),
        ("  élodie@exemple.fr ", "g2", "Élodie", None, None),
        ("ZOË@EXAMPLE.ORG", "g3", None, "Zürich", None),
        (None, "g4", "Nobody", None, None),
        ("", "g5", None, None, None),
        ("not-an-address", "g6", None, None, None),
        ("foo.bar@example.com", "g1", "Ann", "Paris", "ignored"),
        ("dup@example.com", "g7", "Dee", "Lyon", None),
        ("dup@example.com", "g7", "Dee", "Lyon", None),
    ]
    db.insert(table, ["email", "user_guid", "first_name", "city", "notes"], rows)
    source = open_source(sql_settings(db, QUERY.format(table=table)))

    # When the source is scanned
    raw = list(source.scan())
    plan = plan_changes(raw, [])
    planned = {op.email: op for op in plan.to_subscribe}

    # Then each row is mapped by column name, located by row number, and keyed by the planner
    assert source.shape().data == ("firstname", "city") and source.shape().guid
    assert [row.where for row in raw] == [f"row {n}" for n in range(1, 10)]
    assert raw[0].data == {"firstname": "Ann", "city": "Paris"}  # `notes` is not a data_* column
    assert set(planned) == {"foo.bar@example.com", "élodie@exemple.fr", "zoë@example.org", "dup@example.com"}
    assert planned["élodie@exemple.fr"].data == {"firstname": "Élodie"}
    assert planned["zoë@example.org"].guid == "g3"
    assert (plan.source.rows_read, plan.source.invalid, plan.source.duplicates) == (9, 3, 2)
    assert all("@" not in problem.where for problem in plan.source.samples)
    assert db.kind in source.description and "password" not in source.description


def test_consented_at_with_and_without_time_zone(db: ScratchDatabase) -> None:
    # Given the same opt-in stored in a zone-aware column (written from a +02:00 session) and as a
    # zone-less local time, plus a NULL
    types = PG_TYPES if db.kind == "postgresql" else MY_TYPES
    table = db.table(f"id {types['id']}, email {types['text']}, aware {types['aware']}, naive {types['naive']} NULL")
    if db.kind == "postgresql":
        db.execute(
            f"INSERT INTO {table} (email, aware, naive) VALUES "
            "('a@example.com', '2024-05-01 12:00:00+02', '2024-05-01 12:00:00'), ('b@example.com', NULL, NULL)"
        )
    else:
        db.execute("SET time_zone = '+02:00'")
        db.execute(
            f"INSERT INTO {table} (email, aware, naive) VALUES "
            "('a@example.com', '2024-05-01 12:00:00', '2024-05-01 12:00:00'), ('b@example.com', NULL, NULL)"
        )

    # When each column is read as consented_at
    def consents(column: str) -> dict[str, datetime | None]:
        query = f"SELECT email, {column} AS consented_at FROM {table}"
        return {row.email: parse_timestamp(row.consented_at) for row in open_source(sql_settings(db, query)).scan()}

    aware, naive = consents("aware"), consents("naive")

    # Then the zone-aware value is the right instant in UTC, the zone-less one is read as UTC
    assert aware["a@example.com"] == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert naive["a@example.com"] == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert aware["b@example.com"] is None


def test_streams_200000_rows_with_bounded_memory(db: ScratchDatabase) -> None:
    # Given 200,000 subscribers in a table, generated by the server itself
    types = PG_TYPES if db.kind == "postgresql" else MY_TYPES
    table = db.table(f"id {types['id']}, email {types['text']}, user_guid {types['text']}")
    series = (
        "SELECT 'reader' || g || '@example.com', 'guid-' || g FROM generate_series(1, 200000) AS g"
        if db.kind == "postgresql"
        else "SELECT CONCAT('reader', seq, '@example.com'), CONCAT('guid-', seq) FROM seq_1_to_200000"  # MariaDB
    )
    db.execute(f"INSERT INTO {table} (email, user_guid) {series}")
    source = open_source(
        sql_settings(db, f"SELECT email, user_guid AS guid FROM {table} ORDER BY id", fetch_size=2_000)
    )

    # When the whole audience is streamed and consumed one row at a time
    tracemalloc.start()
    try:
        count, last = 0, None
        for row in source.scan():
            count, last = count + 1, row
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # Then every row arrived, and the peak stayed at a few chunks: a fetchall() would hold 200,000
    # rows at once (each a tuple or list of two strings: about 40 MB of Python objects).
    assert count == 200_000
    assert last is not None and last.email == "reader200000@example.com" and last.where == "row 200000"
    assert peak < 6 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_stopping_early_does_not_read_the_rest(db: ScratchDatabase) -> None:
    # Given a query of 200,000 rows
    query = (
        "SELECT 'reader' || g || '@example.com' AS email FROM generate_series(1, 200000) AS g"
        if db.kind == "postgresql"
        else "SELECT CONCAT('reader', seq, '@example.com') AS email FROM seq_1_to_200000"
    )
    source = open_source(sql_settings(db, query, fetch_size=100))

    # When the consumer takes ten rows and stops
    started = time.monotonic()
    rows = source.scan()
    first = list(islice(rows, 10))
    rows.close()  # type: ignore[attr-defined]

    # Then it got them and closing did not drain the remaining rows
    assert [row.email for row in first][-1] == "reader10@example.com"
    assert time.monotonic() - started < 1.5


def test_a_read_ahead_replays_exactly_what_a_direct_read_gives(db: ScratchDatabase) -> None:
    # Given a query of 5,000 rows with a NULL and an escaped character now and then
    query = (
        "SELECT 'reader' || g || '@example.com' AS email, CASE WHEN g % 7 = 0 THEN NULL ELSE 'city' || chr(9) || g END"
        " AS data_city FROM generate_series(1, 5000) AS g"
        if db.kind == "postgresql"
        else "SELECT CONCAT('reader', seq, '@example.com') AS email, IF(seq % 7 = 0, NULL, CONCAT('city', CHAR(9), seq))"
        " AS data_city FROM seq_1_to_5000"
    )

    def rows(chunks: Iterator[Any]) -> list[list[Any]]:
        return [list(row) for chunk in chunks for row in chunk]

    # When it is read directly, and read ahead into a spool then replayed
    direct = rows(open_source(sql_settings(db, query, fetch_size=500)).scan_rows().chunks)
    ahead = SourcePrefetch.start(open_source(sql_settings(db, query, fetch_size=500)).scan_rows(), 64 << 20)
    replayed = rows(ahead.rows().chunks)

    # Then both give the same rows, field for field
    assert len(direct) == 5000
    assert replayed == direct
    assert ahead.stats.rows == 5000 and not ahead.stats.ended


@pytest.mark.parametrize("spool", [64 << 20, 100], ids=["under way", "ended early: spool full"])
def test_closing_a_read_ahead_closes_its_connection(spool: int) -> None:
    # Given a PostgreSQL read ahead of 2,000,000 rows, under way or already ended by a full spool
    with scratch_database("postgresql") as db:
        query = "SELECT 'reader' || g || '@example.com' AS email FROM generate_series(1, 2000000) AS g"
        ahead = SourcePrefetch.start(open_source(sql_settings(db, query, fetch_size=100)).scan_rows(), spool)
        time.sleep(0.3)

        # When it is closed (the Ownpage read failed: nothing will be compared)
        ahead.close()

        # Then its connection is gone from the server soon after, and it stopped short of the end
        def open_connections() -> int:
            found = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ownpage-sync'")
            return int(found[0][0])

        deadline = time.monotonic() + 10
        while open_connections() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_connections() == 0
        assert ahead.stats.rows < 2_000_000


def test_a_query_that_writes_is_refused_and_nothing_changes(db: ScratchDatabase) -> None:
    # Given a table with two subscribers
    table = subscribers_table(db)
    db.insert(table, ["email"], [("a@example.com",), ("b@example.com",)])
    if db.kind == "postgresql":
        attempts = [
            f"WITH gone AS (DELETE FROM {table} RETURNING email) SELECT email FROM gone",
            f"SELECT email FROM {table} FOR UPDATE",
            f"SELECT email FROM {table}; DELETE FROM {table}",
            f"SELECT email, nextval(pg_get_serial_sequence('{table}', 'id')) AS guid FROM {table}",
        ]
    else:
        attempts = [
            f"INSERT INTO {table} (email) VALUES ('intruder@example.com')",
            f"SELECT email FROM {table} FOR UPDATE",
            f"DELETE FROM {table}",
            f"DROP TABLE {table}",
        ]

    for query in attempts:
        # When a query that writes (or locks) is used as SOURCE_QUERY
        with pytest.raises(SourceMisconfigured) as caught:
            list(open_source(sql_settings(db, query)).scan())
        # Then the source refuses it with the database's reason (a setting to fix), and the data is untouched
        assert "SOURCE_QUERY failed" in str(caught.value)
    assert db.count(table) == 2
    # The read-only transaction (not luck) is what refused the plain write
    with pytest.raises(SourceError, match="read-only"):
        list(open_source(sql_settings(db, attempts[1])).scan())


def test_a_broken_query_is_a_clear_source_error(db: ScratchDatabase) -> None:
    # Given a query on a table that does not exist, one with a syntax error, one naming a missing column
    table = subscribers_table(db)
    missing = f"SELECT email FROM no_such_table_{uuid.uuid4().hex[:8]}"
    # When they run / Then the database's message is summarised, as a setting to fix (not a transient failure)
    with pytest.raises(SourceMisconfigured, match="no_such_table_"):
        list(open_source(sql_settings(db, missing)).scan())
    with pytest.raises(SourceMisconfigured, match=r"(?i)syntax"):
        list(open_source(sql_settings(db, "SELEC email FROM nowhere")).scan())
    with pytest.raises(SourceMisconfigured, match="no_such_column"):
        list(open_source(sql_settings(db, f"SELECT email, no_such_column AS guid FROM {table}")).scan())


def test_a_column_the_sync_reads_returned_twice_is_refused_by_name(db: ScratchDatabase) -> None:
    # Given queries that return `email` twice (in two spellings) and `data_city` twice
    table = subscribers_table(db)
    db.insert(table, ["email", "first_name"], [("a@example.com", "Ann")])
    twice = [
        (f"SELECT email, lower(email) AS EMAIL FROM {table}", "`email`"),
        (f"SELECT email, first_name AS data_city, email AS data_city FROM {table}", "`data_city`"),
    ]
    for query, named in twice:
        # When each is scanned / Then the run stops naming the column, rather than read one of them
        # (MariaDB refuses a subquery with two columns of one name itself: the sync wraps the query)
        said = f"returned {named} more than once" if db.kind == "postgresql" else "Duplicate column name"
        with pytest.raises(SourceMisconfigured, match=f"(?i){said}"):
            list(open_source(sql_settings(db, query)).scan())
    if db.kind == "postgresql":
        # And a column the sync does not read may repeat
        rows = list(open_source(sql_settings(db, f"SELECT email, id AS x, id AS x FROM {table}")).scan())
        assert [row.email for row in rows] == ["a@example.com"]


def test_a_query_without_an_email_column_fails_even_when_empty(db: ScratchDatabase) -> None:
    # Given a query that returns no rows and no `email` column
    table = subscribers_table(db)
    source = open_source(sql_settings(db, f"SELECT id, first_name AS data_firstname FROM {table} WHERE 1 = 0"))
    # When it is scanned / Then the missing column is named, not read as an empty audience
    with pytest.raises(SourceMisconfigured, match=r"no `email` column \(columns: id, data_firstname\)"):
        list(source.scan())


def test_statement_timeout_stops_a_slow_query(db: ScratchDatabase) -> None:
    # Given a query slower than SOURCE_STATEMENT_TIMEOUT
    query = (
        "SELECT pg_sleep(3)::text || 'a@example.com' AS email"
        if db.kind == "postgresql"
        else "SELECT SLEEP(3) AS email"
    )
    source = open_source(sql_settings(db, query, statement_timeout=1.0))
    started = time.monotonic()
    # When it runs / Then the server cancels it after the timeout
    with pytest.raises(SourceError, match="SOURCE_STATEMENT_TIMEOUT"):
        list(source.scan())
    assert time.monotonic() - started < 2.5


def test_an_unreachable_host_fails_fast(db: ScratchDatabase) -> None:
    # Given a DSN whose port nothing listens on
    scheme = "postgresql" if db.kind == "postgresql" else "mysql"
    dsn = f"{scheme}://app:S3cret-pw@127.0.0.1:{closed_port()}/test"
    source = open_source(sql_settings(db, "SELECT 1 AS email", dsn=dsn))
    started = time.monotonic()
    # When it is scanned / Then it fails at once, saying so, without the password
    with pytest.raises(SourceError, match="could not connect") as caught:
        list(source.scan())
    assert time.monotonic() - started < 2
    assert not isinstance(caught.value, SourceMisconfigured)  # a service to wait for, perhaps: not a setting
    assert "S3cret-pw" not in str(caught.value)


def test_tls_required_against_a_server_without_tls_fails_clearly(db: ScratchDatabase) -> None:
    # Given the default SOURCE_TLS=require against the local server (started without TLS here)
    source = open_source(sql_settings(db, "SELECT 'a@example.com' AS email", tls="require"))
    # When it connects / Then it refuses to fall back to clear text
    with pytest.raises(SourceError, match="TLS"):
        list(source.scan())


def test_wrong_mariadb_password_is_refused_without_echoing_it() -> None:
    # Given the right user with a wrong password (the local PostgreSQL trusts loopback logins: its
    # case is the stand-in server test below)
    settings = SourceSettings(
        kind="mysql", dsn="mysql://root:Wr0ng-pw@127.0.0.1:3306/test", query="SELECT 1 AS email", tls="disable"
    )
    # When it connects / Then authentication fails clearly and the password is nowhere in the message
    with pytest.raises(SourceMisconfigured, match="authentication failed for user 'root'") as caught:
        list(open_source(settings).scan())
    assert "Wr0ng-pw" not in str(caught.value)


def test_unknown_postgresql_role_is_refused() -> None:
    # Given a role the real PostgreSQL does not know
    settings = SourceSettings(
        kind="postgresql",
        dsn="postgresql://no_such_role_x:Pw-123@127.0.0.1:5432/test",
        query="SELECT 1 AS email",
        tls="disable",
    )
    # When it connects / Then the failure names the user and the SQLSTATE, not the password
    with pytest.raises(
        SourceMisconfigured, match=r"authentication failed for user 'no_such_role_x'.*SQLSTATE 28000"
    ) as caught:
        list(open_source(settings).scan())
    assert "Pw-123" not in str(caught.value)


def test_wrong_postgresql_password_is_refused_without_echoing_it() -> None:
    # Given a server that refuses every password (a protocol stand-in: the local PostgreSQL trusts loopback)
    with FakePostgresAuth() as server:
        settings = SourceSettings(
            kind="postgresql",
            dsn=f"postgresql://app:Wr0ng-pw@127.0.0.1:{server.port}/test",
            query="SELECT 1 AS email",
            tls="disable",
        )
        # When the source connects
        with pytest.raises(
            SourceMisconfigured, match=r"authentication failed for user 'app'.*SQLSTATE 28P01"
        ) as caught:
            list(open_source(settings).scan())
    # Then the password was sent, refused, and is absent from the message
    assert server.passwords == ["Wr0ng-pw"]
    assert "Wr0ng-pw" not in str(caught.value)


def test_iam_auth_sends_a_fresh_rds_token_as_the_password() -> None:
    # Given IAM authentication against a stand-in server that records the password it is sent
    # (boto3 signs the token locally; no AWS call is made)
    with FakePostgresAuth() as server:
        settings = SourceSettings(
            kind="postgresql", secret_id="db", query="SELECT 1 AS email", tls="disable", iam_auth=True
        )
        secret = {"engine": "postgres", "host": "127.0.0.1", "port": server.port, "username": "app", "dbname": "test"}
        source = SqlSource(settings, connection_params(settings, secret), PostgresEngine())
        # When it connects
        with pytest.raises(SourceError, match="authentication failed") as caught:
            list(source.scan())
    # Then the password was an RDS auth token for this host, port and user, and it is not in the message
    (token,) = server.passwords
    assert token.startswith(f"127.0.0.1:{server.port}/?") and "Action=connect" in token and "DBUser=app" in token
    assert "X-Amz-Signature=" in token
    assert "X-Amz-Signature" not in str(caught.value)


def test_lookup_finds_rows_whatever_the_stored_spelling(db: ScratchDatabase) -> None:
    # Given stored addresses in mixed case, with spaces, decomposed Unicode, and an inactive reader
    table = subscribers_table(db)
    db.insert(
        table,
        ["email", "user_guid", "first_name", "active"],
        [
            ("Foo.Bar@Example.COM", "g1", "Ann", True),
            ("  ZOË@example.org ", "g2", "Zoë", True),
            (unicodedata.normalize("NFD", "Noël@exemple.fr"), "g3", "Noël", True),
            ("gone@example.com", "g4", "Gone", False),
            ("other@example.com", "g5", "Other", True),
            ("Ana@XN--CAF-DMA.fr", "g6", "Ana", True),  # a domain in IDNA
        ],
    )
    # A `%` in the query (PyMySQL formats parameters with %) and a trailing comment must survive wrapping
    query = (
        f"SELECT email, user_guid AS guid, first_name AS data_firstname FROM {table} "
        "WHERE active = TRUE AND email LIKE '%@%' -- active readers only"
    )
    source = open_source(sql_settings(db, query))
    wanted = {"foo.bar@example.com", "zoë@example.org", "noël@exemple.fr", "gone@example.com", "absent@example.com"}
    wanted |= {f"filler{n}@example.net" for n in range(1_200)} | {"ana@café.fr"}  # several look-up chunks

    # When the retry path looks these addresses up
    lookup = source.lookup(wanted)
    found = {canonical_key(row.email): row for row in lookup.rows if canonical_key(row.email) in wanted}

    # Then the active ones are found by their canonical key, the others are absent
    assert set(found) == {"foo.bar@example.com", "zoë@example.org", "noël@exemple.fr", "ana@café.fr"}
    assert found["zoë@example.org"].data == {"firstname": "Zoë"} and found["noël@exemple.fr"].guid == "g3"
    assert found["ana@café.fr"].guid == "g6"  # stored in IDNA, found by its key
    # And an absence is conclusive for the ASCII keys only (a database's own Unicode case and forms vary)
    assert lookup.inconclusive == {"zoë@example.org", "noël@exemple.fr", "ana@café.fr"}


def test_lookup_finds_spellings_with_any_white_space_and_case(db: ScratchDatabase) -> None:
    # Given addresses stored with a trailing tab, a no-break space, an ideographic space, upper case,
    # the KELVIN SIGN, a byte-order mark and a zero-width space (all of which canonical_key maps away)
    table = subscribers_table(db)
    stored = [
        "ann@example.com\t",
        "\u00a0bob@example.com",
        "cat@example.com\u3000",
        "DAN@EXAMPLE.COM",
        "\u212aim@example.com",
        "\ufeffeve@example.com",
        "fay\u200b@example.com",
    ]
    db.insert(table, ["email", "active"], [(email, True) for email in stored])
    source = open_source(sql_settings(db, f"SELECT email FROM {table}"))
    keys = {
        "ann@example.com",
        "bob@example.com",
        "cat@example.com",
        "dan@example.com",
        "kim@example.com",
        "eve@example.com",
        "fay@example.com",
    }

    # When they are looked up by key
    lookup = source.lookup(keys)

    # Then every one is found, and the look-up is conclusive for all of them: a queued unsubscribe
    # for a reader who came back under such a spelling is recognised as stale
    assert {canonical_key(row.email) for row in lookup.rows} == keys
    assert lookup.inconclusive == frozenset()


def test_connection_from_an_rds_shaped_secret(db: ScratchDatabase, aws: str, unique: str) -> None:
    # Given the connection stored in Secrets Manager the way RDS writes it
    engine = "postgres" if db.kind == "postgresql" else "mariadb"
    port = 5432 if db.kind == "postgresql" else 3306
    name = f"rds-source-{unique}"
    user = "postgres" if db.kind == "postgresql" else "root"
    secret = {"engine": engine, "host": "127.0.0.1", "port": port, "username": user, "password": "", "dbname": "test"}
    boto3.client("secretsmanager").create_secret(Name=name, SecretString=json.dumps(secret))
    env = {
        "SOURCE_KIND": db.kind,
        "SOURCE_SECRET_ID": name,
        "SOURCE_QUERY": "SELECT 'Reader@Example.com' AS email;",
        "SOURCE_TLS": "disable",
        "OWNPAGE_LIST_ID": "1",
        "OWNPAGE_CLIENT": "c",
        "OWNPAGE_API_KEY": "k",
    }
    # When the source is opened from the environment, as the Lambda does
    source = open_source(Settings.from_env(env).source)

    # Then it reads through the secret's connection
    assert {canonical_key(row.email) for row in source.scan()} == {"reader@example.com"}
    assert "127.0.0.1" in source.description


def test_connection_settings_are_checked_and_never_echo_the_password() -> None:
    # Given a DSN whose password holds URL-escaped characters
    settings = SourceSettings(kind="mysql", dsn="mysql://app:p%40ss%3Aw%2Frd@db.internal:3307/crm", query="SELECT 1")
    # When it is parsed / Then the parts are decoded and the password stays out of repr
    params = connection_params(settings)
    assert (params.host, params.port, params.user, params.database) == ("db.internal", 3307, "app", "crm")
    assert params.password == "p@ss:w/rd" and "p@ss" not in repr(params)
    # A DSN of the other engine, a secret of the other engine, a missing password: named, not echoed
    with pytest.raises(ConfigurationError, match="SOURCE_DSN") as caught:
        connection_params(SourceSettings(kind="postgresql", dsn="mysql://app:Secret1@h/db", query="SELECT 1"))
    assert "Secret1" not in str(caught.value)
    # ... and a DSN without a user says what it needs in words the redaction leaves readable
    with pytest.raises(ConfigurationError, match="must name a user and a host") as caught:
        connection_params(SourceSettings(kind="postgresql", dsn="postgresql://127.0.0.1:5432/test", query="SELECT 1"))
    assert redact(str(caught.value)) == str(caught.value)
    pg = SourceSettings(kind="postgresql", secret_id="s", query="SELECT 1")
    with pytest.raises(ConfigurationError, match="engine 'mysql'"):
        connection_params(pg, {"engine": "mysql", "host": "h", "username": "u", "password": "Secret1"})
    with pytest.raises(ConfigurationError, match='"password"'):
        connection_params(pg, {"engine": "postgres", "host": "h", "username": "u"})
    unreadable_ca = SourceSettings(
        kind="postgresql", dsn="postgresql://u@127.0.0.1/db", query="SELECT 1", tls_ca="/nonexistent/ca.pem"
    )
    with pytest.raises(ConfigurationError, match="SOURCE_TLS_CA"):
        list(open_source(unreadable_ca).scan())
