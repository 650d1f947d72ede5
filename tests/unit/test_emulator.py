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
from ownpage_sync_tools.cli import build_parser, emulator_command
from ownpage_sync_tools.cli.emulator_command import faults_from_args, read_seed_file, write_seed_file
from ownpage_sync_tools.emulator import EmulatorProcess, EmulatorServer, Faults
from ownpage_sync_tools.emulator import state as emulator_state

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


def test_an_error_burst_fails_exactly_the_next_n_calls_in_scope(server: EmulatorServer, api: Api) -> None:
    # Given a burst of three 503s with a long Retry-After, aimed at writes only
    server.set_faults(error_burst=3, retry_after=3600, fault_scope="writes")
    # When reads and writes alternate
    reads = [api.get(SUBSCRIBERS).status_code for _ in range(2)]
    writes = [api.post(SUBSCRIBERS, [{"email": f"w{i}@example.com"}]) for i in range(4)]
    # Then the reads are untouched, the first three writes fail (nothing applied), the fourth is served
    assert reads == [200, 200]
    assert [w.status_code for w in writes] == [503, 503, 503, 200]
    assert writes[0].headers.get("Retry-After") == "3600"
    assert [row["email"] for row in server.state.subscribers(1)] == ["w3@example.com"]
    assert server.faults.error_burst == 0


def test_faults_scoped_to_reads_leave_writes_and_the_token_alone(server: EmulatorServer, api: Api) -> None:
    # Given every read dropped, and latency for a share of the calls in scope only
    server.set_faults(drop_rate=1.0, fault_scope="reads")
    # Then a write (and the token it needs) is served, a read is dropped
    assert api.post(SUBSCRIBERS, [{"email": "a@example.com"}]).status_code == 200
    with pytest.raises(requests.ConnectionError):
        api.get(SUBSCRIBERS)
    # And with latency_rate 0 nothing is slowed, with 1 every call in scope is
    server.set_faults(drop_rate=0.0, latency=0.3, latency_rate=0.0)
    started = time.monotonic()
    api.get(SUBSCRIBERS)
    assert time.monotonic() - started < 0.3
    server.set_faults(latency_rate=1.0)
    started = time.monotonic()
    api.post(SUBSCRIBERS, [{"email": "b@example.com"}])
    assert time.monotonic() - started < 0.3  # a write is out of scope
    api.get(SUBSCRIBERS)
    assert time.monotonic() - started >= 0.3


def test_an_unnamed_whole_batch_refusal_names_no_address(server: EmulatorServer, api: Api) -> None:
    server.set_faults(reject_domains=("bad.io",), invalid_mode="whole_batch_unnamed")
    answer = api.post(SUBSCRIBERS, [{"email": "ok@example.com"}, {"email": "x@bad.io"}])
    assert answer.status_code == 400 and answer.json() == {"status": 400, "cause": "1 error(s) in the payload"}
    assert server.state.subscribers(1) == []


def test_unnamed_per_row_errors_say_what_but_not_which(server: EmulatorServer, api: Api) -> None:
    server.set_faults(reject_domains=("bad.io",), errors_shape="unnamed")
    summary = api.post(SUBSCRIBERS, [{"email": "ok@example.com"}, {"email": "x@bad.io"}]).json()
    assert summary["errors"] == ["email is not valid"] and summary["unique_emails_count"] == 1


def test_set_faults_rejects_unknown_fields_and_bad_values(server: EmulatorServer) -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        server.set_faults(eror_rate=0.5)
    with pytest.raises(ValueError, match="error_rate"):
        server.set_faults(error_rate=2)
    with pytest.raises(ValueError, match="invalid_mode"):
        server.set_faults(invalid_mode="sometimes")
    with pytest.raises(ValueError, match="fault_scope"):
        server.set_faults(fault_scope="tokens")
    with pytest.raises(ValueError, match="error_burst"):
        server.set_faults(error_burst=-1)
    with pytest.raises(ValueError, match="latency_rate"):
        server.set_faults(latency_rate=1.5)
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
            "--error-burst",
            "4",
            "--fault-scope",
            "writes",
            "--latency-rate",
            "0.5",
            "--seed",
            "3",
        ]
    )
    faults = faults_from_args(args)
    assert faults == Faults(
        error_burst=4,
        fault_scope="writes",
        latency_rate=0.5,
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


def test_ctrl_c_stops_the_emulator_even_when_started_with_sigint_ignored(tmp_path: Any) -> None:
    # Given the emulator started the way a shell starts a background job: SIGINT ignored
    process = subprocess.Popen(
        [sys.executable, "-m", "ownpage_sync_tools.emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert process.stdout is not None and process.stdout.readline().startswith("http://127.0.0.1:")
        # When it gets Ctrl-C
        process.send_signal(signal.SIGINT)
        # Then it stops, with status 0 (EmulatorProcess.stop relies on it)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_cli_refuses_malformed_credentials(capsys: pytest.CaptureFixture[str]) -> None:
    # Through the CLI's entry point: commands raise, main() turns it into one line and status 2
    from ownpage_sync_tools.cli import main

    assert main(["emulator", "--port", "0", "--credentials", "no-colon"]) == 2
    assert capsys.readouterr().err == "ownpage-sync: error: --credentials must look like CLIENT:KEY\n"


# ---- token by POST ------------------------------------------------------------------------------


def test_token_by_post_with_a_json_body_is_the_current_form(server: EmulatorServer) -> None:
    # When a token is asked for by POST, as Ownpage's current reference documents
    good = requests.post(server.url + "/token", json={"username": "demo", "password": "demo-key"}, timeout=5)
    wrong = requests.post(server.url + "/token", json={"username": "demo", "password": "nope"}, timeout=5)
    # Then the right key gets a token that works, a wrong one 401
    assert good.status_code == 200
    lists = requests.get(server.url + "/newsletters/lists", headers={TOKEN_HEADER: good.json()["token"]}, timeout=5)
    assert lists.status_code == 200
    assert (wrong.status_code, wrong.json()) == (401, {"status": 401, "cause": "Unauthorized"})


@pytest.mark.parametrize("body", [b"not json", b'["demo", "demo-key"]', b'{"username": "demo"}', b'{"username": 1}'])
def test_token_post_with_a_malformed_body_is_400(server: EmulatorServer, body: bytes) -> None:
    response = requests.post(server.url + "/token", data=body, headers={"Content-Type": "application/json"}, timeout=5)
    assert response.status_code == 400 and response.json()["status"] == 400


@pytest.mark.parametrize(("token_method", "refused"), [("post", "GET"), ("get", "POST")])
def test_token_method_serves_one_form_and_answers_405_to_the_other(
    server: EmulatorServer, token_method: str, refused: str
) -> None:
    # Given an Ownpage that serves only one form of /token
    server.set_faults(token_method=token_method)
    credentials = {"username": "demo", "password": "demo-key"}
    # When both forms are tried
    by_get = requests.get(server.url + "/token", params=credentials, timeout=5)
    by_post = requests.post(server.url + "/token", json=credentials, timeout=5)
    # Then the other form is refused with 405
    statuses = {"GET": by_get.status_code, "POST": by_post.status_code}
    assert statuses[refused] == 405
    assert statuses[({"GET", "POST"} - {refused}).pop()] == 200


# ---- order of reads -----------------------------------------------------------------------------


def emails_of(rows: list[dict[str, Any]]) -> list[str]:
    return [row["email"] for row in rows]


def naive_read(api: Api, page_size: int, **params: Any) -> list[str]:
    """What a reader that trusts offset paging sees: pages until the first empty one."""
    seen: list[str] = []
    offset = 0
    while True:
        page = api.read(status="all", offset=offset, count=page_size, **params)
        if not page:
            return seen
        seen += emails_of(page)
        offset += len(page)


@pytest.mark.parametrize("order", ["insertion", "last_change"])
def test_last_change_order_moves_a_changed_row_to_the_end(server: EmulatorServer, api: Api, order: str) -> None:
    # Given five rows
    server.state.seed(1, seed_rows(5, data_city="Lyon"))
    server.set_faults(order=order)
    # When one row really changes, and another gets a write that changes nothing
    api.upsert([{"email": "reader001@example.com", "data_city": "Nice"}])
    api.upsert([{"email": "reader002@example.com", "data_city": "Lyon"}])
    # Then with last_change only the changed row went to the end; with insertion nothing moved
    expected = {
        "insertion": [0, 1, 2, 3, 4],
        "last_change": [0, 2, 3, 4, 1],
    }[order]
    assert emails_of(api.read(status="all")) == [f"reader{i:03d}@example.com" for i in expected]


def test_last_change_order_moves_unsubscribed_and_resubscribed_rows(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, seed_rows(4))
    server.set_faults(order="last_change")
    api.upsert([{"email": "reader000@example.com", "subscribed": False, "unsubscribed_cause": "PUBLISHER"}])
    api.upsert([{"email": "reader001@example.com", "subscribed": False}])
    api.upsert([{"email": "reader000@example.com", "subscribed": True}])
    assert emails_of(api.read(status="all")) == [
        "reader002@example.com",
        "reader003@example.com",
        "reader001@example.com",
        "reader000@example.com",
    ]


def test_random_order_is_a_fresh_shuffle_on_every_read(server: EmulatorServer, api: Api) -> None:
    # Given 100 rows and a random order
    server.state.seed(1, seed_rows(100))
    server.set_faults(order="random", seed=7)
    inserted = [f"reader{i:03d}@example.com" for i in range(100)]
    # When the whole list is read in one page, twice
    first, second = emails_of(api.read(status="all", count=100)), emails_of(api.read(status="all", count=100))
    # Then each read is a permutation of every row, each in another order
    assert sorted(first) == sorted(second) == inserted
    assert first != second and first != inserted
    # And a reader paging 10 at a time over fresh shuffles sees some rows twice and misses others
    paged = naive_read(api, 10)
    assert len(paged) == 100
    assert len(set(paged)) < 100


def test_random_order_honours_the_status_filter(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": f"r{i}@example.com", "subscribed": i % 3 == 0} for i in range(60)])
    server.set_faults(order="random", seed=3)
    rows = api.read(status="unsubscribed", count=100)
    assert len(rows) == 40 and not any(row["subscribed"] for row in rows)
    assert len(api.read(status="subscribed", offset=15, count=100)) == 5


def test_random_order_is_reproducible_with_a_seed() -> None:
    def read_twice(seed: int) -> list[list[str]]:
        with EmulatorServer(faults=Faults(order="random", seed=seed)) as server:
            server.state.seed(1, seed_rows(50))
            api = Api(server)
            return [emails_of(api.read(status="all", count=20, offset=10)) for _ in range(2)]

    assert read_twice(5) == read_twice(5)


# ---- the list changing while it is paged --------------------------------------------------------


def test_move_per_page_makes_a_naive_offset_reader_skip_and_repeat_rows(server: EmulatorServer, api: Api) -> None:
    # Given 30,000 rows, and 25 of them changing (moving to the end) after every page served
    server.state.seed(1, seed_rows(30_000, data_city="Lyon"))
    before = sorted(server.state.subscribers(1), key=lambda row: row["email"])
    server.set_faults(move_per_page=25, seed=11)
    # When a reader trusts offset paging, 1,000 rows a page
    seen = naive_read(api, 1_000)
    # Then it saw some rows twice and missed others
    everyone = {row["email"] for row in before}
    assert len(seen) > len(set(seen)), "no row was seen twice"
    assert everyone - set(seen), "no row was missed"
    # And the moved rows changed place only, not content
    assert sorted(server.state.subscribers(1), key=lambda row: row["email"]) == before


def test_move_per_page_leaves_searches_alone(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, seed_rows(50))
    server.set_faults(move_per_page=10, seed=1)
    for _ in range(5):
        api.read(search="reader0", status="all")
    assert emails_of(server.state.subscribers(1)) == [f"reader{i:03d}@example.com" for i in range(50)]


def test_delete_offset_deletes_one_row_after_the_next_page_then_resets(server: EmulatorServer, api: Api) -> None:
    # Given 30 rows and someone about to delete the row at offset 5 in Ownpage's dashboard
    server.state.seed(1, seed_rows(30))
    server.set_faults(delete_offset=5)
    # When a reader pages 10 at a time
    seen = naive_read(api, 10)
    # Then row 5 was deleted after the first page, so the next page started one row later:
    # row 10, still in the list, was never seen
    stored = emails_of(server.state.subscribers(1))
    assert "reader005@example.com" not in stored and len(stored) == 29
    assert "reader010@example.com" in stored and "reader010@example.com" not in seen
    assert set(seen) == set(stored) - {"reader010@example.com"} | {"reader005@example.com"}
    # And the fault fired once: it reset itself, and a dashboard delete is no violation
    assert server.faults.delete_offset is None
    assert naive_read(api, 10) == stored
    assert server.state.violations == []


def test_empty_page_offset_answers_one_empty_page_at_that_offset(server: EmulatorServer, api: Api) -> None:
    # Given 30 rows and an Ownpage that will answer [] once at offset 10
    server.state.seed(1, seed_rows(30))
    server.set_faults(empty_page_offset=10)
    # When offsets 0, 10 and 10 again are read
    first = api.read(status="all", offset=0, count=10)
    empty = api.read(status="all", offset=10, count=10)
    again = api.read(status="all", offset=10, count=10)
    # Then the read at offset 0 did not use the fault up, the first read at 10 was empty, the next one not
    assert len(first) == 10 and empty == [] and len(again) == 10
    assert server.faults.empty_page_offset is None


def test_empty_page_offset_stops_a_naive_reader_early(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, seed_rows(30))
    server.set_faults(empty_page_offset=20)
    assert len(naive_read(api, 10)) == 20


# ---- parameters Ownpage may ignore --------------------------------------------------------------


def seed_mixed(server: EmulatorServer) -> None:
    """Three subscribed rows, then two unsubscribed ones."""
    server.state.seed(1, seed_rows(3))
    server.state.seed(1, [{"email": f"gone{i}@example.com", "subscribed": False} for i in range(2)])


def test_ignore_status_all_serves_status_all_as_subscribed(server: EmulatorServer, api: Api) -> None:
    seed_mixed(server)
    assert len(api.read(status="all")) == 5
    server.set_faults(ignore_status_all=True)
    assert all(row["subscribed"] for row in api.read(status="all")) and len(api.read(status="all")) == 3
    assert len(api.read(status="unsubscribed")) == 2


def test_ignore_status_always_serves_the_subscribed_rows(server: EmulatorServer, api: Api) -> None:
    seed_mixed(server)
    server.set_faults(ignore_status=True)
    for status in ("unsubscribed", "all", "subscribed"):
        rows = api.read(status=status)
        assert len(rows) == 3 and all(row["subscribed"] for row in rows), status


def test_ignore_offset_makes_every_page_the_first(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, seed_rows(25))
    server.set_faults(ignore_offset=True)
    pages = [emails_of(api.read(status="all", offset=offset, count=10)) for offset in (0, 10, 20, 30)]
    assert pages == [pages[0]] * 4 and len(pages[0]) == 10


def test_never_empty_repeats_the_last_page_past_the_end(server: EmulatorServer, api: Api) -> None:
    # Given 25 rows read 10 at a time
    server.state.seed(1, seed_rows(25))
    last = emails_of(api.read(status="all", offset=20, count=10))
    assert api.read(status="all", offset=30, count=10) == []
    # When Ownpage never answers an empty page
    server.set_faults(never_empty=True)
    # Then a read past the end gets the last page again
    assert emails_of(api.read(status="all", offset=30, count=10)) == last
    assert emails_of(api.read(status="all", offset=500, count=10)) == last
    assert len(last) == 5


def test_never_empty_still_answers_an_empty_list_with_nothing(server: EmulatorServer, api: Api) -> None:
    server.set_faults(never_empty=True)
    assert api.read(status="all", offset=10) == []


def test_ignore_exact_keeps_search_a_substring(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": "anna@example.com"}, {"email": "joanna@example.com"}])
    assert emails_of(api.read(search="anna@example.com", exact="true")) == ["anna@example.com"]
    server.set_faults(ignore_exact=True)
    assert emails_of(api.read(search="anna@example.com", exact="true")) == ["anna@example.com", "joanna@example.com"]


def test_ignore_search_serves_a_page_of_the_whole_list(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, seed_rows(3))
    server.set_faults(ignore_search=True)
    rows = api.read(search="nobody@example.com", exact="true", status="all")
    assert emails_of(rows) == [f"reader{i:03d}@example.com" for i in range(3)]


def test_max_count_caps_pages_silently(server: EmulatorServer, api: Api) -> None:
    # Given an Ownpage that never serves more than 20 rows a call
    server.state.seed(1, seed_rows(50))
    server.set_faults(max_count=20)
    # When 50, and then more than the documented maximum, are asked for
    # Then 20 come back, with no error
    assert len(api.read(status="all", count=50)) == 20
    assert len(api.read(status="all", count=20_000)) == 20
    assert len(api.read(status="all", count=5)) == 5


# ---- matching -----------------------------------------------------------------------------------


def test_exact_matching_makes_another_spelling_a_second_row(server: EmulatorServer, api: Api) -> None:
    # Given Ownpage keeping the spelling it was given and matching it exactly
    server.set_faults(matching="exact")
    server.state.seed(1, [{"email": "Ann@X.com"}])
    # When an upsert spells the address in lower case
    summary = api.upsert([{"email": "ann@x.com", "subscribed": False, "unsubscribed_cause": "PUBLISHER"}])
    # Then the stored row is untouched and a twin was created, and recorded
    assert summary["nb_created"] == 1
    rows = {row["email"]: row for row in server.state.subscribers(1)}
    assert rows["Ann@X.com"]["subscribed"] is True and rows["ann@x.com"]["subscribed"] is False
    assert server.state.twins == ["ann@x.com"]


def test_exact_matching_searches_are_case_sensitive(server: EmulatorServer, api: Api) -> None:
    server.set_faults(matching="exact")
    server.state.seed(1, [{"email": "Ann@X.com"}, {"email": "ann@x.com"}, {"email": "joann@x.com"}])
    assert len(server.state.subscribers(1)) == 3  # seeding matched exactly too
    assert emails_of(api.read(search="ann@x.com", exact="true")) == ["ann@x.com"]
    assert emails_of(api.read(search="ANN@X.COM", exact="true")) == []
    assert emails_of(api.read(search="ann")) == ["ann@x.com", "joann@x.com"]
    assert emails_of(api.read(search="Ann")) == ["Ann@X.com"]


def test_exact_matching_tells_unicode_forms_apart_and_records_the_twin(server: EmulatorServer, api: Api) -> None:
    composed, decomposed = "zo\u00eb@example.com", "zoe\u0308@example.com"
    server.set_faults(matching="exact")
    server.state.seed(1, [{"email": composed}])
    api.upsert([{"email": decomposed}])
    assert emails_of(server.state.subscribers(1)) == [composed, decomposed]
    assert server.state.twins == [decomposed]


def test_idna_domains_keep_what_is_written_in_ownpages_spelling(server: EmulatorServer, api: Api) -> None:
    # Given an Ownpage keeping domains in IDNA, holding one reader in that spelling
    server.set_faults(domains="idna")
    server.state.seed(1, [{"email": "ana@xn--caf-dma.fr", "subscribed": False, "unsubscribed_cause": "READER"}])
    # When the Unicode spelling of her address, and a new one, are written and searched for
    summary = api.upsert([{"email": "ana@café.fr"}, {"email": "zoë@exämple.org"}])
    # Then hers reached her row (its status kept), the new one is kept in IDNA, and a search in Unicode finds both
    assert summary["nb_created"] == 1
    rows = {row["email"]: row for row in server.state.subscribers(1)}
    assert (
        set(rows) == {"ana@xn--caf-dma.fr", "zoë@xn--exmple-cua.org"}
        and rows["ana@xn--caf-dma.fr"]["subscribed"] is False
    )
    assert emails_of(api.read(search="zoë@exämple.org", exact="true")) == ["zoë@xn--exmple-cua.org"]
    assert server.state.twins == []


def test_a_row_beside_its_idna_spelling_is_a_twin(server: EmulatorServer, api: Api) -> None:
    # Given an Ownpage matching exactly, holding a reader with her domain in IDNA
    server.set_faults(matching="exact")
    server.state.seed(1, [{"email": "ana@xn--caf-dma.fr"}])
    # When her address is written with the domain in Unicode / Then a second row is created: a twin
    api.upsert([{"email": "ana@café.fr"}])
    assert server.state.twins == ["ana@café.fr"]


@pytest.mark.parametrize(
    ("stored", "written"),
    [
        ("straße@example.de", "strasse@example.de"),
        ("STRASSE@example.de", "straße@example.de"),
        ("σοφίας@example.gr", "ΣΟΦΊΑΣ@example.gr"),  # the final sigma folds to σ
        ("µaria@example.com", "μaria@example.com"),  # MICRO SIGN, GREEK SMALL MU
    ],
)
def test_casefold_matching_takes_a_folded_spelling_for_the_stored_row(
    server: EmulatorServer, api: Api, stored: str, written: str
) -> None:
    # Given an Ownpage matching with full Unicode case folding, holding a reader who unsubscribed
    server.set_faults(matching="casefold")
    server.state.seed(1, [{"email": stored, "subscribed": False, "unsubscribed_cause": "READER"}])
    # When another spelling that folds to hers is written (no `subscribed`), and searched for exactly
    summary = api.upsert([{"email": written, "data_city": "Lyon"}])
    # Then her row took it, kept its spelling and its status; no twin; the search finds her row
    assert (summary["nb_created"], summary["nb_data_changed"]) == (0, 1)
    [row] = server.state.subscribers(1)
    assert (row["email"], row["subscribed"], row["data_city"]) == (stored, False, "Lyon")
    assert emails_of(api.read(search=written, exact="true", status="all")) == [stored]
    assert server.state.twins == []


def test_casefold_matching_counts_folded_spellings_in_one_payload_as_duplicates(
    server: EmulatorServer, api: Api
) -> None:
    server.set_faults(matching="casefold")
    summary = api.upsert([{"email": "straße@x.de"}, {"email": "STRASSE@x.de"}])
    assert (summary["nb_created"], summary["duplicate_emails_count"]) == (1, 1)
    assert emails_of(api.read(search="STRASS", status="all")) == ["straße@x.de"]  # substring search folds too


def test_case_insensitive_matching_keeps_folded_spellings_apart_and_they_are_not_twins(
    server: EmulatorServer, api: Api
) -> None:
    # Given the default matching (lower case only): `straße` and `strasse` are two addresses
    server.state.seed(1, [{"email": "straße@x.de"}])
    api.upsert([{"email": "strasse@x.de"}])
    assert emails_of(server.state.subscribers(1)) == ["straße@x.de", "strasse@x.de"]
    assert emails_of(api.read(search="strasse@x.de", exact="true")) == ["strasse@x.de"]
    assert server.state.twins == []


def test_exact_matching_twins_within_one_payload_are_recorded(server: EmulatorServer, api: Api) -> None:
    server.set_faults(matching="exact")
    summary = api.upsert([{"email": "Bob@x.com"}, {"email": "bob@x.com"}])
    assert (summary["nb_created"], summary["duplicate_emails_count"]) == (2, 0)
    assert server.state.twins == ["bob@x.com"]


def test_a_spelling_with_an_invisible_character_is_another_row_and_a_twin(server: EmulatorServer, api: Api) -> None:
    # Given a row an import left a byte-order mark in
    server.state.seed(1, [{"email": "\ufeffann@x.com", "subscribed": False, "unsubscribed_cause": "READER"}])
    # When the same address is written without it
    api.upsert([{"email": "ann@x.com"}])
    # Then Ownpage holds two rows for one reader, and the evidence says so
    assert emails_of(server.state.subscribers(1)) == ["\ufeffann@x.com", "ann@x.com"]
    assert server.state.twins == ["ann@x.com"]


def test_case_insensitive_matching_creates_no_twin(server: EmulatorServer, api: Api) -> None:
    server.state.seed(1, [{"email": "Ann@X.com"}])
    api.upsert([{"email": "ann@x.com", "data_city": "Lyon"}])
    assert len(server.state.subscribers(1)) == 1 and server.state.twins == []


# ---- counts, HTML with a 200 ---------------------------------------------------------------------


def test_count_skew_makes_count_disagree_with_the_list(server: EmulatorServer, api: Api) -> None:
    # Given 3 subscribed rows and 1 unsubscribed
    server.state.seed(1, seed_rows(3))
    server.state.seed(1, [{"email": "gone@example.com", "subscribed": False, "unsubscribed_cause": "READER"}])
    cause = {"HARD_BOUNCE": 0, "MULTIPLE_BOUNCES": 0, "PUBLISHER": 0, "READER": 1}

    def count_with(skew: int) -> dict[str, Any]:
        server.set_faults(count_skew=skew)
        counts: dict[str, Any] = api.get(SUBSCRIBERS + "/count").json()
        return counts

    # Then a positive skew adds phantom unsubscribed rows; a negative one takes from the subscribed
    # first; the causes stay true
    assert count_with(5) == {"subscribed": 3, "unsubscribed": 6, "cause": cause}
    assert count_with(-2) == {"subscribed": 1, "unsubscribed": 1, "cause": cause}
    assert count_with(-4) == {"subscribed": 0, "unsubscribed": 0, "cause": cause}
    assert count_with(-40) == {"subscribed": 0, "unsubscribed": 0, "cause": cause}


def test_html_ok_rate_answers_200_with_an_html_page_and_applies_nothing(server: EmulatorServer, api: Api) -> None:
    server.set_faults(html_ok_rate=1.0)
    read = api.get("/newsletters/lists")
    write = api.post(SUBSCRIBERS, [{"email": "a@example.com"}])
    token = requests.post(server.url + "/token", json={"username": "demo", "password": "demo-key"}, timeout=5)
    for response in (read, write, token):
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert response.text.startswith("<html>")
    assert server.state.subscribers(1) == []


def test_html_ok_rate_is_a_share(server: EmulatorServer, api: Api) -> None:
    server.set_faults(html_ok_rate=0.5, seed=2)
    kinds = [api.get("/newsletters/lists").headers["Content-Type"].split(";")[0] for _ in range(40)]
    assert 5 < kinds.count("text/html") < 35 and set(kinds) == {"text/html", "application/json"}


# ---- verbatim seeding and the evidence lists -----------------------------------------------------


ODD_ROW = {
    "email": "odd@example.com",
    "guid": 12345,
    "subscribed": "yes",
    "unsubscribed_at": "0001-01-01T00:00:00+01:00",
    "unsubscribed_cause": "hard_bounce",
}


def test_verbatim_seeding_serves_odd_values_exactly_as_given(server: EmulatorServer, api: Api) -> None:
    # Given rows seeded verbatim: a string status, a numeric guid, a zero date, a lower-case cause,
    # and a row with no `subscribed` at all
    server.state.seed(1, [ODD_ROW, {"email": "bare@example.com"}], verbatim=True)
    # When read
    rows = api.read(status="all")
    # Then they come back exactly as seeded: no default filled, nothing coerced
    assert rows == [ODD_ROW, {"email": "bare@example.com"}]
    # And only a JSON true is subscribed: both rows count, and filter, as not subscribed
    assert api.read(status="subscribed") == []
    assert len(api.read(status="unsubscribed")) == 2
    counts = api.get(SUBSCRIBERS + "/count").json()
    assert (counts["subscribed"], counts["unsubscribed"]) == (0, 2)
    assert counts["cause"]["hard_bounce"] == 1 and counts["cause"]["READER"] == 1


def test_default_seeding_still_fills_defaults_and_coerces(server: EmulatorServer) -> None:
    server.state.seed(1, [{"email": "a@example.com", "subscribed": 1}])
    row = server.state.subscriber(1, "a@example.com")
    assert row is not None and row["subscribed"] is True and row["send_count"] == 0


def test_upserts_on_verbatim_rows_follow_the_documented_rule(server: EmulatorServer, api: Api) -> None:
    server.state.seed(
        1,
        [ODD_ROW, {"email": "bare@example.com"}, {"email": "odd2@example.com", "subscribed": None}],
        verbatim=True,
    )
    # When data-only, subscribe and unsubscribe writes reach rows with odd stored values
    data_only = api.upsert([{"email": "bare@example.com", "data_city": "Lyon"}])
    resubscribe = api.upsert([{"email": "odd@example.com", "subscribed": True}])
    unsubscribe = api.upsert([{"email": "odd2@example.com", "subscribed": False, "unsubscribed_cause": "PUBLISHER"}])
    # Then nothing crashed; a data-only write left the odd status alone
    assert data_only["nb_data_changed"] == 1
    bare = server.state.subscriber(1, "bare@example.com")
    assert bare == {"email": "bare@example.com", "data_city": "Lyon"}
    # And either boolean set a proper status; `true` on a not-true status is a re-subscription
    odd = server.state.subscriber(1, "odd@example.com")
    assert odd is not None and (odd["subscribed"], odd["unsubscribed_cause"], odd["guid"]) == (True, None, 12345)
    assert resubscribe["nb_subscribed"] == 1
    odd2 = server.state.subscriber(1, "odd2@example.com")
    assert odd2 is not None and (odd2["subscribed"], odd2["unsubscribed_cause"]) == (False, "PUBLISHER")
    assert unsubscribe["nb_unsubscribed"] == 1
    assert server.state.resubscriptions == [("odd@example.com", "HARD_BOUNCE")]


def test_verbatim_rows_need_an_email(server: EmulatorServer) -> None:
    with pytest.raises(ValueError, match="email"):
        server.state.seed(1, [{"subscribed": True}], verbatim=True)


def test_resubscriptions_record_every_row_turned_back_to_subscribed(server: EmulatorServer, api: Api) -> None:
    # Given rows unsubscribed for every cause, one subscribed row, and one unsubscribed without a cause
    causes = ("READER", "PUBLISHER", "HARD_BOUNCE", "MULTIPLE_BOUNCES")
    server.state.seed(
        1, [{"email": f"{c.lower()}@example.com", "subscribed": False, "unsubscribed_cause": c} for c in causes]
    )
    server.state.seed(1, [{"email": "Still@Example.com"}])
    server.state.seed(
        1, [{"email": "nocause@example.com", "subscribed": False, "unsubscribed_cause": None}], verbatim=True
    )
    # When every one of them gets `subscribed: true`, and a left-alone row a data-only write
    api.upsert([{"email": f"{c.lower()}@example.com", "subscribed": True} for c in causes])
    api.upsert([{"email": "still@example.com", "subscribed": True}, {"email": "nocause@example.com", "data_x": "1"}])
    api.upsert([{"email": "nocause@example.com", "subscribed": True}])
    # Then each re-subscription is recorded with its stored spelling and previous cause, nothing else
    assert server.state.resubscriptions == [
        ("reader@example.com", "READER"),
        ("publisher@example.com", "PUBLISHER"),
        ("hard_bounce@example.com", "HARD_BOUNCE"),
        ("multiple_bounces@example.com", "MULTIPLE_BOUNCES"),
        ("nocause@example.com", None),
    ]
    # And reset() forgets the evidence
    server.state.reset()
    assert server.state.resubscriptions == [] and server.state.twins == []


# ---- concurrency --------------------------------------------------------------------------------


def test_latency_is_slept_outside_the_lock_so_concurrent_calls_overlap(server: EmulatorServer) -> None:
    # Given 8 clients with their tokens, and 1 s of latency on every call
    clients = [Api(server) for _ in range(8)]
    server.state.seed(1, seed_rows(100))
    server.set_faults(latency=1.0)
    statuses: list[int] = []

    def read(client: Api) -> None:
        statuses.append(client.get(SUBSCRIBERS, status="all").status_code)

    # When they all read at once
    threads = [threading.Thread(target=read, args=(client,)) for client in clients]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    # Then the calls overlapped: about 1 s in all, not 8
    assert statuses == [200] * 8
    assert 1.0 <= elapsed < 3.0, elapsed


def test_concurrent_readers_and_movers_keep_every_row(server: EmulatorServer) -> None:
    # Given rows moving after every page while four readers page at once
    server.state.seed(1, seed_rows(2_000))
    server.set_faults(move_per_page=50, order="last_change", seed=4)
    errors: list[str] = []

    def read(worker: int) -> None:
        client = Api(server)
        for offset in range(0, 2_000, 100):
            response = client.get(SUBSCRIBERS, status="all", offset=offset, count=100)
            if response.status_code != 200 or len(response.json()) != 100:
                errors.append(f"worker {worker} offset {offset}: {response.status_code}")

    threads = [threading.Thread(target=read, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every page was full and no row was lost or doubled by the moves
    assert errors == []
    assert sorted(emails_of(server.state.subscribers(1))) == sorted(f"reader{i:03d}@example.com" for i in range(2_000))


# ---- the row store's bookkeeping ------------------------------------------------------------------


def test_pages_counts_and_order_stay_consistent_through_moves_and_deletes(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given tiny blocks, so that every page, move and compaction crosses block boundaries
    monkeypatch.setattr(emulator_state, "BLOCK_SIZE", 4)
    server.state.seed(1, [{"email": f"r{i:03d}@example.com", "subscribed": i % 3 != 0} for i in range(150)])
    server.set_faults(order="last_change", move_per_page=7, seed=9)
    api = Api(server)

    def total() -> int:
        counts = server.state.count(1)
        return int(counts["subscribed"] + counts["unsubscribed"])

    for step in range(40):
        # When pages are read (each moving 7 rows), rows change status and some are deleted
        deleting = step % 10 == 0
        if deleting:
            server.set_faults(delete_offset=step)
        before = total()
        api.read(status="all", offset=step * 3, count=5)
        assert total() == before - deleting
        api.upsert([{"email": f"r{(step * 11) % 150:03d}@example.com", "subscribed": step % 2 == 0}])
        # Then paging each status in small pages gives exactly that status's rows, in the list's order
        server.set_faults(move_per_page=0)
        ordered = server.state.subscribers(1)
        for status, wanted in (("all", None), ("subscribed", True), ("unsubscribed", False)):
            paged = [row for offset in range(0, 160, 13) for row in api.read(status=status, offset=offset, count=13)]
            assert paged == [row for row in ordered if wanted is None or row["subscribed"] is wanted], (step, status)
        counts = server.state.count(1)
        assert counts["subscribed"] == sum(1 for row in ordered if row["subscribed"] is True)
        assert counts["subscribed"] + counts["unsubscribed"] == len(ordered)
        server.set_faults(move_per_page=7)


# ---- faults of the unknowns: validation and the control API ---------------------------------------


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"order": "alphabetical"}, "order"),
        ({"matching": "fuzzy"}, "matching"),
        ({"token_method": "put"}, "token_method"),
        ({"move_per_page": -1}, "move_per_page"),
        ({"move_per_page": 2.5}, "move_per_page"),
        ({"delete_offset": -3}, "delete_offset"),
        ({"empty_page_offset": True}, "empty_page_offset"),
        ({"max_count": 0}, "max_count"),
        ({"count_skew": "5"}, "count_skew"),
        ({"html_ok_rate": 1.5}, "html_ok_rate"),
    ],
)
def test_new_fault_fields_refuse_bad_values(server: EmulatorServer, fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        server.set_faults(**fields)
    assert server.faults == Faults()


def test_every_unknown_is_off_by_default() -> None:
    faults = Faults()
    assert (faults.order, faults.matching, faults.token_method) == ("insertion", "case_insensitive", "both")
    assert (faults.move_per_page, faults.count_skew, faults.html_ok_rate) == (0, 0, 0.0)
    assert faults.delete_offset is None and faults.empty_page_offset is None and faults.max_count is None
    assert not any(
        (
            faults.ignore_status_all,
            faults.ignore_status,
            faults.ignore_offset,
            faults.never_empty,
            faults.ignore_exact,
            faults.ignore_search,
        )
    )


def test_control_api_sets_the_unknowns_and_reports_the_evidence(server: EmulatorServer, api: Api) -> None:
    control = server.control_url
    # When the unknowns are set over HTTP, and rows are seeded verbatim
    answer = requests.post(
        control + "/faults", json={"matching": "exact", "max_count": 5, "order": "random"}, timeout=5
    )
    assert answer.status_code == 200 and answer.json()["matching"] == "exact"
    assert requests.post(control + "/faults", json={"order": "sideways"}, timeout=5).status_code == 400
    seeded = requests.post(
        control + "/seed",
        json={
            "subscribers": [{"email": "Ann@X.com", "subscribed": False, "unsubscribed_cause": "READER"}],
            "verbatim": True,
        },
        timeout=5,
    )
    assert seeded.json() == {"list_id": 1, "seeded": 1}
    api.upsert([{"email": "ann@x.com"}, {"email": "Ann@X.com", "subscribed": True}])
    # Then the live faults, the verbatim row and the evidence show it
    assert (server.faults.matching, server.faults.max_count, server.faults.order) == ("exact", 5, "random")
    evidence = requests.get(control + "/evidence", timeout=5).json()
    assert evidence == {"violations": [], "resubscriptions": [["Ann@X.com", "READER"]], "twins": ["ann@x.com"]}
    state = requests.get(control + "/state", timeout=5).json()
    assert state["twins"] == ["ann@x.com"] and len(state["subscribers"]) == 2
    assert requests.get(control + "/count", timeout=5).json()["subscribed"] == 2
    # And reset clears faults and evidence
    requests.post(control + "/reset", timeout=5)
    assert server.faults == Faults() and server.state.twins == [] and server.state.matching == "case_insensitive"


def test_control_api_can_expire_every_token(server: EmulatorServer, api: Api) -> None:
    assert requests.post(server.control_url + "/expire_tokens", timeout=5).status_code == 200
    assert api.get("/newsletters/lists").status_code == 401


# ---- command line and a process of its own --------------------------------------------------------


def test_cli_flags_map_onto_the_unknowns() -> None:
    args = build_parser().parse_args(
        [
            "emulator",
            "--order",
            "last_change",
            "--move-per-page",
            "25",
            "--delete-offset",
            "3",
            "--empty-page-offset",
            "1000",
            "--ignore-status-all",
            "--ignore-status",
            "--ignore-offset",
            "--never-empty",
            "--ignore-exact",
            "--ignore-search",
            "--max-count",
            "500",
            "--matching",
            "exact",
            "--count-skew",
            "-7",
            "--html-ok-rate",
            "0.1",
            "--token-method",
            "post",
        ]
    )
    assert faults_from_args(args) == Faults(
        order="last_change",
        move_per_page=25,
        delete_offset=3,
        empty_page_offset=1000,
        ignore_status_all=True,
        ignore_status=True,
        ignore_offset=True,
        never_empty=True,
        ignore_exact=True,
        ignore_search=True,
        max_count=500,
        matching="exact",
        count_skew=-7,
        html_ok_rate=0.1,
        token_method="post",
    )


def test_cli_defaults_are_the_default_faults() -> None:
    assert faults_from_args(build_parser().parse_args(["emulator"])) == Faults()


def test_seed_files_may_be_json_lines_written_by_write_seed_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given rows written as JSON Lines, one of them odd, read back in blocks of 3 lines
    monkeypatch.setattr(emulator_command, "SEED_BLOCK_LINES", 3)
    path = tmp_path / "rows.jsonl"
    rows = [{"email": f"l{i}@example.com", "data_city": "Genève"} for i in range(3)] + [ODD_ROW]
    assert write_seed_file(path, rows) == 4
    # When read back
    # Then the rows are the same, and a JSON array file reads the same way
    assert list(read_seed_file(path)) == rows
    array = tmp_path / "rows.json"
    array.write_text("  " + json.dumps(rows), encoding="utf-8")
    assert list(read_seed_file(array)) == rows
    # And a bad line in the second block is named by its line number (blank lines counted)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"email": "a@example.com"}\n\n{"email": "b@example.com"}\n{"email": "c@example.com"}\n[1]\n', encoding="utf-8"
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl:5"):
        list(read_seed_file(bad))


def test_python_dash_m_runs_the_emulator_command(tmp_path: Any) -> None:
    # Given a JSON Lines seed file
    path = tmp_path / "rows.jsonl"
    write_seed_file(path, [{"email": "m@example.com"}])
    # When the emulator runs as `python -m ownpage_sync_tools.emulator`
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ownpage_sync_tools.emulator",
            "--port",
            "0",
            "--seed-file",
            str(path),
            "--ignore-offset",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        # Then it serves the file's rows under the flags given
        token = requests.post(url + "/token", json={"username": "demo", "password": "demo-key"}, timeout=5)
        headers = {TOKEN_HEADER: token.json()["token"]}
        rows = requests.get(url + SUBSCRIBERS, headers=headers, params={"offset": 5}, timeout=5).json()
        assert [row["email"] for row in rows] == ["m@example.com"]
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=10)
    assert code == 0, process.stderr.read() if process.stderr else ""


def test_emulator_process_serves_a_seed_file_and_is_driven_like_the_server(tmp_path: Any) -> None:
    # Given a JSON Lines seed file, rows seeded verbatim
    path = tmp_path / "rows.jsonl"
    write_seed_file(path, [ODD_ROW, {"email": "Ann@X.com", "subscribed": False, "unsubscribed_cause": "READER"}])
    # When the emulator runs in its own process with it
    with EmulatorProcess(seed_file=path, seed_verbatim=True, faults=Faults(matching="exact")) as emulator:
        token = requests.post(emulator.url + "/token", json={"username": "demo", "password": "demo-key"}, timeout=5)
        headers = {TOKEN_HEADER: token.json()["token"]}
        rows = requests.get(emulator.url + SUBSCRIBERS, headers=headers, params={"status": "all"}, timeout=5).json()
        written = requests.post(
            emulator.url + SUBSCRIBERS,
            headers=headers,
            json=[{"email": "ann@x.com"}, {"email": "Ann@X.com", "subscribed": True}],
            timeout=5,
        )
        # Then it serves the rows exactly, under the faults given, and reports what happened
        assert rows[0] == ODD_ROW and written.status_code == 200
        assert emulator.faults.matching == "exact"
        assert emulator.state.twins == ["ann@x.com"]
        assert emulator.state.resubscriptions == [("Ann@X.com", "READER")]
        assert emulator.state.violations == []
        assert emulator.state.count(1)["subscribed"] == 2
        assert [record.path for record in emulator.state.requests] == ["/token", SUBSCRIBERS, SUBSCRIBERS]
        # And faults and seeds go through its control API
        assert emulator.set_faults(max_count=1).max_count == 1
        with pytest.raises(ValueError, match="unknown fault"):
            emulator.set_faults(nope=1)
        assert emulator.state.seed(1, seed_rows(3)) == 3
        assert len(emulator.state.subscribers(1)) == 6
        url = emulator.url
    # And stop() ends the process and frees the port
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/newsletters/lists", timeout=2)


def test_emulator_process_reports_a_start_that_fails(tmp_path: Any) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(RuntimeError, match=r"missing\.jsonl"):
        EmulatorProcess(seed_file=missing).start()


def test_a_seeded_surrogate_pair_is_the_character_json_makes_of_it(server: EmulatorServer) -> None:
    # Given rows seeded with a Python text holding a surrogate pair, and one with a lone surrogate
    pair, lone = "\ud800\udc00pair@example.org", "\ud800lone@example.org"
    server.state.seed(1, [{"email": pair, "subscribed": True}, {"email": lone, "subscribed": True}], verbatim=True)
    # When the list is looked at
    stored = [row["email"] for row in server.state.subscribers(1)]
    # Then the pair is stored as the one character JSON reads it as (U+10000), so that a write of the
    # address as Ownpage served it reaches this row, while the lone surrogate stays as it was
    assert stored == ["\U00010000pair@example.org", lone]
    assert server.state.subscriber(1, "\U00010000pair@example.org") is not None
