"""The status view as a plain function: no Ray, a fixed clock."""

from actors.scheduler import Scheduler
from actors.status import fleet_status
from core.events import Event, EventType
from core.settings import FleetSettings
from core.specs import FleetConfig, TaskSpec


def test_status_lists_running_sessions_and_what_waits_on_a_person():
    settings = FleetSettings(name="f", sandbox="docker")
    sched = Scheduler(FleetConfig(), settings)
    for task_id in ("run", "ask", "wait"):
        sched.apply(sched.submit(TaskSpec(id=task_id, prompt="x")))
    for worker, task_id in (("w1", "run"), ("w2", "ask")):
        assignment, event = sched.assign(worker)
        assert assignment is not None and assignment.task.id == task_id
        sched.apply(event)
    asking = {"call_id": "c1", "tool": "shell", "args": {}}
    sched.apply(Event(task_id="ask", type=EventType.approval_requested, payload=asking))
    now = sched.tasks["run"].started_at.timestamp() + 7.5
    view = fleet_status(sched, {"w1": "run", "w2": "ask"}, 2, settings, now - 60, now)
    assert view["sandbox"] == "docker" and view["workers"] == 2 and view["uptime_s"] == 60
    assert [(r["task_id"], r["worker"]) for r in view["running"]] == [("run", "w1"), ("ask", "w2")]
    assert view["running"][0]["age_s"] == 7.5
    assert view["queued"] == ["wait"]
    assert [(b["task_id"], b["call_id"]) for b in view["blocked"]] == [("ask", "c1")]
    assert view["counts"]["running"] == 2 and view["counts"]["queued"] == 1
