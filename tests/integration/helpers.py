"""Shared checks for the end-to-end tests: what "Ownpage equals the source" means, and log capture."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ownpage_sync.emails import canonical_key
from ownpage_sync.observability import logger as service_logger
from ownpage_sync_tools.scenario import Scenario


def assert_converged(rows: list[dict[str, Any]], scenario: Scenario) -> None:
    """Ownpage's subscribed set is the eligible source set, with the source's guid and data; the
    suppressed stay unsubscribed with their cause; no row (and its history) disappeared."""
    by_email = {canonical_key(row["email"]): row for row in rows}
    subscribed = {email for email, row in by_email.items() if row["subscribed"]}
    eligible = scenario.eligible_emails()
    assert subscribed == eligible, (
        f"{len(subscribed - eligible)} subscribed but not eligible, {len(eligible - subscribed)} eligible but not subscribed"
    )
    for item in scenario.source_items:
        email = canonical_key(item["email"])
        if email in eligible:
            row = by_email[email]
            assert row.get("guid") == item["user_id"]
            assert row.get("data_firstname") == item["first_name"]
            assert row.get("data_city") == item["city"]
    for seeded in scenario.ownpage_rows:
        row = by_email[canonical_key(seeded["email"])]  # never deleted
        assert row.get("send_count") == seeded["send_count"], "history must survive the sync"
        if seeded.get("_suppressed"):
            assert row["subscribed"] is False
            assert row["unsubscribed_cause"] == seeded["unsubscribed_cause"]


def raw_addresses(scenario: Scenario) -> set[str]:
    """Every address of the scenario, as stored and normalised, for leak checks."""
    found = set()
    for item in scenario.source_items:
        found.update({item["email"].strip(), canonical_key(item["email"])})
    for row in scenario.ownpage_rows:
        found.add(row["email"])
    return {address for address in found if "@" in address and len(address) > 3}


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextmanager
def captured_logs() -> Iterator[list[str]]:
    """Every log line the handler and the library emit, formatted exactly as Lambda would print it."""
    collector = _Collector()
    collector.setFormatter(service_logger.registered_formatter)
    targets = [logging.getLogger(service_logger.name), logging.getLogger("ownpage_sync")]
    previous = [target.level for target in targets]
    for target in targets:
        target.addHandler(collector)
        target.setLevel(logging.DEBUG)
    try:
        yield collector.lines
    finally:
        for target, level in zip(targets, previous, strict=True):
            target.removeHandler(collector)
            target.setLevel(level)


def assert_no_leak(text: str, addresses: set[str]) -> None:
    leaked = sorted(address for address in addresses if address in text)
    assert not leaked, f"{len(leaked)} raw addresses leaked, e.g. one at {leaked[0].rpartition('@')[2]}"
