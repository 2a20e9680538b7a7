"""Hostile agents in a real fleet on Docker: each is contained, its task ends with a clear
reason, and the workers and the other tasks keep going. Every hostile task records what it
got, and its gate (or the test) checks that record, so a hole in the containment fails here.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from core.events import EventType
from core.specs import TaskState
from sandboxes import docker_available
from tests.conftest import script, wait_state

pytestmark = [
    pytest.mark.docker,
    pytest.mark.ray,
    pytest.mark.skipif(not docker_available(), reason="no Docker engine answers"),
]

PROBE = """
import sys, urllib.request
got = []
for target in sys.argv[1:]:
    try:
        url = f"http://{target}/"
        got.append("reached " + urllib.request.urlopen(url, timeout=3).read().decode())
    except Exception as exc:
        got.append(f"blocked {target} {type(exc).__name__}")
open("net.txt", "w").write("\\n".join(got) + "\\n")
"""

ESCAPE = (
    "for p in /etc/owned /usr/bin/owned /opt/fleet/owned /owned /proc/1/fd/1; do "
    "(echo x > $p) 2>/dev/null && echo wrote $p >> escape.txt || echo denied $p >> escape.txt; "
    "done"
)

PIDS = (
    "d=/sys/fs/cgroup/pids; [ -d $d ] || d=/sys/fs/cgroup; echo alive; "
    'test "$(cat $d/pids.max)" = 64 && grep -E "^max [1-9]" $d/pids.events && '
    "test $(ls /proc | grep -cE '^[0-9]+$') -le 6"
)
"""The gate after a fork bomb: the sandbox answers, forks were refused by the pids limit, and
no bomb process is left."""


def shell(command: str, timeout_s: float = 60) -> list[dict[str, Any]]:
    return script(("shell", {"command": command, "timeout_s": timeout_s}), ("finish", {}))


def probe(targets: list[str]) -> list[dict[str, Any]]:
    """Fetch each ``ip:port`` and write what came back to net.txt."""
    command = f"python3 probe.py {' '.join(targets)}"
    return script(
        ("write_file", {"path": "probe.py", "content": PROBE}),
        ("shell", {"command": command}),
        ("finish", {}),
    )


def _host_addresses() -> list[str]:
    """The host as a container on the fleet's open network or Docker's bridge would see it."""
    from sandboxes import images, network

    cli = images.client()
    try:
        config = cli.networks.get("bridge").attrs["IPAM"]["Config"][0]
        bridge = config.get("Gateway", "172.17.0.1")
        return [network.gateway(network.ensure_network(cli, "full")), bridge]
    finally:
        cli.close()


def _fleet_containers(fleet_name: str) -> list[str]:
    from sandboxes import images

    cli = images.client()
    try:
        found = cli.api.containers(all=True, filters={"label": f"agent-fleet.fleet={fleet_name}"})
        return [c["Id"] for c in found]
    finally:
        cli.close()


def _kill_container_running(fleet_name: str, command: str, timeout_s: float = 30) -> bool:
    """Kill (from the host) the fleet's container where ``command`` runs."""
    from sandboxes import images

    cli = images.client()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for cid in _fleet_containers(fleet_name):
                try:
                    processes = cli.api.top(cid)["Processes"] or []
                    if any(command in " ".join(p) for p in processes):
                        cli.api.kill(cid)
                        return True
                except Exception:
                    continue  # gone meanwhile
            time.sleep(0.2)
        return False
    finally:
        cli.close()


def test_hostile_agents_are_contained_and_the_batch_goes_on(  # type: ignore[no-untyped-def]
    fleet_factory, host_server, outside_server
):
    fleet = fleet_factory(workers=2, sandbox="docker", stall_timeout_s=60)
    hosts = [f"{ip}:{host_server}" for ip in _host_addresses()]
    tasks = [
        {
            "id": "fork-bomb",
            "prompt": "x",
            "environment": {"name": "bomb", "pids": 64},
            "gate": PIDS,
            "max_attempts": 1,
            "script": shell("bomb() { bomb | bomb & }; bomb; sleep 2; echo survived", 6),
        },
        {
            "id": "flood",
            "prompt": "x",
            "gate": "echo still answering",
            "max_attempts": 1,
            "script": shell("yes flood | head -c 2000000000"),
        },
        {
            "id": "sleeper",
            "prompt": "x",
            "max_attempts": 1,
            "time_limit_s": 3,
            "script": shell("sleep 1000"),
        },
        {
            "id": "disk-fill",
            "prompt": "x",
            "environment": {"name": "small-disk", "disk_mb": 64},
            "gate": "head -c 1M /dev/zero > more",  # fails only if the disk really is full
            "max_attempts": 1,
            "script": shell("head -c 200M /dev/zero > big; ls -l big"),
        },
        {
            "id": "escape",
            "prompt": "x",
            "max_attempts": 1,
            "gate": "! grep wrote escape.txt && test $(grep -c '^denied' escape.txt) = 5",
            "script": shell(ESCAPE),
        },
        {
            "id": "net-none",
            "prompt": "x",
            "max_attempts": 1,
            "gate": "cat net.txt; test $(grep -c '^blocked ' net.txt) = 2",
            "script": probe(hosts),
        },
        {  # the network open: another machine answers (so the probe can tell), the host not
            "id": "net-open",
            "prompt": "x",
            "environment": {"name": "open", "network": "full"},
            "max_attempts": 1,
            "gate": "cat net.txt; grep -q '^reached hello from outside' net.txt && "
            "test $(grep -c '^blocked ' net.txt) = 2",
            "script": probe([f"{outside_server}:8080", *hosts]),
        },
        {
            "id": "honest",
            "prompt": "x",
            "gate": "test -s ok.txt",
            "script": script(("write_file", {"path": "ok.txt", "content": "fine"}), ("finish", {})),
        },
    ]
    fleet.submit(tasks)
    records = {r.id: r for r in fleet.wait([t["id"] for t in tasks], timeout_s=240)}
    states = {k: (r.state.value, r.reason) for k, r in records.items()}
    for task_id in ("fork-bomb", "flood", "escape", "net-none", "net-open", "honest"):
        assert records[task_id].state == TaskState.succeeded, states

    def gate_output(task_id: str) -> str:
        kinds = (EventType.gate_passed, EventType.gate_failed)
        return next(e for e in fleet.events(task_id) if e.type in kinds).payload["output"]

    assert "alive" in gate_output("fork-bomb") and "max " in gate_output("fork-bomb")
    assert "blocked" in gate_output("net-none") and "reached" not in gate_output("net-none")
    assert records["sleeper"].state == TaskState.needs_human
    assert "time limit of 3s" in records["sleeper"].reason
    assert records["disk-fill"].state == TaskState.needs_human
    assert "gate failed" in records["disk-fill"].reason
    assert "No space left on device" in gate_output("disk-fill")
    fill = next(e for e in fleet.events("disk-fill") if e.type == EventType.agent_tool_result)
    assert "No space left on device" in fill.payload["stderr"]
    flood = next(e for e in fleet.events("flood") if e.type == EventType.agent_tool_result)
    stdout = flood.payload["stdout"]  # 2 GB printed; capped while streaming, then for the model
    assert "elided" in stdout and len(stdout) < 20_000 and stdout.startswith("flood\nflood")
    assert fleet.status()["workers"] == 2  # no worker was lost to any of it

    # A container that dies under a session ends it at once ("sandbox lost"); the retry runs.
    lost = script(
        ("shell", {"command": "sleep 31337"}),
        ("write_file", {"path": "ok.txt", "content": "again"}),
        ("finish", {}),
    )
    lost[0]["attempt"] = 1
    fleet.submit([{"id": "lost", "prompt": "x", "gate": "test -s ok.txt", "script": lost}])
    wait_state(fleet, "lost", TaskState.running, timeout=60)
    killed = _kill_container_running(fleet.settings.name, "sleep 31337")
    started = time.monotonic()
    record = fleet.wait(["lost"], timeout_s=60)[0]
    assert killed and record.state == TaskState.succeeded and record.attempts == 2
    assert time.monotonic() - started < 30  # not the command's or the session's time limit
    ended = [e for e in fleet.events("lost") if e.type == EventType.session_ended]
    assert ended[0].payload["reason"].startswith("sandbox lost: exec agent is gone")

    # Shutdown removes the fleet's containers, the one in use included.
    fleet.submit([{"id": "lingerer", "prompt": "x", "script": shell("sleep 1000", 900)}])
    wait_state(fleet, "lingerer", TaskState.running, timeout=60)
    time.sleep(1)
    assert _fleet_containers(fleet.settings.name)  # labelled with the fleet's name
    fleet.shutdown()
    assert _fleet_containers(fleet.settings.name) == []


LEAVE = (
    "echo private > notes.txt && echo private > /tmp/t && echo private > ~/.cache-x && "
    'echo private > /dev/shm/s && python3 -c "import ctypes; '
    'assert ctypes.CDLL(None).shmget(4321, 4096, 0o1600) >= 0" && '
    "(setsid sleep 1000 > /dev/null 2>&1 &) && echo left"
)
FIND = (
    "find /tmp /home/agent /dev/shm /workspace -mindepth 1 ! -name probe.txt ! -name found.txt "
    "> found.txt; tail -n +2 /proc/sysvipc/shm >> found.txt; "
    "grep -l ^sleep /proc/[0-9]*/cmdline >> found.txt; cat found.txt"
)


def test_a_reused_container_holds_nothing_of_the_session_before(  # type: ignore[no-untyped-def]
    fleet_factory,
):
    """One task leaves files everywhere it can write, an IPC object and a detached process;
    the tasks after it, one at a time on the one worker, find nothing of it, and one of them
    ran in the very container it used (reset, not replaced)."""
    fleet = fleet_factory(workers=1, sandbox="docker", warm_pool=1)
    fleet.submit(
        [{"id": "first", "prompt": "x", "gate": "test -s notes.txt", "script": shell(LEAVE)}]
    )
    assert fleet.wait(["first"], timeout_s=120)[0].state == TaskState.succeeded
    checkers = ["second", "third"]
    for task_id in checkers:
        fleet.submit(
            [
                {
                    "id": task_id,
                    "prompt": "x",
                    "gate": "test ! -s found.txt",  # nothing but what this session wrote
                    "script": script(
                        ("write_file", {"path": "probe.txt", "content": "mine"}),
                        ("shell", {"command": FIND}),
                        ("finish", {}),
                    ),
                }
            ]
        )
        record = fleet.wait([task_id], timeout_s=120)[0]
        events = fleet.events(task_id)
        found = [e.payload for e in events if e.type == EventType.agent_tool_result][1]
        assert record.state == TaskState.succeeded, (record.reason, found)
        assert found["stdout"] == "", found

    def ended(task_id: str) -> dict[str, Any]:
        return next(e for e in fleet.events(task_id) if e.type == EventType.session_ended).payload

    assert ended("first")["sandbox_reused"] is False
    same = [t for t in checkers if ended(t)["sandbox"] == ended("first")["sandbox"]]
    assert same and all(ended(t)["sandbox_reused"] for t in same)
    assert fleet.file("first", "notes.txt") == b"private\n"  # its results were kept first
