"""The registry survives on a real Ray: a supervisor killed (SIGKILL: Ray restarts it) and a
fleet started again on the same events directory both find every version of every agent and
environment, and a task queued before either runs the version it was submitted with."""

import os
import signal
import time

import pytest
import ray

from actors.files import FileTooLarge
from core.events import EventType
from core.specs import FleetConfig, TaskState
from tests.conftest import script

pytestmark = pytest.mark.ray


def versions(fleet, kind: str, name: str) -> list[tuple[int, bool, dict]]:  # type: ignore[no-untyped-def]
    return [(v["version"], v["archived"], v["spec"]) for v in fleet.spec_versions(kind, name)]


def wait_restarted(fleet, old_pid: int, timeout_s: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if ray.get(fleet.supervisor.pid.remote(), timeout=5) != old_pid:
                return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            pass
        time.sleep(0.2)
    raise AssertionError("the supervisor did not come back")


def test_every_version_is_back_after_a_kill_and_after_a_new_start(fleet_factory, tmp_path):
    name = f"reg{os.getpid() % 10000}"
    events = str(tmp_path / "registry-events")
    config = FleetConfig.model_validate({"agents": {"coder": {"max_turns": 5}}})
    first = fleet_factory(name=name, events_dir=events, workers=1, config=config, max_running=0)
    first.put_spec("agent", {"name": "coder", "max_turns": 7}, 1)
    first.put_spec("agent", {"name": "helper", "max_turns": 3}, 0)
    first.put_spec("environment", {"name": "big", "cpus": 2.0}, 0)
    first.put_spec("environment", {"name": "big", "cpus": 3.0}, 1)
    first.put_spec("agent", {"name": "temp"}, 0)
    assert first.archive_spec("agent", "temp")
    held = {"id": "held", "prompt": "x", "agent": "coder", "environment": "big"}
    accepted = first.submit([held | {"script": script(("finish", {"summary": "ran"}))}])
    assert accepted.accepted == ["held"]
    first.put_spec("agent", {"name": "coder", "max_turns": 9}, 2)  # after the task: not its
    expected = {
        ("agent", "coder"): [(1, 5), (2, 7), (3, 9)],
        ("agent", "helper"): [(1, 3)],
        ("environment", "big"): [(1, 2.0), (2, 3.0)],
    }
    field = {"agent": "max_turns", "environment": "cpus"}

    def check(fleet) -> None:  # type: ignore[no-untyped-def]
        for (kind, spec_name), wanted in expected.items():
            found = [(n, spec[field[kind]]) for n, _, spec in versions(fleet, kind, spec_name)]
            assert found == wanted, (kind, spec_name)
        assert [(n, gone) for n, gone, _ in versions(fleet, "agent", "temp")] == [(1, True)]
        refused = fleet.submit([{"prompt": "x", "agent": "temp"}]).rejected
        assert refused[0]["conflict"] and "archived" in refused[0]["error"]

    pid = ray.get(first.supervisor.pid.remote())
    os.kill(pid, signal.SIGKILL)  # Ray restarts the actor; it replays its log
    wait_restarted(first, pid)
    check(first)
    first.shutdown()

    second = fleet_factory(name=name, events_dir=events, workers=1, config=config, recover=True)
    check(second)
    done = second.wait(["held"], timeout_s=60)[0]
    assert done.state == TaskState.succeeded and done.versions["agent"] == {"coder": 2}
    [assigned] = [e for e in second.events("held") if e.type == EventType.task_assigned]
    assert assigned.payload["max_turns"] == 7  # version 2's, not the current 9
    assert assigned.payload["agent_version"] == 2 and assigned.payload["environment_version"] == 2
    submitted = next(e for e in second.events("held") if e.type == EventType.task_submitted)
    assert submitted.payload["versions"] == {"agent": {"coder": 2}, "environment": {"big": 2}}


def test_uploaded_files_reach_the_workspace_on_a_worker(fleet_factory, tmp_path):
    fleet = fleet_factory(workers=1, max_file_bytes=4096)
    data = os.urandom(3000)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    meta = fleet.upload(path)
    assert meta["filename"] == "blob.bin" and fleet.upload(data)["id"] == meta["id"]
    assert fleet.file_info(meta["id"])["size_bytes"] == 3000
    with pytest.raises(FileTooLarge):
        fleet.upload(b"x" * 4097)
    gate = f'test "$(sha256sum in/blob.bin | cut -c1-64)" = {meta["id"]}'
    task = {
        "id": "mounted",
        "prompt": "x",
        "resources": [{"file_id": meta["id"], "path": "in/blob.bin"}],
        "gate": gate,
        "max_attempts": 1,
        "script": script(("finish", {"summary": "found it"})),
    }
    assert fleet.submit([task]).accepted == ["mounted"]
    assert fleet.wait(["mounted"], timeout_s=60)[0].state == TaskState.succeeded
    unknown = {**task, "id": "unknown", "resources": [{"file_id": "e" * 64, "path": "x"}]}
    [refused] = fleet.submit([unknown]).rejected
    assert refused["field"] == "resources.0.file_id"
