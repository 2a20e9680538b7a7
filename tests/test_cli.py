"""The fleet command as a user runs it: a real process, a real local Ray."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import script

pytestmark = pytest.mark.ray


def fleet(*args, cwd, timeout=180, env=None):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "OPENAI_"))}
    env = {**base, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_run_reports_bad_lines_runs_the_rest_and_answers_sql(tmp_path):
    ok = {
        "id": "ok",
        "prompt": "x",
        "gate": "test -s f.txt",
        "script": script(("write_file", {"path": "f.txt", "content": "1"}), ("finish", {})),
    }
    lines = [
        json.dumps(ok),
        '{"id": "broken", "prompt": ',
        json.dumps({"id": "typo", "promt": "x"}),
    ]
    (tmp_path / "tasks.jsonl").write_text("\n".join(lines) + "\n")
    proc = fleet(
        "run",
        "tasks.jsonl",
        "--workers",
        "1",
        "--sandbox",
        "local",
        "--events",
        "ev",
        "--keep-ids",
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr  # something was rejected
    assert "tasks.jsonl:2: bad JSON" in proc.stderr
    assert "tasks.jsonl:3: promt: unknown field" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Batch summary" in proc.stdout and "succeeded" in proc.stdout
    assert "Tool calls by tool" in proc.stdout

    proc = fleet(
        "sql",
        "select task_id, type from events where type = 'task.succeeded'",
        "--events",
        "ev",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"task_id": "ok", "type": "task.succeeded"}]

    proc = fleet("report", "--events", "ev", "--json", cwd=tmp_path)
    overview = json.loads(proc.stdout)["Overview"][0]
    assert overview["tasks"] == 1 and overview["succeeded"] == 1


def test_user_errors_are_one_line_without_traceback(tmp_path):
    proc = fleet("run", "missing.jsonl", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: task file not found: missing.jsonl"
    proc = fleet("sql", "select 1", "--events", "nowhere", cwd=tmp_path)
    assert proc.returncode == 2 and "no event log at" in proc.stderr
    os.makedirs(tmp_path / "ev" / "date=2026-01-01")
    proc = fleet("sql", "select nope from events", "--events", "ev", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    proc = fleet("run", "x.jsonl", "--workers", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "workers" in proc.stderr


def test_two_environment_variables_run_tasks_on_a_real_model_server(tmp_path):
    """FLEET_MODEL and OPENAI_BASE_URL are all it takes (a keyless local server here)."""
    from tests.fake_openai import FakeOpenAI, Reply

    server = FakeOpenAI().start()
    try:
        server.queue(
            Reply(tool_calls=[("c1", "write_file", '{"path": "out.txt", "content": "hi"}')]),
            Reply(tool_calls=[("c2", "finish", '{"summary": "wrote out.txt"}')]),
        )
        task = {"id": "real", "prompt": "write hi to out.txt", "gate": "grep -q hi out.txt"}
        (tmp_path / "tasks.jsonl").write_text(json.dumps(task) + "\n")
        env = {"FLEET_MODEL": "local-model", "OPENAI_BASE_URL": server.base_url}
        proc = fleet(
            "run",
            "tasks.jsonl",
            "--workers",
            "1",
            "--sandbox",
            "local",
            "--events",
            "ev",
            "--keep-ids",
            cwd=tmp_path,
            env=env,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert [r.body["model"] for r in server.requests] == ["local-model", "local-model"]
        assert "all 1 tasks succeeded" in proc.stdout
    finally:
        server.stop()
