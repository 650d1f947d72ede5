"""A local stack with no cloud account: moto in server mode plus the Ownpage emulator, and the AWS
resources a deployed stack would have (secret, source table, queues, run table). Used by the demo,
the benchmark and the end-to-end tests."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3

REGION = "eu-west-1"
DEMO_CREDENTIALS = {"client": "demo", "api_key": "demo-key"}


@dataclass
class LocalStack:
    aws_endpoint: str
    ownpage_url: str
    emulator: Any  # EmulatorServer
    env: dict[str, str]
    stream_arn: str | None = None  # the source table's stream, when asked for

    def client(self, service: str) -> Any:
        return aws_client(self.aws_endpoint, service)


def aws_client(endpoint: str, service: str) -> Any:
    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id="local", aws_secret_access_key="local"
    )


def aws_env(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


EMAIL_INDEX = "by-email"


def create_source_table(dynamodb: Any, name: str, stream: bool = False) -> str | None:
    """A publisher's table keyed by user id, with an index on the address for the retry path's look-ups;
    with `stream`, a stream of new and old images for the fast lane (its ARN is returned)."""
    extra: dict[str, Any] = {}
    if stream:
        extra["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}
    table = dynamodb.create_table(
        TableName=name,
        AttributeDefinitions=[
            {"AttributeName": "user_id", "AttributeType": "S"},
            {"AttributeName": "email", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "user_id", "KeyType": "HASH"}],
        GlobalSecondaryIndexes=[
            {
                "IndexName": EMAIL_INDEX,
                "KeySchema": [{"AttributeName": "email", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
        **extra,
    )["TableDescription"]
    arn: str | None = table.get("LatestStreamArn")
    return arn


def create_run_table(dynamodb: Any, name: str) -> None:
    """The run table exactly as the stack creates it: pk/sk strings, TTL on expires_at."""
    dynamodb.create_table(
        TableName=name,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )


def create_queues(sqs: Any, prefix: str, max_receive_count: int = 5) -> tuple[str, str]:
    dlq_url = sqs.create_queue(QueueName=f"{prefix}-dlq", Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=f"{prefix}-retry",
        Attributes={
            "MaximumMessageSize": "1048576",
            "VisibilityTimeout": "1800",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receive_count)}),
        },
    )["QueueUrl"]
    return queue_url, dlq_url


def provision(endpoint: str, ownpage_url: str, prefix: str, stream: bool = False) -> dict[str, str]:
    """Create what a deployed stack would hold (secret, source table, queues, run table) on a moto
    server; return the functions' environment for them. `stream`: the source table has a stream."""

    def client(service: str) -> Any:
        return aws_client(endpoint, service)

    secret_arn = client("secretsmanager").create_secret(
        Name=f"{prefix}/ownpage", SecretString=json.dumps(DEMO_CREDENTIALS)
    )["ARN"]
    dynamodb = client("dynamodb")
    create_source_table(dynamodb, f"{prefix}-subscribers", stream=stream)
    create_run_table(dynamodb, f"{prefix}-runs")
    queue_url, dlq_url = create_queues(client("sqs"), prefix)
    return {
        **aws_env(endpoint),
        "OWNPAGE_API_URL": ownpage_url,
        "OWNPAGE_LIST_ID": "1",
        "OWNPAGE_SECRET_ID": secret_arn,
        "SOURCE_KIND": "dynamodb",
        "SOURCE_TABLE": f"{prefix}-subscribers",
        "SOURCE_EMAIL_ATTRIBUTE": "email",
        "SOURCE_EMAIL_INDEX": EMAIL_INDEX,
        "SOURCE_SUBSCRIBED_ATTRIBUTE": "newsletter",
        "SOURCE_GUID_ATTRIBUTE": "user_id",
        "SOURCE_CONSENT_ATTRIBUTE": "consented_at",
        "SOURCE_DATA_ATTRIBUTES": "firstname=first_name,city=city",
        "RETRY_QUEUE_URL": queue_url,
        "DEAD_LETTER_QUEUE_URL": dlq_url,
        "RUN_TABLE": f"{prefix}-runs",
    }


def seed_source(endpoint: str, table: str, items: Iterable[dict[str, Any]]) -> None:
    resource = boto3.resource(
        "dynamodb", endpoint_url=endpoint, region_name=REGION, aws_access_key_id="local", aws_secret_access_key="local"
    )
    with resource.Table(table).batch_writer() as writer:
        for item in items:
            writer.put_item(Item=item)


@contextmanager
def local_stack(prefix: str = "demo", emulator_faults: Any = None, stream: bool = False) -> Iterator[LocalStack]:
    """Start moto and the emulator on free loopback ports and create the stack's resources (with
    `stream`, the source table has a DynamoDB Stream for the fast lane)."""
    from moto.server import ThreadedMotoServer

    from ownpage_sync_tools.emulator import EmulatorServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    credentials = {DEMO_CREDENTIALS["client"]: DEMO_CREDENTIALS["api_key"]}
    emulator = EmulatorServer(port=0, faults=emulator_faults, credentials=credentials)
    emulator.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        env = provision(endpoint, emulator.url, prefix, stream=stream)
        table = aws_client(endpoint, "dynamodb").describe_table(TableName=env["SOURCE_TABLE"])["Table"]
        yield LocalStack(endpoint, emulator.url, emulator, env, table.get("LatestStreamArn"))
    finally:
        emulator.stop()
        moto.stop()
