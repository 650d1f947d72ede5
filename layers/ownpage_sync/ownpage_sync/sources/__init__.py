"""Subscriber sources: adapters that read the publisher's database, and the snapshot they feed."""

from ownpage_sync.sources.base import RawSubscriber, SubscriberSource
from ownpage_sync.sources.snapshot import SourceProblem, SourceSnapshot, build_snapshot, lookup_records

__all__ = [
    "RawSubscriber",
    "SourceProblem",
    "SourceSnapshot",
    "SubscriberSource",
    "build_snapshot",
    "lookup_records",
]
