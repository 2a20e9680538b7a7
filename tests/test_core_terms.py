"""Terms defined once in core: terminal events and states, a task's time limit, and the
typed result of a fleet command."""

from core.analytics import TERMINAL
from core.events import TERMINAL_EVENTS, EventType
from core.records import CommandResult
from core.settings import FleetSettings, resolve
from core.specs import TERMINAL_STATES, TaskSpec, TaskState


def test_terminal_states_and_sql_follow_the_terminal_events() -> None:
    assert {TaskState(t.value.removeprefix("task.")) for t in TERMINAL_EVENTS} == TERMINAL_STATES
    assert TaskState.needs_human.terminal and not TaskState.awaiting_review.terminal
    for event in EventType:
        assert (f"'{event.value}'" in TERMINAL) == (event in TERMINAL_EVENTS)


def test_the_time_limit_is_the_tasks_then_the_plans_then_the_default() -> None:
    settings = FleetSettings(default_time_limit_s=600)
    own = TaskSpec(prompt="x", time_limit_s=30)
    plain = TaskSpec(prompt="x")
    assert resolve("time_limit_s", own, {"time_limit_s": 90}, settings) == 30
    assert resolve("time_limit_s", plain, {"time_limit_s": 90}, settings) == 90
    assert resolve("time_limit_s", plain, {}, settings) == 600


def test_a_command_result_is_truthy_only_when_it_was_done() -> None:
    assert CommandResult.done() and CommandResult.done().reason == ""
    refused = CommandResult.refused("task t1 is not running")
    assert not refused and refused.reason == "task t1 is not running"
    assert CommandResult.model_validate(refused.model_dump()) == refused
