"""`python -m ownpage_sync_tools.emulator.benchmark [--rows 1000000]`: the emulator's own costs at scale,
printed as numbers (the source of docs/emulator.md's Performance section; no assertions).

In-process timings are the state alone (no HTTP); "over HTTP" timings run against an EmulatorProcess
seeded from a JSON Lines file, as a million-row benchmark of the sync would use it.
"""

from __future__ import annotations

import argparse
import functools
import gc
import http.client
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from ownpage_sync_tools.cli.emulator_command import write_seed_file
from ownpage_sync_tools.emulator.faults import FaultDice
from ownpage_sync_tools.emulator.process import EmulatorProcess
from ownpage_sync_tools.emulator.state import EmulatorState, PageRead

PAGE = 10_000
LINES: list[str] = []


def rows(count: int) -> Iterator[dict[str, Any]]:
    """Rows shaped like the scenario's (custom data, history), 1% unsubscribed."""
    for i in range(count):
        unsubscribed = i % 100 == 0
        yield {
            "email": f"reader.{i:07d}@example.org",
            "guid": f"u{i:07d}",
            "subscribed": not unsubscribed,
            "subscribed_at": "2024-06-01T00:00:00+00:00",
            "unsubscribed_cause": "HARD_BOUNCE" if unsubscribed else None,
            "data_firstname": "Élodie",
            "data_city": "Genève",
            "send_count": 12,
            "open_count": 5,
            "click_count": 1,
        }


def timed(label: str, action: Callable[[], Any], note: str = "") -> Any:
    began = time.perf_counter()
    result = action()
    elapsed = time.perf_counter() - began
    LINES.append(f"{label:<58} {elapsed * 1000:10.1f} ms  {note}")
    return result


def rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def process_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def in_process(count: int) -> None:
    state = EmulatorState()
    dice = FaultDice(7)
    before = rss_mib()
    timed(f"seed {count:,} rows (in-process)", lambda: state.seed(1, rows(count)))
    LINES.append(f"{'  memory held by the rows':<58} {rss_mib() - before:10.0f} MiB")
    for offset in (0, count // 2, count - PAGE):
        timed(
            f"status=all page of {PAGE:,} at offset {offset:,}",
            functools.partial(state.page_json, 1, PageRead("all", offset, PAGE)),
        )
    timed(
        f"status=subscribed page of {PAGE:,} at offset {count - 2 * PAGE:,}",
        lambda: state.page_json(1, PageRead("subscribed", count - 2 * PAGE, PAGE)),
    )
    timed("status=unsubscribed, first page", lambda: state.page_json(1, PageRead("unsubscribed", 0, PAGE)))
    timed(
        f"random order page of {PAGE:,}",
        lambda: state.page_json(1, PageRead("all", count // 2, PAGE, order="random"), dice),
    )
    moves = 10_000
    timed(
        f"page + move_per_page={moves:,}",
        lambda: state.page_json(1, PageRead("all", 0, 1, move=moves), dice),
        f"({moves:,} moves)",
    )
    batch = [{"email": f"reader.{i:07d}@example.org", "data_city": "Lyon"} for i in range(0, 40_000, 2)]
    timed("upsert 20,000 rows, data changed", lambda: state.upsert(1, batch))
    relabel = [{**entry, "data_city": "Nice"} for entry in batch]
    timed("upsert 20,000 rows, data changed, order=last_change", lambda: state.upsert(1, relabel, order="last_change"))
    timed(
        "exact search",
        lambda: state.page_json(1, PageRead("all", 0, 10, search="reader.0500000@example.org", exact=True)),
    )
    timed("substring search (walks the list)", lambda: state.page_json(1, PageRead("all", 0, 10, search="0500000")))
    timed("/count", lambda: state.count(1))
    timed("state.subscribers(1) (decodes every row)", lambda: state.subscribers(1))


class Client:
    """One keep-alive connection with a token."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)
        self.base = parts.path
        token = self.call("POST", "/token", {"username": "demo", "password": "demo-key"})
        self.headers = {"X-Ownpage-Client-Token": token["token"], "Content-Type": "application/json"}

    def call(self, method: str, path: str, payload: Any = None, **query: Any) -> Any:
        return json.loads(self.raw(method, path, payload, **query))

    def raw(self, method: str, path: str, payload: Any = None, **query: Any) -> bytes:
        url = self.base + path + (f"?{urlencode(query)}" if query else "")
        body = None if payload is None else json.dumps(payload)
        self.connection.request(method, url, body, getattr(self, "headers", {"Content-Type": "application/json"}))
        return self.connection.getresponse().read()

    def read_all(self, offsets: range, decode: bool = True) -> int:
        path = "/newsletters/lists/1/subscribers"
        fetch = self.call if decode else self.raw
        return sum(len(fetch("GET", path, status="all", offset=offset, count=PAGE)) for offset in offsets)


def over_http(count: int, directory: Path) -> None:
    seed_file = directory / "rows.jsonl"
    timed(f"write a {count:,}-row JSON Lines seed file", lambda: write_seed_file(seed_file, rows(count)))
    emulator = EmulatorProcess(seed_file=seed_file)
    timed("EmulatorProcess start, seed file loaded", emulator.start)
    LINES.append(f"{'  emulator process RSS':<58} {process_rss_mib(emulator.pid):10.0f} MiB")
    try:
        client = Client(emulator.url)
        path = "/newsletters/lists/1/subscribers"
        for offset in (0, count - PAGE):
            timed(
                f"GET status=all page of {PAGE:,} at offset {offset:,}",
                functools.partial(client.call, "GET", path, status="all", offset=offset, count=PAGE),
            )
        timed(
            f"read all {count:,} rows, {PAGE:,} a page, bytes only",
            lambda: client.read_all(range(0, count, PAGE), decode=False),
            "(no json.loads on the client)",
        )
        timed(f"read all {count:,} rows, {PAGE:,} a page, 1 reader", lambda: client.read_all(range(0, count, PAGE)))
        readers = [Client(emulator.url) for _ in range(4)]

        def parallel() -> None:
            threads = [
                threading.Thread(target=reader.read_all, args=(range(start * PAGE, count, 4 * PAGE),))
                for start, reader in enumerate(readers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        timed(f"read all {count:,} rows, 4 parallel readers", parallel)
        emulator.set_faults(move_per_page=25, seed=7)
        timed(f"read all {count:,} rows with move_per_page=25", lambda: client.read_all(range(0, count, PAGE)))
        emulator.set_faults(move_per_page=0, order="random")
        timed(f"read all {count:,} rows, order=random", lambda: client.read_all(range(0, count, PAGE)))
        emulator.set_faults(order="insertion")
        batch = [{"email": f"reader.{i:07d}@example.org", "data_city": "Lyon"} for i in range(0, 40_000, 2)]
        timed("POST 20,000 rows, data changed", lambda: client.call("POST", path, batch))
        timed("GET /count", lambda: client.call("GET", path + "/count"))
    finally:
        emulator.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-http", action="store_true", help="only the in-process measurements")
    args = parser.parse_args()
    in_process(args.rows)
    gc.collect()  # the in-process rows hold cycles (row <-> block): gone now, not during the HTTP timings
    if not args.skip_http:
        with tempfile.TemporaryDirectory() as directory:
            over_http(args.rows, Path(directory))
    print("\n".join(LINES))


if __name__ == "__main__":
    main()
