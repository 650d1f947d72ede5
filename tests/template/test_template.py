"""Invariants of the stack, asserted on the template SAM would deploy (samtranslator output), rendered
for a DynamoDB and a SQL parameter set."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from ownpage_sync.exports import EXPORT_PREFIX
from ownpage_sync.observability import RUN_METRICS
from ownpage_sync.settings import Settings

from tests.metric_names import OBSERVABILITY, RETRY_HANDLER, literal_metric_names
from tests.template.stack import (
    DYNAMODB_PARAMETERS,
    OWNPAGE_SECRET,
    ROOT,
    SOURCE_SECRET,
    SQL_PARAMETERS,
    Rendered,
    copy_parameters,
    load_sam_template,
    render,
)

pytestmark = pytest.mark.template

FUNCTIONS = ("SyncFunction", "RetryFunction", "ChangeFunction")
ROLES = {
    "SyncFunction": "SyncFunctionRole",
    "RetryFunction": "RetryFunctionRole",
    "ChangeFunction": "ChangeFunctionRole",
}
QUEUES = ("RetryQueue", "DeadLetterQueue", "ScheduleDeadLetterQueue", "ChangeDeadLetterQueue")
SOURCE_READ = {"dynamodb:DescribeTable", "dynamodb:Scan", "dynamodb:Query", "dynamodb:GetItem", "dynamodb:BatchGetItem"}
STREAM_READ = {"dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator", "dynamodb:ListStreams"}
# The only statements allowed on Resource "*": actions that have no resource-level permissions.
STAR_RESOURCE_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def _emitted_metric_names() -> set[str]:
    """Every metric name the sync and retry functions emit: the run metrics table, and the literal names."""
    return set(RUN_METRICS.values()) | literal_metric_names(OBSERVABILITY) | literal_metric_names(RETRY_HANDLER)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def role_statements(stack: Rendered, role: str) -> list[dict[str, Any]]:
    return [
        statement
        for policy in stack.props(role).get("Policies", [])
        for statement in _as_list(policy["PolicyDocument"]["Statement"])
    ]


def statements_for(stack: Rendered, role: str, action: str) -> list[dict[str, Any]]:
    return [s for s in role_statements(stack, role) if action in _as_list(s["Action"])]


def resources_for(stack: Rendered, role: str, action: str) -> set[str]:
    return {r for s in statements_for(stack, role, action) for r in _as_list(s["Resource"])}


def documented_variables() -> set[str]:
    """Every environment variable named in docs/configuration.md's tables."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    return {
        name
        for line in text.splitlines()
        if line.startswith("| `")
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", line)
    }


# --- The retry path ------------------------------------------------------------------------------------


@pytest.mark.parametrize("retry_timeout", ["60", "120", "180", "300", "600", "900"])
def test_retry_queue_visibility_timeout_is_at_least_six_times_the_consumer_timeout(retry_timeout: str) -> None:
    # Given every RetryTimeout the template allows
    stack = render(copy_parameters(DYNAMODB_PARAMETERS, RetryTimeout=retry_timeout))
    # When the template is rendered
    visibility = int(stack.props("RetryQueue")["VisibilityTimeout"])
    timeout = int(stack.props("RetryFunction")["Timeout"])
    # Then a message is never handed to a second consumer while the first may still work on it
    assert timeout == int(retry_timeout)
    assert visibility >= 6 * timeout


def test_every_allowed_retry_timeout_has_a_visibility_timeout() -> None:
    # Given the template's RetryTimeout parameter and the mapping that derives the visibility timeout
    template = load_sam_template()
    allowed = {str(v) for v in template["Parameters"]["RetryTimeout"]["AllowedValues"]}
    # Then each allowed value has an entry, at least six times as long
    mapping = template["Mappings"]["RetryTimeouts"]
    assert allowed == set(mapping)
    assert all(entry["VisibilityTimeout"] >= 6 * int(timeout) for timeout, entry in mapping.items())


def test_retry_queue_redrives_to_the_dead_letter_queue_after_at_least_five_receives(any_stack: Rendered) -> None:
    # Given the rendered RetryQueue
    redrive = any_stack.props("RetryQueue")["RedrivePolicy"]
    # Then messages reach the DLQ only after several attempts
    assert redrive["deadLetterTargetArn"] == any_stack.arn("DeadLetterQueue")
    assert int(redrive["maxReceiveCount"]) >= 5


def test_retry_function_knows_the_retry_queue_s_receive_limit(any_stack: Rendered) -> None:
    # Given the RetryQueue's redrive policy and the RetryFunction's environment
    limit = int(any_stack.props("RetryQueue")["RedrivePolicy"]["maxReceiveCount"])
    variables = any_stack.props("RetryFunction")["Environment"]["Variables"]
    # Then the function is told the same number (a string, as environment values are), so its log says
    # "moves to the dead-letter queue" on the last receive rather than promising another delivery
    assert variables["RETRY_MAX_RECEIVE_COUNT"] == str(limit)


def test_the_source_read_ahead_fits_the_sync_function_s_tmp(any_stack: Rendered) -> None:
    # Given the SyncFunction's ephemeral storage and the spool it is told to use
    sync = any_stack.props("SyncFunction")
    tmp_mb = int(sync["EphemeralStorage"]["Size"])
    spool_mb = int(sync["Environment"]["Variables"]["SOURCE_SPOOL_MB"])
    # Then the spool fits /tmp with room to spare (the read ahead also keeps 64 MiB of it free)
    assert spool_mb + 64 < tmp_mb


def test_dead_letter_queue_outlives_the_retry_queue_and_accepts_redrive_from_it_only(any_stack: Rendered) -> None:
    retry, dead = any_stack.props("RetryQueue"), any_stack.props("DeadLetterQueue")
    # Then nothing expires between the queues, the DLQ keeps 14 days, and only RetryQueue may use it
    assert int(dead["MessageRetentionPeriod"]) > int(retry["MessageRetentionPeriod"])
    assert int(dead["MessageRetentionPeriod"]) == 14 * 24 * 3600
    assert dead["RedriveAllowPolicy"] == {
        "redrivePermission": "byQueue",
        "sourceQueueArns": [any_stack.arn("RetryQueue")],
    }


def test_queues_hold_one_mebibyte_messages(any_stack: Rendered) -> None:
    # SQS's limit is now 1 MiB; the retry queue's message splitter relies on it being set explicitly.
    for queue in ("RetryQueue", "DeadLetterQueue"):
        assert int(any_stack.props(queue)["MaximumMessageSize"]) == 1_048_576


def test_retry_function_consumes_the_retry_queue_with_partial_batch_responses(any_stack: Rendered) -> None:
    # Given the event source mapping SAM generated for RetryFunction
    mappings = any_stack.of_type("AWS::Lambda::EventSourceMapping")
    (mapping,) = [m for m in mappings.values() if m["FunctionName"] == any_stack.ref("RetryFunction")]
    # Then it reads RetryQueue, reports per-record failures, batches and caps its concurrency
    assert mapping["EventSourceArn"] == any_stack.arn("RetryQueue")
    assert mapping["FunctionName"] == any_stack.ref("RetryFunction")
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert 1 <= int(mapping["BatchSize"]) <= 10
    assert 0 < int(mapping["MaximumBatchingWindowInSeconds"]) <= 300
    assert 2 <= int(mapping["ScalingConfig"]["MaximumConcurrency"]) <= 10


def test_sync_function_queues_failures_and_retry_function_consumes_them(any_stack: Rendered) -> None:
    sync, retry = ROLES["SyncFunction"], ROLES["RetryFunction"]
    queue = any_stack.arn("RetryQueue")
    # Then only SyncFunction sends, only RetryFunction receives and deletes, both on RetryQueue alone
    assert resources_for(any_stack, sync, "sqs:SendMessage") == {queue}
    assert statements_for(any_stack, retry, "sqs:SendMessage") == []
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"):
        assert resources_for(any_stack, retry, action) == {queue}
        assert statements_for(any_stack, sync, action) == []


# --- Encryption ------------------------------------------------------------------------------------------


def test_every_queue_is_encrypted(any_stack: Rendered) -> None:
    queues = any_stack.of_type("AWS::SQS::Queue")
    assert set(queues) == set(QUEUES)
    for name, props in queues.items():
        assert props.get("SqsManagedSseEnabled") is True or props.get("KmsMasterKeyId"), name


def test_alarm_topic_is_encrypted_with_a_key_cloudwatch_may_use(any_stack: Rendered) -> None:
    # Given the topic and its key
    topic = any_stack.props("AlarmTopic")
    key_policy = any_stack.props("AlarmTopicKey")["KeyPolicy"]
    # Then the topic is encrypted with the stack's own key, and CloudWatch (which cannot use aws/sns)
    # may encrypt with it
    assert topic["KmsMasterKeyId"] == any_stack.ref("AlarmTopicKey")
    cloudwatch = [s for s in key_policy["Statement"] if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert len(cloudwatch) == 1
    assert set(cloudwatch[0]["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    assert any_stack.props("AlarmTopicKey")["EnableKeyRotation"] is True


def test_run_table_is_the_ledger_contract(any_stack: Rendered) -> None:
    # ownpage_sync.run_ledger is written against exactly this table.
    table = any_stack.props("RunTable")
    assert table["BillingMode"] == "PAY_PER_REQUEST"
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]} == {
        ("pk", "S"),
        ("sk", "S"),
    }
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert table["SSESpecification"] == {"SSEEnabled": True}


# --- Alarms and dashboard ----------------------------------------------------------------------------------


def test_every_alarm_notifies_the_topic(any_stack: Rendered) -> None:
    alarms = any_stack.of_type("AWS::CloudWatch::Alarm")
    topic = any_stack.ref("AlarmTopic")
    assert len(alarms) >= 9
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [topic], name
        assert alarm.get("OKActions", [topic]) == [topic], name
        assert alarm["AlarmDescription"], name


@pytest.mark.parametrize(
    ("alarm", "namespace", "metric", "watched"),
    [
        ("DeadLetterQueueAlarm", "AWS/SQS", "ApproximateNumberOfMessagesVisible", "DeadLetterQueue"),
        ("ScheduleDeadLetterQueueAlarm", "AWS/SQS", "ApproximateNumberOfMessagesVisible", "ScheduleDeadLetterQueue"),
        ("SyncErrorsAlarm", "AWS/Lambda", "Errors", "SyncFunction"),
        ("GuardTrippedAlarm", "OwnpageSync", "GuardTripped", None),
        ("RejectedAddressesAlarm", "OwnpageSync", "RejectedAddresses", None),
        ("RetryFailuresAlarm", "OwnpageSync", "RetryRecordsFailed", None),
        ("RetryFunctionErrorsAlarm", "AWS/Lambda", "Errors", "RetryFunction"),
        ("RetryQueueAgeAlarm", "AWS/SQS", "ApproximateAgeOfOldestMessage", "RetryQueue"),
    ],
)
def test_alarm_watches_the_right_metric(
    dynamodb_stack: Rendered, alarm: str, namespace: str, metric: str, watched: str | None
) -> None:
    props = dynamodb_stack.props(alarm)
    assert (props["Namespace"], props["MetricName"]) == (namespace, metric)
    dimensions = {d["Name"]: d["Value"] for d in props["Dimensions"]}
    if namespace == "OwnpageSync":
        assert dimensions == {"service": "ownpage-sync"}  # Powertools' default dimension
    elif namespace == "AWS/Lambda":
        assert dimensions == {"FunctionName": dynamodb_stack.ref(str(watched))}
    else:
        assert dimensions == {"QueueName": dynamodb_stack.physical_name(str(watched))}
    assert props["ComparisonOperator"] == "GreaterThanThreshold"
    assert props["TreatMissingData"] == "notBreaching"


def test_dead_mans_switch_fires_when_no_run_succeeded_for_the_configured_hours() -> None:
    # Given an enabled schedule and an 8-hour window
    stack = render(copy_parameters(DYNAMODB_PARAMETERS, ScheduleState="ENABLED", DeadManHours="8"))
    alarm = stack.props("DeadManSwitchAlarm")
    # Then missing data counts as "no success", and every hour of the window must lack one
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"]) == ("OwnpageSync", "RunSucceeded", "Sum")
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "ownpage-sync"}]
    assert alarm["TreatMissingData"] == "breaching"
    assert (alarm["ComparisonOperator"], float(alarm["Threshold"])) == ("LessThanThreshold", 1.0)
    assert int(alarm["Period"]) * int(alarm["EvaluationPeriods"]) == 8 * 3600
    assert int(alarm["DatapointsToAlarm"]) == int(alarm["EvaluationPeriods"])
    assert alarm["ActionsEnabled"] is True


def test_dead_mans_switch_stays_silent_while_the_schedule_is_disabled(dynamodb_stack: Rendered) -> None:
    # Given the first deploy's disabled schedule, no run is expected: the alarm must not page anyone
    assert dynamodb_stack.parameters["ScheduleState"] == "DISABLED"
    assert dynamodb_stack.props("DeadManSwitchAlarm")["ActionsEnabled"] is False


def test_dead_mans_window_stays_within_cloudwatch_limits() -> None:
    # CloudWatch allows at most 7 days of evaluation for hourly periods.
    parameter = load_sam_template()["Parameters"]["DeadManHours"]
    assert parameter["MinValue"] >= 1
    assert parameter["MaxValue"] * 3600 <= 7 * 24 * 3600


def test_metric_dimension_follows_the_service_name() -> None:
    # Given a second stack in the same account with its own service name
    stack = render(copy_parameters(DYNAMODB_PARAMETERS, ServiceName="ownpage-sync-staging"))
    # Then its functions emit and its alarms watch that dimension, not production's
    for function in FUNCTIONS:
        assert stack.props(function)["Environment"]["Variables"]["POWERTOOLS_SERVICE_NAME"] == "ownpage-sync-staging"
    assert stack.props("GuardTrippedAlarm")["Dimensions"] == [{"Name": "service", "Value": "ownpage-sync-staging"}]


def test_dashboard_shows_runs_queues_durations_and_errors(any_stack: Rendered) -> None:
    # Given the rendered dashboard body
    body = json.loads(any_stack.props("Dashboard")["DashboardBody"])
    metrics = [metric for widget in body["widgets"] for metric in widget["properties"].get("metrics", [])]
    custom = {m[1] for m in metrics if m[0] == "OwnpageSync"}
    # Then every metric a run or a retry emits, every queue's depth, each function's duration and errors are on it
    emitted = _emitted_metric_names()
    assert {"RunSucceeded", "GuardTripped", "PoisonMessages", "ReadAheadEnded"} <= emitted  # the scan found them
    assert emitted <= custom, emitted - custom
    queue_names = {m[3] for m in metrics if m[:2] == ["AWS/SQS", "ApproximateNumberOfMessagesVisible"]}
    assert queue_names == {any_stack.physical_name(q) for q in QUEUES}
    for function in FUNCTIONS:
        name = any_stack.ref(function)
        assert ["AWS/Lambda", "Duration", "FunctionName", name] in [m[:4] for m in metrics]
        assert ["AWS/Lambda", "Errors", "FunctionName", name] in [m[:4] for m in metrics]
    alarm_widget = next(w for w in body["widgets"] if w["type"] == "alarm")
    alarm_arns = {any_stack.get_att(a, "Arn") for a in any_stack.of_type("AWS::CloudWatch::Alarm")}
    assert set(alarm_widget["properties"]["alarms"]) == alarm_arns


# --- Least privilege -----------------------------------------------------------------------------------------


def test_no_policy_grants_a_wildcard_action(any_stack: Rendered) -> None:
    for role in any_stack.of_type("AWS::IAM::Role"):
        for statement in role_statements(any_stack, role):
            for action in _as_list(statement["Action"]):
                assert "*" not in action, (role, action)


def test_only_actions_without_resource_level_permissions_use_a_star_resource(any_stack: Rendered) -> None:
    for role in any_stack.of_type("AWS::IAM::Role"):
        for statement in role_statements(any_stack, role):
            if "*" in _as_list(statement["Resource"]):
                assert set(_as_list(statement["Action"])) <= STAR_RESOURCE_ACTIONS, (role, statement)


def test_the_kms_key_policy_delegates_administration_to_iam_only(any_stack: Rendered) -> None:
    # A key policy's Resource "*" means "this key". kms:* for the account root is AWS's default
    # delegation to IAM policies, which grant no kms action here; no other principal gets a wildcard.
    for statement in any_stack.props("AlarmTopicKey")["KeyPolicy"]["Statement"]:
        if any("*" in a.removesuffix("GenerateDataKey*") for a in _as_list(statement["Action"])):
            assert statement["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}


def test_functions_write_only_their_own_log_group_kept_for_a_while(any_stack: Rendered) -> None:
    for function, role in ROLES.items():
        log_group = any_stack.props(function)["LoggingConfig"]["LogGroup"]
        group_id = next(lid for lid in any_stack.of_type("AWS::Logs::LogGroup") if any_stack.ref(lid) == log_group)
        assert int(any_stack.props(group_id)["RetentionInDays"]) >= 7
        assert resources_for(any_stack, role, "logs:PutLogEvents") == {any_stack.arn(group_id)}
        assert resources_for(any_stack, role, "logs:CreateLogStream") == {any_stack.arn(group_id)}


def test_dynamodb_source_is_read_only_on_exactly_the_named_table_and_index(dynamodb_stack: Rendered) -> None:
    table = "arn:aws:dynamodb:eu-west-1:123456789012:table/subscribers"
    for role in ROLES.values():
        for action in SOURCE_READ:
            assert resources_for(dynamodb_stack, role, action) - {dynamodb_stack.arn("RunTable")} <= {
                table,
                f"{table}/index/by-email",
            }
        # The full runs scan; the fast lane only looks addresses up
        scans = resources_for(dynamodb_stack, role, "dynamodb:Scan")
        assert scans == (set() if role == "ChangeFunctionRole" else {table})
        assert table in resources_for(dynamodb_stack, role, "dynamodb:BatchGetItem")
        assert f"{table}/index/by-email" in resources_for(dynamodb_stack, role, "dynamodb:Query")
        # Never a write on the customer's table
        for write in ("dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"):
            assert not any(r.startswith(table) for r in resources_for(dynamodb_stack, role, write))


def test_without_an_email_index_no_index_is_readable() -> None:
    stack = render(copy_parameters(DYNAMODB_PARAMETERS, SourceEmailIndex=""))
    for role in ROLES.values():
        assert not any("/index/" in r for r in resources_for(stack, role, "dynamodb:Query"))


def test_secrets_readable_are_exactly_the_named_ones(dynamodb_stack: Rendered, sql_stack: Rendered) -> None:
    for role in ROLES.values():
        assert resources_for(dynamodb_stack, role, "secretsmanager:GetSecretValue") == {OWNPAGE_SECRET}
        assert resources_for(sql_stack, role, "secretsmanager:GetSecretValue") == {OWNPAGE_SECRET, SOURCE_SECRET}


def test_sql_source_reads_no_dynamodb_table_but_the_run_table(sql_stack: Rendered) -> None:
    for role in ROLES.values():
        for action in SOURCE_READ:
            assert resources_for(sql_stack, role, action) <= {sql_stack.arn("RunTable")}


def test_secrets_kms_key_is_usable_only_through_secrets_manager() -> None:
    key = "arn:aws:kms:eu-west-1:123456789012:key/11111111-2222-3333-4444-555555555555"
    stack = render(copy_parameters(SQL_PARAMETERS, SecretsKmsKeyArn=key))
    for role in ROLES.values():
        (statement,) = statements_for(stack, role, "kms:Decrypt")
        assert statement["Resource"] == key
        assert statement["Condition"] == {"StringEquals": {"kms:ViaService": "secretsmanager.eu-west-1.amazonaws.com"}}
    for role in ROLES.values():
        assert statements_for(render(SQL_PARAMETERS), role, "kms:Decrypt") == []


def test_iam_database_auth_grants_connect_to_exactly_the_named_db_user(sql_stack: Rendered) -> None:
    # Given a SQL source using IAM database authentication
    stack = render(
        copy_parameters(SQL_PARAMETERS, SourceIamAuth="true", SourceDbResourceId="db-ABCDEFGHIJKL", SourceDbUser="sync")
    )
    # Then both functions may connect as that one user of that one database, and only then
    for role in ROLES.values():
        assert resources_for(stack, role, "rds-db:connect") == {
            "arn:aws:rds-db:eu-west-1:123456789012:dbuser:db-ABCDEFGHIJKL/sync"
        }
        assert statements_for(sql_stack, role, "rds-db:connect") == []


def test_run_table_is_written_by_the_sync_function_only(any_stack: Rendered) -> None:
    table = any_stack.arn("RunTable")
    assert resources_for(any_stack, "SyncFunctionRole", "dynamodb:PutItem") == {table}
    # The retry function only reads it: a query (when did the last converged run start?) and the one
    # item holding the last complete read's spellings (the proof a queued subscribe is replayed on)
    on_table = [s for s in role_statements(any_stack, "RetryFunctionRole") if table in _as_list(s["Resource"])]
    assert [_as_list(s["Action"]) for s in on_table] == [["dynamodb:Query"], ["dynamodb:GetItem"]]
    assert on_table[1]["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["spellings"]}}
    variables = any_stack.props("RetryFunction")["Environment"]["Variables"]
    assert variables["RUN_TABLE"] == any_stack.ref("RunTable")
    assert variables["FAST_LANE_NEW_ADDRESSES"] == any_stack.ref("FastLaneNewAddresses")


# --- VPC only for SQL sources ----------------------------------------------------------------------------------


def test_dynamodb_source_runs_outside_any_vpc(dynamodb_stack: Rendered) -> None:
    for function, role in ROLES.items():
        assert "VpcConfig" not in dynamodb_stack.props(function)
        assert not dynamodb_stack.props(role).get("ManagedPolicyArns")


def test_sql_source_runs_both_functions_in_the_given_subnets(sql_stack: Rendered) -> None:
    for function, role in ROLES.items():
        assert sql_stack.props(function)["VpcConfig"] == {
            "SubnetIds": ["subnet-0123456789abcdef0", "subnet-0fedcba9876543210"],
            "SecurityGroupIds": ["sg-0123456789abcdef0"],
        }
        # Lambda manages the function's network interfaces with its role.
        assert sql_stack.props(role)["ManagedPolicyArns"] == [
            "arn:aws:iam::aws:policy/service-role/AWSLambdaENIManagementAccess"
        ]


def test_template_rules_require_the_settings_of_the_chosen_source() -> None:
    # Given the template's Rules, evaluated for incomplete parameter sets
    def failing(parameters: dict[str, str]) -> set[str]:
        stack = render(parameters)
        failed = set()
        for rule in stack.cfn["Rules"].values():
            if stack.resolve(rule.get("RuleCondition", True)):
                failed |= {a["AssertDescription"] for a in rule["Assertions"] if not stack.resolve(a["Assert"])}
        return failed

    # Then the complete sets pass, and a missing table, secret, query or subnet is refused by name
    assert failing(DYNAMODB_PARAMETERS) == set()
    assert failing(SQL_PARAMETERS) == set()
    assert failing(copy_parameters(DYNAMODB_PARAMETERS, SourceTableName="")) == {
        "SourceTableName is required when SourceKind is dynamodb"
    }
    missing = failing(copy_parameters(SQL_PARAMETERS, SourceSecretArn="", SubnetIds=""))
    assert missing == {
        "SourceSecretArn is required for a SQL source",
        "SubnetIds is required for a SQL source (RDS lives in a VPC)",
    }


# --- Functions, schedule, configuration ---------------------------------------------------------------------------


def test_functions_and_layer_target_python313_on_arm64_with_tracing(any_stack: Rendered) -> None:
    layer = any_stack.logical_id_starting("OwnpageSyncLayer", "AWS::Lambda::LayerVersion")
    assert any_stack.props(layer)["CompatibleRuntimes"] == ["python3.13"]
    assert any_stack.props(layer)["CompatibleArchitectures"] == ["arm64"]
    for function in FUNCTIONS:
        props = any_stack.props(function)
        assert (props["Runtime"], props["Architectures"]) == ("python3.13", ["arm64"])
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["Layers"] == [any_stack.ref(layer)]
        assert props["Handler"] == "app.handler"


def test_every_function_and_layer_is_built_by_its_makefile() -> None:
    template = load_sam_template()
    for logical_id in (*FUNCTIONS, "OwnpageSyncLayer"):
        assert template["Resources"][logical_id]["Metadata"]["BuildMethod"] == "makefile"
        code_dir = template["Resources"][logical_id]["Properties"].get("CodeUri") or template["Resources"][logical_id][
            "Properties"
        ].get("ContentUri")
        assert f"build-{logical_id}:" in (ROOT / code_dir / "Makefile").read_text()


def test_sync_function_runs_one_at_a_time_and_is_not_rerun_by_lambda(any_stack: Rendered) -> None:
    assert any_stack.props("SyncFunction")["ReservedConcurrentExecutions"] == 1  # ReserveSyncConcurrency's default
    configs = any_stack.of_type("AWS::Lambda::EventInvokeConfig").values()
    (config,) = [c for c in configs if c["FunctionName"] == any_stack.ref("SyncFunction")]
    assert int(config["MaximumRetryAttempts"]) == 0
    # The lease outlives any Lambda invocation (900 s at most).
    assert int(any_stack.props("SyncFunction")["Environment"]["Variables"]["RUN_LEASE_SECONDS"]) > 900


def test_reserved_concurrency_can_be_turned_off_for_a_new_account_s_low_quota() -> None:
    # Given an account whose concurrency quota refuses any reservation
    stack = render(copy_parameters(DYNAMODB_PARAMETERS, ReserveSyncConcurrency="false"))
    # Then the function reserves nothing, and the lease still keeps runs apart (RUN_TABLE is set)
    assert "ReservedConcurrentExecutions" not in stack.props("SyncFunction")
    assert stack.props("SyncFunction")["Environment"]["Variables"]["RUN_TABLE"] == stack.ref("RunTable")


def test_schedule_retries_delivery_then_parks_it_in_its_own_dead_letter_queue(any_stack: Rendered) -> None:
    schedule = any_stack.props("SyncSchedule")
    target = schedule["Target"]
    assert target["Arn"] == any_stack.arn("SyncFunction")
    assert int(target["RetryPolicy"]["MaximumRetryAttempts"]) >= 1
    assert int(target["RetryPolicy"]["MaximumEventAgeInSeconds"]) >= 60
    assert target["DeadLetterConfig"] == {"Arn": any_stack.arn("ScheduleDeadLetterQueue")}
    assert schedule["State"] == any_stack.parameters["ScheduleState"]
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    # The input is JSON the handler accepts; execution_id becomes the correlation id
    event = json.loads(re.sub(r"<aws\.scheduler\.[a-z-]+>", "x", target["Input"]))
    assert set(event) >= {"execution_id"}
    assert not {"dry_run", "force", "max_unsubscribe"} & set(event)


def test_schedule_role_may_only_invoke_the_sync_function_and_park_events(any_stack: Rendered) -> None:
    role = any_stack.props("SyncScheduleRole")
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "scheduler.amazonaws.com"}
    statements = role_statements(any_stack, "SyncScheduleRole")
    grants = {(a, r) for s in statements for a in _as_list(s["Action"]) for r in _as_list(s["Resource"])}
    assert grants == {
        ("lambda:InvokeFunction", any_stack.arn("SyncFunction")),
        ("sqs:SendMessage", any_stack.arn("ScheduleDeadLetterQueue")),
    }


def test_environment_names_are_those_of_the_configuration_contract(any_stack: Rendered) -> None:
    documented = documented_variables() | {"POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE"}
    for function in FUNCTIONS:
        variables = any_stack.props(function)["Environment"]["Variables"]
        assert set(variables) <= documented, set(variables) - documented
        assert {"OWNPAGE_LIST_ID", "OWNPAGE_SECRET_ID", "SOURCE_KIND", "RETRY_QUEUE_URL"} <= set(variables)
        assert variables["POWERTOOLS_METRICS_NAMESPACE"] == "OwnpageSync"
    assert "RUN_TABLE" in any_stack.props("SyncFunction")["Environment"]["Variables"]


def test_each_function_environment_is_a_valid_configuration(any_stack: Rendered) -> None:
    # Given each function's environment as CloudFormation would set it
    for function in FUNCTIONS:
        variables = any_stack.props(function)["Environment"]["Variables"]
        # When the library reads it, as the handler does at start
        settings = Settings.from_env({k: str(v) for k, v in variables.items()})
        # Then it is accepted and says what the parameters said
        assert settings.ownpage.list_id == 4242
        assert settings.ownpage.secret_id == OWNPAGE_SECRET
        assert settings.retry_queue_url == any_stack.ref("RetryQueue")
        assert settings.source.kind == any_stack.parameters["SourceKind"]


def test_dynamodb_configuration_carries_every_source_setting(dynamodb_stack: Rendered) -> None:
    settings = Settings.from_env(dynamodb_stack.props("SyncFunction")["Environment"]["Variables"])
    assert (settings.source.table, settings.source.email_index) == ("subscribers", "by-email")
    assert settings.source.subscribed_attribute == "newsletter"
    assert settings.source.guid_attribute == "customer_id"
    assert settings.source.consent_attribute == "consented_at"
    assert dict(settings.source.data_attributes) == {"firstname": "first_name", "city": "town"}
    assert settings.run_table == dynamodb_stack.ref("RunTable")


def test_sql_configuration_carries_the_secret_query_and_tls(sql_stack: Rendered) -> None:
    settings = Settings.from_env(sql_stack.props("RetryFunction")["Environment"]["Variables"])
    assert settings.source.secret_id == SOURCE_SECRET
    assert settings.source.query == SQL_PARAMETERS["SourceQuery"]
    assert settings.source.tls == "require"


def test_outputs_name_everything_an_operator_or_a_test_needs(any_stack: Rendered) -> None:
    expected = {
        "SyncFunctionName": any_stack.ref("SyncFunction"),
        "RetryFunctionName": any_stack.ref("RetryFunction"),
        "RetryQueueUrl": any_stack.ref("RetryQueue"),
        "DeadLetterQueueUrl": any_stack.ref("DeadLetterQueue"),
        "ScheduleDeadLetterQueueUrl": any_stack.ref("ScheduleDeadLetterQueue"),
        "RunTableName": any_stack.ref("RunTable"),
        "AlarmTopicArn": any_stack.ref("AlarmTopic"),
        "DashboardName": any_stack.ref("Dashboard"),
        "ScheduleName": any_stack.ref("SyncSchedule"),
        "SyncLogGroupName": any_stack.ref("SyncLogGroup"),
        "RetryLogGroupName": any_stack.ref("RetryLogGroup"),
        "ChangeFunctionName": any_stack.ref("ChangeFunction"),
        "ChangeLogGroupName": any_stack.ref("ChangeLogGroup"),
        "ChangeDeadLetterQueueUrl": any_stack.ref("ChangeDeadLetterQueue"),
        "ChangeEventBusName": "default",
        "ChangeEventSource": "ownpage-sync",
    }
    for name, value in expected.items():
        assert any_stack.outputs[name] == value, name
    for name in (
        "SyncFunctionArn",
        "RetryFunctionArn",
        "ChangeFunctionArn",
        "ChangeDeadLetterQueueArn",
        "ChangeEventRuleArn",
        "RetryQueueArn",
        "DeadLetterQueueArn",
        "RunTableArn",
        "LayerArn",
    ):
        assert name in any_stack.outputs


# --- The plan export bucket ----------------------------------------------------------------------------


def test_export_bucket_is_encrypted_private_and_forgets_within_a_day(any_stack: Rendered) -> None:
    # Given the bucket SyncFunction writes plan exports (email addresses) to
    bucket = any_stack.props("ExportBucket")
    # Then every object is encrypted at rest, nothing in it can be made public, ACLs are off
    (rule,) = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    assert bucket["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
    # And every export expires after one day (no prefix or filter: the rule covers the whole bucket),
    # with no versioning to keep an old copy behind
    (lifecycle,) = bucket["LifecycleConfiguration"]["Rules"]
    assert lifecycle["Status"] == "Enabled" and int(lifecycle["ExpirationInDays"]) == 1
    assert not {"Prefix", "Filter"} & set(lifecycle)
    assert "VersioningConfiguration" not in bucket


def test_export_bucket_refuses_anything_but_tls(any_stack: Rendered) -> None:
    # Given the bucket's policy
    (policy,) = any_stack.of_type("AWS::S3::BucketPolicy").values()
    assert policy["Bucket"] == any_stack.ref("ExportBucket")
    (statement,) = policy["PolicyDocument"]["Statement"]
    # Then every request without TLS is denied, to the bucket and to every object in it
    assert (statement["Effect"], statement["Principal"], statement["Action"]) == ("Deny", "*", "s3:*")
    arn = any_stack.arn("ExportBucket")
    assert set(statement["Resource"]) == {arn, f"{arn}/*"}
    assert statement["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_sync_function_may_only_put_exports_under_the_library_prefix(any_stack: Rendered) -> None:
    # Given every S3 permission of every role in the stack
    s3 = {
        (role, action, resource)
        for role in any_stack.of_type("AWS::IAM::Role")
        for statement in role_statements(any_stack, role)
        for action in _as_list(statement["Action"])
        if action.startswith("s3:")
        for resource in _as_list(statement["Resource"])
    }
    # Then the only one is SyncFunction's PutObject under the prefix ownpage_sync.exports writes to:
    # it can neither read nor list what it wrote, RetryFunction cannot touch the bucket at all
    assert s3 == {("SyncFunctionRole", "s3:PutObject", f"{any_stack.arn('ExportBucket')}/{EXPORT_PREFIX}*")}
    variables = any_stack.props("SyncFunction")["Environment"]["Variables"]
    assert variables["EXPORT_BUCKET"] == any_stack.ref("ExportBucket")
    assert "EXPORT_BUCKET" not in any_stack.props("RetryFunction")["Environment"]["Variables"]
    assert any_stack.outputs["ExportBucketName"] == any_stack.ref("ExportBucket")


def test_alarm_email_subscription_only_when_an_address_is_given(dynamodb_stack: Rendered, sql_stack: Rendered) -> None:
    subscription = dynamodb_stack.props("AlarmEmailSubscription")
    assert subscription == {
        "TopicArn": dynamodb_stack.ref("AlarmTopic"),
        "Protocol": "email",
        "Endpoint": "oncall@example.com",
    }
    assert "AlarmEmailSubscription" not in sql_stack.resources
