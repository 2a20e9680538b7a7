"""The fleet on real Ray clusters (issue 8): two nodes on this machine, and the cluster launcher.

- ``cluster`` is a two-node Ray started here (a head with the dashboard, so the Jobs API and
  the Ray Client, and a second node offering resource ``node2``), shared by the tests of this
  module: batch jobs spread over both nodes (checked from the ``session.started`` events),
  pinned by worker or pool resources, run through ``ray job submit``, with their events on a
  URI, and the README's driver scripts.
- ``test_ray_up_submit_down`` runs the repository's cluster.yaml through ``ray up``, ``ray
  submit`` and ``ray down`` over SSH to this machine (scripts/ci-sshd.sh).

Each Ray here has its own temp dir, ports and HOME, so the session's local Ray (conftest.py)
and other Ray instances on the machine are untouched; drivers run as subprocesses, and every
process a test started is killed on the way out (never ``ray stop`` here: it stops every Ray
on the machine).
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray") if (BIN / "ray").exists() else "ray"


# -- helpers -----------------------------------------------------------------------------
def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can see."""
    found: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry)] = (ppid, cmd)
    return found


def ray_processes(markers: list[str]) -> dict[int, str]:
    """Processes whose command line has a marker (temp dir, GCS port), and their children
    (workers and agents rename themselves ``ray::...`` and lose their arguments)."""
    procs = processes()
    me = os.getpid()
    picked = {p for p, (_, cmd) in procs.items() if p != me and any(m in cmd for m in markers)}
    grew = True
    while grew:
        children = {p for p, (ppid, _) in procs.items() if ppid in picked} - picked
        picked |= children
        grew = bool(children)
    return {p: procs[p][1] for p in picked}


def kill_ray(markers: list[str], grace_s: float = 5.0) -> dict[int, str]:
    """SIGTERM, then SIGKILL, the processes of one test cluster; returns any left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        found = ray_processes(markers)
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while ray_processes(markers) and time.monotonic() < deadline:
            time.sleep(0.2)
    return ray_processes(markers)


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "FLEET_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run(cmd: list[str], env: dict[str, str], timeout: float, **kw) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
    return subprocess.run(
        cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, **kw
    )


def check(proc: subprocess.CompletedProcess, what: str) -> None:  # type: ignore[type-arg]
    assert proc.returncode == 0, (
        f"{what} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
        f"\n--- stderr\n{proc.stderr[-6000:]}"
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def scripted(i: int, sleep_s: float = 1.0, **fields: Any) -> dict[str, Any]:
    """A scripted task (no model, no network) that holds a worker for ``sleep_s``."""
    script = [
        {"tool": "write_file", "args": {"path": "out.txt", "content": f"task {i}\n"}},
        {"tool": "shell", "args": {"command": f"sleep {sleep_s} && cat out.txt"}},
        {"tool": "finish", "args": {"summary": "wrote out.txt"}},
    ]
    task = {"id": f"t{i}", "prompt": "Write out.txt", "gate": "test -s out.txt"}
    return {**task, "script": script, **fields}


def write_tasks(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def sessions(events_dir: Path) -> list[dict[str, str]]:
    """Every ``session.started`` event in the Parquet log: task, worker, and where it ran
    (the node id and host in its payload)."""
    import duckdb

    rows = (
        duckdb.connect()
        .execute(
            "SELECT task_id, worker, json_extract_string(payload, '$.node_id'), "
            "json_extract_string(payload, '$.host') FROM read_parquet(?, "
            "hive_partitioning = true, union_by_name = true) WHERE type = 'session.started'",
            [f"{events_dir}/date=*/*.parquet"],
        )
        .fetchall()
    )
    return [dict(zip(("task", "worker", "node", "host"), row, strict=True)) for row in rows]


# -- a two-node cluster on this machine --------------------------------------------------
@dataclass
class Cluster:
    env: dict[str, str]
    """For drivers on the cluster: RAY_ADDRESS is the head's GCS, token auth is on."""
    client: str
    """The Ray Client address, ray://..."""
    dashboard: str
    """The dashboard (Jobs API), http://..."""
    home: Path
    """HOME of every process of the cluster (a job's ``~/fleet-events`` is here)."""
    head: str
    """The head's node id."""
    node2: str
    """The second node's id."""


NODES = """
import json
import ray

ray.init(log_to_driver=False)
print(json.dumps({r: n["NodeID"] for n in ray.nodes() if n["Alive"] for r in n["Resources"]}))
"""

SUPERVISORS = """
import json, sys
import ray
from ray.util.state import list_actors
from fleet import Fleet

ray.init(log_to_driver=False)
alive = list_actors(filters=[("class_name", "=", "Supervisor"), ("state", "=", "ALIVE")])
print(json.dumps({a.name: a.node_id for a in alive}))
for name in sys.argv[1:]:
    Fleet.connect("auto", name=name).shutdown()
"""


def stop_fleets(cluster: Cluster, *names: str) -> dict[str, str]:
    """Stops the named fleets; returns where every live supervisor was: actor name -> node."""
    out = run([sys.executable, "-c", SUPERVISORS, *names], cluster.env, 120)
    check(out, "supervisors")
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head (1 CPU, the dashboard, resource ``head``) and a second node (1 CPU, resource
    ``node2``), with token authentication on."""
    temp_dir = tempfile.mkdtemp(prefix="rfa-", dir="/tmp")  # short: socket paths are limited
    home = Path(temp_dir, "home")
    home.mkdir()
    gcs, client, dash, agent1, agent2 = free_ports(5)
    markers = [temp_dir, f":{gcs} "]  # the Ray client server names only the GCS port
    env = base_env(HOME=str(home), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    env["RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S"] = "10"  # Ray Client: patience when loaded
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    common += ["--object-store-memory", str(100 * 1024 * 1024)]
    try:
        head = [RAY, "start", "--head", "--port", str(gcs), "--temp-dir", temp_dir]
        head += ["--ray-client-server-port", str(client), "--include-dashboard", "true"]
        head += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash)]
        head += ["--dashboard-agent-listen-port", str(agent1), "--resources", '{"head": 1}']
        check(run(head + common, env, 120), "ray start --head")
        node2 = [RAY, "start", "--address", f"127.0.0.1:{gcs}", "--resources", '{"node2": 1}']
        node2 += ["--dashboard-agent-listen-port", str(agent2)]
        check(run(node2 + common, env, 120), "ray start --address")
        env["RAY_ADDRESS"] = f"127.0.0.1:{gcs}"
        nodes = run([sys.executable, "-c", NODES], env, 60)
        check(nodes, "node ids")
        ids = json.loads(nodes.stdout.strip().splitlines()[-1])
        yield Cluster(
            env=env,
            client=f"ray://127.0.0.1:{client}",
            dashboard=f"http://127.0.0.1:{dash}",
            home=home,
            head=ids["head"],
            node2=ids["node2"],
        )
    finally:
        left = kill_ray(markers)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


CLIENT_INIT = """
import time
import ray


def client_init(address):
    # Ray 2.60's client server fails, now and then, to start the server for a new client
    # ("Starting Ray client server failed", an empty log): connect again, as a person would.
    for attempt in range(3):
        try:
            return ray.init(address, namespace="agent-fleet", log_to_driver=False)
        except ConnectionError:
            ray.shutdown()
            if attempt == 2:
                raise
            time.sleep(1)
"""

CLIENT = (
    CLIENT_INIT
    + """
import json, sys
from fleet import Fleet

client_init(sys.argv[1])
print(json.dumps(Fleet.connect(sys.argv[1], name="spread").status()["counts"]))
"""
)


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_two_node_batch_spreads_workers(cluster: Cluster, tmp_path: Path) -> None:
    tasks = write_tasks(tmp_path / "tasks.jsonl", [scripted(i) for i in range(8)])
    spread_events, pinned_events = tmp_path / "spread-events", tmp_path / "pinned-events"

    job = [sys.executable, "-m", "fleet.job", str(tasks), "--name", "spread"]
    job += ["--workers", "4", "--sandbox", "local", "--events", str(spread_events)]
    out = run(job, cluster.env, 180)
    check(out, "fleet.job (spread)")
    assert "all 8 tasks succeeded" in out.stdout
    assert "[8/8]" in out.stdout  # progress lines in the job log
    assert "Report (DuckDB over" in out.stdout

    # Workers of one kind of node: they need resource node2, so all land there.
    job = [sys.executable, "fleet/job.py", str(tasks), "--name", "pinned", "--workers", "2"]
    job += ["--sandbox", "local", "--events", str(pinned_events)]
    job += ["--worker-resources", '{"node2": 0.25}']
    out = run(job, cluster.env, 180)
    check(out, "fleet/job.py (pinned)")
    assert "all 8 tasks succeeded" in out.stdout

    # Where each session ran, from its session.started event.
    spread = sessions(spread_events)
    assert len(spread) == 8, spread
    assert {s["host"] for s in spread} == {socket.gethostname()}, spread
    assert {s["node"] for s in spread} == {cluster.head, cluster.node2}, spread
    assert len({s["worker"] for s in spread}) >= 2, spread
    pinned = sessions(pinned_events)
    assert len(pinned) == 8, pinned
    assert {s["node"] for s in pinned} == {cluster.node2}, pinned

    # A driver script from outside the cluster, through the Ray Client.
    env_client = {k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}
    out = run([sys.executable, "-c", CLIENT, cluster.client], env_client, 120)
    check(out, "Fleet.connect('ray://...')")
    assert json.loads(out.stdout.strip().splitlines()[-1])["succeeded"] == 8

    supervisors = stop_fleets(cluster, "spread", "pinned")
    assert len(supervisors) >= 2 and set(supervisors.values()) == {cluster.head}, supervisors


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_pool_resources_put_one_pool_on_one_kind_of_node(cluster: Cluster, tmp_path: Path) -> None:
    """FLEET_POOL_RESOURCES: the workers of pool "n2" need resource node2, which only the
    second node offers, so the tasks that need that pool run there (spread, half of them
    would land on the head); the other pool spreads."""
    tasks = [scripted(i, requires=["n2"]) for i in range(4)] + [scripted(9, sleep_s=0.2)]
    tasks_file = write_tasks(tmp_path / "tasks.jsonl", tasks)
    events = tmp_path / "events"
    pools = [{"name": "any", "workers": 2}, {"name": "n2", "workers": 2, "labels": ["n2"]}]
    env = cluster.env | {"FLEET_POOL_RESOURCES": json.dumps({"n2": {"node2": 0.25}})}
    job = [sys.executable, "-m", "fleet.job", str(tasks_file), "--name", "pools"]
    job += ["--sandbox", "local", "--events", str(events), "--pools", json.dumps(pools)]
    out = run(job, env, 150)
    check(out, "fleet.job (pools)")
    assert "all 5 tasks succeeded" in out.stdout
    assert "'pools': 4 workers" in out.stdout

    n2 = [s for s in sessions(events) if s["task"].split(".", 1)[1] in {"t0", "t1", "t2", "t3"}]
    assert len(n2) == 4, n2
    assert {s["node"] for s in n2} == {cluster.node2}, n2
    assert len({s["worker"] for s in n2}) == 2, n2  # both workers of the pool, both on node2
    stop_fleets(cluster, "pools")


JOB_OUTCOME = """
import json, sys, time
from ray.job_submission import JobSubmissionClient

client = JobSubmissionClient()  # RAY_ADDRESS: the dashboard
job_id, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while not (status := client.get_job_status(job_id)).is_terminal():
    assert time.monotonic() < deadline, f"job {job_id} is still {status.value}"
    time.sleep(0.5)
info = client.get_job_info(job_id)
print(json.dumps({"status": status.value, "exit_code": info.driver_exit_code,
                  "log": client.get_job_logs(job_id)}))
"""


def job_submit(cluster: Cluster, tasks: Path) -> dict[str, Any]:
    """`ray job submit` of fleet.job as in the README; returns the job's status, exit code
    and log. (It does not wait with the CLI: its log tail is a websocket that Ray reports as
    failed, close code 1006, now and then on a loaded machine. The job's status is what
    counts, and the REST API gives it.)"""
    env = cluster.env | {"RAY_ADDRESS": cluster.dashboard}
    submit = [RAY, "job", "submit", "--no-wait", "--working-dir", ".", "--"]
    submit += ["python", "-m", "fleet.job", str(tasks), "--sandbox", "local", "--workers", "2"]
    out = run([*submit, "--name", "jobs"], env, 120)
    check(out, "ray job submit")
    job_id = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out.stdout + out.stderr)
    assert job_id, out.stdout + out.stderr
    outcome = run([sys.executable, "-c", JOB_OUTCOME, job_id[1], "150"], env, 180)
    check(outcome, "the job's outcome")
    return json.loads(outcome.stdout.strip().splitlines()[-1])


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_ray_job_submit_runs_a_batch(cluster: Cluster, tmp_path: Path) -> None:
    """The README's Jobs API way in: the repository uploaded as the working dir, the task file
    read on the head, events in the head's ~/fleet-events, the job's exit status the batch's."""
    good = write_tasks(tmp_path / "good.jsonl", [scripted(i, sleep_s=0.2) for i in range(3)])
    bad = write_tasks(tmp_path / "bad.jsonl", [scripted(5, 0.2, gate="false", max_attempts=1)])

    job = job_submit(cluster, good)
    log = job["log"]
    assert (job["status"], job["exit_code"]) == ("SUCCEEDED", 0), log[-4000:]
    assert "batch b-" in log and "[3/3]" in log, log[-4000:]
    assert "Batch summary" in log and "Report (DuckDB over" in log, log[-4000:]
    assert f"events at {cluster.home}/fleet-events" in log, log[-4000:]
    assert "all 3 tasks succeeded" in log, log[-4000:]

    # A task that fails: so does the job, with exit code 1 (the running fleet is reused).
    job = job_submit(cluster, bad)
    log = job["log"]
    assert (job["status"], job["exit_code"]) == ("FAILED", 1), log[-4000:]
    assert "fleet 'jobs'" in log and ".t5: needs_human (attempts 1)" in log, log[-4000:]
    assert "1 task(s) did not succeed" in log, log[-4000:]
    stop_fleets(cluster, "jobs")


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_job_events_on_a_uri(cluster: Cluster, tmp_path: Path) -> None:
    """--events takes a pyarrow URI (here file://) with the write-ahead log on a local disk;
    the analytics read the log back from the same URI."""
    from core.analytics import report, sql

    tasks = write_tasks(tmp_path / "tasks.jsonl", [scripted(i, sleep_s=0.2) for i in range(3)])
    uri, wal = (tmp_path / "events").as_uri(), tmp_path / "wal"
    env = cluster.env | {"FLEET_WAL_DIR": str(wal)}
    job = [sys.executable, "-m", "fleet.job", str(tasks), "--name", "uri", "--events", uri]
    job += ["--sandbox", "local", "--workers", "2"]
    out = run(job, env, 150)
    check(out, "fleet.job (events on a URI)")
    assert f"events at {uri} (write-ahead log {wal})" in out.stdout
    assert "all 3 tasks succeeded" in out.stdout
    stop_fleets(cluster, "uri")

    assert not (tmp_path / "events" / "_wal").exists() and any(wal.iterdir())
    overview = report(uri)[0].as_dicts()[0]
    assert overview["tasks"] == 3 and overview["succeeded"] == 3, overview
    assert sql(uri, "select state, count(*) from tasks group by 1").rows == [("succeeded", 3)]


def test_job_keeps_the_write_ahead_log_of_object_storage_on_the_head(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Object storage needs only --events: the write-ahead log goes to ~/fleet-wal/ (the
    supervisor's home, on the head) unless FLEET_WAL_DIR says where."""
    from core.eventlog import EventLog
    from fleet.job import build_settings, parse_args

    for name in ("FLEET_WAL_DIR", "FLEET_EVENTS_DIR", "FLEET_NAME"):
        monkeypatch.delenv(name, raising=False)
    settings = build_settings(parse_args(["t.jsonl", "--events", "s3://b/ev", "--name", "n"]))
    assert settings.events_dir == "s3://b/ev" and settings.wal_dir is None
    log = EventLog("mock://b/ev", settings.wal_dir, writer=settings.name)
    assert str(log.wal_dir).startswith(os.path.expanduser("~/fleet-wal/"))
    assert str(log.wal_dir).endswith("/n")
    monkeypatch.setenv("FLEET_WAL_DIR", "~/wal")
    settings = build_settings(parse_args(["t.jsonl", "--events", "s3://b/ev"]))
    assert settings.wal_dir == os.path.expanduser("~/wal")


def test_job_takes_pools_and_their_resources_as_options() -> None:
    """`ray submit` passes no environment: what shapes a fleet must also be an option."""
    from fleet.job import JobError, build_settings, parse_args

    pools = '[{"name": "gpu", "workers": 1, "labels": ["gpu"]}]'
    args = ["t.jsonl", "--pools", pools, "--pool-resources", '{"gpu": {"gpu_box": 1}}']
    settings = build_settings(parse_args(args))
    assert [(p.name, p.workers, p.labels) for p in settings.pools] == [("gpu", 1, ["gpu"])]
    assert settings.pool_resources == {"gpu": {"gpu_box": 1.0}}
    with pytest.raises(JobError, match="--pool-resources: not JSON"):
        build_settings(parse_args(["t.jsonl", "--pool-resources", "{"]))
    with pytest.raises(JobError, match=r"setting pools\.0\.workers"):
        build_settings(parse_args(["t.jsonl", "--pools", '[{"name": "a", "workers": 0}]']))


def test_job_reports_bad_lines_like_fleet_run(tmp_path: Path) -> None:
    """Input errors come before any Ray: one line per bad line, then exit 2 (nothing valid)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "bogus": 1}\nnot json\n')
    out = run([sys.executable, "-m", "fleet.job", str(bad)], base_env(), 60)
    assert out.returncode == 2, out.stderr
    assert f"rejected {bad}:1: bogus: unknown field" in out.stderr
    assert f"rejected {bad}:2:" in out.stderr
    assert "error: no valid tasks to run" in out.stderr


# -- the README's driver scripts, as written -----------------------------------------------
README_DRIVER = (
    CLIENT_INIT
    + """
import json, sys, time
from fleet import Fleet
from core.specs import FleetConfig

spec = json.loads(open(sys.argv[1]).read())
client_init(spec["address"])  # Fleet.start and Fleet.connect below reuse this connection
# The fleet the README's scripts attach to, started first (as a job or Fleet.start does).
Fleet.start(ray_address=spec["address"], workers=2, sandbox="local", events_dir=spec["events"],
            config=FleetConfig.model_validate(spec["config"]))
ns = {}


def block(i):
    print(f"=== block {i}", flush=True)
    exec(spec["blocks"][i], ns)


block(0)  # submit and wait
fleet = ns["fleet"]
ns["result"] = fleet.submit([spec["stream_task"]])
block(1)  # stream a session's events, live
ns["task_id"] = fleet.submit([spec["approve_task"]]).accepted[0]
deadline = time.monotonic() + 60
while not fleet.get(ns["task_id"]).pending_approval:
    assert time.monotonic() < deadline, "no tool call waits for approval"
    time.sleep(0.1)
block(2)  # approve
record = fleet.wait([ns["task_id"]], timeout_s=60)[0]
block(3)  # query history (first: fleet.events below writes the buffered events to Parquet)
decided = [e.payload for e in fleet.events(record.id) if e.type.value == "approval.decided"]
print("=== result", json.dumps({"state": record.state.value, "decided": decided}), flush=True)
fleet.shutdown()
"""
)


def readme_driver_blocks() -> list[str]:
    """The Python blocks of the README's "Driver scripts" section, in order."""
    text = (ROOT / "README.md").read_text()
    start = text.index("### Driver scripts")
    section = text[start : text.find("\n## ", start)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def with_tasks(block: str, tasks: list[dict[str, Any]]) -> str:
    """The block with the list it passes to ``fleet.submit`` replaced by ``tasks``."""
    tree = ast.parse(block)
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "submit"
    ]
    assert len(calls) == 1, block
    calls[0].args[0] = ast.parse(repr(tasks), mode="eval").body
    return ast.unparse(tree)


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_readme_driver_scripts_work(cluster: Cluster, tmp_path: Path) -> None:
    """Submit and wait, stream, approve, query: the README's blocks run as written, through
    the Ray Client, with only the address and the submitted task replaced."""
    blocks = readme_driver_blocks()
    assert len(blocks) == 4, blocks
    address = 'Fleet.connect("ray://127.0.0.1:10001")'
    assert address in blocks[0], blocks[0]
    notes = {"prompt": "Write notes.txt", "gate": "test -s notes.txt", "script": [
        {"tool": "write_file", "args": {"path": "notes.txt", "content": "notes"}},
        {"tool": "finish", "args": {"summary": "wrote notes.txt"}},
    ]}  # fmt: skip
    connect = f'Fleet.connect("{cluster.client}")'
    blocks[0] = with_tasks(blocks[0].replace(address, connect), [notes])
    spec = {
        "address": cluster.client,
        "events": str(tmp_path / "events"),
        "config": {"agents": {"coder": {"approvals": {"shell": "always_ask"}}}},
        "blocks": blocks,
        "stream_task": scripted(1, sleep_s=1.0),
        "approve_task": scripted(2, sleep_s=0.1, agent="coder"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    env = {k: v for k, v in cluster.env.items() if k != "RAY_ADDRESS"}
    out = run([sys.executable, "-c", README_DRIVER, str(tmp_path / "spec.json")], env, 150)
    check(out, "the README's driver scripts")
    parts = re.split(r"^=== (?:block \d|result )", out.stdout, flags=re.M)
    assert len(parts) == 6, out.stdout
    waited, streamed, approved, queried, result = (p.strip().splitlines() for p in parts[1:])

    # Submit and wait: "<id> succeeded 1 <reason>".
    assert len(waited) == 1 and waited[0].split()[1:3] == ["succeeded", "1"], waited
    # Stream: every event of the task once, in order, ending with its outcome.
    seqs = [int(line.split()[0]) for line in streamed]
    types = [line.split()[1] for line in streamed]
    assert seqs == list(range(len(seqs))), streamed
    assert "session.started" in types and types[-1] == "task.succeeded", streamed
    assert any(line.split()[1:3] == ["agent.tool_use", "shell"] for line in streamed), streamed
    # Approve: the decision reached the session, which then succeeded.
    assert approved == [], approved
    outcome = json.loads(result[0])
    assert outcome["state"] == "succeeded", outcome
    assert {(d["allow"], d["message"]) for d in outcome["decided"]} == {(True, "go ahead")}
    # Query: the report's tables, then the SQL rows: all three tasks succeeded.
    assert [line.split(" ", 1)[0] for line in queried[:3]] == ["Overview", "Tasks", "Tool"]
    assert ast.literal_eval(queried[-1]) == [("succeeded", 3)], queried


# -- the cluster launcher: ray up / ray submit / ray down over SSH to 127.0.0.1 ------------
def test_cluster_yaml_is_valid() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "local"


HOME_MARKER = ".fleet-ci-home"
"""scripts/ci-sshd.sh marks the SSH sessions' home with it: only such a home is wiped."""

NODE_BASHRC = """\
# Written by tests/test_cluster.py: the login environment of this loopback "node".
# A virtualenv of this home, which sees the tests' packages (Ray...): cluster.yaml's
# `pip install -e ~/agent-fleet` goes there, not over the tests' own install of the project.
# (Not PIP_USER: pip refuses user installs when the tests themselves run in a virtualenv.)
export PATH={venv}/bin:{bin}:$PATH
export RAY_TMPDIR={ray_tmp} RAY_USAGE_STATS_ENABLED=0  # its Ray's files, apart
"""


def node_venv(home: Path) -> Path:
    """A virtualenv in the node's home whose Python also sees this Python's packages."""
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()]
    found = sorted(venv.glob("lib/python*/site-packages"))
    (found[0] / "tests-packages.pth").write_text("\n".join(ours) + "\n")
    return venv


def ssh(key: str, command: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"]
    opts += ["-o", "UserKnownHostsFile=/dev/null", "-i", key]
    return subprocess.run(
        ["ssh", *opts, "root@127.0.0.1", command], capture_output=True, text=True, timeout=60
    )


def ssh_host() -> tuple[str, Path]:
    """Start the loopback SSH host (scripts/ci-sshd.sh); returns its key and its sessions'
    home. Skips when that is impossible here; fails instead in CI."""
    why = None
    if shutil.which("unshare") is None or os.geteuid() != 0:
        why = "needs root and unshare"
    else:
        out = subprocess.run(
            ["bash", str(ROOT / "scripts/ci-sshd.sh")], capture_output=True, text=True, timeout=300
        )
        if out.returncode != 0:
            why = f"scripts/ci-sshd.sh failed: {(out.stderr or out.stdout).strip()[-500:]}"
        else:
            key = out.stdout.strip().splitlines()[-1]
            probe = ssh(key, f"readlink /proc/self/ns/pid; echo ~; test -f ~/{HOME_MARKER}")
            theirs, home = [*probe.stdout.split(), "", ""][:2]
            # `ray down` runs `ray stop` on the head: fine only if that sees no other Ray.
            if probe.returncode != 0 or home in ("", "/", os.path.expanduser("~")):
                why = f"the SSH sessions have no home of their own: {probe.stdout}{probe.stderr}"
            elif theirs == os.readlink("/proc/self/ns/pid"):
                why = "sshd on 127.0.0.1 shares our PID namespace (ray down would stop every Ray)"
            else:
                return key, Path(home)
    if in_ci():
        pytest.fail(f"the cluster launcher test cannot run in CI: {why}")
    pytest.skip(why)


def test_launcher_test_fails_in_ci_when_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a usable SSH host the launcher test skips on a laptop, but fails in CI."""
    monkeypatch.setattr(shutil, "which", lambda name: None)  # no unshare
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="cannot run in CI: needs root and unshare"):
        ssh_host()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        ssh_host()


def wipe(home: Path) -> None:
    """Empty the SSH sessions' home (everything the launcher and the test put there)."""
    assert (home / HOME_MARKER).is_file() and home != Path.home(), home
    for entry in home.iterdir():
        if entry.name == HOME_MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def launcher_lock() -> Iterator[None]:
    """One launcher test at a time on this machine: they share the SSH host's home."""
    with open("/tmp/fleet-ci-launcher.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def launcher_config(key: str, ports: list[int]) -> dict[str, Any]:
    """The repository's cluster.yaml, with only what a user edits (the machines, the SSH user
    and key) and what keeps this Ray apart from the others on this shared machine: its ports
    and object store size, appended to the head's `ray start` (the last flag wins)."""
    gcs, objects, client, dash, agent = ports
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["cluster_name"] = f"fleet-ci-{uuid.uuid4().hex[:8]}"  # its own launcher state
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"].update(ssh_user="root", ssh_private_key=key)
    apart = f" --port={gcs} --object-manager-port={objects} --ray-client-server-port={client}"
    apart += f" --dashboard-port={dash} --dashboard-agent-listen-port={agent}"
    apart += f" --object-store-memory={100 * 1024**2}"
    commands = config["head_start_ray_commands"]
    starts = [i for i, command in enumerate(commands) if "ray start" in command]
    assert len(starts) == 1, commands
    commands[starts[0]] += apart
    return config


def test_ray_up_refuses_without_the_cluster_token(tmp_path: Path) -> None:
    """cluster.yaml mounts ~/.ray/auth_token: with none, `ray up` stops before any SSH."""
    key = tmp_path / "key"
    key.write_text("unused: ray up stops before it connects\n")
    config = launcher_config(str(key), free_ports(5))
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(config))
    (tmp_path / "laptop").mkdir()
    env = base_env(HOME=str(tmp_path / "laptop"))
    try:
        up = run([RAY, "up", "-y", "--no-config-cache", str(cluster_file)], env, 120)
    finally:
        for suffix in ("state", "lock"):
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/cluster-{config['cluster_name']}.{suffix}")
    assert up.returncode != 0, up.stdout[-3000:]
    assert f"No such file or directory: '{tmp_path}/laptop/.ray/auth_token'" in up.stderr
    assert "Running setup commands" not in up.stdout + up.stderr


@pytest.mark.ray
@pytest.mark.timeout(480)
def test_ray_up_submit_down(tmp_path: Path) -> None:
    """The README's steps on the repository's cluster.yaml: a token, `ray up` (its file
    mounts, setup and start commands), `ray submit` of the demo batch, `ray down`."""
    key, node_home = ssh_host()
    ports = free_ports(5)
    config = launcher_config(key, ports)
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(config))
    laptop = tmp_path / "laptop"  # the HOME of the machine running the launcher
    laptop.mkdir()
    env = base_env(HOME=str(laptop))
    ray_tmp = tempfile.mkdtemp(prefix="rfb-", dir="/tmp")
    markers = [ray_tmp, f":{ports[0]} "]
    timings: dict[str, float] = {}
    with launcher_lock():
        wipe(node_home)
        venv = node_venv(node_home)
        bashrc = NODE_BASHRC.format(venv=venv, bin=BIN, ray_tmp=ray_tmp)
        (node_home / ".bashrc").write_text(bashrc)
        try:
            check(run([RAY, "get-auth-token", "--generate"], env, 60), "ray get-auth-token")
            assert (laptop / ".ray" / "auth_token").is_file()

            t = time.monotonic()
            up = run([RAY, "up", "-y", "--no-config-cache", str(cluster_file)], env, 300)
            timings["up"] = time.monotonic() - t
            check(up, "ray up")
            # The setup commands installed the synced repository on the head.
            where = ssh(key, "source ~/.bashrc && python -c 'import fleet; print(fleet.__file__)'")
            assert where.stdout.strip() == f"{node_home}/agent-fleet/fleet/__init__.py", where
            token = (node_home / ".ray" / "auth_token").read_text()
            assert token == (laptop / ".ray" / "auth_token").read_text()

            t = time.monotonic()
            job = [RAY, "submit", "--no-config-cache", str(cluster_file), "fleet/job.py", "--"]
            job += ["~/agent-fleet/fleet/demo/tasks.jsonl", "--workers", "2", "--sandbox", "local"]
            out = run(job, env, 300)
            timings["submit"] = time.monotonic() - t
            check(out, "ray submit")
            text = out.stdout + out.stderr
            assert "sandbox: local (asked for:" in text, text[-4000:]
            assert "on Ray at auto" in text, text[-4000:]
            assert f"events at {node_home}/fleet-events" in text, text[-4000:]
            assert "batch b-" in text and "[12/12]" in text, text[-4000:]
            assert "Batch summary" in text and "Report (DuckDB over" in text, text[-4000:]
            assert "all 12 tasks succeeded" in text, text[-4000:]
        finally:
            t = time.monotonic()
            down = run([RAY, "down", "-y", str(cluster_file)], env, 120)
            timings["down"] = time.monotonic() - t
            after_down = ray_processes(markers)
            left = kill_ray(markers)
            wipe(node_home)
            shutil.rmtree(ray_tmp, ignore_errors=True)
            for suffix in ("state", "lock"):
                with contextlib.suppress(OSError):
                    os.unlink(f"/tmp/cluster-{config['cluster_name']}.{suffix}")
            print(f"cluster launcher timings: {timings}")
    check(down, "ray down")
    assert not after_down, f"ray down left Ray processes running: {after_down}"
    assert not left, f"Ray processes left running: {left}"
