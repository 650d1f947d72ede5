"""Settings.from_env: every variable's parsing, every failure naming its variable, no secret in repr."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ownpage_sync.errors import ConfigurationError
from ownpage_sync.settings import Settings

pytestmark = pytest.mark.unit

SETTINGS_SOURCE = Path(__file__).resolve().parents[2] / "layers" / "ownpage_sync" / "ownpage_sync" / "settings.py"

DYNAMODB = {"OWNPAGE_SECRET_ID": "ownpage/prod", "OWNPAGE_LIST_ID": "42", "SOURCE_TABLE": "subscribers"}
POSTGRESQL = {
    "OWNPAGE_SECRET_ID": "ownpage/prod",
    "OWNPAGE_LIST_ID": "42",
    "SOURCE_KIND": "postgresql",
    "SOURCE_SECRET_ID": "rds/subscribers",
    "SOURCE_QUERY": "SELECT email FROM subscribers WHERE newsletter",
}


def problems(env: dict[str, str]) -> str:
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env)
    return str(caught.value)


def test_a_minimal_dynamodb_configuration_gets_the_documented_defaults() -> None:
    # Given only the required variables
    # When the settings are read
    settings = Settings.from_env(DYNAMODB)

    # Then every default is the one docs/configuration.md documents
    ownpage, source = settings.ownpage, settings.source
    assert (ownpage.api_url, ownpage.list_id, ownpage.secret_id) == (
        "https://services.ownpage.fr/v1",
        42,
        "ownpage/prod",
    )
    assert (ownpage.batch_size, ownpage.page_size, ownpage.max_attempts) == (5_000, 10_000, 6)
    assert (ownpage.connect_timeout, ownpage.read_timeout, ownpage.backoff_base, ownpage.backoff_cap) == (
        5.0,
        60.0,
        0.5,
        20.0,
    )
    assert (source.kind, source.table, source.email_attribute, source.scan_segments) == (
        "dynamodb",
        "subscribers",
        "email",
        4,
    )
    assert (ownpage.read_concurrency, ownpage.read_passes, source.email_canonical) == (8, 3, False)
    assert source.subscribed_attribute is None and source.guid_attribute is None and source.consent_attribute is None
    assert source.data_attributes == {} and source.email_index is None
    assert settings.policy.unsubscribe_cause == "PUBLISHER"
    assert settings.policy.suppressing_causes == {"READER", "HARD_BOUNCE", "MULTIPLE_BOUNCES"}
    assert (settings.limits.max_unsubscribe_ratio, settings.limits.max_unsubscribe_count) == (0.05, None)
    assert settings.limits.max_source_drop_ratio == 0.20
    assert (settings.limits.max_resubscribe_ratio, settings.limits.max_resubscribe_count) == (0.05, None)
    assert (settings.limits.max_resubscribe_removed_ratio, settings.limits.max_source_growth_ratio) == (0.5, 0.20)
    assert settings.log_level == "INFO"
    assert settings.retry_queue_url is None and settings.dead_letter_queue_url is None and settings.run_table is None
    assert (settings.lease_seconds, settings.deadline_margin) == (900, 20.0)


def test_a_minimal_sql_configuration_gets_the_documented_defaults() -> None:
    # Given only the required variables of a PostgreSQL source
    # When the settings are read
    source = Settings.from_env(POSTGRESQL).source

    # Then the SQL defaults apply
    assert (source.kind, source.secret_id, source.query) == (
        "postgresql",
        "rds/subscribers",
        POSTGRESQL["SOURCE_QUERY"],
    )
    assert (source.tls, source.tls_ca, source.iam_auth) == ("require", None, False)
    assert (source.statement_timeout, source.fetch_size) == (300.0, 5_000)


Getter = Callable[[Settings], Any]
PARSED: list[tuple[dict[str, str], str, Getter, Any]] = [
    (DYNAMODB, "OWNPAGE_API_URL=http://127.0.0.1:8080/v1/", lambda s: s.ownpage.api_url, "http://127.0.0.1:8080/v1"),
    (DYNAMODB, "OWNPAGE_LIST_ID= 7 ", lambda s: s.ownpage.list_id, 7),
    (
        DYNAMODB,
        "OWNPAGE_SECRET_ID=arn:aws:secretsmanager:eu-west-1:1:secret:o",
        lambda s: s.ownpage.secret_id,
        "arn:aws:secretsmanager:eu-west-1:1:secret:o",
    ),
    (DYNAMODB, "OWNPAGE_CLIENT=acme", lambda s: s.ownpage.client, "acme"),
    (DYNAMODB, "OWNPAGE_API_KEY=k-123", lambda s: s.ownpage.api_key, "k-123"),
    (DYNAMODB, "OWNPAGE_BATCH_SIZE=20000", lambda s: s.ownpage.batch_size, 20_000),
    (DYNAMODB, "OWNPAGE_PAGE_SIZE=500", lambda s: s.ownpage.page_size, 500),
    (DYNAMODB, "OWNPAGE_CONNECT_TIMEOUT=2.5", lambda s: s.ownpage.connect_timeout, 2.5),
    (DYNAMODB, "OWNPAGE_READ_TIMEOUT=120", lambda s: s.ownpage.read_timeout, 120.0),
    (DYNAMODB, "OWNPAGE_MAX_ATTEMPTS=1", lambda s: s.ownpage.max_attempts, 1),
    (DYNAMODB, "OWNPAGE_BACKOFF_BASE=0", lambda s: s.ownpage.backoff_base, 0.0),
    (DYNAMODB, "OWNPAGE_BACKOFF_CAP=300", lambda s: s.ownpage.backoff_cap, 300.0),
    (DYNAMODB, "SOURCE_KIND=dynamodb", lambda s: s.source.kind, "dynamodb"),
    (DYNAMODB, "SOURCE_TABLE=readers", lambda s: s.source.table, "readers"),
    (DYNAMODB, "SOURCE_EMAIL_ATTRIBUTE=mail", lambda s: s.source.email_attribute, "mail"),
    (DYNAMODB, "SOURCE_SUBSCRIBED_ATTRIBUTE=optin", lambda s: s.source.subscribed_attribute, "optin"),
    (DYNAMODB, "SOURCE_GUID_ATTRIBUTE=user_id", lambda s: s.source.guid_attribute, "user_id"),
    (DYNAMODB, "SOURCE_CONSENT_ATTRIBUTE=consented_at", lambda s: s.source.consent_attribute, "consented_at"),
    (
        DYNAMODB,
        "SOURCE_DATA_ATTRIBUTES=firstname=first_name, data_city = town,",
        lambda s: s.source.data_attributes,
        {"firstname": "first_name", "city": "town"},
    ),
    (DYNAMODB, "SOURCE_EMAIL_INDEX=by-email", lambda s: s.source.email_index, "by-email"),
    (DYNAMODB, "SOURCE_SCAN_SEGMENTS=64", lambda s: s.source.scan_segments, 64),
    (POSTGRESQL, "SOURCE_KIND=mysql", lambda s: s.source.kind, "mysql"),
    (POSTGRESQL, "SOURCE_SECRET_ID=rds/other", lambda s: s.source.secret_id, "rds/other"),
    (
        POSTGRESQL,
        "SOURCE_DSN=postgresql://u:p@127.0.0.1:5432/test",
        lambda s: s.source.dsn,
        "postgresql://u:p@127.0.0.1:5432/test",
    ),
    (POSTGRESQL, "SOURCE_QUERY=SELECT email FROM t", lambda s: s.source.query, "SELECT email FROM t"),
    (POSTGRESQL, "SOURCE_TLS=disable", lambda s: s.source.tls, "disable"),
    (POSTGRESQL, f"SOURCE_TLS_CA={__file__}", lambda s: s.source.tls_ca, __file__),  # any readable file
    (POSTGRESQL, "SOURCE_IAM_AUTH=yes", lambda s: s.source.iam_auth, True),
    (POSTGRESQL, "SOURCE_IAM_AUTH=Off", lambda s: s.source.iam_auth, False),
    (POSTGRESQL, "SOURCE_STATEMENT_TIMEOUT=30", lambda s: s.source.statement_timeout, 30.0),
    (POSTGRESQL, "SOURCE_FETCH_SIZE=100000", lambda s: s.source.fetch_size, 100_000),
    (DYNAMODB, "UNSUBSCRIBE_CAUSE=READER", lambda s: s.policy.unsubscribe_cause, "READER"),
    (
        DYNAMODB,
        "SUPPRESS_CAUSES= hard_bounce, MULTIPLE_BOUNCES ",
        lambda s: s.policy.suppressing_causes,
        {"HARD_BOUNCE", "MULTIPLE_BOUNCES"},
    ),
    (DYNAMODB, "MAX_UNSUBSCRIBE_RATIO=0.3", lambda s: s.limits.max_unsubscribe_ratio, 0.3),
    (DYNAMODB, "MAX_UNSUBSCRIBE_COUNT=0", lambda s: s.limits.max_unsubscribe_count, 0),
    (DYNAMODB, "MAX_SOURCE_DROP_RATIO=1", lambda s: s.limits.max_source_drop_ratio, 1.0),
    (DYNAMODB, "MAX_RESUBSCRIBE_RATIO=0.1", lambda s: s.limits.max_resubscribe_ratio, 0.1),
    (DYNAMODB, "MAX_RESUBSCRIBE_COUNT=7", lambda s: s.limits.max_resubscribe_count, 7),
    (DYNAMODB, "MAX_RESUBSCRIBE_REMOVED_RATIO=0.9", lambda s: s.limits.max_resubscribe_removed_ratio, 0.9),
    (DYNAMODB, "MAX_SOURCE_GROWTH_RATIO=3", lambda s: s.limits.max_source_growth_ratio, 3.0),
    (DYNAMODB, "OWNPAGE_READ_CONCURRENCY=16", lambda s: s.ownpage.read_concurrency, 16),
    (DYNAMODB, "OWNPAGE_READ_PASSES=1", lambda s: s.ownpage.read_passes, 1),
    (DYNAMODB, "SOURCE_EMAIL_CANONICAL=true", lambda s: s.source.email_canonical, True),
    (DYNAMODB, "LOG_LEVEL=debug", lambda s: s.log_level, "DEBUG"),
    (
        DYNAMODB,
        "RETRY_QUEUE_URL=https://sqs.eu-west-1.amazonaws.com/1/retry",
        lambda s: s.retry_queue_url,
        "https://sqs.eu-west-1.amazonaws.com/1/retry",
    ),
    (
        DYNAMODB,
        "DEAD_LETTER_QUEUE_URL=http://127.0.0.1:5000/1/dlq",
        lambda s: s.dead_letter_queue_url,
        "http://127.0.0.1:5000/1/dlq",
    ),
    (DYNAMODB, "RUN_TABLE=ownpage-sync-runs", lambda s: s.run_table, "ownpage-sync-runs"),
    (DYNAMODB, "RUN_LEASE_SECONDS=60", lambda s: s.lease_seconds, 60),
    (DYNAMODB, "DEADLINE_MARGIN_SECONDS=0", lambda s: s.deadline_margin, 0.0),
    (DYNAMODB, "FAST_LANE_MAX_WRITES=20000", lambda s: s.fast_lane_max_writes, 20_000),
    (DYNAMODB, "FAST_LANE_MAX_WRITES_PER_HOUR=1000000", lambda s: s.fast_lane_max_writes_per_hour, 1_000_000),
    (DYNAMODB, "FAST_LANE_NEW_ADDRESSES=subscribe", lambda s: s.fast_lane_new_addresses, "subscribe"),
    (DYNAMODB, "FAST_LANE_PROOF_MAX_AGE=3600", lambda s: s.fast_lane_proof_max_age, 3600.0),
    (DYNAMODB, "SOURCE_SPOOL_MB=0", lambda s: s.source_spool_mb, 0),
    (POSTGRESQL, "SOURCE_SPOOL_MB=10240", lambda s: s.source_spool_mb, 10_240),
]


@pytest.mark.parametrize(
    ("base", "assignment", "getter", "expected"),
    PARSED,
    ids=[row[1].split("=")[0] + ":" + row[1].split("=", 1)[1] for row in PARSED],
)
def test_each_variable_is_parsed(base: dict[str, str], assignment: str, getter: Getter, expected: Any) -> None:
    # Given a valid configuration and one variable set
    name, _, value = assignment.partition("=")

    # When the settings are read
    settings = Settings.from_env({**base, name: value})

    # Then the variable lands, typed, where the code reads it
    assert getter(settings) == expected


FAILURES: list[tuple[dict[str, str], dict[str, str | None], str, str]] = [
    # (base, changes (None removes), the variable named, a phrase of the message)
    (DYNAMODB, {"OWNPAGE_SECRET_ID": None}, "OWNPAGE_SECRET_ID", "is required"),
    (DYNAMODB, {"OWNPAGE_SECRET_ID": None, "OWNPAGE_CLIENT": "acme"}, "OWNPAGE_SECRET_ID", "OWNPAGE_API_KEY"),
    (DYNAMODB, {"OWNPAGE_LIST_ID": None}, "OWNPAGE_LIST_ID", "is required"),
    (DYNAMODB, {"OWNPAGE_LIST_ID": "  "}, "OWNPAGE_LIST_ID", "is required"),
    (DYNAMODB, {"OWNPAGE_LIST_ID": "0"}, "OWNPAGE_LIST_ID", "at least 1"),
    (DYNAMODB, {"OWNPAGE_LIST_ID": "list-1"}, "OWNPAGE_LIST_ID", "expected a whole number"),
    (DYNAMODB, {"OWNPAGE_API_URL": "ftp://example.com"}, "OWNPAGE_API_URL", "http(s) URL"),
    (DYNAMODB, {"OWNPAGE_API_URL": "services.ownpage.fr/v1"}, "OWNPAGE_API_URL", "http(s) URL"),
    (DYNAMODB, {"OWNPAGE_BATCH_SIZE": "20001"}, "OWNPAGE_BATCH_SIZE", "between 1 and 20000"),
    (DYNAMODB, {"OWNPAGE_BATCH_SIZE": "1.5"}, "OWNPAGE_BATCH_SIZE", "expected a whole number"),
    (DYNAMODB, {"OWNPAGE_PAGE_SIZE": "10001"}, "OWNPAGE_PAGE_SIZE", "between 1 and 10000"),
    (DYNAMODB, {"OWNPAGE_CONNECT_TIMEOUT": "0"}, "OWNPAGE_CONNECT_TIMEOUT", "between 0.1 and 60"),
    (DYNAMODB, {"OWNPAGE_READ_TIMEOUT": "nan"}, "OWNPAGE_READ_TIMEOUT", "between 0.1 and 900"),
    (DYNAMODB, {"OWNPAGE_MAX_ATTEMPTS": "21"}, "OWNPAGE_MAX_ATTEMPTS", "between 1 and 20"),
    (DYNAMODB, {"OWNPAGE_BACKOFF_BASE": "-1"}, "OWNPAGE_BACKOFF_BASE", "between 0.0 and 60"),
    (DYNAMODB, {"OWNPAGE_BACKOFF_CAP": "soon"}, "OWNPAGE_BACKOFF_CAP", "expected a number"),
    (DYNAMODB, {"SOURCE_KIND": "oracle"}, "SOURCE_KIND", "must be one of dynamodb, postgresql, mysql"),
    (DYNAMODB, {"SOURCE_TABLE": None}, "SOURCE_TABLE", "is required when SOURCE_KIND=dynamodb"),
    (DYNAMODB, {"SOURCE_SCAN_SEGMENTS": "65"}, "SOURCE_SCAN_SEGMENTS", "between 1 and 64"),
    (DYNAMODB, {"SOURCE_DATA_ATTRIBUTES": "firstname"}, "SOURCE_DATA_ATTRIBUTES", "name=attribute pairs"),
    (
        DYNAMODB,
        {"SOURCE_DATA_ATTRIBUTES": "city=town,data_city=ville"},
        "SOURCE_DATA_ATTRIBUTES",
        "'city' is mapped twice",
    ),
    (POSTGRESQL, {"SOURCE_SECRET_ID": None}, "SOURCE_SECRET_ID", "is required when SOURCE_KIND=postgresql"),
    (POSTGRESQL, {"SOURCE_DSN": "sqlite:///tmp/x.db"}, "SOURCE_DSN", "must look like postgresql://"),
    (POSTGRESQL, {"SOURCE_QUERY": None}, "SOURCE_QUERY", "is required when SOURCE_KIND=postgresql"),
    (POSTGRESQL, {"SOURCE_TLS": "prefer"}, "SOURCE_TLS", "must be one of require, disable"),
    (POSTGRESQL, {"SOURCE_IAM_AUTH": "maybe"}, "SOURCE_IAM_AUTH", "expected true or false"),
    (POSTGRESQL, {"SOURCE_STATEMENT_TIMEOUT": "0"}, "SOURCE_STATEMENT_TIMEOUT", "between 1 and 3600"),
    (POSTGRESQL, {"SOURCE_FETCH_SIZE": "0"}, "SOURCE_FETCH_SIZE", "between 1 and 100000"),
    (DYNAMODB, {"UNSUBSCRIBE_CAUSE": "HARD_BOUNCE"}, "UNSUBSCRIBE_CAUSE", "must be one of PUBLISHER, READER"),
    (DYNAMODB, {"SUPPRESS_CAUSES": "READER,SPAM"}, "SUPPRESS_CAUSES", "unknown cause(s) SPAM"),
    (
        DYNAMODB,
        {"SUPPRESS_CAUSES": "READER,HARD_BOUNCE"},
        "SUPPRESS_CAUSES",
        "must include HARD_BOUNCE and MULTIPLE_BOUNCES",
    ),
    (DYNAMODB, {"SUPPRESS_CAUSES": ","}, "SUPPRESS_CAUSES", "must include HARD_BOUNCE and MULTIPLE_BOUNCES"),
    (DYNAMODB, {"MAX_UNSUBSCRIBE_RATIO": "5%"}, "MAX_UNSUBSCRIBE_RATIO", "expected a number"),
    (DYNAMODB, {"MAX_UNSUBSCRIBE_RATIO": "1.5"}, "MAX_UNSUBSCRIBE_RATIO", "between 0.0 and 1.0"),
    # NaN compares false with everything: accepted, it silently disabled the ratio guard
    (DYNAMODB, {"MAX_UNSUBSCRIBE_RATIO": "nan"}, "MAX_UNSUBSCRIBE_RATIO", "between 0.0 and 1.0"),
    (DYNAMODB, {"MAX_UNSUBSCRIBE_COUNT": "-1"}, "MAX_UNSUBSCRIBE_COUNT", "at least 0"),
    (DYNAMODB, {"MAX_SOURCE_DROP_RATIO": "NaN"}, "MAX_SOURCE_DROP_RATIO", "between 0.0 and 1.0"),
    (DYNAMODB, {"RETRY_QUEUE_URL": "retry-queue"}, "RETRY_QUEUE_URL", "http(s) URL"),
    (DYNAMODB, {"DEAD_LETTER_QUEUE_URL": "arn:aws:sqs:eu-west-1:1:dlq"}, "DEAD_LETTER_QUEUE_URL", "http(s) URL"),
    (DYNAMODB, {"RUN_LEASE_SECONDS": "59"}, "RUN_LEASE_SECONDS", "between 60 and 86400"),
    (DYNAMODB, {"DEADLINE_MARGIN_SECONDS": "601"}, "DEADLINE_MARGIN_SECONDS", "between 0.0 and 600.0"),
    (DYNAMODB, {"OWNPAGE_API_URL": "https://services.ownpage.fr:99999/v1"}, "OWNPAGE_API_URL", "port"),
    (DYNAMODB, {"OWNPAGE_API_URL": "https://services.ownpage.fr:http/v1"}, "OWNPAGE_API_URL", "port"),
    (DYNAMODB, {"OWNPAGE_READ_CONCURRENCY": "0"}, "OWNPAGE_READ_CONCURRENCY", "between 1 and 32"),
    (DYNAMODB, {"OWNPAGE_READ_PASSES": "11"}, "OWNPAGE_READ_PASSES", "between 1 and 10"),
    (DYNAMODB, {"SOURCE_EMAIL_CANONICAL": "sure"}, "SOURCE_EMAIL_CANONICAL", "expected true or false"),
    (DYNAMODB, {"MAX_RESUBSCRIBE_RATIO": "nan"}, "MAX_RESUBSCRIBE_RATIO", "between 0.0 and 1.0"),
    (DYNAMODB, {"MAX_RESUBSCRIBE_COUNT": "-2"}, "MAX_RESUBSCRIBE_COUNT", "at least 0"),
    (DYNAMODB, {"MAX_SOURCE_GROWTH_RATIO": "-0.1"}, "MAX_SOURCE_GROWTH_RATIO", "between 0.0 and 1000.0"),
    (POSTGRESQL, {"SOURCE_TLS_CA": "/nonexistent/rds-ca.pem"}, "SOURCE_TLS_CA", "no readable file"),
    (DYNAMODB, {"LOG_LEVEL": "bogus"}, "LOG_LEVEL", "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    (DYNAMODB, {"FAST_LANE_MAX_WRITES": "0"}, "FAST_LANE_MAX_WRITES", "between 1 and 20000"),
    (DYNAMODB, {"FAST_LANE_MAX_WRITES_PER_HOUR": "0"}, "FAST_LANE_MAX_WRITES_PER_HOUR", "between 1 and 1000000"),
    (DYNAMODB, {"FAST_LANE_MAX_WRITES": "nan"}, "FAST_LANE_MAX_WRITES", "expected a whole number"),
    (DYNAMODB, {"FAST_LANE_NEW_ADDRESSES": "yes"}, "FAST_LANE_NEW_ADDRESSES", "must be one of proven, hold, subscribe"),
]


@pytest.mark.parametrize(
    ("base", "changes", "variable", "phrase"), FAILURES, ids=[f"{row[2]}:{row[1]}" for row in FAILURES]
)
def test_each_bad_variable_is_named_in_the_error(
    base: dict[str, str], changes: dict[str, str | None], variable: str, phrase: str
) -> None:
    # Given a configuration with one bad or missing variable
    env = {**base, **{k: v for k, v in changes.items() if v is not None}}
    for name in (k for k, v in changes.items() if v is None):
        env.pop(name, None)

    # When the settings are read
    message = problems(env)

    # Then the run stops before any call, naming the variable and what is wrong with it
    assert f"{variable}: " in message
    assert phrase in message.split(f"{variable}: ", 1)[1].split(";")[0]


def test_every_problem_is_reported_at_once() -> None:
    # Given an environment with several mistakes at once
    env = {
        "OWNPAGE_LIST_ID": "zero",
        "SOURCE_KIND": "dynamodb",
        "MAX_UNSUBSCRIBE_RATIO": "2",
        "UNSUBSCRIBE_CAUSE": "nobody",
    }

    # When the settings are read
    message = problems(env)

    # Then one error names every one of them
    for variable in (
        "OWNPAGE_SECRET_ID",
        "OWNPAGE_LIST_ID",
        "SOURCE_TABLE",
        "MAX_UNSUBSCRIBE_RATIO",
        "UNSUBSCRIBE_CAUSE",
    ):
        assert f"{variable}: " in message
    assert message.startswith("invalid configuration: ")


def test_empty_or_blank_variables_count_as_unset() -> None:
    # Given optional variables present but blank (as a template's empty parameter leaves them)
    env = {**DYNAMODB, "SOURCE_GUID_ATTRIBUTE": "", "MAX_UNSUBSCRIBE_COUNT": "  ", "RETRY_QUEUE_URL": ""}

    # When the settings are read
    settings = Settings.from_env(env)

    # Then they take their defaults rather than failing or holding ""
    assert settings.source.guid_attribute is None
    assert settings.limits.max_unsubscribe_count is None
    assert settings.retry_queue_url is None


def test_local_credentials_replace_the_secret() -> None:
    # Given local use: client and API key instead of a Secrets Manager secret
    env = {**DYNAMODB, "OWNPAGE_CLIENT": "acme", "OWNPAGE_API_KEY": "k-123"}
    del env["OWNPAGE_SECRET_ID"]

    # When the settings are read
    settings = Settings.from_env(env)

    # Then they are accepted
    assert (settings.ownpage.secret_id, settings.ownpage.client, settings.ownpage.api_key) == (None, "acme", "k-123")


def test_no_secret_value_appears_in_the_settings_repr() -> None:
    # Given every credential-carrying variable set to a recognisable value
    env = {
        **POSTGRESQL,
        "OWNPAGE_CLIENT": "client-Q7xZ",
        "OWNPAGE_API_KEY": "apikey-9Kp2",
        "SOURCE_DSN": "postgresql://reader:dbpass-W3rT@127.0.0.1:5432/test",
    }

    # When the settings are read and printed (logs, tracebacks, the CLI's debug output)
    settings = Settings.from_env(env)
    printed = repr(settings) + str(settings)

    # Then no secret value is in the text
    for secret in ("client-Q7xZ", "apikey-9Kp2", "dbpass-W3rT"):
        assert secret not in printed
    # And the values are still there for the code that needs them
    assert settings.ownpage.api_key == "apikey-9Kp2"
    assert settings.source.dsn is not None and "dbpass-W3rT" in settings.source.dsn


def test_no_secret_value_appears_in_a_configuration_error() -> None:
    # Given a DSN with a password but the wrong scheme, and a bad setting next to local credentials
    env = {
        **POSTGRESQL,
        "SOURCE_DSN": "oracle://reader:dbpass-W3rT@db/x",
        "OWNPAGE_API_KEY": "apikey-9Kp2",
        "OWNPAGE_BATCH_SIZE": "x",
    }

    # When the settings are read
    message = problems(env)

    # Then the error names the variable but does not echo the secret
    assert "SOURCE_DSN: " in message
    assert "dbpass-W3rT" not in message and "apikey-9Kp2" not in message


def test_every_variable_the_settings_read_is_covered_here() -> None:
    # Given the variable names settings.py reads
    read = set(re.findall(r'reader\.\w+\(\s*"([A-Z][A-Z0-9_]+)"', SETTINGS_SOURCE.read_text()))

    # When compared with the variables this module parses
    parsed = {row[1].split("=")[0] for row in PARSED}

    # Then none is untested (a new variable needs a row in PARSED and, if it can fail, in FAILURES)
    assert read, "the pattern found no variable: update this test"
    assert read - parsed == set()
