"""Log lines an operator can read: `LEVEL message key=value ...` on stderr, never raw addresses.

The library logs its facts as structured fields (`extra={...}`: status, endpoint, wait, counts...).
In Lambda they become JSON; in a terminal they are printed after the message on one line:

    WARNING Ownpage call failed; retrying method=POST endpoint=/newsletters/lists/1/subscribers status=503 wait_seconds=1.2

The handlers' Powertools logger is borrowed the same way while `retry` runs the retry handler here,
so no Lambda-style JSON (and no made-up Lambda context) reaches the terminal.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from typing import Any

from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from ownpage_sync.errors import ConfigurationError
from ownpage_sync.observability import LIBRARY_LOGGER
from ownpage_sync.redaction import protect_library_logs, redact

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Attributes every LogRecord has: anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def _value(value: Any) -> str:
    if isinstance(value, str):
        plain = value and not any(char.isspace() or char in "\"='" for char in value)
        return value if plain else json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict | list | tuple | set):
        items = sorted(value) if isinstance(value, set) else value
        return json.dumps(items, ensure_ascii=False, default=str, separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def readable_line(record: logging.LogRecord) -> str:
    """`LEVEL message key=value ...`: the record's own fields, in the order they were given."""
    parts = [record.levelname, record.getMessage()]
    for name, value in vars(record).items():
        if name in _STANDARD or name.startswith("_") or value is None:
            continue
        parts.append(f"{name}={_value(value)}")
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        parts.append(f"exception={_value(f'{type(error).__name__}: {error}')}")
    return redact(" ".join(parts), limit=None)


class ReadableFormatter(LambdaPowertoolsFormatter):
    """One readable line per record. A Powertools formatter underneath, so a Powertools logger
    borrowed for the terminal keeps working (append_keys, clear_state...); its keys are not printed."""

    def format(self, record: logging.LogRecord) -> str:
        return readable_line(record)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is now (a test's capture, a redirected stream)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


@contextmanager
def terminal_logging(level: str | None = None) -> Iterator[None]:
    """For one command: every logger to stderr in readable lines, at LOG_LEVEL (default WARNING)."""
    root = logging.getLogger()
    threshold = (level or os.environ.get("LOG_LEVEL", "WARNING")).strip().upper()
    if threshold not in LEVELS:
        raise ConfigurationError(f"LOG_LEVEL: must be one of {', '.join(LEVELS)}, got {threshold.lower()!r}")
    handler = _StderrHandler()
    handler.setFormatter(ReadableFormatter())
    # On the handler too: a logger with its own level (werkzeug's INFO) propagates past the root's.
    handler.setLevel(threshold)
    previous = root.level
    root.addHandler(handler)
    root.setLevel(threshold)
    # Whatever the command, once the level is set: the AWS SDK's DEBUG lines carry request and
    # response bodies (queued operations, events naming an address), and not every command loads the
    # Ownpage client, whose import caps them too (against the level then).
    protect_library_logs()
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@contextmanager
def handler_logs_readable(service_logger_name: str) -> Iterator[None]:
    """While a Lambda handler runs in this process: its Powertools logger writes readable lines to stderr,
    the library's loggers go back to the terminal's (Powertools had taken them over), and no EMF metric
    is printed (nothing would publish it from a terminal)."""
    service = logging.getLogger(service_logger_name)
    saved_handlers = [(h, h.formatter, getattr(h, "stream", None)) for h in service.handlers]
    library = [
        found
        for name, found in logging.Logger.manager.loggerDict.items()
        if isinstance(found, logging.Logger) and name.split(".")[0] == LIBRARY_LOGGER
    ]
    saved_library = [(found, found.handlers[:], found.propagate, found.level) for found in library]
    saved_metrics = os.environ.get("POWERTOOLS_METRICS_DISABLED")
    saved_propagate = service.propagate
    service.propagate = False  # its own handler prints the line; the terminal's must not print it twice
    for handler, _, _ in saved_handlers:
        handler.setFormatter(ReadableFormatter())
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    for found in library:
        found.handlers[:] = []
        found.propagate = True
        found.setLevel(logging.NOTSET)
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    try:
        with redirect_stdout(sys.stderr):  # anything else a handler prints stays off the report
            yield
    finally:
        service.propagate = saved_propagate
        for handler, formatter, stream in saved_handlers:
            handler.setFormatter(formatter)
            if isinstance(handler, logging.StreamHandler) and stream is not None:
                handler.setStream(stream)
        for found, handlers, propagate, found_level in saved_library:
            found.handlers[:] = handlers
            found.propagate = propagate
            found.setLevel(found_level)
        if saved_metrics is None:
            os.environ.pop("POWERTOOLS_METRICS_DISABLED", None)
        else:
            os.environ["POWERTOOLS_METRICS_DISABLED"] = saved_metrics
