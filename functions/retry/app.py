"""RetryFunction: drains the RetryQueue. Each record is re-checked against the source and Ownpage as
they are now (ownpage_sync.retrying), then re-sent; only the records that failed are retried by SQS."""

from __future__ import annotations

from functools import cache
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from ownpage_sync import wiring
from ownpage_sync.deadline import Deadline
from ownpage_sync.observability import log_uncaught, logger, metrics, route_library_logs, tracer
from ownpage_sync.redelivery import Redelivery
from ownpage_sync.retry_queue import RetryMessage
from ownpage_sync.retrying import REBUILD_ADAPTERS_ON, RetryTarget, describe_failure, retry_message
from ownpage_sync.settings import Settings

processor = BatchProcessor(event_type=EventType.SQS)
route_library_logs()


@cache
def settings() -> Settings:
    return Settings.from_env()


@cache
def target() -> RetryTarget:
    """Adapters, built on first use and kept for the container's life."""
    return wiring.retry_target(settings())


@cache
def redelivery() -> Redelivery:
    """The RetryQueue's maxReceiveCount (RETRY_MAX_RECEIVE_COUNT), so a failure's log says what comes next."""
    return Redelivery.from_env()


@tracer.capture_method
def record_handler(record: SQSRecord, lambda_context: LambdaContext) -> None:
    """One message; raising marks this record (and only it) as failed."""
    receives = int(record.attributes.approximate_receive_count)
    message: RetryMessage | None = None
    try:
        message = RetryMessage.from_json(record.body)
        deadline = Deadline.from_lambda_context(lambda_context, settings().deadline_margin)
        result = retry_message(message, target(), deadline)
    except Exception as exc:
        failure = {**describe_failure(exc), "run_id": message.run_id if message else None}
        fate = {"next": redelivery().after_failure(receives), "last_receive": redelivery().is_last(receives)}
        logger.error(
            "retry message failed", extra={"message_id": record.message_id, "receives": receives, **failure, **fate}
        )
        if failure["kind"] in REBUILD_ADAPTERS_ON:
            target.cache_clear()  # pick up a fixed secret or setting on the next message
            settings.cache_clear()
        poison = failure["kind"] == "poison"
        metrics.add_metric(name="PoisonMessages" if poison else "RetryRecordsFailed", unit=MetricUnit.Count, value=1)
        raise
    logger.info("retry message done", extra={"message_id": record.message_id, "receives": receives, **result.to_log()})
    metrics.add_metric(name="RetriedOperationsSent", unit=MetricUnit.Count, value=result.sent)
    metrics.add_metric(name="StaleOperationsDropped", unit=MetricUnit.Count, value=result.stale_total)
    metrics.add_metric(name="RejectedAddresses", unit=MetricUnit.Count, value=result.rejected)
    if result.invalid:
        metrics.add_metric(name="InvalidRetryOperations", unit=MetricUnit.Count, value=result.invalid)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
@log_uncaught("retry invocation failed")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """SQS batch → partial batch response. When every record fails, BatchProcessingError propagates on
    purpose: the invocation fails and SQS keeps the whole batch (an empty response would delete it)."""
    redelivery()  # a malformed RETRY_MAX_RECEIVE_COUNT fails the invocation here, not inside a record's error
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
