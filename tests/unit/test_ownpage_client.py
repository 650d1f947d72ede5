"""The Ownpage client against the Ownpage emulator over real HTTP (integration), plus the parsing of
Ownpage's answers that the emulator cannot produce, against a tiny canned loopback server.

Sleeps are recorded rather than slept (the client takes `sleep`), so fault tests stay fast; the
deadline tests move a fake clock with each recorded sleep.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from ownpage_sync.deadline import Deadline
from ownpage_sync.errors import (
    OwnpageAuthError,
    OwnpageProtocolError,
    OwnpageRejected,
    OwnpageUnavailable,
)
from ownpage_sync.models import Action, Operation
from ownpage_sync.ownpage import OwnpageClient, _Addresses, _rejections
from ownpage_sync.ports import Rejection
from ownpage_sync.secrets import OwnpageCredentials
from ownpage_sync.settings import OwnpageSettings

integration = pytest.mark.integration
unit = pytest.mark.unit

CLIENT, API_KEY = "demo", "demo-key"  # the emulator's default credentials
LIST = 1


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
    **overrides: Any,
) -> OwnpageClient:
    fields: dict[str, Any] = {"page_size": 100, "max_attempts": 6, "backoff_base": 0.5, "backoff_cap": 4.0}
    fields.update(overrides)
    settings = OwnpageSettings(api_url=url, list_id=LIST, secret_id=None, **fields)
    return OwnpageClient(
        settings,
        OwnpageCredentials(CLIENT, api_key),
        deadline or Deadline.unlimited(),
        sleep=sleeps if sleeps is not None else Sleeps(),
        rng=rng,
    )


def rows(count: int, domain: str = "example.com", start: int = 0) -> list[dict[str, Any]]:
    return [{"email": f"reader{i}@{domain}", "data_city": f"city{i % 7}"} for i in range(start, start + count)]


def api_calls(emulator: Any, path_end: str = "", method: str = "GET") -> list[Any]:
    return [r for r in emulator.state.requests if r.method == method and r.path.endswith(path_end)]


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


# -- tokens -----------------------------------------------------------------------------------------


@integration
def test_token_is_renewed_transparently_during_a_multi_page_read(emulator: Any) -> None:
    # Given 250 readers and tokens that expire after 2 calls
    emulator.state.seed(LIST, rows(250))
    emulator.set_faults(token_lifetime_calls=2)
    client = make_client(emulator.url, page_size=50)
    # When the whole list is read (6 pages: the 6th is the empty one that ends the read)
    with client:
        read = list(client.iter_subscribers(LIST))
    # Then every reader is there once, and several tokens were needed without any error
    assert sorted(s.email for s in read) == sorted(r["email"] for r in rows(250))
    assert len(api_calls(emulator, "/token")) >= 3
    assert all(r.status == 401 for r in emulator.state.requests if r.status == 401)
    assert sum(1 for r in emulator.state.requests if r.status == 401) >= 2


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
    # Then it is an auth error after one token request, never retried, and the key is nowhere
    assert raised.value.status == 401
    assert len(api_calls(emulator, "/token")) == 1
    assert_leaks_nothing(raised.value, caplog, "wrong-key-s3cr3t")


# -- reads ------------------------------------------------------------------------------------------


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
    # When the list is read
    read = {s.email: s for s in client.iter_subscribers(LIST)}
    # Then addresses are normalised, data loses its prefix, times are aware UTC, the blank row is skipped
    assert set(read) == {"ann@example.com", "bob@example.com", "cy@example.com", "dee@example.com"}
    ann = read["ann@example.com"]
    assert ann.subscribed and ann.guid == "g-1"
    assert dict(ann.data) == {"firstname": "Ann", "age": "42"}
    bob = read["bob@example.com"]
    assert not bob.subscribed and bob.unsubscribed_cause == "READER"
    assert bob.unsubscribed_at == datetime(2025, 1, 31, 9, 15, 2, 123000, tzinfo=UTC)
    assert read["cy@example.com"].unsubscribed_at == datetime(2025, 1, 31, 10, 0, tzinfo=UTC)
    dee = read["dee@example.com"]
    assert not dee.subscribed and dee.unsubscribed_at is None and dee.unsubscribed_cause is None


@integration
def test_rows_repeated_across_pages_are_yielded_once(emulator: Any) -> None:
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
    read = [s.email for s in client.iter_subscribers(LIST, progress=progress)]
    # Then no address is yielded twice, every original reader is there, and progress saw each page
    assert len(read) == len(set(read))
    assert {r["email"] for r in original} <= set(read)
    assert sum(pages) == 34  # 10 + 10 + 10 + 4 rows delivered by the server, repeats included
    assert len(read) == 30  # the 4 newcomers before the cursor are missed this run (next run converges)


@integration
def test_a_100k_list_is_read_in_pages_of_10000(emulator: Any) -> None:
    # Given 100,000 readers
    emulator.state.seed(LIST, ({"email": f"r{i}@example.com"} for i in range(100_000)))
    client = make_client(emulator.url, page_size=10_000)
    done: list[int] = []
    started = time.monotonic()
    # When the list is streamed
    count = sum(1 for _ in client.iter_subscribers(LIST, progress=done.append))
    # Then all are read, in 10 full pages plus the empty one that ends the read
    assert count == 100_000
    assert done == [10_000] * 10
    pages = api_calls(emulator, "/subscribers")
    assert [int(r.query["offset"]) for r in pages] == list(range(0, 110_000, 10_000))
    assert all(r.query["count"] == "10000" and r.query["status"] == "all" for r in pages)
    assert time.monotonic() - started < 60


@integration
def test_get_subscriber_finds_one_address_case_insensitively(emulator: Any) -> None:
    # Given a list holding a mixed-case address and a similar one
    emulator.state.seed(LIST, [{"email": "Zoe@Example.com", "data_city": "Lyon"}, {"email": "zoe2@example.com"}])
    client = make_client(emulator.url)
    # When it is looked up, and an unknown address too
    found = client.get_subscriber(LIST, "zoe@example.com")
    missing = client.get_subscriber(LIST, "nobody@example.com")
    # Then the exact row comes back, the unknown one is None, and the lookup used exact search
    assert found is not None and found.email == "zoe@example.com" and dict(found.data) == {"city": "Lyon"}
    assert missing is None
    lookup = api_calls(emulator, "/subscribers")[0]
    assert lookup.query["exact"] == "true" and lookup.query["status"] == "all"


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
def test_an_unknown_list_is_rejected_without_retry(emulator: Any) -> None:
    # Given a list id the account does not have
    client = make_client(emulator.url)
    # When it is read
    with pytest.raises(OwnpageRejected) as raised:
        list(client.iter_subscribers(999))
    # Then a permanent rejection after a single call
    assert raised.value.status == 404
    assert len(api_calls(emulator, "/subscribers")) == 1


# -- writes -----------------------------------------------------------------------------------------


def ops(*emails: str) -> list[Operation]:
    return [Operation(Action.SUBSCRIBE, email, data={"city": "Nice"}) for email in emails]


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


# -- transient failures -----------------------------------------------------------------------------


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
    read = {s.email for s in client.iter_subscribers(LIST)}
    for start in (0, 100, 200):
        result = client.upsert(LIST, ops(*(f"new{i}@example.com" for i in range(start, start + 100))))
        assert result.sent == 100 and result.rejected == ()
    # Then the read is complete and every write landed
    assert read == {r["email"] for r in rows(2_000)}
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
    assert len(api_calls(emulator, "/token")) == 3  # the token request itself met the 503s


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
    client = make_client(emulator.url, max_attempts=2)
    client.count(LIST)  # get a token first
    token = client._token
    assert token
    emulator.set_faults(drop_rate=1.0)
    # When the address is looked up
    with pytest.raises(OwnpageUnavailable) as raised:
        client.get_subscriber(LIST, "secret.reader@example.com")
    # Then the failure says what happened but neither the address nor the token appears anywhere
    assert "connection" in str(raised.value)
    assert_leaks_nothing(raised.value, caplog, "secret.reader@example.com", "secret.reader%40example.com", token)


@unit
def test_a_refused_connection_to_the_token_endpoint_leaks_no_credential(caplog: pytest.LogCaptureFixture) -> None:
    # Given nothing listening where Ownpage should be (the URL of /token carries the key)
    caplog.set_level(logging.DEBUG)
    with socket_closed_port() as port:
        client = make_client(f"http://127.0.0.1:{port}/v1", api_key="k3y-never-shown", max_attempts=2)
        # When any call is made
        with pytest.raises(OwnpageUnavailable) as raised:
            client.count(LIST)
    # Then it is transient, and the key is nowhere (message, chained cause, traceback, logs)
    assert raised.value.attempts == 2
    assert_leaks_nothing(raised.value, caplog, "k3y-never-shown")


# -- answers that are not the documented JSON --------------------------------------------------------


@integration
def test_an_html_error_page_with_a_4xx_is_a_protocol_error(emulator: Any) -> None:
    # Given a proxy answering every call with an HTML 400 page
    emulator.set_faults(error_rate=1.0, error_status=400, html_errors=True)
    # When a call is made
    with pytest.raises(OwnpageProtocolError) as raised:
        make_client(emulator.url).count(LIST)
    # Then the reason names the content type and the page's first characters
    assert "text/html" in str(raised.value) and "<html>" in str(raised.value)


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


Answer = tuple[int, str, bytes]


class _Canned(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answer: Callable[[str, str, bytes], Answer]
    calls: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _respond(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?")[0]
        self.calls.append(f"{self.command} {path}")
        status, content_type, payload = type(self).answer(self.command, path, body)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _respond


@pytest.fixture
def canned() -> Iterator[Callable[[Callable[[str, str, bytes], Answer]], tuple[str, list[str]]]]:
    """A tiny loopback server playing answers the emulator cannot give (a 200 HTML page, cut JSON, a
    fresh token refused, odd summaries). Real HTTP; only the answers are scripted."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[str, str, bytes], Answer]) -> tuple[str, list[str]]:
        calls: list[str] = []
        handler = type("Handler", (_Canned,), {"answer": staticmethod(answer), "calls": calls})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1", calls

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def token_then(answer: Callable[[str, str, bytes], Answer]) -> Callable[[str, str, bytes], Answer]:
    def route(method: str, path: str, body: bytes) -> Answer:
        if path == "/v1/token":
            return 200, "application/json", b'{"token": "t0k3n-abc"}'
        return answer(method, path, body)

    return route


@unit
def test_an_html_page_with_200_is_a_protocol_error_without_addresses(canned: Any) -> None:
    # Given something answering 200 with an HTML page that happens to show an address
    page = b"<html><body>Welcome! Contact admin@portal.example for access</body></html>"
    url, _ = canned(token_then(lambda m, p, b: (200, "text/html; charset=utf-8", page)))
    # When the list is read
    with pytest.raises(OwnpageProtocolError) as raised:
        list(make_client(url).iter_subscribers(LIST))
    # Then the reason is short and clear, and the address is masked out
    message = str(raised.value)
    assert "text/html" in message and "<html>" in message
    assert "admin@portal.example" not in message and "admin" not in message
    assert len(message) < 200


@unit
def test_cut_json_is_a_protocol_error(canned: Any) -> None:
    # Given a 200 whose JSON body is cut off
    url, _ = canned(token_then(lambda m, p, b: (200, "application/json", b'[{"email": "a@example.com", "subscr')))
    # When / Then
    with pytest.raises(OwnpageProtocolError, match="expected JSON") as raised:
        make_client(url).get_subscriber(LIST, "a@example.com")
    assert "a@example.com" not in str(raised.value)


@unit
def test_a_summary_that_is_not_an_object_is_a_protocol_error(canned: Any) -> None:
    # Given an upsert answered with a JSON array
    url, _ = canned(token_then(lambda m, p, b: (200, "application/json", b"[]")))
    # When / Then
    with pytest.raises(OwnpageProtocolError, match="object"):
        make_client(url).upsert(LIST, ops("a@example.com"))


@unit
def test_a_fresh_token_refused_again_is_an_auth_error(canned: Any) -> None:
    # Given a server that issues tokens but refuses every one of them
    url, calls = canned(token_then(lambda m, p, b: (401, "application/json", b'{"status":401}')))
    # When a call is made
    with pytest.raises(OwnpageAuthError) as raised:
        make_client(url).count(LIST)
    # Then: token, call (401), new token, call (401) -> auth error; no endless renewal
    assert calls == ["GET /v1/token", f"GET /v1/newsletters/lists/{LIST}/subscribers/count"] * 2
    assert "t0k3n-abc" not in str(raised.value)


@unit
def test_odd_summary_shapes_and_counts_are_handled(canned: Any, caplog: pytest.LogCaptureFixture) -> None:
    # Given a summary whose `errors` is a single string and whose counts do not add up
    summary = {"errors": "email is not valid b@", "unique_emails_count": 5, "duplicate_emails_count": 0}
    url, _ = canned(token_then(lambda m, p, b: (200, "application/json", json.dumps(summary).encode())))
    # When a batch of 2 is sent
    result = make_client(url).upsert(LIST, ops("a@example.com", "b@"))
    # Then the rejection is mapped, and a warning with counts only is logged
    assert result.rejected == (Rejection("b@", "email is not valid <address>"),)
    warning = next(r for r in caplog.records if r.getMessage() == "Ownpage summary disagrees with the batch sent")
    assert (warning.sent, warning.unique_emails_count) == (2, 5)
    assert "b@" not in caplog.text and "a@example.com" not in caplog.text


@unit
def test_an_error_document_with_status_200_is_a_rejection(canned: Any) -> None:
    # Given Ownpage answering 200 with its 400 error document
    body = b'{"status": 400, "cause": "1 error(s): email is not valid b@"}'
    url, _ = canned(token_then(lambda m, p, b: (200, "application/json", body)))
    # When / Then the batch is refused with the address in the attribute only
    with pytest.raises(OwnpageRejected) as raised:
        make_client(url).upsert(LIST, ops("a@example.com", "b@"))
    assert raised.value.rejected_emails == ("b@",) and "b@" not in str(raised.value)


@unit
@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        (None, ()),
        ([], ()),
        ("", ()),
        (["email is not valid X@Bad.test"], (Rejection("x@bad.test", "email is not valid <address>"),)),
        ([{"email": "x@bad.test", "error": "email is not valid"}], (Rejection("x@bad.test", "email is not valid"),)),
        ({"x@bad.test": "email is not valid"}, (Rejection("x@bad.test", "<address>: email is not valid"),)),
        ({"email": "y@", "reason": "bounced"}, (Rejection("y@", "bounced"),)),
        # an error naming no address of the batch is still surfaced, with email ""
        (["quota exceeded"], (Rejection("", "quota exceeded"),)),
        (["email is not valid stranger@other.test"], (Rejection("", "email is not valid <address>"),)),
        ([42], (Rejection("", "42"),)),
        # one text naming two addresses of the batch gives two rejections
        (
            "2 error(s): y@, x@bad.test",
            (
                Rejection("y@", "2 error(s): <address>, <address>"),
                Rejection("x@bad.test", "2 error(s): <address>, <address>"),
            ),
        ),
    ],
)
def test_rejections_from_every_shape_of_errors(errors: Any, expected: tuple[Rejection, ...]) -> None:
    # Given a batch and one shape of Ownpage's `errors`
    batch = _Addresses(["a@example.com", "x@bad.test", "y@"])
    # When mapped / Then the addresses are identified and absent from the reasons
    assert _rejections(errors, batch, ()) == expected


@unit
def test_an_invalid_address_without_at_sign_is_still_redacted() -> None:
    # Given a batch with an address that has no @ at all
    batch = _Addresses(["not-an-address", "a@example.com"])
    # When Ownpage names it
    rejections = _rejections(["email is not valid not-an-address"], batch, ())
    # Then it is identified, and the reason does not repeat it
    assert rejections == (Rejection("not-an-address", "email is not valid <address>"),)


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
