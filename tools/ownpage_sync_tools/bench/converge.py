"""Did the run converge? Ownpage's whole list, read back over the API, against the scenario's
digests (data.Expectation); and the emulator's evidence (no delete, no forbidden re-subscription)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import requests
from ownpage_sync.emails import canonical_key
from ownpage_sync.ownpage.transport import TOKEN_HEADER

from ownpage_sync_tools.bench.data import SUPPRESSING, Digest, Expectation

PAGE = 10_000
HISTORY_SEND_COUNT = 12  # every seeded row's send_count (scenario._ownpage_row)


class _Row(msgspec.Struct):
    email: str
    subscribed: Any = None
    guid: Any = None
    data_firstname: Any = None
    data_city: Any = None
    unsubscribed_cause: Any = None
    send_count: Any = None


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def _rows(api_url: str, client: str, api_key: str) -> list[_Row]:
    decoder = msgspec.json.Decoder(list[_Row])
    with requests.Session() as session:
        token = session.post(f"{api_url}/token", json={"username": client, "password": api_key}, timeout=30)
        token.raise_for_status()
        headers = {TOKEN_HEADER: token.json()["token"]}
        rows: list[_Row] = []
        offset = 0
        while True:
            params: dict[str, str | int] = {"status": "all", "offset": offset, "count": PAGE}
            answer = session.get(
                f"{api_url}/newsletters/lists/1/subscribers",
                params=params,
                headers=headers,
                timeout=60,
            )
            answer.raise_for_status()
            page = decoder.decode(answer.content)
            rows.extend(page)
            if len(page) < PAGE:
                return rows
            offset += PAGE


def ownpage_matches(api_url: str, client: str, api_key: str, expected: Expectation) -> list[Check]:
    """Subscribed = the eligible source set with its guid and data; the suppressed stay unsubscribed
    with their cause; every seeded row (and its history) is still there."""
    rows = _rows(api_url, client, api_key)
    subscribed, suppressed = Digest(), Digest()
    history = 0
    for row in rows:
        key = canonical_key(row.email)
        if row.subscribed is True:
            subscribed.add(key, row.guid, row.data_firstname, row.data_city)
        elif row.unsubscribed_cause in SUPPRESSING:
            suppressed.add(key, row.unsubscribed_cause)
        history += row.send_count == HISTORY_SEND_COUNT
    return [
        Check(
            "subscribed = eligible source rows (guid, data)",
            subscribed.to_dict() == expected.subscribed,
            f"{subscribed.count:,} subscribed, {expected.subscribed['count']:,} eligible",
        ),
        Check(
            "suppressed kept unsubscribed with their cause",
            suppressed.to_dict() == expected.suppressed,
            f"{suppressed.count:,} of {expected.suppressed['count']:,}",
        ),
        Check(
            "no row or history lost",
            history == expected.seeded_rows and len(rows) == expected.total_rows,
            f"{len(rows):,} rows ({expected.total_rows:,} expected), {history:,} with their history",
        ),
    ]


def evidence_clean(evidence: dict[str, Any], expected: Expectation) -> Check:
    """No delete endpoint called, no twin row created; re-subscribed: exactly the rows the publisher
    had removed and the readers with a newer consent."""
    causes = [cause for _email, cause in evidence["resubscriptions"]]
    renewed = expected.plan["resubscribed_by_consent"]
    wanted = {"PUBLISHER": expected.plan["to_resubscribe"] - renewed, "READER": renewed}
    got = {cause: causes.count(cause) for cause in wanted}
    forbidden = len(causes) - sum(got.values())
    ok = not evidence["violations"] and not evidence["twins"] and not forbidden and got == wanted
    return Check(
        "no delete, no twin, only allowed re-subscriptions",
        ok,
        f"{len(evidence['violations'])} deletes, {len(evidence['twins'])} twins, re-subscribed {got}"
        f" (expected {wanted}), {forbidden} forbidden",
    )


def plan_as_expected(counts: dict[str, int], expected: Expectation) -> Check:
    keys = ("to_subscribe", "to_resubscribe", "to_unsubscribe", "to_update", "suppressed", "resubscribed_by_consent")
    wrong = {key: (counts.get(key), expected.plan[key]) for key in keys if counts.get(key) != expected.plan[key]}
    return Check(
        "first plan = the scenario's churn", not wrong, ", ".join(f"{k} {a} ≠ {b}" for k, (a, b) in wrong.items())
    )


def nothing_left(counts: dict[str, int]) -> Check:
    left = counts.get("to_subscribe", 0) + counts.get("to_unsubscribe", 0) + counts.get("to_update", 0)
    return Check("a second (dry) run plans nothing", left == 0, f"{left} writes planned")
