"""What an API client may ask for (serve/policy.py) and validation at the door (TaskSpec,
AgentSpec, resolve_api_key, the scheduler's prompt cap): plain functions, no Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from actors.scheduler import Scheduler, TaskRejected
from core.settings import FleetSettings
from core.specs import AgentSpec, EnvironmentSpec, FleetConfig, TaskSpec
from harness.models.base import ModelError
from harness.models.openai_client import resolve_api_key
from serve.policy import (
    CLIENT_AGENT_FIELDS,
    CLIENT_ENVIRONMENT_FIELDS,
    OperatorSpecs,
    PolicyError,
    client_task,
    masked_environment,
    masked_task,
)

BASE_AGENT = AgentSpec(
    model="gpt-operator",
    base_url="http://models.internal/v1",
    api_key_env="OPERATOR_KEY",
    tools=["shell", "read_file", "finish"],
    approvals={"shell": {"ask_if": {"command": "rm "}}},
    handoffs=["docs"],
    max_tokens=10_000,
)
BASE_ENV = EnvironmentSpec(image="op-image", pip=["pytest"], env={"PIP_INDEX": "https://x"})


def operator(**caps: Any) -> OperatorSpecs:
    return OperatorSpecs(
        agents={"default": BASE_AGENT, "docs": AgentSpec(name="docs")},
        environment=BASE_ENV,
        settings=FleetSettings(**caps),
    )


def refused(task: dict[str, Any], **caps: Any) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        client_task(TaskSpec.model_validate({"prompt": "x", **task}), operator(**caps))
    return info.value


# -- inline agents ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "gpt-mine"),
        ("api", "responses"),
        ("base_url", "http://attacker.example/v1"),
        ("api_key_env", "AWS_SECRET_ACCESS_KEY"),
        ("stream", True),
        ("context_window", 2000),
        ("compact_at", 0.5),
    ],
)
def test_a_client_agent_may_not_set_where_or_how_the_model_runs(field: str, value: Any) -> None:
    assert field not in CLIENT_AGENT_FIELDS
    error = refused({"agent": {"name": "mine", field: value}})
    assert error.loc == ("agent", field)
    assert error.message == f"agent.{field}: set by the operator; API clients may not set it"


def test_a_client_agent_is_built_on_the_operators_default() -> None:
    spec = TaskSpec.model_validate(
        {
            "prompt": "x",
            "agent": {
                "name": "mine",
                "instructions": "be brief",
                "tools": ["read_file", "finish"],
                "temperature": 0.2,
                "approvals": {"read_file": "always_ask"},
                "max_tokens": 500,
            },
        }
    )
    agent = client_task(spec, operator()).agent
    assert isinstance(agent, AgentSpec)
    assert (agent.model, agent.base_url, agent.api_key_env) == (
        "gpt-operator",
        "http://models.internal/v1",
        "OPERATOR_KEY",
    )
    assert (agent.name, agent.instructions, agent.tools) == (
        "mine",
        "be brief",
        ["read_file", "finish"],
    )
    assert agent.temperature == 0.2 and agent.max_tokens == 500
    assert agent.approvals == {  # the operator's rule stays; the client's is added
        "shell": {"ask_if": {"command": "rm "}},
        "read_file": "always_ask",
    }
    assert agent.handoffs == ["docs"]
    # Unnamed and with no tools given: the default agent's name and tools.
    bare = client_task(TaskSpec(prompt="x", agent=AgentSpec(instructions="hi")), operator()).agent
    assert isinstance(bare, AgentSpec)
    assert bare.name == "default" and bare.tools == BASE_AGENT.tools


@pytest.mark.parametrize(
    ("agent", "loc", "why"),
    [
        ({"tools": ["shell", "create_followup"]}, ("agent", "tools"), "'create_followup' is not"),
        ({"max_turns": 201}, ("agent", "max_turns"), "201 is above the operator's cap 200"),
        ({"max_tokens": 10_001}, ("agent", "max_tokens"), "default agent's max_tokens"),
        ({"handoffs": ["docs", "admin"]}, ("agent", "handoffs"), "'admin' is not among"),
        ({"name": "docs"}, ("agent", "name"), "'docs' is an operator agent"),
        ({"name": "a b"}, ("agent", "name"), "must match"),
        ({"skills": ["../etc"]}, ("agent", "skills"), "must match"),
        ({"approvals": {"shell": "always_allow"}}, ("agent", "approvals", "shell"), "less often"),
        (
            {"approvals": {"shell": {"ask_if": {"command": "x"}}}},
            ("agent", "approvals", "shell"),
            "",
        ),
        ({"instructions": "x" * 101}, ("agent", "instructions"), "max_prompt_chars is 100"),
    ],
)
def test_a_client_agent_cannot_widen_what_the_operator_allowed(
    agent: dict[str, Any], loc: tuple[str, ...], why: str
) -> None:
    error = refused({"agent": agent}, max_prompt_chars=100)
    assert error.loc == loc and why in error.message


def test_client_approvals_may_only_ask_more() -> None:
    for stricter in ("always_ask", {"ask_if": {"path": "secret"}}):
        spec = TaskSpec.model_validate({"prompt": "x", "agent": {"approvals": {"*": stricter}}})
        agent = client_task(spec, operator()).agent
        assert isinstance(agent, AgentSpec) and agent.approvals["*"] == stricter
    asks_all = OperatorSpecs(
        agents={"default": AgentSpec(approvals={"*": "always_ask"})},
        environment=EnvironmentSpec(),
        settings=FleetSettings(),
    )
    spec = TaskSpec.model_validate(
        {"prompt": "x", "agent": {"approvals": {"shell": "always_allow"}}}
    )
    with pytest.raises(PolicyError, match="ask less often"):
        client_task(spec, asks_all)


# -- inline environments ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image", "attacker/image"),
        ("apt", ["--allow-unauthenticated", "x"]),
        ("pip", ["--index-url=http://attacker.example", "x"]),
        ("network", "full"),
        ("network", ["attacker.example"]),
        ("env", {"LD_PRELOAD": "/x.so"}),
        ("name", "gpu"),
    ],
)
def test_a_client_environment_may_not_set_what_the_operator_decides(field: str, value: Any) -> None:
    assert field not in CLIENT_ENVIRONMENT_FIELDS
    error = refused({"environment": {field: value}})
    assert error.loc == ("environment", field) and "set by the operator" in error.message


@pytest.mark.parametrize(
    ("field", "value", "cap"),
    [
        ("cpus", 4.5, "max_cpus"),
        ("memory_mb", 8193, "max_memory_mb"),
        ("pids", 1025, "max_pids"),
        ("disk_mb", 10_241, "max_disk_mb"),
    ],
)
def test_client_environment_limits_are_capped(field: str, value: float, cap: str) -> None:
    error = refused({"environment": {field: value}})
    assert error.loc == ("environment", field)
    assert f"{value} is above the operator's cap" in error.message and cap in error.message


def test_a_client_environment_is_built_on_the_operators_default() -> None:
    spec = TaskSpec.model_validate(
        {"prompt": "x", "environment": {"memory_mb": 2048, "files": {"seed.txt": "s"}}}
    )
    env = client_task(spec, operator()).environment
    assert isinstance(env, EnvironmentSpec)
    assert (env.name, env.image, env.pip, env.network) == (
        "default",
        "op-image",
        ["pytest"],
        "none",
    )
    assert env.memory_mb == 2048 and env.files == {"seed.txt": "s"} and env.env == BASE_ENV.env
    error = refused({"environment": {"files": {"/etc/cron.d/x": "y"}}})
    assert error.loc == ("environment", "files") and "absolute" in error.message


# -- task fields -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "cap"),
    [
        ("time_limit_s", 3601, "max_time_limit_s"),
        ("stall_timeout_s", 4000, "max_time_limit_s"),
        ("max_attempts", 11, "max_attempts_limit"),
        ("max_turns", 201, "max_turns_limit"),
    ],
)
def test_client_task_limits_are_capped_not_clamped(field: str, value: float, cap: str) -> None:
    error = refused({field: value})
    assert error.loc == (field,) and cap in error.message
    at_cap = {"time_limit_s": 3600, "stall_timeout_s": 3600, "max_attempts": 10, "max_turns": 200}
    spec = TaskSpec.model_validate({"prompt": "x", field: at_cap[field]})
    assert getattr(client_task(spec, operator()), field) == at_cap[field]


def test_repo_is_the_operators() -> None:
    error = refused({"repo": "/home/operator"})
    assert error.loc == ("repo",) and "set by the operator" in error.message
    named = TaskSpec(prompt="x", agent="docs", environment="default")
    assert client_task(named, operator()) == named  # names pass; the scheduler checks them


# -- TaskSpec at the door (every route and the CLI) ------------------------------------
@pytest.mark.parametrize(
    "path", ["../x", "a/../../x", "/etc/passwd", "", ".", "./", "a\0b", "x" * 4097, "..", "a/.."]
)
def test_task_files_stay_inside_the_workspace(path: str) -> None:
    with pytest.raises(ValidationError) as info:
        TaskSpec(prompt="x", files={path: "y"})
    assert info.value.errors()[0]["loc"] == ("files",)


def test_task_files_that_are_fine_and_too_many() -> None:
    ok = {"a.txt": "", "src/pkg/mod.py": "", "..hidden": "", "a..b/c": "", "x" * 4096: ""}
    assert TaskSpec(prompt="x", files=ok).files == ok
    with pytest.raises(ValidationError, match="more than 1000 files"):
        TaskSpec(prompt="x", files={f"f{i}": "" for i in range(1001)})


@pytest.mark.parametrize(
    "bad", ["a b", "tab\there", "new\nline", "caf\u00e9", "bell\x07", "x" * 201]
)
def test_task_ids_are_printable_ascii_without_whitespace(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        TaskSpec(id=bad, prompt="x")
    assert info.value.errors()[0]["loc"] == ("id",)
    assert TaskSpec(id="job-1.2_x:y@z", prompt="x").id == "job-1.2_x:y@z"


@pytest.mark.parametrize("blank", [" ", "\n\t ", "\u3000"])
def test_blank_prompts_are_refused(blank: str) -> None:
    with pytest.raises(ValidationError) as info:
        TaskSpec(prompt=blank)
    [error] = info.value.errors()
    assert error["loc"] == ("prompt",) and "must not be blank" in error["msg"]


def test_the_scheduler_caps_prompts() -> None:
    sched = Scheduler(FleetConfig(), FleetSettings(max_prompt_chars=10))
    assert sched.submit(TaskSpec(prompt="x" * 10)).payload["task"]["prompt"] == "x" * 10
    with pytest.raises(TaskRejected) as info:
        sched.submit(TaskSpec(prompt="x" * 11))
    assert info.value.field == "prompt" and "max_prompt_chars is 10" in info.value.message
    staged = TaskSpec(prompt="x", stages=[{"agent": "default", "prompt": "y" * 11}])
    with pytest.raises(TaskRejected) as info:
        sched.submit(staged)
    assert info.value.field == "stages.0.prompt"


# -- API keys are plain names ----------------------------------------------------------
@pytest.mark.parametrize("bad", ["../x", "keys/openai", "/etc/shadow", "..", "", "1KEY", "A-B"])
def test_api_key_env_is_a_plain_name(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        AgentSpec(api_key_env=bad)
    assert info.value.errors()[0]["loc"] == ("api_key_env",)
    with pytest.raises(ValidationError):  # config files too
        FleetConfig.model_validate({"agents": {"coder": {"api_key_env": bad}}})
    assert AgentSpec(api_key_env="MY_KEY_2").api_key_env == "MY_KEY_2"


def test_resolve_api_key_refuses_paths_and_stays_in_the_secrets_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "VAULT_KEY").write_text("from-vault\n")
    (tmp_path / "outside").write_text("not-yours")
    (secrets / "LINKED").symlink_to(tmp_path / "outside")
    monkeypatch.setenv("FLEET_SECRETS_DIR", str(secrets))
    monkeypatch.delenv("VAULT_KEY", raising=False)
    monkeypatch.delenv("LINKED", raising=False)
    assert resolve_api_key("VAULT_KEY", keyless_ok=False) == "from-vault"
    for bad in ("../outside", "sub/../VAULT_KEY", "/etc/hostname"):
        with pytest.raises(ModelError, match="not a plain variable name"):
            resolve_api_key(bad, keyless_ok=True)
    # A link out of the directory is not followed: no key, and the error shows no value.
    with pytest.raises(ModelError) as info:
        resolve_api_key("LINKED", keyless_ok=False)
    assert "not-yours" not in str(info.value)


def test_env_values_are_masked_for_clients() -> None:
    spec = {"name": "e", "env": {"TOKEN": "s3cret"}, "cpus": 1.0}
    assert masked_environment(spec) == {"name": "e", "env": {"TOKEN": "***"}, "cpus": 1.0}
    assert spec["env"]["TOKEN"] == "s3cret"  # the original is left alone
    task = {"prompt": "x", "environment": spec}
    assert masked_task(task)["environment"]["env"] == {"TOKEN": "***"}
    assert masked_task({"prompt": "x", "environment": "default"})["environment"] == "default"
