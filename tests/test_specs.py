import pytest
from pydantic import ValidationError

from core.events import ARROW_SCHEMA, Event, EventType
from core.records import TaskRecord
from core.specs import AgentSpec, FleetConfig, TaskSpec, TaskState


def test_only_prompt_is_required_and_defaults_apply():
    task = TaskSpec(prompt="do it")
    assert task.id.startswith("t-") and len(task.id) > 4
    assert task.agent == "default" and task.environment == "default"
    assert task.priority == 0 and task.script is None


def test_unknown_field_is_an_error_naming_it():
    with pytest.raises(ValidationError) as info:
        TaskSpec.model_validate({"prompt": "x", "promt": "typo"})
    assert info.value.errors()[0]["loc"] == ("promt",)


@pytest.mark.parametrize("bad", ["a/b", "..", "x\\y"])
def test_task_id_must_be_path_safe(bad):
    with pytest.raises(ValidationError):
        TaskSpec(id=bad, prompt="x")


def test_inline_agent_and_config_resolution():
    config = FleetConfig.model_validate({"agents": {"coder": {"model": "gpt-x", "max_turns": 5}}})
    assert config.agents["coder"].name == "coder"
    assert "default" in config.agents and "default" in config.environments
    task = TaskSpec(prompt="x", agent=AgentSpec(name="inline", model="scripted"))
    assert config.resolve_agent(task).name == "inline"
    assert config.resolve_agent(TaskSpec(prompt="x", agent="coder")).max_turns == 5


def test_terminal_states():
    assert TaskState.succeeded.terminal and TaskState.needs_human.terminal
    assert not TaskState.queued.terminal and not TaskState.running.terminal


def test_event_row_round_trip_and_schema_cover_the_model():
    event = Event(
        task_id="t",
        type=EventType.agent_tool_result,
        seq=3,
        payload={"a": [1, 2]},
        tool="shell",
        exit_code=2,
        duration_ms=1.5,
    )
    row = event.to_row()
    assert row["type"] == "agent.tool_result" and row["payload"] == '{"a":[1,2]}'
    back = Event.from_row(row)
    assert back == event
    assert set(ARROW_SCHEMA.names) == set(Event.model_fields)


def test_event_type_names_are_noun_verb():
    for t in EventType:
        assert t.value == "handoff" or t.value == "usage" or "." in t.value


def test_numbering_an_event_and_touching_a_record_write_what_assignment_would() -> None:
    # Event.number and TaskRecord.touch write into the fields directly: the same as pydantic's
    # own assignment only while neither model validates assignments.
    assert not Event.model_config.get("validate_assignment")
    assert not TaskRecord.model_config.get("validate_assignment")
    event = Event(task_id="t", type=EventType.agent_tool_use, payload={"call_id": "c"})
    assigned = event.model_copy()
    event.number(7)
    assigned.seq = 7
    assert event.model_dump() == assigned.model_dump() and event.seq == 7
    record = TaskRecord(id="t", spec=TaskSpec(id="t", prompt="p"), seq=3)
    record.touch(event)
    assert (record.seq, record.last_event_at, record.last_event) == (7, event.ts, "agent.tool_use")
    earlier = Event(task_id="t", type=EventType.agent_message, seq=5)
    record.touch(earlier)  # an event numbered lower never lowers the record's seq
    assert (record.seq, record.last_event) == (7, "agent.message")
    assert TaskRecord.model_validate(record.model_dump()) == record
