"""The transformed template deploys into moto's CloudFormation (over HTTP), and the resources it
creates are the ones the stack promises. Names and URLs come from the stack's Outputs.

moto's CloudFormation skips the types it does not implement - AWS::Scheduler::Schedule,
AWS::CloudWatch::Alarm, AWS::SNS::Subscription - and ignores some properties (architectures, layers,
tracing, TTL, PITR, logging config); those are asserted on the transformed template in test_template.py.
"""

from __future__ import annotations

import ast
import json
import uuid
from typing import Any

import boto3
import pytest
from ownpage_sync.settings import Settings

from tests.template.stack import (
    DYNAMODB_PARAMETERS,
    REGION,
    SQL_PARAMETERS,
    copy_parameters,
    deploy_stack,
    stack_resources,
)

pytestmark = [pytest.mark.template, pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")]


@pytest.fixture(scope="module")
def dynamodb_outputs(moto_server: str) -> dict[str, str]:
    return deploy_stack(moto_server, DYNAMODB_PARAMETERS)


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_stack_creates_the_queues_with_their_redrive_policy(moto_server: str, dynamodb_outputs: dict[str, str]) -> None:
    # Given the deployed stack's queues
    sqs = _client("sqs", moto_server)
    retry = sqs.get_queue_attributes(QueueUrl=dynamodb_outputs["RetryQueueUrl"], AttributeNames=["All"])["Attributes"]
    dead = sqs.get_queue_attributes(QueueUrl=dynamodb_outputs["DeadLetterQueueUrl"], AttributeNames=["All"])[
        "Attributes"
    ]
    # Then the retry queue redrives to the DLQ, both are encrypted, sized and kept as the template says
    assert json.loads(retry["RedrivePolicy"]) == {
        "deadLetterTargetArn": dynamodb_outputs["DeadLetterQueueArn"],
        "maxReceiveCount": 5,
    }
    assert int(retry["VisibilityTimeout"]) == 6 * 300
    assert int(dead["MessageRetentionPeriod"]) > int(retry["MessageRetentionPeriod"])
    for attributes in (retry, dead):
        assert attributes["SqsManagedSseEnabled"] == "true"
        assert attributes["MaximumMessageSize"] == "1048576"
    assert sqs.get_queue_attributes(
        QueueUrl=dynamodb_outputs["ScheduleDeadLetterQueueUrl"], AttributeNames=["QueueArn"]
    )


def test_stack_creates_the_run_table_and_the_encrypted_topic(
    moto_server: str, dynamodb_outputs: dict[str, str]
) -> None:
    table = _client("dynamodb", moto_server).describe_table(TableName=dynamodb_outputs["RunTableName"])["Table"]
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    topic = _client("sns", moto_server).get_topic_attributes(TopicArn=dynamodb_outputs["AlarmTopicArn"])["Attributes"]
    assert topic["KmsMasterKeyId"]


def test_stack_wires_the_functions_to_its_own_resources(moto_server: str, dynamodb_outputs: dict[str, str]) -> None:
    # Given the deployed functions
    lambda_ = _client("lambda", moto_server)
    sync = lambda_.get_function_configuration(FunctionName=dynamodb_outputs["SyncFunctionName"])
    retry = lambda_.get_function_configuration(FunctionName=dynamodb_outputs["RetryFunctionName"])
    # Then their configuration is valid and points at this stack's queue and table
    for function in (sync, retry):
        assert function["Runtime"] == "python3.13"
        settings = Settings.from_env(function["Environment"]["Variables"])
        assert settings.retry_queue_url == dynamodb_outputs["RetryQueueUrl"]
    assert Settings.from_env(sync["Environment"]["Variables"]).run_table == dynamodb_outputs["RunTableName"]
    assert (
        lambda_.get_function_concurrency(FunctionName=dynamodb_outputs["SyncFunctionName"])[
            "ReservedConcurrentExecutions"
        ]
        == 1
    )
    # And RetryFunction drains RetryQueue with partial batch responses
    (mapping,) = lambda_.list_event_source_mappings(FunctionName=dynamodb_outputs["RetryFunctionName"])[
        "EventSourceMappings"
    ]
    assert mapping["EventSourceArn"] == dynamodb_outputs["RetryQueueArn"]
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["ScalingConfig"] == {"MaximumConcurrency": 2}


def test_stack_creates_log_groups_with_retention_and_the_dashboard(
    moto_server: str, dynamodb_outputs: dict[str, str]
) -> None:
    logs = _client("logs", moto_server)
    for name in (dynamodb_outputs["SyncLogGroupName"], dynamodb_outputs["RetryLogGroupName"]):
        (group,) = logs.describe_log_groups(logGroupNamePrefix=name)["logGroups"]
        assert group["retentionInDays"] == 90
    dashboard = _client("cloudwatch", moto_server).get_dashboard(DashboardName=dynamodb_outputs["DashboardName"])
    assert "RunSucceeded" in dashboard["DashboardBody"]


def test_stack_roles_hold_their_policies(moto_server: str, dynamodb_outputs: dict[str, str]) -> None:
    resources = stack_resources(moto_server, dynamodb_outputs["StackName"])
    iam = _client("iam", moto_server)
    role = resources["SyncFunctionRole"]["physical_id"]
    assert set(iam.list_role_policies(RoleName=role)["PolicyNames"]) == {"logs-and-traces", "sync"}
    document = iam.get_role_policy(RoleName=role, PolicyName="sync")["PolicyDocument"]
    if isinstance(document, str):
        # moto stores a CloudFormation-created inline policy as the repr of a Python dict.
        document = ast.literal_eval(document)
    # (moto also keeps AWS::NoValue list items as None, where CloudFormation drops them.)
    sends = [s for s in document["Statement"] if s and s["Sid"] == "QueueFailedOperations"]
    assert sends[0]["Resource"] == dynamodb_outputs["RetryQueueArn"]


def test_sql_stack_deploys_with_its_vpc_settings(moto_server: str) -> None:
    # Given the SQL parameter set (VPC, source secret)
    outputs = deploy_stack(moto_server, SQL_PARAMETERS)
    # Then the functions exist and carry the SQL configuration
    sync = _client("lambda", moto_server).get_function_configuration(FunctionName=outputs["SyncFunctionName"])
    settings = Settings.from_env(sync["Environment"]["Variables"])
    assert (settings.source.kind, settings.source.secret_id) == ("postgresql", SQL_PARAMETERS["SourceSecretArn"])
    resources = stack_resources(moto_server, outputs["StackName"])
    assert resources["RetryQueue"]["physical_id"] == outputs["RetryQueueUrl"]


def test_stack_creates_the_private_export_bucket(moto_server: str, dynamodb_outputs: dict[str, str]) -> None:
    # Given the deployed stack's export bucket
    s3 = _client("s3", moto_server)
    bucket = dynamodb_outputs["ExportBucketName"]
    # Then it is encrypted (moto's CloudFormation keeps only a bucket's encryption and tags, and skips
    # AWS::S3::BucketPolicy: the public access block, the lifecycle and the TLS-only policy are asserted
    # on the template, test_template.py)
    (rule,) = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    # And the sync function is told its name
    sync = _client("lambda", moto_server).get_function_configuration(FunctionName=dynamodb_outputs["SyncFunctionName"])
    assert sync["Environment"]["Variables"]["EXPORT_BUCKET"] == bucket


def test_the_fast_lane_deploys_with_its_rule_and_its_own_dead_letter_queue(
    moto_server: str, dynamodb_outputs: dict[str, str]
) -> None:
    # Given the deployed ChangeFunction
    change = _client("lambda", moto_server).get_function_configuration(
        FunctionName=dynamodb_outputs["ChangeFunctionName"]
    )
    # Then its configuration is valid, with its cap, and it queues on this stack's RetryQueue
    settings = Settings.from_env(change["Environment"]["Variables"])
    assert settings.retry_queue_url == dynamodb_outputs["RetryQueueUrl"]
    assert settings.fast_lane_max_writes == 50
    # And the default bus has the rule delivering SubscriberChanged events to it
    events = _client("events", moto_server)
    rule_name = dynamodb_outputs["ChangeEventRuleArn"].rsplit("/", 1)[-1]
    rule = events.describe_rule(Name=rule_name, EventBusName=dynamodb_outputs["ChangeEventBusName"])
    assert json.loads(rule["EventPattern"]) == {"source": ["ownpage-sync"], "detail-type": ["SubscriberChanged"]}
    (target,) = events.list_targets_by_rule(Rule=rule_name)["Targets"]
    assert target["Arn"] == dynamodb_outputs["ChangeFunctionArn"]
    # And the queue it parks failed changes in is encrypted and keeps them 14 days
    parked = _client("sqs", moto_server).get_queue_attributes(
        QueueUrl=dynamodb_outputs["ChangeDeadLetterQueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    assert parked["SqsManagedSseEnabled"] == "true"
    assert int(parked["MessageRetentionPeriod"]) == 14 * 24 * 3600


def test_a_stack_consuming_the_source_stream_maps_it_to_the_change_function(moto_server: str) -> None:
    # Given a source table with a stream of new and old images
    dynamodb = _client("dynamodb", moto_server)
    table = f"subscribers-{uuid.uuid4().hex[:8]}"
    stream = dynamodb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "email", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "email", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]["LatestStreamArn"]
    # When the stack is deployed with it
    parameters = copy_parameters(DYNAMODB_PARAMETERS, SourceTableName=table, SourceStreamArn=stream)
    parameters.pop("SourceEmailIndex")
    outputs = deploy_stack(moto_server, parameters)
    # Then ChangeFunction consumes it with partial batch responses, bisection and its dead-letter queue
    lambda_ = _client("lambda", moto_server)
    (mapping,) = lambda_.list_event_source_mappings(FunctionName=outputs["ChangeFunctionName"])["EventSourceMappings"]
    # (moto would hand the records to its own Lambda runner, which needs Docker: stop it polling)
    lambda_.delete_event_source_mapping(UUID=mapping["UUID"])
    assert mapping["EventSourceArn"] == stream
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == outputs["ChangeDeadLetterQueueArn"]
    assert outputs["ChangeStreamMappingId"]
