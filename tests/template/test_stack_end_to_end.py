"""The handlers run against the resources the deployed stack created in moto: every name and URL they
use comes from the stack (its Outputs and the functions' rendered environment), none is hard-coded.
Only Ownpage's URL is swapped for the emulator's, and Lambda's context is a stand-in."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ownpage_sync.emails import canonical_key
from ownpage_sync_tools.lambda_local import LocalContext, load_function
from ownpage_sync_tools.localstack import DEMO_CREDENTIALS, EMAIL_INDEX, aws_client, create_source_table, seed_source
from ownpage_sync_tools.scenario import make_scenario
from ownpage_sync_tools.sqs_events import sqs_event

from tests.integration.helpers import assert_converged
from tests.template.stack import DYNAMODB_PARAMETERS, REGION, copy_parameters, deploy_stack, function_environment

pytestmark = [pytest.mark.template, pytest.mark.filterwarnings("ignore:Tried to parse:UserWarning")]


def test_sync_and_retry_handlers_work_on_the_deployed_stack(
    aws: str, emulator: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a secret and a source table, and the stack deployed for them with Ownpage failing every write
    scenario = make_scenario(600, drift=0.05)
    secret_arn = aws_client(aws, "secretsmanager").create_secret(
        Name=f"stack-{unique}/ownpage", SecretString=json.dumps(DEMO_CREDENTIALS)
    )["ARN"]
    table = f"stack-{unique}-subscribers"
    create_source_table(aws_client(aws, "dynamodb"), table)
    seed_source(aws, table, scenario.dynamodb_items())
    parameters = copy_parameters(
        DYNAMODB_PARAMETERS,
        OwnpageListId="1",
        OwnpageSecretArn=secret_arn,
        OwnpageApiUrl=emulator.url,
        SourceTableName=table,
        SourceGuidAttribute="user_id",
        SourceDataAttributes="firstname=first_name,city=city",
    )
    parameters["SourceEmailIndex"] = EMAIL_INDEX
    outputs = deploy_stack(aws, parameters, stack_name=f"stack-{unique}")
    # moto would deliver the RetryQueue to its own Lambda runner (Docker, absent here) and ignores partial
    # batch responses anyway: switch the stack's mapping off and call the real handler in-process instead.
    awslambda = aws_client(aws, "lambda")
    for mapping in awslambda.list_event_source_mappings(FunctionName=outputs["RetryFunctionName"])[
        "EventSourceMappings"
    ]:
        awslambda.delete_event_source_mapping(UUID=mapping["UUID"])
    emulator.state.seed(1, scenario.seed_rows())
    emulator.set_faults(fail_writes=True)

    def use_environment_of(function_name: str) -> None:
        for name, value in function_environment(aws, function_name).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("OWNPAGE_MAX_ATTEMPTS", "2")
        monkeypatch.setenv("OWNPAGE_BACKOFF_BASE", "0.01")

    # When the sync function runs with its deployed environment
    use_environment_of(outputs["SyncFunctionName"])
    report = load_function("sync").handler({}, LocalContext())
    # Then every planned operation waits on the stack's RetryQueue and the run is in the stack's run table
    assert report["outcome"] == "not_converged"
    assert report["apply"]["queued"] > 0
    history = aws_client(aws, "dynamodb").scan(TableName=outputs["RunTableName"])["Items"]
    assert any(item.get("run_id", {}).get("S") == report["run_id"] for item in history)

    # When Ownpage heals and the retry function drains the queue with its deployed environment
    emulator.set_faults(fail_writes=False)
    use_environment_of(outputs["RetryFunctionName"])
    sqs = aws_client(aws, "sqs")
    messages = sqs.receive_message(
        QueueUrl=outputs["RetryQueueUrl"], MaxNumberOfMessages=10, AttributeNames=["All"], MessageAttributeNames=["All"]
    )["Messages"]
    retry = load_function("retry")
    # Adapters and settings cached by an earlier test in this process point elsewhere (a stopped emulator)
    retry.settings.cache_clear()
    retry.target.cache_clear()
    response = retry.handler(sqs_event(messages, outputs["RetryQueueArn"], REGION), LocalContext())
    # Then no record failed; the subscribes and updates were re-checked and applied, while the
    # unsubscribes wait: a look-up by index is exact, so it cannot prove a reader did not come back
    # under another spelling (SOURCE_EMAIL_CANONICAL is not set) and the next full run decides them
    assert response == {"batchItemFailures": []}
    subscribed = {canonical_key(row["email"]) for row in emulator.state.subscribers(1) if row["subscribed"]}
    assert scenario.eligible_emails() <= subscribed
    assert len(subscribed - scenario.eligible_emails()) == scenario.expected["to_unsubscribe"]

    # When the next scheduled run goes
    use_environment_of(outputs["SyncFunctionName"])
    again = load_function("sync").handler({}, LocalContext())
    # Then it unsubscribes the rest and Ownpage equals the source
    assert again["outcome"] == "converged" and again["counts"]["to_unsubscribe"] == scenario.expected["to_unsubscribe"]
    assert again["counts"]["to_subscribe"] == again["counts"]["to_update"] == 0
    assert_converged(emulator.state.subscribers(1), scenario)
