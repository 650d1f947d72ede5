"""Property-based proofs of the subscriber-safety policy (docs/safety.md).

Sources are fed as raw rows, so normalisation, implausible addresses and repeated rows are part of
every example. Ownpage is tests/fakes.FakeOwnpage, a model of its documented upsert, with both ways
its unknowns may turn out: addresses matched canonically or exactly as stored, and a read that
shows any subset, order, repetition (and, where matching is canonical, re-spelling) of the true
rows. The properties apply each plan to the model and look at the result.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ownpage_sync.deadline import Deadline
from ownpage_sync.emails import canonical_key, is_plausible_email
from ownpage_sync.guards import GuardLimits, GuardOverride, check_guards, unresolved
from ownpage_sync.models import SUBSCRIBING, Action, Operation, OwnpageSubscriber
from ownpage_sync.planner import OwnpageStats, Plan, PlanPolicy, SourceStats, plan_changes
from ownpage_sync.report import Outcome
from ownpage_sync.settings import OwnpageSettings, Settings, SourceSettings
from ownpage_sync.sources.base import RawSubscriber
from ownpage_sync.sync import RunRequest, SyncServices, run_sync
from ownpage_sync.values import normalise_data_value, parse_timestamp

from tests.fakes import FakeOwnpage, InMemoryLedger, InMemorySource, Row

pytestmark = pytest.mark.unit

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# The causes Ownpage documents. Written out here (not imported) so the oracle restates the spec.
OWNPAGE_CAUSES = frozenset({"READER", "PUBLISHER", "HARD_BOUNCE", "MULTIPLE_BOUNCES"})
MAPPED = ("firstname", "city")  # attributes the source maps
UNMAPPED = "loyalty"  # an attribute only Ownpage holds: the sync must never touch it
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

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


def in_idna(address: str) -> str:
    """The address with its domain in IDNA (Python's own codec: the spec restated, not imported)."""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.encode('idna').decode('ascii')}"


def spellings(identities: Sequence[str]) -> list[str]:
    """Every spelling of every identity: case, Unicode form, the domain's form (Unicode or IDNA) and
    surrounding white space vary.

    Enumerated up front so one draw picks a spelling (fast, and shrinks towards the plain form).
    """
    bases = [*identities, *(in_idna(base) for base in identities if not base.rpartition("@")[2].isascii())]
    return [
        before + unicodedata.normalize(form, case(base)) + after
        for base in bases
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


ownpage_data = st.sampled_from(
    [{}]
    + [{name: value} for name in (*MAPPED, UNMAPPED) for value in ("Ann", "Zoé", "42", "Paris")]
    + [{"firstname": "Ann", "city": "Paris", UNMAPPED: "gold"}, {"city": "Lyon", UNMAPPED: "silver"}]
)
ownpage_causes = st.sampled_from((None, "READER", "PUBLISHER", "HARD_BOUNCE", "MULTIPLE_BOUNCES", "SPAM"))


@st.composite
def ownpage_rows(draw: st.DrawFn) -> list[Row]:
    """Ownpage's true list: at most one row per canonical key, each in a spelling of Ownpage's own."""
    rows: dict[str, Row] = {}
    for _ in range(draw(st.integers(min_value=0, max_value=10))):
        spelling = draw(ownpage_spellings).strip() or "x@b.co"
        is_on = draw(st.booleans())
        rows.setdefault(
            canonical_key(spelling),
            Row(
                email=spelling,
                subscribed=is_on,
                guid=draw(st.sampled_from(("g-1", "g-2", "42", "5f4dcc3b5aa765d6"))),
                data=draw(ownpage_data),
                unsubscribed_at=None
                if is_on
                else draw(st.sampled_from((None, T0 - timedelta(hours=1), T0, T0 + timedelta(hours=1)))),
                unsubscribed_cause=None if is_on else draw(ownpage_causes),
                send_count=draw(st.integers(min_value=0, max_value=50)),
            ),
        )
    return list(rows.values())


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


@dataclass(frozen=True)
class Unfriendly:
    """How one read of the list went wrong: rows skipped, others repeated, pages in another order,
    spellings changed (only where Ownpage matches canonically: an exact server answers with the
    spelling it matches on)."""

    skipped: frozenset[int]
    repeated: frozenset[int]
    seed: int
    respell: bool

    def __call__(self, rows: list[Row]) -> list[list[OwnpageSubscriber]]:
        rng = random.Random(self.seed)
        shown = [
            row.read(_respelled(row.email, rng) if self.respell else None)
            for i, row in enumerate(rows)
            if i not in self.skipped
        ]
        shown += [row.read() for i, row in enumerate(rows) if i in self.repeated]
        rng.shuffle(shown)
        return [shown[i : i + 3] for i in range(0, len(shown), 3)] or [[]]

    def complete(self, rows: list[Row]) -> bool:
        return not any(i < len(rows) for i in self.skipped)


def _respelled(spelling: str, rng: random.Random) -> str:
    """Another spelling of the same address. Where a change of case makes another key (`Straße` upper-
    cased is `STRASSE`), the stored spelling: Ownpage's answer is a spelling that addresses its row
    (ownpage-api.md: write to a row with the address as Ownpage returned it), and on an Ownpage that
    matches canonically `STRASSE` addresses another row than `Straße`."""
    case = rng.choice((str, str.lower, str.upper, str.swapcase))
    other = unicodedata.normalize(rng.choice(("NFC", "NFD")), case(spelling))
    return other if canonical_key(other) == canonical_key(spelling) else spelling


@st.composite
def unfriendly_reads(draw: st.DrawFn, matching: str) -> Unfriendly:
    indexes = st.frozensets(st.integers(min_value=0, max_value=9), max_size=6)
    return Unfriendly(
        draw(indexes), draw(indexes), draw(st.integers(0, 2**16)), matching == "canonical" and draw(st.booleans())
    )


matchings = st.sampled_from(("canonical", "exact"))


# --- the oracle: the policy restated from docs/safety.md ------------------------------------------------


def suppressing(cause: str | None, policy: PlanPolicy) -> bool:
    return cause not in OWNPAGE_CAUSES or cause in policy.suppressing_causes


def consent_times(rows: Sequence[RawSubscriber]) -> dict[str, datetime]:
    """The newest readable consent time of each key the source lists."""
    newest: dict[str, datetime] = {}
    for row in rows:
        if not isinstance(row.email, str) or not canonical_key(row.email):
            continue
        try:
            moment = parse_timestamp(row.consented_at)
        except ValueError:
            continue
        key = canonical_key(row.email)
        if moment is not None and (key not in newest or moment > newest[key]):
            newest[key] = moment
    return newest


def listed_keys(rows: Sequence[RawSubscriber]) -> set[str]:
    return {canonical_key(row.email) for row in rows if isinstance(row.email, str) and canonical_key(row.email)}


def renewed(row: Row, consent: dict[str, datetime]) -> bool:
    moment = consent.get(canonical_key(row.email))
    return moment is not None and row.unsubscribed_at is not None and moment > row.unsubscribed_at


def fold(key: str) -> str:
    """Full Unicode case folding, composed again: the matching of the loosest Ownpage."""
    return unicodedata.normalize("NFC", key.casefold())


def first_of_each_fold(keys: set[str]) -> set[str]:
    """Of keys that fold together, the first in order: the one a plan subscribes."""
    firsts: dict[str, str] = {}
    for key in sorted(keys):
        firsts.setdefault(fold(key), key)
    return set(firsts.values())


def folding_pairs(rows: Sequence[RawSubscriber], truth: list[Row]) -> set[str]:
    """The keys of the pairs the planner leaves alone: a key Ownpage holds subscribed that the source
    does not list, and a new plausible source key, that only full Unicode case folding makes one
    (`strasse@` held, `straße@` new); and a new key that folding makes one with any other key Ownpage
    holds, or with a new key before it in order (only the subscribe is held). Restated here, not
    imported."""
    on_ownpage = {canonical_key(row.email) for row in truth}
    listed = listed_keys(rows)
    gone = {canonical_key(row.email) for row in truth if row.subscribed} - listed
    new = {key for key in listed - on_ownpage if is_plausible_email(key)}
    held_new = {key for key in new if fold(key) in {fold(g) for g in gone}}
    pairs = held_new | {key for key in gone if fold(key) in {fold(n) for n in held_new}}
    folded_on_ownpage = {fold(key) for key in on_ownpage}
    taken: set[str] = set()
    for key in sorted(new - held_new):
        if fold(key) in folded_on_ownpage or fold(key) in taken:
            pairs.add(key)
        else:
            taken.add(fold(key))
    return pairs


def shared_fold_keys(rows: Sequence[RawSubscriber], truth: list[Row]) -> set[str]:
    """Keys, of Ownpage's rows and the source's, that folding makes one with another: the planner
    holds writes a folding Ownpage could land on the other row, unless the read missed that row (a
    fooled proof), so which state they end in is not restated here (the safety checks still hold)."""
    groups: dict[str, set[str]] = {}
    for key in {canonical_key(row.email) for row in truth} | listed_keys(rows):
        groups.setdefault(fold(key), set()).add(key)
    return {key for keys in groups.values() if len(keys) > 1 for key in keys}


def assert_in_step(ownpage: FakeOwnpage, rows: Sequence[RawSubscriber], truth: list[Row], policy: PlanPolicy) -> None:
    shared = shared_fold_keys(rows, truth)
    assert ownpage.subscribed_keys() - shared == eligible(rows, truth, policy) - shared


def eligible(rows: Sequence[RawSubscriber], truth: list[Row], policy: PlanPolicy) -> set[str]:
    """Keys Ownpage must hold subscribed once converged: listed by the source (Ownpage holds them, or
    they are plausible addresses), minus those suppressed without a newer opt-in; a folding pair
    stays as it was (the Ownpage key subscribed, the new one not written)."""
    pairs = folding_pairs(rows, truth)
    held = {canonical_key(row.email): row for row in truth}
    consent = consent_times(rows)
    result = set()
    for key in listed_keys(rows):
        row = held.get(key)
        if row is None:
            if is_plausible_email(key):
                result.add(key)
        elif row.subscribed or not suppressing(row.unsubscribed_cause, policy) or renewed(row, consent):
            result.add(key)
    return (result - pairs) | (pairs & set(held))


def run(ownpage: FakeOwnpage, rows: Sequence[RawSubscriber], policy: PlanPolicy, read_complete: bool = True) -> Plan:
    pages = [row for page in ownpage.read_pages(1, expected_rows=len(ownpage.rows)) for row in page]
    plan = plan_changes(rows, pages, policy, read_complete=read_complete)
    ownpage.apply([operation.to_payload() for operation in plan.operations()])
    return plan


# --- properties: a friendly read -------------------------------------------------------------------------


@PROPERTY
@given(rows=raw_rows(), truth=ownpage_rows(), policy=policies, matching=matchings)
def test_applying_the_plan_converges_on_the_eligible_source(
    rows: list[RawSubscriber], truth: list[Row], policy: PlanPolicy, matching: str
) -> None:
    # Given a raw source and Ownpage's list, read completely
    ownpage = FakeOwnpage(truth, matching)

    # When the plan is applied to Ownpage
    plan = run(ownpage, rows, policy)

    # Then Ownpage's subscribed keys are exactly the eligible source
    assert_in_step(ownpage, rows, truth, policy)
    # And planning again on the result has nothing left to write
    again = run(ownpage, rows, policy)
    assert again.is_empty, again.counts()
    assert {s.email for s in again.suppressed} == {s.email for s in plan.suppressed}
    # And nothing was deleted and no row was created beside another spelling of its key
    assert {canonical_key(row.email) for row in truth} <= set(ownpage.by_key())
    assert ownpage.twins == []
    assert all(ownpage.by_key()[canonical_key(row.email)][0].send_count == row.send_count for row in truth)


@PROPERTY
@given(rows=raw_rows(), truth=ownpage_rows(), policy=policies)
def test_writes_respect_consent_spelling_and_the_source(
    rows: list[RawSubscriber], truth: list[Row], policy: PlanPolicy
) -> None:
    # Given a raw source and Ownpage's list
    held = {row.email: row for row in truth}
    listed = listed_keys(rows)
    consent = consent_times(rows)

    # When the planner decides
    plan = plan_changes(rows, [row.read() for row in truth], policy)

    # Then `subscribed: true` only goes to a row the read showed unsubscribed, in Ownpage's spelling,
    # and for a suppressing cause only with a newer opt-in (exactly those counted as renewals)
    by_consent = 0
    for operation in plan.to_resubscribe:
        row = held[operation.email]
        assert not row.subscribed and operation.key in listed
        if suppressing(row.unsubscribed_cause, policy):
            assert renewed(row, consent)
            by_consent += 1
    assert plan.resubscribed_by_consent == by_consent
    # And a subscribe by omission only goes to a key the read did not show
    shown = {canonical_key(row.email) for row in truth}
    assert all(op.key not in shown and "subscribed" not in op.to_payload() for op in plan.to_subscribe)
    # And nothing the source lists is unsubscribed; every unsubscribe hits a subscribed row, spelled as stored
    for operation in plan.to_unsubscribe:
        assert operation.key not in listed
        assert held[operation.email].subscribed
        assert operation.to_payload() == {
            "email": operation.email,
            "subscribed": False,
            "unsubscribed_cause": policy.unsubscribe_cause,
        }
    # And updates only touch rows Ownpage holds subscribed, never carrying a status
    for operation in plan.to_update:
        assert held[operation.email].subscribed
        assert "subscribed" not in operation.to_payload() and "unsubscribed_cause" not in operation.to_payload()
    # And each key is written at most once
    keys = [op.key for op in plan.operations()]
    assert len(keys) == len(set(keys))


@PROPERTY
@given(rows=raw_rows(), truth=ownpage_rows(), policy=policies, matching=matchings)
def test_data_and_guid_follow_the_source_and_unmapped_attributes_are_untouched(
    rows: list[RawSubscriber], truth: list[Row], policy: PlanPolicy, matching: str
) -> None:
    # Given a raw source and Ownpage's list
    ownpage = FakeOwnpage(truth, matching)
    before = {canonical_key(row.email): row for row in truth}

    # When the plan is applied
    run(ownpage, rows, policy)

    # Then every subscribed key carries the values of one of its source rows (a row already in step
    # wins among several), for every field that row sets
    pairs = folding_pairs(rows, truth)
    for key, (after, *_) in ownpage.by_key().items():
        if not after.subscribed or key in pairs:
            continue
        candidates = [row for row in rows if isinstance(row.email, str) and canonical_key(row.email) == key]
        assert any(_carries(after, row) for row in candidates), key
    # And attributes the source does not set (the unmapped one above all) keep Ownpage's value;
    # rows not subscribed afterwards are not written at all
    for key, old in before.items():
        after = ownpage.by_key()[key][0]
        for name, value in old.data.items():
            if name == UNMAPPED:
                assert after.data[name] == value
        if not after.subscribed:
            assert after.data == old.data and after.guid == old.guid


def _carries(after: Row, row: RawSubscriber) -> bool:
    from ownpage_sync.values import normalise_data

    guid = normalise_data_value(row.guid)
    data = normalise_data({name: value for name, value in row.data.items() if name in MAPPED})
    stored = normalise_data(after.data)
    return (guid is None or normalise_data_value(after.guid) == guid) and all(
        stored.get(name) == value for name, value in data.items()
    )


@PROPERTY
@given(rows=raw_rows(), truth=ownpage_rows(), policy=policies, seed=st.randoms(use_true_random=False))
def test_plans_do_not_depend_on_read_order_or_repeated_rows(
    rows: list[RawSubscriber], truth: list[Row], policy: PlanPolicy, seed: random.Random
) -> None:
    # Given the same source read in another order (parallel scans, SQL without ORDER BY)
    shuffled = list(rows)
    seed.shuffle(shuffled)
    # And Ownpage's pages read in another order, with rows repeated (offset paging over a changing list)
    read = [row.read() for row in truth]
    repeated = list(reversed(read)) + read

    # When both are planned
    plan, other = plan_changes(rows, read, policy), plan_changes(shuffled, repeated, policy)

    # Then the plan is the same
    assert list(plan.operations()) == list(other.operations())
    assert plan.suppressed == other.suppressed
    assert plan.source.duplicates + plan.source.collisions == other.source.duplicates + other.source.collisions


@PROPERTY
@given(rows=raw_rows())
def test_every_source_row_is_accounted_for_and_nothing_raw_is_reported(rows: list[RawSubscriber]) -> None:
    # Given raw rows with every kind of spelling, implausible addresses and unreadable consent times
    # When they are planned against an empty list (this must never raise: one bad row must not stop a run)
    plan = plan_changes(rows, [])

    # Then the subscribes are exactly the plausible keys, each once, but for keys folding into an
    # earlier one (held: a folding Ownpage would take both for one row)
    keys = [canonical_key(row.email) if isinstance(row.email, str) else "" for row in rows]
    plausible = {key for key in keys if key and is_plausible_email(key)}
    firsts = first_of_each_fold(plausible)
    assert {op.email for op in plan.to_subscribe} == firsts and plan.held == len(plausible) - len(firsts)
    # And every row is accounted for exactly once
    source = plan.source
    assert source.rows_read == len(rows)
    assert source.invalid + source.duplicates + source.collisions + source.subscribers == len(rows)
    # And problem samples never carry a raw address
    for problem in source.samples:
        assert "***" in problem.masked_email or problem.masked_email == "<empty>"


@PROPERTY
@given(
    value=st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.decimals(), st.text(max_size=30), st.datetimes()
    )
)
def test_parse_timestamp_reads_a_time_or_raises_value_error(value: object) -> None:
    # Given any value a source column or an Ownpage row could hold
    # When it is parsed as a time
    try:
        moment = parse_timestamp(value)
    except ValueError:
        return  # Then an unreadable value is refused with the one error callers handle...
    # ...or the result is an aware UTC datetime (or None for "no time")
    assert moment is None or moment.utcoffset() == timedelta(0)


# --- properties: Ownpage's unknowns played the unfriendly way -------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=raw_rows(), truth=ownpage_rows(), policy=policies, matching=matchings, data=st.data())
def test_an_unfriendly_read_never_costs_a_consent_nor_a_listed_subscriber(
    rows: list[RawSubscriber], truth: list[Row], policy: PlanPolicy, matching: str, data: st.DataObject
) -> None:
    # Given a read that skipped rows, repeated others, changed their order and maybe their spelling,
    # on an Ownpage matching addresses canonically or exactly as stored
    read = data.draw(unfriendly_reads(matching))
    ownpage = FakeOwnpage(truth, matching, read=read)
    consent = consent_times(rows)
    listed = listed_keys(rows)

    # When the run plans from that read and writes. Where Ownpage matches exactly, the read proof
    # (counts) tells the planner whether rows were missed; where it matches canonically, the proof
    # may even be fooled (rows added while the list was read hide a skipped one): subscribe by
    # omission alone must then keep every consent
    fooled = matching == "canonical" and data.draw(st.booleans())
    run(ownpage, rows, policy, read_complete=True if fooled else read.complete(truth))

    # Then no suppressed row was re-subscribed without a newer opt-in, whatever the read missed
    by_spelling = {row.email: row for row in truth}
    for spelling, cause in ownpage.resubscribed:
        if suppressing(cause, policy):
            assert renewed(by_spelling[spelling], consent), (spelling, cause)
    for row in truth:
        after = ownpage.rows.get(canonical_key(row.email) if matching == "canonical" else row.email)
        assert after is not None
        if not row.subscribed and suppressing(row.unsubscribed_cause, policy) and after.subscribed:
            assert renewed(row, consent)
        # And no row of a key the source lists lost its subscription
        if row.subscribed and canonical_key(row.email) in listed:
            assert after.subscribed
    # And no row was created beside another spelling of its key
    assert ownpage.twins == []

    # And a calm second run, reading the true list completely, converges
    ownpage.read = FakeOwnpage(matching=matching).read
    run(ownpage, rows, policy)
    assert_in_step(ownpage, rows, truth, policy)
    assert run(ownpage, rows, policy).is_empty
    assert ownpage.twins == []


# --- guards -----------------------------------------------------------------------------------------------

RATIOS = ("0", "0.05", "0.1", "0.2", "0.25", "0.3", "0.35", "0.7", "1")


@dataclass(frozen=True)
class GuardCase:
    plan: Plan
    previous: int | None
    unsubscribe_ratio: str  # as an operator writes it in MAX_UNSUBSCRIBE_RATIO
    drop_ratio: str
    max_count: int | None
    resubscribe_ratio: str
    growth_ratio: str

    def limits(self) -> GuardLimits:
        return GuardLimits(
            max_unsubscribe_ratio=float(self.unsubscribe_ratio),
            max_unsubscribe_count=self.max_count,
            max_source_drop_ratio=float(self.drop_ratio),
            max_resubscribe_ratio=float(self.resubscribe_ratio),
            max_source_growth_ratio=float(self.growth_ratio),
            max_resubscribe_removed_ratio=1.0,  # covered by tests/unit/test_guards.py
        )


def near(draw: st.DrawFn, total: int, share: Fraction, high: int) -> int:
    """A count at, just around, or anywhere near `share` of `total`: boundaries are where bugs hide."""
    at = share * total
    candidates = [int(at), int(at) + 1, int(at) - 1] if at.denominator == 1 else [int(at), int(at) + 1]
    picked = draw(st.one_of(st.sampled_from(candidates), st.integers(min_value=0, max_value=high)))
    return max(0, min(high, picked))


@st.composite
def guard_cases(draw: st.DrawFn) -> GuardCase:
    unsubscribe_ratio, drop_ratio = draw(st.sampled_from(RATIOS)), draw(st.sampled_from(RATIOS))
    resubscribe_ratio, growth_ratio = draw(st.sampled_from(RATIOS)), draw(st.sampled_from(RATIOS))
    # Multiples of 20 put every ratio above exactly on a whole count.
    counts = st.one_of(
        st.integers(min_value=0, max_value=300), st.integers(min_value=1, max_value=15).map(lambda k: 20 * k)
    )
    subscribed_count = draw(counts)
    unsubscribing = near(draw, subscribed_count, Fraction(unsubscribe_ratio), subscribed_count)
    resubscribing = near(draw, subscribed_count, Fraction(resubscribe_ratio), 300)
    previous = draw(st.one_of(st.none(), counts))
    shrink = near(draw, previous or 0, 1 - Fraction(drop_ratio), 300)
    grow = near(draw, previous or 0, 1 + Fraction(growth_ratio), 600)
    source_count = draw(st.sampled_from((shrink, grow)))
    plan = Plan(
        to_unsubscribe=tuple(
            Operation(Action.UNSUBSCRIBE, f"u{i}@example.com", unsubscribed_cause="PUBLISHER")
            for i in range(unsubscribing)
        ),
        to_resubscribe=tuple(Operation(Action.RESUBSCRIBE, f"r{i}@example.com") for i in range(resubscribing)),
        source=SourceStats(subscribers=source_count),
        ownpage=OwnpageStats(rows=subscribed_count + resubscribing, subscribed=subscribed_count),
    )
    max_count = draw(
        st.one_of(
            st.none(), st.sampled_from((unsubscribing, unsubscribing - 1)).filter(lambda n: n >= 0), st.integers(0, 300)
        )
    )
    return GuardCase(plan, previous, unsubscribe_ratio, drop_ratio, max_count, resubscribe_ratio, growth_ratio)


@PROPERTY
@given(case=guard_cases())
def test_guards_trip_exactly_when_a_limit_is_exceeded(case: GuardCase) -> None:
    # Given a plan, limits written as an operator writes them, and maybe a last successful run
    plan, previous = case.plan, case.previous
    unsubscribing, resubscribing = len(plan.to_unsubscribe), len(plan.to_resubscribe)

    # When the guards are checked
    tripped = {trip.guard for trip in check_guards(plan, case.limits(), previous)}

    # Then each trips exactly when its limit is exceeded, in exact arithmetic ("at the limit" passes)
    expected = set()
    subscribed_count = plan.ownpage_subscribed
    if plan.source_count == 0 and subscribed_count > 0:
        expected.add("empty_source")
    if subscribed_count and Fraction(unsubscribing, subscribed_count) > Fraction(case.unsubscribe_ratio):
        expected.add("unsubscribe_ratio")
    if case.max_count is not None and unsubscribing > case.max_count:
        expected.add("unsubscribe_count")
    if subscribed_count and Fraction(resubscribing, subscribed_count) > Fraction(case.resubscribe_ratio):
        expected.add("resubscribe_ratio")
    if previous and Fraction(previous - plan.source_count, previous) > Fraction(case.drop_ratio):
        expected.add("source_drop")
    if previous and Fraction(plan.source_count - previous, previous) > Fraction(case.growth_ratio):
        expected.add("source_growth")
    assert tripped == expected


@PROPERTY
@given(
    case=guard_cases(),
    allowance=st.one_of(st.none(), st.integers(min_value=0, max_value=300)),
    resubscribe_allowance=st.one_of(st.none(), st.integers(min_value=0, max_value=300)),
)
def test_only_an_override_passes_a_tripped_guard(
    case: GuardCase, allowance: int | None, resubscribe_allowance: int | None
) -> None:
    # Given a plan checked against its limits
    plan, previous = case.plan, case.previous
    trips = check_guards(plan, case.limits(), previous)

    # Then without an override every trip stands
    assert unresolved(trips, plan, GuardOverride()) == trips
    # And force passes all of them
    assert unresolved(trips, plan, GuardOverride(force=True)) == []
    # And an allowance passes only its own guards, and only when the plan stays within it
    override = GuardOverride(max_unsubscribe=allowance, max_resubscribe=resubscribe_allowance)
    left = {trip.guard for trip in unresolved(trips, plan, override)}
    unsubscribes_within = allowance is not None and len(plan.to_unsubscribe) <= allowance
    resubscribes_within = resubscribe_allowance is not None and len(plan.to_resubscribe) <= resubscribe_allowance
    kept = {
        trip.guard
        for trip in trips
        if not (unsubscribes_within and trip.guard in {"unsubscribe_ratio", "unsubscribe_count"})
        and not (
            resubscribes_within and trip.guard in {"resubscribe_ratio", "resubscribe_count", "resubscribe_removed"}
        )
    }
    assert left == kept


# --- the whole run, in memory: a tripped guard writes nothing ----------------------------------------------


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=raw_rows(),
    truth=ownpage_rows(),
    previous=st.one_of(st.none(), st.integers(min_value=0, max_value=20)),
    ratio=st.sampled_from(("0", "0.05", "0.5", "1")),
    override=st.sampled_from(
        (GuardOverride(), GuardOverride(force=True), GuardOverride(max_unsubscribe=1), GuardOverride(max_resubscribe=1))
    ),
    dry_run=st.booleans(),
)
@example(  # two addresses under Unicode case folding only: both writes held
    rows=[RawSubscriber("straße@example.com", "row 0")],
    truth=[Row(email="STRASSE@EXAMPLE.COM", subscribed=True, guid="g-1")],
    previous=None,
    ratio="1",
    override=GuardOverride(),
    dry_run=False,
)
def test_a_run_writes_nothing_while_a_guard_is_unresolved(
    rows: list[RawSubscriber],
    truth: list[Row],
    previous: int | None,
    ratio: str,
    override: GuardOverride,
    dry_run: bool,
) -> None:
    # Given the real run orchestration over in-memory ports
    ownpage = FakeOwnpage(truth)
    config = Settings(
        ownpage=OwnpageSettings(api_url="http://127.0.0.1:9", list_id=1, secret_id="unused"),
        source=SourceSettings(kind="dynamodb", table="unused"),
        limits=GuardLimits(max_unsubscribe_ratio=float(ratio), max_resubscribe_ratio=float(ratio)),
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
        assert report.outcome == (Outcome.DRY_RUN if dry_run else Outcome.GUARD_TRIPPED)
    elif report.plan.held:
        # And writes held back (two addresses a case-folding Ownpage may take for one, such as
        # straße and STRASSE) leave the run not converged: neither is written
        assert report.outcome == Outcome.NOT_CONVERGED
    else:
        # And otherwise it converges on the eligible source
        assert report.outcome == Outcome.CONVERGED
        assert_in_step(ownpage, rows, truth, config.policy)


def test_the_subscribing_actions_are_the_two_kinds_of_subscribe() -> None:
    # Given the actions a plan can hold
    # Then exactly two of them subscribe, and only RESUBSCRIBE carries `subscribed: true`
    assert {Action.SUBSCRIBE, Action.RESUBSCRIBE} == SUBSCRIBING
    payloads = {action: Operation(action, "a@b.co").to_payload() for action in Action}
    assert [action for action, payload in payloads.items() if payload.get("subscribed") is True] == [Action.RESUBSCRIBE]
