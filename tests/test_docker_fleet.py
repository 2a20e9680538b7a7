"""Hostile agents in a real fleet on Docker: each is contained, its task fails with a clear
reason, and the workers and the other tasks keep going."""

import pytest

from fleet.events import EventType
from fleet.specs import TaskState
from sandboxes import docker_available
from tests.conftest import script

pytestmark = [
    pytest.mark.docker,
    pytest.mark.ray,
    pytest.mark.skipif(not docker_available(), reason="no Docker engine answers"),
]


def shell(command: str, timeout_s: float = 60):
    return script(("shell", {"command": command, "timeout_s": timeout_s}), ("finish", {}))


def test_hostile_agents_are_contained_and_the_batch_goes_on(fleet_factory):
    fleet = fleet_factory(workers=2, sandbox="docker", stall_timeout_s=60)
    ok_gate = "test -s ok.txt"
    tasks = [
        {
            "id": "fork-bomb",
            "prompt": "x",
            "gate": "false",
            "max_attempts": 1,
            "script": shell("bomb() { bomb | bomb & }; bomb; sleep 2; echo survived", 8),
        },
        {
            "id": "flood",
            "prompt": "x",
            "gate": "false",
            "max_attempts": 1,
            "script": shell("yes flood | head -c 2000000000"),
        },
        {
            "id": "sleeper",
            "prompt": "x",
            "max_attempts": 1,
            "time_limit_s": 3,
            "script": shell("sleep 1000"),
        },
        {
            "id": "escape",
            "prompt": "x",
            "max_attempts": 1,
            "gate": "test -e /etc/owned || test -s /tmp/pwned",
            "script": shell(
                'echo x > /etc/owned; python3 -c "import urllib.request as u; '
                "u.urlopen('http://1.1.1.1', timeout=3)\" > /tmp/pwned"
            ),
        },
        {
            "id": "honest",
            "prompt": "x",
            "gate": ok_gate,
            "script": script(("write_file", {"path": "ok.txt", "content": "fine"}), ("finish", {})),
        },
    ]
    fleet.submit(tasks)
    records = {r.id: r for r in fleet.wait([t["id"] for t in tasks], timeout_s=240)}
    assert records["honest"].state == TaskState.succeeded
    for task_id in ("fork-bomb", "flood", "sleeper", "escape"):
        assert records[task_id].state == TaskState.needs_human, task_id
    assert "time limit of 3s" in records["sleeper"].reason
    assert "gate failed" in records["escape"].reason  # nothing outside the workspace, no net
    flood = next(e for e in fleet.events("flood") if e.type == EventType.agent_tool_result)
    stdout = flood.payload["stdout"]  # 2 GB printed; capped while streaming, then for the model
    assert "elided" in stdout and len(stdout) < 20_000 and stdout.startswith("flood\nflood")
    assert fleet.status()["workers"] == 2  # no worker was lost to any of it
