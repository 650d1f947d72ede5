"""Template fixtures: the stack rendered for a DynamoDB and a SQL source (transformed once per module)."""

from __future__ import annotations

import pytest

from tests.template.stack import DYNAMODB_PARAMETERS, SQL_PARAMETERS, STREAM_PARAMETERS, Rendered, render


@pytest.fixture(scope="module")
def dynamodb_stack() -> Rendered:
    return render(DYNAMODB_PARAMETERS)


@pytest.fixture(scope="module")
def sql_stack() -> Rendered:
    return render(SQL_PARAMETERS)


@pytest.fixture(scope="module")
def stream_stack() -> Rendered:
    """DynamoDB with the fast lane consuming the source table's stream."""
    return render(STREAM_PARAMETERS)


@pytest.fixture(scope="module", params=["dynamodb", "sql", "stream"])
def any_stack(
    request: pytest.FixtureRequest, dynamodb_stack: Rendered, sql_stack: Rendered, stream_stack: Rendered
) -> Rendered:
    """Every parameter set: invariants that must hold whatever the source, stream or not."""
    return {"dynamodb": dynamodb_stack, "sql": sql_stack, "stream": stream_stack}[request.param]
