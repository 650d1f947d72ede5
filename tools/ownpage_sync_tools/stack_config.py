"""A deployed stack's configuration, read with the operator's AWS credentials: its CloudFormation
outputs and its functions' environment (`lambda:GetFunctionConfiguration`).

`ownpage-sync --stack NAME ...` runs a command with exactly these settings: the deployed function's
environment overlaid on the process's (which keeps the AWS credentials, region and LOG_LEVEL), and
every configuration variable the function does not set removed, so nothing local leaks in. Secrets
stay in Secrets Manager, referenced by the same ids. Never shipped in a Lambda artifact.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ownpage_sync.errors import ConfigurationError

# Stack outputs an operator command needs, as the variable each one becomes.
OUTPUT_VARIABLES = {
    "RetryQueueUrl": "RETRY_QUEUE_URL",
    "DeadLetterQueueUrl": "DEAD_LETTER_QUEUE_URL",
    "RunTableName": "RUN_TABLE",
    "ExportBucketName": "EXPORT_BUCKET",
    "ChangeEventBusName": "CHANGE_EVENT_BUS",
    "ChangeEventSource": "CHANGE_EVENT_SOURCE",
}
# The output naming each function whose environment a command can run with.
FUNCTION_OUTPUTS = {"sync": "SyncFunctionName", "retry": "RetryFunctionName", "change": "ChangeFunctionName"}
# The configuration contract (docs/configuration.md): a local value of one of these must not leak
# into a command that is meant to run with the deployed settings.
CONTRACT = re.compile(
    r"^(OWNPAGE_|SOURCE_|RETRY_|DEAD_LETTER_|RUN_|MAX_|DEADLINE_|EXPORT_|CHANGE_|FAST_LANE_|UNSUBSCRIBE_CAUSE$|SUPPRESS_CAUSES$)"
)
# A stack in one of these states has no usable resources (or is going away).
UNUSABLE = ("CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED", "DELETE_IN_PROGRESS", "DELETE_FAILED")


@dataclass(frozen=True)
class DeployedStack:
    """One stack's outputs and the environment of the functions read from it."""

    name: str
    region: str
    outputs: Mapping[str, str]
    functions: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # "sync" / "retry" / "change" -> env

    def output(self, key: str) -> str:
        value = self.outputs.get(key)
        if not value:
            raise ConfigurationError(
                f"stack {self.name!r} has no output {key}: is it an ownpage-sync stack, deployed from this version?"
            )
        return value

    def environment(self, function: str | None) -> dict[str, str]:
        """The variables a command runs with: the stack's names, then the function's own environment."""
        env = {variable: self.outputs[key] for key, variable in OUTPUT_VARIABLES.items() if self.outputs.get(key)}
        if function is not None:
            env.update(self.functions[function])
        return env


def _clients(region: str | None) -> tuple[Any, Any, str]:
    import boto3
    from botocore.config import Config

    session = boto3.session.Session(region_name=region) if region else boto3.session.Session()
    config = Config(connect_timeout=5, read_timeout=20, retries={"mode": "standard"})
    cloudformation = session.client("cloudformation", config=config)
    return cloudformation, session.client("lambda", config=config), cloudformation.meta.region_name


def read_stack(name: str, functions: Iterable[str] = (), region: str | None = None) -> DeployedStack:
    """Outputs of stack `name` and the environment of `functions` ("sync", "retry", "change").

    Raises ConfigurationError for a stack that does not exist or is unusable, or a function the stack
    does not have; botocore's errors (denied, unreachable) go up to the CLI's error contract."""
    from botocore.exceptions import ClientError

    cloudformation, lambda_, region_name = _clients(region)
    try:
        (stack,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError" and "does not exist" in str(error.get("Message", "")):
            raise ConfigurationError(
                f"stack {name!r} not found in region {region_name} (check the name, AWS_PROFILE and AWS_DEFAULT_REGION)"
            ) from None
        raise
    status = str(stack.get("StackStatus", ""))
    if status in UNUSABLE:
        raise ConfigurationError(f"stack {name!r} is {status}: it has no usable resources")
    outputs = {item["OutputKey"]: item["OutputValue"] for item in stack.get("Outputs", [])}
    deployed = DeployedStack(name, region_name, outputs)
    environments: dict[str, Mapping[str, str]] = {}
    for function in functions:
        function_name = deployed.output(FUNCTION_OUTPUTS[function])
        configuration = lambda_.get_function_configuration(FunctionName=function_name)
        variables = configuration.get("Environment", {}).get("Variables", {})
        environments[function] = {key: str(value) for key, value in variables.items()}
    return DeployedStack(name, region_name, outputs, environments)


@contextmanager
def deployed_environment(variables: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `variables` overlaid and every other configuration variable removed; restored after."""
    saved = dict(os.environ)
    for name in [name for name in os.environ if CONTRACT.match(name) and name not in variables]:
        del os.environ[name]
    os.environ.update({name: str(value) for name, value in variables.items()})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
