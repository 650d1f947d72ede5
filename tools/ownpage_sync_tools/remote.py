"""`plan --stack NAME --remote`: ask the deployed SyncFunction for a dry run, and fetch its exports.

The function reaches what the workstation may not (a database in a private subnet); its exports come
back through the stack's encrypted bucket and are written locally with mode 0600. `invoke_function`
is the seam tests replace: moto cannot invoke a Lambda function without Docker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ownpage_sync import exports
from ownpage_sync.errors import ConfigurationError

from ownpage_sync_tools.cli import exit_codes
from ownpage_sync_tools.cli.errors import CliError

# A dry run reads the whole source and the whole list: up to SyncFunction's 900 s timeout.
INVOKE_READ_TIMEOUT = 960


@dataclass(frozen=True)
class Invocation:
    """What Lambda's Invoke returned: the payload, and FunctionError when the handler raised."""

    payload: bytes
    function_error: str | None = None


def invoke_function(function_name: str, event: Mapping[str, Any]) -> Invocation:
    """A synchronous invocation (RequestResponse), never retried by the SDK: one dry run per command."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "lambda", config=Config(connect_timeout=10, read_timeout=INVOKE_READ_TIMEOUT, retries={"total_max_attempts": 1})
    )
    response = client.invoke(
        FunctionName=function_name, InvocationType="RequestResponse", Payload=json.dumps(event).encode()
    )
    return Invocation(response["Payload"].read(), response.get("FunctionError"))


def dry_run_event(plan_path: Path | None, suppressions_path: Path | None) -> dict[str, Any]:
    """The event SyncFunction reads: a dry run, with the exports in the formats the local files ask for."""
    event: dict[str, Any] = {"dry_run": True}
    if plan_path is not None:
        event["export_plan"] = exports.format_of(plan_path)
    if suppressions_path is not None:
        event["export_suppressions"] = exports.format_of(suppressions_path)
    return event


def remote_dry_run(function_name: str, event: Mapping[str, Any]) -> dict[str, Any]:
    """The function's run report; CliError (with the status the function's error maps to) if it failed."""
    invocation = invoke_function(function_name, event)
    try:
        payload = json.loads(invocation.payload or b"null")
    except ValueError:
        raise CliError(f"SyncFunction {function_name} answered something that is not JSON") from None
    if invocation.function_error:
        error = payload if isinstance(payload, Mapping) else {}
        kind, message = str(error.get("errorType", "error")), str(error.get("errorMessage", "no message"))
        code = exit_codes.CONFIGURATION if kind == ConfigurationError.__name__ else exit_codes.FAILED
        raise CliError(f"SyncFunction {function_name} failed: {kind}: {message}", code)
    if not isinstance(payload, dict) or "outcome" not in payload:
        raise CliError(f"SyncFunction {function_name} answered without a run report")
    return payload


def download_exports(report: Mapping[str, Any], targets: Mapping[str, Path], client: Any = None) -> list[str]:
    """Fetch each export the report names into its local file (0600), then delete it from the bucket.

    Returns one line per file for the terminal. Raises CliError when the function could not export."""
    written = report.get("exports") or {}
    if written.get("error"):
        raise CliError(f"the dry run ran, but its exports were not written: {written['error']}")
    bucket = written.get("bucket")
    if client is None:
        import boto3

        client = boto3.client("s3")
    lines = []
    for what, path in targets.items():
        key = written.get(what)
        if not bucket or not key:
            raise CliError(f"the function's report names no {what} export: is the stack up to date?")
        body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        exports.write_private(path, body)
        lines.append(f"{what} written to {path} (mode 0600; from s3://{bucket}/{key})")
        lines.append(_forget(client, bucket, key))
    return [line for line in lines if line]


def _forget(client: Any, bucket: str, key: str) -> str:
    """Delete the fetched copy now rather than in a day; a denied delete is said, not fatal."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else type(exc).__name__
        return f"  (could not delete s3://{bucket}/{key}: {code}; it expires within a day)"
    return ""
