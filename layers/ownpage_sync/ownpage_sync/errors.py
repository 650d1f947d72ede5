"""The project's exceptions: transient ones are retried or queued, permanent ones are reported.

No message built here may carry an email address, a token or a credential.
"""

from __future__ import annotations

from typing import Any


class OwnpageSyncError(Exception):
    """Base of every error this project raises on purpose."""

    transient = False


class ConfigurationError(OwnpageSyncError):
    """A setting is missing or malformed; raised before any call to Ownpage."""


class SourceError(OwnpageSyncError):
    """The subscriber source could not be read (broken query, unreachable database, ...)."""


class SourceMisconfigured(SourceError):
    """The source answered, and what it said is that a setting is wrong: the table, index, database or
    column does not exist, the credentials or the permissions are refused, the query does not parse or
    writes. Retrying will not help; the report's error kind is `source_configuration` (CLI exit 2)."""


class OwnpageError(OwnpageSyncError):
    """A call to Ownpage failed. `kind` is a short stable label used in metrics and SQS messages."""

    kind = "ownpage_error"
    attempts = 1  # how many HTTP calls were made before giving up (set by the client)

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason if status is None else f"HTTP {status}: {reason}")
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class OwnpageUnavailable(OwnpageError):
    """Transient: connection error, timeout, 429 or 5xx. Safe to retry (the upsert is idempotent)."""

    kind = "unavailable"
    transient = True


class OwnpageProtocolError(OwnpageError):
    """Ownpage answered something that is not the documented JSON (an HTML page, a cut body)."""

    kind = "protocol"
    transient = True


class OwnpageAuthError(OwnpageError):
    """The client id or API key was refused: permanent until someone fixes the secret."""

    kind = "auth"
    from_api = True  # the refusal was the API's own JSON (not a page from a proxy in front of it)


class OwnpageRejected(OwnpageError):
    """Ownpage refused the request itself (400 and other 4xx): retrying the same payload won't help."""

    kind = "rejected"
    # Addresses Ownpage named as invalid when it refused a whole batch: raw, so the caller can drop
    # them and re-send the rest. Never part of the message.
    rejected_emails: tuple[str, ...] = ()


class RetryQueueError(OwnpageSyncError):
    """SQS refused to store failed operations: they must be reported in full, never dropped.

    `queued` operations in `messages` messages were stored; `unstored` are the operations the queue
    does not hold (None: every operation after the first `queued`)."""

    def __init__(self, message: str, *, queued: int = 0, messages: int = 0, unstored: tuple[Any, ...] | None = None):
        super().__init__(message)
        self.queued = queued
        self.messages = messages
        self.unstored = unstored


class InvalidRetryMessage(OwnpageSyncError):
    """A retry message body is malformed or of an unknown schema (a poison message)."""


class RetryNotConverged(OwnpageSyncError):
    """Transient: some operations of a retry message still fail; SQS will deliver it again."""

    transient = True

    def __init__(self, message: str, *, kind: str):
        super().__init__(message)
        self.kind = kind


class RunLedgerUnavailable(OwnpageSyncError):
    """The run table could not be reached (throttling, a 5xx, the network): worth another try."""

    transient = True


class ReadOutOfTime(OwnpageSyncError):
    """The run's reads could not finish before the time kept for writing: nothing was written."""


class RunInProgress(OwnpageSyncError):
    """Another run holds the lease; this one exits without calls."""


class RunFailed(OwnpageSyncError):
    """Raised by the sync handler after a failed run, so Lambda counts an error and the alarm fires."""
