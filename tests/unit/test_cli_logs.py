"""The CLI's log lines: the library's structured fields on one readable line, never a raw address."""

from __future__ import annotations

import logging

import pytest
from ownpage_sync_tools.cli.logs import ReadableFormatter, readable_line, terminal_logging

pytestmark = pytest.mark.unit


def record(message: str, level: int = logging.WARNING, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("ownpage_sync.ownpage", level, __file__, 1, message, None, None)
    for name, value in extra.items():
        setattr(made, name, value)
    return made


def test_the_fields_a_library_line_carries_follow_its_message() -> None:
    # Given the client's retry warning with its structured fields
    line = record(
        "Ownpage call failed; retrying",
        method="POST",
        endpoint="/newsletters/lists/1/subscribers",
        attempt=1,
        status=503,
        retry_after=None,
        wait_seconds=1.2,
    )
    # When it is formatted for the terminal
    text = readable_line(line)
    # Then it is one line: level, message, then each field that has a value, in the order given
    assert text == (
        "WARNING Ownpage call failed; retrying method=POST endpoint=/newsletters/lists/1/subscribers "
        "attempt=1 status=503 wait_seconds=1.2"
    )


def test_text_with_spaces_is_quoted_and_structures_are_compact_json() -> None:
    text = readable_line(record("planned changes", level=logging.INFO, reason="HTTP 503: down", by_cause={"READER": 2}))
    assert text == 'INFO planned changes reason="HTTP 503: down" by_cause={"READER":2}'


def test_an_address_never_reaches_the_terminal() -> None:
    # Given a line whose field (against the library's contract) carries a raw address, and an exception
    try:
        raise ValueError("bad row for chloe.martin@example.org")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    line = record("Ownpage row skipped", email="chloe.martin@example.org")
    line.exc_info = exc_info
    # When it is formatted
    text = readable_line(line)
    # Then the address is masked wherever it was
    assert "chloe.martin" not in text
    assert "email=<address>" in text and 'exception="ValueError: bad row for <address>"' in text


def test_terminal_logging_routes_library_records_to_stderr_at_log_level(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given LOG_LEVEL=INFO
    monkeypatch.setenv("LOG_LEVEL", "INFO")
    library = logging.getLogger("ownpage_sync.sync")
    # When the library logs inside a command, and after it
    with terminal_logging():
        library.info("sync run starting", extra={"run_id": "r-1", "dry_run": True})
        library.debug("not shown")
    library.warning("after the command")
    # Then only the command's INFO line reached stderr, readable
    assert capsys.readouterr().err.splitlines() == ["INFO sync run starting run_id=r-1 dry_run=True"]


def test_the_formatter_keeps_the_powertools_interface() -> None:
    # The retry handler's Powertools logger appends keys to its formatter; the readable one must accept them
    formatter = ReadableFormatter()
    formatter.append_keys(function_name="ownpage-sync-retry-local", cold_start=True)
    assert formatter.format(record("retry message done", level=logging.INFO, sent=3)) == (
        "INFO retry message done sent=3"
    )
