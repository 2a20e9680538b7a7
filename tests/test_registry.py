"""The registry of agents and environments as a fold over events, tasks pinned to the
versions they were submitted with, and uploaded files with the resources that name them.
Plain: no Ray (tests/test_fleet_ray.py restarts a real supervisor on the same log)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from actors.artifacts import ArtifactStore
from actors.files import FileStore, FileTooLarge, NoSuchFile, file_id
from actors.recovery import recover, restore_registry
from actors.registry import Registry, SpecConflict
from actors.scheduler import Scheduler, TaskRejected
from core.eventlog import EventLog
from core.events import Event, EventType
from core.records import SessionOutcome, SessionResult
from core.settings import FleetSettings
from core.specs import FleetConfig, TaskSpec, TaskState


def config() -> FleetConfig:
    return FleetConfig.model_validate({"agents": {"coder": {"instructions": "v1"}}})


class Life:
    """One supervisor life on an event log: decisions numbered, folded and logged as the
    journal does it."""

    def __init__(
        self, root: Path | None = None, files: FileStore | None = None, **settings: object
    ) -> None:
        exists = files.exists if files else None
        self.sched = Scheduler(config(), FleetSettings(**settings), exists)  # type: ignore[arg-type]
        self.log = EventLog(str(root), writer="f") if root else None

    def record(self, events: list[Event]) -> None:
        for event in events:
            event.seq = self.sched.next_seq(event.task_id)
            self.sched.apply(event)
        if self.log is not None:
            self.log.append(events)

    def close(self) -> EventLog:
        assert self.log is not None
        self.log.close()
        return self.log

    def put(self, name: str, instructions: str) -> dict:
        registry = self.sched.registry
        event = registry.put_event("agent", {"name": name, "instructions": instructions}, None)
        self.record([event])
        return event.payload

    def archive(self, name: str) -> None:
        self.record([self.sched.registry.archived_event("agent", name)])

    def submit(self, **fields: object) -> None:
        self.record([self.sched.submit(TaskSpec.model_validate(fields))])

    def assign(self):  # type: ignore[no-untyped-def]
        got = self.sched.assign("w1")
        assert got is not None
        self.record([got[1]])
        return got[0]

    def fail(self, assignment) -> None:  # type: ignore[no-untyped-def]
        result = SessionResult(
            task_id=assignment.task.id,
            session_id=assignment.session_id,
            attempt=assignment.attempt,
            worker="w1",
            status="failed",
            reason="gate failed",
        )
        self.record(self.sched.conclude(result, now=0.0))


def test_every_version_is_kept_and_the_config_files_spec_is_version_one() -> None:
    registry = Registry(config())
    assert registry.get("agent", "coder")["version"] == 1
    registry.put("agent", {"name": "coder", "instructions": "v2"}, 1)
    with pytest.raises(SpecConflict, match="at version 2, not 1"):
        registry.put("agent", {"name": "coder", "instructions": "stale"}, 1)
    registry.put("agent", {"name": "coder", "instructions": "v3"}, None)
    versions = registry.versions("agent", "coder")
    assert [(v["version"], v["spec"]["instructions"]) for v in versions] == [
        (1, "v1"),
        (2, "v2"),
        (3, "v3"),
    ]
    assert registry.get("agent", "coder", 2)["spec"]["instructions"] == "v2"
    assert registry.get("agent", "coder", 9) is None
    assert registry.config.agents["coder"].instructions == "v3"  # what new tasks get
    assert registry.archive("agent", "coder")
    assert registry.get("agent", "coder")["archived"] is True
    assert registry.get("agent", "coder", 1)["spec"]["instructions"] == "v1"  # still readable
    again = registry.put("agent", {"name": "coder", "instructions": "v4"}, 0)
    assert again["version"] == 4 and again["archived"] is False  # numbering goes on
    assert registry.versions("agent", "nobody") is None


def test_registry_events_fold_back_in_on_a_start_with_or_without_recover(tmp_path: Path) -> None:
    first = Life(tmp_path)
    first.put("coder", "v2")
    first.put("helper", "h1")
    first.put("helper", "h2")
    first.put("temp", "t1")
    first.archive("temp")
    first.close()
    for n, rebuild in enumerate((restore_registry, recover)):
        life = Life(tmp_path)
        assert life.log is not None
        rebuild(life.log, life.sched)
        registry = life.sched.registry
        versions = [v["spec"]["instructions"] for v in registry.versions("agent", "coder")]
        assert versions == ["v1", "v2", "v3"][: 2 + n]  # the second life put v3
        assert registry.get("agent", "helper")["version"] == 2
        assert registry.get("agent", "helper", 1)["spec"]["instructions"] == "h1"
        assert registry.is_archived("agent", "temp") and not registry.live("agent", "temp")
        assert life.sched.config.agents["coder"].instructions == versions[-1]
        if n == 0:  # the next change goes on from there: version 3, a seq not yet taken
            assert life.put("coder", "v3")["version"] == 3
        life.close()
    log = Life(tmp_path).close()
    events = [e for e in log.replay() if e.task_id == "registry:agent/coder"]
    assert [(e.seq, e.payload["version"]) for e in events] == [(0, 2), (1, 3)]  # none dropped


def test_a_task_runs_the_versions_it_was_submitted_with_on_every_attempt() -> None:
    life = Life(default_max_attempts=3, retry_backoff_s=0)
    life.put("coder", "v2")
    life.submit(id="t", prompt="x", agent="coder")
    submitted = life.sched.tasks["t"]
    assert submitted.versions == {"agent": {"coder": 2}, "environment": {"default": 1}}
    life.put("coder", "v3")  # an update while the task waits
    first = life.assign()
    assert first.agent.instructions == "v2"
    life.put("coder", "v4")  # and while it runs
    life.fail(first)
    assert life.assign().agent.instructions == "v2"  # the retry too
    life.submit(id="later", prompt="x", agent="coder")
    assert life.sched.tasks["later"].versions["agent"] == {"coder": 4}


def test_an_archived_agent_is_refused_at_submit_fails_what_waits_and_not_what_started() -> None:
    life = Life(default_max_attempts=3, retry_backoff_s=0)
    life.submit(id="started", prompt="x", agent="coder", priority=1)
    life.submit(id="waiting", prompt="x", agent="coder")
    running = life.assign()
    assert running.task.id == "started"
    life.archive("coder")
    with pytest.raises(TaskRejected) as refused:
        life.sched.submit(TaskSpec(id="new", prompt="x", agent="coder"))
    assert refused.value.conflict and refused.value.field == "agent"
    assert refused.value.message == "agent 'coder' is archived: new tasks may not name it"
    life.fail(running)  # the started one retries, on the version it was pinned to
    retry = life.assign()
    assert retry.task.id == "started" and retry.agent.instructions == "v1"
    got = life.sched.assign("w2")  # the one that never started fails: never another agent
    assert got is not None and got[0] is None and got[1].task_id == "waiting"
    assert got[1].payload["reason"] == "cannot run: agent 'coder' no longer exists"
    life.record([got[1]])
    assert life.sched.tasks["waiting"].state == TaskState.failed


def test_a_handoff_pins_the_agent_it_hands_to() -> None:
    life = Life()
    life.put("helper", "h1")
    life.submit(id="t", prompt="x", agent="coder")
    first = life.assign()
    outcome = SessionOutcome(status="handoff", handoff_to="helper")
    result = SessionResult(
        task_id="t",
        session_id=first.session_id,
        attempt=1,
        worker="w1",
        status="succeeded",
        outcome=outcome,
    )
    decided = life.sched.conclude(result)
    assert decided[-1].type == EventType.handoff and decided[-1].payload["to_version"] == 1
    life.record(decided)
    life.put("helper", "h2")
    assert life.assign().agent.instructions == "h1"
    assert life.sched.tasks["t"].versions["agent"] == {"coder": 1, "helper": 1}


def test_a_pinned_task_runs_its_version_after_a_restart(tmp_path: Path) -> None:
    first = Life(tmp_path)
    first.put("coder", "v2")
    first.submit(id="t", prompt="x", agent="coder")
    first.put("coder", "v3")
    first.close()
    second = Life(tmp_path)
    assert second.log is not None
    recover(second.log, second.sched)
    assert second.sched.tasks["t"].versions["agent"] == {"coder": 2}
    assert second.assign().agent.instructions == "v2"
    second.close()


def test_files_are_content_addressed_and_size_limited(tmp_path: Path) -> None:
    files = FileStore(ArtifactStore(str(tmp_path)), max_bytes=1000)
    data = bytes(range(256)) * 3
    meta = files.put(data, "blob.bin", "application/x-blob")
    assert meta["id"] == file_id(data) and meta["size_bytes"] == 768
    assert files.put(data, "other-name.bin")["filename"] == "blob.bin"  # one file, first name
    assert files.read(meta["id"]) == data and files.info(meta["id"]) == meta
    with pytest.raises(FileTooLarge, match="over max_file_bytes"):
        files.put(b"x" * 1001)
    with pytest.raises(NoSuchFile):
        files.read("0" * 64)
    assert files.info("../../etc/passwd") is None


def test_resources_name_known_files_and_paths_inside_the_workspace(tmp_path: Path) -> None:
    files = FileStore(ArtifactStore(str(tmp_path / "artifacts")), max_bytes=1000)
    known = files.put(b"data")["id"]
    life = Life(tmp_path / "events", files)
    life.submit(id="ok", prompt="x", resources=[{"file_id": known, "path": "in/data.bin"}])
    assert files.resources(life.sched.tasks["ok"].spec) == {"in/data.bin": b"data"}
    with pytest.raises(TaskRejected, match="no file") as unknown:
        life.sched.submit(
            TaskSpec(id="u", prompt="x", resources=[{"file_id": "a" * 64, "path": "x"}])
        )
    assert unknown.value.field == "resources.0.file_id"
    for path, why in (("../out", "leaves"), ("/etc/x", "absolute")):
        with pytest.raises(ValidationError, match=why) as bad:
            TaskSpec(id="b", prompt="x", resources=[{"file_id": known, "path": path}])
        assert bad.value.errors()[0]["loc"] == ("resources", 0, "path")
    with pytest.raises(ValidationError, match="two resources"):
        TaskSpec(
            prompt="x",
            resources=[{"file_id": known, "path": "a"}, {"file_id": known, "path": "./a"}],
        )
    files.store.delete(f"_files/{known}.json")  # lost from the store while the task waited
    got = life.sched.assign("w1")
    assert got is not None and got[0] is None
    assert got[1].payload["reason"] == f"cannot run: file {known!r} no longer exists"
    life.close()
