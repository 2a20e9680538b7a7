"""The fleet on real Ray clusters: two nodes on this machine, and the cluster launcher.

Both tests start their own Ray processes (own temp dir and ports, so the session's local Ray
in conftest.py is untouched), drive them from subprocesses with ``RAY_ADDRESS`` set, and kill
every process they started on the way out (never ``ray stop`` here: it stops every Ray on the
machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

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


def write_tasks(path: Path, count: int, sleep_s: float = 1.0) -> Path:
    """Scripted tasks (no model, no network) that each hold a worker for ``sleep_s``."""
    lines = []
    for i in range(count):
        script = [
            {"tool": "write_file", "args": {"path": "out.txt", "content": f"task {i}\n"}},
            {"tool": "shell", "args": {"command": f"sleep {sleep_s} && cat out.txt"}},
            {"tool": "finish", "args": {"summary": "wrote out.txt"}},
        ]
        task = {"id": f"t{i}", "prompt": "Write out.txt", "gate": "test -s out.txt"}
        lines.append(json.dumps({**task, "script": script}))
    path.write_text("\n".join(lines) + "\n")
    return path


def workers_used(events_dir: Path) -> set[str]:
    """Worker ids that ran sessions, from the Parquet events (DuckDB)."""
    import duckdb

    con = duckdb.connect()
    rows = con.execute(
        "SELECT DISTINCT worker FROM read_parquet(?, hive_partitioning = true, "
        "union_by_name = true) WHERE type = 'session.started'",
        [f"{events_dir}/**/*.parquet"],
    ).fetchall()
    return {r[0] for r in rows if r[0]}


PLACEMENT = """
import json, sys
import ray
from ray.util.state import list_actors
from fleet import Fleet

out = {"nodes": {}, "fleets": {}}
ray.init(namespace="agent-fleet", log_to_driver=False)
for node in ray.nodes():
    if node["Alive"]:
        out["nodes"][node["NodeID"]] = sorted(node["Resources"])
where = {a.pid: a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000)}
for name in sys.argv[1:]:
    fleet = Fleet.connect("auto", name=name)
    workers = ray.get(fleet.supervisor.status.remote())["workers"]
    pids = {f"w{i}": ray.get(fleet.supervisor.worker_pid.remote(f"w{i}"))
            for i in range(1, workers + 1)}
    sup = [a.node_id for a in list_actors(filters=[("class_name", "=", "Supervisor"),
                                                    ("state", "=", "ALIVE")])]
    out["fleets"][name] = {"workers": {w: where.get(p) for w, p in pids.items()},
                           "supervisor_nodes": sup}
print(json.dumps(out))
"""

CLIENT = """
import json, sys
from fleet import Fleet

print(json.dumps(Fleet.connect(sys.argv[1], name="spread").status()["counts"]))
"""


# -- a two-node cluster on this machine --------------------------------------------------
@pytest.fixture
def two_nodes() -> Iterator[dict[str, str]]:
    """A head (1 CPU) and a second node offering resource ``node2``; yields the driver env."""
    temp_dir = tempfile.mkdtemp(prefix="rfa-", dir="/tmp")  # short: socket paths are limited
    gcs, client, dash, agent1, agent2 = free_ports(5)
    markers = [temp_dir, f":{gcs} "]  # the Ray client server names only the GCS port
    env = base_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=uuid.uuid4().hex)
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats"]
    common += ["--object-store-memory", str(100 * 1024 * 1024)]
    try:
        head = [RAY, "start", "--head", "--port", str(gcs), "--temp-dir", temp_dir]
        head += ["--ray-client-server-port", str(client), "--dashboard-port", str(dash)]
        head += ["--dashboard-agent-listen-port", str(agent1), "--resources", '{"head": 1}']
        check(run(head + common, env, 120), "ray start --head")
        node2 = [RAY, "start", "--address", f"127.0.0.1:{gcs}", "--resources", '{"node2": 1}']
        node2 += ["--dashboard-agent-listen-port", str(agent2)]
        check(run(node2 + common, env, 120), "ray start --address")
        client_address = f"ray://127.0.0.1:{client}"
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{gcs}", "CLIENT_ADDRESS": client_address}
    finally:
        left = kill_ray(markers)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


@pytest.mark.ray
@pytest.mark.timeout(300)
def test_two_node_batch_spreads_workers(two_nodes: dict[str, str], tmp_path: Path) -> None:
    env = two_nodes
    tasks = write_tasks(tmp_path / "tasks.jsonl", 8)
    spread_events, pinned_events = tmp_path / "spread-events", tmp_path / "pinned-events"

    started = time.monotonic()
    job = [sys.executable, "-m", "fleet.job", str(tasks), "--name", "spread"]
    job += ["--workers", "4", "--sandbox", "local", "--events", str(spread_events)]
    out = run(job, env, 180)
    check(out, "fleet.job (spread)")
    assert "all 8 tasks succeeded" in out.stdout
    assert "[8/8]" in out.stdout  # progress lines in the job log
    assert "Overview (DuckDB" in out.stdout

    # A pool for one kind of node: workers need resource node2, so all land there.
    job = [sys.executable, "fleet/job.py", str(tasks), "--name", "pinned", "--workers", "2"]
    job += ["--sandbox", "local", "--events", str(pinned_events)]
    job += ["--worker-resources", '{"node2": 0.25}']
    out = run(job, env, 180)
    check(out, "fleet/job.py (pinned)")
    assert "all 8 tasks succeeded" in out.stdout

    placed = run([sys.executable, "-c", PLACEMENT, "spread", "pinned"], env, 60)
    check(placed, "placement query")
    info = json.loads(placed.stdout.strip().splitlines()[-1])
    head = next(n for n, res in info["nodes"].items() if "head" in res)
    node2 = next(n for n, res in info["nodes"].items() if "node2" in res)

    spread = info["fleets"]["spread"]
    used = workers_used(spread_events)
    assert len(used) >= 2, used
    nodes_used = {spread["workers"][w] for w in used}
    assert nodes_used == {head, node2}, (used, spread, info["nodes"])
    assert set(spread["supervisor_nodes"]) == {head}  # both supervisors on the head

    pinned = info["fleets"]["pinned"]
    assert set(pinned["workers"].values()) == {node2}, pinned
    assert workers_used(pinned_events) <= set(pinned["workers"])

    # A driver script from outside the cluster, through the Ray Client.
    env_client = {k: v for k, v in env.items() if k not in ("RAY_ADDRESS", "CLIENT_ADDRESS")}
    out = run([sys.executable, "-c", CLIENT, env["CLIENT_ADDRESS"]], env_client, 120)
    check(out, "Fleet.connect('ray://...')")
    assert json.loads(out.stdout.strip().splitlines()[-1])["succeeded"] == 8
    print(f"two-node jobs and checks took {time.monotonic() - started:.1f}s")


def test_job_reports_bad_lines_like_fleet_run(tmp_path: Path) -> None:
    """Input errors come before any Ray: one line per bad line, then exit 2 (nothing valid)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok", "bogus": 1}\nnot json\n')
    out = run([sys.executable, "-m", "fleet.job", str(bad)], base_env(), 60)
    assert out.returncode == 2, out.stderr
    assert f"rejected {bad}:1: bogus: unknown field" in out.stderr
    assert f"rejected {bad}:2:" in out.stderr
    assert "error: no valid tasks to run" in out.stderr


# -- the cluster launcher: ray up / ray submit / ray down over SSH to 127.0.0.1 ------------
def test_cluster_yaml_is_valid() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["provider"]["type"] == "local"


def ssh_host() -> str:
    """Start the loopback SSH host (scripts/ci-sshd.sh); returns the key. Skips when that is
    impossible here, unless in CI."""
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
            # `ray down` runs `ray stop` on the head: fine only if that sees no other Ray.
            theirs = ssh(key, "readlink /proc/self/ns/pid").stdout.strip()
            if theirs and theirs != os.readlink("/proc/self/ns/pid"):
                return key
            why = "sshd on 127.0.0.1 shares our PID namespace (ray down would stop every Ray)"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def ssh(key: str, command: str) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR"]
    opts += ["-o", "UserKnownHostsFile=/dev/null", "-i", key]
    return subprocess.run(
        ["ssh", *opts, "root@127.0.0.1", command], capture_output=True, text=True, timeout=30
    )


def launcher_config(key: str, temp_dir: str, ports: list[int]) -> dict:  # type: ignore[type-arg]
    """The repository's cluster.yaml, aimed at this machine over loopback SSH."""
    gcs, client, dash, agent = ports
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["cluster_name"] = f"fleet-ci-{uuid.uuid4().hex[:8]}"
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": "root", "ssh_private_key": key}
    config["file_mounts"] = {}  # the project is installed here already
    # The head's PATH is this test's Python environment; Ray gets its own temp dir and ports
    # (no token: the job below is given an explicit address, which never picks one up).
    env = f"export PATH={BIN}:$PATH RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0"
    config["setup_commands"] = [f"{env} && python -c 'import fleet.job'"]
    start = f"ray start --head --port={gcs} --temp-dir={temp_dir} --num-cpus=1"
    start += f" --ray-client-server-port={client} --dashboard-port={dash}"
    start += f" --dashboard-agent-listen-port={agent} --object-store-memory={100 * 1024**2}"
    start += " --autoscaling-config=~/ray_bootstrap_config.yaml --disable-usage-stats"
    config["head_start_ray_commands"] = [f"{env} && ray stop && {start}"]
    config["worker_start_ray_commands"] = []
    return config


@pytest.mark.ray
@pytest.mark.timeout(420)
def test_ray_up_submit_down(tmp_path: Path) -> None:
    key = ssh_host()
    temp_dir = tempfile.mkdtemp(prefix="rfb-", dir="/tmp")
    ports = free_ports(4)
    config = launcher_config(key, temp_dir, ports)
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(config))
    tasks = write_tasks(tmp_path / "tasks.jsonl", 3, sleep_s=0.2)
    env = base_env()
    launcher = [RAY]
    timings: dict[str, float] = {}
    try:
        t = time.monotonic()
        up = run([*launcher, "up", "-y", "--no-config-cache", str(cluster_file)], env, 240)
        check(up, "ray up")
        timings["up"] = time.monotonic() - t

        t = time.monotonic()
        job = [*launcher, "submit", "--no-config-cache", str(cluster_file), "fleet/job.py", "--"]
        job += [str(tasks), "--address", f"127.0.0.1:{ports[0]}", "--sandbox", "local"]
        job += ["--workers", "2", "--events", str(tmp_path / "events"), "--name", "ci"]
        out = run(job, env, 240)
        timings["submit"] = time.monotonic() - t
        check(out, "ray submit")
        text = out.stdout + out.stderr
        assert "batch b-" in text and "[3/3]" in text, text[-4000:]
        assert "Batch summary" in text and "Overview (DuckDB" in text, text[-4000:]
        assert "all 3 tasks succeeded" in text, text[-4000:]
    finally:
        t = time.monotonic()
        down = run([*launcher, "down", "-y", str(cluster_file)], env, 120)
        timings["down"] = time.monotonic() - t
        markers = [temp_dir, f":{ports[0]} "]
        after_down = ray_processes(markers)
        left = kill_ray(markers)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for suffix in ("state", "lock"):
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/cluster-{config['cluster_name']}.{suffix}")
        print(f"cluster launcher timings: {timings}")
    check(down, "ray down")
    assert not after_down, f"ray down left Ray processes running: {after_down}"
    assert not left, f"Ray processes left running: {left}"
