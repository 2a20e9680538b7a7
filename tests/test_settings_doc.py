"""One settings model: the README's table matches it, the environment is read in one place,
per-task values resolve in one order, and the batch driver builds settings one way."""

import re
from pathlib import Path

import pytest

from core.records import TaskRecord
from core.settings import FleetSettings, ServeSettings, resolve, settings_rows, settings_table
from core.specs import TaskSpec
from fleet.driver import ExitCode, build_settings

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `([^`]+)` \| `([^`]+)` \| `([^`]*)` \| (.*) \|$")


def readme_rows() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("<!-- settings-table")
    end = text.index("<!-- /settings-table -->")
    rows = {}
    for line in text[start:end].splitlines():
        found = ROW.match(line)
        if found:
            assert found[1] not in rows, f"{found[1]} appears twice"
            rows[found[1]] = (found[2], found[3])
    return rows


def test_every_setting_is_in_the_readme_table_with_its_variable_and_default() -> None:
    documented = readme_rows()
    fields = {name: (env, default) for name, env, default, _ in settings_rows()}
    missing = sorted(set(fields) - set(documented))
    assert not missing, f"not in the README table (run python -m core.settings --write): {missing}"
    unknown = sorted(set(documented) - set(fields))
    assert not unknown, f"README rows naming no setting: {unknown}"
    for name, (env, default) in fields.items():
        assert documented[name] == (env, default), name
    assert settings_table() in (ROOT / "README.md").read_text()


def test_the_table_covers_both_models_and_every_field_has_a_description() -> None:
    names = {row[0] for row in settings_rows()}
    assert set(FleetSettings.model_fields) - {"api"} <= names
    assert {f"api.{n}" for n in ServeSettings.model_fields} <= names
    assert all(description for *_, description in settings_rows())


def test_variables_are_the_ones_people_set_today(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "FLEET_API_TOKEN": "client-token",
        "FLEET_ADMIN_TOKEN": "admin-token",
        "FLEET_API_MAX_PAGE": "5",
        "FLEET_PRICES": "/etc/prices.json",
        "FLEET_SECRETS_DIR": "/run/secrets",
        "FLEET_DEBIAN_MIRROR": "http://mirror.example/debian",
        "FLEET_BASE_SOURCE": "debootstrap",
        "FLEET_RAY_LOGS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    settings = FleetSettings()
    assert settings.api.resolve_token() == "client-token"
    assert settings.api.resolve_admin_token() == "admin-token"
    assert settings.api.max_page == 5
    assert (settings.prices, settings.secrets_dir) == ("/etc/prices.json", "/run/secrets")
    assert settings.debian_mirror == "http://mirror.example/debian"
    assert settings.base_source == "debootstrap" and settings.ray_logs is True
    env = {name: env for name, env, *_ in settings_rows()}
    assert env["api.admin_token"] == "FLEET_ADMIN_TOKEN" and env["prices"] == "FLEET_PRICES"


def test_only_the_settings_module_reads_the_environment() -> None:
    allowed = {
        "core/settings.py",
        "sandboxes/exec_agent.py",  # inside the container, without the fleet's packages
        "sandboxes/local.py",  # passes the worker's environment on, through an allow-list
    }
    readers = set()
    for package in ("core", "harness", "sandboxes", "actors", "serve", "fleet"):
        for path in (ROOT / package).rglob("*.py"):
            if re.search(r"os\.environ|os\.getenv", path.read_text()):
                readers.add(str(path.relative_to(ROOT)))
    assert readers <= allowed, sorted(readers - allowed)


def test_per_task_values_resolve_task_then_plan_then_settings() -> None:
    settings = FleetSettings(default_time_limit_s=100, default_max_attempts=3)
    bare = TaskRecord(id="a", spec=TaskSpec(id="a", prompt="x"))
    assert resolve("time_limit_s", bare.spec, {}, settings) == 100
    assert resolve("time_limit_s", bare.spec, {"time_limit_s": 40}, settings) == 40
    own = TaskSpec(id="b", prompt="x", time_limit_s=7, max_attempts=1)
    assert resolve("time_limit_s", own, {"time_limit_s": 40}, settings) == 7
    assert resolve("max_attempts", own, {"max_attempts": 5}, settings) == 1
    assert resolve("max_attempts", bare.spec, {}, settings) == 3
    # Between the plan and the setting: e.g. the agent's own max_turns.
    assert resolve("max_turns", bare.spec, {}, settings, None, 12) == 12
    assert resolve("max_turns", bare.spec, {}, settings, None) == settings.default_max_turns
    assert resolve("stall_timeout_s", bare.spec, {}, settings) == settings.stall_timeout_s


def test_one_default_event_log_made_absolute_where_settings_are_made(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FLEET_EVENTS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert FleetSettings().events_dir == str(tmp_path / "fleet-events")
    assert build_settings(events_dir=None).events_dir == str(tmp_path / "fleet-events")
    monkeypatch.chdir(tmp_path)
    assert build_settings(events_dir="ev").events_dir == str(tmp_path / "ev")
    assert build_settings(events_dir="s3://b/ev").events_dir == "s3://b/ev"
    assert FleetSettings(wal_dir="~/wal").wal_dir == str(tmp_path / "wal")


def test_build_settings_names_the_bad_option_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^setting workers: "):
        build_settings(workers=0)
    with pytest.raises(ValueError, match=r"^--worker-resources: not JSON"):
        build_settings(worker_resources="{")
    settings = build_settings(workers=3, pools='[{"name": "p", "workers": 2}]', sandbox=None)
    assert settings.workers == 3 and settings.pool_specs()[0].name == "p"


def test_exit_codes_are_the_documented_ones() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 130]
    readme = (ROOT / "README.md").read_text()
    assert "`fleet.driver.ExitCode`" in readme
