"""Fixtures of the fault matrix: a fresh stack per test (queues, tables, emulator) on the shared moto server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.harness import FaultStack, Population, create_stack, environment, population


@pytest.fixture
def build(aws: str, emulator: Any, unique: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., FaultStack]:
    """`build(people=None)`: the stack seeded with a drifted population, both functions' environment set."""

    def make(people: Population | None = None) -> FaultStack:
        people = people or population()
        names = create_stack(people, unique)
        for name, value in environment(names, emulator.url).items():
            monkeypatch.setenv(name, value)
        emulator.state.seed(1, people.ownpage)
        return FaultStack(emulator, monkeypatch, people, names)

    return make


@pytest.fixture
def stack(build: Callable[..., FaultStack]) -> FaultStack:
    return build()
