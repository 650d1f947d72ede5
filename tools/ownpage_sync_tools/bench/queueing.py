"""How long making operations into RetryQueue messages takes: the work a run does at its deadline for
what it could not write (issue 10 measured ~350 ms of CPU per 5,000 operations before)."""

from __future__ import annotations

import time

from ownpage_sync.models import Action, Operation
from ownpage_sync.ports import Failure
from ownpage_sync.retry_queue import RetryMessage, split_messages

OPERATIONS = 5_000


def queueing_table(repeats: int = 5) -> str:
    """The best of `repeats` CPU times to cut OPERATIONS operations (accented data, every action)
    into SQS-safe message bodies."""
    actions = (Action.SUBSCRIBE, Action.RESUBSCRIBE, Action.UNSUBSCRIBE, Action.UPDATE)
    operations = [
        Operation(
            actions[i % 4],
            f"lecteur.{i:06d}@exemple.fr",
            f"u{i:07d}",
            {"firstname": "Chloé", "city": "Saint-Étienne"},
            "PUBLISHER" if actions[i % 4] is Action.UNSUBSCRIBE else None,
        )
        for i in range(OPERATIONS)
    ]
    message = RetryMessage.for_failure(1, "20250301T060000Z-bench000", operations, Failure("unavailable", "HTTP 503"))
    best, parts = float("inf"), 0
    for _ in range(repeats):
        began = time.process_time()
        parts = len(split_messages(message))
        best = min(best, time.process_time() - began)
    return (
        f"Queueing at the deadline: {OPERATIONS:,} operations made into {parts} SQS message bodies in "
        f"{best * 1000:.0f} ms of CPU (best of {repeats}; sending them is SQS's time)"
    )
