"""Secrets the hard way: a real fleet (Ray; local and Docker sandboxes) runs a task whose agent's
model key is a secret of the config (the fake OpenAI server checks it), whose environment
gives its commands a secret made over HTTP, whose agent echoes it (and its gate too), and
which is answered by a model that repeats both. Then every file the fleet wrote (Parquet, WAL,
artifacts, checkpoints), Ray's logs of this session, every answer of the API and, for
Docker, ``docker inspect`` of the session's container are searched for both values: none
holds either."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.specs import FleetConfig, TaskState
from sandboxes import docker_available
from serve.app import ServeSettings, create_app
from tests.fake_openai import FakeOpenAI, Reply
from tests.fake_openai import fake_server_fixture as fake_server_fixture

pytestmark = pytest.mark.ray

MODEL_KEY = "sk-model-key-0c4d7e29b1"
ENV_VALUE = "env-token-9f8e7d6c5b4a"
TOKEN, ADMIN_TOKEN = "vault-client-token", "vault-admin-token"
SANDBOXES = [
    pytest.param("local", id="local"),
    pytest.param(
        "docker",
        id="docker",
        marks=[
            pytest.mark.docker,
            pytest.mark.skipif(not docker_available(), reason="no Docker engine answers"),
        ],
    ),
]


def hits(root: Path, values: list[str]) -> list[str]:
    """Files under ``root`` whose bytes hold any of ``values`` (as ``path: value``)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            found += [f"{path}: {v[:6]}..." for v in values if v.encode() in data]
    return found


def ray_logs() -> Path:
    """This test session's Ray log directory (not another process's ``session_latest``)."""
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"


class Inspector:
    """Collects ``docker inspect`` of the fleet's containers while the task runs."""

    def __init__(self, fleet_name: str) -> None:
        self.fleet_name = fleet_name
        self.seen: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Inspector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        from sandboxes import images
        from sandboxes.docker import LABEL

        client = images.client()
        try:
            while not self._stop.is_set():
                label = f"{LABEL}.fleet={self.fleet_name}"
                for container in client.api.containers(filters={"label": label}):
                    try:
                        info = client.api.inspect_container(container["Id"])
                    except Exception:
                        continue
                    self.seen[container["Id"]] = json.dumps(info)
                time.sleep(0.2)
        finally:
            client.close()


@pytest.mark.parametrize("sandbox", SANDBOXES)
def test_no_secret_value_is_found_anywhere_after_a_batch(
    sandbox: str, fleet_factory: Any, fake_server: FakeOpenAI, tmp_path: Path
) -> None:
    key_file = tmp_path / "model-key"
    key_file.write_text(MODEL_KEY + "\n")
    config = FleetConfig.model_validate(
        {
            "secrets": {"MODEL_KEY": {"file": str(key_file)}},
            "agents": {
                "coder": {
                    "model": "gpt-test",
                    "base_url": fake_server.base_url,
                    "api_key_secret": "MODEL_KEY",
                }
            },
            "environments": {"secure": {"env": {"API_TOKEN": {"secret": "ENV_TOKEN"}}}},
        }
    )
    shell = 'echo "token=$API_TOKEN"; sleep 2; echo done > done.txt'
    fake_server.queue(
        Reply(tool_calls=[("c1", "shell", json.dumps({"command": shell}))]),
        Reply(
            text=f"The token is {ENV_VALUE} and my key {MODEL_KEY}",
            tool_calls=[("c3", "finish", json.dumps({"summary": f"found {ENV_VALUE}"}))],
        ),
    )
    fleet = fleet_factory(
        config=config,
        sandbox=sandbox,
        workers=1,
        vault_dir=str(tmp_path / "vault"),
        checkpoint_interval_s=0.5,
    )
    app = create_app(fleet, ServeSettings(token=TOKEN, admin_token=ADMIN_TOKEN))
    admin = TestClient(app, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    client = TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"})
    answers: list[str] = []

    def kept(response: Any) -> Any:
        assert response.status_code < 300, response.text
        answers.append(response.text)
        return response

    kept(admin.post("/v1/secrets/ENV_TOKEN", json={"value": ENV_VALUE}))
    task = {
        "id": f"vault-{sandbox}",
        "prompt": "Use the token",
        "agent": "coder",
        "environment": "secure",
        "gate": 'test -n "$API_TOKEN" && echo "gate saw $API_TOKEN"',
    }
    with Inspector(fleet.settings.name) as inspector:
        result = fleet.submit([task])
        assert result.accepted == [task["id"]], result.rejected
        [record] = fleet.wait(result.accepted, timeout_s=180)
    assert record.state == TaskState.succeeded, record.reason

    # The values were used: the key by the model client, the variable by the commands.
    assert {r.headers.get("authorization") for r in fake_server.requests} == {f"Bearer {MODEL_KEY}"}
    sent = json.dumps([r.body for r in fake_server.requests])
    assert "token=[secret:ENV_TOKEN]" in sent and ENV_VALUE not in sent
    assert fleet.file(task["id"], "done.txt") == b"done\n"

    fleet.flush()
    sid = task["id"]
    for path in (
        f"/v1/sessions/{sid}/events",
        f"/v1/sessions/{sid}",
        f"/v1/tasks/{sid}",
        f"/v1/sessions/{sid}/diff",
        "/v1/environments",
        "/v1/agents",
        "/v1/secrets",
        "/v1/fleet/status",
        "/v1/reports/tasks?fresh=true",
        "/v1/reports/overview",
    ):
        kept(admin.get(path))
        kept(client.get(path))
    with client.stream("GET", f"/v1/sessions/{sid}/events/stream") as stream:
        answers.append("".join(stream.iter_lines()))
    events = "\n".join(answers)
    assert "token=[secret:ENV_TOKEN]" in events and "gate saw [secret:ENV_TOKEN]" in events
    assert "[secret:MODEL_KEY]" in events  # the model's reply repeated the key
    assert '"ENV_TOKEN"' in events  # events and specs hold the reference

    values = [ENV_VALUE, MODEL_KEY]
    assert [a[:200] for a in answers if any(v in a for v in values)] == []
    events_dir = Path(fleet.settings.events_dir)
    assert list(events_dir.rglob("*.parquet")) and (events_dir / "_artifacts").is_dir()
    checkpoints = [p for p in (events_dir / "_artifacts").rglob("*") if ".ckpt." in p.name]
    assert checkpoints, "no loop state was stored"
    assert hits(events_dir, values) == []  # Parquet, WAL, artifacts, checkpoints
    wal = Path(fleet.settings.wal_dir) if fleet.settings.wal_dir else events_dir / "_wal"
    assert hits(wal, values) == []
    assert hits(ray_logs(), values) == []
    if sandbox == "docker":
        assert inspector.seen, "no container of the fleet was seen while the task ran"
        assert [i for i in inspector.seen.values() if any(v in i for v in values)] == []
        assert all("API_TOKEN" not in i for i in inspector.seen.values())
