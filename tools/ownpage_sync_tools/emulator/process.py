"""The emulator in a child process, for big lists: its JSON work then does not compete with the
client's for one GIL. Driven over the control API, it offers what tests and benchmarks use of
EmulatorServer: `url`, `control_url`, `faults`, `set_faults(...)`, `reset()`, the context manager, and
a `state` with `seed`, `subscribers`, `count`, `requests`, `violations`, `resubscriptions`, `twins`.

with EmulatorProcess(seed_file=rows_jsonl) as emulator:  # the rows are loaded before start() returns
    emulator.set_faults(move_per_page=25, seed=7)
    ...  # point the client at emulator.url
    assert emulator.state.violations == []
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlencode

from ownpage_sync_tools.emulator.faults import Faults
from ownpage_sync_tools.emulator.server import DEFAULT_CREDENTIALS
from ownpage_sync_tools.emulator.state import RequestRecord

SEED_CHUNK = 20_000  # rows per control-API seed call: bodies of a few MB
# Loopback only: an http_proxy in the environment must not capture the control calls.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EmulatorProcess:
    """`python -m ownpage_sync_tools.emulator` as a child process, listening once `start()` returns."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        credentials: Mapping[str, str] | None = None,
        seed_file: Path | None = None,
        seed_verbatim: bool = False,
        start_timeout: float = 300.0,
    ) -> None:
        credentials = dict(DEFAULT_CREDENTIALS if credentials is None else credentials)
        if len(credentials) != 1:
            raise ValueError("the emulator's command line takes exactly one client and key")
        self.host = host
        self.port = port
        self.credentials = credentials
        self.seed_file = seed_file
        self.seed_verbatim = seed_verbatim
        self.start_timeout = start_timeout
        self._initial_faults = faults
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._url: str | None = None
        self.state = RemoteState(self)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> EmulatorProcess:
        """Spawn the emulator, wait for its URL (seeding a million rows takes seconds), apply faults."""
        if self._process is not None:
            return self
        ((client, key),) = self.credentials.items()
        command = [sys.executable, "-m", "ownpage_sync_tools.emulator", "--host", self.host, "--port", str(self.port)]
        command += ["--credentials", f"{client}:{key}"]
        if self.seed_file is not None:
            command += ["--seed-file", str(self.seed_file)]
        if self.seed_verbatim:
            command.append("--seed-verbatim")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child; closed in stop()
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, env=_child_env()
        )
        try:
            self._url = self._read_url()
        except BaseException:
            self.stop()
            raise
        self.port = int(self._url.rsplit(":", 1)[1].split("/", 1)[0])
        if self._initial_faults is not None:
            self.set_faults(self._initial_faults)
        return self

    def stop(self) -> None:
        """Ctrl-C the child (it exits 0), kill it if it does not. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the emulator process is not started")
        return self._url

    @property
    def pid(self) -> int:
        """The child's process id (to watch its memory, say)."""
        if self._process is None:
            raise RuntimeError("the emulator process is not started")
        return self._process.pid

    @property
    def control_url(self) -> str:
        return self.url.removesuffix("/v1") + "/_emulator"

    # ---- faults ---------------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return Faults.from_mapping(self.control("GET", "faults"))

    def set_faults(self, faults: Faults | None = None, **fields: Any) -> Faults:
        """As EmulatorServer.set_faults: the whole set, or just the named fields."""
        Faults().replaced(**fields)  # unknown names and bad values fail here, with the local message
        payload = {**(faults.to_dict() if faults is not None else {}), **fields}
        return Faults.from_mapping(self.control("POST", "faults", payload))

    def reset(self) -> None:
        """State and faults back to fresh (credentials stay), like POST /_emulator/reset."""
        self.control("POST", "reset")

    # ---- the control API ------------------------------------------------------------------------

    def control(self, method: str, name: str, payload: Any = None, **query: Any) -> Any:
        """One call to /_emulator/<name>; a 4xx answer raises ValueError with the emulator's cause."""
        url = f"{self.control_url}/{name}" + (f"?{urlencode(query)}" if query else "")
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with _OPENER.open(request, timeout=120) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                cause = json.loads(exc.read()).get("cause")
            except ValueError:
                cause = exc.reason
            raise ValueError(f"emulator {method} /_emulator/{name}: {exc.code} {cause}") from None

    def _read_url(self) -> str:
        process = self._process
        assert process is not None and process.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        received = b""
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while b"\n" not in received:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"the emulator printed no URL within {self.start_timeout} s")
                if selector.select(timeout=min(left, 0.5)):
                    chunk = os.read(process.stdout.fileno(), 4096)
                    if not chunk:
                        raise RuntimeError(f"the emulator exited before serving: {self._stderr_text()}")
                    received += chunk
                elif process.poll() is not None:
                    raise RuntimeError(f"the emulator exited before serving: {self._stderr_text()}")
        return received.split(b"\n", 1)[0].decode("utf-8").strip()

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        with contextlib.suppress(OSError):
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace").strip()
        return ""


class RemoteState:
    """The parts of EmulatorState a test or benchmark reads, fetched from the child over HTTP."""

    def __init__(self, emulator: EmulatorProcess) -> None:
        self._emulator = emulator

    def seed(self, list_id: int, rows: Iterable[Mapping[str, Any]], verbatim: bool = False) -> int:
        """As EmulatorState.seed, sent in chunks of SEED_CHUNK rows. (A seed file at start is faster.)"""
        seeded = 0
        chunk: list[Mapping[str, Any]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) == SEED_CHUNK:
                seeded += self._send(list_id, chunk, verbatim)
                chunk = []
        if chunk:
            seeded += self._send(list_id, chunk, verbatim)
        return seeded

    def create_list(self, name: str) -> int:
        list_id: int = self._emulator.control("POST", "lists", {"name": name})["id"]
        return list_id

    def lists(self) -> list[dict[str, Any]]:
        lists: list[dict[str, Any]] = self._emulator.control("GET", "state", list_id=1)["lists"]
        return lists

    def subscribers(self, list_id: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._emulator.control("GET", "state", list_id=list_id)["subscribers"]
        return rows

    def count(self, list_id: int) -> dict[str, Any]:
        counts: dict[str, Any] = self._emulator.control("GET", "count", list_id=list_id)
        return counts

    def expire_tokens(self) -> None:
        self._emulator.control("POST", "expire_tokens")

    @property
    def requests(self) -> list[RequestRecord]:
        return [RequestRecord(**record) for record in self._emulator.control("GET", "requests")]

    @property
    def violations(self) -> list[str]:
        violations: list[str] = self._emulator.control("GET", "evidence")["violations"]
        return violations

    @property
    def resubscriptions(self) -> list[tuple[str, str | None]]:
        return [(email, cause) for email, cause in self._emulator.control("GET", "evidence")["resubscriptions"]]

    @property
    def twins(self) -> list[str]:
        twins: list[str] = self._emulator.control("GET", "evidence")["twins"]
        return twins

    def _send(self, list_id: int, rows: list[Mapping[str, Any]], verbatim: bool) -> int:
        answer = self._emulator.control("POST", "seed", {"list_id": list_id, "subscribers": rows, "verbatim": verbatim})
        seeded: int = answer["seeded"]
        return seeded


def _child_env() -> dict[str, str]:
    # Unbuffered, so the URL line arrives the moment it is printed.
    return {**os.environ, "PYTHONUNBUFFERED": "1"}
