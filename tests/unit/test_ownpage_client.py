"""The Ownpage client against the Ownpage emulator over real HTTP (integration), plus what the emulator
cannot play, against small loopback test doubles: an emulator subclass that rewrites what a page read
asks for (a server capping `count`, ignoring `offset` or `search`, never ending a read), and a tiny
canned stdlib server (the POST form of /token, which the emulator does not serve yet; HTML pages
with status 200; cut JSON; odd rows; 429s per page).

Sleeps are recorded rather than slept (the client takes `sleep`), so fault tests stay fast; the
deadline tests move a fake clock with each recorded sleep. The decoding of single rows, the mapping
of `errors` and redaction are in test_ownpage_mapping.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import (
    ConfigurationError,
    OwnpageAuthError,
    OwnpageError,
    OwnpageProtocolError,
    OwnpageRejected,
    OwnpageUnavailable,
)
from ownpage_sync.models import Action, Operation, OwnpageSubscriber
from ownpage_sync.ownpage import OwnpageClient, TokenCache, TransportError
from ownpage_sync.ownpage.client import pages_in_flight
from ownpage_sync.ports import Rejection
from ownpage_sync.secrets import OwnpageCredentials
from ownpage_sync.settings import OwnpageSettings
from ownpage_sync_tools.emulator import EmulatorServer

integration = pytest.mark.integration
unit = pytest.mark.unit

CLIENT, API_KEY = "demo", "demo-key"  # the emulator's default credentials
LIST = 1
PAGES_PATH = f"/newsletters/lists/{LIST}/subscribers"


class Sleeps:
    """Records the client's sleeps instead of sleeping; a fake clock for the deadline."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)

    @property
    def elapsed(self) -> float:
        return sum(self.waits)


def make_client(
    url: str,
    *,
    sleeps: Sleeps | None = None,
    deadline: Deadline | None = None,
    api_key: str = API_KEY,
    rng: Callable[[], float] = lambda: 0.5,
    tokens: TokenCache | None = None,
    **overrides: Any,
) -> OwnpageClient:
    fields: dict[str, Any] = {"page_size": 100, "max_attempts": 6, "backoff_base": 0.5, "backoff_cap": 4.0}
    fields.update(overrides)
    settings = OwnpageSettings(api_url=url, list_id=LIST, secret_id=None, **fields)
    return OwnpageClient(
        settings,
        OwnpageCredentials(CLIENT, api_key),
        deadline or Deadline.unlimited(),
        tokens=tokens,
        sleep=sleeps if sleeps is not None else Sleeps(),
        rng=rng,
    )


def rows(count: int, domain: str = "example.com", start: int = 0) -> list[dict[str, Any]]:
    return [{"email": f"reader{i}@{domain}", "data_city": f"city{i % 7}"} for i in range(start, start + count)]


def emails(count: int, domain: str = "example.com", start: int = 0) -> list[str]:
    return [row["email"] for row in rows(count, domain, start)]


def read_all(client: OwnpageClient, list_id: int = LIST, **options: Any) -> list[OwnpageSubscriber]:
    options.setdefault("expected_rows", 0)
    return [subscriber for page in client.read_pages(list_id, **options) for subscriber in page]


def api_calls(emulator: Any, path_end: str = "", method: str | None = "GET") -> list[Any]:
    return [r for r in emulator.state.requests if method in (None, r.method) and r.path.endswith(path_end)]


def page_calls(emulator: Any) -> list[Any]:
    return api_calls(emulator, PAGES_PATH)


def max_overlap(starts: Sequence[float], duration: float) -> int:
    """The most calls in flight at once, when each lasted at least `duration` from its start."""
    return max(sum(1 for other in starts if other <= start < other + duration) for start in starts)


def assert_leaks_nothing(error: BaseException, caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """Neither the message, the chained causes (as a traceback prints them) nor any log line holds a secret."""
    texts = [str(error), caplog.text]
    cause: BaseException | None = error
    while cause is not None:
        texts.append(repr(cause))
        texts.extend(traceback.format_exception_only(cause))
        cause = cause.__cause__ or cause.__context__
    for secret in secrets:
        assert secret
        for text in texts:
            assert secret not in text


# -- test doubles -------------------------------------------------------------------------------------

Rewrite = Callable[[dict[str, str]], dict[str, str]]


class UnfriendlyEmulator(EmulatorServer):
    """The emulator, with the parameters of every page read rewritten before they are served (the
    request log keeps what the client asked). Plays the unknowns the emulator on this branch cannot."""

    def __init__(self, rewrite: Rewrite):
        super().__init__(port=0)
        self.rewrite = rewrite

    def handle_api(self, method: str, path: str, query: Mapping[str, str], body: bytes, token: str | None) -> object:
        if method == "GET" and path.endswith("/subscribers"):
            query = self.rewrite(dict(query))
        return super().handle_api(method, path, query, body, token)


@pytest.fixture
def unfriendly() -> Iterator[Callable[[Rewrite], UnfriendlyEmulator]]:
    servers: list[UnfriendlyEmulator] = []

    def start(rewrite: Rewrite) -> UnfriendlyEmulator:
        server = UnfriendlyEmulator(rewrite)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def offset_of(query: Mapping[str, str]) -> int:
    return int(query.get("offset") or 0)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]


# status, content type, body, and optionally extra headers
Answer = tuple[int, str, bytes] | tuple[int, str, bytes, dict[str, str]]


@dataclass
class Canned:
    url: str
    requests: list[Request] = field(default_factory=list)

    @property
    def calls(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]


class _CannedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answer: Callable[[Request], Answer]
    record: Callable[[Request], None]

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _respond(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(split.query, keep_blank_values=True).items()}
        request = Request(self.command, split.path, query, body, dict(self.headers.items()))
        type(self).record(request)
        status, content_type, payload, *extra = type(self).answer(request)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (extra[0] if extra else {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _respond


@pytest.fixture
def canned() -> Iterator[Callable[[Callable[[Request], Answer]], Canned]]:
    """A tiny loopback server playing answers the emulator cannot give. Real HTTP (threaded, so
    concurrent reads overlap); only the answers are scripted."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[Request], Answer]) -> Canned:
        lock = threading.Lock()
        log: list[Request] = []

        def record(request: Request) -> None:
            with lock:
                log.append(request)

        handler = type("Handler", (_CannedHandler,), {"answer": staticmethod(answer), "record": staticmethod(record)})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return Canned(f"http://127.0.0.1:{server.server_address[1]}/v1", log)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


TOKEN = "t0k3n-abc"


def token_then(answer: Callable[[Request], Answer]) -> Callable[[Request], Answer]:
    """/token (either form) answers a token; everything else goes to `answer`."""

    def route(request: Request) -> Answer:
        if request.path == "/v1/token":
            return 200, "application/json", json.dumps({"token": TOKEN}).encode()
        return answer(request)

    return route


def json_answer(payload: Any, status: int = 200) -> Answer:
    return status, "application/json", json.dumps(payload).encode()


class PagedList:
    """A canned list read by offset and count (each read answered after `latency`), with a hook to
    script single answers; it keeps when each read arrived and was answered."""

    def __init__(
        self, entries: Sequence[Any], latency: float = 0.0, script: Callable[[Request], Answer | None] | None = None
    ):
        self.entries = list(entries)
        self.latency = latency
        self.script = script
        self.lock = threading.Lock()
        self.spans: list[tuple[int, float, float]] = []  # offset, arrival and answer of each page read

    def __call__(self, request: Request) -> Answer:
        offset, count = offset_of(request.query), int(request.query.get("count") or 1000)
        arrived = time.monotonic()
        try:
            scripted = self.script(request) if self.script is not None else None
            if scripted is not None:
                return scripted
            time.sleep(self.latency)
            return json_answer(self.entries[offset : offset + count])
        finally:
            with self.lock:
                self.spans.append((offset, arrived, time.monotonic()))

    def overlap(self, which: Callable[[int], bool]) -> int:
        """The most reads of the chosen offsets the server was answering at once."""
        spans = [(start, end) for offset, start, end in self.spans if which(offset)]
        assert spans
        return max(sum(1 for other, until in spans if other <= start < until) for start, _ in spans)


def ops(*addresses: str) -> list[Operation]:
    return [Operation(Action.SUBSCRIBE, email, data={"city": "Nice"}) for email in addresses]


# -- tokens -------------------------------------------------------------------------------------------


@integration
def test_token_is_renewed_transparently_during_a_multi_page_read(emulator: Any) -> None:
    # Given 250 readers, tokens that expire after 2 calls, and pages read one at a time
    emulator.state.seed(LIST, rows(250))
    emulator.set_faults(token_lifetime_calls=2)
    client = make_client(emulator.url, page_size=50, read_concurrency=1)
    # When the whole list is read (6 pages: the 6th is the empty one that ends the read)
    with client:
        read = read_all(client, expected_rows=250)
    # Then every reader is there once, and several tokens were needed without any error
    assert sorted(s.email for s in read) == sorted(emails(250))
    assert len([r for r in api_calls(emulator, "/token", method=None) if r.status == 200]) >= 3
    refused = [r for r in emulator.state.requests if r.status == 401]
    assert len(refused) >= 2
    assert all(r.path == PAGES_PATH for r in refused)  # the token endpoint never refused the credentials


@integration
def test_tokens_expiring_in_the_middle_of_a_concurrent_read_lose_no_row(emulator: Any) -> None:
    # Given 1,000 readers read 50 at a time, 8 pages in flight, and every token expiring once the
    # third page has arrived (as tokens that time out do: all at once, in flight ones included)
    emulator.state.seed(LIST, rows(1_000))
    arrived: list[int] = []

    def progress(done: int) -> None:
        arrived.append(done)
        if len(arrived) == 3:
            emulator.state.expire_tokens()

    client = make_client(emulator.url, page_size=50, read_concurrency=8)
    # When the whole list is read
    read = read_all(client, expected_rows=1_000, progress=progress)
    # Then every reader is there exactly once, after 401s that were answered by a renewed token
    assert sorted(s.email for s in read) == sorted(emails(1_000))
    assert any(r.status == 401 for r in page_calls(emulator))
    assert len([r for r in api_calls(emulator, "/token", method=None) if r.status == 200]) >= 2


@integration
def test_tokens_used_up_by_the_other_pages_in_flight_are_renewed_not_taken_for_refused_credentials(
    emulator: Any,
) -> None:
    # Given tokens that answer 3 calls each while 8 pages are in flight: a token fetched for one
    # page is often used up by the others before that page's call reaches Ownpage
    emulator.state.seed(LIST, rows(4_000))
    emulator.set_faults(token_lifetime_calls=3)
    client = make_client(emulator.url, page_size=50, read_concurrency=8)  # max_attempts 6, the default
    # When the whole list is read (80 pages)
    read = read_all(client, expected_rows=4_000)
    # Then every reader is there exactly once: no "freshly issued token refused" auth error
    assert sorted(s.email for s in read) == sorted(emails(4_000))
    assert sum(1 for r in page_calls(emulator) if r.status == 401) >= 10


@integration
def test_refused_credentials_raise_auth_error_without_the_key_anywhere(
    emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a wrong API key
    caplog.set_level(logging.DEBUG)
    client = make_client(emulator.url, api_key="wrong-key-s3cr3t")
    # When any call is made
    with pytest.raises(OwnpageAuthError) as raised:
        client.count(LIST)
    # Then it is an auth error after one refused token request (the POST, or the GET form where the
    # server refuses the POST), never retried, no other call made, and the key is nowhere
    assert raised.value.status == 401
    token_calls = api_calls(emulator, "/token", method=None)
    assert [(r.method, r.status) for r in token_calls] in ([("POST", 401)], [("POST", 405), ("GET", 401)])
    assert len(emulator.state.requests) == len(token_calls)
    assert "OWNPAGE_SECRET_ID" in str(raised.value)
    assert_leaks_nothing(raised.value, caplog, "wrong-key-s3cr3t")


@integration
def test_a_token_cache_is_shared_by_the_clients_of_a_container(emulator: Any) -> None:
    # Given one token cache, as the retry function keeps for its container's life
    tokens = TokenCache()
    make_client(emulator.url, tokens=tokens).count(LIST)
    obtained = len(api_calls(emulator, "/token", method=None))
    # When a second client (the next invocation) makes a call
    make_client(emulator.url, tokens=tokens).count(LIST)
    # Then it used the cached token: no further token request
    assert tokens.token
    assert len(api_calls(emulator, "/token", method=None)) == obtained
    assert len(api_calls(emulator, "/count")) == 2


@unit
def test_the_token_is_asked_for_with_a_json_post_and_the_key_never_travels_in_a_url(canned: Any) -> None:
    """A stdlib test double: the emulator on this branch serves only the older GET form of /token."""
    # Given a server that serves POST /token
    server = canned(token_then(lambda r: json_answer({"subscribed": 1, "unsubscribed": 0})))
    tokens = TokenCache()
    # When a call is made
    counts = make_client(server.url, tokens=tokens).count(LIST)
    # Then the token came from one POST with the JSON body, the call carried it, no GET form was used
    assert counts.subscribed == 1
    assert server.calls == ["POST /v1/token", f"GET /v1/newsletters/lists/{LIST}/subscribers/count"]
    token_request, count_request = server.requests
    assert json.loads(token_request.body) == {"username": CLIENT, "password": API_KEY}
    assert token_request.headers["Content-Type"].startswith("application/json")
    assert token_request.query == {}
    assert count_request.headers["X-Ownpage-Client-Token"] == TOKEN
    assert all(API_KEY not in json.dumps(r.query) for r in server.requests)
    assert tokens.legacy_get is False


@unit
@pytest.mark.parametrize("refusal", [400, 404, 405, 501])
def test_a_server_refusing_the_post_gets_the_older_get_form_and_the_choice_is_remembered(
    canned: Any, refusal: int
) -> None:
    """A stdlib test double playing an older server (the emulator on this branch is one, for 405)."""

    # Given a server that refuses POST /token and serves the GET form
    def answer(request: Request) -> Answer:
        if request.path == "/v1/token" and request.method == "POST":
            return json_answer({"status": refusal, "cause": "no"}, refusal)
        if request.path == "/v1/token":
            return json_answer({"token": TOKEN})
        return json_answer({"subscribed": 1, "unsubscribed": 0})

    server = canned(answer)
    tokens = TokenCache()
    # When a call is made, then the token is dropped and another client of the container renews it
    make_client(server.url, tokens=tokens).count(LIST)
    tokens.forget(TOKEN)
    make_client(server.url, tokens=tokens).count(LIST)
    # Then the first token needed the POST and the GET form; the renewal went straight to the GET form
    count = f"GET /v1/newsletters/lists/{LIST}/subscribers/count"
    assert server.calls == ["POST /v1/token", "GET /v1/token", count, "GET /v1/token", count]
    assert server.requests[1].query == {"username": CLIENT, "password": API_KEY}
    assert tokens.legacy_get is True


@unit
@pytest.mark.parametrize("refusal", [401, 403])
def test_refused_credentials_on_the_post_never_fall_back_to_the_key_in_a_url(
    canned: Any, refusal: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A stdlib test double: the emulator on this branch cannot refuse a POST /token for its credentials."""
    # Given a server that serves POST /token and refuses these credentials
    caplog.set_level(logging.DEBUG)
    server = canned(lambda r: json_answer({"status": refusal, "cause": "Unauthorized"}, refusal))
    tokens = TokenCache()
    # When a call is made
    with pytest.raises(OwnpageAuthError) as raised:
        make_client(server.url, api_key="k3y-s3cr3t", tokens=tokens).count(LIST)
    # Then a permanent auth error after that one POST: no GET with the key in its URL, no retry
    assert raised.value.status == refusal
    assert server.calls == ["POST /v1/token"]
    assert tokens.legacy_get is False
    assert_leaks_nothing(raised.value, caplog, "k3y-s3cr3t")


@unit
def test_a_token_post_answered_503_is_retried_as_a_post(canned: Any) -> None:
    """A stdlib test double: the emulator's injected errors would hide which form was retried."""
    # Given a server whose POST /token answers 503 once
    answered: list[int] = []

    def answer(request: Request) -> Answer:
        if request.path == "/v1/token" and not answered:
            answered.append(503)
            return json_answer({"status": 503, "cause": "busy"}, 503)
        return token_then(lambda r: json_answer({"subscribed": 1, "unsubscribed": 0}))(request)

    server = canned(answer)
    sleeps = Sleeps()
    # When a call is made
    make_client(server.url, sleeps=sleeps).count(LIST)
    # Then the POST was retried after one wait; the GET form was never needed
    assert server.calls[:2] == ["POST /v1/token", "POST /v1/token"]
    assert len(sleeps.waits) == 1


@unit
def test_a_fresh_token_refused_again_is_an_auth_error(canned: Any) -> None:
    # Given a server that issues tokens but refuses every one of them
    server = canned(token_then(lambda r: json_answer({"status": 401}, 401)))
    # When a call is made
    with pytest.raises(OwnpageAuthError) as raised:
        make_client(server.url).count(LIST)
    # Then: token, call (401), new token, call (401) -> auth error; no endless renewal
    assert server.calls == ["POST /v1/token", f"GET /v1/newsletters/lists/{LIST}/subscribers/count"] * 2
    assert TOKEN not in str(raised.value)


def test_tokens_that_worked_and_keep_running_out_are_a_service_problem_not_refused_credentials(canned: Any) -> None:
    # Given a server whose tokens answered one call, then are refused every time after
    answered: list[int] = []

    def answer(request: Request) -> Answer:
        answered.append(1)
        return json_answer({"subscribed": 1, "unsubscribed": 0}) if len(answered) == 1 else json_answer({}, 401)

    server = canned(token_then(answer))
    client = make_client(server.url, max_attempts=2, read_concurrency=1)
    client.count(LIST)
    # When another call is made
    with pytest.raises(OwnpageError) as raised:
        client.count(LIST)
    # Then, the credentials having worked, it is not taken for refused credentials (which points the
    # on-call engineer at the secret): Ownpage unavailable, after a bounded number of renewals
    assert type(raised.value) is OwnpageUnavailable and raised.value.status == 401
    assert "tokens ran out" in str(raised.value)
    assert server.calls.count("POST /v1/token") == 5  # the first, then max_attempts + concurrency + 1 renewals


# -- reads --------------------------------------------------------------------------------------------


@integration
def test_rows_are_converted_to_subscribers(emulator: Any) -> None:
    # Given rows with data, an unsubscription (zoned and zone-less times), nulls and a blank address
    emulator.state.seed(
        LIST,
        [
            {"email": " Ann@Example.COM ", "guid": "g-1", "data_firstname": "Ann", "data_age": 42, "data_blank": ""},
            {
                "email": "bob@example.com",
                "subscribed": False,
                "unsubscribed_cause": "reader",
                "unsubscribed_at": "2025-01-31T09:15:02.123Z",
                "data_firstname": "Bob",
                "data_unmapped": "not asked for",
            },
            {
                "email": "cy@example.com",
                "subscribed": False,
                "unsubscribed_cause": "HARD_BOUNCE",
                "unsubscribed_at": "2025-01-31 10:00:00",
            },
            {"email": "dee@example.com", "subscribed": False, "unsubscribed_cause": None, "unsubscribed_at": "bad"},
            {"email": "   "},
        ],
    )
    client = make_client(emulator.url)
    done: list[int] = []
    # When the list is read for three attributes
    read = {
        s.email: s
        for s in read_all(client, fields=("firstname", "age", "blank"), expected_rows=5, progress=done.append)
    }
    # Then Ownpage's spelling is kept (the key is canonical), data holds only the asked attributes
    # without the prefix, times are aware UTC, the blank row is skipped (but counted as read)
    assert set(read) == {" Ann@Example.COM ", "bob@example.com", "cy@example.com", "dee@example.com"}
    ann = read[" Ann@Example.COM "]
    assert ann.key == "ann@example.com"
    assert ann.subscribed is True and ann.guid == "g-1"
    assert dict(ann.data) == {"firstname": "Ann", "age": "42"}
    bob = read["bob@example.com"]
    assert bob.subscribed is False and bob.unsubscribed_cause == "READER"
    assert bob.unsubscribed_at == datetime(2025, 1, 31, 9, 15, 2, 123_999, tzinfo=UTC)  # the end of that millisecond
    assert dict(bob.data) == {"firstname": "Bob"}
    assert read["cy@example.com"].unsubscribed_at == datetime(2025, 1, 31, 10, 0, 0, 999_999, tzinfo=UTC)
    assert read["cy@example.com"].bad_time is False
    dee = read["dee@example.com"]
    assert dee.subscribed is False and dee.unsubscribed_at is None and dee.unsubscribed_cause is None
    assert dee.bad_time is True
    assert sum(done) == 5


@integration
def test_rows_shifted_between_pages_are_read_again_and_none_is_lost(emulator: Any) -> None:
    # Given 30 readers read 10 at a time, and 4 new readers landing *ahead* of the read position
    # after the first page (as a list re-sorted by Ownpage would), shifting 4 seen rows into page 2
    original = rows(30)
    emulator.state.seed(LIST, original)
    newcomers = rows(4, domain="new.example.com")
    pages: list[int] = []

    def progress(done: int) -> None:
        pages.append(done)
        if len(pages) == 1:
            current = emulator.state.subscribers(LIST)
            emulator.state.reset()  # also forgets every token: the client must renew on the way
            emulator.state.seed(LIST, newcomers + current)

    client = make_client(emulator.url, page_size=10)
    # When the list is read
    read = [s.email for s in read_all(client, expected_rows=30, progress=progress)]
    # Then every original reader is there; the 4 shifted ones come twice (the read yields what the
    # server sent; the caller folds repeats), and progress saw every row the server delivered
    assert set(read) == {r["email"] for r in original}  # the newcomers before the cursor: next run
    assert sorted(email for email, seen in Counter(read).items() if seen > 1) == sorted(emails(4, start=6))
    assert sum(pages) == len(read) == 34  # 10 + 10 + 10 + 4 rows delivered by the server, repeats included


@integration
def test_a_100k_list_is_read_in_pages_of_10000(emulator: Any) -> None:
    # Given 100,000 readers
    emulator.state.seed(LIST, ({"email": f"r{i}@example.com"} for i in range(100_000)))
    client = make_client(emulator.url, page_size=10_000)
    done: list[int] = []
    started = time.monotonic()
    # When the list is read
    read = read_all(client, expected_rows=100_000, progress=done.append)
    # Then all are read once, in 10 full pages plus the empty one that ends the read, asked twice
    assert len(read) == len({s.email for s in read}) == 100_000
    assert done == [10_000] * 10
    pages = page_calls(emulator)
    assert sorted(int(r.query["offset"]) for r in pages) == [*range(0, 110_000, 10_000), 100_000]
    assert all(r.query["count"] == "10000" and r.query["status"] == "all" for r in pages)
    assert time.monotonic() - started < 60


@integration
def test_a_concurrent_read_of_a_multi_page_list_returns_every_row_exactly_once(emulator: Any) -> None:
    # Given 2,345 readers (24 pages of 100, the last one short)
    emulator.state.seed(LIST, rows(2_345))
    client = make_client(emulator.url, page_size=100, read_concurrency=4)
    # When the list is read with 4 pages in flight
    read = read_all(client, expected_rows=2_345)
    # Then each reader comes exactly once, and each offset was asked for once (plus the empty end,
    # where the rows stopped, asked twice)
    assert sorted(s.email for s in read) == sorted(emails(2_345))
    offsets = [int(r.query["offset"]) for r in page_calls(emulator)]
    assert sorted(offsets) == [*range(0, 2_400, 100), 2_345, 2_345]


@unit
@pytest.mark.parametrize(
    ("wait", "work", "most", "in_flight"),
    [
        (0.005, 0.060, 8, 2),  # Ownpage next door: one call ahead keeps the process busy
        (0.060, 0.060, 8, 2),
        (0.061, 0.060, 8, 3),
        (0.200, 0.060, 8, 5),  # 200 ms of latency: 1 + 200/60, rounded up
        (1.000, 0.060, 8, 8),  # 1 s: the whole pool
        (1.000, 0.060, 3, 3),  # never more than allowed (the setting, or what Ownpage's 429s leave)
        (0.000, 0.060, 8, 2),
        (0.300, 0.000, 8, 8),  # no measure of the work yet: the whole pool
        (0.300, 0.060, 1, 1),
    ],
)
def test_pages_in_flight_are_what_the_latency_needs(wait: float, work: float, most: int, in_flight: int) -> None:
    # Given the wait for a page's answer and this process's CPU per page
    # When the pages to keep in flight are decided
    # Then they cover the wait (Little's law), within what is allowed
    assert pages_in_flight(wait, work, most) == in_flight


@integration
def test_pages_are_really_fetched_concurrently(emulator: Any) -> None:
    # Given 8 pages of readers on an Ownpage answering each call after 0.3 s
    latency = 0.3
    emulator.state.seed(LIST, rows(800))
    emulator.set_faults(latency=latency)
    client = make_client(emulator.url, page_size=100, read_concurrency=8)
    # When the list is read
    read = read_all(client, expected_rows=800)
    # Then every row came, and the server saw the pages after the first in flight together: a reader
    # fetching one page at a time cannot start a page before the previous one's answer, so the 10
    # page calls (8 pages and the empty end, asked twice) would span at least 9 x 0.3 s
    assert len({s.email for s in read}) == 800
    starts = sorted(r.time for r in page_calls(emulator))
    assert len(starts) == 10
    assert max_overlap(starts, latency) >= 4
    assert starts[-1] - starts[0] < 8 * latency


@integration
def test_a_server_that_silently_caps_count_is_still_read_completely(unfriendly: Any) -> None:
    # Given a server that answers at most 30 rows whatever `count` asks, over 250 readers
    server = unfriendly(lambda q: {**q, "count": str(min(int(q["count"]), 30))})
    server.state.seed(LIST, rows(250))
    client = make_client(server.url, page_size=100)
    # When the list is read
    read = read_all(client, expected_rows=250)
    # Then every reader comes once: the first page revealed the real page size, which spaced the offsets
    assert sorted(s.email for s in read) == sorted(emails(250))
    pages = page_calls(server)
    assert sorted(int(r.query["offset"]) for r in pages) == [*range(0, 270, 30), 250, 250]  # the empty end, twice
    assert all(r.query["count"] == "30" for r in pages[1:])


@integration
def test_a_page_that_comes_back_short_is_completed_from_where_it_stopped(unfriendly: Any) -> None:
    # Given a server that answers the page at offset 200 with only 40 rows, once
    shortened: list[int] = []

    def rewrite(query: dict[str, str]) -> dict[str, str]:
        if offset_of(query) == 200 and not shortened:
            shortened.append(200)
            return {**query, "count": "40"}
        return query

    server = unfriendly(rewrite)
    server.state.seed(LIST, rows(500))
    client = make_client(server.url, page_size=100)
    # When the list is read
    read = read_all(client, expected_rows=500)
    # Then every reader comes once: the missing 60 rows were asked for from offset 240
    assert sorted(s.email for s in read) == sorted(emails(500))
    assert [r.query["count"] for r in page_calls(server) if offset_of(r.query) == 240] == ["60"]


@integration
def test_an_empty_page_where_a_count_too_low_ends_is_asked_again(emulator: Any) -> None:
    # Given 400 readers, a count 100 rows short, and one `[]` answered where that count ends
    emulator.state.seed(LIST, rows(400))
    emulator.set_faults(count_skew=-100, empty_page_offset=300)
    client = make_client(emulator.url, page_size=100, read_concurrency=1)
    # When the list is read
    read = read_all(client, expected_rows=client.count(LIST).total)
    # Then the empty page was not taken for the list's end: asked again, it held the last 100 readers
    assert sorted(s.email for s in read) == sorted(emails(400))
    assert sorted(offset_of(r.query) for r in page_calls(emulator)) == [0, 100, 200, 300, 300, 400, 400]


@integration
def test_an_empty_first_page_is_asked_again_before_the_list_is_taken_for_empty(emulator: Any) -> None:
    # Given 50 readers, a count that says none, and one `[]` answered for the first page
    emulator.state.seed(LIST, rows(50))
    emulator.set_faults(count_skew=-50, empty_page_offset=0)
    client = make_client(emulator.url, page_size=100)
    # When the list is read
    read = read_all(client, expected_rows=client.count(LIST).total)
    # Then the list was not taken for empty: asked again, the first page held every reader
    assert sorted(s.email for s in read) == sorted(emails(50))
    assert [offset_of(r.query) for r in page_calls(emulator)] == [0, 0, 50, 50]


@integration
def test_rows_added_while_the_list_is_read_are_read_past_the_counts_end(emulator: Any) -> None:
    # Given a count of 250 taken before the list grew to 420 readers
    emulator.state.seed(LIST, rows(420))
    client = make_client(emulator.url, page_size=100)
    # When the list is read
    read = read_all(client, expected_rows=250)
    # Then pages past the count's end were read until the empty one (asked twice): every reader came once
    assert sorted(s.email for s in read) == sorted(emails(420))
    assert sorted(offset_of(r.query) for r in page_calls(emulator)) == [0, 100, 200, 300, 400, 420, 420]


@integration
def test_rows_added_after_the_last_page_of_the_count_are_read_by_the_tail(emulator: Any) -> None:
    # Given 250 readers counted and read 100 at a time, and 30 more added once the 3 pages of the
    # count have arrived (the last one short: 50 rows)
    emulator.state.seed(LIST, rows(250))
    arrived: list[int] = []

    def progress(done: int) -> None:
        arrived.append(done)
        if len(arrived) == 3:
            emulator.state.seed(LIST, rows(30, start=250))

    client = make_client(emulator.url, page_size=100)
    # When the list is read
    read = read_all(client, expected_rows=250, progress=progress)
    # Then the read past the count's end started at its end, where the new rows are
    assert sorted(s.email for s in read) == sorted(emails(280))


@integration
def test_a_server_that_ignores_offset_is_stopped_in_a_handful_of_calls(unfriendly: Any) -> None:
    # Given a server that answers every page from offset 0, over 5,000 readers
    server = unfriendly(lambda q: {**q, "offset": "0"})
    server.state.seed(LIST, rows(5_000))
    client = make_client(server.url, page_size=100, read_concurrency=4)
    # When the list is read
    with pytest.raises(OwnpageProtocolError, match="ignore `offset`") as raised:
        read_all(client, expected_rows=5_000)
    # Then it stopped once the first concurrent pages came back equal to the first, not 50 pages later
    assert 2 <= len(page_calls(server)) <= 1 + 4
    assert raised.value.transient


@integration
def test_a_read_that_never_ends_past_the_count_is_stopped(emulator: Any) -> None:
    # Given a count of 200 while the server keeps answering rows far past it (10,000 of them)
    emulator.state.seed(LIST, rows(10_000))
    client = make_client(emulator.url, page_size=100)
    # When the list is read
    with pytest.raises(OwnpageProtocolError, match="past the end") as raised:
        read_all(client, expected_rows=200)
    # Then the read stopped a few pages past the count's end
    assert len(page_calls(emulator)) <= 6
    assert "read stopped" in str(raised.value)


@integration
def test_a_server_repeating_its_last_page_past_the_end_is_stopped(unfriendly: Any) -> None:
    # Given a server that answers the last page again for any offset past its end
    def rewrite(query: dict[str, str]) -> dict[str, str]:
        return {**query, "offset": "200"} if offset_of(query) >= 250 else query

    server = unfriendly(rewrite)
    server.state.seed(LIST, rows(250))
    client = make_client(server.url, page_size=100)
    # When the list is read
    pages: list[list[OwnpageSubscriber]] = []
    with pytest.raises(OwnpageProtocolError, match="same rows again past the end"):
        pages.extend(client.read_pages(LIST, expected_rows=250))
    # Then it stopped at the second repetition, every reader having been yielded before that
    assert len(page_calls(server)) <= 6
    assert {s.email for page in pages for s in page} == set(emails(250))


@integration
def test_a_server_answering_ever_shorter_pages_is_stopped_by_the_call_budget(unfriendly: Any) -> None:
    # Given a server that answers half of what is asked for, except on the first page
    def rewrite(query: dict[str, str]) -> dict[str, str]:
        if offset_of(query) == 0:
            return query
        return {**query, "count": str(max(1, int(query["count"]) // 2))}

    server = unfriendly(rewrite)
    server.state.seed(LIST, rows(1_000))
    client = make_client(server.url, page_size=100, read_concurrency=2)
    # When the list is read
    with pytest.raises(OwnpageProtocolError, match="needed more than") as raised:
        read_all(client, expected_rows=1_000)
    # Then it stopped within a bound derived from the count (10 pages), not after hundreds of calls
    budget = int(str(raised.value).split("more than ")[1].split()[0])
    assert budget <= 40
    assert len(page_calls(server)) <= budget


@unit
def test_a_429_halves_the_pages_in_flight(canned: Any) -> None:
    """A canned list: the emulator cannot answer 429 to chosen pages only."""
    # Given 24 pages of 10 readers, and the first call for every page but the first answered 429
    throttled: set[int] = set()
    lock = threading.Lock()

    def script(request: Request) -> Answer | None:
        offset = offset_of(request.query)
        with lock:
            if offset == 0 or offset in throttled:
                return None
            throttled.add(offset)
        return 429, "application/json", b'{"status": 429, "cause": "slow down"}', {"Retry-After": "0"}

    listing = PagedList([{"email": address} for address in emails(240)], latency=0.05, script=script)
    server = canned(token_then(listing))
    client = make_client(server.url, page_size=10, read_concurrency=8)
    # When the list is read
    read = read_all(client, expected_rows=240)
    # Then every reader came once, each 429 was retried, and once the first answer had shown the
    # 429s, the pages after the first 8 were never more than 4 (half of 8) in flight together
    assert sorted(s.email for s in read) == sorted(emails(240))
    assert len(throttled) == 24  # 23 pages and the empty end
    assert listing.overlap(lambda offset: offset > 80) <= 4


# -- odd rows -----------------------------------------------------------------------------------------


ODD_ROWS: list[Any] = [
    {"email": "yes@example.org", "subscribed": "yes"},
    {"email": "maybe@example.org", "subscribed": "maybe"},
    {"email": "guid@example.org", "guid": 12345},
    {
        "email": "year-one@example.org",
        "subscribed": False,
        "unsubscribed_at": "0001-01-01T00:00:00+01:00",
        "unsubscribed_cause": "hard_bounce",
    },
    "not an object",
    42,
    None,
    {"guid": "no-email"},
    {"email": "  "},
    {"email": 7},
]


@unit
def test_odd_rows_never_crash_a_read_and_every_row_is_counted(canned: Any) -> None:
    # Given a page mixing odd values, rows that are not objects and rows without a usable email
    listing = PagedList(ODD_ROWS)
    server = canned(token_then(listing))
    done: list[int] = []
    # When the list is read
    read = {s.email: s for s in read_all(make_client(server.url), expected_rows=4, progress=done.append)}
    # Then the readable rows are mapped as mapping.py documents, the rest skipped, all counted as read
    assert read == {
        "yes@example.org": OwnpageSubscriber("yes@example.org", subscribed=True),
        "maybe@example.org": OwnpageSubscriber("maybe@example.org", subscribed=None),
        "guid@example.org": OwnpageSubscriber("guid@example.org", subscribed=True, guid="12345", bare=True),
        "year-one@example.org": OwnpageSubscriber(
            "year-one@example.org", subscribed=False, unsubscribed_cause="HARD_BOUNCE", bad_time=True
        ),
    }
    assert sum(done) == len(ODD_ROWS)
    # and the end of the read was asked for past every row, skipped ones included (twice: an empty
    # page ends a read only when it says so again)
    pages = [offset_of(r.query) for r in server.requests if r.path.endswith("/subscribers")]
    assert pages == [0, len(ODD_ROWS), len(ODD_ROWS)]


# -- look-ups -----------------------------------------------------------------------------------------


@integration
def test_find_returns_ownpages_own_spelling_of_one_address(emulator: Any) -> None:
    # Given a list holding a mixed-case address and a similar one
    emulator.state.seed(LIST, [{"email": "Zoe@Example.com", "data_city": "Lyon"}, {"email": "zoe2@example.com"}])
    client = make_client(emulator.url)
    # When it is looked up, and an unknown address too
    found = client.find(LIST, ["zoe@example.com"], fields=("city",))
    missing = client.find(LIST, ["nobody@example.com"])
    # Then the row comes back with Ownpage's spelling, the unknown one finds nothing, and the look-up
    # used an exact search over every status
    assert [(s.email, dict(s.data)) for s in found] == [("Zoe@Example.com", {"city": "Lyon"})]
    assert missing == []
    lookup = page_calls(emulator)[0]
    assert lookup.query["exact"] == "true" and lookup.query["status"] == "all"
    assert lookup.query["search"] == "zoe@example.com" and lookup.query["count"] == "100"


@integration
def test_find_ignores_rows_of_other_keys_when_the_server_ignores_search(unfriendly: Any) -> None:
    # Given a server that ignores `search` and `exact` (a page of the whole list), holding the
    # address in a decomposed Unicode spelling next to look-alikes
    server = unfriendly(lambda q: {k: v for k, v in q.items() if k not in ("search", "exact")})
    decomposed = unicodedata.normalize("NFD", "Zoë@Example.com")
    server.state.seed(
        LIST,
        [
            {"email": "zoe@example.com"},
            {"email": "zoë2@example.com"},
            {"email": decomposed, "data_city": "Lyon"},
            {"email": "other@example.com"},
        ],
    )
    client = make_client(server.url)
    # When the composed, lower-case spelling is looked up
    found = client.find(LIST, [unicodedata.normalize("NFC", "zoë@example.com")], fields=("city",))
    # Then only the row of that key comes back, in Ownpage's (decomposed) spelling
    assert [(s.email, dict(s.data)) for s in found] == [(decomposed, {"city": "Lyon"})]


@integration
def test_find_searches_every_spelling_and_returns_each_row_once(emulator: Any) -> None:
    # Given Ownpage holding one key under a decomposed spelling that its exact search only matches as such
    decomposed = unicodedata.normalize("NFD", "Zoë@example.com")
    emulator.state.seed(LIST, [{"email": decomposed}, {"email": "someone@example.com"}])
    client = make_client(emulator.url)
    # When the key is looked up with the spellings the source holds (blank ones ignored)
    found = client.find(LIST, [unicodedata.normalize("NFC", "zoë@example.com"), decomposed, " ", decomposed])
    # Then the row is found through the spelling Ownpage matches, once
    assert [s.email for s in found] == [decomposed]
    assert len(page_calls(emulator)) == 2


@integration
def test_find_many_looks_up_every_key(emulator: Any) -> None:
    # Given 3 readers in Ownpage
    emulator.state.seed(LIST, [{"email": "A@example.com"}, {"email": "b@example.com"}, {"email": "c@example.com"}])
    client = make_client(emulator.url, read_concurrency=4)
    # When 4 keys are looked up at once
    found = client.find_many(
        LIST, {"a@example.com": ["a@example.com"], "b@example.com": ["b@example.com"], "x@example.com": ["x@e.com"]}
    )
    # Then each key has its rows (none for the unknown one), and every search was settled
    assert {key: [s.email for s in rows_] for key, rows_ in found.rows.items()} == {
        "a@example.com": ["A@example.com"],
        "b@example.com": ["b@example.com"],
        "x@example.com": [],
    }
    assert found.undecided == frozenset()


@integration
def test_a_search_answered_with_look_alikes_pages_until_it_finds_the_row(emulator: Any) -> None:
    # Given an Ownpage ignoring `exact` (substring search), and 250 look-alikes stored before the reader
    rows = [{"email": f"x{n:03d}ann@example.org"} for n in range(250)] + [{"email": "Ann@example.org"}]
    emulator.state.seed(LIST, rows)
    emulator.set_faults(ignore_exact=True)
    client = make_client(emulator.url)
    # When the reader is looked up
    found = client.find_many(LIST, {"ann@example.org": ["ann@example.org"]})
    # Then the search read on past the full pages and found the row: settled, three pages
    assert [s.email for s in found.rows["ann@example.org"]] == ["Ann@example.org"]
    assert found.undecided == frozenset()
    assert len(page_calls(emulator)) == 3


@integration
def test_a_search_that_never_narrows_is_undecided_not_absent(emulator: Any) -> None:
    # Given an Ownpage ignoring `search` altogether, with the reader beyond the pages a search may read
    rows = [{"email": f"reader{n:04d}@example.org"} for n in range(600)] + [{"email": "ann@example.org"}]
    emulator.state.seed(LIST, rows)
    emulator.set_faults(ignore_search=True)
    client = make_client(emulator.url)
    # When the reader is looked up
    found = client.find_many(LIST, {"ann@example.org": ["ann@example.org"]})
    # Then the look-up stops after its bound and says it could not decide (not finding proves nothing)
    assert found.rows["ann@example.org"] == []
    assert found.undecided == frozenset({"ann@example.org"})
    assert len(page_calls(emulator)) == 5


# -- counts -------------------------------------------------------------------------------------------


@integration
def test_count_returns_ownpage_counts(emulator: Any) -> None:
    # Given 3 subscribed and 2 unsubscribed readers
    emulator.state.seed(
        LIST,
        [
            *rows(3),
            {"email": "b1@example.com", "subscribed": False, "unsubscribed_cause": "HARD_BOUNCE"},
            {"email": "b2@example.com", "subscribed": False, "unsubscribed_cause": "READER"},
        ],
    )
    # When counted
    counts = make_client(emulator.url).count(LIST)
    # Then
    assert (counts.subscribed, counts.unsubscribed) == (3, 2)
    assert counts.causes["HARD_BOUNCE"] == 1 and counts.causes["READER"] == 1


@integration
def test_an_unknown_list_is_a_configuration_error_naming_the_variable(emulator: Any) -> None:
    # Given a list id the account does not have
    client = make_client(emulator.url)
    # When it is counted (the run's fail-fast check)
    with pytest.raises(ConfigurationError, match="OWNPAGE_LIST_ID") as raised:
        client.count(999)
    # Then a configuration error after a single call, naming the list
    assert "999" in str(raised.value)
    assert len(api_calls(emulator, "/count")) == 1


@integration
def test_an_unknown_list_is_rejected_without_retry_when_read(emulator: Any) -> None:
    # Given a list id the account does not have
    client = make_client(emulator.url)
    # When it is read
    with pytest.raises(OwnpageRejected) as raised:
        read_all(client, 999)
    # Then a permanent rejection after a single call
    assert raised.value.status == 404
    assert len(api_calls(emulator, "/subscribers")) == 1


# -- writes -------------------------------------------------------------------------------------------


@integration
@pytest.mark.parametrize("shape", ["strings", "objects"])
def test_upsert_maps_per_row_errors_to_rejections(emulator: Any, shape: str, caplog: pytest.LogCaptureFixture) -> None:
    # Given Ownpage refusing one domain row by row, in either shape of `errors`
    caplog.set_level(logging.DEBUG)
    emulator.set_faults(reject_domains=("bad.test",), invalid_mode="per_row", errors_shape=shape)
    emulator.state.seed(LIST, [{"email": "old@example.com", "subscribed": True}])
    batch = [*ops("new@example.com", "x@bad.test", "y@"), Operation(Action.UNSUBSCRIBE, "old@example.com")]
    # When the batch is sent
    result = make_client(emulator.url).upsert(LIST, batch)
    # Then the valid rows are applied and each refused address is a Rejection without the address
    # in its reason; the summary's counts add up, so no disagreement is logged
    assert result.sent == 4
    assert sorted(result.rejected, key=lambda r: r.email) == [
        Rejection("x@bad.test", "email is not valid <address>" if shape == "strings" else "email is not valid"),
        Rejection("y@", "email is not valid <address>" if shape == "strings" else "email is not valid"),
    ]
    assert "errors" not in result.summary
    assert result.summary["nb_created"] == 1 and result.summary["nb_unsubscribed"] == 1
    assert emulator.state.subscriber(LIST, "new@example.com")["data_city"] == "Nice"
    assert emulator.state.subscriber(LIST, "old@example.com")["unsubscribed_cause"] == "PUBLISHER"
    assert "disagrees" not in caplog.text
    assert "x@bad.test" not in caplog.text


@integration
def test_whole_batch_refusal_names_the_addresses_in_an_attribute_only(
    emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given Ownpage refusing the whole batch when one address is invalid
    caplog.set_level(logging.DEBUG)
    emulator.set_faults(reject_domains=("bad.test",), invalid_mode="whole_batch")
    client = make_client(emulator.url)
    batch = ops("a@example.com", "x@bad.test", "b@example.com", "y@")
    # When it is sent
    with pytest.raises(OwnpageRejected) as raised:
        client.upsert(LIST, batch)
    # Then nothing was applied, the refused addresses are in `rejected_emails`, none in the message/logs
    error = raised.value
    assert error.status == 400
    assert set(error.rejected_emails) == {"x@bad.test", "y@"}
    assert "error(s)" in str(error)
    assert_leaks_nothing(error, caplog, "x@bad.test", "y@", "a@example.com")
    assert emulator.state.subscribers(LIST) == []
    # And when the caller drops them and re-sends the rest, it goes through
    rest = [op for op in batch if op.email not in error.rejected_emails]
    assert client.upsert(LIST, rest).summary["nb_created"] == 2


@integration
def test_upsert_refuses_more_than_20000_operations_before_any_call(emulator: Any) -> None:
    # Given 20,001 operations
    client = make_client(emulator.url)
    too_many = ops(*(f"r{i}@example.com" for i in range(20_001)))
    # When / Then a ValueError, and Ownpage was never called; an empty batch makes no call either
    with pytest.raises(ValueError, match="20000"):
        client.upsert(LIST, too_many)
    assert client.upsert(LIST, []).sent == 0
    assert emulator.state.requests == []


# -- transient failures -------------------------------------------------------------------------------


@integration
def test_a_flaky_ownpage_still_gives_a_complete_read_and_applied_writes(
    emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given 30% of calls answered 503 with Retry-After: 1, 5% of connections dropped (a dropped
    # write is applied first, its answer lost), and tokens expiring every 5 calls
    caplog.set_level(logging.WARNING, logger="ownpage_sync.ownpage")
    emulator.state.seed(LIST, rows(2_000))
    emulator.set_faults(
        error_rate=0.3, retry_after=1, drop_rate=0.05, drop_after_write=True, token_lifetime_calls=5, seed=11
    )
    sleeps = Sleeps()
    client = make_client(emulator.url, sleeps=sleeps, page_size=100, max_attempts=20, rng=lambda: 0.3)
    # When the list is read and 3 batches written
    read = {s.email for s in read_all(client, expected_rows=2_000)}
    for start in (0, 100, 200):
        result = client.upsert(LIST, ops(*(f"new{i}@example.com" for i in range(start, start + 100))))
        assert result.sent == 100 and result.rejected == ()
    # Then the read is complete and every write landed
    assert read == set(emails(2_000))
    stored = {row["email"] for row in emulator.state.subscribers(LIST)}
    assert {f"new{i}@example.com" for i in range(300)} <= stored
    # And faults did happen, each retried after a recorded wait; 503s waited at least Retry-After
    retries = [r for r in caplog.records if r.getMessage() == "Ownpage call failed; retrying"]
    assert len(retries) == len(sleeps.waits) > 5
    assert any(getattr(r, "status", None) is None for r in retries)  # dropped connections
    waits_after_503 = [r.wait_seconds for r in retries if getattr(r, "status", None) == 503]
    assert waits_after_503 and min(waits_after_503) >= 1.0
    assert all(r.attempt >= 1 for r in retries)


@integration
def test_a_retry_never_sleeps_past_the_deadline(emulator: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Given Ownpage always answering 503 with Retry-After: 5, and 12 s left on a fake clock
    emulator.set_faults(error_rate=1.0, retry_after=5)
    sleeps = Sleeps()
    deadline = Deadline(lambda: 12.0 - sleeps.elapsed)
    client = make_client(emulator.url, sleeps=sleeps, deadline=deadline, max_attempts=20)
    # When a call is made
    with pytest.raises(OwnpageUnavailable) as raised:
        client.count(LIST)
    # Then it waited 5 s twice (10 < 12) and gave up at once when the next 5 s would pass the deadline
    assert sleeps.waits == [5.0, 5.0]
    assert sleeps.elapsed < 12.0
    error = raised.value
    assert (error.status, error.retry_after, error.attempts) == (503, 5.0, 3)
    assert "deadline" in str(error)
    assert len(api_calls(emulator, "/token", method=None)) == 3  # the token request itself met the 503s


@integration
def test_no_call_is_started_once_the_deadline_has_passed(emulator: Any) -> None:
    # Given no time left
    client = make_client(emulator.url, deadline=Deadline(lambda: 0.0))
    # When / Then a transient error, and nothing reached Ownpage
    with pytest.raises(OwnpageUnavailable, match="deadline"):
        client.count(LIST)
    assert emulator.state.requests == []


@integration
@pytest.mark.parametrize("status", [502, 429])
def test_retries_are_exhausted_into_unavailable(emulator: Any, status: int) -> None:
    # Given every upsert answered 502 (or 429, without Retry-After) while reads work
    emulator.set_faults(fail_writes=True, error_status=status)
    sleeps = Sleeps()
    client = make_client(emulator.url, sleeps=sleeps, max_attempts=4, rng=lambda: 1.0)
    # When a batch is sent
    with pytest.raises(OwnpageUnavailable) as raised:
        client.upsert(LIST, ops("a@example.com"))
    # Then 4 POSTs were made with capped exponential waits between them (0.5, 1, 2)
    assert raised.value.attempts == 4 and raised.value.status == status and raised.value.transient
    assert sleeps.waits == [0.5, 1.0, 2.0]
    assert len(api_calls(emulator, "/subscribers", method="POST")) == 4


@integration
def test_a_read_timeout_is_transient(emulator: Any) -> None:
    # Given an Ownpage slower than the read timeout
    emulator.set_faults(latency=0.3)
    client = make_client(emulator.url, read_timeout=0.1, max_attempts=2)
    # When a call is made
    with pytest.raises(OwnpageUnavailable, match="timed out") as raised:
        client.count(LIST)
    # Then it was tried twice and failed as unavailable without a status
    assert raised.value.attempts == 2 and raised.value.status is None


@integration
def test_a_failing_lookup_leaks_neither_address_nor_token(emulator: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Given a lookup (the address travels in the URL) over connections that all drop
    caplog.set_level(logging.DEBUG)
    tokens = TokenCache()
    client = make_client(emulator.url, max_attempts=2, tokens=tokens)
    client.count(LIST)  # get a token first
    token = tokens.token
    assert token
    emulator.set_faults(drop_rate=1.0)
    # When the address is looked up
    with pytest.raises(OwnpageUnavailable) as raised:
        client.find(LIST, ["secret.reader@example.com"])
    # Then the failure says what happened but neither the address nor the token appears anywhere
    assert "connection" in str(raised.value)
    assert isinstance(raised.value.__cause__, TransportError)
    assert_leaks_nothing(raised.value, caplog, "secret.reader@example.com", "secret.reader%40example.com", token)


@unit
@pytest.mark.parametrize("legacy_get", [False, True], ids=["post", "get-form"])
def test_a_refused_connection_to_the_token_endpoint_leaks_no_credential(
    caplog: pytest.LogCaptureFixture, legacy_get: bool
) -> None:
    # Given nothing listening where Ownpage should be, with the POST form or the older GET form
    # (whose URL carries the key) of the token request
    caplog.set_level(logging.DEBUG)
    tokens = TokenCache()
    tokens.legacy_get = legacy_get
    with socket_closed_port() as port:
        client = make_client(f"http://127.0.0.1:{port}/v1", api_key="k3y-never-shown", max_attempts=2, tokens=tokens)
        # When any call is made
        with pytest.raises(OwnpageUnavailable) as raised:
            client.count(LIST)
    # Then it is transient, and the key is nowhere (message, chained cause, traceback, logs)
    assert raised.value.attempts == 2
    assert isinstance(raised.value.__cause__, TransportError)
    assert_leaks_nothing(raised.value, caplog, "k3y-never-shown")


# -- answers that are not the documented JSON ---------------------------------------------------------


@integration
def test_an_html_error_page_with_a_4xx_on_the_token_request_is_described(emulator: Any) -> None:
    # Given a proxy answering every call with an HTML 400 page
    emulator.set_faults(error_rate=1.0, error_status=400, html_errors=True)
    # When a call is made
    with pytest.raises(OwnpageProtocolError) as raised:
        make_client(emulator.url).count(LIST)
    # Then it is not taken for a verdict on the credentials (a proxy answered, not Ownpage: no
    # "fix the secret", no fall-back to the GET form that puts the key in a URL), and the reason names
    # the content type and the page's first characters
    assert raised.value.status == 400 and raised.value.transient
    assert "text/html" in str(raised.value) and "<html>" in str(raised.value)
    assert [r.method for r in emulator.state.requests if r.path == "/token"] == ["POST"]


@unit
def test_an_html_error_page_with_a_4xx_on_a_call_is_a_protocol_error_that_describes_it(canned: Any) -> None:
    # Given a proxy answering the count with an HTML 403 page showing an address
    page = b"<html><body>Forbidden. Write to admin@portal.example</body></html>"
    server = canned(token_then(lambda r: (403, "text/html; charset=utf-8", page)))
    # When it is counted
    with pytest.raises(OwnpageProtocolError) as raised:
        make_client(server.url).count(LIST)
    # Then not Ownpage's verdict on the request (a transient protocol error: queued, not rejected as
    # permanent) after one call, naming the content type and the page's start, no address
    message = str(raised.value)
    assert raised.value.status == 403
    assert "text/html" in message and "<html>" in message
    assert "admin" not in message
    assert server.calls.count(f"GET /v1/newsletters/lists/{LIST}/subscribers/count") == 1


@integration
def test_an_html_503_page_is_retried_then_reported_as_unavailable(emulator: Any) -> None:
    # Given a proxy answering every call with an HTML 503 page
    emulator.set_faults(error_rate=1.0, error_status=503, html_errors=True)
    sleeps = Sleeps()
    # When a call is made
    with pytest.raises(OwnpageUnavailable) as raised:
        make_client(emulator.url, sleeps=sleeps, max_attempts=3).count(LIST)
    # Then it was retried (the status says transient) and the reason shows what came back
    assert len(sleeps.waits) == 2
    assert "text/html" in str(raised.value)


@unit
def test_an_html_page_with_200_is_retried_then_a_protocol_error_without_addresses(canned: Any) -> None:
    # Given something answering 200 with an HTML page that happens to show an address
    page = b"<html><body>Welcome! Contact admin@portal.example or bob&#64;portal.example</body></html>"
    server = canned(token_then(lambda r: (200, "text/html; charset=utf-8", page)))
    sleeps = Sleeps()
    # When the list is read
    with pytest.raises(OwnpageProtocolError) as raised:
        read_all(make_client(server.url, sleeps=sleeps, max_attempts=4), expected_rows=10)
    # Then it was retried like a 5xx, and the reason is short and clear, the addresses masked out
    assert len([c for c in server.calls if c.endswith("/subscribers")]) == 4
    assert len(sleeps.waits) == 3
    message = str(raised.value)
    assert raised.value.status == 200
    assert "text/html" in message and "<html>" in message
    assert "admin" not in message and "portal" not in message
    assert len(message) < 200


@unit
def test_cut_json_is_retried_then_a_protocol_error(canned: Any) -> None:
    # Given a 200 whose JSON body is cut off
    server = canned(token_then(lambda r: (200, "application/json", b'[{"email": "a@example.com", "subscr')))
    sleeps = Sleeps()
    # When / Then
    with pytest.raises(OwnpageProtocolError, match="expected JSON") as raised:
        make_client(server.url, sleeps=sleeps, max_attempts=2).find(LIST, ["a@example.com"])
    assert len(sleeps.waits) == 1
    assert "a@example.com" not in str(raised.value)


@unit
def test_a_page_that_is_not_an_array_is_a_protocol_error(canned: Any) -> None:
    # Given a 200 answering a page read with a JSON object
    server = canned(token_then(lambda r: json_answer({"subscribers": []})))
    # When / Then
    with pytest.raises(OwnpageProtocolError, match="expected a JSON array of subscribers, got a JSON object"):
        read_all(make_client(server.url, max_attempts=2))


@unit
def test_a_summary_that_is_not_an_object_is_a_protocol_error(canned: Any) -> None:
    # Given an upsert answered with a JSON array
    server = canned(token_then(lambda r: (200, "application/json", b"[]")))
    # When / Then
    with pytest.raises(OwnpageProtocolError, match="object"):
        make_client(server.url).upsert(LIST, ops("a@example.com"))


@unit
def test_odd_summary_shapes_and_counts_are_handled(canned: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Given a summary whose `errors` is a single string and whose counts do not add up
    summary = {"errors": "email is not valid b@", "unique_emails_count": 5, "duplicate_emails_count": 0}
    server = canned(token_then(lambda r: json_answer(summary)))
    # When a batch of 2 is sent
    result = make_client(server.url).upsert(LIST, ops("a@example.com", "b@"))
    # Then the rejection is mapped, and a warning with counts only is logged
    assert result.rejected == (Rejection("b@", "email is not valid <address>"),)
    warning = next(r for r in caplog.records if r.getMessage() == "Ownpage summary disagrees with the batch sent")
    assert (warning.sent, warning.unique_emails_count) == (2, 5)
    assert "b@" not in caplog.text and "a@example.com" not in caplog.text


@unit
def test_an_error_document_with_status_200_is_a_rejection(canned: Any) -> None:
    # Given Ownpage answering 200 with its 400 error document
    body = b'{"status": 400, "cause": "1 error(s): email is not valid b@"}'
    server = canned(token_then(lambda r: (200, "application/json", body)))
    # When / Then the batch is refused with the address in the attribute only
    with pytest.raises(OwnpageRejected) as raised:
        make_client(server.url).upsert(LIST, ops("a@example.com", "b@"))
    assert raised.value.rejected_emails == ("b@",) and "b@" not in str(raised.value)


@unit
def test_a_refusal_echoing_addresses_token_and_key_in_any_spelling_leaks_none(
    canned: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a 400 whose cause repeats the token, the key and addresses, encoded in several ways
    caplog.set_level(logging.DEBUG)
    cause = (
        f"token {TOKEN} (client {CLIENT}, key {API_KEY}) may not write ann&#64;example.org, "
        "ann%40example.org, ann&commat;example.org, zed@other.test nor b@example.com"
    )
    server = canned(token_then(lambda r: json_answer({"status": 400, "cause": cause}, 400)))
    # When a batch is sent
    with pytest.raises(OwnpageRejected) as raised:
        make_client(server.url).upsert(LIST, ops("ann@example.org", "b@example.com"))
    # Then the message says what was refused with every one of them taken out
    message = str(raised.value)
    assert "<address>" in message and "<redacted>" in message
    assert "b@example.com" in raised.value.rejected_emails
    leaks = (TOKEN, API_KEY, "ann", "zed@other.test", "b@example.com", "%40", "&#64;", "&commat;")
    assert_leaks_nothing(raised.value, caplog, *leaks)


@unit
def test_close_leaves_a_callers_session_open() -> None:
    # Given a session owned by the caller
    session = requests.Session()
    closed: list[bool] = []
    session.close = lambda: closed.append(True)  # type: ignore[method-assign]
    settings = OwnpageSettings(api_url="http://127.0.0.1:9/v1", list_id=1, secret_id=None)
    # When the client is used as a context manager
    with OwnpageClient(settings, OwnpageCredentials("c", "k"), Deadline.unlimited(), session=session):
        pass
    # Then the caller's session is not closed by the client
    assert closed == []


class socket_closed_port:
    """A loopback port with nothing listening (bound, then closed)."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        return self.port

    def __exit__(self, *exc: object) -> None:
        return None
