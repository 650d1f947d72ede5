"""What the emulated Ownpage holds: lists, subscribers, tokens, the request log, the violations and
the evidence tests check (re-subscriptions, twin rows).

Thread-safe (one lock). Built for a million rows:
- a row is kept as its encoded JSON (read shape) plus the three things reads and counts look at, so a
  page is a join of bytes and a row is encoded again only when it changes;
- rows are kept in order in blocks of at most BLOCK_SIZE that know how many of their rows are
  subscribed: a page at any offset skips whole blocks, and moving a row to the end of the order scans
  one block, never the list;
- an index by folded address (canonical, then full Unicode case folding) finds a row in O(1) under
  every matching rule and notices twins (two rows whose addresses differ only in case, Unicode form
  or invisible format characters).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import re
import secrets
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ownpage_sync_tools.emulator.faults import FaultDice

DATA_PREFIX = "data_"
HISTORY_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("last_sent_at", None),
    ("last_open_at", None),
    ("last_click_at", None),
    ("send_count", 0),
    ("open_count", 0),
    ("click_count", 0),
)
READ_CAUSES = ("HARD_BOUNCE", "MULTIPLE_BOUNCES", "PUBLISHER", "READER")
WRITE_CAUSES = ("READER", "PUBLISHER")  # what a POST may set; anything else counts as absent
DEFAULT_CAUSE = "READER"
STATUSES = ("subscribed", "unsubscribed", "all")
DEFAULT_LIST_NAME = "Newsletter"
BLOCK_SIZE = 512  # rows per block: a move scans one block; a page skips len(list) / BLOCK_SIZE blocks

# Lenient on purpose: Ownpage's real rules are unknown; `Faults.reject_domains` plays a stricter judge.
_VALID_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+$")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _row_encoder() -> Callable[[Mapping[str, Any]], bytes]:
    """Compact JSON bytes of one row. CPython's C encoder, built once, is a fifth faster than
    `JSONEncoder.encode`, which builds it again for every row (seeding calls this a million times)."""
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    try:
        encode = make(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    except TypeError:  # no C encoder here (None), or another signature: the public way

        def encode(fields: Mapping[str, Any], _: int) -> list[str]:
            return [_ENCODER.encode(fields)]

    def row(fields: Mapping[str, Any]) -> bytes:
        try:
            return "".join(encode(fields, 0)).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: sent as JSON's escape ("\ud800"), as JavaScript does
            return json.dumps(fields, separators=(",", ":")).encode("ascii")

    return row


_encode_row = _row_encoder()


class UnknownList(LookupError):
    """No list with this id."""


class InvalidBatch(ValueError):
    """The whole POST is refused (invalid_mode=whole_batch); `cause` is Ownpage's 400 text."""

    def __init__(self, cause: str) -> None:
        super().__init__(cause)
        self.cause = cause


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One API call as the emulator saw it. `path` is relative to the base URL (no `/v1`);
    `status` is 0 when the connection was dropped without an answer."""

    method: str
    path: str
    query: Mapping[str, str]
    status: int
    body_size: int
    time: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "query": dict(self.query),
            "status": self.status,
            "body_size": self.body_size,
            "time": self.time,
        }


@dataclass(frozen=True, slots=True)
class PageRead:
    """One GET .../subscribers as the state serves it, after the faults have rewritten its parameters.

    `list_read` marks a read over the whole list (no search): only those trigger the once-faults and
    the moves. `blank` answers [] (empty_page_offset); `move` rows change after the page is served
    (move_per_page); `delete_offset` deletes the row at that offset of this read's view after it."""

    status: str = "subscribed"
    offset: int = 0
    count: int = 1_000
    search: str | None = None
    exact: bool = False
    order: str = "insertion"
    never_empty: bool = False
    blank: bool = False
    move: int = 0
    delete_offset: int | None = None

    @property
    def list_read(self) -> bool:
        return self.search is None


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, e.g. 2025-01-31T09:15:02.123Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def default_guid(email: str) -> str:
    """Ownpage's default guid: md5 of the address (here: trimmed and lower-cased, hex)."""
    return hashlib.md5(email.strip().lower().encode("utf-8", "surrogatepass"), usedforsecurity=False).hexdigest()


def canonical(email: str) -> str:
    """The form two spellings of one address share: trimmed, Unicode NFC, lower case, without format
    characters (general category Cf: a byte-order mark, a zero-width space, direction marks), its
    domain in IDNA. Rows that differ by such characters, or by the domain's form, are the same
    reader to the emulator's twin evidence (matching itself compares the spellings)."""
    if email.isascii():
        return email.strip().lower()
    email = "".join(ch for ch in email if unicodedata.category(ch) != "Cf")
    text = unicodedata.normalize("NFC", email.strip()).lower()
    return str(idna_domain(text)).lower()


def email_problem(email: object, reject_domains: Iterable[str] = ()) -> str | None:
    """Why Ownpage would refuse this address, or None."""
    if not isinstance(email, str) or not email:
        return "email is missing"
    if not _VALID_EMAIL.match(email):
        return "email is not valid"
    domain = email.rpartition("@")[2].lower()
    if domain in reject_domains:
        return "email is not valid"
    return None


def folded(email: str) -> str:
    """The index's key: the canonical form with full Unicode case folding (`straße` and `strasse`,
    `ς` and `σ`, `µ` and `μ` share it), so that every matching rule finds its rows in one bucket."""
    key = canonical(email)
    return key if key.isascii() else unicodedata.normalize("NFC", key.casefold())


def matched_form(email: str, matching: str) -> str:
    """What a matching rule compares of an address: the spelling itself (`exact`), its lower case
    (`case_insensitive`), or its NFC form with full Unicode case folding, composed again (`casefold`, as a Java
    `equalsIgnoreCase`-like service or a database's `_ci` collation might)."""
    if matching == "exact":
        return email
    if matching == "casefold" and not email.isascii():
        return unicodedata.normalize("NFC", unicodedata.normalize("NFC", email).casefold())
    return email.lower()


def same_address(stored: str, given: str, matching: str) -> bool:
    """Whether Ownpage takes `given` for the row stored as `stored`, under a matching rule."""
    return stored == given if matching == "exact" else matched_form(stored, matching) == matched_form(given, matching)


class _Block:
    __slots__ = ("rows", "subscribed")

    def __init__(self, rows: list[_Row] | None = None) -> None:
        self.rows: list[_Row] = rows or []
        self.subscribed = sum(1 for row in self.rows if row.subscribed)
        for row in self.rows:
            row.block = self


class _Row:
    """One subscriber: the JSON Ownpage serves for it, and what reads, counts and look-ups need
    without decoding it. Only a JSON `true` in `subscribed` makes a row subscribed."""

    __slots__ = ("block", "cause", "email", "encoded", "key", "subscribed")

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.block: _Block | None = None
        self.email: str = fields["email"]
        key = folded(self.email)
        self.key = self.email if key == self.email else key  # share the string when it is the same
        self.encoded = b""
        self.subscribed = False
        self.cause: str = DEFAULT_CAUSE
        self.set(fields)

    def set(self, fields: Mapping[str, Any]) -> None:
        self.encoded = _encode_row(fields)
        self.subscribed = fields.get("subscribed") is True
        self.cause = _count_cause(fields.get("unsubscribed_cause"))

    def fields(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.encoded)
        return decoded


class _List:
    """One list's rows in their order, the index by canonical address, and running counts."""

    def __init__(self, list_id: int, name: str, now: str) -> None:
        self.id = list_id
        self.name = name
        self.created_at = now
        self.updated_at = now
        self.blocks: list[_Block] = []
        self.size = 0
        self.subscribed = 0
        self.causes: dict[str, int] = {}  # rows not subscribed, by the cause /count reports
        self.index: dict[str, _Row | list[_Row]] = {}  # folded address -> row(s), oldest first

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created_at": self.created_at, "updated_at": self.updated_at}

    # ---- look-ups ----------------------------------------------------------------------------

    def bucket(self, email: str) -> list[_Row]:
        """Rows whose address has the same folded form as `email`: every row any matching rule may
        take `email` for."""
        bucket = self.index.get(folded(email))
        if bucket is None:
            return []
        return bucket if isinstance(bucket, list) else [bucket]

    def candidates(self, email: str) -> list[_Row]:
        """Rows whose address has the same canonical form as `email` (twins included; addresses that
        only case folding makes one are not twins: they are one address or two, as matching says)."""
        bucket = self.bucket(email)
        if email.isascii() and all(row.email.isascii() for row in bucket):
            return bucket
        key = canonical(email)
        return [row for row in bucket if canonical(row.email) == key]

    def find(self, email: str, matching: str, key: str | None = None) -> _Row | None:
        """The row Ownpage takes `email` for (the oldest, should twins match), or None. `key` is the
        address's folded form when the caller has it already."""
        bucket = self.index.get(folded(email) if key is None else key)
        if bucket is None:
            return None
        if not isinstance(bucket, list):
            return bucket if same_address(bucket.email, email, matching) else None
        return next((row for row in bucket if same_address(row.email, email, matching)), None)

    def iter_rows(self) -> Iterator[_Row]:
        for block in self.blocks:
            yield from block.rows

    # ---- changes -----------------------------------------------------------------------------

    def add(self, row: _Row) -> None:
        """A new row, at the end of the order."""
        self._index(row)
        self._count(row, 1)
        self._append(row)

    def remove(self, row: _Row) -> None:
        self._detach(row)
        self._unindex(row)
        self._count(row, -1)

    def rewrite(self, row: _Row, fields: Mapping[str, Any]) -> None:
        """New content for a row, in place."""
        self._count(row, -1)
        block = row.block
        if block is not None and row.subscribed:
            block.subscribed -= 1
        if fields["email"] != row.email:  # seeding another spelling of the address
            self._unindex(row)
            row.email = fields["email"]
            key = folded(row.email)
            row.key = row.email if key == row.email else key
            self._index(row)
        row.set(fields)
        if block is not None and row.subscribed:
            block.subscribed += 1
        self._count(row, 1)

    def move_to_end(self, row: _Row) -> None:
        """The row changed: it goes to the end of the order (one block scan, amortised O(1))."""
        self._detach(row)
        self._append(row)

    def clear(self) -> None:
        self.blocks, self.index, self.causes = [], {}, {}
        self.size = self.subscribed = 0

    def _index(self, row: _Row) -> None:
        bucket = self.index.get(row.key)
        if bucket is None:
            self.index[row.key] = row
        elif isinstance(bucket, list):
            bucket.append(row)
        else:
            self.index[row.key] = [bucket, row]

    def _unindex(self, row: _Row) -> None:
        bucket = self.index.get(row.key)
        if bucket is row:
            del self.index[row.key]
        elif isinstance(bucket, list):
            bucket.remove(row)
            if len(bucket) == 1:
                self.index[row.key] = bucket[0]

    def _append(self, row: _Row) -> None:
        last = self.blocks[-1] if self.blocks else None
        if last is None or len(last.rows) >= BLOCK_SIZE:
            if len(self.blocks) > 2 * (self.size // BLOCK_SIZE) + 16:
                self._compact()
                self._append(row)
                return
            last = _Block()
            self.blocks.append(last)
        last.rows.append(row)
        row.block = last
        if row.subscribed:
            last.subscribed += 1

    def _detach(self, row: _Row) -> None:
        # Emptied blocks stay until the next compaction: finding a block in the block list is the
        # O(n / BLOCK_SIZE) step a move must not pay.
        block = row.block
        assert block is not None
        block.rows.remove(row)  # an identity scan of one block, in C
        if row.subscribed:
            block.subscribed -= 1
        row.block = None

    def _compact(self) -> None:
        """Re-cut the rows into full blocks. Runs when moves have left twice the blocks needed, that
        is after about len(list) appends: O(1) amortised per move."""
        rows = list(self.iter_rows())
        self.blocks = [_Block(rows[start : start + BLOCK_SIZE]) for start in range(0, len(rows), BLOCK_SIZE)]

    def _count(self, row: _Row, sign: int) -> None:
        self.size += sign
        if row.subscribed:
            self.subscribed += sign
            return
        left = self.causes.get(row.cause, 0) + sign
        if left:
            self.causes[row.cause] = left
        else:
            self.causes.pop(row.cause, None)


class _StatusView:
    """The rows of a list with one status (or all), in the list's order, without copying them."""

    def __init__(self, lst: _List, wanted: bool | None) -> None:
        self.lst = lst
        self.wanted = wanted

    def size(self) -> int:
        if self.wanted is None:
            return self.lst.size
        return self.lst.subscribed if self.wanted else self.lst.size - self.lst.subscribed

    def _in(self, block: _Block) -> int:
        if self.wanted is None:
            return len(block.rows)
        return block.subscribed if self.wanted else len(block.rows) - block.subscribed

    def slice(self, offset: int, count: int) -> list[_Row]:
        page: list[_Row] = []
        skip = offset
        for block in self.lst.blocks:
            here = self._in(block)
            if skip >= here:
                skip -= here  # the whole block lies before the page
                continue
            if self.wanted is None:
                page.extend(block.rows[skip : skip + count - len(page)])
            else:
                for row in block.rows:
                    if row.subscribed is not self.wanted:
                        continue
                    if skip:
                        skip -= 1
                        continue
                    page.append(row)
                    if len(page) == count:
                        break
            skip = 0
            if len(page) >= count:
                break
        return page

    def pick(self, positions: Sequence[int]) -> list[_Row]:
        """The rows at these positions of the view (ascending, distinct), in that order."""
        picked: list[_Row] = []
        targets = iter(positions)
        target = next(targets, None)
        base = 0  # view position of the block's first row
        for block in self.lst.blocks:
            if target is None:
                break
            here = self._in(block)
            if target >= base + here:
                base += here
                continue
            if self.wanted is None:
                while target is not None and target < base + here:
                    picked.append(block.rows[target - base])
                    target = next(targets, None)
                base += here
                continue
            position = base
            for row in block.rows:
                if row.subscribed is not self.wanted:
                    continue
                if position == target:
                    picked.append(row)
                    target = next(targets, None)
                    if target is None or target >= base + here:
                        break
                position += 1
            base += here
        return picked


class _RowsView:
    """A view already narrowed to a few rows (a search)."""

    def __init__(self, rows: list[_Row]) -> None:
        self.rows = rows

    def size(self) -> int:
        return len(self.rows)

    def slice(self, offset: int, count: int) -> list[_Row]:
        return self.rows[offset : offset + count]

    def pick(self, positions: Sequence[int]) -> list[_Row]:
        return [self.rows[position] for position in positions]


class EmulatorState:
    """The emulated account. All public methods are safe to call from any thread.

    `matching` is the address rule (`case_insensitive`, `exact` or `casefold`) every look-up uses; the server
    keeps it equal to `Faults.matching`."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._lock = threading.RLock()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._dice = FaultDice()  # random order and moves when the caller brings no seeded dice
        self.matching = "case_insensitive"
        self._lists: dict[int, _List] = {}
        self._next_list_id = 1
        self._tokens: dict[str, int] = {}  # token -> calls answered with it
        self._expired: set[str] = set()
        self._requests: list[RequestRecord] = []
        self._violations: list[str] = []
        self._resubscriptions: list[tuple[str, str | None]] = []
        self._twins: list[str] = []
        self.reset()

    # ---- set-up and inspection (tests, control API) ------------------------------------------

    def reset(self) -> None:
        """Back to a fresh account: list 1 "Newsletter", empty; no tokens, requests, violations or
        evidence. `matching` stays: it belongs to the faults."""
        with self._lock:
            self._lists = {}
            self._next_list_id = 1
            self._tokens = {}
            self._expired = set()
            self._requests = []
            self._violations = []
            self._resubscriptions = []
            self._twins = []
            self.create_list(DEFAULT_LIST_NAME)

    def create_list(self, name: str) -> int:
        with self._lock:
            list_id = self._next_list_id
            self._next_list_id += 1
            self._lists[list_id] = _List(list_id, name, self.now())
            return list_id

    def lists(self) -> list[dict[str, Any]]:
        with self._lock:
            return [lst.summary() for lst in self._lists.values()]

    def seed(self, list_id: int, rows: Iterable[Mapping[str, Any]], verbatim: bool = False) -> int:
        """Put rows (read shape) into a list, history included. Returns how many rows were given.

        By default the gaps are filled with defaults and `subscribed` is made a bool. With `verbatim`
        a row is stored exactly as given (only a non-empty string `email` is required), so Ownpage
        can be made to return odd values. An address already in the list (under `matching`) is
        replaced in place.
        """
        now = self.now()
        with _gc_paused():
            prepared = [
                _Row(_verbatim_fields(_as_json_holds(raw)) if verbatim else _seed_fields(_as_json_holds(raw), now))
                for raw in rows
            ]
        with self._lock:
            lst = self._list(list_id)
            matching = self.matching
            for row in prepared:
                existing = lst.find(row.email, matching, row.key)
                if existing is None:
                    lst.add(row)
                else:
                    lst.rewrite(existing, row.fields())
            lst.updated_at = now
        return len(prepared)

    def subscribers(self, list_id: int) -> list[dict[str, Any]]:
        """Every row of the list, read shape, in the list's current order (copies)."""
        with self._lock:
            encoded = b"[" + b",".join(row.encoded for row in self._list(list_id).iter_rows()) + b"]"
        with _gc_paused():
            rows: list[dict[str, Any]] = json.loads(encoded)  # one call: half the time of one per row
        return rows

    def subscriber(self, list_id: int, email: str) -> dict[str, Any] | None:
        """One row by address (under `matching`), or None."""
        with self._lock:
            row = self._list(list_id).find(email, self.matching)
            return None if row is None else row.fields()

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def violations(self) -> list[str]:
        """Calls to a delete endpoint, e.g. "POST /newsletters/lists/1/subscribers/delete"."""
        with self._lock:
            return list(self._violations)

    @property
    def resubscriptions(self) -> list[tuple[str, str | None]]:
        """(address as stored, previous cause) of every row a `subscribed: true` turned back to
        subscribed. The cause is one of READ_CAUSES, or None when it was missing or unknown."""
        with self._lock:
            return list(self._resubscriptions)

    @property
    def twins(self) -> list[str]:
        """Addresses of rows an upsert created while a row with the same canonical address existed."""
        with self._lock:
            return list(self._twins)

    def record_request(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)

    def record_violation(self, what: str) -> None:
        with self._lock:
            self._violations.append(what)

    def now(self) -> str:
        return iso(self._clock())

    # ---- tokens -------------------------------------------------------------------------------

    def issue_token(self) -> str:
        token = secrets.token_hex(20)
        with self._lock:
            self._tokens[token] = 0
        return token

    def use_token(self, token: str | None, lifetime_calls: int | None) -> bool:
        """Count one call against the token; False when it is unknown or has expired."""
        if not token:
            return False
        with self._lock:
            used = self._tokens.get(token)
            if used is None or token in self._expired:
                return False
            if lifetime_calls is not None and used >= lifetime_calls:
                self._expired.add(token)
                return False
            self._tokens[token] = used + 1
            return True

    def expire_tokens(self) -> None:
        """Every token issued so far answers 401 from now on (as if they all timed out)."""
        with self._lock:
            self._expired.update(self._tokens)

    # ---- the API's reads and writes -----------------------------------------------------------

    def read_page(
        self,
        list_id: int,
        status: str,
        offset: int,
        count: int,
        search: str | None,
        exact: bool,
    ) -> list[dict[str, Any]]:
        """One page of GET .../subscribers, decoded (tests; the server uses `page_json`)."""
        body = self.page_json(list_id, PageRead(status=status, offset=offset, count=count, search=search, exact=exact))
        rows: list[dict[str, Any]] = json.loads(body)
        return rows

    def page_json(self, list_id: int, read: PageRead, dice: FaultDice | None = None) -> bytes:
        """One page of GET .../subscribers as the JSON array served, then the read's side effects."""
        dice = dice or self._dice
        with self._lock:
            lst = self._list(list_id)
            view = self._view(lst, read)
            size = view.size()
            offset = read.offset
            if read.never_empty and size and offset >= size:
                offset = (size - 1) // read.count * read.count  # the last page, as a pager would see it
            if read.blank or offset >= size:
                page: list[_Row] = []
            elif read.order == "random":
                page = _shuffled_slice(view, offset, read.count, dice)
            else:
                page = view.slice(offset, read.count)
            body = b"[" + b",".join(row.encoded for row in page) + b"]"
            if read.delete_offset is not None:
                # Someone deletes a row in Ownpage's dashboard between two pages (not a violation).
                for row in view.slice(read.delete_offset, 1):
                    lst.remove(row)
            if read.move and lst.size:
                # Rows edited by someone while the reader pages: they move to the end of the order.
                everything = _StatusView(lst, None)
                for row in everything.pick(sorted(dice.sample(lst.size, min(read.move, lst.size)))):
                    lst.move_to_end(row)
            return body

    def count(self, list_id: int, skew: int = 0) -> dict[str, Any]:
        """GET .../count. `skew` (Faults.count_skew) makes the totals wrong: a positive skew is added
        to `unsubscribed`; a negative one is taken from `subscribed`, then from `unsubscribed`, never
        below 0. `cause` always tells the truth, so it need not add up to `unsubscribed`."""
        with self._lock:
            lst = self._list(list_id)
            subscribed, unsubscribed = lst.subscribed, lst.size - lst.subscribed
            causes = dict.fromkeys(READ_CAUSES, 0)
            causes.update(lst.causes)
        if skew > 0:
            unsubscribed += skew
        elif skew < 0:
            fewer = min(-skew, subscribed + unsubscribed)
            from_subscribed = min(fewer, subscribed)
            subscribed -= from_subscribed
            unsubscribed -= fewer - from_subscribed
        return {"subscribed": subscribed, "unsubscribed": unsubscribed, "cause": causes}

    def upsert(
        self,
        list_id: int,
        entries: Sequence[Mapping[str, Any]],
        *,
        reject_domains: Iterable[str] = (),
        invalid_mode: str = "per_row",
        errors_shape: str = "strings",
        order: str = "insertion",
    ) -> dict[str, Any]:
        """POST .../subscribers: subscribe, unsubscribe, update; never touches the history fields.

        Every entry lands in exactly one bucket: `errors`, `duplicate_emails_count`,
        `duplicate_guid_count` or `unique_emails_count` (applied). Raises InvalidBatch in
        whole_batch mode when any entry is invalid, UnknownList for a missing list. With
        `order="last_change"` a row the POST really changed moves to the end of the order.
        """
        rejected = frozenset(reject_domains)
        problems: list[tuple[object, str]] = []
        valid: list[Mapping[str, Any]] = []
        for entry in entries:
            email = entry.get("email")
            problem = email_problem(email, rejected)
            if problem is None:
                valid.append(entry)
            else:
                problems.append((email if isinstance(email, str) else None, problem))
        with self._lock:
            lst = self._list(list_id)  # an unknown list is a 404 before any 400
            if problems and invalid_mode == "whole_batch":
                details = ", ".join(_error_text(email, problem) for email, problem in problems)
                raise InvalidBatch(f"{len(problems)} error(s): {details}")
            if problems and invalid_mode == "whole_batch_unnamed":
                raise InvalidBatch(f"{len(problems)} error(s) in the payload")  # which rows: not said
            if problems and invalid_mode == "whole_batch_200":  # nothing written, a 200 with the errors only
                return {"errors": [_error_entry(email, problem, errors_shape) for email, problem in problems]}
            summary = self._apply(lst, valid, move_changed=order == "last_change")
        summary["errors"] = [_error_entry(email, problem, errors_shape) for email, problem in problems]
        return summary

    def _apply(self, lst: _List, entries: Sequence[Mapping[str, Any]], move_changed: bool) -> dict[str, Any]:
        now = self.now()
        matching = self.matching
        seen_emails: set[str] = set()
        seen_guids: set[str] = set()
        duplicate_emails = duplicate_guids = created = subscribed = unsubscribed = data_changed = 0
        for entry in entries:
            email: str = entry["email"]
            key = matched_form(email, matching)
            if key in seen_emails:
                duplicate_emails += 1
                continue
            seen_emails.add(key)
            raw_guid = entry.get("guid")
            guid = None if raw_guid is None or raw_guid == "" else str(raw_guid)
            if guid is not None:
                if guid in seen_guids:
                    duplicate_guids += 1
                    continue
                seen_guids.add(guid)
            flag = entry.get("subscribed")
            status = flag if isinstance(flag, bool) else None  # "absent (or invalid)" per the docs
            cause = entry.get("unsubscribed_cause")
            cause = cause if cause in WRITE_CAUSES else DEFAULT_CAUSE
            data = {name: value for name, value in entry.items() if name.startswith(DATA_PREFIX)}

            row = lst.find(email, matching)
            if row is None:
                if lst.candidates(email):
                    self._twins.append(email)
                fields = _new_row(email, guid or default_guid(email), status is not False, cause, now)
                fields.update((name, value) for name, value in data.items() if value is not None)
                lst.add(_Row(fields))
                created += 1
                if status is False:
                    unsubscribed += 1
                else:
                    subscribed += 1
                continue

            fields = row.fields()
            changed = False
            # A stored value that is not a JSON bool (verbatim seeding) is unknown: either boolean
            # on the write sets it, and `true` counts as a re-subscription.
            stored = fields.get("subscribed")
            if status is True and stored is not True:
                self._resubscriptions.append((row.email, _known_cause(fields.get("unsubscribed_cause"))))
                fields.update(subscribed=True, subscribed_at=now, unsubscribed_at=None, unsubscribed_cause=None)
                subscribed += 1
                changed = True
            elif status is False and stored is not False:
                fields.update(subscribed=False, unsubscribed_at=now, unsubscribed_cause=cause)
                unsubscribed += 1
                changed = True
            if guid is not None and fields.get("guid") != guid:
                fields["guid"] = guid
                changed = True
            if _merge_data(fields, data):
                data_changed += 1
                changed = True
            if changed:
                lst.rewrite(row, fields)
                if move_changed:
                    lst.move_to_end(row)
        if seen_emails:
            lst.updated_at = now
        return {
            "errors": [],
            "unique_emails_count": len(seen_emails) - duplicate_guids,
            "duplicate_emails_count": duplicate_emails,
            "duplicate_guid_count": duplicate_guids,
            "nb_created": created,
            "nb_subscribed": subscribed,
            "nb_unsubscribed": unsubscribed,
            "nb_data_changed": data_changed,
        }

    def delete_emails(self, list_id: int, emails: Iterable[str]) -> int:
        """POST .../subscribers/delete: the row and its history go. Returns how many were deleted."""
        with self._lock:
            lst = self._list(list_id)
            doomed: dict[int, _Row] = {}
            for email in emails:
                for row in lst.bucket(email):
                    if same_address(row.email, email, self.matching):
                        doomed[id(row)] = row
            for row in doomed.values():
                lst.remove(row)
            return len(doomed)

    def delete_all(self, list_id: int, status: str) -> int:
        """DELETE .../subscribers/all?status=...: every row with that status goes."""
        with self._lock:
            lst = self._list(list_id)
            before = lst.size
            wanted = None if status == "all" else status == "subscribed"
            kept = [] if wanted is None else [row for row in lst.iter_rows() if row.subscribed is not wanted]
            lst.clear()
            for row in kept:
                lst.add(row)
            return before - lst.size

    def _view(self, lst: _List, read: PageRead) -> _StatusView | _RowsView:
        wanted: bool | None = None if read.status == "all" else read.status == "subscribed"
        if read.search is None:
            return _StatusView(lst, wanted)
        search = read.search
        if read.exact:
            found = [row for row in lst.bucket(search) if same_address(row.email, search, self.matching)]
        elif self.matching == "exact":
            found = [row for row in lst.iter_rows() if search in row.email]
        else:
            needle = matched_form(search, self.matching)
            found = [row for row in lst.iter_rows() if needle in matched_form(row.email, self.matching)]
        return _RowsView([row for row in found if wanted is None or row.subscribed is wanted])

    def _list(self, list_id: int) -> _List:
        try:
            return self._lists[list_id]
        except KeyError:
            raise UnknownList(list_id) from None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Making a million objects would have the cyclic GC walk the growing heap again and again (a
    quarter of the time); rows hold no cycles, so bulk work pauses it."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def _shuffled_slice(view: _StatusView | _RowsView, offset: int, count: int, dice: FaultDice) -> list[_Row]:
    """A page of a fresh random order of the view. The rows at [offset, offset + count) of a uniform
    shuffle are a uniform sample of that many rows in random order, so no shuffle of the list is needed."""
    positions = dice.sample(view.size(), min(count, view.size() - offset))
    ascending = sorted(range(len(positions)), key=positions.__getitem__)
    rows = view.pick([positions[i] for i in ascending])
    page: list[_Row | None] = [None] * len(positions)
    for slot, row in zip(ascending, rows, strict=True):
        page[slot] = row
    return [row for row in page if row is not None]


def _count_cause(cause: object) -> str:
    """The key /count files a row that is not subscribed under (a verbatim row's odd cause as is)."""
    return cause if isinstance(cause, str) and cause else DEFAULT_CAUSE


def _known_cause(cause: object) -> str | None:
    """A stored cause as one of READ_CAUSES (whatever its ASCII case or spaces), or None when unknown."""
    if isinstance(cause, str) and cause.isascii() and cause.strip().upper() in READ_CAUSES:
        return cause.strip().upper()
    return None


def _new_row(email: str, guid: str, subscribed: bool, cause: str, now: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "email": email,
        "guid": guid,
        "subscribed": subscribed,
        "subscribed_at": now if subscribed else None,
        "unsubscribed_at": None if subscribed else now,
        "unsubscribed_cause": None if subscribed else cause,
    }
    row.update(HISTORY_DEFAULTS)
    return row


def _merge_data(row: dict[str, Any], data: Mapping[str, Any]) -> bool:
    """Set data_* values (null removes one); True when anything changed."""
    changed = False
    for name, value in data.items():
        if value is None:
            if name in row:
                del row[name]
                changed = True
        elif row.get(name) != value:
            row[name] = value
            changed = True
    return changed


def _seed_fields(raw: Mapping[str, Any], now: str) -> dict[str, Any]:
    email = raw.get("email")
    if not isinstance(email, str) or not email:
        raise ValueError("every seeded row needs an email")
    get = raw.get
    subscribed = bool(get("subscribed", True))
    row: dict[str, Any] = {
        "email": email,
        "guid": get("guid") or default_guid(email),
        "subscribed": subscribed,
        "subscribed_at": get("subscribed_at", now if subscribed else None),
        "unsubscribed_at": get("unsubscribed_at", None if subscribed else now),
        "unsubscribed_cause": get("unsubscribed_cause", None if subscribed else DEFAULT_CAUSE),
    }
    # Plain loops: this runs a million times when a big list is seeded.
    for name, value in raw.items():
        if value is not None and name.startswith(DATA_PREFIX):
            row[name] = value
    for name, default in HISTORY_DEFAULTS:
        row[name] = get(name, default)
    return row


def _as_json_holds(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """A seeded row as Ownpage's JSON can hold it: a Python text with a surrogate *pair* in it is the
    one character the pair encodes (JSON reads "\\ud800\\udc00" as U+10000); a lone surrogate stays."""
    if any(isinstance(value, str) and not value.isascii() and _SURROGATE.search(value) for value in raw.values()):
        return dict(json.loads(json.dumps(raw)))
    return raw


def _verbatim_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    email = raw.get("email")
    if not isinstance(email, str) or not email:
        raise ValueError("every seeded row needs an email (a non-empty string), verbatim or not")
    return dict(raw)


def idna_domain(email: Any) -> Any:
    """The address with its domain in IDNA (`zoë@xn--exmple-cua.org` for `zoë@exämple.org`, Python's
    IDNA 2003 codec); anything else, or a domain that codec refuses, as it is."""
    if not isinstance(email, str) or "@" not in email:
        return email
    local, _, domain = email.rpartition("@")
    if domain.isascii():
        return email
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return email


def _error_text(email: object, problem: str) -> str:
    return problem if email is None else f"{problem} {email}"


def _error_entry(email: object, problem: str, shape: str) -> str | dict[str, Any]:
    if shape == "objects":
        return {"email": email, "error": problem}
    if shape == "objects_idna":  # the address as Ownpage spells it: its domain in IDNA (xn--...)
        return {"email": idna_domain(email), "error": problem}
    if shape == "unnamed":
        return problem  # which row: not said
    return _error_text(email, problem)
