"""The retry policy: capped exponential backoff with full jitter, Retry-After, deadline-aware waits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ownpage_sync.backoff import RetryPolicy, parse_retry_after
from ownpage_sync.settings import OwnpageSettings

pytestmark = pytest.mark.unit

NOW = datetime(2025, 1, 31, 9, 0, tzinfo=UTC)


def test_ceiling_doubles_from_base_and_stops_at_cap() -> None:
    # Given base 0.5 and cap 4
    policy = RetryPolicy(max_attempts=10, base=0.5, cap=4.0)
    # When the ceilings of the first attempts are computed
    ceilings = [policy.ceiling(attempt) for attempt in range(1, 7)]
    # Then they double from the base and never exceed the cap
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_ceiling_of_a_huge_attempt_number_does_not_overflow() -> None:
    # Given a policy (attempt numbers are small in practice, but the arithmetic must not blow up)
    policy = RetryPolicy(base=0.5, cap=20.0)
    # When / Then
    assert policy.ceiling(10_000) == 20.0


def test_full_jitter_spans_zero_to_the_ceiling() -> None:
    # Given attempt 3 (ceiling 2.0)
    policy = RetryPolicy(max_attempts=6, base=0.5, cap=20.0)
    # When the random draw is at its extremes and in the middle
    # Then the backoff is that share of the ceiling
    assert policy.backoff(3, lambda: 0.0) == 0.0
    assert policy.backoff(3, lambda: 0.5) == 1.0
    assert policy.backoff(3, lambda: 0.999) == pytest.approx(1.998)


@given(
    attempt=st.integers(min_value=1, max_value=30),
    base=st.floats(min_value=0.0, max_value=60.0),
    cap=st.floats(min_value=0.0, max_value=300.0),
    draw=st.floats(min_value=0.0, max_value=1.0),
    retry_after=st.none() | st.floats(min_value=0.0, max_value=1000.0),
    remaining=st.floats(min_value=0.0, max_value=10_000.0),
    max_attempts=st.integers(min_value=1, max_value=20),
)
def test_a_wait_never_reaches_the_deadline_and_respects_retry_after(
    attempt: int,
    base: float,
    cap: float,
    draw: float,
    retry_after: float | None,
    remaining: float,
    max_attempts: int,
) -> None:
    # Given any policy, failed attempt, server hint and time left
    policy = RetryPolicy(max_attempts=max_attempts, base=base, cap=cap)
    # When the policy decides
    decision = policy.decide(attempt, retry_after, remaining, lambda: draw)
    # Then a wait, if any, ends strictly before the deadline, is at least Retry-After,
    # and is at most the jittered ceiling unless the server asked for longer
    if decision.wait is None:
        assert decision.why
        return
    assert attempt < max_attempts
    assert 0.0 <= decision.wait < remaining
    if retry_after is not None:
        assert decision.wait >= retry_after
        assert retry_after <= policy.max_retry_after
    assert decision.wait <= max(policy.ceiling(attempt), retry_after or 0.0)


def test_gives_up_once_the_attempts_are_spent() -> None:
    # Given at most 3 attempts
    policy = RetryPolicy(max_attempts=3, base=0.1, cap=1.0)
    # When attempts 1, 2 and 3 have failed
    waits = [policy.decide(attempt, None, 100.0, lambda: 0.5).wait for attempt in (1, 2, 3)]
    # Then attempts 1 and 2 are followed by a wait, attempt 3 by giving up
    assert waits[0] is not None and waits[1] is not None
    assert waits[2] is None


def test_retry_after_wins_over_a_shorter_backoff() -> None:
    # Given a tiny backoff and a server asking for 7 seconds
    policy = RetryPolicy(max_attempts=5, base=0.1, cap=1.0)
    # When / Then the wait is the server's
    assert policy.decide(1, 7.0, 100.0, lambda: 1.0).wait == 7.0


def test_a_wait_that_would_pass_the_deadline_gives_up_now() -> None:
    # Given a server asking for 30 s with 10 s left
    policy = RetryPolicy(max_attempts=5)
    # When the policy decides
    decision = policy.decide(1, 30.0, 10.0, lambda: 0.0)
    # Then it gives up without waiting, and says why (no address or secret in it)
    assert decision.wait is None
    assert "deadline" in decision.why


def test_an_absurd_retry_after_is_not_honoured_by_sleeping() -> None:
    # Given no deadline at all (a terminal run) and a server asking for an hour
    policy = RetryPolicy(max_attempts=5)
    # When / Then the client gives up instead of freezing for an hour
    assert policy.decide(1, 3600.0, float("inf"), lambda: 0.0).wait is None


def test_from_settings_takes_the_ownpage_settings() -> None:
    # Given settings with explicit retry values
    settings = OwnpageSettings(
        api_url="http://x/v1", list_id=1, secret_id=None, max_attempts=9, backoff_base=0.25, backoff_cap=3.0
    )
    # When / Then
    assert RetryPolicy.from_settings(settings) == RetryPolicy(max_attempts=9, base=0.25, cap=3.0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("0", 0.0),
        ("1", 1.0),
        (" 120 ", 120.0),
        ("1.5", 1.5),
        ("-3", None),
        ("nan", None),
        ("inf", None),
        ("soon", None),
    ],
)
def test_retry_after_in_seconds(header: str | None, expected: float | None) -> None:
    # Given a Retry-After header value / When parsed / Then seconds, or None when unusable
    assert parse_retry_after(header, now=lambda: NOW) == expected


def test_retry_after_as_an_http_date() -> None:
    # Given an HTTP-date 90 seconds after now
    header = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    # When parsed
    seconds = parse_retry_after(header, now=lambda: NOW)
    # Then it is the delay until then
    assert seconds == pytest.approx(90.0)


def test_retry_after_as_a_past_http_date_means_now() -> None:
    # Given a date already past
    header = format_datetime(NOW - timedelta(minutes=5), usegmt=True)
    # When / Then no wait is asked for
    assert parse_retry_after(header, now=lambda: NOW) == 0.0


def test_retry_after_as_a_date_without_zone_is_utc() -> None:
    # Given an RFC 2822 date with "-0000" (no zone claimed), 10 s ahead
    header = (NOW + timedelta(seconds=10)).strftime("%a, %d %b %Y %H:%M:%S -0000")
    # When / Then
    assert parse_retry_after(header, now=lambda: NOW) == pytest.approx(10.0)
