"""How the emulator misbehaves on demand: the fault settings and the seeded dice that draw them."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

INVALID_MODES = ("per_row", "whole_batch", "whole_batch_unnamed", "whole_batch_200")
ERRORS_SHAPES = ("strings", "objects", "unnamed", "objects_idna")
WRITE_ANSWERS = ("summary", "empty", "error_document")
ORDERS = ("insertion", "last_change", "random")
MATCHINGS = ("case_insensitive", "exact", "casefold")
DOMAINS = ("as_given", "idna")
TOKEN_METHODS = ("both", "post", "get")
FAULT_SCOPES = ("all", "reads", "writes")


@dataclass
class Faults:
    """Everything off by default. Replace fields at run time with `EmulatorServer.set_faults(...)`."""

    error_rate: float = 0.0  # share of API calls answered with `error_status`
    error_status: int = 503
    retry_after: float | None = None  # sent as Retry-After with every injected error
    html_errors: bool = False  # injected errors carry an HTML page, like a proxy in front of the API
    drop_rate: float = 0.0  # share of connections closed without any response
    drop_after_write: bool = False  # a dropped POST .../subscribers is applied first (the answer is lost)
    latency: float = 0.0  # seconds added to each API call
    latency_rate: float = 1.0  # share of the calls in scope that get `latency`
    token_lifetime_calls: int | None = None  # a token answers this many calls, then 401
    fail_writes: bool = False  # every POST .../subscribers answers `error_status`
    error_burst: int = 0  # the next N calls in scope answer `error_status`; counts itself down to 0
    # Which calls latency, drops, error_burst, error_rate and html_ok_rate hit: all | reads (every GET
    # but /token) | writes (POST .../subscribers).
    fault_scope: str = "all"
    reject_domains: tuple[str, ...] = ()  # addresses at these domains are reported invalid
    invalid_mode: str = "per_row"  # per_row | whole_batch | whole_batch_unnamed | whole_batch_200
    # per-row `errors` entries: strings | objects | unnamed (no address) | objects_idna (domain in IDNA)
    errors_shape: str = "strings"
    # A write's 200 answer: summary | empty (applied, answered {}) | error_document (nothing applied,
    # answered 200 {"status": 500, "message": ...})
    write_answer: str = "summary"
    # Ownpage's unknowns, played the unfriendly way (docs/emulator.md has the exact rules).
    order: str = "insertion"  # row order of reads: insertion | last_change | random (fresh each call)
    move_per_page: int = 0  # after each list page, this many random rows change and move to the end
    delete_offset: int | None = None  # once: after the next list page, the row at this offset is deleted
    empty_page_offset: int | None = None  # once: a list read at exactly this offset answers []
    ignore_status_all: bool = False  # status=all is served as status=subscribed
    ignore_status: bool = False  # every read serves the subscribed rows
    ignore_offset: bool = False  # every read starts at offset 0
    never_empty: bool = False  # a read past the end answers the last page again instead of []
    ignore_exact: bool = False  # exact=true is ignored: search stays a substring match
    ignore_search: bool = False  # search is ignored: a page of the whole list
    max_count: int | None = None  # count silently capped at this (replaces the 400 above 10,000)
    # case_insensitive | exact (spelling kept, matched as given) | casefold (full Unicode case folding)
    matching: str = "case_insensitive"
    # as_given | idna: each written address is kept (and matched, and searched) with its domain in IDNA
    domains: str = "as_given"
    count_skew: int = 0  # /count reports this many more rows (negative: fewer) than the list holds
    html_ok_rate: float = 0.0  # share of API calls answered 200 with an HTML page
    token_method: str = "both"  # /token forms served: both | post | get (the other answers 405)
    seed: int | None = None  # RNG seed for reproducible fault sequences (and random order and moves)

    def __post_init__(self) -> None:
        for name in ("error_rate", "drop_rate", "html_ok_rate", "latency_rate"):
            rate = float(getattr(self, name))
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {rate}")
            setattr(self, name, rate)
        self.error_status = int(self.error_status)
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"error_status must be a 4xx or 5xx status, got {self.error_status}")
        if self.retry_after is not None and float(self.retry_after) < 0:
            raise ValueError("retry_after must not be negative")
        self.latency = float(self.latency)
        if self.latency < 0:
            raise ValueError("latency must not be negative")
        if self.token_lifetime_calls is not None and int(self.token_lifetime_calls) < 1:
            raise ValueError("token_lifetime_calls must be at least 1")
        if self.invalid_mode not in INVALID_MODES:
            raise ValueError(f"invalid_mode must be one of {INVALID_MODES}, got {self.invalid_mode!r}")
        if self.errors_shape not in ERRORS_SHAPES:
            raise ValueError(f"errors_shape must be one of {ERRORS_SHAPES}, got {self.errors_shape!r}")
        self.reject_domains = _domains(self.reject_domains)
        for name, choices in (
            ("order", ORDERS),
            ("matching", MATCHINGS),
            ("domains", DOMAINS),
            ("token_method", TOKEN_METHODS),
            ("fault_scope", FAULT_SCOPES),
            ("write_answer", WRITE_ANSWERS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")
        self.move_per_page = _whole(self.move_per_page, "move_per_page", minimum=0)
        self.error_burst = _whole(self.error_burst, "error_burst", minimum=0)
        self.count_skew = _whole(self.count_skew, "count_skew")
        for name in ("delete_offset", "empty_page_offset"):
            value = getattr(self, name)
            setattr(self, name, None if value is None else _whole(value, name, minimum=0))
        self.max_count = None if self.max_count is None else _whole(self.max_count, "max_count", minimum=1)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def replaced(self, **changes: Any) -> Faults:
        """A copy with `changes` applied; unknown names raise ValueError (they are usually typos)."""
        unknown = sorted(set(changes) - set(self.field_names()))
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Faults:
        """Build from JSON-like data (control API, CLI); unknown names raise ValueError."""
        return cls().replaced(**dict(raw))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["reject_domains"] = list(self.reject_domains)
        return values


def _whole(value: Any, name: str, minimum: int | None = None) -> int:
    # bool is an int subclass, and a JSON `true` for a count is a mistake worth a clear error.
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _domains(raw: Iterable[str] | str) -> tuple[str, ...]:
    # A lone string would otherwise be split into characters.
    items = raw.split(",") if isinstance(raw, str) else raw
    return tuple(domain.strip().lower().lstrip("@") for domain in items if domain and domain.strip())


class FaultDice:
    """The one random source of the fault sequence; seeded, shared by all handler threads."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._random = random.Random(seed)

    def reseed(self, seed: int | None) -> None:
        with self._lock:
            self._random.seed(seed)

    def roll(self, rate: float) -> bool:
        """True with probability `rate`. Draws nothing when the rate is 0 or 1, so the sequence of
        other faults stays reproducible when one is switched fully on or off."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        with self._lock:
            return self._random.random() < rate

    def sample(self, population: int, k: int) -> list[int]:
        """`k` distinct positions out of `range(population)`, in random order (O(k), not O(population))."""
        with self._lock:
            return self._random.sample(range(population), k)
