"""One place for Powertools' Logger, Metrics and Tracer, shared by both functions and the CLI.

Library modules log through stdlib `logging.getLogger(__name__)`; `route_library_logs()` gives those
records the same JSON formatter (and correlation id) as the handler's logger. Nothing logged or
emitted as a metric may carry a raw email address (see emails.mask_email).
"""

from __future__ import annotations

import functools
import logging
import os
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from ownpage_sync.errors import OwnpageSyncError
from ownpage_sync.redaction import protect_library_logs, redact

if TYPE_CHECKING:
    from ownpage_sync.report import RunReport

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "ownpage-sync")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "OwnpageSync")


def _log_level() -> str:
    """The level POWERTOOLS_LOG_LEVEL or LOG_LEVEL names, or INFO when it names none: Powertools would
    raise at import (a traceback, before any handler runs); Settings and the CLI name the bad value
    in one line instead."""
    raw = (os.environ.get("POWERTOOLS_LOG_LEVEL") or os.environ.get("LOG_LEVEL") or "INFO").strip().upper()
    return raw if raw in logging.getLevelNamesMapping() else "INFO"


logger = Logger(service=SERVICE, level=_log_level())
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
tracer = Tracer(service=SERVICE)

LIBRARY_LOGGER = "ownpage_sync"


def route_library_logs() -> None:
    """Send the library's stdlib log records through the Powertools logger's handler and formatter,
    and keep the AWS SDK's DEBUG output (request and response bodies) out of the logs."""
    logging.getLogger(LIBRARY_LOGGER)  # register the parent so children propagate to a configured logger
    copy_config_to_registered_loggers(source_logger=logger, include={LIBRARY_LOGGER})
    protect_library_logs()


Handler = TypeVar("Handler", bound=Callable[..., Any])


def log_uncaught(message: str) -> Callable[[Handler], Handler]:
    """Log an exception escaping a handler as one ERROR line of the service's JSON logs, then re-raise.

    Lambda prints an uncaught exception itself, but as plain text without `level`: the runbook's
    `filter level = "ERROR"` would miss a ConfigurationError at start-up. Put it inside
    `inject_lambda_context`, so the line carries the invocation's keys."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def logged(event: Any, context: Any) -> Any:
            try:
                return handler(event, context)
            except Exception as exc:
                logger.error(message, extra=uncaught_fields(exc))
                raise

        return logged  # type: ignore[return-value]

    return decorate


def uncaught_fields(exc: BaseException) -> dict[str, Any]:
    """What to log about an escaping exception: its type, its message (masked unless the project wrote
    it: ours carry no addresses by contract) and where it was raised (frames only, no values)."""
    text = str(exc) if isinstance(exc, OwnpageSyncError) else redact(str(exc), limit=None)
    first_line = text.strip().splitlines()[0] if text.strip() else ""  # BatchProcessingError appends tracebacks
    return {
        "error_type": type(exc).__name__,
        "error": first_line[:1000],
        "stack": [redact(line.rstrip(), limit=None) for line in traceback.format_tb(exc.__traceback__)[-5:]],
    }


# Metric names are part of the stack's contract: alarms and the dashboard in template.yaml use them.
RUN_METRICS = {
    "source": "SourceSubscribers",
    "source_invalid": "InvalidSourceAddresses",
    "ownpage_subscribed": "OwnpageSubscribers",
    "subscribed": "Subscribed",
    "unsubscribed": "Unsubscribed",
    "updated": "Updated",
    "suppressed": "Suppressed",
    "rejected": "RejectedAddresses",
    "unsubscribes_refused": "UnsubscribesRefused",
    "writes_off_target": "WritesOffTarget",
    "queued": "Queued",
    "deferred": "Deferred",
    "failed": "Failed",
    "held": "HeldSubscribes",
    "read_incomplete": "ReadIncomplete",
    "read_ahead_ended": "ReadAheadEnded",
}


def record_run_metrics(report: RunReport) -> None:
    """Emit one run's numbers as EMF metrics (flushed by the handler's `log_metrics`)."""
    from aws_lambda_powertools.metrics import MetricUnit

    counts = report.counts()
    for key, name in RUN_METRICS.items():
        if key in counts:
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=counts[key])
    metrics.add_metric(name="RunDuration", unit=MetricUnit.Seconds, value=report.duration_seconds)
    metrics.add_metric(name="RunSucceeded", unit=MetricUnit.Count, value=1 if report.outcome == "converged" else 0)
    metrics.add_metric(name="RunFailed", unit=MetricUnit.Count, value=1 if report.outcome == "failed" else 0)
    metrics.add_metric(name="GuardTripped", unit=MetricUnit.Count, value=len(report.guard_trips))
    if report.drift is not None:
        metrics.add_metric(name="Drift", unit=MetricUnit.Count, value=abs(report.drift.difference))
    if report.plan is not None:
        for cause, count in report.plan.suppressed_by_cause().items():
            # One metric per cause (SuppressedREADER, SuppressedHARD_BOUNCE, ...): no extra dimension sets.
            metrics.add_metric(name=f"Suppressed{cause}", unit=MetricUnit.Count, value=count)
