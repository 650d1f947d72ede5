"""Keeping the run lease while a run is alive, so that two runs never write at the same time.

A heartbeat renews the lease well before it ends; the run's deadline ends a margin before the lease
does. If a renewal is refused (another run took the lease) or cannot reach the run table, the lease
simply runs out and the run stops calling Ownpage before it ends: writing after the lease is over is
what must never happen, a renewal failing is only a reason to stop.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from ownpage_sync.errors import OwnpageSyncError, RunInProgress
from ownpage_sync.ports import RunLedger

log = logging.getLogger(__name__)

# Stop this long before the lease ends: clocks of the run table and this host may disagree a little,
# and a write in flight must be answered before another run may start.
LEASE_MARGIN = 30.0


class LeaseKeeper:
    """The run's lease, renewed every third of its length by a background thread."""

    def __init__(
        self,
        ledger: RunLedger,
        run_id: str,
        lease_seconds: int,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ):
        self.ledger, self.run_id, self.lease_seconds, self._clock = ledger, run_id, lease_seconds, clock
        self.lease_until = ledger.acquire(run_id, lease_seconds)
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def remaining(self) -> float:
        """Seconds the run may still call Ownpage under this lease (0 once it is lost)."""
        if self.lost:
            return 0.0
        return max(0.0, (self.lease_until - self._clock()).total_seconds() - LEASE_MARGIN)

    def renew(self) -> None:
        """Extend the lease now. A refusal marks it lost; a transient failure leaves it to run out."""
        if self.lost:
            return
        try:
            self.lease_until = self.ledger.acquire(self.run_id, self.lease_seconds)
        except RunInProgress as exc:
            self.lost = True
            log.error("run lease lost to another run: no more calls", extra={"run_id": self.run_id, "reason": str(exc)})
        except OwnpageSyncError as exc:
            log.warning(
                "run lease could not be renewed; the run stops before it ends",
                extra={"run_id": self.run_id, "error": str(exc), "seconds_left": round(self.remaining())},
            )

    def start(self) -> LeaseKeeper:
        interval = max(1.0, self.lease_seconds / 3)

        def beat() -> None:
            while not self._stop.wait(interval):
                self.renew()

        self._thread = threading.Thread(target=beat, name="run-lease-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
