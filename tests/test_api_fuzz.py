"""Property-based fuzzing of the REST API from its own OpenAPI document
(schemathesis): whatever the body, path or credential, no request gets a 5xx
and the server keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from server.app import create_app
from tests.fakes import fake_engines, served
from tests.test_sessions_api import KEY, make_config


@pytest.fixture(scope="module")
def api_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config = make_config(http_requests_per_s=10_000, http_burst=10_000)
    # Fuzzed DELETE /api/avatars/{name} with the key must not touch real avatars.
    config.weights_dir = Path(tmp_path_factory.mktemp("weights"))
    with served(create_app(config, fake_engines())) as base:
        yield base


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False  # 127.0.0.1 only: never a proxy
    yield session
    session.close()


@pytest.fixture(scope="module")
def api_schema(api_base: str, http: requests.Session) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(http.get(f"{api_base}/openapi.json").json())


def test_no_request_breaks_the_api(
    api_schema: schemathesis.BaseSchema, api_base: str, http: requests.Session
) -> None:
    # Hypothesis driven directly: schemathesis's pytest plugin does not load
    # with this pytest version.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def no_server_error(case: schemathesis.Case) -> None:
            for headers in ({}, KEY, {"Authorization": "Bearer made-up"}):
                response = case.call(base_url=api_base, session=http, headers=headers)
                assert response.status_code < 500, (case.method, case.path, response.text[:300])

        no_server_error()
    assert http.get(f"{api_base}/health").status_code == 200
