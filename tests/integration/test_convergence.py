"""One run converges, from DynamoDB (moto server), PostgreSQL and MariaDB, and also while Ownpage
misbehaves; a second plan is empty. The smallest size that still pages and batches (several pages of
the list, several write batches); the same runs at 10k to 1M subscribers are `make bench`'s. The
source table is seeded once per module and only read by the tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from ownpage_sync_tools.cli import main as cli
from ownpage_sync_tools.lambda_local import LocalContext, load_function
from ownpage_sync_tools.localstack import aws_client, provision, seed_source
from ownpage_sync_tools.scenario import Scenario, make_scenario
from ownpage_sync_tools.sql_seed import connect_local, create_and_seed, drop, subscriber_query

from tests.integration.helpers import assert_converged
from tests.integration.sql_fixtures import ENGINES, MYSQL_DSN, PG_DSN

pytestmark = pytest.mark.integration

SIZE = 2_000
PAGING = {"OWNPAGE_PAGE_SIZE": "300", "OWNPAGE_BATCH_SIZE": "100"}  # several pages and batches at this size
FAULTS = {
    "error_rate": 0.3,
    "error_status": 503,
    "retry_after": 1,
    "drop_rate": 0.05,
    "token_lifetime_calls": 5,
    "seed": 11,
}


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return make_scenario(SIZE, drift=0.01)


@pytest.fixture(scope="module")
def source_table(moto_server: str, scenario: Scenario) -> str:
    table = "scale-subscribers"
    dynamodb = aws_client(moto_server, "dynamodb")
    if table not in dynamodb.list_tables()["TableNames"]:
        dynamodb.create_table(
            TableName=table,
            AttributeDefinitions=[{"AttributeName": "user_id", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "user_id", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        seed_source(moto_server, table, scenario.dynamodb_items())
    return table


def _environment(monkeypatch: pytest.MonkeyPatch, aws: str, emulator: Any, unique: str, **overrides: str) -> None:
    for name, value in {**provision(aws, emulator.url, f"scale-{unique}"), **PAGING, **overrides}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")


def _planned_changes(report: dict[str, Any]) -> int:
    counts = report["counts"]
    return int(counts["to_subscribe"] + counts["to_unsubscribe"] + counts["to_update"])


def test_dynamodb_source_converges_in_one_run(
    aws: str, emulator: Any, unique: str, scenario: Scenario, source_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given subscribers in DynamoDB and an Ownpage list 1% out of step
    _environment(monkeypatch, aws, emulator, unique, SOURCE_TABLE=source_table, SOURCE_SCAN_SEGMENTS="2")
    emulator.state.seed(1, scenario.seed_rows())
    handler = load_function("sync").handler
    # When the scheduled run goes, then a dry run
    report = handler({}, LocalContext())
    again = handler({"dry_run": True}, LocalContext())
    # Then Ownpage equals the source and there is nothing left to plan
    assert report["outcome"] == "converged"
    assert _planned_changes(report) == sum(
        scenario.expected[k] for k in ("to_subscribe", "to_unsubscribe", "to_update")
    )
    assert_converged(emulator.state.subscribers(1), scenario)
    assert _planned_changes(again) == 0
    assert emulator.state.violations == []


def test_dynamodb_source_converges_while_ownpage_misbehaves(
    aws: str, emulator: Any, unique: str, scenario: Scenario, source_table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the same drift, and Ownpage answering 30% of calls 503 + Retry-After: 1, dropping 5% of
    # connections and expiring its tokens every 5 calls
    _environment(monkeypatch, aws, emulator, unique, SOURCE_TABLE=source_table, OWNPAGE_MAX_ATTEMPTS="12")
    emulator.state.seed(1, scenario.seed_rows())
    emulator.set_faults(**FAULTS)
    # When the scheduled run goes
    report = load_function("sync").handler({}, LocalContext())
    # Then the faults were really met, the run converged and nothing was lost or queued
    statuses = [request.status for request in emulator.state.requests]
    assert statuses.count(503) >= 3 and 0 in statuses and statuses.count(401) >= 1
    assert report["outcome"] == "converged", report.get("apply")
    assert report["apply"]["queued"] == report["apply"]["failed"] == 0
    assert_converged(emulator.state.subscribers(1), scenario)


@pytest.fixture(params=ENGINES)
def sql_source(request: pytest.FixtureRequest, scenario: Scenario, unique: str) -> Iterator[tuple[str, str, str]]:
    """The scenario's source as a table in the real PostgreSQL or MariaDB; yields (kind, dsn, query)."""
    kind, table = request.param, f"scale_{unique}"
    connection = connect_local(kind)
    try:
        create_and_seed(connection, kind, table, scenario.dynamodb_items())
        yield kind, PG_DSN if kind == "postgresql" else MYSQL_DSN, subscriber_query(table)
    finally:
        drop(connection, kind, table)
        connection.close()


def test_sql_source_converges_in_one_cli_run(
    emulator: Any, sql_source: tuple[str, str, str], scenario: Scenario, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    # Given subscribers in PostgreSQL or MariaDB (the query's result is the truth) and a drifted list
    kind, dsn, query = sql_source
    for name, value in {
        "OWNPAGE_API_URL": emulator.url,
        "OWNPAGE_LIST_ID": "1",
        "OWNPAGE_CLIENT": "demo",
        "OWNPAGE_API_KEY": "demo-key",
        "SOURCE_KIND": kind,
        "SOURCE_DSN": dsn,
        "SOURCE_TLS": "disable",
        "SOURCE_QUERY": query,
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        **PAGING,
    }.items():
        monkeypatch.setenv(name, value)
    emulator.state.seed(1, scenario.seed_rows())
    # When `ownpage-sync run`, then `ownpage-sync plan`
    run_status = cli(["run", "--json", "--no-progress"])
    run_report = json.loads(capsys.readouterr().out)
    plan_status = cli(["plan", "--json", "--no-progress"])
    plan_report = json.loads(capsys.readouterr().out)
    # Then the run converged (exit 0), Ownpage equals the query's result, and the second plan is empty
    assert (run_status, run_report["outcome"]) == (0, "converged")
    assert_converged(emulator.state.subscribers(1), scenario)
    assert (plan_status, _planned_changes(plan_report)) == (0, 0)
