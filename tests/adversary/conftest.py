"""Fixtures of the adversarial tests: the fault matrix's full stack."""

from tests.faults.conftest import build  # noqa: F401
