"""Shared fixtures: real local servers (moto in server mode, the Ownpage emulator) and the guard that
keeps every test off the network beyond this machine."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
REGION = "eu-west-1"

_real_connect = socket.socket.connect


def _loopback_only(self: socket.socket, address: object) -> None:
    host = address[0] if isinstance(address, tuple) else None
    if host is not None and not (
        host in ("localhost", "::1") or str(host).startswith("127.") or str(host).startswith("::ffff:127.")
    ):
        raise ConnectionRefusedError(f"tests may only talk to loopback servers, not {host!r}")
    _real_connect(self, address)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches beyond this machine (AWS, Ownpage): loopback servers only."""
    monkeypatch.setattr(socket.socket, "connect", _loopback_only)


@pytest.fixture(autouse=True)
def _aws_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region for boto3, so nothing can pick up a real profile."""
    for name in list(os.environ):
        if name.startswith("AWS_") and name not in ("AWS_ENDPOINT_URL",):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "OwnpageSyncTest")


@pytest.fixture(autouse=True)
def _restore_library_loggers() -> Iterator[None]:
    """Loading a handler routes the library's loggers through Powertools (propagate=False, its own
    handler). Undo it after each test, or later tests' caplog never sees a library record."""
    import logging

    def library_loggers() -> dict[str, logging.Logger]:
        return {
            name: found
            for name, found in logging.Logger.manager.loggerDict.items()
            if isinstance(found, logging.Logger) and name.split(".")[0] == "ownpage_sync"
        }

    before = {name: (found.handlers[:], found.propagate, found.level) for name, found in library_loggers().items()}
    yield
    for name, found in library_loggers().items():
        handlers, propagate, level = before.get(name, ([], True, logging.NOTSET))
        found.handlers[:] = handlers
        found.propagate = propagate
        found.setLevel(level)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto in server mode, spoken to over HTTP. Yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point every boto3 client of the test (and the code under test) at the moto server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


@pytest.fixture
def unique() -> str:
    """A short unique suffix for resource names shared across one moto server."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def emulator() -> Iterator[object]:
    """A fresh Ownpage emulator over real HTTP on a free loopback port."""
    from ownpage_sync_tools.emulator import EmulatorServer

    server = EmulatorServer(port=0)
    server.start()
    yield server
    server.stop()


@dataclass
class FakeLambdaContext:
    """Lambda's context object cannot run here; this carries the attributes handlers read."""

    function_name: str = "ownpage-sync-test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:ownpage-sync-test"
    aws_request_id: str = "00000000-0000-0000-0000-000000000000"
    remaining_ms: int = 900_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext(aws_request_id=str(uuid.uuid4()))


def load_handler(function: str) -> ModuleType:
    """Import functions/<function>/app.py under a unique module name (both functions use app.py)."""
    path = ROOT / "functions" / function / "app.py"
    name = f"{function}_app"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
