"""What the docs say about the stack is what samconfig.toml and the template do: the schedule stays off
until the documented step, the sections samconfig.toml points at exist, the secret it expects is the
one docs/deploy.md creates, and every name the runbook tells on-call to look for exists."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.template.stack import DYNAMODB_PARAMETERS, Rendered, transform

pytestmark = pytest.mark.template

ROOT = Path(__file__).resolve().parents[2]
SAMCONFIG = (ROOT / "samconfig.toml").read_text(encoding="utf-8")
DEPLOY = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
RUNBOOK = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")


def environments() -> dict[str, Any]:
    config = tomllib.loads(SAMCONFIG)
    return {name: values for name, values in config.items() if name != "version"}


def overrides(environment: dict[str, Any]) -> dict[str, str]:
    pairs = environment["deploy"]["parameters"]["parameter_overrides"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_every_environment_deploys_with_the_schedule_off() -> None:
    # Given samconfig.toml's environments, production included
    found = {name: overrides(env).get("ScheduleState") for name, env in environments().items()}
    # Then a first deploy never starts the schedule: enabling it is docs/deploy.md's later step
    assert set(found) >= {"default", "production"}
    assert found == dict.fromkeys(found, "DISABLED")
    assert '"ScheduleState=DISABLED"' in DEPLOY and '"ScheduleState=ENABLED"' in DEPLOY


def test_the_sections_samconfig_points_at_exist() -> None:
    # Given every `docs/deploy.md, "Section"` / `docs/deploy.md "Section"` reference in samconfig.toml
    references = re.findall(r'docs/deploy\.md,? "([^"]+)"', SAMCONFIG)
    headings = set(re.findall(r"^#+ (.+)$", DEPLOY, re.M))
    # Then each names a heading of docs/deploy.md
    assert references
    assert set(references) <= headings, set(references) - headings


def test_the_secret_samconfig_expects_is_the_one_deploy_md_creates() -> None:
    # Given the secret names in samconfig.toml's ARNs (without Secrets Manager's random suffix)
    expected = {
        re.sub(r"-[A-Za-z0-9]{6}$", "", overrides(env)["OwnpageSecretArn"].split(":secret:", 1)[1])
        for env in environments().values()
    }
    # Then docs/deploy.md names each of them: the first as the command it shows, the others in words
    created = set(re.findall(r"create-secret --name (\S+)", DEPLOY))
    mentioned = set(re.findall(r"`(ownpage-sync/[a-z]+/ownpage)`", DEPLOY))
    assert expected & created, (expected, created)
    assert expected <= created | mentioned, expected - created - mentioned


def test_every_name_the_runbook_gives_exists_in_the_production_stack() -> None:
    # Given the template rendered as samconfig.toml's production stack
    name = environments()["production"]["global"]["parameters"]["stack_name"]
    stack = Rendered(transform(DYNAMODB_PARAMETERS), DYNAMODB_PARAMETERS, stack_name=name)
    physical = {
        stack.physical_name(logical_id)
        for logical_id, resource in stack.resources.items()
        if resource["Type"] in ("AWS::SQS::Queue", "AWS::CloudWatch::Alarm", "AWS::Logs::LogGroup")
    }
    # ... and every `ownpage-sync-...`, `<stack>-...` or log group name the runbook quotes
    quoted = {
        found.replace("<stack>", name)
        for found in re.findall(
            r'[`"]((?:<stack>|ownpage-sync)(?:-[A-Za-z0-9…-]+|/[a-z/-]+)|/aws/lambda/[^`"]+)[`"]', RUNBOOK
        )
    }
    quoted = {q.replace("/aws/lambda/<stack>", f"/aws/lambda/{name}") for q in quoted}
    # Then each is a queue, an alarm or a log group of that stack (the alarm e-mail's subject included),
    # or one of samconfig.toml's stack names
    stack_names = {env["global"]["parameters"]["stack_name"] for env in environments().values()}
    assert len(quoted) >= 10, quoted
    assert quoted <= physical | stack_names, sorted(quoted - physical - stack_names)
    assert f"{name}-dead-letter-queue" in quoted


def _library_text() -> str:
    return "\n".join(
        path.read_text(encoding="utf-8")
        for folder in ("layers/ownpage_sync/ownpage_sync", "functions")
        for path in sorted((ROOT / folder).rglob("*.py"))
    )


def test_every_log_line_the_runbook_quotes_is_one_the_code_writes() -> None:
    # Given every log message the runbook tells on-call to search for: `"..."` starting in lower case,
    # or a Logs Insights `message = "..."` filter
    quoted = set(re.findall(r'`"([a-zA-Z][^"`]*)"`', RUNBOOK)) | set(re.findall(r'message = "([^"]+)"', RUNBOOK))
    quoted = {" ".join(text.split()) for text in quoted if " " in text}  # a message (maybe wrapped), not a value
    code = _library_text()
    # Then the code logs each of them word for word (a prefix of a longer message counts)
    assert len(quoted) >= 8, quoted
    assert sorted(text for text in quoted if f'"{text}' not in code) == []


def test_the_runbook_example_message_is_one_the_retry_function_reads() -> None:
    from ownpage_sync.retry_queue import SCHEMA_VERSION, RetryMessage

    # Given the retry message the runbook shows, pretty-printed
    example = re.search(r"A real body, pretty-printed.*?```json\n(.*?)```", RUNBOOK, re.S)
    assert example is not None
    # When the retry function's reader parses it
    message = RetryMessage.from_json(example.group(1))
    # Then it is today's schema, every operation is valid, and its actions are all the kinds there are
    assert message.schema_version == SCHEMA_VERSION and message.invalid == ()
    assert {op.action.value for op in message.operations} == {"subscribe", "resubscribe", "unsubscribe", "update"}
    assert message.run_started_at is not None
