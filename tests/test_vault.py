"""The vault (core/vault.py) without Ray: where secrets come from and are kept, who may
change them, the redactor, sealed inline environments, and a session that is given a key
and an environment secret (local sandbox, the fake OpenAI server): the values reach the
model's Authorization header and the command's environment, and nothing the session
leaves behind (events, checkpoints, result, what the model was sent) holds them."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from actors.commands import Commands
from actors.scheduler import Scheduler, TaskRejected
from actors.session import SessionRunner
from core.errors import InputError
from core.events import Event, EventType
from core.settings import FleetSettings
from core.specs import AgentSpec, EnvironmentSpec, FleetConfig, SecretRef, SourceSpec, TaskSpec
from core.vault import (
    Redactor,
    SecretConflict,
    SecretDenied,
    UnknownSecret,
    Vault,
    needed_secrets,
)
from sources.base import SourceConfigError
from sources.registry import secret_options
from tests.fake_openai import FakeOpenAI, Reply
from tests.fake_openai import fake_server_fixture as fake_server_fixture
from tests.test_harness_support import assignment, factory, run_session, settings

VALUE = "tok-5a1f3c9e-value"


# -- where values come from and are kept ---------------------------------------------------
def test_config_secrets_are_read_from_their_variable_or_file_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEAD_TOKEN", "from-the-env ")
    (tmp_path / "key").write_text("from-a-file\n")
    v = Vault(
        tmp_path / "vault",
        FleetConfig.model_validate(
            {
                "secrets": {
                    "ENV_ONE": {"env": "HEAD_TOKEN"},
                    "FILE_ONE": {"file": str(tmp_path / "key")},
                }
            }
        ).secrets,
    )
    assert v.value("ENV_ONE") == "from-the-env" and v.value("FILE_ONE") == "from-a-file"
    (tmp_path / "key").write_text("rotated-at-the-source")
    assert v.value("FILE_ONE") == "rotated-at-the-source"
    monkeypatch.delenv("HEAD_TOKEN")
    with pytest.raises(UnknownSecret, match="HEAD_TOKEN is not set"):
        v.value("ENV_ONE")
    with pytest.raises(UnknownSecret, match="no secret 'NOPE'"):
        v.value("NOPE")
    assert [(i.name, i.scope, i.origin) for i in v.list()] == [
        ("ENV_ONE", "operator", "config"),
        ("FILE_ONE", "operator", "config"),
    ]
    assert not (tmp_path / "vault").exists()  # reading makes no files


def test_a_config_secret_names_exactly_one_place() -> None:
    for bad in ({}, {"env": "A", "file": "/x"}, {"env": "../x"}):
        with pytest.raises(ValueError):
            FleetConfig.model_validate({"secrets": {"S": bad}})
    with pytest.raises(ValueError, match="starting with a letter"):
        FleetConfig.model_validate({"secrets": {"_S": {"env": "A"}}})


def test_files_of_the_secrets_directory_are_operator_secrets(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "OPENAI_API_KEY").write_text("sk-from-dir\n")
    (tmp_path / "outside").write_text("not-yours")
    (secrets / "LINKED").symlink_to(tmp_path / "outside")
    v = Vault(tmp_path / "vault", {}, str(secrets))
    assert v.value("OPENAI_API_KEY") == "sk-from-dir"
    assert v.origin("LINKED") is None  # a link out of the directory is not followed
    assert [(i.name, i.origin) for i in v.list()] == [("OPENAI_API_KEY", "secrets_dir")]
    with pytest.raises(SecretConflict, match="secrets directory"):
        v.put("OPENAI_API_KEY", "other-value", scope="operator")


def test_stored_secrets_are_0600_files_that_survive_a_restart_with_their_times(
    tmp_path: Path,
) -> None:
    clock = iter([datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 2, tzinfo=UTC)])
    v = Vault(tmp_path / "vault", clock=lambda: next(clock))
    made = v.put("DEPLOY_TOKEN", VALUE, scope="operator", create=True)
    assert (made.scope, made.origin, made.rotated_at) == ("operator", "stored", None)
    directory = tmp_path / "vault"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "DEPLOY_TOKEN").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "index.json").stat().st_mode) == 0o600
    assert VALUE not in (directory / "index.json").read_text()
    rotated = v.put("DEPLOY_TOKEN", VALUE + "-2", scope="operator")
    assert rotated.rotated_at == datetime(2030, 1, 2, tzinfo=UTC)
    assert rotated.created_at == datetime(2030, 1, 1, tzinfo=UTC)

    again = Vault(directory)  # a supervisor restart
    assert again.value("DEPLOY_TOKEN") == VALUE + "-2"
    assert again.info("DEPLOY_TOKEN") == rotated
    shown = json.dumps([i.model_dump(mode="json") for i in again.list()])
    assert VALUE not in shown and "DEPLOY_TOKEN" in shown


def test_who_may_change_what(tmp_path: Path) -> None:
    v = Vault(
        tmp_path / "vault", FleetConfig.model_validate({"secrets": {"CFG": {"env": "X"}}}).secrets
    )
    v.put("OPS", VALUE, scope="operator")
    with pytest.raises(SecretDenied):
        v.put("OPS", "client-value", scope="client")
    with pytest.raises(SecretDenied):
        v.put("CFG", "client-value", scope="client")
    with pytest.raises(SecretConflict, match="fleet's config"):
        v.put("CFG", "operator-value", scope="operator")
    with pytest.raises(SecretConflict, match="exists"):
        v.put("OPS", VALUE, scope="operator", create=True)
    v.put("MINE", "client-value", scope="client")
    v.put("MINE", "client-value-2", scope="client")  # a client rotates its own
    v.put("MINE", "operator-set", scope="operator")  # the operator may too; scope stays
    assert v.scope("MINE") == "client"
    assert [i.name for i in v.list("client")] == ["MINE"]
    for name, value in (("_fleet", VALUE), ("1abc", VALUE), ("a/b", VALUE), ("SHORT", "abc")):
        with pytest.raises(InputError) as info:
            v.put(name, value, scope="operator")
        assert value not in str(info.value) or value == VALUE


def test_a_vault_inside_the_events_directory_is_refused(tmp_path: Path) -> None:
    s = FleetSettings(events_dir=str(tmp_path), vault_dir=str(tmp_path / "v"))
    with pytest.raises(InputError, match="inside the events directory"):
        Vault.of(s, {})
    assert Vault.of(s.model_copy(update={"vault_dir": str(tmp_path.parent / "v")}), {})


# -- redaction ------------------------------------------------------------------------------
def test_the_redactor_replaces_values_longest_first_in_text_bytes_and_objects() -> None:
    r = Redactor({"LONG": "abcd-efgh", "SHORT": "abcd", "TINY": "ab"})
    assert len(r) == 2  # values under 4 characters are never redacted (nor handed out)
    assert r.text("x abcd-efgh y abcd z ab") == "x [secret:LONG] y [secret:SHORT] z ab"
    assert r.data(b"<abcd-efgh>") == b"<[secret:LONG]>"
    obj = {"out": ["abcd", {"abcd": 1}], "n": 3, "none": None}
    assert r.obj(obj) == {"out": ["[secret:SHORT]", {"[secret:SHORT]": 1}], "n": 3, "none": None}
    assert obj["out"][0] == "abcd"  # a copy
    event = Event(task_id="t", type=EventType.agent_tool_result, payload={"output": "abcd"})
    assert r.events([event])[0] is event and event.payload["output"] == "[secret:SHORT]"
    assert not Redactor() and Redactor().text("abcd") == "abcd"


def test_the_vaults_redactor_knows_old_values_after_a_rotation(tmp_path: Path) -> None:
    v = Vault(tmp_path / "vault")
    v.put("TOKEN", "first-value", scope="operator")
    assert v.redactor().text("first-value") == "[secret:TOKEN]"
    v.put("TOKEN", "second-value", scope="operator")
    assert v.redactor().text("first-value second-value") == "[secret:TOKEN] [secret:TOKEN]"
    restarted = Vault(tmp_path / "vault")  # knows the stored value from the start
    assert restarted.redactor().text("second-value") == "[secret:TOKEN]"


# -- inline environments, the scheduler -----------------------------------------------------
def test_an_inline_environments_plain_values_are_kept_by_reference(tmp_path: Path) -> None:
    v = Vault(tmp_path / "vault")
    sched = Scheduler(FleetConfig(), FleetSettings(events_dir=str(tmp_path / "events")))
    sched.vault = v
    recorded: list[Event] = []

    async def record(events: list[Event]) -> None:
        recorded.extend(events)
        for event in events:
            sched.apply(event)

    commands = Commands(sched, record, link=None)  # type: ignore[arg-type]
    env = {"DEPLOY_TOKEN": "s3cret-value", "DEBUG": "1"}
    tasks = [{"id": f"t{n}", "prompt": "x", "environment": {"env": env}} for n in range(2)]
    import asyncio

    out = asyncio.run(commands.submit(tasks, "b"))
    assert out["accepted"] == ["t0", "t1"]
    text = json.dumps([e.to_row() for e in recorded], default=str)
    assert "s3cret-value" not in text and "DEPLOY_TOKEN" in text
    refs = sched.tasks["t0"].spec.environment.env  # type: ignore[union-attr]
    assert all(isinstance(ref, SecretRef) for ref in refs.values())
    assert refs == sched.tasks["t1"].spec.environment.env  # type: ignore[union-attr]
    assert v.list() == []  # the fleet's own: not listed
    assert v.redactor().text("s3cret-value 1") == "s3cret-value 1"  # configuration: kept
    assignment_, _ = sched.assign("w")  # type: ignore[misc]
    assert assignment_ is not None
    assert assignment_.environment_secrets() == env  # exactly as given ("1" too)


def test_sessions_get_the_values_they_name_and_unknown_names_fail_clearly(tmp_path: Path) -> None:
    config = FleetConfig(
        agents={"keyed": AgentSpec(api_key_secret="MODEL_KEY")},
        environments={
            "secure": EnvironmentSpec(env={"API_TOKEN": SecretRef(secret="ENV_TOKEN")}),
            "broken": EnvironmentSpec(env={"X": SecretRef(secret="MISSING")}),
        },
    )
    v = Vault(tmp_path / "vault")
    v.put("MODEL_KEY", "sk-model-key", scope="operator")
    v.put("ENV_TOKEN", VALUE, scope="operator")
    v.put("UNUSED", "not-for-this-one", scope="operator")
    sched = Scheduler(config, FleetSettings(events_dir=str(tmp_path / "events")))
    sched.vault = v
    sched.apply(sched.submit(TaskSpec(id="ok", prompt="x", agent="keyed", environment="secure")))
    a, event = sched.assign("w")  # type: ignore[misc]
    assert a is not None and set(a.secrets) == {"MODEL_KEY", "ENV_TOKEN"}
    assert a.api_key(a.agent) == "sk-model-key"
    assert a.environment_secrets() == {"API_TOKEN": VALUE}
    shown = repr(a) + a.model_dump_json() + json.dumps(event.to_row(), default=str)
    assert VALUE not in shown and "sk-model-key" not in shown
    assert needed_secrets(a.agent, a.environment, None) == {"MODEL_KEY", "ENV_TOKEN"}

    sched.apply(sched.submit(TaskSpec(id="bad", prompt="x", environment="broken")))
    none, failed = sched.assign("w")  # type: ignore[misc]
    assert none is None and failed.type == EventType.task_failed
    assert failed.payload["reason"] == "cannot run: no secret 'MISSING'"
    inline = {"env": {"X": {"secret": "NOT_THERE"}}}
    with pytest.raises(TaskRejected, match="unknown secret 'NOT_THERE'"):
        sched.submit(TaskSpec.model_validate({"id": "i", "prompt": "x", "environment": inline}))


def test_a_source_names_a_secret_by_where_the_vault_keeps_it(tmp_path: Path) -> None:
    v = Vault(
        tmp_path / "vault",
        FleetConfig.model_validate({"secrets": {"DSN": {"env": "TICKETS_DSN"}}}).secrets,
    )
    v.put("GH_TOKEN", VALUE, scope="operator")
    spec = SourceSpec(name="s", kind="sql", options={"dsn_secret": "DSN", "table": "t"})
    assert secret_options(spec, v).options == {"dsn_env": "TICKETS_DSN", "table": "t"}
    gh = SourceSpec(name="g", kind="github", options={"token_secret": "GH_TOKEN"})
    assert secret_options(gh, v).options == {"token_file": str(tmp_path / "vault" / "GH_TOKEN")}
    with pytest.raises(SourceConfigError, match=r"options\.token_secret: no secret 'NOPE'"):
        secret_options(SourceSpec(name="g", kind="github", options={"token_secret": "NOPE"}), v)


# -- a session --------------------------------------------------------------------------
def test_a_session_gets_its_key_and_variables_and_leaves_no_value_behind(
    fake_server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    fake_server.queue(
        Reply(tool_calls=[("c1", "shell", json.dumps({"command": "echo token=$API_TOKEN"}))]),
        Reply(tool_calls=[("c2", "shell", json.dumps({"command": "echo $API_TOKEN > t.txt"}))]),
        Reply(tool_calls=[("c3", "read_file", json.dumps({"path": "t.txt"}))]),
        Reply(text=f"I saw {VALUE}", tool_calls=[("c4", "finish", '{"summary": "done"}')]),
    )
    saved: list[dict[str, Any]] = []

    async def sink(task_id: str, session_id: str, state: dict, ws: bytes, base: Any) -> None:
        saved.append(state)

    agent = AgentSpec(model="gpt-test", base_url=fake_server.base_url, api_key_secret="MODEL_KEY")
    a = assignment(
        agent,
        gate='test "$API_TOKEN" = ' + VALUE,
        secrets={"MODEL_KEY": SecretStr("sk-model-key"), "ENV_TOKEN": SecretStr(VALUE)},
    )
    a.environment = EnvironmentSpec(env={"API_TOKEN": SecretRef(secret="ENV_TOKEN")})
    runner = SessionRunner(settings(checkpoint_interval_s=1e-6), "w1", factory(), checkpoints=sink)
    result, events = run_session(runner, a)
    assert result.status == "succeeded", result.reason  # the gate saw the value
    auth = {r.headers.get("authorization") for r in fake_server.requests}
    assert auth == {"Bearer sk-model-key"}
    sent = json.dumps([r.body for r in fake_server.requests])
    assert "token=[secret:ENV_TOKEN]" in sent and VALUE not in sent  # the model never saw it
    kept = json.dumps(
        [
            [e.to_row() for e in events],
            saved,
            result.model_dump(mode="json", exclude={"workspace"}),
        ],
        default=str,
    )
    assert VALUE not in kept and "sk-model-key" not in kept
    assert "[secret:ENV_TOKEN]" in kept  # the model's own message, redacted
    started = next(e for e in events if e.type == EventType.session_started)
    assert sorted(started.payload["secrets"]) == ["ENV_TOKEN", "MODEL_KEY"]  # names only
    assert saved, "no checkpoint was taken"


def test_a_plain_variable_in_the_spec_stays_out_of_the_container_config_not_a_secret() -> None:
    env = EnvironmentSpec(env={"PLAIN": "p", "TOKEN": {"secret": "S"}})  # type: ignore[dict-item]
    assert env.plain_env() == {"PLAIN": "p"} and env.secret_env() == {"TOKEN": "S"}
    assert json.loads(env.model_dump_json())["env"]["TOKEN"] == {"secret": "S"}
    with pytest.raises(ValueError):
        EnvironmentSpec.model_validate({"env": {"BAD NAME": {"secret": "S"}}})
    with pytest.raises(ValueError):
        EnvironmentSpec.model_validate({"env": {"T": {"secret": "../x"}}})


def test_times_are_shown_not_values(tmp_path: Path) -> None:
    v = Vault(tmp_path / "vault")
    info = v.put("ABCD", VALUE, scope="client")
    assert info.created_at is not None and datetime.now(UTC) - info.created_at < timedelta(60)
    assert VALUE not in info.model_dump_json()


def test_an_agent_cannot_reach_a_secret_through_a_follow_up(tmp_path: Path) -> None:
    from core.records import SessionOutcome, SessionResult

    v = Vault(tmp_path / "vault")
    v.put("OPS", VALUE, scope="operator")
    sched = Scheduler(FleetConfig(), FleetSettings(events_dir=str(tmp_path / "events")))
    sched.vault = v
    sched.apply(sched.submit(TaskSpec(id="p", prompt="x")))
    asked = {"prompt": "leak", "environment": {"env": {"X": {"secret": "OPS"}}}}
    outcome = SessionOutcome(status="finished", followups=[asked, {"prompt": "fine"}])
    result = SessionResult(
        task_id="p", session_id="s", attempt=1, worker="w", status="succeeded", outcome=outcome
    )
    events = sched._followups(sched.tasks["p"], result)
    refused, made = events[0], events[1]
    assert "a follow-up may not name secrets" in refused.payload["error"]
    assert made.payload["child"] == "p.f2"


def test_the_readme_example_of_secrets_is_a_valid_config() -> None:
    import re

    import yaml

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "secrets:" in b)
    config = FleetConfig.model_validate(yaml.safe_load(block))
    assert config.agents["coder"].api_key_secret == "MODEL_KEY"
    assert config.environments["deploy"].secret_env() == {"API_TOKEN": "DEPLOY_TOKEN"}
    assert set(config.secrets) == {"MODEL_KEY", "DEPLOY_TOKEN"}
