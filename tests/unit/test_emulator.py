"""The Ownpage emulator, spoken to over real HTTP with `requests`: the API's documented behaviour, the
assumptions it makes where Ownpage's docs are silent, and every fault it can play."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from ownpage_sync_tools.cli import build_parser
from ownpage_sync_tools.cli.emulator_command import faults_from_args
from ownpage_sync_tools.emulator import EmulatorServer, Faults

pytestmark = pytest.mark.unit

TOKEN_HEADER = "X-Ownpage-Client-Token"
SUBSCRIBERS = "/newsletters/lists/1/subscribers"
CLI_MAIN = "import sys; from ownpage_sync_tools.cli import main; sys.exit(main(sys.argv[1:]))"


class Api:
    """A thin HTTP helper: fetches a token once, sends it on every call."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.session = requests.Session()
        self.session.headers[TOKEN_HEADER] = self.token()

    def token(self) -> str:
        response = requests.get(
            self.server.url + "/token", params={"username": "demo", "password": "demo-key"}, timeout=5
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.server.url + path, params=params, timeout=10)

    def post(self, path: str, payload: Any) -> requests.Response:
        return self.session.post(self.server.url + path, json=payload, timeout=10)

    def read(self, **params: Any) -> list[dict[str, Any]]:
        response = self.get(SUBSCRIBERS, **params)
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()
        return rows

    def upsert(self, payload: list[dict[str, Any]]) -> dict[str, Any]:
        response = self.post(SUBSCRIBERS, payload)
        assert response.status_code == 200, response.text
        summary: dict[str, Any] = response.json()
        return summary

    def row(self, email: str) -> dict[str, Any]:
        rows = self.read(search=email, exact="true", status="all")
        assert len(rows) == 1, rows
        return rows[0]


@pytest.fixture
def server(emulator: EmulatorServer) -> EmulatorServer:
    return emulator


@pytest.fixture
def api(server: EmulatorServer) -> Iterator[Api]:
    client = Api(server)
    yield client
    client.session.close()


def seed_rows(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [{"email": f"reader{i:03d}@example.com", **extra} for i in range(count)]


# ---- lifecycle ----------------------------------------------------------------------------------


def test_start_binds_a_free_port_before_returning_and_stop_releases_it() -> None:
    # Given an emulator on port 0
    server = EmulatorServer(port=0)
    # When it starts
    server.start()
    try:
        # Then it already answers on the port it picked, under /v1
        assert server.port != 0
        assert server.url == f"http://127.0.0.1:{server.port}/v1"
        assert requests.get(server.url + "/newsletters/lists", timeout=5).status_code == 401
    finally:
        server.stop()
    # And after stop() nothing listens there any more
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/newsletters/lists", timeout=2)
    server.stop()  # idempotent


def test_stop_closes_idle_keep_alive_connections(server: EmulatorServer) -> None:
    # Given a client holding a keep-alive connection
    api = Api(server)
    assert api.get("/newsletters/lists").status_code == 200
    # When the emulator stops
    server.stop()
    # Then the next call on that session fails instead of hanging
    with pytest.raises(requests.ConnectionError):
        api.get("/newsletters/lists")


# ---- tokens -------------------------------------------------------------------------------------


def test_token_is_issued_for_known_credentials_only(server: EmulatorServer) -> None:
    # When the right and a wrong API key ask for a token
    good = requests.get(server.url + "/token", params={"username": "demo", "password": "demo-key"}, timeout=5)
    bad = requests.get(server.url + "/token", params={"username": "demo", "password": "nope"}, timeout=5)
    # Then only the right one gets one
    assert good.status_code == 200 and len(good.json()["token"]) >= 20
    assert bad.status_code == 401
    assert bad.json() == {"status": 401, "cause": "Unauthorized"}


def test_custom_credentials_replace_the_default() -> None:
    with EmulatorServer(credentials={"client-7": "s3cret"}) as server:
        ok = requests.get(server.url + "/token", params={"username": "client-7", "password": "s3cret"}, timeout=5)
        default = requests.get(server.url + "/token", params={"username": "demo", "password": "demo-key"}, timeout=5)
    assert (ok.status_code, default.status_code) == (200, 401)


def test_calls_without_or_with_an_unknown_token_get_401(server: EmulatorServer) -> None:
    missing = requests.get(server.url + "/newsletters/lists", timeout=5)
    unknown = requests.get(server.url + "/newsletters/lists", headers={TOKEN_HEADER: "forged"}, timeout=5)
    assert (missing.status_code, unknown.status_code) == (401, 401)


def test_token_expires_after_its_lifetime_in_calls_and_a_new_one_works(server: EmulatorServer, api: Api) -> None:
    # Given tokens that answer 2 calls
    server.set_faults(token_lifetime_calls=2)
    api.session.headers[TOKEN_HEADER] = api.token()
    # When the same token is used three times
    statuses = [api.get("/newsletters/lists").status_code for _ in range(3)]
    # Then the third call is refused, and it stays refused
    assert statuses == [200, 200, 401]
    assert api.get("/newsletters/lists").status_code == 401
    # And a fresh token works again
    api.session.headers[TOKEN_HEADER] = api.token()
    assert api.get("/newsletters/lists").status_code == 200


def test_expire_tokens_invalidates_every_token_at_run_time(server: EmulatorServer, api: Api) -> None:
    assert api.get("/newsletters/lists").status_code == 200
    server.state.expire_tokens()
    assert api.get("/newsletters/lists").status_code == 401


# ---- lists, paging, limits, search --------------------------------------------------------------


def test_lists_start_with_newsletter_and_include_created_ones(server: EmulatorServer, api: Api) -> None:
    new_id = server.state.create_list("Weekly")
    lists = api.get("/newsletters/lists").json()
    assert [(item["id"], item["name"]) for item in lists] == [(1, "Newsletter"), (new_id, "Weekly")]
    assert new_id == 2
    assert all(item["created_at"].endswith("Z") and item["updated_at"] for item in lists)


def test_paging_by_offset_is_stable_insertion_order_and_empty_past_the_end(server: EmulatorServer, api: Api) -> None:
    # Given 25 subscribers
    server.state.seed(1, seed_rows(25))
    # When read 10 at a time
    pages = [api.read(status="all", offset=offset, count=10) for offset in (0, 10, 20, 30)]
    # Then pages are 10, 10, 5 and empty, in insertion order, without overlap
    assert [len(page) for page in pages] == [10, 10, 5, 0]
    emails = [row["email"] for page in pages for row in page]
    assert emails == [f"reader{i:03d}@example.com" for i in range(25)]


def test_default_count_is_1000_and_default_status_is_subscribed(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, seed_rows(1005))
    server.state.seed(1, [{"email": "gone@example.com", "subscribed": False}])
    assert len(api.read()) == 1000
    assert all(row["subscribed"] for row in api.read(offset=1000))
    assert len(api.read(offset=1000)) == 5


def test_status_filter_pages_over_the_matching_rows_only(server: EmulatorServer, api: Api) -> None:
    # Given alternating subscribed / unsubscribed rows
    server.state.seed(
        1, [{"email": f"r{i}@example.com", "subscribed": i % 2 == 0, "unsubscribed_cause": None} for i in range(20)]
    )
    # When paging the unsubscribed ones
    first = api.read(status="unsubscribed", offset=0, count=6)
    second = api.read(status="unsubscribed", offset=6, count=6)
    # Then offsets count within the filtered rows
    assert [row["email"] for row in first + second] == [f"r{i}@example.com" for i in range(1, 20, 2)]
    assert len(api.read(status="subscribed", count=100)) == 10
    assert len(api.read(status="all", count=100)) == 20


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"count": 10_001}, "count"),
        ({"count": 0}, "count"),
        ({"offset": -1}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"status": "bounced"}, "status"),
    ],
)
def test_bad_read_parameters_get_400_with_a_cause(api: Api, params: dict[str, Any], fragment: str) -> None:
    response = api.get(SUBSCRIBERS, **params)
    assert response.status_code == 400
    assert response.json()["status"] == 400 and fragment in response.json()["cause"]


def test_count_of_10000_is_the_maximum_accepted(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, seed_rows(10_001))
    assert len(api.read(count=10_000)) == 10_000


def test_payload_over_20000_rows_is_refused_whole(server: EmulatorServer, api: Api) -> None:
    # When 20,001 rows are posted
    response = api.post(SUBSCRIBERS, [{"email": f"p{i}@example.com"} for i in range(20_001)])
    # Then the call is refused and nothing is applied
    assert response.status_code == 400 and "20000" in response.json()["cause"]
    assert server.state.subscribers(1) == []


def test_payload_of_exactly_20000_rows_is_accepted(server: EmulatorServer, api: Api) -> None:
    summary = api.upsert([{"email": f"p{i}@example.com"} for i in range(20_000)])
    assert summary["nb_created"] == 20_000


@pytest.mark.parametrize("body", [b'{"email": "a@example.com"}', b"not json", b'["a@example.com"]'])
def test_malformed_write_bodies_get_400(server: EmulatorServer, api: Api, body: bytes) -> None:
    response = api.session.post(
        server.url + SUBSCRIBERS, data=body, headers={"Content-Type": "application/json"}, timeout=5
    )
    assert response.status_code == 400
    assert server.state.subscribers(1) == []


def test_unknown_list_and_path_are_404(api: Api) -> None:
    assert api.get("/newsletters/lists/99/subscribers").status_code == 404
    assert api.post("/newsletters/lists/99/subscribers", [{"email": "a@example.com"}]).status_code == 404
    assert api.get("/nothing/here").status_code == 404


def test_search_is_a_case_insensitive_substring_and_exact_matches_one_address(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": "Anna@Example.com"}, {"email": "joanna@example.com"}, {"email": "bob@example.com"}])
    substring = api.read(search="ANNA", status="all")
    exact = api.read(search="anna@example.COM", exact="true", status="all")
    missing = api.read(search="nobody@example.com", exact="true", status="all")
    assert [row["email"] for row in substring] == ["Anna@Example.com", "joanna@example.com"]
    assert [row["email"] for row in exact] == ["Anna@Example.com"]
    assert missing == []


def test_exact_search_honours_the_status_filter(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": "gone@example.com", "subscribed": False}])
    assert api.read(search="gone@example.com", exact="true") == []  # default status=subscribed
    assert len(api.read(search="gone@example.com", exact="true", status="unsubscribed")) == 1


def test_read_rows_have_the_documented_fields_and_keep_seeded_history(server: EmulatorServer, api: Api) -> None:
    server.state.seed(
        1,
        [
            {
                "email": "fan@example.com",
                "guid": "u-1",
                "data_firstname": "Ana",
                "last_sent_at": "2025-01-02T03:04:05Z",
                "last_open_at": "2025-01-03T00:00:00Z",
                "last_click_at": "2025-01-04T00:00:00Z",
                "send_count": 40,
                "open_count": 12,
                "click_count": 3,
            }
        ],
    )
    row = api.row("fan@example.com")
    assert set(row) == {
        "email",
        "guid",
        "subscribed",
        "subscribed_at",
        "unsubscribed_at",
        "unsubscribed_cause",
        "data_firstname",
        "last_sent_at",
        "last_open_at",
        "last_click_at",
        "send_count",
        "open_count",
        "click_count",
    }
    assert (row["guid"], row["subscribed"], row["send_count"], row["click_count"]) == ("u-1", True, 40, 3)
    assert row["subscribed_at"].endswith("Z") and row["unsubscribed_at"] is None


# ---- upsert semantics ---------------------------------------------------------------------------


def test_new_address_without_subscribed_is_created_subscribed_with_md5_guid(api: Api) -> None:
    # When a new address is posted without `subscribed`
    summary = api.upsert([{"email": "new@example.com", "data_city": "Lyon"}])
    # Then it is created and subscribed, with guid md5(email)
    assert summary == {
        "errors": [],
        "unique_emails_count": 1,
        "duplicate_emails_count": 0,
        "duplicate_guid_count": 0,
        "nb_created": 1,
        "nb_subscribed": 1,
        "nb_unsubscribed": 0,
        "nb_data_changed": 0,
    }
    row = api.row("new@example.com")
    assert row["subscribed"] is True and row["data_city"] == "Lyon"
    assert row["guid"] == hashlib.md5(b"new@example.com").hexdigest()
    assert row["send_count"] == 0 and row["last_sent_at"] is None


def test_absent_subscribed_keeps_an_unsubscribed_status_and_updates_data(server: EmulatorServer, api: Api) -> None:
    # Given a reader who unsubscribed on Ownpage's side
    server.state.seed(
        1,
        [
            {
                "email": "left@example.com",
                "subscribed": False,
                "unsubscribed_cause": "READER",
                "unsubscribed_at": "2025-01-01T00:00:00.000Z",
                "data_city": "Paris",
            }
        ],
    )
    # When a data-only update arrives (no `subscribed`)
    summary = api.upsert([{"email": "left@example.com", "data_city": "Nantes"}])
    # Then the status and cause are untouched, the data changed
    row = api.row("left@example.com")
    assert (row["subscribed"], row["unsubscribed_cause"], row["data_city"]) == (False, "READER", "Nantes")
    assert row["unsubscribed_at"] == "2025-01-01T00:00:00.000Z"
    assert (summary["nb_subscribed"], summary["nb_unsubscribed"], summary["nb_data_changed"]) == (0, 0, 1)


def test_invalid_subscribed_value_counts_as_absent(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": "a@example.com"}])
    summary = api.upsert([{"email": "a@example.com", "subscribed": "false"}])
    assert api.row("a@example.com")["subscribed"] is True
    assert summary["nb_unsubscribed"] == 0


def test_unsubscribe_defaults_to_reader_and_sets_unsubscribed_at(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": "a@example.com"}, {"email": "b@example.com"}])
    summary = api.upsert(
        [
            {"email": "a@example.com", "subscribed": False},
            {"email": "b@example.com", "subscribed": False, "unsubscribed_cause": "PUBLISHER"},
        ]
    )
    a, b = api.row("a@example.com"), api.row("b@example.com")
    assert (a["subscribed"], a["unsubscribed_cause"]) == (False, "READER")
    assert (b["subscribed"], b["unsubscribed_cause"]) == (False, "PUBLISHER")
    assert a["unsubscribed_at"] is not None and a["unsubscribed_at"].endswith("Z")
    assert summary["nb_unsubscribed"] == 2


def test_unknown_unsubscribed_cause_falls_back_to_reader(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": "a@example.com"}])
    api.upsert([{"email": "a@example.com", "subscribed": False, "unsubscribed_cause": "HARD_BOUNCE"}])
    assert api.row("a@example.com")["unsubscribed_cause"] == "READER"


def test_new_address_posted_unsubscribed_is_created_unsubscribed(api: Api) -> None:
    summary = api.upsert([{"email": "x@example.com", "subscribed": False, "unsubscribed_cause": "PUBLISHER"}])
    row = api.row("x@example.com")
    assert (row["subscribed"], row["unsubscribed_cause"], row["subscribed_at"]) == (False, "PUBLISHER", None)
    assert (summary["nb_created"], summary["nb_unsubscribed"], summary["nb_subscribed"]) == (1, 1, 0)


def test_resubscribe_clears_the_unsubscription_and_keeps_history(server: EmulatorServer, api: Api) -> None:
    server.state.seed(
        1, [{"email": "back@example.com", "subscribed": False, "unsubscribed_cause": "READER", "open_count": 9}]
    )
    summary = api.upsert([{"email": "back@example.com", "subscribed": True}])
    row = api.row("back@example.com")
    assert (row["subscribed"], row["unsubscribed_cause"], row["unsubscribed_at"]) == (True, None, None)
    assert row["open_count"] == 9
    assert summary["nb_subscribed"] == 1 and summary["nb_created"] == 0


def test_unsubscribing_keeps_the_history_fields(server: EmulatorServer, api: Api) -> None:
    # Given a subscriber with a behavioural history
    history = {
        "last_sent_at": "2025-02-01T00:00:00Z",
        "last_open_at": "2025-02-02T00:00:00Z",
        "last_click_at": "2025-02-03T00:00:00Z",
        "send_count": 50,
        "open_count": 20,
        "click_count": 5,
    }
    server.state.seed(1, [{"email": "loyal@example.com", "guid": "g-1", **history}])
    # When the sync unsubscribes, updates and tries to overwrite the history
    api.upsert([{"email": "loyal@example.com", "subscribed": False, "unsubscribed_cause": "PUBLISHER"}])
    api.upsert([{"email": "LOYAL@example.com", "data_x": "1", "send_count": 0, "last_sent_at": None}])
    # Then the history is intact: only the API's writable fields changed
    row = api.row("loyal@example.com")
    assert {name: row[name] for name in history} == history
    assert row["guid"] == "g-1" and row["data_x"] == "1"


def test_data_changes_are_counted_once_per_row_and_null_removes_an_attribute(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": "a@example.com", "data_city": "Lyon", "data_age": "30"}])
    same = api.upsert([{"email": "a@example.com", "data_city": "Lyon"}])
    changed = api.upsert([{"email": "a@example.com", "data_city": "Nice", "data_age": None}])
    row = api.row("a@example.com")
    assert same["nb_data_changed"] == 0
    assert changed["nb_data_changed"] == 1
    assert row["data_city"] == "Nice" and "data_age" not in row


def test_duplicates_in_a_payload_are_counted_and_ignored(api: Api) -> None:
    summary = api.upsert(
        [
            {"email": "a@example.com", "data_v": "first"},
            {"email": "A@EXAMPLE.COM", "data_v": "second"},  # same address, other spelling
            {"email": "b@example.com", "guid": "g-1"},
            {"email": "c@example.com", "guid": "g-1"},  # same guid as b
        ]
    )
    assert (summary["duplicate_emails_count"], summary["duplicate_guid_count"]) == (1, 1)
    assert summary["unique_emails_count"] == 2 and summary["nb_created"] == 2
    assert api.row("a@example.com")["data_v"] == "first"
    assert api.read(search="c@example.com", exact="true", status="all") == []


def test_addresses_match_case_insensitively_and_keep_their_first_spelling(server: EmulatorServer, api: Api) -> None:
    api.upsert([{"email": "Mixed.Case@Example.com"}])
    summary = api.upsert([{"email": "mixed.case@example.com", "subscribed": False}])
    rows = server.state.subscribers(1)
    assert len(rows) == 1 and rows[0]["email"] == "Mixed.Case@Example.com"
    assert summary["nb_created"] == 0 and summary["nb_unsubscribed"] == 1


def test_repeating_a_post_is_idempotent(server: EmulatorServer, api: Api) -> None:
    payload = [
        {"email": "a@example.com", "subscribed": True, "data_x": "1"},
        {"email": "b@example.com", "subscribed": False, "unsubscribed_cause": "PUBLISHER"},
    ]
    api.upsert(payload)
    before = server.state.subscribers(1)
    again = api.upsert(payload)
    assert server.state.subscribers(1) == before
    assert (again["nb_created"], again["nb_subscribed"], again["nb_unsubscribed"], again["nb_data_changed"]) == (
        0,
        0,
        0,
        0,
    )


def test_guid_given_on_an_update_replaces_the_stored_one(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": "a@example.com"}])
    api.upsert([{"email": "a@example.com", "guid": "crm-42"}])
    assert api.row("a@example.com")["guid"] == "crm-42"


# ---- invalid rows -------------------------------------------------------------------------------


def test_per_row_mode_lists_invalid_rows_as_strings_and_applies_the_rest(server: EmulatorServer, api: Api) -> None:
    summary = api.upsert([{"email": "user1@"}, {"email": "ok@example.com"}, {"guid": "no-email"}])
    assert summary["errors"] == ["email is not valid user1@", "email is missing"]
    assert summary["nb_created"] == 1 and summary["unique_emails_count"] == 1
    assert [row["email"] for row in server.state.subscribers(1)] == ["ok@example.com"]


def test_per_row_mode_can_use_object_errors(server: EmulatorServer, api: Api) -> None:
    server.set_faults(errors_shape="objects")
    summary = api.upsert([{"email": "bad address@x"}, {"email": "ok@example.com"}])
    assert summary["errors"] == [{"email": "bad address@x", "error": "email is not valid"}]
    assert summary["nb_created"] == 1


def test_whole_batch_mode_refuses_everything_with_ownpages_400(server: EmulatorServer, api: Api) -> None:
    # Given Ownpage failing the whole batch on one bad address
    server.set_faults(invalid_mode="whole_batch")
    # When a batch with one invalid address is posted
    response = api.post(SUBSCRIBERS, [{"email": "ok@example.com"}, {"email": "user1@"}])
    # Then the documented 400 comes back and nothing is applied
    assert response.status_code == 400
    assert response.json() == {"status": 400, "cause": "1 error(s): email is not valid user1@"}
    assert server.state.subscribers(1) == []


def test_reject_domains_reports_those_addresses_invalid(server: EmulatorServer, api: Api) -> None:
    server.set_faults(reject_domains=("Blocked.example",))
    summary = api.upsert([{"email": "x@blocked.example"}, {"email": "y@fine.example"}])
    assert summary["errors"] == ["email is not valid x@blocked.example"]
    assert [row["email"] for row in server.state.subscribers(1)] == ["y@fine.example"]


# ---- faults -------------------------------------------------------------------------------------


def test_error_rate_one_answers_every_call_with_the_status_and_retry_after(server: EmulatorServer, api: Api) -> None:
    server.set_faults(error_rate=1.0, error_status=429, retry_after=2)
    response = api.get("/newsletters/lists")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert response.json() == {"status": 429, "cause": "injected error (emulator)"}


def test_fractional_retry_after_is_sent_as_is(server: EmulatorServer, api: Api) -> None:
    server.set_faults(error_rate=1.0, retry_after=0.25)
    assert api.get("/newsletters/lists").headers["Retry-After"] == "0.25"


def test_injected_errors_never_apply_the_write(server: EmulatorServer, api: Api) -> None:
    server.set_faults(error_rate=1.0)
    assert api.post(SUBSCRIBERS, [{"email": "a@example.com"}]).status_code == 503
    assert server.state.subscribers(1) == []


def test_html_errors_come_with_an_html_body(server: EmulatorServer, api: Api) -> None:
    server.set_faults(error_rate=1.0, error_status=502, html_errors=True)
    response = api.get("/newsletters/lists")
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.text.lstrip().startswith("<html>")


def test_error_rate_is_a_share_and_reproducible_with_a_seed() -> None:
    def statuses(seed: int) -> list[int]:
        with EmulatorServer(faults=Faults(error_rate=0.5, seed=seed)) as server:
            return [
                requests.get(
                    server.url + "/token", params={"username": "demo", "password": "demo-key"}, timeout=5
                ).status_code
                for _ in range(40)
            ]

    first, second = statuses(7), statuses(7)
    assert first == second
    assert 5 < first.count(503) < 35 and set(first) == {200, 503}


def test_dropped_connections_get_no_response_and_are_logged_with_status_0(server: EmulatorServer, api: Api) -> None:
    server.set_faults(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        api.post(SUBSCRIBERS, [{"email": "a@example.com"}])
    assert server.state.subscribers(1) == []
    last = server.state.requests[-1]
    assert (last.method, last.path, last.status) == ("POST", SUBSCRIBERS, 0)
    # And the emulator keeps serving once the fault is off
    server.set_faults(drop_rate=0.0)
    assert api.get("/newsletters/lists").status_code == 200


def test_drop_after_write_applies_the_write_but_loses_the_answer(server: EmulatorServer, api: Api) -> None:
    server.set_faults(drop_rate=1.0, drop_after_write=True)
    with pytest.raises(requests.ConnectionError):
        api.post(SUBSCRIBERS, [{"email": "a@example.com"}])
    assert [row["email"] for row in server.state.subscribers(1)] == ["a@example.com"]


def test_latency_delays_each_api_call(server: EmulatorServer, api: Api) -> None:
    server.set_faults(latency=0.3)
    started = time.monotonic()
    assert api.get("/newsletters/lists").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_fail_writes_fails_posts_but_not_reads(server: EmulatorServer, api: Api) -> None:
    server.set_faults(fail_writes=True, error_status=500, retry_after=1)
    write = api.post(SUBSCRIBERS, [{"email": "a@example.com"}])
    assert (write.status_code, write.headers.get("Retry-After")) == (500, "1")
    assert api.get(SUBSCRIBERS).status_code == 200
    assert server.state.subscribers(1) == []


def test_set_faults_rejects_unknown_fields_and_bad_values(server: EmulatorServer) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        server.set_faults(eror_rate=0.5)
    with pytest.raises(ValueError, match="error_rate"):
        server.set_faults(error_rate=2)
    with pytest.raises(ValueError, match="invalid_mode"):
        server.set_faults(invalid_mode="sometimes")
    assert server.faults == Faults()


def test_faults_never_apply_to_the_control_api(server: EmulatorServer) -> None:
    server.set_faults(error_rate=1.0, drop_rate=1.0, latency=0.0)
    response = requests.get(server.control_url + "/state", timeout=5)
    assert response.status_code == 200 and response.json()["faults"]["error_rate"] == 1.0


# ---- control API --------------------------------------------------------------------------------


def test_control_api_changes_faults_seeds_lists_and_resets(server: EmulatorServer, api: Api) -> None:
    control = server.control_url
    # When faults are set over HTTP
    set_faults = requests.post(control + "/faults", json={"error_rate": 1.0, "reject_domains": ["x.io"]}, timeout=5)
    # Then the live object changed
    assert set_faults.status_code == 200
    assert server.faults.error_rate == 1.0 and server.faults.reject_domains == ("x.io",)
    assert requests.post(control + "/faults", json={"nope": 1}, timeout=5).status_code == 400
    # When a list is created and seeded over HTTP
    list_id = requests.post(control + "/lists", json={"name": "Promo"}, timeout=5).json()["id"]
    seeded = requests.post(
        control + "/seed", json={"list_id": list_id, "subscribers": [{"email": "s@example.com"}]}, timeout=5
    )
    # Then the state shows it
    assert seeded.json() == {"list_id": list_id, "seeded": 1}
    state = requests.get(control + "/state", params={"list_id": list_id}, timeout=5).json()
    assert [row["email"] for row in state["subscribers"]] == ["s@example.com"]
    assert [item["name"] for item in state["lists"]] == ["Newsletter", "Promo"]
    # When reset
    assert requests.post(control + "/reset", timeout=5).json() == {"reset": True}
    # Then state and faults are fresh
    assert server.faults == Faults()
    assert [item["id"] for item in server.state.lists()] == [1]
    assert requests.get(control + "/state", params={"list_id": list_id}, timeout=5).status_code == 404


def test_requests_are_logged_with_path_query_status_and_size(server: EmulatorServer, api: Api) -> None:
    api.read(status="all", offset=0, count=5)
    api.upsert([{"email": "a@example.com"}])
    records = requests.get(server.control_url + "/requests", timeout=5).json()
    assert [(r["method"], r["path"], r["status"]) for r in records] == [
        ("GET", "/token", 200),
        ("GET", SUBSCRIBERS, 200),
        ("POST", SUBSCRIBERS, 200),
    ]
    assert records[1]["query"] == {"status": "all", "offset": "0", "count": "5"}
    assert records[2]["body_size"] > 10 and records[0]["body_size"] == 0
    assert server.state.requests[2].time >= server.state.requests[0].time


# ---- destructive endpoints and counts -----------------------------------------------------------


def test_delete_endpoints_are_served_and_recorded_as_violations(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": "a@example.com", "send_count": 9}, {"email": "b@example.com"}])
    server.state.seed(1, [{"email": "c@example.com", "subscribed": False}])
    # When the destructive endpoints are called
    deleted = api.post(SUBSCRIBERS + "/delete", [{"email": "A@example.com"}])
    deleted_all = api.session.delete(server.url + SUBSCRIBERS + "/all", params={"status": "subscribed"}, timeout=5)
    # Then they did delete (history lost) and each call is a recorded violation
    assert deleted.json() == {"nb_deleted": 1} and deleted_all.json() == {"nb_deleted": 1}
    assert [row["email"] for row in server.state.subscribers(1)] == ["c@example.com"]
    assert server.state.violations == [
        "POST /newsletters/lists/1/subscribers/delete",
        "DELETE /newsletters/lists/1/subscribers/all",
    ]


def test_delete_attempts_are_violations_even_when_refused(server: EmulatorServer) -> None:
    requests.post(server.url + SUBSCRIBERS + "/delete", json=[{"email": "a@example.com"}], timeout=5)
    assert server.state.violations == ["POST /newsletters/lists/1/subscribers/delete"]


def test_count_reports_statuses_and_causes(server: EmulatorServer, api: Api) -> None:
    server.state.seed(
        1,
        [
            *seed_rows(3),
            {"email": "r@example.com", "subscribed": False, "unsubscribed_cause": "READER"},
            {"email": "h@example.com", "subscribed": False, "unsubscribed_cause": "HARD_BOUNCE"},
            {"email": "m@example.com", "subscribed": False, "unsubscribed_cause": "MULTIPLE_BOUNCES"},
        ],
    )
    api.upsert([{"email": "reader000@example.com", "subscribed": False, "unsubscribed_cause": "PUBLISHER"}])
    assert api.get(SUBSCRIBERS + "/count").json() == {
        "subscribed": 2,
        "unsubscribed": 4,
        "cause": {"HARD_BOUNCE": 1, "MULTIPLE_BOUNCES": 1, "PUBLISHER": 1, "READER": 1},
    }


def test_concurrent_writers_lose_nothing(server: EmulatorServer) -> None:
    # Given four clients posting disjoint batches at once
    def write(worker: int) -> None:
        client = Api(server)
        for batch in range(5):
            client.upsert([{"email": f"w{worker}-{batch}-{i}@example.com"} for i in range(200)])

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every row is there exactly once
    assert server.state.count(1)["subscribed"] == 4 * 5 * 200
    assert len({row["email"] for row in server.state.subscribers(1)}) == 4000


# ---- CLI ----------------------------------------------------------------------------------------


def test_cli_flags_map_onto_faults() -> None:
    args = build_parser().parse_args(
        [
            "emulator",
            "--port",
            "0",
            "--error-rate",
            "0.3",
            "--retry-after",
            "1",
            "--drop-rate",
            "0.05",
            "--token-lifetime",
            "5",
            "--reject-domains",
            "a.io,b.io",
            "--invalid-mode",
            "whole_batch",
            "--errors-shape",
            "objects",
            "--fail-writes",
            "--html-errors",
            "--seed",
            "3",
        ]
    )
    faults = faults_from_args(args)
    assert faults == Faults(
        error_rate=0.3,
        retry_after=1.0,
        drop_rate=0.05,
        token_lifetime_calls=5,
        reject_domains=("a.io", "b.io"),
        invalid_mode="whole_batch",
        errors_shape="objects",
        fail_writes=True,
        html_errors=True,
        seed=3,
    )


def test_cli_prints_the_url_serves_the_seed_file_and_stops_on_ctrl_c(tmp_path: Any) -> None:
    # Given a seed file
    seed_file = tmp_path / "seed.json"
    seed_file.write_text(json.dumps([{"email": "seeded@example.com", "send_count": 4}]), encoding="utf-8")
    # When the CLI runs
    process = subprocess.Popen(
        [sys.executable, "-c", CLI_MAIN, "emulator", "--port", "0", "--seed-file", str(seed_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        # Then stdout carries the base URL, and the seeded row is served
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        token = requests.get(url + "/token", params={"username": "demo", "password": "demo-key"}, timeout=5)
        rows = requests.get(
            url + SUBSCRIBERS, headers={TOKEN_HEADER: token.json()["token"]}, params={"status": "all"}, timeout=5
        ).json()
        assert [(row["email"], row["send_count"]) for row in rows] == [("seeded@example.com", 4)]
    finally:
        # And Ctrl-C stops it with status 0
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=10)
    assert code == 0, process.stderr.read() if process.stderr else ""


def test_cli_refuses_malformed_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    # Through the CLI's entry point: commands raise, main() turns it into one line and status 2
    from ownpage_sync_tools.cli import main

    assert main(["emulator", "--port", "0", "--credentials", "no-colon"]) == 2
    assert capsys.readouterr().err == "ownpage-sync: error: --credentials must look like CLIENT:KEY\n"
