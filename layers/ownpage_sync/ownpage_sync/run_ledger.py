"""One run at a time, and the history of runs, in one small DynamoDB table (pk, sk; TTL `expires_at`).

Items:
- the lease, pk="lease" sk="lease": run_id, acquired_at, lease_until (epoch seconds). Taken with a
  conditional put that only succeeds when no lease exists or the existing one has expired, so two runs
  racing cannot both win. DynamoDB deletes expired items lazily (up to days later), so the condition
  compares `lease_until` with the clock itself and never relies on TTL.
- one row per run, pk="run" sk="<ISO start, UTC>#<run id>": written with outcome "started" when the
  lease is taken and overwritten with the final outcome on release. A run that died without releasing
  keeps "started"; `history()` shows it as "running" while its lease could still be live and as
  "crashed" once that lease has expired. Rows expire (TTL) after HISTORY_DAYS.
- what the last complete read saw of other spellings (spellings.py), pk="spellings" sk="spellings":
  run_id, read_at, digests (binary, 8 bytes each), complete (false: too many to keep).
- the fast lane's writes per clock hour, pk="fast-lane-writes" sk="<YYYY-MM-DDTHH>" (UTC): writes,
  added to atomically, on the condition that the hour's budget still has room; expires after two days.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ownpage_sync import aws
from ownpage_sync.errors import ConfigurationError, OwnpageSyncError, RunInProgress, RunLedgerUnavailable
from ownpage_sync.ports import RunRecord
from ownpage_sync.spellings import SpellingSnapshot

log = logging.getLogger(__name__)

LEASE_KEY = {"pk": {"S": "lease"}, "sk": {"S": "lease"}}
SPELLINGS_KEY = {"pk": {"S": "spellings"}, "sk": {"S": "spellings"}}
FAST_LANE_WRITES_PK = "fast-lane-writes"
RUN_PK = "run"
HISTORY_DAYS = 90
QUERY_PAGE_SIZE = 100
# A stale lease item is kept a day past its expiry so an operator can still see who held it.
LEASE_TTL_GRACE = timedelta(days=1)

STARTED = "started"  # stored while a run is going (or after it died without releasing)
RUNNING = "running"  # reported for a "started" row whose lease is still live
CRASHED = "crashed"  # reported for a "started" row whose lease expired without a release
CONVERGED = "converged"  # the only outcome whose source count feeds the source-drop guard

_NOT_FOUND = ("ResourceNotFoundException",)
_DENIED = ("AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException")
_CONDITION_FAILED = "ConditionalCheckFailedException"


@dataclass(frozen=True)
class Lease:
    """Who holds the run lease, and until when."""

    run_id: str
    acquired_at: datetime | None
    lease_until: datetime

    def seconds_left(self, now: datetime) -> float:
        return max(0.0, (self.lease_until - now).total_seconds())


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    # Fixed width (always microseconds, always Z) so sort keys order chronologically as strings.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _epoch(moment: datetime) -> str:
    return f"{moment.timestamp():.3f}"


def _epoch_int(moment: datetime) -> str:
    return str(int(moment.timestamp()))


def _from_epoch(value: str) -> datetime:
    return datetime.fromtimestamp(float(Decimal(value)), UTC)


class DynamoDbRunLedger:
    """`ports.RunLedger` on the run table. Raises ConfigurationError for a missing table or denied
    access, RunLedgerUnavailable for transient trouble, RunInProgress when another run holds the lease.
    `clock` must return timezone-aware datetimes (tests inject one to age a lease)."""

    def __init__(self, table_name: str, client: Any = None, clock: Callable[[], datetime] = _utc_now):
        if client is None:
            client = aws.client(
                "dynamodb", connect_timeout=5, read_timeout=10, retries={"mode": "standard", "max_attempts": 4}
            )
        self.table_name = table_name
        self._client = client
        self._clock = clock
        self._started: dict[str, tuple[str, datetime]] = {}  # run id -> (history sort key, start time)

    # -- the lease ---------------------------------------------------------------------------------

    def acquire(self, run_id: str, lease_seconds: int) -> datetime:
        """Take the lease for `lease_seconds` and return when it ends, or raise RunInProgress naming
        the live holder. The same run id may take its own lease again: that is how a live run renews it
        (and a retried invocation of the same run resumes)."""
        now = self._clock()
        lease_until = now + timedelta(seconds=lease_seconds)
        try:
            self._call(
                "PutItem",
                self._client.put_item,
                TableName=self.table_name,
                Item={
                    **LEASE_KEY,
                    "run_id": {"S": run_id},
                    "acquired_at": {"S": _iso(now)},
                    "lease_until": {"N": _epoch(lease_until)},
                    "expires_at": {"N": _epoch_int(lease_until + LEASE_TTL_GRACE)},
                },
                ConditionExpression=(
                    "attribute_not_exists(pk) OR attribute_not_exists(lease_until) "
                    "OR lease_until < :now OR run_id = :run_id"
                ),
                ExpressionAttributeValues={":now": {"N": _epoch(now)}, ":run_id": {"S": run_id}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except _ConditionFailed as failed:
            holder = _lease_from_item(failed.item) if failed.item else self.lease()
            if holder is None:  # released between our put and our look: the next run will get it
                raise RunInProgress(
                    f"run {run_id} could not take the lease: another run held it a moment ago; nothing was done"
                ) from None
            left = holder.seconds_left(now)
            log.warning(
                "run lease held by another run",
                extra={"run_id": run_id, "holder_run_id": holder.run_id, "lease_seconds_left": round(left)},
            )
            raise RunInProgress(
                f"run {holder.run_id} holds the lease until {_iso(holder.lease_until)} "
                f"({_duration(left)} left); run {run_id} exits without calls"
            ) from None
        if run_id in self._started:  # extended by the same run: its history row follows the lease
            sort_key, started_at = self._started[run_id]
            self._put_history(sort_key, run_id, started_at, STARTED, lease_until={"N": _epoch(lease_until)})
            log.info("run lease extended", extra={"run_id": run_id, "lease_seconds": lease_seconds})
            return lease_until
        try:
            self._record_start(run_id, now, lease_until)
        except OwnpageSyncError:
            # The caller sees a failed acquire and will not release: free the lease rather than block
            # every run until it expires.
            self._started.pop(run_id, None)
            with contextlib.suppress(OwnpageSyncError):
                self._delete_lease(run_id)
            raise
        log.info("run lease acquired", extra={"run_id": run_id, "lease_seconds": lease_seconds})
        return lease_until

    def lease(self) -> Lease | None:
        """The lease item as stored (it may have expired: compare `lease_until` with the clock)."""
        response = self._call(
            "GetItem", self._client.get_item, TableName=self.table_name, Key=LEASE_KEY, ConsistentRead=True
        )
        item = response.get("Item")
        return _lease_from_item(item) if item else None

    def release(self, run_id: str, outcome: str, counts: Mapping[str, int]) -> None:
        """Record the run's outcome and counts in its history row, then free the lease if still ours.

        The history row is written even when the lease was lost (expired and taken by another run):
        that overlap is logged as a warning, not raised, so the run's own outcome is never masked."""
        now = self._clock()
        sort_key, started_at = self._history_key(run_id, now)
        history_error: OwnpageSyncError | None = None
        try:
            self._put_history(
                sort_key,
                run_id,
                started_at,
                outcome,
                ended_at={"S": _iso(now)},
                counts={"M": {name: {"N": str(int(value))} for name, value in counts.items()}},
            )
        except OwnpageSyncError as exc:
            history_error = exc  # still free the lease below: a stuck lease would block the next runs
        if not self._delete_lease(run_id):
            log.warning("run lease was no longer held by this run at release", extra={"run_id": run_id})
        self._started.pop(run_id, None)
        if history_error is not None:
            raise history_error
        log.info("run lease released", extra={"run_id": run_id, "outcome": outcome})

    # -- history -----------------------------------------------------------------------------------

    def history(self, limit: int = 20) -> list[RunRecord]:
        """The last `limit` runs, newest first."""
        if limit < 1:
            return []
        now = self._clock()
        records: list[RunRecord] = []
        for item in self._runs_newest_first(page_size=min(limit, QUERY_PAGE_SIZE)):
            records.append(_record_from_item(item, now))
            if len(records) >= limit:
                break
        return records

    def last_converged_start(self) -> datetime | None:
        """When the newest converged run started."""
        for item in self._runs_newest_first(page_size=QUERY_PAGE_SIZE, outcome=CONVERGED):
            started = item.get("started_at", {}).get("S")
            if started:
                return _parse_iso(started)
        return None

    def last_successful_source_count(self) -> int | None:
        """The `source` count of the newest converged run (older converged runs if that one lacks it)."""
        for item in self._runs_newest_first(page_size=QUERY_PAGE_SIZE, outcome=CONVERGED):
            source = item.get("counts", {}).get("M", {}).get("source", {}).get("N")
            if source is not None:
                return int(Decimal(source))
        return None

    # -- the last complete read's other spellings ---------------------------------------------------

    def put_spellings(self, snapshot: SpellingSnapshot) -> None:
        item = {
            **SPELLINGS_KEY,
            "run_id": {"S": snapshot.run_id},
            "read_at": {"S": _iso(snapshot.read_at)},
            "complete": {"BOOL": snapshot.digests is not None},
            "digests": {"B": snapshot.to_bytes()},
            "carried": {"B": snapshot.carried_bytes()},
        }
        self._call("PutItem", self._client.put_item, TableName=self.table_name, Item=item)

    def spellings(self) -> SpellingSnapshot | None:
        answer = self._call(
            "GetItem", self._client.get_item, TableName=self.table_name, Key=SPELLINGS_KEY, ConsistentRead=True
        )
        item = answer.get("Item")
        if not item:
            return None
        digests = SpellingSnapshot.digests_from(item["digests"]["B"], item["complete"]["BOOL"])
        carried = SpellingSnapshot.digests_from(item.get("carried", {}).get("B", b""), True) or frozenset()
        return SpellingSnapshot(item["run_id"]["S"], _parse_iso(item["read_at"]["S"]), digests, carried)

    # -- the fast lane's hourly budget --------------------------------------------------------------

    def reserve_fast_lane_writes(self, at: datetime, writes: int, budget: int) -> bool:
        """Count `writes` against the fast lane's `budget` for the clock hour of `at` (UTC), all or
        none: False, and nothing counted, when the hour's writes would pass the budget. Atomic: two
        invocations at once cannot both take its last room."""
        if writes > budget:
            return False
        hour = at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        try:
            self._call(
                "UpdateItem",
                self._client.update_item,
                TableName=self.table_name,
                Key={"pk": {"S": FAST_LANE_WRITES_PK}, "sk": {"S": f"{hour:%Y-%m-%dT%H}"}},
                UpdateExpression="ADD #writes :writes SET expires_at = :expires",
                ConditionExpression="attribute_not_exists(#writes) OR #writes <= :room",
                ExpressionAttributeNames={"#writes": "writes"},
                ExpressionAttributeValues={
                    ":writes": {"N": str(writes)},
                    ":room": {"N": str(budget - writes)},
                    ":expires": {"N": _epoch_int(hour + timedelta(days=2))},
                },
            )
        except _ConditionFailed:
            return False
        return True

    # -- internals ---------------------------------------------------------------------------------

    def _record_start(self, run_id: str, now: datetime, lease_until: datetime) -> None:
        sort_key = f"{_iso(now)}#{run_id}"
        self._started[run_id] = (sort_key, now)
        self._put_history(sort_key, run_id, now, STARTED, lease_until={"N": _epoch(lease_until)})

    def _put_history(
        self, sort_key: str, run_id: str, started_at: datetime, outcome: str, **attributes: dict[str, Any]
    ) -> None:
        """One run's history row (the start, then the end, under the same key); expires after HISTORY_DAYS."""
        self._call(
            "PutItem",
            self._client.put_item,
            TableName=self.table_name,
            Item={
                "pk": {"S": RUN_PK},
                "sk": {"S": sort_key},
                "run_id": {"S": run_id},
                "started_at": {"S": _iso(started_at)},
                "outcome": {"S": outcome},
                **attributes,
                "expires_at": {"N": _epoch_int(self._clock() + timedelta(days=HISTORY_DAYS))},
            },
        )

    def _delete_lease(self, run_id: str) -> bool:
        """Delete the lease if `run_id` holds it; False when it did not (expired and taken, or gone)."""
        try:
            self._call(
                "DeleteItem",
                self._client.delete_item,
                TableName=self.table_name,
                Key=LEASE_KEY,
                ConditionExpression="run_id = :run_id",
                ExpressionAttributeValues={":run_id": {"S": run_id}},
            )
        except _ConditionFailed:
            return False
        return True

    def _history_key(self, run_id: str, now: datetime) -> tuple[str, datetime]:
        """The sort key and start time of this run's history row (another ledger object may have
        acquired: fall back to the lease item, then to a row of its own starting now)."""
        if run_id in self._started:
            return self._started[run_id]
        holder = self.lease()
        if holder is not None and holder.run_id == run_id and holder.acquired_at is not None:
            return f"{_iso(holder.acquired_at)}#{run_id}", holder.acquired_at
        log.warning("releasing a run whose start was not recorded", extra={"run_id": run_id})
        return f"{_iso(now)}#{run_id}", now

    def _runs_newest_first(self, page_size: int, outcome: str | None = None) -> Iterator[dict[str, Any]]:
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": {"S": RUN_PK}},
            "ScanIndexForward": False,
            "Limit": page_size,
        }
        if outcome is not None:
            # Limit applies before the filter: pages may come back short or empty, so keep paging.
            request["FilterExpression"] = "#outcome = :outcome"
            request["ExpressionAttributeNames"] = {"#outcome": "outcome"}
            request["ExpressionAttributeValues"][":outcome"] = {"S": outcome}
        while True:
            response = self._call("Query", self._client.query, **request)
            yield from response.get("Items", [])
            last_key = response.get("LastEvaluatedKey")
            if not last_key:
                return
            request["ExclusiveStartKey"] = last_key

    def _call(self, action: str, method: Callable[..., dict[str, Any]], **request: Any) -> dict[str, Any]:
        """One DynamoDB call, its errors turned into the project's (a failed condition into _ConditionFailed)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return method(**request)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == _CONDITION_FAILED:
                raise _ConditionFailed(exc.response.get("Item")) from exc
            if code in _NOT_FOUND:
                raise ConfigurationError(
                    f"RUN_TABLE: DynamoDB table {self.table_name!r} does not exist in this account and region "
                    f"({action} failed)"
                ) from exc
            if code in _DENIED:
                raise ConfigurationError(
                    f"RUN_TABLE: access to DynamoDB table {self.table_name!r} was denied "
                    f"(dynamodb:{action}, {code}); check the function's or your credentials' policy"
                ) from exc
            raise RunLedgerUnavailable(
                f"DynamoDB {action} on run table {self.table_name!r} failed: {code or 'unknown error'}"
            ) from exc
        except BotoCoreError as exc:
            raise RunLedgerUnavailable(
                f"DynamoDB {action} on run table {self.table_name!r} failed: {type(exc).__name__}"
            ) from exc


class _ConditionFailed(Exception):
    """Internal: a conditional write lost; `item` is the existing item when DynamoDB returned it."""

    def __init__(self, item: Mapping[str, Any] | None):
        super().__init__("conditional check failed")
        self.item = item


def _lease_from_item(item: Mapping[str, Any]) -> Lease:
    acquired = item.get("acquired_at", {}).get("S")
    return Lease(
        run_id=item.get("run_id", {}).get("S", "?"),
        acquired_at=_parse_iso(acquired) if acquired else None,
        lease_until=_from_epoch(item.get("lease_until", {}).get("N", "0")),
    )


def _record_from_item(item: Mapping[str, Any], now: datetime) -> RunRecord:
    outcome = item.get("outcome", {}).get("S", "?")
    if outcome == STARTED:
        lease_until = item.get("lease_until", {}).get("N")
        live = lease_until is not None and _from_epoch(lease_until) > now
        outcome = RUNNING if live else CRASHED
    ended = item.get("ended_at", {}).get("S")
    counts = item.get("counts", {}).get("M", {})
    return RunRecord(
        run_id=item.get("run_id", {}).get("S", "?"),
        started_at=_parse_iso(item["started_at"]["S"]),
        ended_at=_parse_iso(ended) if ended else None,
        outcome=outcome,
        counts={name: int(Decimal(value["N"])) for name, value in counts.items() if "N" in value},
    )


def _duration(seconds: float) -> str:
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
