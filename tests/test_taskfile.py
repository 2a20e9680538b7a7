import json

import pytest

from core.specs import FleetConfig
from core.taskfile import InputError, load_config, load_tasks, parse_tasks


def test_bad_lines_are_reported_with_line_and_field_and_do_not_sink_the_batch():
    lines = [
        json.dumps({"id": "ok1", "prompt": "fine"}),
        "{not json",
        json.dumps({"id": "nop"}),
        json.dumps({"id": "typo", "prompt": "x", "priorty": 3}),
        "",
        "# a comment",
        json.dumps({"id": "who", "prompt": "x", "agent": "nobody"}),
        json.dumps({"id": "ok1", "prompt": "again"}),
        json.dumps({"id": "ok2", "prompt": "fine too", "max_attempts": 0}),
        json.dumps({"id": "ok3", "prompt": "fine"}),
        "[1, 2]",
    ]
    tasks, errors = parse_tasks("\n".join(lines), "batch.jsonl")
    assert [t.id for t in tasks] == ["ok1", "ok3"]
    found = {(e.line, e.field) for e in errors}
    assert (2, "") in found
    assert (3, "prompt") in found
    assert (4, "priorty") in found
    assert (7, "agent") in found
    assert (8, "id") in found
    assert (9, "max_attempts") in found
    assert (11, "") in found
    text = {e.line: str(e) for e in errors}
    assert text[4] == "batch.jsonl:4: priorty: unknown field"
    assert "unknown agent 'nobody'" in text[7]
    assert "bad JSON" in text[2]


def test_known_agent_from_config_is_accepted():
    config = FleetConfig.model_validate({"agents": {"coder": {}}})
    tasks, errors = parse_tasks('{"prompt": "x", "agent": "coder"}', "f", config)
    assert not errors and tasks[0].agent == "coder"


def test_missing_task_file_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="task file not found"):
        load_tasks(tmp_path / "nope.jsonl")


def test_config_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text("agents:\n  coder:\n    max_turns: 0\n")
    with pytest.raises(InputError, match=r"fleet.yaml: agents.coder.max_turns"):
        load_config(path)
    path.write_text("agents: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(path)


def test_demo_batch_is_valid_and_sized():
    from importlib import resources

    text = (resources.files("fleet") / "demo" / "tasks.jsonl").read_text()
    tasks, errors = parse_tasks(text, "demo")
    assert not errors
    assert 8 <= len(tasks) <= 20
    assert all(t.script for t in tasks)
