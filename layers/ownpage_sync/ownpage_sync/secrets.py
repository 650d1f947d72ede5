"""Credentials from AWS Secrets Manager, cached for the life of the Lambda container.

Nothing read here is ever logged or put into an exception message."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ownpage_sync.errors import ConfigurationError
from ownpage_sync.settings import OwnpageSettings

CACHE_SECONDS = 300


@dataclass(frozen=True)
class OwnpageCredentials:
    client: str = field(repr=False)
    api_key: str = field(repr=False)


def read_secret_json(secret_id: str) -> dict[str, Any]:
    """A JSON secret as a dict (cached). Errors name the secret, never its content."""
    from aws_lambda_powertools.utilities import parameters

    try:
        raw = parameters.get_secret(secret_id, max_age=CACHE_SECONDS)
    except parameters.exceptions.GetParameterError as exc:
        raise ConfigurationError(f"secret {secret_id!r} could not be read: {type(exc.__cause__).__name__}") from None
    try:
        value = json.loads(raw if isinstance(raw, str) else bytes(raw).decode())
    except (ValueError, UnicodeDecodeError):
        raise ConfigurationError(f"secret {secret_id!r} is not a JSON object") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"secret {secret_id!r} is not a JSON object")
    return value


def ownpage_credentials(settings: OwnpageSettings) -> OwnpageCredentials:
    """The Ownpage client id and API key: from the secret, or the local-only variables."""
    if settings.secret_id is None:
        if not settings.client or not settings.api_key:
            raise ConfigurationError("OWNPAGE_SECRET_ID: is required (or OWNPAGE_CLIENT and OWNPAGE_API_KEY locally)")
        return OwnpageCredentials(settings.client, settings.api_key)
    secret = read_secret_json(settings.secret_id)
    client, api_key = secret.get("client"), secret.get("api_key")
    if not isinstance(client, str) or not client or not isinstance(api_key, str) or not api_key:
        raise ConfigurationError(
            f'OWNPAGE_SECRET_ID: secret {settings.secret_id!r} must hold non-empty "client" and "api_key" strings'
        )
    return OwnpageCredentials(client, api_key)
