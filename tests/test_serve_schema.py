"""Schemathesis against /openapi.json: generated requests to every operation, no 500s,
responses as documented. The fleet's only pool takes no agent, so nothing generated runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from serve.app import ServeSettings, create_app  # noqa: E402

pytestmark = pytest.mark.ray

TOKEN = "schema-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def held_fleet(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from fleet import Fleet

    fleet = Fleet.start(
        name=f"serve-schema-{time.monotonic_ns() % 10**8}",
        events_dir=str(tmp_path_factory.mktemp("schema-events")),
        sandbox="local",
        workers=1,
        max_running=0,  # paused: every task stays queued
        flush_interval_s=0.5,
        namespace="agent-fleet-tests",
    )
    yield fleet
    fleet.shutdown()


@pytest.fixture(scope="module")
def api_schema(held_fleet: Any) -> Any:
    app = create_app(held_fleet, ServeSettings(token=TOKEN, max_body_bytes=256 * 1024))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


# The fleet-wide stream never ends (it is for dashboards): tests/test_serve_app.py covers it.
schema = schemathesis.pytest.from_fixture("api_schema").exclude(path="/v1/events/stream")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case: Any) -> None:
    # Not negative_data_rejection: pydantic's lax mode takes "1" for 1 and unknown query
    # parameters are ignored, on purpose. Not positive_data_acceptance: some rules are beyond
    # JSON Schema (a prompt or a user.message; approval regexes must compile).
    excluded = [checks.negative_data_rejection, checks.positive_data_acceptance]
    case.call_and_validate(headers=AUTH, excluded_checks=excluded)
