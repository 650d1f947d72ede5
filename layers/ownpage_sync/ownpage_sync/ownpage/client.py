"""The Ownpage Lists API client (implements ports.OwnpageLists): counts, the paged read of a whole list
(pages fetched concurrently, bounded by the count), exact look-ups checked on our side, upserts."""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from types import TracebackType

import requests

from ownpage_sync.deadline import Deadline
from ownpage_sync.emails import canonical_key, folded_key
from ownpage_sync.errors import ConfigurationError, OwnpageProtocolError, OwnpageRejected
from ownpage_sync.models import Operation, OwnpageSubscriber
from ownpage_sync.ownpage.mapping import (
    Page,
    PageDecoder,
    check_counts,
    counts_from,
    is_error_document,
    json_type,
    rejected,
    rejections,
    unaccounted,
)
from ownpage_sync.ownpage.transport import TokenCache, Transport, new_session
from ownpage_sync.ports import OwnpageLookup, Progress, SubscriberCounts, UpsertResult
from ownpage_sync.redaction import Addresses
from ownpage_sync.secrets import OwnpageCredentials
from ownpage_sync.settings import MAX_BATCH, MAX_PAGE, OwnpageSettings
from ownpage_sync.values import json_utf8, parse_count

logger = logging.getLogger(__name__)

LOOKUP_COUNT = 100  # rows asked for by one exact search: a server ignoring `exact` may answer many
# Pages of one search read while they come back full; past that the search is undecided.
LOOKUP_PAGES = 5
# Past the count's end, pages are read until an empty one; a list does not grow by more than this
# share while it is read, so more rows than that mean a server that never ends a read.
TAIL_GROWTH = 0.10
# Calls allowed for one read, as a multiple of the pages the count implies (gap fills, renewals...).
CALL_BUDGET_FACTOR = 3
RAMP_UP_AFTER = 8  # pages without a 429 before the reader allows one more call in flight
WAIT_SMOOTHING = 0.25  # weight of the latest page in the running estimate of the wait for a page


@dataclass(frozen=True)
class _Fetched:
    offset: int
    asked: int
    page: Page
    raw_rows: int  # rows in the answer, unreadable ones included
    waited: float = 0.0  # seconds from the call to its answer's body (retries included), before decoding

    @property
    def first(self) -> str | None:  # first and last spelling: repeated pages are recognised by them
        return self.page.first

    @property
    def last(self) -> str | None:
        return self.page.last


class OwnpageClient:
    """Ownpage's Lists API for one run. `session` and `tokens` may outlive it (the retry function
    keeps them for the container's life and builds one client per invocation with its deadline)."""

    def __init__(
        self,
        settings: OwnpageSettings,
        credentials: OwnpageCredentials,
        deadline: Deadline,
        session: requests.Session | None = None,
        tokens: TokenCache | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ):
        self._settings = settings
        self._owns_session = session is None
        self._session = session if session is not None else new_session(settings.read_concurrency + 2)
        self.transport = Transport(settings, credentials, deadline, self._session, tokens, sleep, rng)

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

    def count(self, list_id: int) -> SubscriberCounts:
        """Ownpage's own counts of the list. Also the fail-fast check: a wrong key or list id shows here."""
        try:
            payload = self.transport.call("GET", f"/newsletters/lists/{list_id}/subscribers/count")
        except OwnpageRejected as exc:
            if exc.status == 404:
                raise ConfigurationError(
                    f"OWNPAGE_LIST_ID: Ownpage has no list {list_id} for these credentials (HTTP 404)"
                ) from None
            raise
        return counts_from(payload)

    def read_pages(
        self,
        list_id: int,
        *,
        status: str = "all",
        fields: Sequence[str] = (),
        expected_rows: int,
        progress: Progress | None = None,
    ) -> Iterator[Page]:
        """Every page of the list with this status, in the order they arrive (not the list's order).

        The first page alone tells the page size the server really honours (one that silently caps
        `count` gets smaller offsets); the pages the count implies are then fetched concurrently, a
        page that comes back short is completed from where it stopped, and past the count's end pages
        are read until an empty one. A server that ignores `offset`, repeats rows forever or never ends
        a read is stopped with OwnpageProtocolError after a bound derived from the count.
        """
        reader = _PageReader(self, list_id, status, PageDecoder(fields), expected_rows, progress)
        yield from reader.pages()

    def fetch_page(self, list_id: int, status: str, offset: int, count: int, decoder: PageDecoder) -> _Fetched:
        params: dict[str, str | int] = {"status": status, "offset": offset, "count": count}
        began = arrived = time.perf_counter()

        def decode(body: bytes) -> tuple[Page, int]:
            nonlocal arrived
            arrived = time.perf_counter()
            page, skipped = decoder(body)
            return page, len(page) + skipped

        page, raw_rows = self.transport.call(
            "GET", f"/newsletters/lists/{list_id}/subscribers", params=params, decode=decode
        )
        return _Fetched(offset, count, page, raw_rows, arrived - began)

    def find(self, list_id: int, spellings: Iterable[str], fields: Sequence[str] = ()) -> list[OwnpageSubscriber]:
        """The rows of these addresses (search + exact=true, status=all), checked on our side: a row
        counts only if its canonical key is one of the spellings' keys (a server ignoring `exact`, or
        `search` altogether, cannot mislead the look-up). Every spelling found is returned."""
        return self._search(list_id, spellings, fields)[0]

    def _search(
        self, list_id: int, spellings: Iterable[str], fields: Sequence[str]
    ) -> tuple[list[OwnpageSubscriber], bool]:
        """`find`'s rows, and whether every search was settled: an answer shorter than a page, or at
        most LOOKUP_PAGES full pages (a server ignoring `exact` answers with look-alikes). A row of
        another key that folds into a wanted one (`ſam@` for `sam@`) is kept: an Ownpage whose exact
        search answers with it may write to it too (the caller tells it from the key's own rows)."""
        wanted = {spelling.strip() for spelling in spellings if spelling and spelling.strip()}
        keys = {canonical_key(spelling) for spelling in wanted}
        folds = {folded_key(key) for key in keys}
        decoder = PageDecoder(fields)
        found: dict[str, OwnpageSubscriber] = {}
        settled = True
        for spelling in sorted(wanted):
            for page_number in range(LOOKUP_PAGES):
                params: dict[str, str | int] = {
                    "status": "all",
                    "search": spelling,
                    "exact": "true",
                    "offset": page_number * LOOKUP_COUNT,
                    "count": LOOKUP_COUNT,
                }
                page, skipped = self.transport.call(
                    "GET",
                    f"/newsletters/lists/{list_id}/subscribers",
                    params=params,
                    addresses=Addresses(wanted),
                    decode=decoder,
                )
                for row in page:
                    key = canonical_key(row.email)
                    if key in keys or folded_key(key) in folds:
                        found.setdefault(row.email, row)
                if len(page) + skipped < LOOKUP_COUNT:
                    break
            else:
                settled = False
        return list(found.values()), settled

    def find_many(self, list_id: int, wanted: Mapping[str, Sequence[str]], fields: Sequence[str] = ()) -> OwnpageLookup:
        """`find` for many keys (key -> spellings to search for), a few calls in flight at a time."""
        results: dict[str, list[OwnpageSubscriber]] = {}
        undecided: set[str] = set()
        workers = max(1, min(self._settings.read_concurrency, len(wanted)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ownpage-find") as pool:
            futures = {key: pool.submit(self._search, list_id, spellings, fields) for key, spellings in wanted.items()}
            for key, future in futures.items():
                results[key], settled = future.result()
                if not settled:
                    undecided.add(key)
        if undecided:
            logger.warning(
                "Ownpage searches answered pages full of other rows: not finding these addresses proves nothing",
                extra={"list_id": list_id, "undecided": len(undecided), "searched": len(wanted)},
            )
        return OwnpageLookup(results, frozenset(undecided))

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
        addresses = Addresses(op.email for op in operations)
        body = json_utf8([op.to_payload() for op in operations], separators=(",", ":"))
        # Retrying this POST (timeouts, dropped connections, 429, 5xx) is safe even when Ownpage did
        # apply the first one: setting a status or a data_* value twice leaves the same state.
        summary = self.transport.call(
            "POST", f"/newsletters/lists/{list_id}/subscribers", body=body, addresses=addresses
        )
        secrets = self.transport.secrets()
        if not isinstance(summary, Mapping):
            raise OwnpageProtocolError(f"expected a JSON object summary, got a JSON {json_type(summary)}")
        if is_error_document(summary):
            raise rejected(int(summary["status"]), summary, addresses, secrets)
        found = rejections(summary.get("errors"), addresses, secrets)
        if parse_count(summary.get("unique_emails_count")) is None:
            raise unaccounted(summary, found, addresses, secrets)
        check_counts(list_id, summary, operations, len(addresses), found)
        return UpsertResult(
            sent=len(operations),
            summary={k: v for k, v in summary.items() if k != "errors"},
            rejected=found,
            attempts=self.transport.last_attempts(),
        )


def pages_in_flight(wait: float, work: float, most: int) -> int:
    """How many page calls to keep in flight (Little's law): enough that a page's answer is there
    when this process is ready for it. `wait` is the seconds from a call to its answer, `work` the
    seconds of this process's CPU per page (decoding and folding: under the interpreter lock they
    happen one page at a time, whatever the pool). Against an Ownpage next door one call ahead (two
    in flight) is enough, and more only contend for the lock; against 1 s of latency the whole pool
    is needed."""
    if work <= 0:
        return most
    return min(most, max(2, math.ceil(1 + wait / work)))


class _PageReader:
    """One paged read of a list: concurrent, order-independent, bounded."""

    def __init__(
        self,
        client: OwnpageClient,
        list_id: int,
        status: str,
        decoder: PageDecoder,
        expected_rows: int,
        progress: Progress | None,
    ):
        settings = client._settings
        self.client, self.list_id, self.status, self.decoder = client, list_id, status, decoder
        self.expected = max(0, expected_rows)
        self.progress = progress
        self.size = min(max(settings.page_size, 1), MAX_PAGE)
        self.concurrency = max(1, settings.read_concurrency)
        self.calls = 0
        self.budget = 0
        self.filled: set[int] = set()
        self.furthest = 0  # the end of the furthest page read
        self.wait = 0.0  # running estimate of the seconds from a page call to its answer
        self.work = 0.0  # this process's CPU seconds per page
        self.widest = 0  # the most page calls that were in flight together

    def _fetch(self, offset: int, count: int) -> _Fetched:
        return self.client.fetch_page(self.list_id, self.status, offset, count, self.decoder)

    def _count_call(self) -> None:
        self.calls += 1
        if self.calls > self.budget:
            raise OwnpageProtocolError(
                f"the read of list {self.list_id} needed more than {self.budget} calls for a count of "
                f"{self.expected} rows: the server does not page as documented; read stopped"
            )

    def pages(self) -> Iterator[Page]:
        self.budget = 4
        self._count_call()
        cpu = time.process_time()
        first = self._fetch(0, self.size)
        if first.raw_rows == 0:  # an empty list too says so twice (see _tail)
            self._count_call()
            first = self._fetch(0, self.size)
        self.wait, self.work = first.waited, time.process_time() - cpu  # the first page alone: no contention
        self._done(first)
        yield first.page
        if first.raw_rows == 0:
            return
        # A first page shorter than asked while the count says more rows exist: the server caps
        # `count` without saying so; its real page size spaces the offsets.
        step = first.raw_rows if first.raw_rows < self.size and self.expected > first.raw_rows else self.size
        end = max(self.expected, first.raw_rows)
        pages_in_count = math.ceil(end / step)
        tail_pages = max(2, math.ceil(end * TAIL_GROWTH / step))
        self.budget = CALL_BUDGET_FACTOR * pages_in_count + tail_pages + 4
        scheduled = list(range(step, pages_in_count * step, step))
        yield from self._concurrently(first, scheduled, step, end)
        # From where the rows stopped, not the next page boundary: rows added while the list was read
        # (after its last page came back short) are there.
        yield from self._tail(first, min(self.furthest, pages_in_count * step), step, tail_pages)
        logger.info(
            "Ownpage pages read",
            extra={
                "list_id": self.list_id,
                "status": self.status,
                "calls": self.calls,
                "most_in_flight": self.widest,
                "wait_ms": round(self.wait * 1000, 1),
                "cpu_ms_per_page": round(self.work * 1000, 1),
            },
        )

    def _concurrently(self, first: _Fetched, offsets: list[int], step: int, end: int) -> Iterator[Page]:
        queue = list(reversed(offsets))  # popped from the end: ascending order of submission
        transport = self.client.transport
        allowed, calm, throttled = self.concurrency, 0, transport.throttled
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="ownpage-read")
        running: dict[Future[_Fetched], int] = {}
        cpu, pages = time.process_time(), 0
        try:
            while queue or running:
                # In flight: what Ownpage's latency needs (pages_in_flight), within what its 429s allow.
                while queue and len(running) < min(allowed, pages_in_flight(self.wait, self.work, allowed)):
                    offset = queue.pop()
                    count = step - (offset % step) if offset % step else step
                    self._count_call()
                    running[pool.submit(self._fetch, offset, count)] = offset
                self.widest = max(self.widest, len(running))
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    del running[future]
                    fetched = future.result()
                    pages += 1
                    self.wait += WAIT_SMOOTHING * (fetched.waited - self.wait)
                    if pages >= len(running) + 1:  # the pages still in flight have not cost much yet
                        self.work = (time.process_time() - cpu) / pages
                    self._check_not_repeated(first, fetched)
                    self._done(fetched)
                    got = fetched.raw_rows
                    # A page shorter than asked inside the count: complete it from where it
                    # stopped, once per offset (a list that shrank simply ends there).
                    gap = fetched.offset + got
                    if got < fetched.asked and gap < end and gap not in self.filled:
                        self.filled.add(gap)
                        queue.append(gap)
                    yield fetched.page
                if transport.throttled > throttled:  # Ownpage says slow down: halve what is in flight
                    throttled, allowed, calm = transport.throttled, max(1, allowed // 2), 0
                else:
                    calm += len(done)
                    if calm >= RAMP_UP_AFTER and allowed < self.concurrency:
                        allowed, calm = allowed + 1, 0
        finally:
            for future in running:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    def _tail(self, first: _Fetched, offset: int, step: int, tail_pages: int) -> Iterator[Page]:
        """Pages past the count's end, until an empty one (the list may have grown while read). An
        empty page ends the read only when asked twice: a server may answer one `[]` where rows are,
        and a count too low would then take the rows past it for the list's end."""
        previous: _Fetched | None = None
        empty_at = -1  # the offset last answered empty
        for _ in range(tail_pages + 2):
            self._count_call()
            fetched = self._fetch(offset, step)
            self._check_not_repeated(first, fetched)
            if previous is not None and (fetched.first, fetched.last) == (previous.first, previous.last):
                raise OwnpageProtocolError(
                    f"Ownpage answers the same rows again past the end of list {self.list_id} (offset "
                    f"{offset}): it never returns the empty page that ends a read; read stopped"
                )
            self._done(fetched)
            if fetched.raw_rows == 0:
                if empty_at == offset:
                    return
                empty_at = offset
                continue
            yield fetched.page
            previous = fetched
            offset += fetched.raw_rows
        raise OwnpageProtocolError(
            f"Ownpage kept returning rows past the end of list {self.list_id} ({tail_pages} pages beyond "
            f"its count of {self.expected}): the read cannot end; read stopped"
        )

    def _check_not_repeated(self, first: _Fetched, fetched: _Fetched) -> None:
        if fetched.offset and fetched.first is not None and (fetched.first, fetched.last) == (first.first, first.last):
            raise OwnpageProtocolError(
                f"Ownpage answered the same rows at offset {fetched.offset} as at offset 0 for list "
                f"{self.list_id}: it seems to ignore `offset`; read stopped"
            )

    def _done(self, fetched: _Fetched) -> None:
        self.furthest = max(self.furthest, fetched.offset + fetched.raw_rows)
        if self.progress is not None and fetched.raw_rows:
            self.progress(fetched.raw_rows)
