"""Reading the whole Ownpage list, and proving the read complete against Ownpage's own counts.

Ownpage documents neither the order of its pages nor what happens when the list changes while it is
paged, so a read can skip rows or see others twice. The rows read are compared with `/count` before
and after, in total, in unsubscribed rows (the ones a missed row would cost: a suppression lost,
and a total that is off by a few cannot hide that) and in unsubscribed rows cause by cause (a
deleted row of one cause cannot stand for a skipped one of another); short of any, the list is read again
(bounded) and the passes are folded together. Rows Ownpage counts but the sync reads otherwise
still count as seen, each distinct spelling once (a row read again after it moved is one row): a
row without a usable address (no write can concern it) in the total, and among the unsubscribed
rows unless it says `"subscribed": true`; a bare row (no `subscribed` field, read as subscribed)
among the unsubscribed rows, as Ownpage may count it. Otherwise one such row would hold back every
subscribe, run after run.
A server that ignores `status=all` gets a pass of `status=unsubscribed`. A read that stays short is
reported: the plan then holds back every subscribe (planner.finish).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import ReadOutOfTime
from ownpage_sync.index import STATE_OF_CAUSE, OwnpageStats, State
from ownpage_sync.planner import Planner
from ownpage_sync.ports import OwnpageLists, ProgressReporter, SubscriberCounts, stage

log = logging.getLogger(__name__)


@dataclass
class ReadProof:
    counts_before: SubscriberCounts
    counts_after: SubscriberCounts | None = None
    passes: list[str] = field(default_factory=list)  # the status each pass asked for
    rows_seen: int = 0  # distinct spellings read, every pass together
    unsubscribed_seen: int = 0  # of them, first read as unsubscribed
    unusable_seen: int = 0  # distinct spellings of rows without a usable address
    unusable_unsubscribed_seen: int = 0  # of them, not saying `"subscribed": true`
    bare_seen: int = 0  # distinct spellings of rows without a `subscribed` field (read as subscribed)
    # Unsubscribed rows of a documented cause the counts vouch for and the read did not show as such,
    # beyond what rows of no readable cause can stand for (cause_shortfall).
    cause_shortfall: int = 0
    complete: bool = False

    @property
    def expected(self) -> int:
        after = self.counts_after.total if self.counts_after is not None else 0
        return max(self.counts_before.total, after)

    @property
    def expected_unsubscribed(self) -> int:
        """Unsubscribed rows the read must show: the lower of the two counts (a reader unsubscribing
        during the read may have been read while still subscribed), each taken as the more of its
        `unsubscribed` and its `cause` breakdown."""
        if self.counts_after is None:
            return self.counts_before.unsubscribed_at_least
        return min(self.counts_before.unsubscribed_at_least, self.counts_after.unsubscribed_at_least)

    def to_dict(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "passes": self.passes,
            "rows_seen": self.rows_seen,
            "count_before": self.counts_before.total,
            "count_after": self.counts_after.total if self.counts_after is not None else None,
            "unsubscribed_seen": self.unsubscribed_seen,
            "unsubscribed_expected": self.expected_unsubscribed,
            "unusable_seen": self.unusable_seen,
            "unusable_unsubscribed_seen": self.unusable_unsubscribed_seen,
            "bare_seen": self.bare_seen,
            "cause_shortfall": self.cause_shortfall,
        }


def cause_shortfall(before: SubscriberCounts, after: SubscriberCounts, stats: OwnpageStats, wildcards: int) -> int:
    """How many unsubscribed rows of a documented cause the read is short of, cause by cause.

    For each cause the counts break down, the lower of the two counts (as for the total) is compared
    with the rows first read unsubscribed for that cause. The total alone can be made whole by rows
    of another cause: a bounce deleted after it was read shifts the offsets past a reader's "no", and
    the count of unsubscribed rows still adds up. Rows read with no documented cause (an unknown or
    missing one, an unreadable status), bare rows and rows without an address may be any cause:
    `wildcards` of them fill gaps first. A count without a breakdown proves nothing here (0)."""
    if not before.causes or not after.causes:
        return 0
    short = 0
    for cause, state in STATE_OF_CAUSE.items():
        counted = min(_by_cause(before, cause), _by_cause(after, cause))
        short += max(0, counted - stats.seen_by_state[state])
    return max(0, short - wildcards - stats.seen_by_state[State.UNKNOWN])


def _by_cause(counts: SubscriberCounts, cause: str) -> int:
    """The count's rows of a cause, its breakdown keys read as the read's causes are (trimmed, upper case)."""
    return sum(number for name, number in counts.causes.items() if str(name).strip().upper() == cause)


def read_list(
    ownpage: OwnpageLists,
    planner: Planner,
    list_id: int,
    counts: SubscriberCounts,
    max_passes: int,
    progress: ProgressReporter | None = None,
    deadline: Deadline | None = None,
) -> ReadProof:
    """Fold the whole list into `planner`, reading again while short of the count (at most
    `max_passes` reads). `counts` is the count taken just before (the run's fail-fast check).
    Raises ReadOutOfTime once `deadline` (the end of the run's reads) has passed: a partial read is
    never planned from."""
    proof = ReadProof(counts_before=counts)
    # Hashes of the addresses of nothing but white space, every pass together; of those not subscribed.
    blank: set[int] = set()
    blank_unsubscribed: set[int] = set()
    status = "all"
    latest = counts
    for number in range(1, max_passes + 1):
        expected = latest.unsubscribed if status == "unsubscribed" else latest.total
        with stage(progress, f"reading Ownpage ({status}, pass {number})", expected) as advance:
            for page in ownpage.read_pages(
                list_id, status=status, fields=planner.index.fields, expected_rows=expected, progress=advance
            ):
                planner.add_ownpage(page)
                for spelling, subscribed in getattr(page, "blank", ()):
                    blank.add(hash(spelling))
                    if not subscribed:
                        blank_unsubscribed.add(hash(spelling))
                if deadline is not None and deadline.expired():
                    raise ReadOutOfTime(
                        f"the Ownpage list was not read in the time the run has ({planner.ownpage_stats().rows} of about "
                        f"{expected} rows, pass {number}): nothing was written"
                    )
        proof.passes.append(status)
        latest = ownpage.count(list_id)
        proof.counts_after = latest
        stats = planner.ownpage_stats()
        proof.rows_seen = stats.rows
        proof.unsubscribed_seen = stats.seen_unsubscribed
        proof.unusable_seen = len(blank | stats.keyless)
        proof.unusable_unsubscribed_seen = len(blank_unsubscribed | stats.keyless_unsubscribed)
        proof.bare_seen = len(stats.bare)
        wildcards = proof.bare_seen + proof.unusable_unsubscribed_seen
        proof.cause_shortfall = cause_shortfall(counts, latest, stats, wildcards)
        if (
            stats.rows + proof.unusable_seen >= proof.expected
            and stats.seen_unsubscribed + wildcards >= proof.expected_unsubscribed
            and proof.cause_shortfall == 0
        ):
            proof.complete = True
            break
        log.warning(
            "Ownpage read shorter than its count; reading again",
            extra={
                "list_id": list_id,
                "pass": number,
                "status": status,
                "rows_seen": stats.rows,
                "count_before": counts.total,
                "count_after": latest.total,
                "unsubscribed_seen": stats.seen_unsubscribed,
                "unsubscribed_counted": latest.unsubscribed,
                "cause_shortfall": proof.cause_shortfall,
            },
        )
        # No unsubscribed row at all although Ownpage counts some: the server answers `all` with the
        # subscribed rows only; ask for the unsubscribed ones by name.
        unsubscribed_missing = stats.seen_unsubscribed == 0 and latest.unsubscribed > 0
        status = "unsubscribed" if unsubscribed_missing and status == "all" else "all"
    if not proof.complete:
        log.error(
            "Ownpage read could not be proven complete: every subscribe is held",
            extra={"list_id": list_id, "passes": len(proof.passes), **proof.to_dict()},
        )
    else:
        log.info(
            "Ownpage list read", extra={"list_id": list_id, **proof.to_dict(), "repeated_rows": stats.repeated_rows}
        )
    return proof
