"""One call to Ownpage's API: token renewal, retries of transient failures, the run's deadline.

Retries happen here and only here (capped exponential backoff with full jitter, `Retry-After`
honoured, never a sleep past the deadline: work that cannot be retried in time goes to the retry
queue instead). No address, token or API key reaches a message or a log line: requests' exceptions
carry the URL (`password=` on the older token form, `search=`), so they are never chained as they are.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from ownpage_sync import __version__
from ownpage_sync.backoff import RetryPolicy, parse_retry_after
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import (
    ConfigurationError,
    OwnpageAuthError,
    OwnpageError,
    OwnpageProtocolError,
    OwnpageUnavailable,
)
from ownpage_sync.ownpage.mapping import rejected
from ownpage_sync.redaction import NO_ADDRESSES, Addresses, protect_library_logs, redact
from ownpage_sync.secrets import OwnpageCredentials
from ownpage_sync.settings import OwnpageSettings

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Ownpage-Client-Token"
SNIPPET = 60
# Answers to POST /token that mean "this server only knows the older GET form": always for these...
_POST_REFUSED = (405, 501)
# ...and for these only when they are the API's own JSON error (a proxy's page is no such proof, and
# the older form puts the key in a URL).
_POST_REFUSED_BY_API = (400, 404)

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

protect_library_logs()


class TransportError(Exception):
    """A requests exception with the URL's credentials and addresses taken out; chained as `__cause__`."""


class TokenCache:
    """The token of one set of credentials, shared by every client (and thread) of a container."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.token: str | None = None
        self.legacy_get = False  # the server refused POST /token: the older GET form is used
        self.accepted = False  # a call has succeeded with a token of these credentials

    def forget(self, token: str) -> None:
        with self.lock:
            if self.token == token:  # another thread may have renewed it already
                self.token = None


def new_session(pool_size: int) -> requests.Session:
    session = requests.Session()
    # max_retries=0: retries happen in one place (Transport.call), where the deadline is known.
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool_size), max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def decode_json(body: bytes) -> Any:
    return json.loads(body) if body else None


class Transport:
    """Ownpage's API over HTTP(S) for one run (or one retry invocation): its deadline bounds every
    call. Session and token may be shared with later transports of the same container."""

    def __init__(
        self,
        settings: OwnpageSettings,
        credentials: OwnpageCredentials,
        deadline: Deadline,
        session: requests.Session,
        tokens: TokenCache | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ):
        self.settings = settings
        self.deadline = deadline
        self._credentials = credentials
        self._policy = RetryPolicy.from_settings(settings)
        # Calls in flight share a token: one that answers a few calls may be used up by the others
        # before this call's turn, once for each of them.
        self._max_renewals = settings.max_attempts + max(1, settings.read_concurrency)
        self._sleep = sleep
        self._rng = rng
        self._base_url = settings.api_url.rstrip("/")
        self._session = session
        self._tokens = tokens or TokenCache()
        self._throttled = 0
        self._throttled_lock = threading.Lock()
        self._last = threading.local()  # this thread's last call: how many times it was sent

    @property
    def throttled(self) -> int:
        """How many 429 answers this transport has met (the page reader slows down on them)."""
        return self._throttled

    def last_attempts(self) -> int:
        """How many times this thread's last answered call was sent (1: its first answer counted). A
        write sent again may have been applied by an earlier send: its summary then counts less."""
        return int(getattr(self._last, "attempts", 1))

    def secrets(self) -> tuple[str, ...]:
        token = self._tokens.token
        return tuple(s for s in (self._credentials.api_key, self._credentials.client, token) if s)

    def call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: bytes | None = None,
        addresses: Addresses = NO_ADDRESSES,
        decode: Callable[[bytes], Any] = decode_json,
    ) -> Any:
        """One authenticated API call; `decode` of its final answer's body."""
        return self._request(method, path, params, body, addresses, decode, authenticated=True)

    # -- the token -------------------------------------------------------------------------------------

    def _token_for_call(self) -> tuple[str, bool]:
        """The current token, fetching one if needed; True when it was fetched for this call."""
        tokens = self._tokens
        with tokens.lock:
            if tokens.token is not None:
                return tokens.token, False
            payload = None
            if not tokens.legacy_get:
                body = json.dumps({"username": self._credentials.client, "password": self._credentials.api_key})
                try:
                    payload = self._request(
                        "POST", "/token", None, body.encode("utf-8"), NO_ADDRESSES, decode_json, authenticated=False
                    )
                except OwnpageAuthError as exc:
                    refused = exc.status in _POST_REFUSED or (exc.status in _POST_REFUSED_BY_API and exc.from_api)
                    if not refused:
                        raise
                    tokens.legacy_get = True
                    logger.info("Ownpage refused POST /token; using the older GET form", extra={"status": exc.status})
            if tokens.legacy_get:
                # The key travels in the query string here: urllib3's DEBUG line is redacted and
                # requests' exceptions are never chained (see _exchange).
                params = {"username": self._credentials.client, "password": self._credentials.api_key}
                payload = self._request("GET", "/token", params, None, NO_ADDRESSES, decode_json, authenticated=False)
            token = payload.get("token") if isinstance(payload, Mapping) else None
            if not isinstance(token, str) or not token:
                raise OwnpageProtocolError("the token response holds no token")
            tokens.token = token
            logger.info("Ownpage token obtained")
            return token, True

    # -- the loop --------------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | int] | None,
        body: bytes | None,
        addresses: Addresses,
        decode: Callable[[bytes], Any],
        authenticated: bool,
    ) -> Any:
        url = self._base_url + path
        headers = {"Accept": "application/json", "User-Agent": f"ownpage-sync/{__version__}"}
        if body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        attempt, renewals, refused_before = 1, 0, False
        while True:
            remaining = self.deadline.remaining()
            if remaining <= 0:
                error = OwnpageUnavailable("no time left before the deadline for this call")
                error.attempts = attempt - 1
                raise error
            token, fresh = self._token_for_call() if authenticated else ("", False)
            if authenticated:
                headers[TOKEN_HEADER] = token
            timeout = (min(self.settings.connect_timeout, remaining), min(self.settings.read_timeout, remaining))
            response = self._exchange(method, url, params, body, headers, timeout, addresses)
            status: int | None = None
            retry_after: float | None = None
            if isinstance(response, str):  # a transient transport failure, described without secrets
                refused_before = False
                reason = response
            else:
                status = response.status_code
                if status == 401:
                    if not authenticated:
                        raise OwnpageAuthError(
                            "Ownpage refused the client id or API key (check the secret OWNPAGE_SECRET_ID names)",
                            status=401,
                        )
                    # A 401 right after another one, with a token fetched for this very retry: the
                    # token is not the problem. (A first 401 with a brand-new token gets one more try.)
                    # Unless tokens were accepted before: then the other calls in flight may have used
                    # this one up (tokens that answer a number of calls), and the renewals are bounded.
                    fresh_refused = refused_before and fresh and not self._tokens.accepted
                    if fresh_refused or (renewals > self._max_renewals and not self._tokens.accepted):
                        raise OwnpageAuthError("Ownpage refused a freshly issued token", status=401)
                    if renewals > self._max_renewals:
                        # Tokens of these credentials were accepted: they work, they just run out faster
                        # than this call gets a turn. A service problem to wait for, not the secret's.
                        error = OwnpageUnavailable(
                            f"Ownpage's tokens ran out before this call could use one ({renewals} renewals)",
                            status=401,
                        )
                        error.attempts = attempt
                        raise error
                    renewals, refused_before = renewals + 1, True
                    self._tokens.forget(token)
                    logger.info("Ownpage token expired; renewing it", extra={"method": method, "endpoint": path})
                    continue
                refused_before = False
                if authenticated and 200 <= status < 300:
                    self._tokens.accepted = True
                if status == 429:
                    with self._throttled_lock:
                        self._throttled += 1
                # A 501 to POST /token refuses that form (an older server): final, not an outage.
                refused_form = not authenticated and method == "POST" and status in _POST_REFUSED
                if status != 429 and (status < 500 or refused_form):
                    self._last.attempts = attempt
                    decoded = self._final(response, path, addresses, decode, authenticated)
                    if not isinstance(decoded, _Unreadable):
                        return decoded
                    reason = decoded.reason  # a 2xx that is not the API's JSON (a proxy's page): retry
                else:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    reason = f"Ownpage is unavailable ({describe_body(response, addresses, self.secrets())})"
            decision = self._policy.decide(attempt, retry_after, self.deadline.remaining(), self._rng)
            failure = {"method": method, "endpoint": path, "attempt": attempt, "status": status}
            if retry_after is not None:
                failure["retry_after"] = retry_after
            if decision.wait is None:
                logger.warning("Ownpage call failed; giving up", extra={**failure, "why": decision.why})
                kind: type[OwnpageError] = (
                    OwnpageProtocolError if status is not None and status < 400 else OwnpageUnavailable
                )
                given_up = kind(f"{reason}; {decision.why}", status=status, retry_after=retry_after)
                given_up.attempts = attempt
                if status is None:
                    raise given_up from TransportError(reason)
                raise given_up
            logger.warning("Ownpage call failed; retrying", extra={**failure, "wait_seconds": round(decision.wait, 3)})
            self._sleep(decision.wait)
            attempt += 1

    def _final(
        self,
        response: requests.Response,
        path: str,
        addresses: Addresses,
        decode: Callable[[bytes], Any],
        authenticated: bool,
    ) -> Any:
        """The decoded body of a final (non-401, non-transient) answer, the matching project exception,
        or _Unreadable for a 2xx whose body is not what the API sends."""
        status = response.status_code
        secrets = self.secrets()
        if 300 <= status < 400:
            raise OwnpageProtocolError("unexpected redirect (is OWNPAGE_API_URL right?)", status=status)
        if 200 <= status < 300:
            try:
                return decode(response.content)
            except (ValueError, OwnpageProtocolError) as exc:
                # The token answer is never quoted: whatever it holds may be the token.
                what = describe_body(response, addresses, secrets) if authenticated else "an unreadable body"
                detail = str(exc) if isinstance(exc, OwnpageProtocolError) else f"expected JSON, got {what}"
                return _Unreadable(f"{path}: {detail}")
        try:
            payload = json.loads(response.content) if response.content else None
        except ValueError:
            payload = None
        if payload is None and status != 404:
            # Not the API's JSON error: a proxy or gateway answered (an HTML page). Not a verdict on
            # the credentials or the payload, so not a permanent error.
            what = describe_body(response, addresses, secrets)
            raise OwnpageProtocolError(f"{path}: an HTTP {status} answer that is not the API's: {what}", status=status)
        if not authenticated:
            # What came back, redacted: the operator must see whether it was Ownpage's own refusal.
            what = describe_body(response, addresses, secrets)
            refusal = OwnpageAuthError(f"Ownpage refused the token request ({what})", status=status)
            refusal.from_api = payload is not None
            raise refusal
        if payload is None:
            payload = f"an HTTP {status} answer: {describe_body(response, addresses, secrets)}"
        raise rejected(status, payload, addresses, secrets)

    def _exchange(
        self,
        method: str,
        url: str,
        params: Mapping[str, str | int] | None,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: tuple[float, float],
        addresses: Addresses,
    ) -> requests.Response | str:
        """One HTTP exchange: the response, or the description of a transient transport failure."""
        failure, transient, bad_url = "", False, False
        try:
            return self._session.request(
                method, url, params=params, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
        except _TRANSIENT_EXCEPTIONS as exc:
            failure, transient = describe_exception(exc, addresses, self.secrets()), True
        except _BAD_URL_EXCEPTIONS:
            bad_url = True
        except requests.RequestException as exc:
            failure = describe_exception(exc, addresses, self.secrets())
        # Raised out here, not in the except blocks: the original exception (URL with password= or
        # search=) must not even ride along as __context__.
        if bad_url:
            raise ConfigurationError("OWNPAGE_API_URL: not a usable http(s) URL")
        if not transient:
            raise OwnpageProtocolError(failure) from TransportError(failure)
        return failure


class _Unreadable:
    def __init__(self, reason: str):
        self.reason = reason


def describe_exception(exc: Exception, addresses: Addresses, secrets: tuple[str, ...]) -> str:
    if isinstance(exc, requests.Timeout):
        return f"the call timed out ({type(exc).__name__})"
    if isinstance(exc, requests.ConnectionError):
        return f"the connection failed or was dropped ({type(exc).__name__})"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return f"the connection dropped while reading the answer ({type(exc).__name__})"
    return f"the HTTP request failed: {redact(f'{type(exc).__name__}: {exc}', secrets, addresses)}"


def describe_body(response: requests.Response, addresses: Addresses, secrets: tuple[str, ...]) -> str:
    """Content type and the first characters of a body, nothing address- or secret-like."""
    content_type = response.headers.get("Content-Type", "").split(";")[0].strip() or "no content type"
    text = response.content[:1000].decode("utf-8", "replace")
    snippet = redact(text, secrets, addresses, limit=SNIPPET)
    return f"a {content_type} body starting {snippet!r}" if snippet else f"an empty {content_type} body"
