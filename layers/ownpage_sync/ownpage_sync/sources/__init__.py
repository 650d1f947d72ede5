"""Subscriber sources: adapters that read the publisher's database (factory.open_source builds one)."""

from ownpage_sync.sources.base import RawSubscriber, SourceLookup, SourceShape, SubscriberSource

__all__ = ["RawSubscriber", "SourceLookup", "SourceShape", "SubscriberSource"]
