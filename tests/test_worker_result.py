"""What a worker reports for a session whose task ended: its result, or a failure that says
why (stopped, or an error nothing below caught), so the task never stays running."""

from __future__ import annotations

import asyncio
import logging

import pytest
from pydantic import SecretStr

from actors.worker import HeldSession, session_result
from core.records import SessionOutcome, SessionResult
from core.specs import AgentSpec
from harness.hooks import InboxHooks
from tests.test_harness_support import assignment

SECRET = "hunter2-value"


async def ended(run: object, stop_reason: str | None = None) -> SessionResult:
    a = assignment(AgentSpec(), secrets={"TOKEN": SecretStr(SECRET)})
    session = HeldSession(a, InboxHooks(), stop_reason=stop_reason)
    session.task = asyncio.ensure_future(run)  # type: ignore[arg-type]
    if stop_reason is not None:
        await asyncio.sleep(0)
        session.task.cancel()
    return await session_result(session, "w1")


def test_a_session_that_raised_fails_with_the_error_and_no_secret_in_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> SessionResult:
        raise RuntimeError(f"release failed for token {SECRET}")

    with caplog.at_level(logging.ERROR, logger="actors.worker"):
        result = asyncio.run(ended(broken()))

    assert "release failed for token" in caplog.text  # logged with its traceback...
    assert "Traceback" in caplog.text and SECRET not in caplog.text  # ...redacted

    assert result.status == "failed"
    assert (result.task_id, result.session_id, result.attempt) == ("t", "s-1", 1)
    assert result.worker == "w1"
    assert result.reason.startswith("session error: RuntimeError: release failed for token ")
    assert SECRET not in result.reason


def test_a_stopped_session_fails_with_why_it_was_stopped() -> None:
    async def forever() -> SessionResult:
        await asyncio.sleep(60)
        raise AssertionError("not stopped")

    result = asyncio.run(ended(forever(), stop_reason="time limit 60s"))

    assert result.status == "failed" and result.reason == "time limit 60s"


def test_a_session_that_ended_reports_its_own_result() -> None:
    own = SessionResult(
        task_id="t",
        session_id="s-1",
        attempt=1,
        worker="w1",
        status="succeeded",
        outcome=SessionOutcome(status="finished", summary="done"),
    )

    async def fine() -> SessionResult:
        return own

    assert asyncio.run(ended(fine())) is own
