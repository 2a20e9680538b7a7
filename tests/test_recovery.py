"""Crash recovery on a real Ray and Docker: the supervisor (or a worker) is killed with
SIGKILL at an awkward moment of a docker batch, and nobody calls the fleet afterwards. The
restarted supervisor must bring its workers back and finish the batch by itself: every task
ends exactly once, no task has two sessions that both passed the gate, each task's events are
numbered without gaps, and no container is left once the fleet shuts down.

After the kill the test only reads the event log's Parquet files (the restarted supervisor's
own flush loop writes them): no call reaches the supervisor until the batch has ended.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections import Counter, defaultdict
from typing import Any

import pytest
import ray

from core.analytics import sql
from core.specs import FleetConfig
from sandboxes import docker_available
from tests.conftest import script

pytestmark = [
    pytest.mark.docker,
    pytest.mark.ray,
    pytest.mark.skipif(not docker_available(), reason="no Docker engine answers"),
]

TERMINAL = ("task.succeeded", "task.failed", "task.needs_human", "task.cancelled")

ASKING = FleetConfig.model_validate({"agents": {"careful": {"approvals": {"shell": "always_ask"}}}})


def work(seconds: float) -> list[dict[str, Any]]:
    return script(
        ("write_file", {"path": "out.txt", "content": "done"}),
        ("shell", {"command": f"sleep {seconds} && cat out.txt"}),
        ("finish", {"summary": "wrote out.txt"}),
    )


def batch(n: int, seconds: float = 1.0, gate: str = "test -s out.txt") -> list[dict[str, Any]]:
    return [
        {"id": f"r{i}", "prompt": "write out.txt", "script": work(seconds), "gate": gate}
        for i in range(n)
    ]


def log_rows(events_dir: str, query: str) -> list[tuple]:
    """Read the Parquet log; a compaction may remove a file under the reader: read again."""
    for _ in range(20):
        try:
            return sql(events_dir, query).rows
        except Exception:
            time.sleep(0.2)
    return sql(events_dir, query).rows


def ended(events_dir: str) -> dict[str, int]:
    """Task id -> how many terminal events it has (from Parquet only)."""
    types = ", ".join(f"'{t}'" for t in TERMINAL)
    rows = log_rows(
        events_dir, f"select task_id, count(*) from events where type in ({types}) group by 1"
    )
    return dict(rows)


def seen(events_dir: str, event_type: str) -> set[str]:
    rows = log_rows(events_dir, f"select distinct task_id from events where type = '{event_type}'")
    return {r[0] for r in rows}


def wait_for(what: str, check: Any, timeout_s: float = 90) -> Any:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def fleet_containers(name: str) -> list[str]:
    from sandboxes import images

    cli = images.client()
    try:
        found = cli.api.containers(all=True, filters={"label": f"agent-fleet.fleet={name}"})
        return [f"{c['Names'][0]} {c['State']}" for c in found]
    finally:
        cli.close()


def check_batch(fleet: Any, ids: list[str], timeout_s: float = 150) -> None:
    """Nobody calls the fleet: wait for the log to show every task ended, then check it."""
    events_dir = fleet.settings.events_dir
    wait_for(
        "every task to end (in the Parquet log)",
        lambda: set(ids) <= set(ended(events_dir)),
        timeout_s,
    )
    time.sleep(1.0)  # anything written twice would land now
    counts = ended(events_dir)
    assert {t: counts[t] for t in ids} == dict.fromkeys(ids, 1), "a task ended twice"
    outcomes = dict(
        log_rows(
            events_dir,
            "select task_id, type from events where type in "
            "('task.succeeded', 'task.failed', 'task.needs_human', 'task.cancelled')",
        )
    )
    assert {t: outcomes[t] for t in ids} == dict.fromkeys(ids, "task.succeeded")
    passed = Counter(
        dict(
            log_rows(
                events_dir,
                "select task_id, count(distinct session_id) from events "
                "where type = 'gate.passed' group by 1",
            )
        )
    )
    assert all(passed[t] == 1 for t in ids), f"two sessions passed one task's gate: {passed}"
    seqs: dict[str, list[int]] = defaultdict(list)
    for task_id, seq in log_rows(events_dir, "select task_id, seq from events"):
        seqs[task_id].append(seq)
    for task_id in ids:
        assert sorted(seqs[task_id]) == list(range(len(seqs[task_id]))), task_id


def shut_down_and_check_containers(fleet: Any) -> None:
    fleet.shutdown()
    assert fleet_containers(fleet.settings.name) == []


def kill_supervisor(fleet: Any) -> int:
    pid = ray.get(fleet.supervisor.pid.remote())
    os.kill(pid, signal.SIGKILL)
    return pid


def docker_fleet(fleet_factory: Any, **overrides: Any) -> Any:
    settings = {"sandbox": "docker", "workers": 2, "warm_pool": 1, "flush_interval_s": 0.2}
    return fleet_factory(**{**settings, **overrides})


def test_supervisor_killed_before_the_tasks_were_assigned(fleet_factory):
    fleet = docker_fleet(fleet_factory)
    ids = fleet.submit(batch(6, seconds=0.2)).accepted
    kill_supervisor(fleet)  # at most two of six were assigned: the rest are queued only
    check_batch(fleet, ids)
    shut_down_and_check_containers(fleet)


def test_supervisor_killed_mid_session(fleet_factory):
    fleet = docker_fleet(fleet_factory)
    ids = fleet.submit(batch(4, seconds=3)).accepted
    wait_for("a session to run its command", lambda: fleet.get("r0").last_event, 60)
    wait_for(
        "a shell call under way",
        lambda: any(e.tool == "shell" for e in fleet.events("r0")),
        60,
    )
    kill_supervisor(fleet)
    check_batch(fleet, ids)
    retried = log_rows(
        fleet.settings.events_dir,
        "select count(*) from events where type = 'task.retried' "
        "and payload like '%supervisor restarted%'",
    )[0][0]
    assert retried >= 1  # the running ones were sent back, each once
    shut_down_and_check_containers(fleet)


def test_supervisor_killed_during_a_gate(fleet_factory):
    fleet = docker_fleet(fleet_factory)
    ids = fleet.submit(batch(3, seconds=0.1, gate="sleep 3 && test -s out.txt")).accepted

    def finishing() -> bool:
        return any(e.tool == "finish" for e in fleet.events("r0"))

    wait_for("the agent to finish (its gate then runs for 3 s)", finishing, 60)
    time.sleep(0.5)
    assert "r0" not in seen(fleet.settings.events_dir, "gate.passed")
    kill_supervisor(fleet)
    check_batch(fleet, ids)
    shut_down_and_check_containers(fleet)


def test_supervisor_killed_during_a_park(fleet_factory):
    fleet = docker_fleet(fleet_factory, config=ASKING, approval_wait_s=0.3)
    parked = {**batch(1)[0], "id": "parked", "agent": "careful"}
    ids = fleet.submit([parked, *batch(3, seconds=0.5)]).accepted
    events_dir = fleet.settings.events_dir
    wait_for("the session to park", lambda: "parked" in seen(events_dir, "task.parked"), 60)
    kill_supervisor(fleet)
    others = [i for i in ids if i != "parked"]
    # The other tasks finish with nobody calling.
    wait_for("the others to end", lambda: set(others) <= set(ended(events_dir)), 120)
    # A person decides: the parked task resumes on a worker of the new life.
    record = wait_for("the parked task to be back", lambda: fleet.get("parked"), 30)
    assert record.state.value == "awaiting_approval"
    assert fleet.approve("parked", record.pending_approval["call_id"], allow=True)
    check_batch(fleet, ids)
    shut_down_and_check_containers(fleet)


def test_supervisor_killed_during_shutdown(fleet_factory):
    fleet = docker_fleet(fleet_factory)
    ids = fleet.submit(batch(4, seconds=2)).accepted
    wait_for("a session to run", lambda: "r0" in {r.id for r in [fleet.get("r0")] if r.worker})
    pid = ray.get(fleet.supervisor.pid.remote())
    stopping = threading.Thread(target=lambda: _quietly(fleet.supervisor.shutdown.remote()))
    stopping.start()
    time.sleep(0.3)  # the workers are being closed (their containers removed)
    os.kill(pid, signal.SIGKILL)
    stopping.join(timeout=60)
    # The restarted supervisor runs what the interrupted shutdown left, by itself.
    check_batch(fleet, ids)
    shut_down_and_check_containers(fleet)


def _quietly(ref: Any) -> None:
    with contextlib.suppress(Exception):  # the supervisor died under the call: expected
        ray.get(ref, timeout=60)


@pytest.mark.parametrize("moment", ["mid-session", "during-gate"])
def test_worker_killed(fleet_factory, moment):
    fleet = docker_fleet(fleet_factory)
    gate = "sleep 3 && test -s out.txt" if moment == "during-gate" else "test -s out.txt"
    ids = fleet.submit(batch(3, seconds=3 if moment == "mid-session" else 0.1, gate=gate)).accepted
    tool = "shell" if moment == "mid-session" else "finish"
    wait_for(f"a {tool} call", lambda: any(e.tool == tool for e in fleet.events("r0")), 60)
    time.sleep(0.5)
    worker = fleet.get("r0").worker
    os.kill(ray.get(fleet.supervisor.worker_pid.remote(worker)), signal.SIGKILL)
    check_batch(fleet, ids)
    lost = log_rows(
        fleet.settings.events_dir, "select count(*) from events where type = 'worker.lost'"
    )[0][0]
    assert lost == 1
    shut_down_and_check_containers(fleet)
