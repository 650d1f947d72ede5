"""The one place that turns SourceSettings into a SubscriberSource (and picks the SQL engine)."""

from __future__ import annotations

from ownpage_sync.errors import ConfigurationError
from ownpage_sync.secrets import read_secret_json
from ownpage_sync.settings import SourceSettings
from ownpage_sync.sources.base import SubscriberSource


def open_source(settings: SourceSettings) -> SubscriberSource:
    """The source SOURCE_KIND names. Reads the database secret (cached) but opens no connection:
    SQL sources connect on each read or look-up. Drivers are imported on demand: a DynamoDB
    deployment never loads them."""
    if settings.kind == "dynamodb":
        from ownpage_sync.sources.dynamodb import DynamoDBSource

        return DynamoDBSource(settings)
    if settings.kind not in ("postgresql", "mysql"):
        raise ConfigurationError(f"SOURCE_KIND: unsupported source kind {settings.kind!r}")
    from ownpage_sync.sources.sql import SqlEngine, SqlSource, connection_params

    engine: SqlEngine
    if settings.kind == "postgresql":
        from ownpage_sync.sources.postgresql import PostgresEngine

        engine = PostgresEngine()
    else:
        from ownpage_sync.sources.mysql import MySqlEngine

        engine = MySqlEngine()
    secret = read_secret_json(settings.secret_id) if settings.secret_id else None
    return SqlSource(settings, connection_params(settings, secret), engine)
