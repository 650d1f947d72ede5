"""Builds the adapters from settings: the only place that knows which class implements which port."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ownpage_sync.deadline import Deadline
from ownpage_sync.settings import Settings
from ownpage_sync.sync import SyncServices

if TYPE_CHECKING:
    from ownpage_sync.ownpage import OwnpageClient
    from ownpage_sync.ports import FailedOperationsSink, RunLedger
    from ownpage_sync.retrying import RetryTarget
    from ownpage_sync.sources.base import SubscriberSource

# Seconds of the Lambda's time kept after the retry queue's last send, to report and flush metrics.
# Writes to Ownpage stop earlier (DEADLINE_MARGIN_SECONDS): the time between is for queueing.
QUEUE_MARGIN = 5.0


def ownpage_client(settings: Settings, deadline: Deadline) -> OwnpageClient:
    from ownpage_sync.ownpage import OwnpageClient
    from ownpage_sync.secrets import ownpage_credentials

    return OwnpageClient(settings.ownpage, ownpage_credentials(settings.ownpage), deadline)


def subscriber_source(settings: Settings) -> SubscriberSource:
    from ownpage_sync.sources.factory import open_source

    return open_source(settings.source)


def retry_queue(settings: Settings, deadline: Deadline | None = None) -> FailedOperationsSink | None:
    if settings.retry_queue_url is None:
        return None
    from ownpage_sync.retry_queue import SqsRetryQueue

    return SqsRetryQueue(settings.retry_queue_url, deadline=deadline)


def run_ledger(settings: Settings) -> RunLedger | None:
    if settings.run_table is None:
        return None
    from ownpage_sync.run_ledger import DynamoDbRunLedger

    return DynamoDbRunLedger(settings.run_table)


def sync_services(settings: Settings, deadline: Deadline, queue_deadline: Deadline | None = None) -> SyncServices:
    """Every adapter a sync run needs, built from the settings (secrets read here, cached)."""
    return SyncServices(
        source=subscriber_source(settings),
        ownpage=ownpage_client(settings, deadline),
        sink=retry_queue(settings, queue_deadline),
        ledger=run_ledger(settings),
    )


def retry_target(settings: Settings) -> RetryTarget:
    """The retry path's adapters, for the life of a container: one connection pool and one token,
    and a client per invocation bounded by that invocation's deadline."""
    from ownpage_sync.ownpage import OwnpageClient, TokenCache
    from ownpage_sync.ownpage.transport import new_session
    from ownpage_sync.retrying import RetryTarget
    from ownpage_sync.secrets import ownpage_credentials

    credentials = ownpage_credentials(settings.ownpage)
    session = new_session(settings.ownpage.read_concurrency + 2)
    tokens = TokenCache()

    def client(deadline: Deadline) -> OwnpageClient:
        return OwnpageClient(settings.ownpage, credentials, deadline, session=session, tokens=tokens)

    return RetryTarget(
        source=subscriber_source(settings),
        ownpage=client,
        list_id=settings.ownpage.list_id,
        policy=settings.policy,
        batch_size=settings.ownpage.batch_size,
        ledger=run_ledger(settings),
        proof_max_age=settings.fast_lane_proof_max_age,
        search_finds_every_spelling=settings.fast_lane_new_addresses == "subscribe",
    )
