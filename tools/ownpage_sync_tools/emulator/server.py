"""The emulator over real HTTP: Ownpage's Lists API under `/v1`, the control API under `/_emulator`.

Stdlib only (`ThreadingHTTPServer`, HTTP/1.1 keep-alive). Faults are applied per API call in this
order: latency (slept outside every lock, so concurrent calls overlap), dropped connection, error
burst, injected error, HTML page with a 200 (each only for the calls in `fault_scope`), then the API
itself (token, auth, fail_writes, the read and count faults).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ownpage_sync_tools.emulator.faults import FaultDice, Faults
from ownpage_sync_tools.emulator.state import (
    STATUSES,
    EmulatorState,
    InvalidBatch,
    PageRead,
    RequestRecord,
    UnknownList,
    idna_domain,
)

logger = logging.getLogger(__name__)

API_PREFIX = "/v1"
CONTROL_PREFIX = "/_emulator/"
TOKEN_HEADER = "X-Ownpage-Client-Token"
MAX_READ_COUNT = 10_000
DEFAULT_READ_COUNT = 1_000
MAX_WRITE_ROWS = 20_000
DEFAULT_CREDENTIALS: Mapping[str, str] = {"demo": "demo-key"}

_TOKEN_METHODS: Mapping[str, tuple[str, ...]] = {"both": ("GET", "POST"), "post": ("POST",), "get": ("GET",)}
_LIST_ROUTE = re.compile(r"^/newsletters/lists/(\d+)/subscribers(/count|/delete|/all)?$")
_JSON = "application/json; charset=utf-8"


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes
    content_type: str = _JSON
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return _Response(status, body, _JSON, headers)


def _problem(status: int, cause: str) -> _Response:
    """Ownpage's error body: {"status": 400, "cause": "..."}."""
    return _json(status, {"status": status, "cause": cause})


class _BadRequest(ValueError):
    pass


_DROP = object()  # sentinel: close the connection without answering


class EmulatorServer:
    """The emulated Ownpage, listening on `host:port` (0 = a free port) once `start()` returns."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        credentials: Mapping[str, str] | None = None,
        state: EmulatorState | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.credentials = dict(DEFAULT_CREDENTIALS if credentials is None else credentials)
        self.state = state or EmulatorState()
        self._faults = faults or Faults()
        self._faults_lock = threading.Lock()  # set_faults and the once-faults that reset themselves
        self.state.matching = self._faults.matching
        self.dice = FaultDice(self._faults.seed)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> EmulatorServer:
        """Bind, listen and serve in a background thread; returns once connections are accepted."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self.port), _Handler, self)
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="ownpage-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close open keep-alive connections, release the port. Idempotent."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def serve_forever(self) -> None:
        """Block until stop() is called from elsewhere or KeyboardInterrupt (the CLI)."""
        self.start()
        thread = self._thread
        while thread is not None and thread.is_alive():
            thread.join(timeout=0.5)

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL of the emulated API, like https://services.ownpage.fr/v1."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{API_PREFIX}"

    @property
    def control_url(self) -> str:
        return self.url[: -len(API_PREFIX)] + CONTROL_PREFIX.rstrip("/")

    # ---- faults ---------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(self, faults: Faults | None = None, **fields: Any) -> Faults:
        """Replace the faults (whole, or just the named fields) while serving. Returns the new set."""
        with self._faults_lock:
            updated = (faults or self._faults).replaced(**fields)
            if "seed" in fields or faults is not None:
                self.dice.reseed(updated.seed)
            self.state.matching = updated.matching
            self._faults = updated  # one reference swap: a request sees either the old or the new set
        return updated

    def _take_once(self, name: str, when: int | None = None) -> int | None:
        """The value of a once-fault (delete_offset, empty_page_offset), which then resets itself to
        None; None when it is off (or, with `when`, set to another value). Exactly one call wins."""
        with self._faults_lock:
            value = getattr(self._faults, name)
            if value is None or (when is not None and value != when):
                return None
            self._faults = self._faults.replaced(**{name: None})
            return int(value)

    def _take_burst(self) -> bool:
        """True while `error_burst` lasts, counting it down (exactly one call takes each unit)."""
        with self._faults_lock:
            left = self._faults.error_burst
            if left <= 0:
                return False
            self._faults = self._faults.replaced(error_burst=left - 1)
            return True

    # ---- the emulated API -----------------------------------------------------------------------

    def handle_api(
        self, method: str, path: str, query: Mapping[str, str], body: bytes, token: str | None
    ) -> _Response | object:
        """One call to /v1: faults first, then the API. Returns the answer, or _DROP."""
        faults = self._faults
        if _is_delete_endpoint(method, path):
            # Recorded on arrival, whatever happens next: the sync must never even try.
            self.state.record_violation(f"{method} {path}")
        is_write = method == "POST" and _is_upsert(path)
        # Out of scope, a call draws nothing: the fault sequence of the calls in scope stays reproducible.
        in_scope = _in_scope(faults.fault_scope, method, path, is_write)
        if faults.latency and in_scope and self.dice.roll(faults.latency_rate):
            time.sleep(faults.latency)
        dropped = in_scope and self.dice.roll(faults.drop_rate)
        if dropped and not (faults.drop_after_write and is_write):
            return _DROP
        if in_scope and self._take_burst():
            response: _Response | object = _injected_error(faults)
        elif in_scope and self.dice.roll(faults.error_rate):
            response = _injected_error(faults)
        elif in_scope and self.dice.roll(faults.html_ok_rate):
            response = _html_page(200, "Service temporarily unavailable", ())  # a proxy's page, status wrong
        else:
            response = self._serve(method, path, query, body, token, faults)
        return _DROP if dropped else response

    def _serve(
        self, method: str, path: str, query: Mapping[str, str], body: bytes, token: str | None, faults: Faults
    ) -> _Response:
        if path == "/token":
            return self._token(method, query, body, faults)
        if not self.state.use_token(token, faults.token_lifetime_calls):
            return _problem(401, "Unauthorized")
        if faults.fail_writes and method == "POST" and _is_upsert(path):
            return _injected_error(faults)
        try:
            return self._route(method, path, query, body, faults)
        except _BadRequest as exc:
            return _problem(400, str(exc))
        except UnknownList:
            return _problem(404, "list not found")

    def _token(self, method: str, query: Mapping[str, str], body: bytes, faults: Faults) -> _Response:
        """POST /token with {"username", "password"} (the current reference), or the older GET form."""
        if method not in _TOKEN_METHODS[faults.token_method]:
            return _problem(405, "method not allowed")
        if method == "POST":
            try:
                request = _json_object(body)
            except _BadRequest as exc:
                return _problem(400, str(exc))
            username, password = request.get("username"), request.get("password")
            if not isinstance(username, str) or not isinstance(password, str):
                return _problem(400, "username and password must be strings")
        else:
            username, password = query.get("username"), query.get("password")
        if username is None or self.credentials.get(username) != password:
            return _problem(401, "Unauthorized")
        return _json(200, {"token": self.state.issue_token()})

    def _read(self, list_id: int, query: Mapping[str, str], faults: Faults) -> _Response:
        """GET .../subscribers: the parameters are validated as asked, then the faults rewrite them."""
        status = query.get("status") or "subscribed"
        if status not in STATUSES:
            raise _BadRequest(f"status must be one of {', '.join(STATUSES)}")
        offset = _int_param(query, "offset", 0, minimum=0)
        count = _int_param(query, "count", DEFAULT_READ_COUNT, minimum=1)
        if faults.max_count is not None:
            count = min(count, faults.max_count)  # silently: no 400, fewer rows than asked
        elif count > MAX_READ_COUNT:
            raise _BadRequest(f"count must not exceed {MAX_READ_COUNT}")
        search = None if faults.ignore_search else query.get("search") or None
        if search is not None and faults.domains == "idna":
            search = idna_domain(search)
        exact = (query.get("exact") or "false").lower() in ("true", "1") and not faults.ignore_exact
        if faults.ignore_status or (faults.ignore_status_all and status == "all"):
            status = "subscribed"
        list_read = search is None
        read = PageRead(
            status=status,
            offset=0 if faults.ignore_offset else offset,
            count=count,
            search=search,
            exact=exact,
            order=faults.order,
            never_empty=faults.never_empty,
            blank=list_read and self._take_once("empty_page_offset", when=offset) is not None,
            move=faults.move_per_page if list_read else 0,
            delete_offset=self._take_once("delete_offset") if list_read else None,
        )
        return _Response(200, self.state.page_json(list_id, read, self.dice))

    def _route(self, method: str, path: str, query: Mapping[str, str], body: bytes, faults: Faults) -> _Response:
        if path == "/newsletters/lists":
            if method != "GET":
                return _problem(405, "method not allowed")
            return _json(200, self.state.lists())
        match = _LIST_ROUTE.match(path)
        if match is None:
            return _problem(404, "not found")
        list_id, tail = int(match.group(1)), match.group(2)
        if tail is None and method == "GET":
            return self._read(list_id, query, faults)
        if tail is None and method == "POST":
            entries = _json_array(body)
            if faults.domains == "idna":  # Ownpage's own spelling of what it is given
                entries = [
                    {**entry, "email": idna_domain(entry["email"])} if _has_email(entry) else entry for entry in entries
                ]
            if faults.write_answer == "error_document":  # nothing written, and a 200 all the same
                return _json(200, {"status": 500, "message": "internal error, please retry later"})
            try:
                summary = self.state.upsert(
                    list_id,
                    entries,
                    reject_domains=faults.reject_domains,
                    invalid_mode=faults.invalid_mode,
                    errors_shape=faults.errors_shape,
                    order=faults.order,
                )
            except InvalidBatch as exc:
                return _problem(400, exc.cause)
            return _json(200, {} if faults.write_answer == "empty" else summary)
        if tail == "/count" and method == "GET":
            return _json(200, self.state.count(list_id, skew=faults.count_skew))
        if tail == "/delete" and method == "POST":
            entries = _json_array(body)
            emails = [entry["email"] for entry in entries if isinstance(entry.get("email"), str)]
            return _json(200, {"nb_deleted": self.state.delete_emails(list_id, emails)})
        if tail == "/all" and method == "DELETE":
            status = query.get("status") or "subscribed"
            if status not in STATUSES:
                raise _BadRequest(f"status must be one of {', '.join(STATUSES)}")
            return _json(200, {"nb_deleted": self.state.delete_all(list_id, status)})
        return _problem(405, "method not allowed")

    # ---- the control API (no auth, no faults, not in the request log) ----------------------------

    def handle_control(self, method: str, name: str, query: Mapping[str, str], body: bytes) -> _Response:
        try:
            if method == "GET" and name == "state":
                list_id = _int_param(query, "list_id", 1, minimum=1)
                return _json(
                    200,
                    {
                        "list_id": list_id,
                        "lists": self.state.lists(),
                        "subscribers": self.state.subscribers(list_id),
                        "faults": self._faults.to_dict(),
                        **self._evidence(),
                    },
                )
            if method == "GET" and name == "evidence":
                return _json(200, self._evidence())
            if method == "GET" and name == "count":
                return _json(200, self.state.count(_int_param(query, "list_id", 1, minimum=1)))
            if method == "POST" and name == "expire_tokens":
                self.state.expire_tokens()
                return _json(200, {"expired": True})
            if method == "GET" and name == "requests":
                return _json(200, [record.to_dict() for record in self.state.requests])
            if method == "GET" and name == "faults":
                return _json(200, self._faults.to_dict())
            if method == "POST" and name == "faults":
                return _json(200, self.set_faults(**_json_object(body)).to_dict())
            if method == "POST" and name == "seed":
                request = _json_object(body)
                list_id = int(request.get("list_id", 1))
                rows = request.get("subscribers")
                if not isinstance(rows, list):
                    raise _BadRequest("subscribers must be an array")
                verbatim = request.get("verbatim", False)
                if not isinstance(verbatim, bool):
                    raise _BadRequest("verbatim must be true or false")
                return _json(200, {"list_id": list_id, "seeded": self.state.seed(list_id, rows, verbatim=verbatim)})
            if method == "POST" and name == "lists":
                name_value = _json_object(body).get("name")
                if not isinstance(name_value, str) or not name_value:
                    raise _BadRequest("name must be a non-empty string")
                return _json(200, {"id": self.state.create_list(name_value)})
            if method == "POST" and name == "reset":
                # A fresh emulator: state and faults (credentials stay).
                self.state.reset()
                self.set_faults(Faults())
                return _json(200, {"reset": True})
        except (_BadRequest, ValueError, TypeError, AttributeError) as exc:
            return _problem(400, str(exc))
        except UnknownList:
            return _problem(404, "list not found")
        return _problem(404, "not found")

    def _evidence(self) -> dict[str, Any]:
        return {
            "violations": self.state.violations,
            "resubscriptions": [list(item) for item in self.state.resubscriptions],
            "twins": self.state.twins,
        }


def _is_upsert(path: str) -> bool:
    match = _LIST_ROUTE.match(path)
    return match is not None and match.group(2) is None


def _in_scope(scope: str, method: str, path: str, is_write: bool) -> bool:
    if scope == "writes":
        return is_write
    if scope == "reads":
        return method == "GET" and path != "/token"
    return True


def _is_delete_endpoint(method: str, path: str) -> bool:
    match = _LIST_ROUTE.match(path)
    if match is None:
        return False
    tail = match.group(2)
    return (method == "POST" and tail == "/delete") or (method == "DELETE" and tail == "/all")


def _injected_error(faults: Faults) -> _Response:
    headers: tuple[tuple[str, str], ...] = ()
    if faults.retry_after is not None:
        seconds = float(faults.retry_after)
        headers = (("Retry-After", str(int(seconds)) if seconds.is_integer() else str(seconds)),)
    status = faults.error_status
    if faults.html_errors:
        return _html_page(status, f"{status} Error", headers)
    return _json(status, {"status": status, "cause": "injected error (emulator)"}, headers)


def _html_page(status: int, title: str, headers: tuple[tuple[str, str], ...]) -> _Response:
    """An nginx-like page, as a proxy in front of the API sends it."""
    page = (
        f"<html><head><title>{title}</title></head>"
        f"<body><center><h1>{title}</h1></center><hr><center>nginx</center></body></html>"
    )
    return _Response(status, page.encode("utf-8"), "text/html; charset=utf-8", headers)


def _int_param(query: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"{name} must be an integer") from None
    if value < minimum:
        raise _BadRequest(f"{name} must be at least {minimum}")
    return value


def _has_email(entry: Any) -> bool:
    return isinstance(entry, Mapping) and isinstance(entry.get("email"), str)


def _json_array(body: bytes) -> list[Mapping[str, Any]]:
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        raise _BadRequest("body is not valid JSON") from None
    if not isinstance(payload, list):
        raise _BadRequest("body must be a JSON array of subscribers")
    if len(payload) > MAX_WRITE_ROWS:
        raise _BadRequest(f"at most {MAX_WRITE_ROWS} subscribers per call, got {len(payload)}")
    if not all(isinstance(entry, dict) for entry in payload):
        raise _BadRequest("every subscriber must be a JSON object")
    return payload


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise _BadRequest("body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise _BadRequest("body must be a JSON object")
    return payload


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], emulator: EmulatorServer):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads parked on idle keep-alive connections so stop() leaves nothing open."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"  # keep-alive: a sync's 10 reads and N writes reuse one connection
    server_version = "OwnpageEmulator/1.0"
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    # Headers and body go out in two writes; with Nagle the body waits for the client's delayed ACK
    # of the headers (40 ms on Linux), which made every small answer take 40 ms.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: request lines carry addresses in `search=`; the request log is state.requests.
        return

    def _handle(self) -> None:
        emulator = self.server.emulator
        split = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(split.query, keep_blank_values=True).items()}
        body = self._read_body()
        method, path = self.command, split.path
        if path.startswith(CONTROL_PREFIX):
            self._send(emulator.handle_control(method, path[len(CONTROL_PREFIX) :].strip("/"), query, body))
            return
        api_path = path[len(API_PREFIX) :] if path.startswith(API_PREFIX + "/") else None
        started = time.time()
        if api_path is None:
            response: _Response | object = _problem(404, "not found")
            api_path = path
        else:
            response = self._call_api(emulator, method, api_path, query, body)
        status = response.status if isinstance(response, _Response) else 0
        emulator.state.record_request(RequestRecord(method, api_path, query, status, len(body), started))
        if isinstance(response, _Response):
            self._send(response)
        else:
            self.close_connection = True  # nothing written: the client sees the socket close

    def _call_api(
        self, emulator: EmulatorServer, method: str, path: str, query: Mapping[str, str], body: bytes
    ) -> _Response | object:
        try:
            return emulator.handle_api(method, path, query, body, self.headers.get(TOKEN_HEADER))
        except Exception:
            logger.exception("emulator failed on a request", extra={"method": method, "path": path})
            return _problem(500, "emulator error")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)
