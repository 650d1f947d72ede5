"""Template fixtures: the stack rendered for a DynamoDB and a SQL source (transformed once per module)."""

from __future__ import annotations

import pytest

from tests.template.stack import DYNAMODB_PARAMETERS, SQL_PARAMETERS, Rendered, render


@pytest.fixture(scope="module")
def dynamodb_stack() -> Rendered:
    return render(DYNAMODB_PARAMETERS)


@pytest.fixture(scope="module")
def sql_stack() -> Rendered:
    return render(SQL_PARAMETERS)


@pytest.fixture(scope="module", params=["dynamodb", "sql"])
def any_stack(request: pytest.FixtureRequest, dynamodb_stack: Rendered, sql_stack: Rendered) -> Rendered:
    """Both parameter sets: invariants that must hold whatever the source."""
    return dynamodb_stack if request.param == "dynamodb" else sql_stack
