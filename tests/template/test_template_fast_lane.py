"""The fast lane's part of the stack (ChangeFunction, its stream mapping, its event rule, its queue and
alarms), asserted on the transformed template like the rest (test_template.py holds the invariants
every function shares: least privilege, encryption, log groups, configuration)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ownpage_sync import run_ledger
from ownpage_sync.fast_lane import DETAIL_TYPE, STREAM, ChangeReport, FastLanePolicy
from ownpage_sync.settings import Settings

from tests.template.stack import (
    DYNAMODB_PARAMETERS,
    SOURCE_STREAM,
    SQL_PARAMETERS,
    STREAM_PARAMETERS,
    Rendered,
    copy_parameters,
    render,
)
from tests.template.test_template import STREAM_READ, resources_for, role_statements, statements_for

pytestmark = pytest.mark.template

TABLE = "arn:aws:dynamodb:eu-west-1:123456789012:table/subscribers"


def _stream_mappings(stack: Rendered) -> list[dict[str, object]]:
    return [
        mapping
        for mapping in stack.of_type("AWS::Lambda::EventSourceMapping").values()
        if mapping["FunctionName"] == stack.ref("ChangeFunction")
    ]


# --- The stream consumer ---------------------------------------------------------------------------


def test_the_stream_consumer_reports_partial_failures_bisects_and_parks_what_keeps_failing(
    stream_stack: Rendered,
) -> None:
    # Given the source table's stream as a parameter
    (mapping,) = _stream_mappings(stream_stack)
    # Then ChangeFunction reads exactly that stream, from now on, and answers per record
    assert mapping["EventSourceArn"] == SOURCE_STREAM
    assert mapping["StartingPosition"] == "LATEST"
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    # ... a failing batch is split to find the record at fault, and is not retried for the stream's
    # whole 24 hours (it would hold its shard back): it is parked in the fast lane's own encrypted queue
    assert mapping["BisectBatchOnFunctionError"] is True
    assert 1 <= int(mapping["MaximumRetryAttempts"]) <= 10
    assert 60 <= int(mapping["MaximumRecordAgeInSeconds"]) <= 6 * 3600
    assert mapping["DestinationConfig"] == {"OnFailure": {"Destination": stream_stack.arn("ChangeDeadLetterQueue")}}
    assert stream_stack.props("ChangeDeadLetterQueue")["SqsManagedSseEnabled"] is True
    # ... and a full batch can hold more writes than the cap: a burst goes to the scheduled run
    assert int(mapping["BatchSize"]) > int(STREAM_PARAMETERS.get("FastLaneMaxWrites", "50"))
    assert int(mapping["MaximumBatchingWindowInSeconds"]) <= 5


def test_without_a_stream_there_is_no_consumer_and_no_stream_permission(
    dynamodb_stack: Rendered, sql_stack: Rendered
) -> None:
    for stack in (dynamodb_stack, sql_stack):
        assert _stream_mappings(stack) == []
        assert "ChangeStreamMappingId" not in stack.outputs
        for role in stack.of_type("AWS::IAM::Role"):
            for action in STREAM_READ:
                assert statements_for(stack, role, action) == [], (role, action)


def test_only_the_change_function_reads_the_stream_and_only_that_one(stream_stack: Rendered) -> None:
    # Given every role of the stack with a stream
    for role in stream_stack.of_type("AWS::IAM::Role"):
        granted = {action for statement in role_statements(stream_stack, role) for action in statement["Action"]}
        if role != "ChangeFunctionRole":
            assert not granted & STREAM_READ, role
    # Then ChangeFunction polls exactly the given stream, and may list the streams of the source table only
    for action in ("dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"):
        assert resources_for(stream_stack, "ChangeFunctionRole", action) == {SOURCE_STREAM}
    assert resources_for(stream_stack, "ChangeFunctionRole", "dynamodb:ListStreams") == {f"{TABLE}/stream/*"}


def test_a_stream_is_for_a_dynamodb_source_only() -> None:
    # Given a SQL source with a stream parameter, the Rules refuse it by name
    stack = render(copy_parameters(SQL_PARAMETERS, SourceStreamArn=SOURCE_STREAM))
    rule = stack.cfn["Rules"]["SourceStreamNeedsDynamoDbSource"]
    assert stack.resolve(rule["RuleCondition"]) is True
    assert [a["AssertDescription"] for a in rule["Assertions"] if not stack.resolve(a["Assert"])] == [
        "SourceStreamArn is for a DynamoDB source only (other sources send SubscriberChanged events)"
    ]
    # ... and even so, no consumer would be created for it
    assert _stream_mappings(stack) == []


# --- Change events -----------------------------------------------------------------------------------


def test_change_events_reach_the_change_function_through_one_rule(any_stack: Rendered) -> None:
    # Given the rule, its permission and its dead-letter queue's policy
    (rule_id,) = any_stack.of_type("AWS::Events::Rule")
    rule = any_stack.props(rule_id)
    rule_arn = any_stack.arn(rule_id)
    # Then it matches SubscriberChanged events of the configured source on the configured bus
    assert rule["EventBusName"] == "default" and rule["State"] == "ENABLED"
    assert rule["EventPattern"] == {"source": ["ownpage-sync"], "detail-type": [DETAIL_TYPE]}
    (target,) = rule["Targets"]
    assert target["Arn"] == any_stack.arn("ChangeFunction")
    # ... a delivery that keeps failing is parked, with the rule alone allowed to send there
    assert target["DeadLetterConfig"] == {"Arn": any_stack.arn("ChangeDeadLetterQueue")}
    assert int(target["RetryPolicy"]["MaximumEventAgeInSeconds"]) <= 24 * 3600
    (policy,) = any_stack.of_type("AWS::SQS::QueuePolicy").values()
    assert policy["Queues"] == [any_stack.ref("ChangeDeadLetterQueue")]
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert (statement["Principal"], statement["Action"]) == ({"Service": "events.amazonaws.com"}, "sqs:SendMessage")
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": rule_arn}}
    # ... and only this rule may invoke the function
    (permission,) = any_stack.of_type("AWS::Lambda::Permission").values()
    assert permission["FunctionName"] == any_stack.arn("ChangeFunction")
    assert (permission["Principal"], permission["SourceArn"]) == ("events.amazonaws.com", rule_arn)


def test_the_bus_source_and_state_follow_their_parameters() -> None:
    stack = render(
        copy_parameters(
            DYNAMODB_PARAMETERS,
            ChangeEventBusName="publisher-events",
            ChangeEventSource="com.example.accounts",
            ChangeEventRuleState="DISABLED",
        )
    )
    (rule,) = stack.of_type("AWS::Events::Rule").values()
    assert (rule["EventBusName"], rule["State"]) == ("publisher-events", "DISABLED")
    assert rule["EventPattern"]["source"] == ["com.example.accounts"]
    assert (stack.outputs["ChangeEventBusName"], stack.outputs["ChangeEventSource"]) == (
        "publisher-events",
        "com.example.accounts",
    )


def test_an_event_the_function_keeps_failing_on_is_parked_with_its_error(any_stack: Rendered) -> None:
    # Given the asynchronous invocation settings of ChangeFunction (EventBridge invokes asynchronously)
    configs = any_stack.of_type("AWS::Lambda::EventInvokeConfig").values()
    (config,) = [c for c in configs if c["FunctionName"] == any_stack.ref("ChangeFunction")]
    # Then it is tried a few times, then kept where on-call looks
    assert 0 < int(config["MaximumRetryAttempts"]) <= 2
    assert config["DestinationConfig"] == {"OnFailure": {"Destination": any_stack.arn("ChangeDeadLetterQueue")}}


# --- What the function may do ---------------------------------------------------------------------------


def test_change_function_queues_failed_writes_and_parks_failed_changes_nothing_else(any_stack: Rendered) -> None:
    role = "ChangeFunctionRole"
    # Then it sends to the RetryQueue (failed writes, for the retry function) and to its own dead-letter
    # queue (the destinations use the function's role); it consumes no queue, writes no table or bucket
    assert resources_for(any_stack, role, "sqs:SendMessage") == {
        any_stack.arn("RetryQueue"),
        any_stack.arn("ChangeDeadLetterQueue"),
    }
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "s3:PutObject", "dynamodb:PutItem", "dynamodb:Scan"):
        assert statements_for(any_stack, role, action) == [], action
    # And of the run table it reads one item, the last read's spellings, and updates the hourly counts
    # of its writes: not the lease, not the history
    on_table = [s for s in role_statements(any_stack, role) if any_stack.arn("RunTable") in _resources(s)]
    assert {
        (s["Action"], s["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"][0]) for s in on_table
    } == {
        ("dynamodb:GetItem", run_ledger.SPELLINGS_KEY["pk"]["S"]),
        ("dynamodb:UpdateItem", run_ledger.FAST_LANE_WRITES_PK),
    }
    assert all(len(s["Condition"]["ForAllValues:StringEquals"]["dynamodb:LeadingKeys"]) == 1 for s in on_table)
    assert any_stack.props("ChangeFunction")["Environment"]["Variables"]["RUN_TABLE"] == any_stack.ref("RunTable")


def _resources(statement: dict[str, Any]) -> list[Any]:
    resource = statement["Resource"]
    return resource if isinstance(resource, list) else [resource]


def test_the_caps_and_the_new_address_rule_come_from_their_parameters() -> None:
    # Given the defaults, and chosen values
    for changes, cap, new_addresses, per_hour in (
        ({}, 50, "proven", 1000),
        ({"FastLaneMaxWrites": "7", "FastLaneNewAddresses": "subscribe"}, 7, "subscribe", 1000),
        ({"FastLaneNewAddresses": "hold", "FastLaneMaxWritesPerHour": "250"}, 50, "hold", 250),
    ):
        variables = render(copy_parameters(DYNAMODB_PARAMETERS, **changes)).props("ChangeFunction")["Environment"][
            "Variables"
        ]
        # Then the function reads them as its policy
        policy = FastLanePolicy.from_settings(Settings.from_env({k: str(v) for k, v in variables.items()}))
        assert (policy.max_writes, policy.new_addresses, policy.max_writes_per_hour) == (cap, new_addresses, per_hour)


# --- Alarms and dashboard ----------------------------------------------------------------------------------


def _metric(stack: Rendered, alarm: str, metric_id: str) -> dict[str, object]:
    (query,) = [m for m in stack.props(alarm)["Metrics"] if m["Id"] == metric_id]
    return dict(query)


def test_latency_alarm_watches_the_slowest_change_against_its_threshold_parameter() -> None:
    # Given a chosen threshold
    stack = render(copy_parameters(STREAM_PARAMETERS, FastLaneLatencyAlarmSeconds="90"))
    alarm = stack.props("FastLaneLatencyAlarm")
    # Then the alarm takes the slowest of the stream records' and the events' ages (as the function
    # emits them), and of the records it has not got to yet (the mapping's iterator age, in ms)
    (shown,) = [m for m in alarm["Metrics"] if m.get("ReturnData")]
    assert shown["Expression"] == "MAX([stream, events, iterator])"
    service = [{"Name": "service", "Value": "ownpage-sync"}]
    for metric_id, name in (("stream", "FastLaneStreamRecordAge"), ("events", "FastLaneEventAge")):
        stat = _metric(stack, "FastLaneLatencyAlarm", metric_id)["MetricStat"]
        assert stat == {
            "Metric": {"Namespace": "OwnpageSync", "MetricName": name, "Dimensions": service},
            "Period": 60,
            "Stat": "Maximum",
        }  # type: ignore[comparison-overlap]
    assert _metric(stack, "FastLaneLatencyAlarm", "iterator")["Expression"] == "iteratorms / 1000"
    iterator = _metric(stack, "FastLaneLatencyAlarm", "iteratorms")["MetricStat"]
    assert iterator["Metric"] == {  # type: ignore[index]
        "Namespace": "AWS/Lambda",
        "MetricName": "IteratorAge",
        "Dimensions": [{"Name": "FunctionName", "Value": stack.ref("ChangeFunction")}],
    }
    assert float(alarm["Threshold"]) == 90.0 and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert int(alarm["DatapointsToAlarm"]) <= int(alarm["EvaluationPeriods"])
    assert alarm["TreatMissingData"] == "notBreaching"


def test_the_ages_the_function_emits_are_the_ones_alarmed_on() -> None:
    # Given the metric names a report emits for a stream batch and for an event
    emitted = {
        name
        for via in (STREAM, "event")
        for name, unit, _ in ChangeReport(via, "run", records=1, oldest_change_seconds=1.0).metrics()
        if unit == "Seconds"
    }
    alarm = render(DYNAMODB_PARAMETERS).props("FastLaneLatencyAlarm")
    watched = {m["MetricStat"]["Metric"]["MetricName"] for m in alarm["Metrics"] if "MetricStat" in m}
    assert emitted == {"FastLaneStreamRecordAge", "FastLaneEventAge"} <= watched


def test_a_capped_invocation_and_a_parked_change_page_on_call(any_stack: Rendered) -> None:
    capped = any_stack.props("FastLaneCappedAlarm")
    assert (capped["Namespace"], capped["MetricName"], capped["Statistic"]) == ("OwnpageSync", "FastLaneCapped", "Sum")
    assert capped["Dimensions"] == [{"Name": "service", "Value": "ownpage-sync"}]
    parked = any_stack.props("ChangeDeadLetterQueueAlarm")
    assert (parked["Namespace"], parked["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert parked["Dimensions"] == [{"Name": "QueueName", "Value": any_stack.physical_name("ChangeDeadLetterQueue")}]
    for alarm in (capped, parked):
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and float(alarm["Threshold"]) == 0
        assert alarm["AlarmActions"] == [any_stack.ref("AlarmTopic")]


def test_the_dashboard_shows_every_fast_lane_metric_and_the_iterator_age(any_stack: Rendered) -> None:
    # Given the dashboard and every metric a fast-lane report emits
    body = json.loads(any_stack.props("Dashboard")["DashboardBody"])
    shown = [metric for widget in body["widgets"] for metric in widget["properties"].get("metrics", [])]
    custom = {m[1] for m in shown if m[0] == "OwnpageSync"}
    emitted = {name for name, _, _ in ChangeReport(STREAM, "run", records=1, oldest_change_seconds=1.0).metrics()}
    emitted |= {name for name, _, _ in ChangeReport("event", "run", records=1, oldest_change_seconds=1.0).metrics()}
    # Then each is on it, with the stream mapping's iterator age and the alarm threshold
    assert emitted <= custom, emitted - custom
    assert ["AWS/Lambda", "IteratorAge", "FunctionName", any_stack.ref("ChangeFunction")] in [m[:4] for m in shown]
    delay = next(w for w in body["widgets"] if "delay" in w["properties"].get("title", ""))
    assert delay["properties"]["annotations"]["horizontal"][0]["value"] == 60
