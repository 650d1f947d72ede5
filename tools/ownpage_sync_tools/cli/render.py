"""Human-readable rendering of a run report for the terminal (the JSON form is `report.to_dict()`)."""

from __future__ import annotations

from typing import Any

OUTCOME_TEXT = {
    "converged": "converged: Ownpage now matches the source",
    "dry_run": "dry run: nothing was written",
    "guard_tripped": "GUARD TRIPPED: nothing was written",
    "not_converged": "not converged: some operations were queued for retry or left for the next run",
    "failed": "FAILED",
    "run_in_progress": "another run holds the lease: nothing was done",
}


def _table(rows: list[tuple[str, Any]]) -> str:
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"  {label:<{width}}  {value:>10}" for label, value in rows)


def render_report(report: dict[str, Any]) -> str:
    counts = report.get("counts", {})
    lines = [
        f"run {report['run_id']} on list {report['list_id']} — {OUTCOME_TEXT.get(report['outcome'], report['outcome'])}"
    ]
    source = report.get("source")
    if source:
        lines.append(f"source: {source['description']}")
        lines.append(
            _table(
                [
                    ("rows read", source["rows_read"]),
                    ("subscribers", source["subscribers"]),
                    ("invalid addresses", source["invalid"]),
                    ("duplicate rows", source["duplicates"]),
                    ("collisions", source["collisions"]),
                    ("addresses sharing a guid", source["shared_guid"]),
                ]
            )
        )
        for sample in source.get("samples", [])[:5]:
            lines.append(f"    {sample['where']}: {sample['reason']} ({sample['email']})")
    if "to_subscribe" in counts:
        lines.append("plan:")
        lines.append(
            _table(
                [
                    ("Ownpage rows (all statuses)", counts["ownpage_total"]),
                    ("Ownpage subscribed", counts["ownpage_subscribed"]),
                    ("to subscribe", counts["to_subscribe"]),
                    ("  of which opted in again", counts["resubscribed_by_consent"]),
                    ("to unsubscribe", counts["to_unsubscribe"]),
                    ("to update (data/guid)", counts["to_update"]),
                    ("unchanged", counts["unchanged"]),
                    ("suppressed (not re-subscribed)", counts["suppressed"]),
                ]
            )
        )
        for cause, count in report.get("suppressed_by_cause", {}).items():
            lines.append(f"    suppressed {cause}: {count}")
    guards = report.get("guards", {})
    for trip in guards.get("tripped", []):
        lines.append(f"guard {trip['guard']} tripped: {trip['reason']}")
    for trip in guards.get("overridden", []):
        lines.append(f"guard {trip['guard']} overridden for this run: {trip['reason']}")
    applied = report.get("apply")
    if applied:
        lines.append("applied:")
        lines.append(
            _table(
                [
                    ("subscribed", applied["applied"].get("subscribe", 0)),
                    ("unsubscribed", applied["applied"].get("unsubscribe", 0)),
                    ("updated", applied["applied"].get("update", 0)),
                    ("rejected by Ownpage", applied["rejected"]),
                    ("queued for retry", applied["queued"]),
                    ("left for next run", applied["deferred"]),
                    ("failed", applied["failed"]),
                ]
            )
        )
    drift = report.get("drift")
    if drift and drift["difference"]:
        lines.append(
            f"drift: Ownpage has {drift['actual_subscribed']} subscribed, the plan expected {drift['expected_subscribed']}"
        )
    if report.get("error"):
        lines.append(f"error ({report['error']['kind']}): {report['error']['message']}")
    lines.append(f"took {report['duration_seconds']:.1f}s")
    return "\n".join(lines)
