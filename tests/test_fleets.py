"""Several named fleets as one: routing (stable hash of the task id, or a label), reports over
several fleets' logs (the ``fleet`` column), and two real fleets side by side on one Ray."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import ray

from core import analytics
from core.errors import InputError
from core.events import EventType
from core.settings import PoolSpec
from core.specs import TaskState
from fleet.api import SubmitResult
from fleet.fleets import Fleets, rendezvous
from tests.conftest import script
from tests.history import write_history

IDS = [f"task-{i}" for i in range(3000)]


def test_the_hash_route_is_stable_spreads_and_moves_little_when_a_fleet_is_added() -> None:
    three = {i: rendezvous(i, ["a", "b", "c"]) for i in IDS}
    assert three == {i: rendezvous(i, ["c", "a", "b"]) for i in IDS}  # order of names: no matter
    shares = Counter(three.values())
    assert set(shares) == {"a", "b", "c"} and min(shares.values()) > 0.28 * len(IDS)
    four = {i: rendezvous(i, ["a", "b", "c", "d"]) for i in IDS}
    moved = [i for i in IDS if four[i] != three[i]]
    assert moved and all(four[i] == "d" for i in moved)  # only to the new fleet
    assert len(moved) < 0.35 * len(IDS)


class FakeFleet:
    """Takes submits (accepting all but ids starting 'bad'), as Fleet.submit answers."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, Any]], str | None]] = []

    def submit(self, tasks: list[dict[str, Any]], batch: str | None = None) -> SubmitResult:
        self.calls.append((tasks, batch))
        ok = [t["id"] for t in tasks if not t["id"].startswith("bad")]
        bad = [{"id": t["id"], "error": "no"} for t in tasks if t["id"].startswith("bad")]
        return SubmitResult(ok, bad, batch)


def test_submit_routes_by_label_else_by_hash_in_one_call_per_fleet() -> None:
    a, b = FakeFleet(), FakeFleet()
    fleets = Fleets({"a": a, "b": b}, routes={"gpu": "b"})  # type: ignore[dict-item]
    tasks = [{"id": f"t{i}", "prompt": "x"} for i in range(40)]
    tasks += [{"id": "g1", "prompt": "x", "requires": ["gpu"]}, {"prompt": "no id"}]
    tasks += [{"id": "g2", "prompt": "x", "labels": ["gpu"]}, {"id": "bad1", "prompt": "x"}]
    out = fleets.submit(tasks, batch="b1")
    assert len(a.calls) == 1 and len(b.calls) == 1  # one call per fleet, one batch over all
    assert a.calls[0][1] == b.calls[0][1] == out.batch == "b1"
    sent_to_b = {t["id"] for t in b.calls[0][0]}
    assert {"g1", "g2"} <= sent_to_b
    hashed = {t["id"]: name for name, f in (("a", a), ("b", b)) for t in f.calls[0][0]}
    for task_id, name in hashed.items():
        if task_id not in ("g1", "g2"):
            assert rendezvous(task_id, ["a", "b"]) == name == fleets.fleet_of(task_id)
    no_id = next(t for t in a.calls[0][0] + b.calls[0][0] if t["prompt"] == "no id")
    assert no_id["id"].startswith("t-")  # given here: its id picks its fleet
    assert fleets.fleet_of("g1") == "b" and len(out.accepted) == 43
    assert out.rejected == [{"id": "bad1", "error": "no", "fleet": hashed["bad1"]}]
    with pytest.raises(InputError, match="not here: c"):
        Fleets({"a": a}, routes={"x": "c"})  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def two_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A parent folder with two fleets' logs: ``north`` (40 tasks), ``south`` (25)."""
    parent = tmp_path_factory.mktemp("logs")
    write_history(parent / "north", 40, seed=1, writer="north")
    write_history(parent / "south", 25, seed=2, writer="south")
    return parent


def test_several_logs_read_as_one_events_view_with_the_fleet_column(two_logs: Path) -> None:
    logs = [str(two_logs / "north"), str(two_logs / "south")]
    per_fleet = "SELECT fleet, count(DISTINCT task_id) FROM events GROUP BY 1 ORDER BY 1"
    assert analytics.sql(logs, per_fleet).rows == [("north", 40), ("south", 25)]
    # The parent folder stands for the logs in it; one log alone has its fleet too.
    assert analytics.sql(str(two_logs), per_fleet).rows == [("north", 40), ("south", 25)]
    assert analytics.sql(logs[1], per_fleet).rows == [("south", 25)]
    uri = [f"file://{log}" for log in logs]  # through pyarrow's filesystems
    assert analytics.sql(uri, per_fleet).rows == [("north", 40), ("south", 25)]
    tables = analytics.report(logs)
    assert tables[0].as_dicts()[0]["tasks"] == 65
    by_fleet = {r["fleet"]: r["tasks"] for r in tables[-1].as_dicts()}
    assert tables[-1].title == "By fleet" and by_fleet == {"north": 40, "south": 25}
    assert len(analytics.report(logs[0])) == 3  # one fleet: no per-fleet table
    with pytest.raises(analytics.AnalyticsError, match="no event log"):
        analytics.sql([logs[0], str(two_logs / "west")], "SELECT 1")


def test_fleet_report_takes_events_more_than_once(two_logs: Path) -> None:
    logs = ["--events", str(two_logs / "north"), "--events", str(two_logs / "south")]
    done = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "report", "overview", "--json", *logs],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["Overview"][0]["tasks"] == 65


HELLO = script(
    ("write_file", {"path": "hello.txt", "content": "hi"}),
    ("finish", {"summary": "wrote hello.txt"}),
)


@pytest.mark.ray
def test_two_named_fleets_run_side_by_side_with_separate_logs_and_one_report(
    ray_session: None, tmp_path: Path
) -> None:
    events = tmp_path / "events"
    names = ["north", "south"]
    fleets = Fleets.start(
        names,
        events_dir=str(events),
        sandbox="local",
        workers=1,
        flush_interval_s=0.2,
        namespace="agent-fleet-tests",
        routes={"docs": "south"},
    )
    try:
        supervisors = {n: fleets.fleets[n].supervisor for n in names}
        assert supervisors["north"] != supervisors["south"]
        tasks = [{"id": f"job{i}", "prompt": "hello", "script": HELLO} for i in range(6)]
        tasks.append({"id": "doc2", "prompt": "x", "labels": ["docs"], "script": HELLO})
        out = fleets.submit(tasks)
        assert sorted(out.accepted) == sorted(t["id"] for t in tasks) and not out.rejected
        where = {t["id"]: fleets.fleet_of(t["id"]) for t in tasks}
        assert set(where.values()) == set(names) and where["doc2"] == "south"
        assert rendezvous("doc2", names) == "north"  # its label, not its id, decided
        records = fleets.wait(out.accepted, timeout_s=120)
        assert sorted(r.id for r in records) == sorted(where)
        assert all(r.state == TaskState.succeeded for r in records)
        for task_id, name in where.items():  # each task lives in its own fleet only
            other = "south" if name == "north" else "north"
            assert fleets.fleets[name].get(task_id) is not None
            assert fleets.fleets[other].get(task_id) is None
        # Another driver (no routes, nothing submitted through it) finds them all the same.
        other = Fleets.connect(names, namespace="agent-fleet-tests")
        found = other.wait(sorted(where), timeout_s=30)
        assert sorted(r.id for r in found) == sorted(where)
        assert {t: other.fleet_of(t) for t in where} == where
        status = fleets.status()
        assert status["counts"]["succeeded"] == 7 and status["workers"] == 2
        assert fleets.events_dirs() == [str(events)]
        fleets.flush()
        # One folder, two logs: each fleet's files hold its own tasks only.
        for name in names:
            files = sorted(events.glob(f"date=*/seg-{name}-*.parquet"))
            assert files, name
            ids = set(pq.read_table(files, columns=["task_id"]).column("task_id").to_pylist())
            assert ids == {t for t, n in where.items() if n == name}
        tables = analytics.report(str(events))
        assert tables[0].as_dicts()[0]["succeeded"] == 7
        counted = {r["fleet"]: r["tasks"] for r in tables[-1].as_dicts()}
        assert counted == dict(Counter(where.values()))
    finally:
        fleets.shutdown()


@pytest.mark.ray
def test_simulated_workers_of_the_knee_benchmark_speak_the_worker_protocol(
    fleet_factory: Any,
) -> None:
    from benchmarks.knee import SIM_POOL, SimulatedWorkers

    fleet = fleet_factory(warm_pool=0, pools=[PoolSpec(name="real", workers=1)])
    tasks = [{"id": f"sim{i}", "prompt": "x", "requires": ["simulated"]} for i in range(6)]
    assert fleet.submit(tasks[:1]).rejected  # no pool offers the label yet
    sim = SimulatedWorkers.remote(fleet.supervisor, 0.4, 0.2, 5.0)
    ids = ray.get(fleet.supervisor.attach_simulated_workers.remote(sim, 3, SIM_POOL))
    assert len(set(ids)) == 3 and all(i.startswith("sw") for i in ids)
    ray.get(sim.add.remote(ids, 0.1))
    out = fleet.submit(tasks)
    assert out.accepted == [t["id"] for t in tasks] and not out.rejected
    records = fleet.wait(out.accepted, timeout_s=60)
    assert all(r.state == TaskState.succeeded and r.worker in ids for r in records)
    assert all(r.turns == r.tool_calls == 2 for r in records)
    types = Counter(e.type for e in fleet.events("sim0"))
    assert types[EventType.agent_tool_use] == types[EventType.agent_tool_result] == 2
    assert types[EventType.usage] == 2 and types[EventType.session_ended] == 1
    dispatch, ingest, events = ray.get(sim.samples.remote(0.0, time.time() + 1))
    assert len(dispatch) == 6 and len(ingest) == 6 * 3 and events == 6 * 7
