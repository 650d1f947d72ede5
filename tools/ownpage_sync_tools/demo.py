"""`make demo`: the whole sync on this machine with no cloud account and no Docker.

moto (server mode) stands in for AWS, the project's emulator for Ownpage. A DynamoDB table of a few
thousand subscribers and an Ownpage list that drifted from it are seeded; the real SyncFunction handler
then plans (dry run), applies, and runs again to show nothing is left to do. With the DynamoDB
source, the fast lane follows: two subscribers change and one signs up, the real ChangeFunction handler
gets the table's stream records (read from moto's DynamoDB Streams: moto cannot run the event source
mapping itself) and writes what it can prove, and the next scheduled run makes the rest."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from ownpage_sync.emails import canonical_key

from ownpage_sync_tools.change_events import StreamReader
from ownpage_sync_tools.cli.render import render_report
from ownpage_sync_tools.lambda_local import LocalContext, load_function
from ownpage_sync_tools.localstack import LocalStack, local_stack, seed_source
from ownpage_sync_tools.scenario import Scenario, make_scenario
from ownpage_sync_tools.sql_seed import LOCAL, connect_local, create_and_seed, subscriber_query


def _invoke(handler: Any, event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = handler(event, LocalContext())
    return result


def _sql_source(stack: LocalStack, kind: str, scenario: Scenario) -> dict[str, str]:
    """Seed the local server and describe it the way a deployed stack would: an RDS-shaped secret."""
    table = "ownpage_sync_demo"
    connection = connect_local(kind)
    try:
        create_and_seed(connection, kind, table, scenario.dynamodb_items())
    finally:
        connection.close()
    secret = {**LOCAL[kind], "engine": "postgres" if kind == "postgresql" else "mysql"}
    secret_arn = stack.client("secretsmanager").create_secret(Name="demo/source", SecretString=json.dumps(secret))[
        "ARN"
    ]
    print(f"source: table {table} in the local {kind} (database test)")
    return {
        "SOURCE_KIND": kind,
        "SOURCE_SECRET_ID": secret_arn,
        "SOURCE_TLS": "disable",  # a local server without TLS; the default `require` is for RDS
        "SOURCE_QUERY": subscriber_query(table),
    }


NEWCOMER = {"user_id": "u9999999", "email": "nouvelle.lectrice@example.org", "first_name": "Inès", "city": "Brest"}


def _fast_lane(stack: LocalStack, scenario: Scenario) -> bool:
    """Step 4: a reader moves, another one opts out, a new one signs up; the ChangeFunction gets the
    stream's records."""
    assert stack.stream_arn is not None
    stream = StreamReader(stack.client("dynamodbstreams"), stack.stream_arn)
    stream.read()  # the seeding is history: a mapping starts at LATEST
    eligible = scenario.eligible_emails()
    movers = [item for item in scenario.dynamodb_items() if item["email"] in eligible and item["city"] != "Lyon"]
    moved, leaving = movers[0], movers[1]
    table = stack.env["SOURCE_TABLE"]
    dynamodb = stack.client("dynamodb")
    for item, change in ((moved, {"city": {"S": "Lyon"}}), (leaving, {"newsletter": {"BOOL": False}})):
        name, value = next(iter(change.items()))
        dynamodb.update_item(
            TableName=table,
            Key={"user_id": {"S": item["user_id"]}},
            UpdateExpression="SET #a = :v",
            ExpressionAttributeNames={"#a": name},
            ExpressionAttributeValues={":v": value},
        )
    item = {name: {"S": value} for name, value in NEWCOMER.items()} | {"newsletter": {"BOOL": True}}
    dynamodb.put_item(TableName=table, Item=item)
    print(
        f"in the table: item user_id={moved['user_id']} moves to Lyon, user_id={leaving['user_id']} opts out, "
        f"user_id={NEWCOMER['user_id']} signs up"
    )
    response = _invoke(load_function("change").handler, stream.event(stack.env["AWS_DEFAULT_REGION"]))
    rows = {canonical_key(row["email"]): row for row in stack.emulator.state.subscribers(1)}
    newcomer = rows.get(NEWCOMER["email"], {})
    print(
        f"fast lane: {len(response['batchItemFailures'])} records to deliver again. On Ownpage now: "
        f"{moved['user_id']} in {rows[moved['email']].get('data_city')} and {NEWCOMER['user_id']} "
        f"subscribed={newcomer.get('subscribed')} (written within the invocation: the last run's complete read "
        f"proves the address new); {leaving['user_id']} still subscribed={rows[leaving['email']]['subscribed']}: "
        "this demo's table does not vouch that it stores addresses canonical (SOURCE_EMAIL_CANONICAL), so an exact "
        "look-up cannot prove the reader left, and the unsubscribe waits for the scheduled run (docs/fast-lane.md)\n"
    )
    return (
        not response["batchItemFailures"]
        and rows[moved["email"]].get("data_city") == "Lyon"
        and newcomer.get("subscribed") is True
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=3000)
    parser.add_argument("--drift", type=float, default=0.03)
    parser.add_argument(
        "--source",
        choices=("dynamodb", "postgresql", "mysql"),
        default="dynamodb",
        help="where the subscribers live: moto's DynamoDB (default, no server needed) or the local "
        "PostgreSQL / MariaDB (127.0.0.1, database test), reached through an RDS-shaped secret",
    )
    args = parser.parse_args(argv)
    began = time.monotonic()
    # Keep the terminal readable: JSON logs at WARNING and above only, no EMF metric blobs.
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_TRACE_DISABLED", "true")

    scenario = make_scenario(args.subscribers, args.drift)
    with local_stack("demo", stream=args.source == "dynamodb") as stack:
        print(f"local stack: moto at {stack.aws_endpoint}, Ownpage emulator at {stack.ownpage_url}")
        if args.source == "dynamodb":
            seed_source(stack.aws_endpoint, stack.env["SOURCE_TABLE"], scenario.dynamodb_items())
        else:
            stack.env.update(_sql_source(stack, args.source, scenario))
        stack.emulator.state.seed(1, scenario.seed_rows())
        print(
            f"seeded {len(scenario.source_items)} source items and {len(scenario.ownpage_rows)} Ownpage rows "
            f"(expected plan: {json.dumps(scenario.expected)})\n"
        )
        os.environ.update(stack.env)
        handler = load_function("sync").handler

        print("== 1. dry run: the plan a publisher reviews before the first real run ==")
        print(render_report(_invoke(handler, {"dry_run": True})), "\n")
        print("== 2. the scheduled run ==")
        applied = _invoke(handler, {})
        print(render_report(applied), "\n")
        print("== 3. the next scheduled run: nothing left to do ==")
        again = _invoke(handler, {})
        print(render_report(again), "\n")
        fast = last = None
        if args.source == "dynamodb":
            print("== 4. the fast lane: the table's stream reaches Ownpage without waiting for the schedule ==")
            fast = _fast_lane(stack, scenario)
            print("== 5. the next scheduled run: only what the fast lane left to it ==")
            last = _invoke(handler, {})
            print(render_report(last), "\n")
        violations = stack.emulator.state.violations

    counts = again["counts"]
    left = counts["to_subscribe"] + counts["to_unsubscribe"] + counts["to_update"]
    ok = applied["outcome"] == "converged" and again["outcome"] == "converged" and left == 0 and not violations
    summary = f"second run planned {left} changes"
    if last is not None:
        after = last["counts"]
        rest = (after["to_subscribe"], after["to_unsubscribe"], after["to_update"])
        ok = ok and bool(fast) and last["outcome"] == "converged" and rest == (0, 1, 0)
        summary += (
            f", the fast lane wrote the move and the sign-up, the run after it the opt-out ({rest[1]} unsubscribe)"
        )
    print(
        f"demo {'OK' if ok else 'FAILED'}: {summary}, "
        f"{len(violations)} delete calls, {time.monotonic() - began:.1f}s in all"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
