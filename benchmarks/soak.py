"""Soak: the fleet's promises under load and crashes: ``python -m benchmarks.soak``.

Starts ``fleet serve`` (its own local Ray, loopback only) as a subprocess, and drives N tasks
(``--tasks``, default 2,000) through its HTTP API from concurrent clients (``--clients``,
default 8; asyncio + httpx): plain tasks, tasks a client cancels, steers (``user.message``),
tasks whose shell call waits for a person's approval (``user.tool_confirmation``, from an
agent with ``approvals: {shell: always_ask}`` in a config file written here) and tasks whose
result a person reviews (``require_approval``, ``POST /v1/tasks/{id}/review``). Every task
runs the scripted model (write_file, shell, finish) and has a gate. Meanwhile it SIGKILLs the
supervisor actor's process (``--kill-supervisor``, default 3) and worker actors' processes
(``--kill-workers``, default 5), found among the descendants of the ``fleet serve`` process
by their Ray process titles (``ray::Supervisor``, ``ray::Worker``), so no other Ray on the
machine is touched.

At the end it stops the server, reads the event log with DuckDB (after replaying any WAL a
crash left) and prints a table of the promises: every submitted task ended exactly once (no
task lost, none run twice), each task's event ``seq`` is 0..n without gaps, every task not
cancelled succeeded, no container is left; then the peak RSS of each long-lived process
(sampled from ``/proc`` every second) and API latency during the kills against outside them.
Exit code 0 only if every promise held.

The whole run is bounded by ``--minutes`` (default 10, startup and shutdown included): new
tasks stop early enough to leave a drain period, and a task not ended by the deadline counts
as lost. A quick run::

    python -m benchmarks.soak --tasks 100 --minutes 3 --sandbox local \\
        --kill-supervisor 1 --kill-workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "needs_human", "cancelled"}
TERMINAL_EVENTS = {"task.succeeded", "task.failed", "task.needs_human", "task.cancelled"}
KINDS = {"plain": 0.45, "cancel": 0.1, "steer": 0.15, "approval": 0.15, "review": 0.15}
CONFIG = "agents:\n  asker:\n    approvals: {shell: always_ask}\n"
RAY_DAEMONS = ("raylet", "gcs_server")
STARTUP_S = 240.0
STOP_S = 60.0
"""How long ``fleet serve`` gets to stop after SIGTERM before its processes are killed."""


@dataclass
class Options:
    tasks: int
    minutes: float
    clients: int
    inflight: int
    workers: int
    sandbox: str
    kill_supervisor: int
    kill_workers: int
    seed: int
    keep: bool
    workdir: str | None


@dataclass
class Call:
    started: float
    seconds: float
    route: str
    status: int
    """HTTP status, or 0 for a transport error (refused, reset, timeout)."""


@dataclass
class Run:
    opts: Options
    base: str
    token: str
    name: str
    events_dir: Path
    server_pid: int
    started: float
    submit_until: float
    deadline: float
    calls: list[Call] = field(default_factory=list)
    submitted: dict[str, str] = field(default_factory=dict)
    """task id -> kind, for every task the API accepted."""
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    """task id -> its last view as a client saw it (status, reason)."""
    cancelled: set[str] = field(default_factory=set)
    """Tasks whose cancel the API accepted."""
    cancel_tried: set[str] = field(default_factory=set)
    """Tasks a client tried to cancel (an answer lost in a crash: either outcome is fine)."""
    actions: Counter[str] = field(default_factory=Counter)
    kill_windows: list[tuple[float, float]] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    kill_misses: list[str] = field(default_factory=list)
    rss_peak_kb: dict[str, int] = field(default_factory=dict)
    rss_pids: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    next_task: int = 0

    def left(self) -> float:
        return self.deadline - time.monotonic()


# -- processes ------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every process below ``root`` (not ``root`` itself)."""
    children: dict[int, list[int]] = defaultdict(list)
    starts: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _stat(int(entry.name))
            if found is not None:
                children[found[0]].append(int(entry.name))
                starts[int(entry.name)] = found[1]
    out: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in out and pid in starts:
            out[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return out


def role(pid: int) -> str | None:
    """What a process is: a Ray worker's title up to the method (``ray::Supervisor.start``
    -> ``ray::Supervisor``), else its command name (raylet, gcs_server, sleep, ...)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if cmdline.startswith("ray::"):
        title = cmdline.split(" ")[0].split(".")[0].split("(")[0]
        last = title.rsplit(":", 1)[-1]  # a named actor may show as ray::<name>:<Class>
        return f"ray::{last}" if last.isidentifier() and last[:1].isupper() else title
    return comm or None


def rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def pids_of(root: int, wanted: str) -> list[int]:
    return sorted(pid for pid in descendants(root) if role(pid) == wanted)


def kill_tree(proc: subprocess.Popen[bytes], tree: dict[int, int]) -> None:
    """SIGKILL ``proc`` and the processes of ``tree`` (pid -> start time) that are still
    those processes (not others that got their pid since)."""
    if proc.poll() is None:
        proc.kill()
    for pid, start in tree.items():
        found = _stat(pid)
        if found is not None and found[1] == start:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# -- the server ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(opts: Options, workdir: Path, token: str, name: str) -> subprocess.Popen[bytes]:
    port = free_port()
    (workdir / "fleet.yaml").write_text(CONFIG)
    env = {
        **os.environ,
        "FLEET_API_TOKEN": token,
        "RAY_ADDRESS": "local",  # its own Ray, never another one running on this machine
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [sys.executable, "-m", "fleet.cli", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--sandbox", opts.sandbox, "--workers", str(opts.workers)]
    cmd += ["--events", str(workdir / "events"), "--config", str(workdir / "fleet.yaml")]
    cmd += ["--name", name]
    with (workdir / "serve.out").open("w") as out, (workdir / "serve.err").open("w") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
    proc.port = port  # type: ignore[attr-defined]
    return proc


async def wait_ready(proc: subprocess.Popen[bytes], base: str, workdir: Path, until: float) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            if proc.poll() is not None:
                tail = (workdir / "serve.err").read_text()[-2000:]
                raise RuntimeError(f"fleet serve exited {proc.returncode}: {tail}")
            if time.monotonic() > until:
                raise RuntimeError("fleet serve did not answer /healthz in time")
            with contextlib.suppress(httpx.HTTPError):
                healthy = (await client.get(f"{base}/healthz")).status_code == 200
                if healthy and "API and dashboard on" in (workdir / "serve.out").read_text():
                    return
            await asyncio.sleep(0.5)


def stop_server(proc: subprocess.Popen[bytes]) -> tuple[int | None, bool]:
    """SIGTERM, then SIGKILL whatever of its tree is left after ``STOP_S``; returns its exit
    code and whether it stopped by itself."""
    tree = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_S)
        clean = True
    except subprocess.TimeoutExpired:
        clean = False
    tree.update(descendants(proc.pid))
    time.sleep(2)  # Ray's own processes follow their driver
    kill_tree(proc, tree)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    return proc.returncode, clean


# -- clients ------------------------------------------------------------------------------
async def call(
    run: Run, client: httpx.AsyncClient, method: str, path: str, route: str, **kw: Any
) -> httpx.Response | None:
    """One API call, retried on 5xx and transport errors until the deadline; a 4xx is an
    answer. Every try is timed."""
    delay = 0.2
    while run.left() > 0:
        t0 = time.monotonic()
        try:
            response = await client.request(method, path, **kw)
            status = response.status_code
        except httpx.HTTPError:
            response, status = None, 0
        run.calls.append(Call(t0, time.monotonic() - t0, route, status))
        if response is not None and status < 500:
            return response
        await asyncio.sleep(min(delay, max(0.0, run.left())))
        delay = min(delay * 2, 2.0)
    return None


def task_body(task_id: str, kind: str, rng: random.Random) -> dict[str, Any]:
    sleep = round(rng.uniform(0.0, 1.5) + (1.0 if kind in ("steer", "cancel") else 0.0), 2)
    body: dict[str, Any] = {
        "id": task_id,
        "prompt": f"write {task_id} into out.txt",
        "labels": ["soak", kind],
        "gate": f"grep -q {task_id} out.txt",
        "time_limit_s": 120,
        "script": [
            {"tool": "write_file", "args": {"path": "out.txt", "content": task_id}},
            {"tool": "shell", "args": {"command": f"sleep {sleep} && cat out.txt"}},
            {"tool": "finish", "args": {"summary": "wrote out.txt"}},
        ],
    }
    if kind == "approval":
        body["agent"] = "asker"
    if kind == "review":
        body["require_approval"] = True
    return body


async def submit(run: Run, client: httpx.AsyncClient, body: dict[str, Any], kind: str) -> bool:
    """Submit one task; a retry that finds the id taken means an earlier try got in."""
    tried = False
    while run.left() > 0:
        if kind == "review":  # the batch route, for some of them
            r = await call(run, client, "POST", "/v1/tasks", "POST /v1/tasks", json=[body])
            if r is None:
                return False
            if r.status_code == 200:
                out = r.json()
                if out["accepted"] or (tried and out["rejected"][0]["field"] == "id"):
                    return True
                print(f"  rejected {body['id']}: {out['rejected']}", flush=True)
                return False
        else:
            r = await call(run, client, "POST", "/v1/sessions", "POST /v1/sessions", json=body)
            if r is None:
                return False
            if r.status_code == 201 or (tried and r.status_code == 409):
                return True
            if r.status_code != 409:
                print(f"  rejected {body['id']}: {r.status_code} {r.text[:200]}", flush=True)
                return False
        tried = True
    return False


async def drive(run: Run, client: httpx.AsyncClient, task_id: str, kind: str) -> None:
    """Follow one task to its end, doing what its kind asks on the way."""
    rng = random.Random(f"{run.opts.seed}-{task_id}")
    cancel_at = time.monotonic() + rng.uniform(0.0, 3.0)
    steered = False
    answered: set[tuple[str | None, str | None]] = set()
    """(session, call id) of approvals already taken (the record shows them until the worker
    acts on them; a later session of the task asks again with the same call id)."""
    path = f"/v1/sessions/{task_id}"
    while run.left() > 0:
        await asyncio.sleep(rng.uniform(0.3, 0.7))
        r = await call(run, client, "GET", path, "GET /v1/sessions/{id}")
        if r is None or r.status_code != 200:
            continue
        view = r.json()
        run.final[task_id] = view
        status = view["status"]
        if status in TERMINAL:
            return
        if kind == "cancel" and time.monotonic() >= cancel_at and task_id not in run.cancelled:
            run.cancel_tried.add(task_id)
            c = await call(run, client, "POST", f"/v1/tasks/{task_id}/cancel", "POST cancel")
            if c is not None:
                run.actions[f"cancel {c.status_code}"] += 1
                if c.status_code == 200:
                    run.cancelled.add(task_id)
                else:
                    kind = "plain"  # too late: it ends as it would have
        elif kind == "steer" and status == "running" and not steered:
            body = {"events": [{"type": "user.message", "content": "also keep it short"}]}
            s = await call(run, client, "POST", f"{path}/events", "POST events", json=body)
            if s is not None:
                run.actions[f"steer {s.status_code}"] += 1
                steered = s.status_code == 200
        elif (pending := view.get("pending_approval")) and (
            asked := (view.get("attempt_session_id"), pending.get("call_id"))
        ) not in answered:
            call_id = pending.get("call_id")
            verdict = "deny" if rng.random() < 0.2 else "allow"
            event = {"type": "user.tool_confirmation", "result": verdict, "tool_use_id": call_id}
            if verdict == "deny":
                event["deny_message"] = "not this time"
            a = await call(
                run, client, "POST", f"{path}/events", "POST events", json={"events": [event]}
            )
            if a is not None:
                run.actions[f"approval {verdict} {a.status_code}"] += 1
                if a.status_code == 200:
                    answered.add(asked)
        elif status == "awaiting_review":
            body = {"approve": True, "message": "looks good"}
            v = await call(
                run, client, "POST", f"/v1/tasks/{task_id}/review", "POST review", json=body
            )
            if v is not None:
                run.actions[f"review {v.status_code}"] += 1


async def client_loop(run: Run, index: int) -> None:
    """One client: ``inflight`` lanes, each submitting a task and following it to its end."""
    headers = {"Authorization": f"Bearer {run.token}"}
    rng = random.Random(f"{run.opts.seed}-client-{index}")
    kinds, weights = list(KINDS), list(KINDS.values())
    async with httpx.AsyncClient(base_url=run.base, headers=headers, timeout=30) as client:

        async def lane() -> None:
            while time.monotonic() < run.submit_until and run.next_task < run.opts.tasks:
                n = run.next_task
                run.next_task += 1
                kind = rng.choices(kinds, weights)[0]
                task_id = f"soak-{n:05d}-{kind}"
                if await submit(run, client, task_body(task_id, kind, rng), kind):
                    run.submitted[task_id] = kind
                    await drive(run, client, task_id, kind)

        await asyncio.gather(*(lane() for _ in range(run.opts.inflight)))


# -- chaos and sampling -------------------------------------------------------------------
async def status_ok(run: Run) -> bool:
    headers = {"Authorization": f"Bearer {run.token}"}
    async with httpx.AsyncClient(base_url=run.base, headers=headers, timeout=10) as client:
        with contextlib.suppress(httpx.HTTPError):
            return (await client.get("/v1/fleet/status")).status_code == 200
    return False


async def chaos(run: Run) -> None:
    """Kill the supervisor and workers, spread over the submission period."""
    plan = ["Supervisor"] * run.opts.kill_supervisor + ["Worker"] * run.opts.kill_workers
    random.Random(run.opts.seed).shuffle(plan)
    span = run.submit_until - time.monotonic()
    start = time.monotonic()
    for i, target in enumerate(plan):
        at = start + span * (i + 1) / (len(plan) + 1)
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        if run.left() <= 0:
            run.kill_misses.append(f"{target}: out of time")
            continue
        found: list[int] = []
        target = f"ray::{target}"
        wait_until = time.monotonic() + 60  # a restarted one may still be on its way
        while not found and time.monotonic() < wait_until:
            found = await asyncio.to_thread(pids_of, run.server_pid, target)
            if not found:
                await asyncio.sleep(1)
        if not found:
            run.kill_misses.append(f"{target}: no such process found")
            print(f"[{elapsed(run)}] no {target} process to kill", flush=True)
            continue
        pid = random.Random(f"{run.opts.seed}-{i}").choice(found)
        killed_at = time.monotonic()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            run.kill_misses.append(f"{target}: pid {pid} vanished")
            continue
        run.kills[target.removeprefix("ray::")] += 1
        print(f"[{elapsed(run)}] SIGKILL {target} pid {pid}", flush=True)
        if target == "ray::Supervisor":  # the window lasts until the API answers again, + 5 s
            while run.left() > 0 and time.monotonic() - killed_at < 180:
                await asyncio.sleep(1)
                if await status_ok(run):
                    break
            back = time.monotonic() - killed_at
            print(f"[{elapsed(run)}] API answers again {back:.1f}s after the kill", flush=True)
            run.kill_windows.append((killed_at, time.monotonic() + 5))
        else:
            run.kill_windows.append((killed_at, killed_at + 10))


def sample_rss(run: Run) -> None:
    """Long-lived processes only: the server, Ray's actors and daemons (not commands)."""
    for pid in [run.server_pid, *descendants(run.server_pid)]:
        name = "fleet serve (driver)" if pid == run.server_pid else role(pid)
        kb = rss_kb(pid)
        if name is None or kb is None or name == "ray::IDLE":
            continue
        if not name.startswith("ray::") and name not in ("fleet serve (driver)", *RAY_DAEMONS):
            continue
        run.rss_pids[name].add(pid)
        run.rss_peak_kb[name] = max(run.rss_peak_kb.get(name, 0), kb)


async def sampler(run: Run, done: asyncio.Event) -> None:
    while not done.is_set() and run.left() > 0:
        await asyncio.to_thread(sample_rss, run)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 1.0)


def elapsed(run: Run) -> str:
    return f"{time.monotonic() - run.started:6.1f}s"


async def progress(run: Run, done: asyncio.Event) -> None:
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 10.0)
        ended = sum(1 for v in run.final.values() if v["status"] in TERMINAL)
        errors = sum(1 for c in run.calls if c.status == 0 or c.status >= 500)
        print(
            f"[{elapsed(run)}] submitted {len(run.submitted)}/{run.opts.tasks}, ended {ended}, "
            f"kills {dict(run.kills)}, API calls {len(run.calls)} ({errors} failed), "
            f"{max(0.0, run.left()):.0f}s left",
            flush=True,
        )


# -- checks -------------------------------------------------------------------------------
def read_log(run: Run) -> list[tuple[str, int, str, str | None, int | None]]:
    """Every event of the soak's tasks, after replaying a WAL a crash may have left."""
    from core.analytics import AnalyticsError, sql
    from core.eventlog import EventLog

    EventLog(str(run.events_dir), writer=run.name, lock_wait_s=30).close()
    try:
        table = sql(
            str(run.events_dir),
            "select task_id, seq, type, session_id, attempt from events "
            "where task_id like 'soak-%' order by task_id, seq",
        )
    except AnalyticsError:
        return []
    return [tuple(row) for row in table.rows]  # type: ignore[misc]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def check(run: Run, rows: list[tuple[str, int, str, str | None, int | None]]) -> bool:
    by_task: dict[str, list[tuple[int, str, str | None, int | None]]] = defaultdict(list)
    for task_id, seq, kind, session, attempt in rows:
        by_task[task_id].append((seq, kind, session, attempt))
    submitted = set(run.submitted)
    ended_once, lost, twice, gaps, unexpected = [], [], [], [], []
    for task_id in sorted(submitted):
        events = by_task.get(task_id, [])
        terminal = [k for _, k, _, _ in events if k in TERMINAL_EVENTS]
        gate_sessions: dict[int | None, set[str | None]] = defaultdict(set)
        for _, kind, session, attempt in events:
            if kind == "gate.passed":
                gate_sessions[attempt].add(session)
        passed = sum(len(s) for s in gate_sessions.values())
        if not terminal:
            lost.append(task_id)
        elif len(terminal) > 1 or passed > 1:
            twice.append(f"{task_id}: ended {terminal}, gate passed in {passed} sessions")
        else:
            ended_once.append(task_id)
        seqs = sorted(s for s, _, _, _ in events)
        if seqs != list(range(len(seqs))):
            gaps.append(f"{task_id}: seq {seqs[:5]}...{seqs[-5:]} ({len(seqs)} events)")
        state = terminal[-1].removeprefix("task.") if terminal else None
        want = {"cancelled"} if task_id in run.cancelled else {"succeeded"}
        if task_id in run.cancel_tried and task_id not in run.cancelled:
            want = {"cancelled", "succeeded"}
        if state is not None and state not in want:
            reason = run.final.get(task_id, {}).get("reason", "")
            unexpected.append(f"{task_id}: {state} (expected {'/'.join(want)}): {reason[:120]}")
    leaked = leaked_containers(run.name)
    kills_ok = not run.kill_misses

    print("\nPromises")
    table = [
        ("tasks submitted", len(submitted), len(submitted) > 0),
        ("ended exactly once", len(ended_once), len(ended_once) == len(submitted)),
        ("lost (never ended by the deadline)", len(lost), not lost),
        ("run twice (2+ terminal events or gate passes)", len(twice), not twice),
        ("event seq with gaps or repeats", len(gaps), not gaps),
        ("not succeeded (nor cancelled on request)", len(unexpected), not unexpected),
        ("containers left after stop", leaked if leaked >= 0 else "?", leaked == 0),
        (
            f"kills done (supervisor {run.opts.kill_supervisor}, workers {run.opts.kill_workers})",
            f"{run.kills['Supervisor']} + {run.kills['Worker']}",
            kills_ok,
        ),
    ]
    for label, value, ok in table:
        print(f"  {label:<52} {value!s:>10}   {'ok' if ok else 'FAILED'}")
    for title, items in (
        ("lost", lost),
        ("run twice", twice),
        ("gaps", gaps),
        ("unexpected outcomes", unexpected),
        ("kills not done", run.kill_misses),
    ):
        for item in items[:10]:
            print(f"    {title}: {item}")
        if len(items) > 10:
            print(f"    {title}: ... {len(items) - 10} more")

    outcomes = Counter(
        next((k for _, k, _, _ in reversed(by_task.get(t, [])) if k in TERMINAL_EVENTS), "none")
        for t in submitted
    )
    print(f"\nOutcomes: {dict(outcomes)}; by kind: {dict(Counter(run.submitted.values()))}")
    print(f"Client actions (kind, verdict, HTTP status): {dict(sorted(run.actions.items()))}")

    print("\nPeak RSS (MiB; processes seen)")
    for name in sorted(run.rss_peak_kb, key=lambda n: -run.rss_peak_kb[n]):
        print(f"  {name:<48} {run.rss_peak_kb[name] / 1024:8.1f}   {len(run.rss_pids[name])}")

    def during(c: Call) -> bool:
        return any(a <= c.started <= b for a, b in run.kill_windows)

    print("\nAPI latency (ms)   calls  failed   p50      p99")
    for label, calls in (
        ("during kills", [c for c in run.calls if during(c)]),
        ("outside kills", [c for c in run.calls if not during(c)]),
    ):
        ok = [c.seconds * 1000 for c in calls if 0 < c.status < 500]
        failed = len(calls) - len(ok)
        print(
            f"  {label:<15} {len(calls):7d} {failed:7d} {percentile(ok, 0.5):8.1f} "
            f"{percentile(ok, 0.99):8.1f}"
        )
    return all(ok for _, _, ok in table)


def leaked_containers(fleet_name: str) -> int:
    """Containers labelled with this fleet (-1: cannot tell)."""
    try:
        import docker

        client = docker.from_env()
        found = client.containers.list(
            all=True, filters={"label": f"agent-fleet.fleet={fleet_name}"}
        )
        client.close()
        return len(found)
    except Exception as exc:  # no engine: a local-sandbox run leaves none
        print(f"  (docker not reachable: {exc})")
        return -1


# -- main ---------------------------------------------------------------------------------
async def soak(opts: Options, workdir: Path) -> int:
    t0 = time.monotonic()
    deadline = t0 + opts.minutes * 60 - STOP_S - 20  # room to stop and check
    token = secrets.token_hex(16)
    name = f"soak{os.getpid()}"
    proc = start_server(opts, workdir, token, name)
    base = f"http://127.0.0.1:{proc.port}"  # type: ignore[attr-defined]
    print(f"fleet serve (pid {proc.pid}) on {base}, fleet {name}, files in {workdir}", flush=True)
    try:
        return await drive_server(opts, proc, base, token, name, workdir, t0, deadline)
    finally:
        if proc.poll() is None:  # an error or Ctrl-C before the orderly stop
            stop_server(proc)


async def drive_server(
    opts: Options,
    proc: subprocess.Popen[bytes],
    base: str,
    token: str,
    name: str,
    workdir: Path,
    t0: float,
    deadline: float,
) -> int:
    try:
        await wait_ready(proc, base, workdir, min(deadline, t0 + STARTUP_S))
    except RuntimeError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    ready = time.monotonic()
    drain = max(30.0, (deadline - ready) * 0.25)
    run = Run(
        opts=opts,
        base=base,
        token=token,
        name=name,
        events_dir=workdir / "events",
        server_pid=proc.pid,
        started=t0,
        submit_until=deadline - drain,
        deadline=deadline,
    )
    print(
        f"[{elapsed(run)}] ready; submitting for {run.submit_until - ready:.0f}s, "
        f"then draining until {deadline - t0:.0f}s",
        flush=True,
    )
    done = asyncio.Event()
    background = [
        asyncio.create_task(sampler(run, done)),
        asyncio.create_task(progress(run, done)),
    ]
    chaos_task = asyncio.create_task(chaos(run))
    try:
        await asyncio.gather(*(client_loop(run, i) for i in range(opts.clients)))
        await chaos_task
    finally:
        done.set()
        chaos_task.cancel()
        await asyncio.gather(*background, chaos_task, return_exceptions=True)
    if len(run.submitted) < opts.tasks:
        print(f"note: {len(run.submitted)} of {opts.tasks} tasks submitted in the time given")
    print(f"[{elapsed(run)}] stopping fleet serve", flush=True)
    code, clean = await asyncio.to_thread(stop_server, proc)
    print(f"[{elapsed(run)}] fleet serve exited {code} ({'clean' if clean else 'killed'})")
    rows = await asyncio.to_thread(read_log, run)
    held = check(run, rows)
    print(f"\n{'every promise held' if held else 'SOME PROMISES FAILED'} ({elapsed(run)})")
    return 0 if held else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Soak the fleet over HTTP while killing its actors; exit 0 if every "
        "promise held."
    )
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=10.0, help="cap on the whole run")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--inflight", type=int, default=2, help="tasks each client follows")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--sandbox", choices=["docker", "local"], default="docker")
    parser.add_argument("--kill-supervisor", type=int, default=3)
    parser.add_argument("--kill-workers", type=int, default=5)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--workdir", help="where the event log and server output go")
    parser.add_argument("--keep", action="store_true", help="keep the temporary workdir")
    args = parser.parse_args()
    opts = Options(**{k.replace("-", "_"): v for k, v in vars(args).items()})
    if opts.minutes <= (STOP_S + 20) / 60 + 0.5:
        parser.error("--minutes: too short to start, run and stop the fleet")
    if opts.workdir:
        workdir = Path(opts.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        sys.exit(asyncio.run(soak(opts, workdir)))
    with tempfile.TemporaryDirectory(prefix="fleet-soak-") as tmp:
        code = asyncio.run(soak(opts, Path(tmp)))
        if opts.keep:
            kept = Path(tempfile.mkdtemp(prefix="fleet-soak-kept-"))
            subprocess.run(["cp", "-a", f"{tmp}/.", str(kept)], check=False)
            print(f"files kept in {kept}")
    sys.exit(code)


if __name__ == "__main__":
    main()
