"""The workers' side of the supervisor without Ray: the journal numbers and logs, the
dispatcher hands out work and takes results, artifacts and checkpoints land in the store."""

import asyncio
import time
from pathlib import Path
from typing import Any

from actors.artifacts import ArtifactStore
from actors.dispatch import Dispatcher
from actors.journal import Journal
from actors.manager import Manager
from actors.pool import WorkerPool, prewarm_environments, worker_options
from actors.scheduler import Scheduler
from actors.streams import LiveStreams
from core.eventlog import EventLog
from core.events import Event, EventType
from core.records import SessionOutcome, SessionResult
from core.settings import FleetSettings, PoolSpec
from core.specs import FleetConfig, TaskSpec, TaskState


class Parts:
    """The plain parts wired as the supervisor wires them (handles are placeholders)."""

    def __init__(self, root: Path) -> None:
        self.settings = FleetSettings(events_dir=str(root), memory=False, idle_recheck_s=30)
        self.sched = Scheduler(FleetConfig(), self.settings)
        self.pool = WorkerPool()
        self.log = EventLog(str(root), writer="test")
        self.streams = LiveStreams(100, 100)
        self.background: list[asyncio.Task[Any]] = []
        self.journal = Journal(
            self.sched, self.log, self.streams, self.pool, self.settings, self.spawn
        )
        self.store = ArtifactStore(str(root / "_artifacts"))

        async def nothing(*_: Any) -> None:
            return None

        manager = Manager(
            self.settings, FleetConfig(), self.sched, self.pool, nothing, nothing, lambda *_: None
        )
        self.dispatch = Dispatcher(
            self.sched, self.pool, self.journal, self.store, manager, self.settings
        )

    def spawn(self, coro: Any) -> None:
        self.background.append(asyncio.create_task(coro))

    def open(self) -> None:
        self.pool.open()
        self.streams.open()
        self.journal.open()
        self.pool.add("w1", object(), PoolSpec(), time.time())

    async def submit(self, task_id: str) -> None:
        await self.journal.record([self.sched.submit(TaskSpec(id=task_id, prompt="x"))])


def test_a_worker_gets_work_reports_and_is_woken_by_the_next_task(tmp_path: Path) -> None:
    parts = Parts(tmp_path)

    async def scenario() -> None:
        parts.open()
        assert await parts.dispatch.next_assignment("w9", None) is None  # not a worker of ours
        await parts.submit("t1")
        a = await parts.dispatch.next_assignment("w1", None)
        assert a is not None and a.task.id == "t1" and a.time_limit_s == 600
        assert parts.pool.running == {"w1": "t1"} and a.session_id in parts.pool.session_started
        stale = Event(task_id="t1", type=EventType.agent_message, session_id="s-old")
        mine = Event(task_id="t1", type=EventType.agent_message, session_id=a.session_id)
        assert await parts.dispatch.ingest([stale, mine]) == 1
        state = {"turns": 2}
        assert not await parts.dispatch.checkpoint("t1", "s-old", state, b"ws")
        assert await parts.dispatch.checkpoint("t1", a.session_id, state, b"ws")
        ref = parts.sched.tasks["t1"].workspace_ref
        assert ref is not None and parts.store.get(ref) == b"ws"
        result = SessionResult(
            task_id="t1",
            session_id=a.session_id,
            attempt=a.attempt,
            worker="w1",
            status="succeeded",
            outcome=SessionOutcome(status="finished", summary="done"),
            diff="+x\n",
            changed_files=["x"],
        )
        waiting = asyncio.create_task(parts.dispatch.next_assignment("w1", result))
        await asyncio.sleep(0.1)
        assert not waiting.done()  # nothing queued: the worker waits
        started = time.monotonic()
        await parts.submit("t2")
        nxt = await asyncio.wait_for(waiting, 5)
        assert nxt is not None and nxt.task.id == "t2"
        assert time.monotonic() - started < 5  # woken by the submit, not the 30 s re-check
        await parts.dispatch.settle()
        parts.pool.stopping = True
        assert await parts.dispatch.assign("w1") is None
        for task in parts.background:
            task.cancel()

    asyncio.run(scenario())
    record = parts.sched.tasks["t1"]
    assert record.state == TaskState.succeeded and record.summary == "done"
    events = asyncio.run(parts.journal.task_events("t1"))
    assert [e.seq for e in events] == list(range(len(events)))  # numbered per task, in order
    saved = next(e for e in events if e.type == EventType.artifact_saved)
    assert parts.store.get(saved.payload["ref"]) == b"+x\n"
    assert saved.payload["changed_files"] == ["x"]
    checkpoint = next(e for e in events if e.type == EventType.session_checkpointed)
    assert checkpoint.payload["turns"] == 2 and checkpoint.payload["bytes"] == 2
    parts.log.close()


def test_a_worker_gets_its_next_task_while_its_last_result_is_still_being_taken(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import actors.artifacts as art

    parts = Parts(tmp_path)
    slow_store = art.store_result

    def store_result(store: ArtifactStore, result: SessionResult) -> dict[str, str]:
        time.sleep(0.5)  # a big workspace archive on a slow disk
        return slow_store(store, result)

    monkeypatch.setattr(art, "store_result", store_result)

    def done(task_id: str, session_id: str) -> SessionResult:
        return SessionResult(
            task_id=task_id,
            session_id=session_id,
            attempt=1,
            worker="w1",
            status="succeeded",
            outcome=SessionOutcome(status="finished", summary="done"),
            diff="+x\n",
        )

    async def scenario() -> None:
        parts.open()
        for task_id in ("t1", "t2", "t3"):
            await parts.submit(task_id)
        first = await parts.dispatch.next_assignment("w1", None)
        assert first is not None and first.task.id == "t1"
        started = time.monotonic()
        second = await parts.dispatch.next_assignment("w1", done("t1", first.session_id))
        assert time.monotonic() - started < 0.4  # not held by the store of t1's artifacts
        assert second is not None and second.task.id == "t2"
        assert parts.sched.tasks["t1"].state == TaskState.running  # its verdict comes later
        assert parts.pool.running == {"w1": "t2"}
        # One worker: at most one result is taken at once, so the next report waits for it.
        started = time.monotonic()
        third = await parts.dispatch.next_assignment("w1", done("t2", second.session_id))
        assert third is not None and third.task.id == "t3"
        assert time.monotonic() - started >= 0.3
        assert parts.sched.tasks["t1"].state == TaskState.succeeded
        await parts.dispatch.settle()
        assert parts.sched.tasks["t2"].state == TaskState.succeeded
        assert parts.pool.running == {"w1": "t3"}  # taking t2 late did not free the worker of t3
        for task in parts.background:
            task.cancel()

    asyncio.run(scenario())
    events = asyncio.run(parts.journal.task_events("t2"))
    assert [e.type for e in events][-2:] == [EventType.artifact_saved, EventType.task_succeeded]
    parts.log.close()


def test_a_session_finishing_behind_stays_the_workers_until_its_result_comes(
    tmp_path: Path,
) -> None:
    parts = Parts(tmp_path)

    def done(task_id: str, session_id: str) -> SessionResult:
        outcome = SessionOutcome(status="finished", summary="done")
        return SessionResult(
            task_id=task_id, session_id=session_id, attempt=1, worker="w1", status="succeeded",
            outcome=outcome,
        )  # fmt: skip

    async def scenario() -> None:
        parts.open()
        for task_id in ("t1", "t2", "t3"):
            await parts.submit(task_id)
        first = await parts.dispatch.next_assignment("w1", None)
        assert first is not None
        # t1's live part is over: the worker asks for more while t1 finishes behind
        second = await parts.dispatch.next_assignment("w1", None, ["t1", first.session_id])
        assert second is not None and second.task.id == "t2"
        assert parts.pool.running == {"w1": "t2"}
        assert parts.pool.finishing == {"w1": ("t1", first.session_id)}
        assert parts.pool.worker_of("t1") == "w1"  # a cancel still reaches its finish
        await parts.dispatch.report_result("w1", done("t1", first.session_id))
        await parts.dispatch.settle()
        assert parts.pool.finishing == {} and parts.pool.running == {"w1": "t2"}
        assert parts.sched.tasks["t1"].state == TaskState.succeeded
        # A report that overtakes the call naming its session finishing leaves nothing held.
        await parts.dispatch.report_result("w1", done("t2", second.session_id))
        third = await parts.dispatch.next_assignment("w1", None, ["t2", second.session_id])
        assert third is not None and third.task.id == "t3"
        assert parts.pool.finishing == {} and parts.pool.reported == {}
        await parts.dispatch.settle()
        assert parts.sched.tasks["t2"].state == TaskState.succeeded
        # A worker of another life reports nothing.
        await parts.dispatch.report_result("w7", done("t3", third.session_id))
        await parts.dispatch.settle()
        assert parts.sched.tasks["t3"].state == TaskState.running
        for task in parts.background:
            task.cancel()

    asyncio.run(scenario())
    parts.log.close()


def test_a_retry_backoff_wakes_the_workers_when_it_ends(tmp_path: Path) -> None:
    parts = Parts(tmp_path)

    async def scenario() -> None:
        parts.open()
        await parts.submit("t")
        a = await parts.dispatch.next_assignment("w1", None)
        assert a is not None
        retry = Event(
            task_id="t",
            type=EventType.task_retried,
            payload={"next_attempt": 2, "not_before": time.time() + 0.2},
        )
        await parts.journal.record([retry])
        parts.pool.running.clear()
        started = time.monotonic()
        again = await asyncio.wait_for(parts.dispatch.assign("w1"), 5)
        assert again is not None and again.attempt == 2
        assert 0.15 < time.monotonic() - started < 5  # after the backoff, not the re-check

    asyncio.run(scenario())
    parts.log.close()


def test_worker_placement_follows_the_settings_and_its_pool() -> None:
    settings = FleetSettings(
        worker_resources={"docker": 1}, pool_resources={"gpu": {"gpu": 1}}, worker_num_cpus=0
    )
    options = worker_options(settings, PoolSpec(name="gpu"))
    assert options == {
        "num_cpus": 0.001,  # SPREAD places only actors that ask for something
        "resources": {"docker": 1, "gpu": 1},
        "scheduling_strategy": "SPREAD",
    }
    default = worker_options(settings.model_copy(update={"worker_strategy": "DEFAULT"}), PoolSpec())
    assert default["num_cpus"] == 0 and default["resources"] == {"docker": 1}
    config = FleetConfig.model_validate({"environments": {"py": {}}})
    assert [e.name for e in prewarm_environments(config, PoolSpec(environments=["py", "x"]))] == [
        "py"
    ]


def test_the_pool_forgets_a_lost_worker_and_names_new_ids_per_life() -> None:
    pool = WorkerPool(life=".ab12")
    assert [pool.new_id(), pool.new_id()] == ["w1.ab12", "w2.ab12"]
    pool.add("w1.ab12", object(), PoolSpec(name="p"), 1.0)
    pool.running["w1.ab12"] = "t"
    pool.finishing["w1.ab12"] = ("t0", "s-0")  # its last session, finishing behind "t"
    assert pool.worker_of("t") == "w1.ab12" and pool.worker_of("t0") == "w1.ab12"
    lost_pool, tasks = pool.remove("w1.ab12")
    assert lost_pool is not None and lost_pool.name == "p" and tasks == ["t0", "t"]
    assert pool.worker_of("t") is None and pool.worker_of("t0") is None
    assert pool.remove("w1.ab12") == (None, [])
