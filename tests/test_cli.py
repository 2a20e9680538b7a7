"""The fleet command as a user runs it: a real process, a real local Ray."""

import json
import os
import subprocess
import sys
import time

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
    # The workers run at nice 0, not Ray's 15 (a local sandbox's gate is their child).
    nice = {
        "id": "nice",
        "prompt": "x",
        "gate": 'test "$(nice)" -eq 0',
        "script": script(("finish", {})),
    }
    lines = [
        json.dumps(ok),
        json.dumps(nice),
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
        "auto",
        "--events",
        "ev",
        "--keep-ids",
        cwd=tmp_path,
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},  # auto finds no engine
    )
    assert proc.returncode == 1, proc.stderr  # something was rejected
    assert proc.stdout.splitlines()[0] == (
        "sandbox: local (no Docker engine answered: commands run as host processes with the "
        "worker's user, not isolated)"
    )
    assert "tasks.jsonl:3: bad JSON" in proc.stderr
    assert "tasks.jsonl:4: promt: unknown field" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Batch summary" in proc.stdout and "succeeded" in proc.stdout
    assert "Tool calls by tool" in proc.stdout

    proc = fleet(
        "sql",
        "select task_id, type from events where type = 'task.succeeded' order by task_id",
        "--events",
        "ev",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {"task_id": "nice", "type": "task.succeeded"},
        {"task_id": "ok", "type": "task.succeeded"},
    ]
    query = "select json_extract_string(payload, '$.sandbox_kind') as k from events "
    query += "where type = 'session.started'"
    proc = fleet("sql", query, "--events", "ev", "--json", cwd=tmp_path)
    assert json.loads(proc.stdout) == [{"k": "local"}] * 2  # the resolved kind, never auto

    proc = fleet("report", "--events", "ev", "--json", cwd=tmp_path)
    overview = json.loads(proc.stdout)["Overview"][0]
    assert overview["tasks"] == 2 and overview["succeeded"] == 2


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
    (tmp_path / "t.jsonl").write_text('{"prompt": "x"}\n')
    (tmp_path / "a-file").write_text("")
    proc = fleet("run", "t.jsonl", "--sandbox", "local", "--events", "a-file/ev", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the event log" in lines[0], proc.stderr


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


@pytest.mark.fast
def test_demo_runs_every_task_and_its_events_answer_sql(tmp_path):
    """The README's first command, and the foundation issue's 'done when' query."""
    proc = fleet("demo", "--sandbox", "local", "--events", "ev", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first, second = proc.stdout.splitlines()[:2]
    assert first.startswith("sandbox: local (asked for: commands run as host processes")
    assert second.startswith("fleet demo: 12 tasks")
    assert "all 12 tasks succeeded" in proc.stdout
    assert "Batch summary" in proc.stdout and "Overview" in proc.stdout
    query = "select type, count(*) as n from events group by 1"
    proc = fleet("sql", query, "--events", "ev", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    counts = {row["type"]: row["n"] for row in json.loads(proc.stdout)}
    assert counts["task.submitted"] == 12 and counts["task.succeeded"] == 12
    assert counts["agent.tool_result"] == counts["agent.tool_use"] > 12


@pytest.mark.docker
def test_demo_in_docker_sandboxes(tmp_path):
    """The Docker issue's 'done when': the demo batch in containers, one session at a time
    in each, a container reused only after its reset."""
    from sandboxes import docker_available

    if not docker_available():
        pytest.skip("no Docker engine")
    proc = fleet("demo", "--events", "ev", cwd=tmp_path)  # auto: Docker answers
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("sandbox: docker (containers isolated from the host")
    assert "docker sandbox" in proc.stdout and "all 12 tasks succeeded" in proc.stdout
    query = "select count(distinct session_id) from events where type = 'session.started'"
    proc = fleet("sql", query, "--events", "ev", "--json", cwd=tmp_path)
    assert list(json.loads(proc.stdout)[0].values()) == [13]  # one task retries by design
    query = "select json_extract_string(payload, '$.sandbox') as c, "
    query += "json_extract(payload, '$.sandbox_reused')::BOOLEAN as reused from events "
    query += "where type = 'session.ended' order by ts"
    proc = fleet("sql", query, "--events", "ev", "--json", cwd=tmp_path)
    rows = json.loads(proc.stdout)
    containers = [row["c"] for row in rows]
    assert len(containers) == 13 and all(c.startswith("fleet-") for c in containers)
    # A container's first session is the only one not in a reused container.
    firsts = [row["c"] for row in rows if not row["reused"]]
    assert sorted(firsts) == sorted(set(containers)), rows


def test_run_that_times_out_is_not_a_success(tmp_path):
    slow = {"id": "slow", "prompt": "x", "script": script(("shell", {"command": "sleep 60"}))}
    (tmp_path / "tasks.jsonl").write_text(json.dumps(slow) + "\n")
    proc = fleet(
        "run", "tasks.jsonl", "--workers", "1", "--sandbox", "local", "--events", "ev",
        "--timeout", "3", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 unfinished" in proc.stderr
    assert "tasks succeeded" not in proc.stdout


def test_a_person_works_a_running_fleet_from_the_command_line(fleet_factory, tmp_path):
    """status, approve, review and memory, each from its own process, on a live fleet."""
    import ray

    from core.specs import FleetConfig, TaskState
    from tests.conftest import wait_state

    config = FleetConfig.model_validate(
        {"agents": {"careful": {"approvals": {"shell": "always_ask"}}}}
    )
    fleet_ = fleet_factory(workers=2, config=config, events_dir=str(tmp_path / "ev"))
    asks = {
        "id": "asks",
        "prompt": "x",
        "agent": "careful",
        "labels": ["ops"],
        "script": script(("shell", {"command": "echo go > out.txt"}), ("finish", {})),
        "gate": "test -s out.txt",
    }
    reviewed = {
        "id": "reviewed",
        "prompt": "x",
        "labels": ["docs"],
        "require_approval": True,
        "script": script(("write_file", {"path": "a.md", "content": "#"}), ("finish", {})),
    }
    fleet_.submit([asks, reviewed])
    wait_state(fleet_, "reviewed", TaskState.awaiting_review)
    deadline = time.time() + 30
    while not (fleet_.get("asks").pending_approval or {}).get("call_id"):
        assert time.time() < deadline, "no approval was requested"
        time.sleep(0.1)
    call_id = fleet_.get("asks").pending_approval["call_id"]
    where = [
        "--address", ray.get_runtime_context().gcs_address, "--name", fleet_.settings.name,
    ]  # fmt: skip
    env = {"FLEET_NAMESPACE": fleet_.settings.namespace}

    proc = fleet("status", *where, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Waiting on people" in proc.stdout
    assert proc.stdout.startswith("sandbox: local (commands run as host processes, not isolated)")
    assert "asks" in proc.stdout and "reviewed" in proc.stdout and call_id in proc.stdout

    proc = fleet("approve", "asks", "nope", *where, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "no tool call waits for approval with id 'nope'" in proc.stderr
    proc = fleet("approve", "asks", call_id, *where, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    proc = fleet("review", "reviewed", *where, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    records = {r.id: r for r in fleet_.wait(["asks", "reviewed"], timeout_s=60)}
    assert records["asks"].state == TaskState.succeeded, records["asks"].reason
    assert records["reviewed"].state == TaskState.succeeded, records["reviewed"].reason

    fleet_.flush()
    proc = fleet("memory", "--events", "ev", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    labels = {row["name"]: row for row in json.loads(proc.stdout)["labels"]}
    assert labels["ops"]["runs"] == 1 and labels["ops"]["success_rate"] == 1.0
    assert set(labels) == {"ops", "docs"}


def test_secrets_and_closing_an_interactive_task_from_the_command_line(fleet_factory, tmp_path):
    """`fleet secrets set/list` never show a value; `fleet close` ends an idle conversation."""
    import ray

    from core.specs import TaskState
    from tests.conftest import wait_state

    fleet_ = fleet_factory(
        workers=1, events_dir=str(tmp_path / "ev"), vault_dir=str(tmp_path / "vault")
    )
    fleet_.submit(
        [
            {
                "id": "chat",
                "prompt": "x",
                "interactive": True,
                "gate": "test -s a.md",
                "script": script(
                    ("write_file", {"path": "a.md", "content": "#"}), ("finish", {"summary": "1"})
                ),
            }
        ]
    )
    wait_state(fleet_, "chat", TaskState.idle, timeout=60)
    where = [
        "--address", ray.get_runtime_context().gcs_address, "--name", fleet_.settings.name,
    ]  # fmt: skip
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")},
        "FLEET_NAMESPACE": fleet_.settings.namespace,
        "COLUMNS": "200",
    }
    value = "s3cret-from-stdin-42"
    done = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "secrets", "set", "API_TOKEN", *where],
        input=value + "\n",
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "secret API_TOKEN created" in done.stdout and value not in done.stdout + done.stderr
    listed = fleet("secrets", "list", *where, cwd=tmp_path, env=env)
    assert listed.returncode == 0 and "API_TOKEN" in listed.stdout
    assert value not in listed.stdout + listed.stderr

    closed = fleet("close", "chat", *where, cwd=tmp_path, env=env)
    assert closed.returncode == 0, closed.stderr
    [record] = fleet_.wait(["chat"], timeout_s=60)
    assert record.state == TaskState.succeeded, record.reason
    again = fleet("close", "chat", *where, cwd=tmp_path, env=env)
    assert again.returncode == 2 and "chat" in again.stderr
