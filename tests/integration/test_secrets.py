"""Secrets Manager failures name their cause (moto server over HTTP): the on-call engineer reading
`secret '...' ...` must know whether to restore the secret, grant access, or fix its content."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
from ownpage_sync.errors import ConfigurationError
from ownpage_sync.secrets import SecretUnavailable, ownpage_credentials, read_secret_json
from ownpage_sync.settings import Settings
from ownpage_sync_tools.localstack import aws_client

pytestmark = pytest.mark.integration


@pytest.fixture
def secrets(aws: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Powertools keeps one provider (and its boto3 client) per process: give this test its own, so the
    # credentials and endpoint are this test's, and put the previous one back afterwards.
    monkeypatch.delitem(DEFAULT_PROVIDERS, "secrets", raising=False)
    yield aws_client(aws, "secretsmanager")
    DEFAULT_PROVIDERS.pop("secrets", None)


def _settings(secret_id: str) -> Settings:
    return Settings.from_env({"OWNPAGE_LIST_ID": "1", "OWNPAGE_SECRET_ID": secret_id, "SOURCE_TABLE": "t"})


def test_a_missing_secret_is_named_not_found(secrets: Any, unique: str) -> None:
    # Given a secret id nothing exists under
    secret_id = f"missing-{unique}/ownpage"
    # When it is read
    with pytest.raises(ConfigurationError) as raised:
        read_secret_json(secret_id)
    # Then the error names the secret and says it was not found (not "NoneType")
    assert str(raised.value).startswith(f"secret {secret_id!r} not found")
    assert "NoneType" not in str(raised.value)


def test_a_secret_scheduled_for_deletion_says_so(secrets: Any, unique: str) -> None:
    # Given a secret someone deleted (with the default recovery window)
    arn = secrets.create_secret(Name=f"deleted-{unique}", SecretString="{}")["ARN"]
    secrets.delete_secret(SecretId=arn)
    # When it is read
    with pytest.raises(ConfigurationError) as raised:
        read_secret_json(arn)
    # Then the error says it cannot be used now, rather than a bare exception name
    assert "scheduled for deletion" in str(raised.value)


def test_a_secret_that_is_not_json_is_named_as_such_without_its_content(secrets: Any, unique: str) -> None:
    # Given a secret holding plain text, and one holding a JSON array
    text = secrets.create_secret(Name=f"text-{unique}", SecretString="client:key-s3cr3t")["ARN"]
    array = secrets.create_secret(Name=f"array-{unique}", SecretString='["key-s3cr3t"]')["ARN"]
    # When they are read
    with pytest.raises(ConfigurationError) as not_json:
        read_secret_json(text)
    with pytest.raises(ConfigurationError) as not_object:
        read_secret_json(array)
    # Then each error says what is wrong and never quotes the value
    assert "is not JSON" in str(not_json.value)
    assert "not a JSON object (it holds a JSON array)" in str(not_object.value)
    assert "s3cr3t" not in str(not_json.value) + str(not_object.value)


def test_a_missing_key_is_named(secrets: Any, unique: str) -> None:
    # Given an Ownpage secret without its api_key and with an empty client
    arn = secrets.create_secret(Name=f"nokey-{unique}", SecretString=json.dumps({"client": ""}))["ARN"]
    # When the Ownpage credentials are read
    with pytest.raises(ConfigurationError) as raised:
        ownpage_credentials(_settings(arn).ownpage)
    # Then both problems are named, with the variable that points at the secret
    message = str(raised.value)
    assert message.startswith("OWNPAGE_SECRET_ID:")
    assert '"client" is not a non-empty string' in message and '"api_key" is missing' in message


def test_access_denied_is_named(secrets: Any, aws: str, unique: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.core.authorization import enable_iam_authentication

    # Given a secret, and credentials of an IAM user with no permission at all
    arn = secrets.create_secret(Name=f"denied-{unique}", SecretString="{}")["ARN"]
    iam = aws_client(aws, "iam")
    iam.create_user(UserName=f"nobody-{unique}")
    key = iam.create_access_key(UserName=f"nobody-{unique}")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    # When the secret is read with IAM enforced (moto then evaluates the user's policies)
    with enable_iam_authentication(), pytest.raises(ConfigurationError) as raised:
        read_secret_json(arn)
    # Then the error says access was denied and which permission is missing
    assert "access denied" in str(raised.value)
    assert "secretsmanager:GetSecretValue" in str(raised.value)


def test_an_unreachable_secrets_manager_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an endpoint where nothing listens
    monkeypatch.delitem(DEFAULT_PROVIDERS, "secrets", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    try:
        # When a secret is read
        with pytest.raises(SecretUnavailable) as raised:
            read_secret_json("anything")
    finally:
        DEFAULT_PROVIDERS.pop("secrets", None)
    # Then it is a transient failure naming the service, not a configuration error
    assert not isinstance(raised.value, ConfigurationError)
    assert "Secrets Manager unreachable (EndpointConnectionError)" in str(raised.value)
