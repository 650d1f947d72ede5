"""Ownpage's Lists API: `client` (the port's implementation), `transport` (one call: token renewal,
retries, the deadline) and `mapping` (answers as the project's values)."""

from ownpage_sync.ownpage.client import OwnpageClient
from ownpage_sync.ownpage.transport import TokenCache, TransportError

__all__ = ["OwnpageClient", "TokenCache", "TransportError"]
