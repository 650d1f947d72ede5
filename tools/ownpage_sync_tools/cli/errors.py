"""The CLI's one error contract: every failure is one line on stderr, `ownpage-sync: error: ...`, naming
what was wrong and where, with the exit status of docs/cli.md. A traceback only with `--debug`.

Commands raise; `describe()` turns any exception into (exit status, line). Nothing here prints."""

from __future__ import annotations

from ownpage_sync.errors import ConfigurationError, OwnpageSyncError, RunInProgress
from ownpage_sync.redaction import redact

from ownpage_sync_tools.cli import exit_codes

PREFIX = "ownpage-sync: error: "

# AWS error codes that mean "a name, a setting or a permission is wrong": retrying will not help.
_SETUP_CODES = {
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "ResourceNotFoundException",
    "ValidationError",  # CloudFormation: "Stack with id X does not exist"
    "NoSuchBucket",
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "KMSAccessDeniedException",
    "KMS.AccessDeniedException",
}


class CliError(Exception):
    """A failure reported as one line with a documented exit status."""

    def __init__(self, message: str, code: int = exit_codes.FAILED):
        super().__init__(message)
        self.code = code


class UsageError(CliError):
    """A malformed command line (argparse's own errors included)."""

    def __init__(self, message: str):
        super().__init__(message, exit_codes.CONFIGURATION)


class OutcomeError(CliError):
    """The command ran and printed its report, but its outcome is not success (guard, not converged...)."""


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit status, the one line without the prefix) for any exception. Never quotes an address."""
    code, message = _classify(exc)
    return code, redact(message, limit=None)


def _classify(exc: BaseException) -> tuple[int, str]:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return exit_codes.INTERRUPTED, "interrupted"
    if isinstance(exc, ConfigurationError):
        return exit_codes.CONFIGURATION, str(exc)
    if isinstance(exc, RunInProgress):
        return exit_codes.RUN_IN_PROGRESS, str(exc)
    if isinstance(exc, OwnpageSyncError):
        return exit_codes.FAILED, str(exc)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ProfileNotFound):
        return exit_codes.CONFIGURATION, f"AWS credentials: {exc} (set AWS_PROFILE, or run `aws sso login`)"
    if isinstance(exc, NoRegionError):
        return (
            exit_codes.CONFIGURATION,
            "AWS region: none configured (set AWS_DEFAULT_REGION, e.g. AWS_DEFAULT_REGION=eu-west-1, or use a profile with a region)",
        )
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        aws_code = str(error.get("Code", "unknown"))
        detail = str(error.get("Message", "")).strip()
        status = exit_codes.CONFIGURATION if aws_code in _SETUP_CODES or aws_code == "403" else exit_codes.FAILED
        return status, f"AWS refused {exc.operation_name}: {aws_code}" + (f" ({detail})" if detail else "")
    if isinstance(exc, EndpointConnectionError):
        return exit_codes.FAILED, f"could not reach {exc.kwargs.get('endpoint_url', 'the AWS endpoint')}"
    if isinstance(exc, BotoCoreError):
        return exit_codes.FAILED, f"AWS call failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, PermissionError | FileNotFoundError | IsADirectoryError | NotADirectoryError):
        return exit_codes.CONFIGURATION, f"{exc.strerror}: {exc.filename}"
    return exit_codes.UNEXPECTED, f"unexpected {type(exc).__name__}: {exc} (run again with --debug for the traceback)"
