"""SyncFunction: the scheduled sync. Parse the event and settings, run, report. Logic lives in the layer."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from ownpage_sync import wiring
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import RunFailed
from ownpage_sync.exports import BucketExport
from ownpage_sync.observability import (
    log_uncaught,
    logger,
    metrics,
    record_run_metrics,
    route_library_logs,
    tracer,
)
from ownpage_sync.report import Outcome
from ownpage_sync.settings import Settings
from ownpage_sync.sync import RunRequest, run_sync

route_library_logs()


@logger.inject_lambda_context(correlation_id_path="execution_id", clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler
@log_uncaught("sync invocation failed")
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Event (from EventBridge Scheduler or by hand): {"dry_run"?, "force"?, "max_unsubscribe"?,
    "max_resubscribe"?, "export_plan"?: "csv"|"json", "export_suppressions"?: "csv"|"json"}."""
    settings = Settings.from_env()
    request = RunRequest.from_event(event)
    export = BucketExport.from_event(event)
    deadline = Deadline.from_lambda_context(context, settings.deadline_margin)
    queue_deadline = Deadline.from_lambda_context(context, wiring.QUEUE_MARGIN)
    logger.append_keys(run_id=request.run_id, list_id=settings.ownpage.list_id)
    report = run_sync(settings, wiring.sync_services(settings, deadline, queue_deadline), request, deadline)
    record_run_metrics(report)
    result = report.to_dict()
    if export.wanted:
        result["exports"] = export.write(report.plan, report.run_id)
    logger.info("sync report", report=result)
    if report.outcome == Outcome.FAILED:
        raise RunFailed(f"run {report.run_id} failed: {(report.error or {}).get('message', 'see the report')}")
    return result
