"""Property-based proofs of the subscriber-safety policy (issue 5, docs/safety.md).

Sources are fed as raw rows through `build_snapshot`, so normalisation, invalid addresses and
collisions are part of every example. Ownpage is an in-memory model of its documented upsert
semantics (`apply_payloads` below): the properties apply each plan to it and look at the result.
"""

from __future__ import annotations

import hashlib
import random
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ownpage_sync.deadline import Deadline
from ownpage_sync.emails import is_valid_email, normalise_email
from ownpage_sync.guards import GuardLimits, GuardOverride, check_guards, unresolved
from ownpage_sync.models import Action, Operation, OwnpageSubscriber, SubscriberRecord, normalise_data
from ownpage_sync.planner import Plan, PlanPolicy, plan_changes
from ownpage_sync.ports import SubscriberCounts, UpsertResult
from ownpage_sync.report import Outcome
from ownpage_sync.settings import OwnpageSettings, Settings, SourceSettings
from ownpage_sync.sources.base import RawSubscriber
from ownpage_sync.sources.snapshot import build_snapshot, parse_consent
from ownpage_sync.sync import RunRequest, SyncServices, run_sync

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The causes Ownpage documents. Written out here (not imported) so the oracle restates the spec.
OWNPAGE_CAUSES = frozenset({"READER", "PUBLISHER", "HARD_BOUNCE", "MULTIPLE_BOUNCES"})
MAPPED = ("firstname", "city")  # attributes the source maps
UNMAPPED = "loyalty"  # an attribute only Ownpage holds: the sync must never touch it
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
APPLIED_AT = T0 + timedelta(days=30)  # when the fake records our unsubscribes

# Canonical identities, deliberately Unicode-heavy: composed letters (which NFD splits), non-ASCII
# local parts and internationalised domains, an A-label, a sharp s and a final sigma (whose case
# mappings are not round trips).
IDENTITIES = (
    "alice@example.com",
    "josé@exämple.org",
    "Élodie@bücher.de",
    "zoë.ünal@mail.example.co.uk",
    "δοκιμή@παράδειγμα.gr",
    "ñandú@例え.jp",
    "straße@example.com",
    "o'brien+news@xn--bcher-kva.ch",
    "x@b.co",
    "First.Last+tag@sub.example.io",
    "a_b-c~1@x-y.example.net",
)
OWNPAGE_ONLY = ("carol@example.com", "dave@exämple.org", "ève@example.com")
INVALID = ("", "   ", "no-at-sign", "a@b", "a@@example.com", "a b@example.com", "a..b@example.com", "@example.com",
           "a@.com", "a@example.c", "a@-example.com", "trailing@dot.com.")  # fmt: skip
PADDING = ("", " ", "\t", "\u00a0", "\n ")
CASES: tuple[Callable[[str], str], ...] = (str, str.lower, str.upper, str.swapcase, str.title)


def spellings(identities: Sequence[str]) -> list[str]:
    """Every spelling of every identity: case, Unicode form and surrounding white space vary.

    Enumerated up front so one draw picks a spelling (fast, and shrinks towards the plain form).
    """
    return [
        before + unicodedata.normalize(form, case(base)) + after
        for base in identities
        for case in CASES
        for form in ("NFC", "NFD")
        for before in PADDING
        for after in PADDING
    ]


def address_variants(identities: Sequence[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(spellings(identities))


source_spellings = address_variants(IDENTITIES)
ownpage_spellings = address_variants(IDENTITIES + OWNPAGE_ONLY)
raw_emails = st.one_of(
    source_spellings,
    source_spellings,  # twice: most rows are plausible addresses
    st.sampled_from((*INVALID, None, 42)),  # None and 42: not text at all
)
DATA_VALUES = (None, "", "  ", "Ann", " Ann ", "Zoé", 42, Decimal("42.0"), 42.0, True)
raw_data = st.sampled_from(
    [{}]
    + [{name: value} for name in MAPPED for value in DATA_VALUES]
    + [{"firstname": first, "city": city} for first in DATA_VALUES for city in ("Paris", " Paris", "", None, 75)]
)
raw_guids = st.sampled_from((None, "", "g-1", " g-1 ", "g-2", 42, Decimal("42")))
raw_consents = st.sampled_from(
    (
        None,
        "",
        "not a date",
        True,
        float("nan"),
        1.7e18,  # an epoch in nanoseconds: unreadable, must be ignored, not crash the run
        T0 - timedelta(hours=1),
        T0,
        T0 + timedelta(hours=1),
        (T0 + timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
        T0.replace(tzinfo=None).isoformat(),  # naive: read as UTC, so equal to T0
        int((T0 + timedelta(hours=1)).timestamp()),
        Decimal(int((T0 - timedelta(hours=1)).timestamp())),
    )
)


@st.composite
def raw_rows(draw: st.DrawFn) -> list[RawSubscriber]:
    count = draw(st.integers(min_value=0, max_value=12))
    return [
        RawSubscriber(
            email=draw(raw_emails),
            where=f"row {index}",
            guid=draw(raw_guids),
            data=draw(raw_data),
            consented_at=draw(raw_consents),
        )
        for index in range(count)
    ]


@dataclass
class OwnpageRow:
    """One subscriber as the fake Ownpage stores it (history fields included: they must survive)."""

    email: str
    subscribed: bool
    guid: str
    data: dict[str, str] = field(default_factory=dict)
    unsubscribed_at: datetime | None = None
    unsubscribed_cause: str | None = None
    send_count: int = 0


OwnpageState = dict[str, OwnpageRow]

ownpage_data = st.sampled_from(
    [{}]
    + [{name: value} for name in (*MAPPED, UNMAPPED) for value in ("Ann", "Zoé", "42", "Paris")]
    + [{"firstname": "Ann", "city": "Paris", UNMAPPED: "gold"}, {"city": "Lyon", UNMAPPED: "silver"}]
)
ownpage_causes = st.sampled_from(
    (None, "READER", "PUBLISHER", "HARD_BOUNCE", "MULTIPLE_BOUNCES", "SPAM", "", "publisher")
)


@st.composite
def ownpage_states(draw: st.DrawFn) -> OwnpageState:
    """Ownpage's list as the client reads it: addresses normalised, each once (first row wins)."""
    state: OwnpageState = {}
    for _ in range(draw(st.integers(min_value=0, max_value=10))):
        email = normalise_email(draw(ownpage_spellings))
        subscribed = draw(st.booleans())
        state.setdefault(
            email,
            OwnpageRow(
                email=email,
                subscribed=subscribed,
                guid=draw(st.sampled_from(("g-1", "g-2", "42", hashlib.md5(email.encode()).hexdigest()))),
                data=draw(ownpage_data),
                unsubscribed_at=None
                if subscribed
                else draw(st.sampled_from((None, T0 - timedelta(hours=1), T0, T0 + timedelta(hours=1)))),
                unsubscribed_cause=None if subscribed else draw(ownpage_causes),
                send_count=draw(st.integers(min_value=0, max_value=50)),
            ),
        )
    return state


policies = st.one_of(
    st.just(PlanPolicy()),
    st.builds(
        lambda cause, extra: PlanPolicy(
            unsubscribe_cause=cause, suppressing_causes=frozenset({"HARD_BOUNCE", "MULTIPLE_BOUNCES", *extra})
        ),
        st.sampled_from(("PUBLISHER", "READER")),
        st.sets(st.sampled_from(("READER", "PUBLISHER"))),
    ),
)


# --- the fake: Ownpage's documented upsert, as a pure function -------------------------------------------


def apply_payloads(
    state: OwnpageState, payloads: Sequence[Mapping[str, Any]], now: datetime = APPLIED_AT
) -> OwnpageState:
    """POST .../subscribers on a copy of `state` (ownpage-api.md, "Subscribing, unsubscribing, updating").

    Absent `subscribed` keeps an existing row's status (a new address is subscribed); `false` sets the
    cause (default READER) and unsubscribed_at; `guid` and `data_*` are set. Anything else is a field
    the sync has no business sending, so the fake refuses it.
    """
    result = {email: replace(row, data=dict(row.data)) for email, row in state.items()}
    for payload in payloads:
        unknown = set(payload) - {"email", "subscribed", "unsubscribed_cause", "guid"}
        assert all(key.startswith("data_") for key in unknown), f"unexpected payload fields {unknown}"
        email = payload["email"]
        row = result.get(email)
        if row is None:
            row = result[email] = OwnpageRow(email, subscribed=True, guid=hashlib.md5(email.encode()).hexdigest())
        if "subscribed" in payload:
            assert isinstance(payload["subscribed"], bool)
            row.subscribed = payload["subscribed"]
            if payload["subscribed"]:
                row.unsubscribed_at, row.unsubscribed_cause = None, None
            else:
                row.unsubscribed_at, row.unsubscribed_cause = now, payload.get("unsubscribed_cause", "READER")
        else:
            assert "unsubscribed_cause" not in payload, "a cause without a status change means nothing"
        if "guid" in payload:
            row.guid = payload["guid"]
        for key, value in payload.items():
            if key.startswith("data_"):
                row.data[key.removeprefix("data_")] = value
    return result


def read_ownpage(state: OwnpageState) -> list[OwnpageSubscriber]:
    """What the client hands the planner: normalised addresses and data values."""
    return [
        OwnpageSubscriber(
            email=row.email,
            subscribed=row.subscribed,
            guid=row.guid,
            data=normalise_data(row.data),
            unsubscribed_at=row.unsubscribed_at,
            unsubscribed_cause=row.unsubscribed_cause,
        )
        for row in state.values()
    ]


def apply_plan(state: OwnpageState, plan: Plan) -> OwnpageState:
    return apply_payloads(state, [operation.to_payload() for operation in plan.operations()])


def subscribed(state: OwnpageState) -> set[str]:
    return {email for email, row in state.items() if row.subscribed}


# --- the oracle: the policy restated from docs/safety.md ------------------------------------------------


def opted_in_again(record: SubscriberRecord, row: OwnpageRow) -> bool:
    return (
        record.consented_at is not None
        and row.unsubscribed_at is not None
        and record.consented_at > row.unsubscribed_at
    )


def expected_suppressed(source: Mapping[str, SubscriberRecord], state: OwnpageState, policy: PlanPolicy) -> set[str]:
    """Source addresses Ownpage holds unsubscribed for a suppressing (or missing/unknown) cause, with
    no newer opt-in in the source."""
    result = set()
    for email, record in source.items():
        row = state.get(email)
        if row is None or row.subscribed:
            continue
        cause = row.unsubscribed_cause
        suppressing = cause not in OWNPAGE_CAUSES or cause in policy.suppressing_causes
        if suppressing and not opted_in_again(record, row):
            result.add(email)
    return result


# --- properties -------------------------------------------------------------------------------------------


@PROPERTY
@given(rows=raw_rows(), state=ownpage_states(), policy=policies)
def test_applying_the_plan_converges_on_the_eligible_source(
    rows: list[RawSubscriber], state: OwnpageState, policy: PlanPolicy
) -> None:
    # Given a raw source and Ownpage's list
    snapshot = build_snapshot(rows)
    source = snapshot.records
    suppressed = expected_suppressed(source, state, policy)

    # When the plan is applied to Ownpage
    plan = plan_changes(source, read_ownpage(state), policy)
    after = apply_plan(state, plan)

    # Then Ownpage's subscribed set is exactly the source minus the suppressed addresses
    assert {item.email for item in plan.suppressed} == suppressed
    assert subscribed(after) == set(source) - suppressed
    # And planning again on the result has nothing left to write, and suppresses the same addresses
    again = plan_changes(source, read_ownpage(after), policy)
    assert again.is_empty, again.counts()
    assert {item.email for item in again.suppressed} == suppressed
    # And nothing was deleted: every row, and its history, is still there
    assert set(state) <= set(after)
    assert all(after[email].send_count == row.send_count for email, row in state.items())


@PROPERTY
@given(rows=raw_rows(), state=ownpage_states(), policy=policies)
def test_no_suppressed_address_is_subscribed_and_no_source_address_is_unsubscribed(
    rows: list[RawSubscriber], state: OwnpageState, policy: PlanPolicy
) -> None:
    # Given a raw source and Ownpage's list
    source = build_snapshot(rows).records

    # When the planner decides
    plan = plan_changes(source, read_ownpage(state), policy)

    # Then a subscribe for an address Ownpage holds unsubscribed for a suppressing cause always has a
    # newer opt-in behind it, and those are exactly the ones counted as re-subscribed by consent
    by_consent = 0
    for operation in plan.to_subscribe:
        row = state.get(operation.email)
        assert operation.email in source
        if row is not None and not row.subscribed:
            if row.unsubscribed_cause not in OWNPAGE_CAUSES or row.unsubscribed_cause in policy.suppressing_causes:
                assert opted_in_again(source[operation.email], row)
                by_consent += 1
        else:
            assert row is None, "a subscribe for an address already subscribed"
    assert plan.resubscribed_by_consent == by_consent
    # And nothing present in the source is unsubscribed; every unsubscribe carries the policy's cause
    for operation in plan.to_unsubscribe:
        assert operation.email not in source
        assert state[operation.email].subscribed
        assert operation.to_payload() == {
            "email": operation.email,
            "subscribed": False,
            "unsubscribed_cause": policy.unsubscribe_cause,
        }
    # And updates only touch rows Ownpage holds subscribed, never carrying a status
    for operation in plan.to_update:
        assert state[operation.email].subscribed
        payload = operation.to_payload()
        assert "subscribed" not in payload and "unsubscribed_cause" not in payload
    # And the planner only ever subscribes, unsubscribes or updates: there is no other action
    assert set(Action) == {Action.SUBSCRIBE, Action.UNSUBSCRIBE, Action.UPDATE}
    assert {op.action for op in plan.to_subscribe} <= {Action.SUBSCRIBE}
    assert {op.action for op in plan.to_unsubscribe} <= {Action.UNSUBSCRIBE}
    assert {op.action for op in plan.to_update} <= {Action.UPDATE}
    # And each address is written at most once
    emails = [op.email for op in plan.operations()]
    assert len(emails) == len(set(emails))


@PROPERTY
@given(rows=raw_rows(), state=ownpage_states(), policy=policies)
def test_data_and_guid_follow_the_source_and_unmapped_attributes_are_untouched(
    rows: list[RawSubscriber], state: OwnpageState, policy: PlanPolicy
) -> None:
    # Given a raw source and Ownpage's list
    source = build_snapshot(rows).records

    # When the plan is applied
    after = apply_plan(state, plan_changes(source, read_ownpage(state), policy))

    # Then every subscribed source address carries the source's guid and mapped data
    for email in subscribed(after):
        record = source[email]
        row = after[email]
        if record.guid is not None:
            assert row.guid == record.guid
        for name, value in record.data.items():
            assert row.data[name] == value
    # And attributes the source does not set (the unmapped one above all) keep Ownpage's value,
    # on every row, subscribed or not
    for email, before in state.items():
        mentioned = set(source[email].data) if email in source and after[email].subscribed else set()
        for name, value in before.data.items():
            if name not in mentioned:
                assert after[email].data[name] == value
        # and a suppressed or unsubscribed-and-absent row is not written at all
        if not after[email].subscribed:
            assert after[email].data == before.data and after[email].guid == before.guid


@PROPERTY
@given(rows=raw_rows(), state=ownpage_states(), policy=policies, seed=st.randoms(use_true_random=False))
def test_plans_do_not_depend_on_read_order_or_repeated_rows(
    rows: list[RawSubscriber], state: OwnpageState, policy: PlanPolicy, seed: random.Random
) -> None:
    # Given the same source read in another order (parallel scans, SQL without ORDER BY)
    shuffled = list(rows)
    seed.shuffle(shuffled)
    # And Ownpage's pages read in another order, with rows repeated (offset paging over a changing list)
    ownpage = read_ownpage(state)
    repeated = list(reversed(ownpage)) + ownpage

    # When both are snapshotted and planned
    snapshot, other = build_snapshot(rows), build_snapshot(shuffled)

    # Then the eligible records are the same, collisions included
    assert snapshot.records == other.records
    assert snapshot.duplicate_count + snapshot.collision_count == other.duplicate_count + other.collision_count
    # And so is the plan
    assert plan_changes(snapshot.records, repeated, policy) == plan_changes(snapshot.records, ownpage, policy)


@PROPERTY
@given(rows=raw_rows())
def test_the_snapshot_keeps_exactly_the_valid_normalised_addresses(rows: list[RawSubscriber]) -> None:
    # Given raw rows with every kind of spelling, invalid addresses and unreadable consent times
    # When they are snapshotted (this must never raise: one bad row must not stop a run)
    snapshot = build_snapshot(rows)

    # Then the records are keyed by the normalised form of every valid address, and nothing else
    normalised = [normalise_email(row.email) if isinstance(row.email, str) else "" for row in rows]
    valid = [email for email in normalised if email and is_valid_email(email)]
    assert set(snapshot.records) == set(valid)
    assert all(record.email == email for email, record in snapshot.records.items())
    # And every row is accounted for exactly once
    assert snapshot.rows_read == len(rows)
    assert snapshot.invalid_count == len(rows) - len(valid)
    assert snapshot.duplicate_count + snapshot.collision_count == len(valid) - len(set(valid))
    # And problem samples never carry a raw address
    for problem in snapshot.samples:
        assert "***" in problem.masked_email or problem.masked_email == "<empty>"
    # And every kept consent time is aware and in UTC
    assert all(r.consented_at is None or r.consented_at.utcoffset() == timedelta(0) for r in snapshot.records.values())


@PROPERTY
@given(
    value=st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.decimals(), st.text(max_size=30), st.datetimes()
    )
)
def test_parse_consent_reads_a_time_or_raises_value_error(value: object) -> None:
    # Given any value a source column could hold
    # When it is parsed as a consent time
    try:
        moment = parse_consent(value)
    except (ValueError, TypeError, OverflowError):
        return  # Then an unreadable value is refused with an error the snapshot handles...
    # ...or the result is an aware UTC datetime (or None for "no consent time")
    assert moment is None or moment.utcoffset() == timedelta(0)


# --- guards -----------------------------------------------------------------------------------------------

RATIOS = ("0", "0.05", "0.1", "0.2", "0.25", "0.3", "0.35", "0.7", "1")


@dataclass(frozen=True)
class GuardCase:
    plan: Plan
    previous: int | None
    unsubscribe_ratio: str  # as an operator writes it in MAX_UNSUBSCRIBE_RATIO
    drop_ratio: str
    max_count: int | None


def near(draw: st.DrawFn, total: int, share: Fraction, high: int) -> int:
    """A count at, just around, or anywhere near `share` of `total`: boundaries are where bugs hide."""
    at = share * total
    candidates = [int(at), int(at) + 1, int(at) - 1] if at.denominator == 1 else [int(at), int(at) + 1]
    picked = draw(st.one_of(st.sampled_from(candidates), st.integers(min_value=0, max_value=high)))
    return max(0, min(high, picked))


@st.composite
def guard_cases(draw: st.DrawFn) -> GuardCase:
    unsubscribe_ratio, drop_ratio = draw(st.sampled_from(RATIOS)), draw(st.sampled_from(RATIOS))
    # Multiples of 20 put every ratio above exactly on a whole count.
    counts = st.one_of(
        st.integers(min_value=0, max_value=300), st.integers(min_value=1, max_value=15).map(lambda k: 20 * k)
    )
    subscribed_count = draw(counts)
    unsubscribing = near(draw, subscribed_count, Fraction(unsubscribe_ratio), subscribed_count)
    previous = draw(st.one_of(st.none(), counts))
    source_count = near(draw, previous or 0, 1 - Fraction(drop_ratio), 300)
    plan = Plan(
        to_unsubscribe=tuple(
            Operation(Action.UNSUBSCRIBE, f"u{i}@example.com", unsubscribed_cause="PUBLISHER")
            for i in range(unsubscribing)
        ),
        source_count=source_count,
        ownpage_subscribed=subscribed_count,
        ownpage_total=subscribed_count,
    )
    max_count = draw(
        st.one_of(
            st.none(), st.sampled_from((unsubscribing, unsubscribing - 1)).filter(lambda n: n >= 0), st.integers(0, 300)
        )
    )
    return GuardCase(plan, previous, unsubscribe_ratio, drop_ratio, max_count)


@PROPERTY
@given(case=guard_cases())
def test_guards_trip_exactly_when_a_limit_is_exceeded(case: GuardCase) -> None:
    # Given a plan, limits written as an operator writes them, and maybe a last successful run
    plan, previous = case.plan, case.previous
    limits = GuardLimits(float(case.unsubscribe_ratio), case.max_count, float(case.drop_ratio))
    unsubscribing = len(plan.to_unsubscribe)

    # When the guards are checked
    tripped = {trip.guard for trip in check_guards(plan, limits, previous)}

    # Then each trips exactly when its limit is exceeded, in exact arithmetic ("at the limit" passes)
    expected = set()
    if plan.source_count == 0 and plan.ownpage_subscribed > 0:
        expected.add("empty_source")
    if plan.ownpage_subscribed and Fraction(unsubscribing, plan.ownpage_subscribed) > Fraction(case.unsubscribe_ratio):
        expected.add("unsubscribe_ratio")
    if case.max_count is not None and unsubscribing > case.max_count:
        expected.add("unsubscribe_count")
    if previous and Fraction(previous - plan.source_count, previous) > Fraction(case.drop_ratio):
        expected.add("source_drop")
    assert tripped == expected


@PROPERTY
@given(case=guard_cases(), allowance=st.one_of(st.none(), st.integers(min_value=0, max_value=300)))
def test_only_an_override_passes_a_tripped_guard(case: GuardCase, allowance: int | None) -> None:
    # Given a plan checked against its limits
    plan, previous = case.plan, case.previous
    limits = GuardLimits(float(case.unsubscribe_ratio), case.max_count, float(case.drop_ratio))
    trips = check_guards(plan, limits, previous)

    # Then without an override every trip stands
    assert unresolved(trips, plan, GuardOverride()) == trips
    # And force passes all of them
    assert unresolved(trips, plan, GuardOverride(force=True)) == []
    # And an allowance passes only the unsubscribe guards, and only when the plan stays within it
    left = {trip.guard for trip in unresolved(trips, plan, GuardOverride(max_unsubscribe=allowance))}
    within = allowance is not None and len(plan.to_unsubscribe) <= allowance
    kept = {trip.guard for trip in trips if not (within and trip.guard in {"unsubscribe_ratio", "unsubscribe_count"})}
    assert left == kept


# --- the whole run, in memory: a tripped guard writes nothing ----------------------------------------------


class InMemorySource:
    description = "in-memory rows"

    def __init__(self, rows: Sequence[RawSubscriber]):
        self.rows = list(rows)

    def scan(self) -> Iterator[RawSubscriber]:
        return iter(self.rows)

    def lookup(self, emails: object) -> Iterator[RawSubscriber]:
        return iter(self.rows)


class InMemoryOwnpage:
    """OwnpageLists over the fake above; records every POST so a test can count writes."""

    def __init__(self, state: OwnpageState):
        self.state = state
        self.posts: list[list[dict[str, Any]]] = []

    def iter_subscribers(self, list_id: int, progress: object = None) -> Iterator[OwnpageSubscriber]:
        return iter(read_ownpage(self.state))

    def get_subscriber(self, list_id: int, email: str) -> OwnpageSubscriber | None:
        return next((row for row in read_ownpage(self.state) if row.email == email), None)

    def count(self, list_id: int) -> SubscriberCounts:
        on = len(subscribed(self.state))
        return SubscriberCounts(subscribed=on, unsubscribed=len(self.state) - on)

    def upsert(self, list_id: int, operations: Sequence[Operation]) -> UpsertResult:
        payloads = [operation.to_payload() for operation in operations]
        self.posts.append(payloads)
        self.state = apply_payloads(self.state, payloads)
        return UpsertResult(sent=len(payloads))


class InMemoryLedger:
    def __init__(self, previous: int | None):
        self.previous = previous

    def acquire(self, run_id: str, lease_seconds: int) -> None: ...

    def release(self, run_id: str, outcome: str, counts: Mapping[str, int]) -> None: ...

    def last_successful_source_count(self) -> int | None:
        return self.previous

    def history(self, limit: int = 20) -> list[Any]:
        return []


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=raw_rows(),
    state=ownpage_states(),
    previous=st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
    ratio=st.sampled_from(("0", "0.05", "0.5", "1")),
    override=st.sampled_from((GuardOverride(), GuardOverride(force=True), GuardOverride(max_unsubscribe=1))),
    dry_run=st.booleans(),
)
def test_a_run_writes_nothing_while_a_guard_is_unresolved(
    rows: list[RawSubscriber],
    state: OwnpageState,
    previous: int | None,
    ratio: str,
    override: GuardOverride,
    dry_run: bool,
) -> None:
    # Given the real run orchestration over in-memory ports
    ownpage = InMemoryOwnpage(state)
    config = Settings(
        ownpage=OwnpageSettings(api_url="http://127.0.0.1:9", list_id=1, secret_id="unused"),
        source=SourceSettings(kind="dynamodb", table="unused"),
        limits=GuardLimits(max_unsubscribe_ratio=float(ratio)),
    )
    services = SyncServices(source=InMemorySource(rows), ownpage=ownpage, ledger=InMemoryLedger(previous))

    # When a run is started
    report = run_sync(config, services, RunRequest(dry_run=dry_run, override=override), Deadline.unlimited())

    # Then a run with an unresolved guard (or a dry run) makes no write at all
    assert report.plan is not None
    blocking = unresolved(check_guards(report.plan, config.limits, previous), report.plan, override)
    assert report.guard_trips == blocking
    if blocking or dry_run:
        assert ownpage.posts == []
        assert ownpage.state == state
        assert report.outcome == (Outcome.DRY_RUN if dry_run else Outcome.GUARD_TRIPPED)
    else:
        # And otherwise it converges on the eligible source
        assert report.outcome == Outcome.CONVERGED
        suppressed = expected_suppressed(build_snapshot(rows).records, state, config.policy)
        assert subscribed(ownpage.state) == set(build_snapshot(rows).records) - suppressed
