"""The metrics a run emits are the ones the stack's alarms and dashboard watch (template.yaml)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from ownpage_sync.applier import ApplyOutcome
from ownpage_sync.fast_lane import EVENT, STREAM, ChangeReport
from ownpage_sync.guards import GuardTrip
from ownpage_sync.models import Action, Operation
from ownpage_sync.observability import NAMESPACE, metrics, record_run_metrics
from ownpage_sync.planner import OwnpageStats, Plan, SourceStats, Suppression
from ownpage_sync.ports import SubscriberCounts
from ownpage_sync.read_proof import ReadProof
from ownpage_sync.report import Drift, RunReport
from ownpage_sync.sources.prefetch import PrefetchStats

from tests.metric_names import RETRY_HANDLER, literal_metric_names

pytestmark = pytest.mark.unit

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"


def _custom_metrics_in_template() -> set[str]:
    """Every MetricName of an alarm, and every metric of the dashboard, in the OwnpageSync namespace."""
    text = TEMPLATE.read_text(encoding="utf-8")
    alarms = set(re.findall(r"Namespace: OwnpageSync\s+MetricName: (\w+)", text))
    dashboard = set(re.findall(r'\["OwnpageSync", "(\w+)"', text))
    return alarms | dashboard


def _fast_lane_metrics() -> set[str]:
    """What a ChangeFunction invocation emits, for a stream batch and for an event."""
    reports = (ChangeReport(via, "run", records=1, oldest_change_seconds=1.0) for via in (STREAM, EVENT))
    return {name for report in reports for name, _, _ in report.metrics()}


def test_a_guarded_run_emits_every_metric_the_stack_watches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the report of a run that planned, tripped a guard, and one that applied with a rejection
    # (its source read ahead ended early: the spool was full)
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    plan = Plan(
        to_subscribe=(Operation(Action.SUBSCRIBE, "a@example.org"),),
        suppressed=(Suppression("b@example.org", "HARD_BOUNCE", None),),
        source=SourceStats(subscribers=1),
        ownpage=OwnpageStats(rows=4, subscribed=3),
    )
    applied = ApplyOutcome(applied=Counter({"subscribe": 1}))
    read = ReadProof(SubscriberCounts(3, 1), complete=True)
    read_ahead = PrefetchStats(chunks=3, rows=300, ended="spool full (1 MiB, at most 1 MiB)")
    report = RunReport(
        run_id="r1", list_id=1, dry_run=False, read=read, read_ahead=read_ahead, plan=plan, applied=applied
    )
    report.guard_trips = [GuardTrip("unsubscribe_ratio", "too many")]
    report.drift = Drift(expected_subscribed=3, actual_subscribed=2)
    report.finish("guard_tripped")
    # When its metrics are recorded
    metrics.clear_metrics()
    record_run_metrics(report)
    emitted = metrics.serialize_metric_set()
    metrics.clear_metrics()
    # Then every metric the template's alarms and dashboard use is emitted, in the stack's namespace
    names = {m["Name"] for m in emitted["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    # The retry function's metrics are its own; the FastLane* ones the ChangeFunction's (below)
    watched = _custom_metrics_in_template() - literal_metric_names(RETRY_HANDLER) - _fast_lane_metrics()
    assert watched, "the template must watch some OwnpageSync metrics"
    assert watched <= names, watched - names
    assert emitted["_aws"]["CloudWatchMetrics"][0]["Namespace"] == NAMESPACE
    assert emitted["GuardTripped"] == [1.0] and emitted["RunSucceeded"] == [0.0]
    assert emitted["SuppressedHARD_BOUNCE"] == [1.0]
    assert emitted["ReadIncomplete"] == [0.0] and emitted["HeldSubscribes"] == [0.0]
    assert emitted["ReadAheadEnded"] == [1.0]
    assert emitted["Drift"] == [1.0]


def test_the_change_function_emits_every_fast_lane_metric_the_stack_watches() -> None:
    # Given the OwnpageSync metrics the template watches that are the fast lane's
    watched = {name for name in _custom_metrics_in_template() if name.startswith("FastLane")}
    # Then a ChangeFunction invocation emits each of them (a name typed twice differently would not be)
    assert watched, "the template must watch the fast lane"
    assert watched <= _fast_lane_metrics(), watched - _fast_lane_metrics()
