"""Planning a few addresses at a time: the retry path's and the fast lane's re-check.

Both sides are read *now* for just these addresses (a source look-up; an exact search on Ownpage,
checked on our side) and planned by the same planner as a full run, so the same rules hold:
suppressions, consent, subscribe by omission, Ownpage's spelling. Two rules of its own: an address
the source look-up cannot be sure about is never unsubscribed (the next full run decides), and
nothing is planned for an address the plan was not asked about.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ownpage_sync.emails import canonical_key, folded_key
from ownpage_sync.models import Action, Operation, OwnpageSubscriber
from ownpage_sync.planner import Plan, Planner, PlanPolicy, Suppression, fold_twins, may_fold_into_another
from ownpage_sync.ports import OwnpageLists
from ownpage_sync.sources.base import RawSubscriber, SubscriberSource


@dataclass
class Recheck:
    """The current plan for some keys, and what is known about each."""

    plan: Plan
    listed: frozenset[str]  # keys the source lists now
    inconclusive: frozenset[str]  # keys the source look-up cannot be sure about
    found: frozenset[str]  # keys Ownpage has a row for
    ownpage_undecided: frozenset[str] = frozenset()  # keys whose Ownpage search could not be settled
    # Keys no search can carry (a lone surrogate, a NUL): neither side asked, left to the next full run.
    unsearchable: frozenset[str] = frozenset()
    # Keys one of whose case-folding twins (planner.fold_twins) the source lists or Ownpage holds (or
    # its search showed), or whose twins cannot be listed (planner.may_fold_into_another): to an
    # Ownpage matching loosely (unknown) they may be one reader. Nothing is written for them: the
    # next full run, which sees both, holds or makes the pair's writes (docs/safety.md §1).
    folded: frozenset[str] = frozenset()
    operations: dict[str, list[Operation]] = field(default_factory=dict)  # key -> planned writes
    suppressed: dict[str, Suppression] = field(default_factory=dict)


def recheck(
    keys: Mapping[str, Collection[str]],
    source: SubscriberSource,
    ownpage: OwnpageLists,
    list_id: int,
    policy: PlanPolicy,
) -> Recheck:
    """Plan these keys (key -> other spellings worth searching for) against both sides as they are.
    A key one of whose spellings no search can carry is set aside (`unsearchable`): one such address
    must not fail the others' look-up."""
    unsearchable = unsearchable_keys(keys)
    spellings = {
        key: sorted({key, *(s for s in keys[key] if s and s.strip())})
        for key in keys
        if key and key not in unsearchable
    }
    wanted = set(spellings)
    # A key whose twins no rule can list is left to the full run whatever is found: no twin to look for.
    unlistable = {key for key in wanted if may_fold_into_another(key)}
    twins = {key: fold_twins(key) for key in wanted - unlistable}
    extra = set().union(*twins.values()) - wanted
    shape = source.shape()
    also = {s for values in spellings.values() for s in values} - wanted
    lookup = source.lookup(wanted | extra, also=also)
    keyed = [(canonical_key(row.email), row) for row in lookup.rows if isinstance(row.email, str)]
    rows: list[RawSubscriber] = [row for key, row in keyed if key in wanted]
    searched = ownpage.find_many(list_id, {**spellings, **{twin: [twin] for twin in sorted(extra)}}, shape.data)
    # Keys with a row of their own: a look-up answered with look-alikes has not found the key.
    shown = {key for key, values in searched.rows.items() if any(canonical_key(r.email) == key for r in values)}
    present = {key for key, _ in keyed} | shown
    shown_folded = {key for key, values in searched.rows.items() if key in wanted and _shows_folded_twin(key, values)}
    folded = frozenset(unlistable | shown_folded | {key for key, found_twins in twins.items() if found_twins & present})
    found = {key: values for key, values in searched.rows.items() if key in wanted}
    ownpage_rows: list[OwnpageSubscriber] = [row for key in sorted(found) for row in found[key]]
    planner = Planner(policy, shape.data, compare_guid=shape.guid, now=datetime.now(UTC))
    planner.add_ownpage(ownpage_rows)
    planner.add_source(rows)
    plan = planner.finish(read_complete=True)
    inconclusive = frozenset(lookup.inconclusive & wanted)
    result = Recheck(
        plan=plan,
        listed=frozenset(canonical_key(row.email) for row in rows),
        inconclusive=inconclusive,
        found=frozenset(shown & wanted),
        ownpage_undecided=frozenset(searched.undecided & wanted),
        unsearchable=unsearchable,
        folded=folded,
    )
    for operation in plan.operations():
        key = operation.key
        if key not in wanted or key in folded:
            continue
        if operation.action is Action.UNSUBSCRIBE and key in inconclusive:
            continue  # "not in the source" is not proven: the next full run decides
        result.operations.setdefault(key, []).append(operation)
    for suppression in plan.suppressed:
        result.suppressed[canonical_key(suppression.email)] = suppression
    return result


def _shows_folded_twin(key: str, rows: Collection[OwnpageSubscriber]) -> bool:
    """Whether a search for `key` answered with a row of another key that folds into it (`ſam@` for
    `sam@`): Ownpage matches loosely, and may write to that row. No twin rule has to have guessed it."""
    fold = folded_key(key)
    return any(other != key and folded_key(other) == fold for other in (canonical_key(row.email) for row in rows))


def unsearchable_keys(keys: Mapping[str, Collection[str]]) -> frozenset[str]:
    """The keys one of whose spellings (key -> other spellings) no search can carry."""
    return frozenset(key for key, others in keys.items() if key and not all(map(searchable, {key, *others})))


def searchable(spelling: str) -> bool:
    """Whether a search can carry this text: UTF-8 holds it (no lone surrogate, which neither a URL
    nor a database driver can encode) and it has no NUL (PostgreSQL's text cannot hold one)."""
    try:
        spelling.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in spelling
