"""What the emulated Ownpage holds: lists, subscribers, tokens, the request log and the violations.

Thread-safe (one lock). Rows are kept in insertion order with an index by lower-cased address, so a
look-up is O(1) and an `all` page is a slice: 200,000 subscribers stay fast.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

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

# Lenient on purpose: Ownpage's real rules are unknown; `Faults.reject_domains` plays a stricter judge.
_VALID_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(?:\.[^@\s.]+)+$")


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


@dataclass(slots=True)
class _List:
    id: int
    name: str
    created_at: str
    updated_at: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # read shape, insertion order
    keys: list[str] = field(default_factory=list)  # lower-cased address of rows[i]
    index: dict[str, int] = field(default_factory=dict)  # lower-cased address -> position

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "created_at": self.created_at, "updated_at": self.updated_at}

    def append(self, key: str, row: dict[str, Any]) -> None:
        self.index[key] = len(self.rows)
        self.rows.append(row)
        self.keys.append(key)

    def keep_only(self, keep: Callable[[str, dict[str, Any]], bool]) -> int:
        """Drop rows (delete endpoints only, so O(n) is fine); returns how many went."""
        before = len(self.rows)
        pairs = [(key, row) for key, row in zip(self.keys, self.rows, strict=True) if keep(key, row)]
        self.keys = [key for key, _ in pairs]
        self.rows = [row for _, row in pairs]
        self.index = {key: position for position, key in enumerate(self.keys)}
        return before - len(self.rows)


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`, e.g. 2025-01-31T09:15:02.123Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def default_guid(email: str) -> str:
    """Ownpage's default guid: md5 of the address (here: trimmed and lower-cased, hex)."""
    return hashlib.md5(email.strip().lower().encode("utf-8"), usedforsecurity=False).hexdigest()


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


class EmulatorState:
    """The emulated account. All public methods are safe to call from any thread."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self._lock = threading.RLock()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lists: dict[int, _List] = {}
        self._next_list_id = 1
        self._tokens: dict[str, int] = {}  # token -> calls answered with it
        self._expired: set[str] = set()
        self._requests: list[RequestRecord] = []
        self._violations: list[str] = []
        self.reset()

    # ---- set-up and inspection (tests, control API) ------------------------------------------

    def reset(self) -> None:
        """Back to a fresh account: list 1 "Newsletter", empty; no tokens, requests or violations."""
        with self._lock:
            self._lists = {}
            self._next_list_id = 1
            self._tokens = {}
            self._expired = set()
            self._requests = []
            self._violations = []
            self.create_list(DEFAULT_LIST_NAME)

    def create_list(self, name: str) -> int:
        with self._lock:
            list_id = self._next_list_id
            self._next_list_id += 1
            now = self.now()
            self._lists[list_id] = _List(id=list_id, name=name, created_at=now, updated_at=now)
            return list_id

    def lists(self) -> list[dict[str, Any]]:
        with self._lock:
            return [lst.summary() for lst in self._lists.values()]

    def seed(self, list_id: int, rows: Iterable[Mapping[str, Any]]) -> int:
        """Put rows (read shape) into a list as they are, history included; defaults fill the gaps.

        An address already in the list is replaced in place. Returns how many rows were given.
        """
        now = self.now()
        prepared = [_seed_row(raw, now) for raw in rows]
        with self._lock:
            lst = self._list(list_id)
            for key, row in prepared:
                position = lst.index.get(key)
                if position is None:
                    lst.append(key, row)
                else:
                    lst.rows[position] = row
            lst.updated_at = now
        return len(prepared)

    def subscribers(self, list_id: int) -> list[dict[str, Any]]:
        """Every row of the list, read shape, insertion order (copies)."""
        with self._lock:
            return [dict(row) for row in self._list(list_id).rows]

    def subscriber(self, list_id: int, email: str) -> dict[str, Any] | None:
        """One row by address (case-insensitive), or None."""
        with self._lock:
            lst = self._list(list_id)
            position = lst.index.get(email.lower())
            return None if position is None else dict(lst.rows[position])

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def violations(self) -> list[str]:
        with self._lock:
            return list(self._violations)

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
        self, list_id: int, status: str, offset: int, count: int, search: str | None, exact: bool
    ) -> list[dict[str, Any]]:
        """One page of GET .../subscribers, in insertion order."""
        wanted: bool | None = None if status == "all" else status == "subscribed"
        with self._lock:
            lst = self._list(list_id)
            if search and exact:
                position = lst.index.get(search.lower())
                candidates = [] if position is None else [lst.rows[position]]
                matching = [row for row in candidates if wanted is None or row["subscribed"] is wanted]
                page = matching[offset : offset + count]
            elif not search and wanted is None:
                page = lst.rows[offset : offset + count]
            else:
                needle = search.lower() if search else None
                selected = (
                    row
                    for key, row in zip(lst.keys, lst.rows, strict=True)
                    if (wanted is None or row["subscribed"] is wanted) and (needle is None or needle in key)
                )
                page = list(islice(selected, offset, offset + count))
            # Copies: the handler encodes them outside the lock while writers may change the rows.
            return [dict(row) for row in page]

    def count(self, list_id: int) -> dict[str, Any]:
        with self._lock:
            rows = self._list(list_id).rows
            causes = dict.fromkeys(READ_CAUSES, 0)
            subscribed = 0
            for row in rows:
                if row["subscribed"]:
                    subscribed += 1
                else:
                    cause = row.get("unsubscribed_cause") or DEFAULT_CAUSE
                    causes[cause] = causes.get(cause, 0) + 1
            return {"subscribed": subscribed, "unsubscribed": len(rows) - subscribed, "cause": causes}

    def upsert(
        self,
        list_id: int,
        entries: Sequence[Mapping[str, Any]],
        *,
        reject_domains: Iterable[str] = (),
        invalid_mode: str = "per_row",
        errors_shape: str = "strings",
    ) -> dict[str, Any]:
        """POST .../subscribers: subscribe, unsubscribe, update; never touches the history fields.

        Every entry lands in exactly one bucket: `errors`, `duplicate_emails_count`,
        `duplicate_guid_count` or `unique_emails_count` (applied). Raises InvalidBatch in
        whole_batch mode when any entry is invalid, UnknownList for a missing list.
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
            summary = self._apply(lst, valid)
        summary["errors"] = [_error_entry(email, problem, errors_shape) for email, problem in problems]
        return summary

    def _apply(self, lst: _List, entries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        now = self.now()
        seen_emails: set[str] = set()
        seen_guids: set[str] = set()
        duplicate_emails = duplicate_guids = created = subscribed = unsubscribed = data_changed = 0
        for entry in entries:
            email: str = entry["email"]
            key = email.lower()
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

            position = lst.index.get(key)
            if position is None:
                row = _new_row(email, guid or default_guid(email), status is not False, cause, now)
                row.update((name, value) for name, value in data.items() if value is not None)
                lst.append(key, row)
                created += 1
                if row["subscribed"]:
                    subscribed += 1
                else:
                    unsubscribed += 1
                continue

            row = lst.rows[position]
            if status is True and not row["subscribed"]:
                row.update(subscribed=True, subscribed_at=now, unsubscribed_at=None, unsubscribed_cause=None)
                subscribed += 1
            elif status is False and row["subscribed"]:
                row.update(subscribed=False, unsubscribed_at=now, unsubscribed_cause=cause)
                unsubscribed += 1
            if guid is not None:
                row["guid"] = guid
            if _merge_data(row, data):
                data_changed += 1
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
        doomed = {email.lower() for email in emails}
        with self._lock:
            return self._list(list_id).keep_only(lambda key, _row: key not in doomed)

    def delete_all(self, list_id: int, status: str) -> int:
        """DELETE .../subscribers/all?status=...: every row with that status goes."""
        with self._lock:
            if status == "all":
                return self._list(list_id).keep_only(lambda _key, _row: False)
            wanted = status == "subscribed"
            return self._list(list_id).keep_only(lambda _key, row: row["subscribed"] is not wanted)

    def _list(self, list_id: int) -> _List:
        try:
            return self._lists[list_id]
        except KeyError:
            raise UnknownList(list_id) from None


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


def _seed_row(raw: Mapping[str, Any], now: str) -> tuple[str, dict[str, Any]]:
    email = raw.get("email")
    if not isinstance(email, str) or not email:
        raise ValueError("every seeded row needs an email")
    subscribed = bool(raw.get("subscribed", True))
    row: dict[str, Any] = {
        "email": email,
        "guid": raw.get("guid") or default_guid(email),
        "subscribed": subscribed,
        "subscribed_at": raw.get("subscribed_at", now if subscribed else None),
        "unsubscribed_at": raw.get("unsubscribed_at", None if subscribed else now),
        "unsubscribed_cause": raw.get("unsubscribed_cause", None if subscribed else DEFAULT_CAUSE),
    }
    row.update((name, value) for name, value in raw.items() if name.startswith(DATA_PREFIX) and value is not None)
    row.update((name, raw.get(name, default)) for name, default in HISTORY_DEFAULTS)
    return email.lower(), row


def _error_text(email: object, problem: str) -> str:
    return problem if email is None else f"{problem} {email}"


def _error_entry(email: object, problem: str, shape: str) -> str | dict[str, Any]:
    if shape == "objects":
        return {"email": email, "error": problem}
    return _error_text(email, problem)
