"""Builds the adapters from settings: the only place that knows which class implements which port."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ownpage_sync.deadline import Deadline
from ownpage_sync.settings import Settings
from ownpage_sync.sync import SyncServices

if TYPE_CHECKING:
    from ownpage_sync.ownpage import OwnpageClient
    from ownpage_sync.ports import FailedOperationsSink, RunLedger
    from ownpage_sync.sources.base import SubscriberSource


def ownpage_client(settings: Settings, deadline: Deadline) -> OwnpageClient:
    from ownpage_sync.ownpage import OwnpageClient
    from ownpage_sync.secrets import ownpage_credentials

    return OwnpageClient(settings.ownpage, ownpage_credentials(settings.ownpage), deadline)


def subscriber_source(settings: Settings) -> SubscriberSource:
    from ownpage_sync.sources.factory import open_source

    return open_source(settings.source)


def retry_queue(settings: Settings) -> FailedOperationsSink | None:
    if settings.retry_queue_url is None:
        return None
    from ownpage_sync.retry_queue import SqsRetryQueue

    return SqsRetryQueue(settings.retry_queue_url)


def run_ledger(settings: Settings) -> RunLedger | None:
    if settings.run_table is None:
        return None
    from ownpage_sync.run_ledger import DynamoDbRunLedger

    return DynamoDbRunLedger(settings.run_table)


def sync_services(settings: Settings, deadline: Deadline) -> SyncServices:
    """Every adapter a sync run needs, built from the settings (secrets read here, cached)."""
    return SyncServices(
        source=subscriber_source(settings),
        ownpage=ownpage_client(settings, deadline),
        sink=retry_queue(settings),
        ledger=run_ledger(settings),
    )
