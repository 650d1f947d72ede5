"""ChangeFunction: the fast lane. A DynamoDB Stream batch or a SubscriberChanged event names addresses
that changed; each is read again from the source and Ownpage and written by the rules of a full run
(ownpage_sync.fast_lane). A stream batch gets a partial batch response; a failed event raises."""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from ownpage_sync import wiring
from ownpage_sync.deadline import Deadline
from ownpage_sync.fast_lane import FastLanePolicy, apply_changes, batch_from_event
from ownpage_sync.observability import log_uncaught, logger, metrics, route_library_logs, tracer
from ownpage_sync.retrying import REBUILD_ADAPTERS_ON, RetryTarget, describe_failure
from ownpage_sync.settings import Settings

route_library_logs()


@cache
def settings() -> Settings:
    return Settings.from_env()


@cache
def target() -> RetryTarget:
    """The retry path's adapters (source, Ownpage client per invocation), kept for the container's life."""
    return wiring.retry_target(settings())


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
@log_uncaught("change invocation failed")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """`{"Records": [...]}` from the source table's stream, or an EventBridge SubscriberChanged event
    (`detail: {"email": ...}`, docs/fast-lane.md)."""
    try:
        batch = batch_from_event(event, settings().source.email_attribute)
        deadline = Deadline.from_lambda_context(context, settings().deadline_margin)
        sink = wiring.retry_queue(settings(), Deadline.from_lambda_context(context, wiring.QUEUE_MARGIN))
        report = apply_changes(batch, target(), sink, deadline, FastLanePolicy.from_settings(settings()))
    except Exception as exc:
        if describe_failure(exc)["kind"] in REBUILD_ADAPTERS_ON:
            target.cache_clear()  # pick up a fixed secret or setting on the next invocation
            settings.cache_clear()
        raise
    logger.info("fast lane report", report=report.to_log())
    for name, unit, value in report.metrics():
        metrics.add_metric(name=name, unit=MetricUnit(unit), value=value)
    return report.lambda_response()
