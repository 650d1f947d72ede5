"""Which addresses the last complete read of the list found in Ownpage under another spelling.

An exact search finds a row spelled as its canonical key (every row this project creates is), and
the spellings the source holds. On an Ownpage that keeps and matches spellings exactly
(ownpage-api.md: unknown) it cannot find a row spelled `Ann@X.com` when asked for `ann@x.com`, so a
search that shows nothing does not prove an address is new; a subscribe by omission could create a
second row beside a suppressed one. A complete read sees every spelling: this is what it saw, for
the fast lane to prove an address new without reading the whole list again.

The same proof covers a `subscribed: true`: a search that found the row spelled as the key cannot
have missed a suppressed twin of it when the read saw no other spelling. The fast lane and the retry
path both ask (`spelling_proof`).

Kept as 8-byte BLAKE2b digests of the keys (never the addresses), in the run table. A list where
more keys than fit in one item have other spellings keeps no digests: nothing is proven new then.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from ownpage_sync.errors import OwnpageSyncError

if TYPE_CHECKING:  # ports.py imports this module for SpellingSnapshot
    from ownpage_sync.ports import RunLedger

log = logging.getLogger(__name__)

MAX_DIGESTS = 40_000  # 8 bytes each: one DynamoDB item (400 KB) with room to spare


def digest(key: str) -> int:
    """A stable 64-bit digest of a canonical key (the same in every process, unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class SpellingSnapshot:
    """The keys a complete read found under a spelling other than the key itself, as digests
    (`None`: too many to keep); and `carried`: keys the read before saw so, this one not at all (a
    row it may have skipped: counts can be fooled, docs/safety.md §3), kept for one more run."""

    run_id: str
    read_at: datetime
    digests: frozenset[int] | None
    carried: frozenset[int] = frozenset()

    @classmethod
    def of_keys(
        cls, run_id: str, read_at: datetime, keys: Iterable[str], carried: Iterable[str] = ()
    ) -> SpellingSnapshot:
        digests = frozenset(digest(key) for key in keys)
        kept = frozenset(digest(key) for key in carried) - digests
        if len(digests) + len(kept) > MAX_DIGESTS:
            return cls(run_id, read_at, None)
        return cls(run_id, read_at, digests, kept)

    def proves_new(self, key: str, now: datetime, max_age_seconds: float) -> bool:
        """Whether Ownpage holds the key under no spelling but the key itself: this read is recent
        enough, and it saw no other spelling (nor did the read before, for a key this one missed).
        Then an address Ownpage's exact search did not show is new, and a row it showed is the only one."""
        if self.digests is None or (now - self.read_at).total_seconds() > max_age_seconds:
            return False
        value = digest(key)
        return value not in self.digests and value not in self.carried

    def saw_respelled(self, key: str) -> bool:
        """Whether this read itself saw the key under another spelling (not `carried`: a key is held
        once for a row the next read does not show, not for ever)."""
        return self.digests is not None and digest(key) in self.digests

    def to_bytes(self) -> bytes:
        return b"" if self.digests is None else _packed(self.digests)

    def carried_bytes(self) -> bytes:
        return _packed(self.carried)

    @staticmethod
    def digests_from(data: bytes, complete: bool) -> frozenset[int] | None:
        if not complete:
            return None
        return frozenset(int.from_bytes(data[i : i + 8], "big") for i in range(0, len(data) - len(data) % 8, 8))


def _packed(digests: frozenset[int]) -> bytes:
    return b"".join(value.to_bytes(8, "big") for value in sorted(digests))


def last_snapshot(ledger: RunLedger | None) -> SpellingSnapshot | None:
    """The last complete read's snapshot; None when there is no run table, none was kept, or it
    cannot be read (logged: what relies on it then proves nothing new)."""
    if ledger is None:
        return None
    try:
        return ledger.spellings()
    except OwnpageSyncError as exc:
        log.warning("the last read's spellings could not be read", extra={"error": str(exc)})
        return None


def spelling_proof(ledger: RunLedger | None, now: datetime, max_age_seconds: float) -> Callable[[str], bool]:
    """`proves_new` of the last complete read's snapshot; never proven when there is none, it is too
    old, or it cannot be read (subscribes are then held)."""
    snapshot = last_snapshot(ledger)
    if snapshot is None:
        return lambda key: False
    return lambda key: snapshot.proves_new(key, now, max_age_seconds)
