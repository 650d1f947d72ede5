"""Credentials from AWS Secrets Manager, cached for the life of the Lambda container.

Nothing read here is ever logged or put into an exception message. A secret that cannot be used is
reported with its cause (not found, access denied, not decryptable, not JSON, a key missing), so the
person reading the error knows what to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ownpage_sync.errors import ConfigurationError, OwnpageSyncError
from ownpage_sync.settings import OwnpageSettings

CACHE_SECONDS = 300

# Secrets Manager's error codes, as an operator would put them. Each names what to fix.
_CAUSES = {
    "ResourceNotFoundException": "not found (deleted, renamed, or in another account or region)",
    "AccessDeniedException": "access denied: these credentials lack secretsmanager:GetSecretValue on it",
    "DecryptionFailure": "could not be decrypted: kms:Decrypt on its KMS key is denied, or the key is disabled",
    "InvalidRequestException": "not usable now (scheduled for deletion, or another state that refuses reads)",
    "InvalidParameterException": "refused: the secret id is malformed",
}
# Codes that mean "try again later" rather than "fix a setting".
_TRANSIENT = ("InternalServiceError", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable")


class SecretUnavailable(OwnpageSyncError):
    """Transient: Secrets Manager could not be reached or was throttled; nothing is wrong with the setting."""

    transient = True


@dataclass(frozen=True)
class OwnpageCredentials:
    client: str = field(repr=False)
    api_key: str = field(repr=False)


def _why(secret_id: str, error: BaseException | None) -> OwnpageSyncError:
    """The project's exception for a failed read, from the botocore error behind it.

    Powertools wraps every failure in GetParameterError *without* a cause (`raise ... (str(exc))`
    inside its `except`), so the original error is the implicit context, not `__cause__`.
    """
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

    name = f"secret {secret_id!r}"
    if isinstance(error, ClientError):
        code = _code(error.response)
        if code in _TRANSIENT or code.startswith("5"):
            return SecretUnavailable(f"{name} could not be read: Secrets Manager answered {code}; try again")
        cause = _CAUSES.get(code, f"refused by Secrets Manager ({code})")
        return ConfigurationError(f"{name} {cause}" if code in _CAUSES else f"{name} could not be read: {cause}")
    if isinstance(error, NoCredentialsError | NoRegionError):
        return ConfigurationError(f"{name} could not be read: no AWS {_missing(error)} configured")
    if isinstance(error, BotoCoreError):
        return SecretUnavailable(f"{name} could not be read: Secrets Manager unreachable ({type(error).__name__})")
    described = type(error).__name__ if error is not None else "no cause given"
    return ConfigurationError(f"{name} could not be read ({described})")


def _code(response: Any) -> str:
    """The error code; a denial whose body botocore could not parse (IAM's XML error document, from a
    proxy or an emulator) arrives as a bare HTTP status, and a 403 there is a denial all the same."""
    code = str(response.get("Error", {}).get("Code", "unknown"))
    if code in ("403", "AccessDenied"):
        return "AccessDeniedException"
    return code


def _missing(error: BaseException) -> str:
    from botocore.exceptions import NoRegionError

    return "region" if isinstance(error, NoRegionError) else "credentials"


def read_secret_json(secret_id: str) -> dict[str, Any]:
    """A JSON object secret as a dict (cached). Errors name the secret and the cause, never its content."""
    from aws_lambda_powertools.utilities import parameters

    try:
        raw = parameters.get_secret(secret_id, max_age=CACHE_SECONDS)
    except parameters.exceptions.GetParameterError as exc:
        raise _why(secret_id, exc.__cause__ or exc.__context__) from None
    try:
        value = json.loads(raw if isinstance(raw, str) else bytes(raw).decode())
    except (ValueError, UnicodeDecodeError):
        raise ConfigurationError(f"secret {secret_id!r} is not JSON (expected a JSON object)") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"secret {secret_id!r} is not a JSON object (it holds a JSON {_kind(value)})")
    return value


def _kind(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")


def ownpage_credentials(settings: OwnpageSettings) -> OwnpageCredentials:
    """The Ownpage client id and API key: from the secret, or the local-only variables."""
    if settings.secret_id is None:
        if not settings.client or not settings.api_key:
            raise ConfigurationError("OWNPAGE_SECRET_ID: is required (or OWNPAGE_CLIENT and OWNPAGE_API_KEY locally)")
        return OwnpageCredentials(settings.client, settings.api_key)
    secret = read_secret_json(settings.secret_id)
    problems = [
        f'"{key}" is {"missing" if key not in secret else "not a non-empty string"}'
        for key in ("client", "api_key")
        if not isinstance(secret.get(key), str) or not secret[key]
    ]
    if problems:
        raise ConfigurationError(
            f"OWNPAGE_SECRET_ID: secret {settings.secret_id!r} must hold "
            f'{{"client": "...", "api_key": "..."}}: {" and ".join(problems)}'
        )
    return OwnpageCredentials(secret["client"], secret["api_key"])
