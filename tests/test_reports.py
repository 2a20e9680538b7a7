"""History others can read and reports to look at: the ``sessions``, ``tool_calls`` and
``turns`` views, saved queries (config, CLI, HTTP), and the self-contained HTML report (no
script, no network; checked in headless Chromium)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from core import analytics
from core.events import ARROW_SCHEMA
from core.report_page import html_report
from core.settings import FleetSettings
from core.specs import FleetConfig, SavedReport
from serve import deps
from serve.app import ServeSettings, create_app
from tests.fake_supervisor import FakeSupervisor
from tests.history import write_history
from tests.test_serve_http import chromium

TASKS = 120
TOKEN = "reports-token"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("history")
    write_history(root, TASKS)
    return root


def one(events_dir: Path, statement: str) -> Any:
    return analytics.sql(str(events_dir), statement).rows[0][0]


def test_the_views_have_a_row_per_session_tool_call_and_turn(history: Path) -> None:
    # Task i fails when i % 10 == 0, after 1 + i % 3 attempts; the others take one.
    retried = sum(i % 3 for i in range(0, TASKS, 10))
    assert one(history, "SELECT count(*) FROM sessions") == TASKS + retried
    assert one(history, "SELECT count(*) FROM turns") == one(
        history, "SELECT count(*) FROM events WHERE type = 'usage'"
    )
    assert one(history, "SELECT count(*) FROM tool_calls") == one(
        history, "SELECT count(*) FROM events WHERE type = 'agent.tool_result'"
    )
    # Every call found the turn of its tool_use; errors are the failing tasks' first calls.
    assert one(history, "SELECT count(*) FROM tool_calls WHERE turn IS NULL") == 0
    errors = one(history, "SELECT count(DISTINCT task_id) FROM tool_calls WHERE is_error")
    assert errors == len(range(0, TASKS, 10))
    row = analytics.sql(
        str(history),
        "SELECT attempt, agent, status, reason, turns, tool_calls, worker FROM sessions "
        "WHERE session_id = 't-20-s3'",
    ).as_dicts()[0]
    assert row["attempt"] == 3 and row["status"] == "failed" and row["worker"] == "w0"
    assert row["reason"] == "time limit reached" and row["turns"] == row["tool_calls"] + 1
    turn = analytics.sql(
        str(history), "SELECT * FROM turns WHERE session_id = 't-1-s1' AND turn = 2"
    ).as_dicts()[0]
    assert turn["model"] == "gpt-x" and turn["tokens_in"] == 1100 and turn["cached_tokens_in"] == 10
    assert 400 <= turn["latency_ms"] <= 1000


def test_saved_reports_are_named_queries_that_cannot_shadow_a_builtin(history: Path) -> None:
    saved = {"by-label": SavedReport(sql="SELECT 41 + 1 AS answer", title="The answer")}
    table = analytics.named_report(str(history), "by-label", saved=saved)
    assert (table.title, table.rows) == ("The answer", [(42,)])
    with pytest.raises(KeyError, match=r"known: overview, tasks, tools, durations, by-label"):
        analytics.named_report(str(history), "nope", saved=saved)
    with pytest.raises(analytics.AnalyticsError, match="takes no batch"):
        analytics.named_report(str(history), "by-label", "b1", saved)
    with pytest.raises(ValidationError, match="'tasks' is a built-in report"):
        FleetConfig.model_validate({"reports": {"tasks": {"sql": "SELECT 1"}}})
    with pytest.raises(ValidationError, match="lowercase letters"):
        FleetConfig.model_validate({"reports": {"Bad Name": {"sql": "SELECT 1"}}})


def test_fleet_report_runs_a_saved_query_and_writes_the_html_page(
    history: Path, tmp_path: Path
) -> None:
    config = tmp_path / "fleet.yaml"
    config.write_text(
        "reports:\n  slow-shell:\n    title: Slow shell calls\n"
        "    sql: SELECT count(*) AS calls FROM tool_calls WHERE tool = 'shell' "
        "AND duration_ms > 40\n"
    )

    def fleet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fleet.cli", *args, "--events", str(history)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    slow = one(history, "SELECT count(*) FROM tool_calls WHERE tool = 'shell' AND duration_ms > 40")
    done = fleet("report", "slow-shell", "--config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"Slow shell calls": [{"calls": slow}]}
    missing = fleet("report", "slow-shell")
    assert missing.returncode == 2 and "no report 'slow-shell'" in missing.stderr
    page = tmp_path / "report.html"
    done = fleet("report", "--html", str(page))
    assert done.returncode == 0 and "wrote" in done.stdout
    assert page.read_text().startswith("<!doctype html>")


def test_the_html_report_is_self_contained_and_shows_the_figures(history: Path) -> None:
    page = html_report(str(history))
    assert "<script" not in page and "<link" not in page and " src=" not in page
    urls = set(re.findall(r"https?://[^\s\"'<>]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}  # a namespace name, never fetched
    for section in (
        "success-over-time",
        "durations-by-label",
        "durations-by-agent",
        "cost-by-agent",
        "tokens-by-agent",
        "failure-reasons",
        "tool-latency",
        "model-latency",
        "retries",
    ):
        assert f'id="{section}"' in page, section
    needs_human = len([i for i in range(TASKS) if i % 17 == 0 and i % 10 != 0])
    assert f"<title>which API key?: {needs_human}</title>" in page
    three = len([i for i in range(0, TASKS, 10) if i % 3 == 2])
    assert f"<title>3 attempt(s): {three}</title>" in page
    for label in ("bug", "docs", "feature", "infra"):
        assert f"{label}: median" in page
    one_batch = html_report(str(history), batch="no-such-batch")
    assert "no data yet" in one_batch and "which API key?" not in one_batch


def test_the_report_route_serves_saved_queries_and_the_charts(history: Path) -> None:
    config = FleetConfig(
        reports={
            "turns-per-model": {"sql": "SELECT model, count(*) AS n FROM turns GROUP BY model"},
            "broken": {"sql": "SELECT nope FROM nowhere"},
        }
    )
    settings = FleetSettings(
        events_dir=str(history), name=f"reports-{time.monotonic_ns() % 10**8}", sandbox="local"
    )
    fake = FakeSupervisor(settings, config)
    app = create_app(settings=ServeSettings(token=TOKEN))
    app.dependency_overrides[deps.supervisor] = lambda: fake
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            body = client.get("/v1/reports/turns-per-model").json()
            turns = one(history, "SELECT count(*) FROM turns")
            assert body["rows"] == [{"model": "gpt-x", "n": turns}]
            missing = client.get("/v1/reports/nope")
            assert missing.status_code == 404 and "turns-per-model" in missing.json()["detail"]
            broken = client.get("/v1/reports/broken")
            assert broken.status_code == 422 and "nowhere" in broken.json()["detail"]
            charts = client.get("/v1/charts")
            assert charts.status_code == 200 and 'id="failure-reasons"' in charts.text
            wrong = client.get("/v1/charts", headers={"Authorization": "Bearer no"})
            assert wrong.status_code == 403 and "failure-reasons" not in wrong.text
            assert client.get("/reports").status_code == 200
    finally:
        fake.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    from tests.test_dashboard_session import RecordingBrowser

    binary = chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (scripts/ci-chromium.sh installs it)")
        pytest.skip("chromium is not installed")
    made = RecordingBrowser(binary, tmp_path / "profile")
    made.call("Network.enable")
    try:
        yield made
    finally:
        made.close()


def test_the_html_report_renders_in_chromium_offline_without_errors(
    history: Path, tmp_path: Path, browser: Any
) -> None:
    page = tmp_path / "report.html"
    page.write_text(html_report(str(history)), encoding="utf-8")
    requests: list[str] = []
    keep = browser.keep

    def keep_requests(message: dict[str, Any]) -> None:
        if message.get("method") == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
        keep(message)

    browser.keep = keep_requests
    browser.open(page.as_uri())
    browser.wait("document.readyState === 'complete'", 30, "the report to load")
    charts = browser.js("document.querySelectorAll('section svg').length")
    assert charts == 9
    drawn = browser.js("document.querySelectorAll('svg rect, svg circle, svg polyline').length")
    assert drawn > 40
    width = browser.js("document.querySelector('#tool-latency svg').getBoundingClientRect().width")
    assert width > 300
    shot = browser.call("Page.captureScreenshot", format="png")["data"]
    assert len(shot) > 20_000
    assert browser.problems == []
    assert [url for url in requests if not url.startswith("file://")] == []


def test_the_readme_documents_every_column_and_every_view_as_it_is(history: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for column in ARROW_SCHEMA.names:
        assert f"| `{column}` |" in readme, column
    con = analytics.connect(str(history))
    for view in analytics.VIEWS:
        documented = re.search(rf"^\| `{view}` \| [^|]+ \| `([^|]+)` \|$", readme, re.M)
        assert documented is not None, view
        actual = [d[0] for d in con.execute(f"SELECT * FROM {view} LIMIT 0").description]
        assert documented.group(1).split(", ") == actual, view
