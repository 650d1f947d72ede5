"""Fault matrix, bad input: the settings parser, the retry-message parser and the planner fuzzed with
hypothesis (any Unicode, control characters and lone surrogates, very long strings, wrong types). No
network: these are the three places where text from outside becomes the project's values.

Example counts are modest (the suite must stay fast); the strategies lean on the edges instead."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ownpage_sync.errors import ConfigurationError
from ownpage_sync.settings import Settings

pytestmark = pytest.mark.unit

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SETTINGS_SOURCE = (Path(__file__).resolve().parents[2] / "layers/ownpage_sync/ownpage_sync/settings.py").read_text()

ANY_CHARACTER = st.characters(codec=None, exclude_categories=())  # control characters, lone surrogates
SHORT = st.text(ANY_CHARACTER, max_size=12)
LONG = st.builds(lambda head, fill, size: head + fill * size, SHORT, ANY_CHARACTER, st.integers(300, 12_000))
NUMBERISH = st.sampled_from(
    ["1", "0", "-1", "1e999", "nan", "inf", "-inf", "0x10", "1_000", "١٢", "１", " 5 ", "5.", ".5", "9" * 5000, "1/2"]
)
URLISH = st.builds(
    lambda scheme, rest: scheme + rest,
    st.sampled_from(["http://", "https://", "postgresql://", "mysql://", "ftp://", "", "http://[", "https://[::1"]),
    st.one_of(SHORT, st.sampled_from(["[::1", "]:80", "host:99999", "host:-1", "host:port", "h:8080/v1", "[x]:1"])),
)
SETTING_VALUE = st.one_of(SHORT, SHORT, LONG, NUMBERISH, URLISH, st.sampled_from(["true", "no", "maybe", "", " "]))


# -- the settings parser ---------------------------------------------------------------------------------

# Every variable Settings.from_env reads, taken from its source so a new one is fuzzed without asking.
VARIABLES = sorted(set(re.findall(r'reader\.\w+\(\s*"([A-Z][A-Z0-9_]+)"', SETTINGS_SOURCE)))
BASES = {
    "dynamodb": {"OWNPAGE_LIST_ID": "1", "OWNPAGE_CLIENT": "c", "OWNPAGE_API_KEY": "k", "SOURCE_TABLE": "t"},
    "postgresql": {
        "OWNPAGE_LIST_ID": "1",
        "OWNPAGE_SECRET_ID": "s",
        "SOURCE_KIND": "postgresql",
        "SOURCE_DSN": "postgresql://db.internal:5432/news",
        "SOURCE_QUERY": "SELECT email FROM readers",
    },
}


def test_the_fuzzed_variables_are_every_setting() -> None:
    assert len(VARIABLES) >= 40 and {"OWNPAGE_API_URL", "SOURCE_DSN", "LOG_LEVEL", "SUPPRESS_CAUSES"} <= set(VARIABLES)


@FUZZ
@given(base=st.sampled_from(sorted(BASES)), name=st.sampled_from(VARIABLES), value=SETTING_VALUE)
@example(base="dynamodb", name="OWNPAGE_API_URL", value="http://[::1")
@example(base="dynamodb", name="RETRY_QUEUE_URL", value="https://[x")
@example(base="postgresql", name="SOURCE_DSN", value="postgresql://[::1/db")
@example(base="dynamodb", name="OWNPAGE_API_URL", value="https://host:99999/v1")
@example(base="dynamodb", name="OWNPAGE_BATCH_SIZE", value="9" * 5000)
def test_a_malformed_setting_is_one_clear_line_naming_its_variable(base: str, name: str, value: str) -> None:
    # Given a valid environment with one variable set to anything at all
    env = {**BASES[base], name: value}
    # When the settings are read
    try:
        Settings.from_env(env)
    except ConfigurationError as exc:
        # Then a refusal is one short line that names the variable: never a traceback of another kind
        message = str(exc)
        assert message.startswith("invalid configuration: ") and name in message
        assert "\n" not in message and "\r" not in message and len(message) < 600, message[:200]
        assert message.isprintable(), "control characters are quoted, not printed"


@FUZZ
@given(values=st.dictionaries(st.sampled_from(VARIABLES), SETTING_VALUE, max_size=6))
def test_any_environment_gives_settings_or_one_configuration_error(values: dict[str, str]) -> None:
    # Given several variables at once set to anything, on either source kind
    for base in BASES.values():
        try:
            Settings.from_env({**base, **values})
        except ConfigurationError as exc:
            # Then every problem is reported in the one line, each named
            assert "\n" not in str(exc) and str(exc).startswith("invalid configuration: ")
