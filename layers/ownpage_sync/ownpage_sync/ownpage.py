"""The Ownpage Lists API client (implements ports.OwnpageLists).

One token per client, renewed when Ownpage answers 401; transient failures retried as backoff.py
says, within the run's deadline. No address, token or API key ever reaches a message or a log line:
requests' own exceptions carry the URL (`password=`, `search=`), so they are never chained as they are.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from ownpage_sync import __version__
from ownpage_sync.backoff import RetryPolicy, parse_retry_after
from ownpage_sync.deadline import Deadline
from ownpage_sync.emails import mask_email, normalise_email
from ownpage_sync.errors import (
    ConfigurationError,
    OwnpageAuthError,
    OwnpageProtocolError,
    OwnpageRejected,
    OwnpageUnavailable,
)
from ownpage_sync.models import (
    DATA_PREFIX,
    Operation,
    OwnpageSubscriber,
    normalise_data,
    normalise_data_value,
    parse_timestamp,
)
from ownpage_sync.ports import Progress, Rejection, SubscriberCounts, UpsertResult
from ownpage_sync.secrets import OwnpageCredentials
from ownpage_sync.settings import MAX_BATCH, MAX_PAGE, OwnpageSettings

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Ownpage-Client-Token"
# The sync makes one call at a time; a few spare connections let a caller use threads without churn.
POOL_SIZE = 4
LOOKUP_COUNT = 10  # rows asked for by an exact search: one expected, a few tolerated
MAX_ALL_REPEAT_PAGES = 3  # consecutive pages of nothing but seen rows: the server ignores `offset`
MAX_REASON = 200
SNIPPET = 60
ADDRESS = "<address>"
REDACTED = "<redacted>"

_TRANSIENT_EXCEPTIONS: tuple[type[Exception], ...] = (
    requests.ConnectionError,  # refused, reset, dropped without an answer (and ConnectTimeout)
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,  # body cut off
    requests.exceptions.ContentDecodingError,
)
_BAD_URL_EXCEPTIONS: tuple[type[Exception], ...] = (
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.InvalidURL,
)
_QUERY_SECRET = re.compile(r"(?i)\b(password|username|search|token)=[^&\s'\"]*")
_ADDRESS_LIKE = re.compile(r"[^\s,;<>()\[\]{}\"'=&]*(?:@|%40)[^\s,;<>()\[\]{}\"'&]*")
_TOKEN_SEPARATORS = re.compile(r"[\s,;:<>()\[\]{}\"']+")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Text with known secrets, credential/search query values and anything address-like taken out."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _QUERY_SECRET.sub(lambda match: match.group(1) + "=" + REDACTED, text)
    return _ADDRESS_LIKE.sub(ADDRESS, text)


class TransportError(Exception):
    """A requests exception with the URL's credentials and addresses taken out; chained as `__cause__`."""


class _RedactQuery(logging.Filter):
    """urllib3 logs each request line at DEBUG, query string included (the API key on /token, the
    address on a search). Someone turning DEBUG on in production must not dump them to the logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_RedactQuery())


class _Addresses:
    """The addresses of one request, to recognise them in Ownpage's error texts and to redact them."""

    def __init__(self, emails: Iterable[str]):
        self._by_key: dict[str, str] = {}
        for email in emails:
            self._by_key.setdefault(normalise_email(email), email)

    def __len__(self) -> int:
        return len(self._by_key)

    def lookup(self, candidate: str) -> str | None:
        """The address as sent that `candidate` names, if any."""
        key = normalise_email(candidate)
        return self._by_key.get(key) or self._by_key.get(key.rstrip("."))

    def find(self, text: str) -> list[str]:
        """Addresses of this request named in `text`, as sent, in order of appearance."""
        found: list[str] = []
        for token in _TOKEN_SEPARATORS.split(text):
            email = self.lookup(token) if token else None
            if email is not None and email not in found:
                found.append(email)
        return found

    def redact(self, text: str, secrets: Iterable[str] = ()) -> str:
        """`redact`, plus this request's own addresses even when they hold no `@` (invalid ones)."""
        if self._by_key:
            pieces = _TOKEN_SEPARATORS.split(text)
            separators = _TOKEN_SEPARATORS.findall(text)
            masked = [ADDRESS if piece and self.lookup(piece) is not None else piece for piece in pieces]
            text = "".join(part for pair in zip(masked, [*separators, ""], strict=True) for part in pair)
        return redact(text, secrets)[:MAX_REASON]


_NO_ADDRESSES = _Addresses(())


class OwnpageClient:
    """Ownpage's Lists API over HTTPS with token renewal, retries and deadline-capped timeouts."""

    def __init__(
        self,
        settings: OwnpageSettings,
        credentials: OwnpageCredentials,
        deadline: Deadline,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ):
        self._settings = settings
        self._credentials = credentials
        self._deadline = deadline
        self._policy = RetryPolicy.from_settings(settings)
        self._sleep = sleep
        self._rng = rng
        self._base_url = settings.api_url.rstrip("/")
        self._owns_session = session is None
        self._session = session if session is not None else _new_session()
        self._token: str | None = None
        self._token_lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool (only when this client created the session)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> OwnpageClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the port ----------------------------------------------------------------------------------

    def iter_subscribers(self, list_id: int, progress: Progress | None = None) -> Iterator[OwnpageSubscriber]:
        """Every row of the list (status=all), each address once, streamed page by page.

        Reads on until an *empty* page: a short page only ends the read if the next one is empty, so a
        server that silently caps `count` cannot truncate the list (a missing row could be re-subscribed
        against the reader's will). Costs one extra call per run.
        """
        path = f"/newsletters/lists/{list_id}/subscribers"
        page_size = min(max(self._settings.page_size, 1), MAX_PAGE)
        seen: set[str] = set()
        offset = duplicates = skipped = bad_times = repeat_pages = 0
        short_page_seen = False
        while True:
            rows = self._call("GET", path, params={"status": "all", "offset": offset, "count": page_size})
            if not isinstance(rows, list):
                raise OwnpageProtocolError(f"expected a JSON array of subscribers, got a JSON {_json_type(rows)}")
            if not rows:
                break
            if short_page_seen:
                logger.warning(
                    "Ownpage returned a short page before the end of the list",
                    extra={"list_id": list_id, "offset": offset, "page_size": page_size},
                )
            new_rows = 0
            for row in rows:
                subscriber, bad_time = _to_subscriber(row)
                bad_times += bad_time
                if subscriber is None:
                    skipped += 1
                    if skipped <= 5:
                        logger.warning(
                            "Ownpage row without a usable email skipped",
                            extra={"list_id": list_id, "email": _mask_row_email(row), "offset": offset},
                        )
                    continue
                if subscriber.email in seen:
                    # Offset paging over a list that changes can repeat a row; the first one read wins
                    # (it has been yielded already) and a later run converges.
                    duplicates += 1
                    continue
                seen.add(subscriber.email)
                new_rows += 1
                yield subscriber
            offset += len(rows)
            if progress is not None:
                progress(len(rows))
            repeat_pages = repeat_pages + 1 if new_rows == 0 and len(rows) >= page_size else 0
            if repeat_pages >= MAX_ALL_REPEAT_PAGES:
                raise OwnpageProtocolError("Ownpage keeps returning rows already read: offset paging looks ignored")
            short_page_seen = len(rows) < page_size
        logger.info(
            "Ownpage list read",
            extra={
                "list_id": list_id,
                "subscribers": len(seen),
                "rows_read": offset,
                "duplicate_rows": duplicates,
                "skipped_rows": skipped,
                "unreadable_times": bad_times,
            },
        )

    def get_subscriber(self, list_id: int, email: str) -> OwnpageSubscriber | None:
        """One address's row (search + exact=true, status=all), or None when Ownpage does not know it."""
        wanted = normalise_email(email)
        if not wanted:  # an empty search would match every row
            return None
        rows = self._call(
            "GET",
            f"/newsletters/lists/{list_id}/subscribers",
            params={"status": "all", "search": email.strip(), "exact": "true", "offset": 0, "count": LOOKUP_COUNT},
            addresses=_Addresses([email]),
        )
        if not isinstance(rows, list):
            raise OwnpageProtocolError(f"expected a JSON array of subscribers, got a JSON {_json_type(rows)}")
        for row in rows:
            subscriber, _ = _to_subscriber(row)
            if subscriber is not None and subscriber.email == wanted:
                return subscriber
        return None

    def count(self, list_id: int) -> SubscriberCounts:
        """Ownpage's own counts of the list (subscribed, unsubscribed, unsubscribed by cause)."""
        payload = self._call("GET", f"/newsletters/lists/{list_id}/subscribers/count")
        if not isinstance(payload, Mapping):
            raise OwnpageProtocolError(f"expected a JSON object of counts, got a JSON {_json_type(payload)}")
        subscribed, unsubscribed = _count(payload.get("subscribed")), _count(payload.get("unsubscribed"))
        if subscribed is None or unsubscribed is None:
            raise OwnpageProtocolError("the count response lacks numeric 'subscribed' and 'unsubscribed'")
        raw_causes = payload.get("cause")
        causes: dict[str, int] = {}
        if isinstance(raw_causes, Mapping):
            for cause, value in raw_causes.items():
                number = _count(value)
                if number is not None:
                    causes[str(cause)] = number
        return SubscriberCounts(subscribed=subscribed, unsubscribed=unsubscribed, causes=causes)

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
        """One POST of at most 20,000 operations; Ownpage's summary checked and its errors mapped.

        Rows Ownpage rejects while applying the rest come back in `rejected`; an error naming no
        address of the batch comes back as a Rejection with email "" (still reported, never lost).
        A refusal of the whole batch raises OwnpageRejected with the named addresses in
        `rejected_emails`, so the caller can drop them and re-send the rest.
        The returned `summary` is Ownpage's minus its `errors` (which may hold raw addresses).
        """
        if len(operations) > MAX_BATCH:
            raise ValueError(f"at most {MAX_BATCH} operations per call, got {len(operations)}")
        if not operations:
            return UpsertResult(sent=0)
        addresses = _Addresses(op.email for op in operations)
        body = json.dumps([op.to_payload() for op in operations], ensure_ascii=False, separators=(",", ":"))
        # Retrying this POST (timeouts, dropped connections, 429, 5xx) is safe even when Ownpage did
        # apply the first one: setting a status or a data_* value twice leaves the same state.
        summary = self._call(
            "POST", f"/newsletters/lists/{list_id}/subscribers", body=body.encode("utf-8"), addresses=addresses
        )
        if not isinstance(summary, Mapping):
            raise OwnpageProtocolError(f"expected a JSON object summary, got a JSON {_json_type(summary)}")
        status = summary.get("status")
        if isinstance(status, int) and status >= 400 and "cause" in summary and "unique_emails_count" not in summary:
            # The error document with a 2xx status: treat it as the refusal it describes.
            raise _rejected(status, summary, addresses, self._secrets())
        rejected = _rejections(summary.get("errors"), addresses, self._secrets())
        _check_counts(list_id, summary, operations, len(addresses), rejected)
        return UpsertResult(
            sent=len(operations), summary={k: v for k, v in summary.items() if k != "errors"}, rejected=rejected
        )

    # -- plumbing ----------------------------------------------------------------------------------

    def _secrets(self) -> tuple[str, ...]:
        token = self._token
        return tuple(s for s in (self._credentials.api_key, self._credentials.client, token) if s)

    def _token_for_call(self) -> tuple[str, bool]:
        """The current token, fetching one if needed; True when it was fetched for this call."""
        with self._token_lock:
            if self._token is not None:
                return self._token, False
            payload = self._call(
                "GET",
                "/token",
                params={"username": self._credentials.client, "password": self._credentials.api_key},
                authenticated=False,
            )
            token = payload.get("token") if isinstance(payload, Mapping) else None
            if not isinstance(token, str) or not token:
                raise OwnpageProtocolError("the token response holds no token")
            self._token = token
            logger.info("Ownpage token obtained")
            return token, True

    def _forget_token(self, token: str) -> None:
        with self._token_lock:
            if self._token == token:  # another thread may have renewed it already
                self._token = None

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: bytes | None = None,
        addresses: _Addresses = _NO_ADDRESSES,
        authenticated: bool = True,
    ) -> Any:
        """One API call with token renewal and retries; the decoded JSON of its final answer."""
        url = self._base_url + path
        headers = {"Accept": "application/json", "User-Agent": f"ownpage-sync/{__version__}"}
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        attempt, renewals, refused_before = 1, 0, False
        while True:
            remaining = self._deadline.remaining()
            if remaining <= 0:
                error = OwnpageUnavailable("no time left before the deadline for this call")
                error.attempts = attempt - 1
                raise error
            token, fresh = self._token_for_call() if authenticated else ("", False)
            if authenticated:
                headers[TOKEN_HEADER] = token
            timeout = (min(self._settings.connect_timeout, remaining), min(self._settings.read_timeout, remaining))
            response = self._exchange(method, url, params, body, headers, timeout, addresses)
            if isinstance(response, str):  # a transient transport failure, described without secrets
                refused_before = False
                status: int | None = None
                retry_after: float | None = None
                reason = response
            else:
                status = response.status_code
                if status == 401:
                    if not authenticated:
                        raise OwnpageAuthError("Ownpage refused the client id or API key", status=401)
                    # A 401 right after another one, with a token fetched for this very retry: the
                    # token is not the problem. (A first 401 with a brand-new token gets one more try.)
                    if (refused_before and fresh) or renewals > self._policy.max_attempts:
                        raise OwnpageAuthError("Ownpage refused a freshly issued token", status=401)
                    renewals, refused_before = renewals + 1, True
                    self._forget_token(token)
                    logger.info("Ownpage token expired; renewing it", extra={"method": method, "endpoint": path})
                    continue
                refused_before = False
                if status != 429 and status < 500:
                    return _decode(response, path, addresses, self._secrets(), authenticated)
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                reason = f"Ownpage is unavailable ({_describe_body(response, addresses, self._secrets())})"
            decision = self._policy.decide(attempt, retry_after, self._deadline.remaining(), self._rng)
            failure = {
                "method": method,
                "endpoint": path,
                "attempt": attempt,
                "status": status,
                "retry_after": retry_after,
            }
            if decision.wait is None:
                logger.warning("Ownpage call failed; giving up", extra={**failure, "why": decision.why})
                error = OwnpageUnavailable(f"{reason}; {decision.why}", status=status, retry_after=retry_after)
                error.attempts = attempt
                if status is None:
                    raise error from TransportError(reason)
                raise error
            logger.warning("Ownpage call failed; retrying", extra={**failure, "wait_seconds": round(decision.wait, 3)})
            self._sleep(decision.wait)
            attempt += 1

    def _exchange(
        self,
        method: str,
        url: str,
        params: Mapping[str, str | int] | None,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: tuple[float, float],
        addresses: _Addresses,
    ) -> requests.Response | str:
        """One HTTP exchange: the response, or the description of a transient transport failure."""
        failure, transient, bad_url = "", False, False
        try:
            return self._session.request(
                method, url, params=params, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
        except _TRANSIENT_EXCEPTIONS as exc:
            failure, transient = _describe_exception(exc, addresses, self._secrets()), True
        except _BAD_URL_EXCEPTIONS:
            bad_url = True
        except requests.RequestException as exc:
            failure = _describe_exception(exc, addresses, self._secrets())
        # Raised out here, not in the except blocks: the original exception (URL with password= or
        # search=) must not even ride along as __context__.
        if bad_url:
            raise ConfigurationError("OWNPAGE_API_URL: not a usable http(s) URL")
        if not transient:
            raise OwnpageProtocolError(failure) from TransportError(failure)
        return failure


def _new_session() -> requests.Session:
    session = requests.Session()
    # max_retries=0: retries happen in one place (the client's loop), where the deadline is known.
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _decode(
    response: requests.Response, path: str, addresses: _Addresses, secrets: Sequence[str], authenticated: bool
) -> Any:
    """The JSON of a final (non-401, non-transient) answer, or the matching project exception."""
    status = response.status_code
    if 300 <= status < 400:
        raise OwnpageProtocolError("unexpected redirect (is OWNPAGE_API_URL right?)", status=status)
    try:
        payload = json.loads(response.content) if response.content else None
    except ValueError:
        payload = None
        malformed = True
    else:
        malformed = payload is None
    # The token answer is never quoted: whatever it holds may be the token.
    quote = authenticated or status >= 400
    if malformed:
        what = _describe_body(response, addresses, secrets) if quote else "an unreadable body"
        raise OwnpageProtocolError(f"expected JSON from {path}, got {what}", status=status)
    if status < 200 or status >= 300:
        if not authenticated:
            raise OwnpageAuthError("Ownpage refused the token request", status=status)
        raise _rejected(status, payload, addresses, secrets)
    return payload


def _rejected(status: int, payload: Any, addresses: _Addresses, secrets: Sequence[str]) -> OwnpageRejected:
    """A 4xx answer as an exception whose message names no address; the named ones go in an attribute."""
    cause = _error_text(payload)
    error = OwnpageRejected(addresses.redact(cause, secrets) or "refused without a reason", status=status)
    error.rejected_emails = tuple(addresses.find(cause))
    return error


def _error_text(payload: Any) -> str:
    if isinstance(payload, Mapping):
        for key in ("cause", "message", "error", "errors", "detail"):
            value = payload.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, list) and value:
                return "; ".join(str(item) for item in value)
    if isinstance(payload, str):
        return payload
    return json.dumps(payload, ensure_ascii=False, default=str)


def _rejections(errors: Any, addresses: _Addresses, secrets: Sequence[str]) -> tuple[Rejection, ...]:
    """Ownpage's `errors` (absent, a string, a list of strings or objects, an object) as Rejections."""
    if errors is None or errors == "" or errors == [] or errors == {}:
        return ()
    if isinstance(errors, str | Mapping):
        items: list[Any] = [errors]
        if isinstance(errors, Mapping) and not _email_field(errors):
            # {"user1@": "email is not valid", ...}: one entry per key
            items = [f"{key}: {value}" for key, value in errors.items()]
    elif isinstance(errors, list):
        items = errors
    else:
        items = [errors]
    rejections: list[Rejection] = []
    for item in items:
        if isinstance(item, Mapping):
            named = _email_field(item)
            reason_source = next(
                (item[key] for key in ("reason", "error", "message", "cause", "description") if item.get(key)),
                None,
            )
            rest = {k: v for k, v in item.items() if k not in ("email", "address", "mail")}
            text = str(reason_source) if reason_source is not None else json.dumps(rest, default=str)
            if named is not None:
                email = addresses.lookup(named) or named
                rejections.append(Rejection(email, addresses.redact(text, secrets) or "rejected"))
                continue
            text = json.dumps(dict(item), ensure_ascii=False, default=str)
        else:
            text = str(item)
        found = addresses.find(text)
        reason = addresses.redact(text, secrets) or "rejected"
        rejections.extend(Rejection(email, reason) for email in found or [""])
    return tuple(rejections)


def _email_field(item: Mapping[Any, Any]) -> str | None:
    for key in ("email", "address", "mail"):
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _check_counts(
    list_id: int,
    summary: Mapping[str, Any],
    operations: Sequence[Operation],
    unique: int,
    rejected: Sequence[Rejection],
) -> None:
    """Warn (counts only) when Ownpage's summary does not add up to what was sent.

    Each entry sent should land in one bucket: rejected (`errors`), a duplicate address, a duplicate
    guid, or applied (`unique_emails_count`). Only counts that are present are checked.
    """
    sent = len(operations)
    reported = {
        key: _count(summary.get(key))
        for key in ("unique_emails_count", "duplicate_emails_count", "duplicate_guid_count")
    }
    changed = sum(_count(summary.get(key)) or 0 for key in ("nb_subscribed", "nb_unsubscribed"))
    problems: list[str] = []
    applied = reported["unique_emails_count"]
    if applied is not None and applied > unique:
        problems.append("unique_emails_count")
    if None not in reported.values():
        accounted = sum(value or 0 for value in reported.values())
        if not sent - len(rejected) <= accounted <= sent:
            problems.append("buckets")
    if changed > sent:
        problems.append("nb_subscribed+nb_unsubscribed")
    if problems:
        logger.warning(
            "Ownpage summary disagrees with the batch sent",
            extra={
                "list_id": list_id,
                "sent": sent,
                "unique_sent": unique,
                "rejected": len(rejected),
                **reported,
                "changed": changed,
                "fields": problems,
            },
        )


def _describe_exception(exc: Exception, addresses: _Addresses, secrets: Sequence[str]) -> str:
    if isinstance(exc, requests.Timeout):
        return f"the call timed out ({type(exc).__name__})"
    if isinstance(exc, requests.ConnectionError):
        return f"the connection failed or was dropped ({type(exc).__name__})"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return f"the connection dropped while reading the answer ({type(exc).__name__})"
    return f"the HTTP request failed: {addresses.redact(f'{type(exc).__name__}: {exc}', secrets)}"


def _describe_body(response: requests.Response, addresses: _Addresses, secrets: Sequence[str]) -> str:
    """Content type and the first characters of a body, nothing address- or secret-like."""
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    text = " ".join(response.content[:1000].decode("utf-8", "replace").split())
    snippet = addresses.redact(text, secrets)[:SNIPPET]
    return f"a {content_type} body starting {snippet!r}" if snippet else f"an empty {content_type} body"


def _to_subscriber(row: Any) -> tuple[OwnpageSubscriber | None, int]:
    """A row of the read shape as an OwnpageSubscriber (None without a usable email) and whether a
    timestamp could not be read (1/0). Missing or null fields are tolerated."""
    if not isinstance(row, Mapping):
        return None, 0
    raw_email = row.get("email")
    email = normalise_email(raw_email) if isinstance(raw_email, str) else ""
    if not email:
        return None, 0
    raw_cause = row.get("unsubscribed_cause")
    cause = str(raw_cause).strip().upper() or None if raw_cause is not None else None
    unsubscribed_at, bad_time = _parse_time(row.get("unsubscribed_at"))
    subscribed = _parse_bool(row.get("subscribed"))
    if subscribed is None:
        # No readable status: a cause or an unsubscription time says it is unsubscribed.
        subscribed = cause is None and unsubscribed_at is None and not bad_time
    data = {
        name[len(DATA_PREFIX) :]: value
        for name, value in row.items()
        if isinstance(name, str) and name.startswith(DATA_PREFIX) and len(name) > len(DATA_PREFIX)
    }
    subscriber = OwnpageSubscriber(
        email=email,
        subscribed=subscribed,
        guid=normalise_data_value(row.get("guid")),
        data=normalise_data(data),
        unsubscribed_at=unsubscribed_at,
        unsubscribed_cause=cause,
    )
    return subscriber, bad_time


def _parse_time(value: Any) -> tuple[datetime | None, int]:
    """A row's time (models.parse_timestamp), and 1 when it was present but unreadable."""
    try:
        return parse_timestamp(value), 0
    except ValueError:
        return None, 1


def _parse_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
    return None


def _count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _mask_row_email(row: Any) -> str:
    return mask_email(row.get("email")) if isinstance(row, Mapping) else "<not an object>"


def _json_type(value: Any) -> str:
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list):
        return "array"
    return "null" if value is None else type(value).__name__


__all__ = ["OwnpageClient", "TransportError", "redact"]
