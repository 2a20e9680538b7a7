"""The docker sandbox against a real Docker engine (skipped only when none answers)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.specs import EnvironmentSpec
from sandboxes import LocalSandbox, Sandbox, SandboxError, SandboxLost, docker_available

pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(not docker_available(), reason="no Docker engine answers"),
]


@pytest.fixture(scope="module", autouse=True)
def base_image() -> str:
    from sandboxes.images import ensure_base_image

    return ensure_base_image()


@contextlib.asynccontextmanager
async def running(env: EnvironmentSpec | None = None, **kwargs: Any) -> AsyncIterator[Any]:
    from sandboxes.docker import DockerSandbox

    sandbox = DockerSandbox(env or EnvironmentSpec(), name="test", **kwargs)
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_exec_runs_as_unprivileged_user_with_clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_HOST_SECRET", "hunter2")

    async def go() -> None:
        env = EnvironmentSpec(env={"FROM_SPEC": "spec"})
        async with running(env) as sb:
            assert isinstance(sb, Sandbox)
            res = await sb.exec("echo out; echo err >&2; exit 7")
            assert (res.exit_code, res.stdout, res.stderr) == (7, "out\n", "err\n")
            res = await sb.exec("id -u; pwd; env", env={"PER_CALL": "call"})
            lines = res.stdout.splitlines()
            assert lines[0] == "1000" and lines[1] == "/workspace"
            assert "FROM_SPEC=spec" in lines and "PER_CALL=call" in lines
            assert "hunter2" not in res.stdout
            # Nothing outside the workspace, /tmp and home is writable.
            for path in ("/etc/x", "/x", "/opt/fleet/x", "/usr/bin/x"):
                res = await sb.exec(f"echo hi > {path}")
                assert res.exit_code != 0, path
            res = await sb.exec("cat /proc/self/status | grep CapEff")
            assert res.stdout.split()[1] == "0000000000000000"

    run(go())


def test_fast_exec_round_trip() -> None:
    async def go() -> None:
        async with running() as sb:
            times = []
            for _ in range(60):
                started = time.perf_counter()
                res = await sb.exec("true")
                times.append((time.perf_counter() - started) * 1000)
                assert res.exit_code == 0
            assert statistics.median(times) < 15.0, times

    run(go())


def test_files_snapshot_and_restore_across_backends(tmp_path: Any) -> None:
    async def go() -> None:
        async with running() as a, running() as b:
            await a.write_file("src/app.py", b"print('hi')\n")
            await a.write_file("/workspace/data.bin", bytes(range(256)))
            assert await a.read_file("src/app.py") == b"print('hi')\n"
            with pytest.raises(SandboxError):
                await a.read_file("../etc/passwd")
            with pytest.raises(SandboxError):
                await a.write_file("/etc/evil", b"x")
            with pytest.raises(SandboxError, match="no such file"):
                await a.read_file("missing.txt")
            await a.exec("ln -s /etc/passwd escape")
            with pytest.raises(SandboxError, match="outside"):
                await a.read_file("escape")
            await a.exec("rm escape")

            archive = await a.snapshot()
            await b.restore(archive)
            assert (await b.exec("python3 src/app.py")).stdout == "hi\n"
            assert await b.read_file("data.bin") == bytes(range(256))
            res = await b.exec("stat -c %u src/app.py && echo more >> src/app.py")
            assert res.exit_code == 0 and res.stdout.strip() == "1000"

            local = LocalSandbox(root=str(tmp_path))
            await local.start()
            try:
                await local.restore(archive)
                assert (await local.read_file("src/app.py")) == b"print('hi')\n"
                await local.write_file("from_local.txt", b"local")
                await a.restore(await local.snapshot())
                assert await a.read_file("from_local.txt") == b"local"
            finally:
                await local.close()

    run(go())


def _tar(*members: tuple[str, str, bytes]) -> bytes:
    """(name, kind, data-or-link target) -> tar bytes; kind is 'file' or 'symlink'."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_restore_never_writes_outside_the_workspace() -> None:
    async def go() -> None:
        async with running() as sb:
            await sb.restore(_tar(("etc-link", "symlink", b"/etc"), ("ok.txt", "file", b"ok")))
            assert (await sb.exec("readlink etc-link; cat ok.txt")).stdout == "/etc\nok"
            tmp_link = _tar(("t", "symlink", b"/tmp"), ("t/planted", "file", b"x"))
            with pytest.raises(SandboxError, match="outside"):
                await sb.restore(tmp_link)
            assert (await sb.exec("ls /tmp/planted")).exit_code != 0
            with pytest.raises(SandboxError, match="outside"):
                await sb.restore(_tar(("../escape", "file", b"x")))

    run(go())


def test_timeout_kills_the_whole_tree() -> None:
    async def go() -> None:
        async with running() as sb:
            cmd = (
                "sleep 300 & echo $! > pids; "
                "(setsid bash -c 'echo $$ >> pids; exec sleep 300' &); "
                "bash -c 'sleep 300 & echo $! >> pids; wait' & "
                "sleep 0.3; sleep infinity"
            )
            started = time.monotonic()
            res = await sb.exec(cmd, timeout_s=1.5)
            assert res.timed_out and res.exit_code == 124
            assert time.monotonic() - started < 5
            res = await sb.exec(
                "n=0; for p in $(cat pids); do n=$((n+1)); "
                "kill -0 $p 2>/dev/null && echo alive $p; done; echo checked $n"
            )
            assert res.stdout.strip() == "checked 3", res.stdout
            # The background job of a command that finished is ended too (as LocalSandbox does).
            await sb.exec("sleep 300 & echo $! > bg")
            res = await sb.exec("kill -0 $(cat bg) 2>/dev/null && echo alive || echo gone")
            assert res.stdout.strip() == "gone"

    run(go())


def test_sleep_forever_times_out_and_sandbox_stays_usable() -> None:
    async def go() -> None:
        async with running() as sb:
            res = await sb.exec("sleep infinity", timeout_s=0.5)
            assert res.timed_out and "timed out" in res.stderr
            assert (await sb.exec("echo still here")).stdout == "still here\n"

    run(go())


def test_cancelled_exec_leaves_no_stale_output() -> None:
    async def go() -> None:
        async with running() as sb:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(sb.exec("echo early; sleep 30", timeout_s=60), 0.5)
            started = time.monotonic()
            res = await sb.exec("echo fresh")
            assert res.stdout == "fresh\n" and res.exit_code == 0
            assert time.monotonic() - started < 3

    run(go())


def test_output_is_capped_while_streaming() -> None:
    async def go() -> None:
        async with running(output_limit=10_000) as sb:
            started = time.monotonic()
            res = await sb.exec(
                "echo BEGIN; yes 0123456789abcdef | head -c 1000000000; echo; echo END; "
                "yes e | head -c 50000000 >&2",
                timeout_s=60,
            )
            took = time.monotonic() - started
            assert res.exit_code == 0 and res.truncated
            assert res.stdout.startswith("BEGIN\n") and res.stdout.endswith("END\n")
            assert "bytes elided" in res.stdout and len(res.stdout) < 10_200
            assert len(res.stderr) < 10_200 and "bytes elided" in res.stderr
            assert took < 30, took

    run(go())


def test_fork_bomb_is_contained_by_pids_limit() -> None:
    async def go() -> None:
        async with running(EnvironmentSpec(pids=64)) as sb:
            res = await sb.exec(
                "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"
            )
            assert res.stdout.strip() == "64"
            res = await sb.exec("bomb() { bomb | bomb & }; bomb; sleep 3", timeout_s=5)
            assert not res.timed_out or res.exit_code == 124
            started = time.monotonic()
            res = await sb.exec("echo survived; ls /proc | grep -cE '^[0-9]+$'")
            assert res.stdout.splitlines()[0] == "survived"
            assert int(res.stdout.splitlines()[1]) <= 4  # agent, bash, ls, grep
            assert time.monotonic() - started < 3

    run(go())


def test_disk_fill_is_contained() -> None:
    async def go() -> None:
        before = shutil.disk_usage("/var/lib/docker" if os.path.exists("/var/lib/docker") else "/")
        async with running(disk_mb=32, tmp_mb=16) as sb:
            res = await sb.exec("head -c 200M /dev/zero > big")
            assert res.exit_code != 0 and "No space left" in res.stderr
            size = int((await sb.exec("stat -c %s big")).stdout)
            assert size <= 32 * 1024 * 1024
            res = await sb.exec("head -c 100M /dev/zero > /tmp/big")
            assert res.exit_code != 0 and "No space left" in res.stderr
            res = await sb.exec("rm big && echo ok > small && cat small")
            assert res.stdout == "ok\n"
        after = shutil.disk_usage("/var/lib/docker" if os.path.exists("/var/lib/docker") else "/")
        assert after.used - before.used < 100 * 1024 * 1024

    run(go())


# ---------------------------------------------------------------------------- network


FETCH = (
    'python3 -c "import urllib.request,sys; '
    "print(urllib.request.urlopen('http://{ip}:{port}/', timeout=3).read().decode())\""
)


def _gateway(kind: str) -> str:
    from sandboxes import images, network

    cli = images.client()
    try:
        return network.gateway(network.ensure_network(cli, kind))
    finally:
        cli.close()


def test_network_is_off_by_default(host_server: int) -> None:
    async def go() -> None:
        async with running() as sb:
            res = await sb.exec("cat /proc/net/dev | tail -n +3 | cut -d: -f1")
            assert res.stdout.split() == ["lo"]
            res = await sb.exec(FETCH.format(ip="172.17.0.1", port=host_server), timeout_s=10)
            assert res.exit_code != 0 and "hello from host" not in res.stdout

    run(go())


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("iptables"), reason="networks need root + iptables"
)
def test_full_network_reaches_outside_but_not_the_host(
    host_server: int, outside_server: str
) -> None:
    async def go() -> None:
        async with running(EnvironmentSpec(network="full")) as sb:
            res = await sb.exec(FETCH.format(ip=outside_server, port=8080), timeout_s=10)
            assert res.stdout.strip() == "hello from outside", res.stderr
            res = await sb.exec(FETCH.format(ip=_gateway("full"), port=host_server), timeout_s=10)
            assert res.exit_code != 0 and "Connection refused" in res.stderr

    run(go())


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("iptables"), reason="allow-lists need root + iptables"
)
def test_allow_list_allows_only_listed_hosts(outside_server: str) -> None:
    from sandboxes import network

    async def go() -> None:
        fetch = FETCH.format(ip=outside_server, port=8080)
        async with running(EnvironmentSpec(network=[outside_server])) as sb:
            res = await sb.exec(fetch, timeout_s=10)
            assert res.stdout.strip() == "hello from outside", res.stderr
        async with running(EnvironmentSpec(network=["192.0.2.1", "localhost"])) as sb:
            name = sb.container_name
            res = await sb.exec(fetch, timeout_s=10)
            assert res.exit_code != 0 and "hello from outside" not in res.stdout
            assert (
                "192.0.2.1"
                in subprocess.run(
                    ["iptables", "-S", network.CHAIN], capture_output=True, text=True
                ).stdout
            )
            res = await sb.exec("getent hosts localhost")
            assert res.exit_code == 0
        rules = subprocess.run(["iptables", "-S", network.CHAIN], capture_output=True, text=True)
        assert name not in rules.stdout  # cleaned up on close

    run(go())


# ---------------------------------------------------------------------------- images


def test_derived_image_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxes import images

    builds: list[str] = []
    real_build = images._build

    def counting_build(cli: Any, tag: str, *args: Any) -> None:
        builds.append(tag)
        real_build(cli, tag, *args)

    monkeypatch.setattr(images, "_build", counting_build)
    marker = uuid.uuid4().hex
    env = EnvironmentSpec(name="one", files={"/etc/fleet-marker": marker, "seed.txt": "seeded"})
    same = EnvironmentSpec(name="two", files=dict(env.files), cpus=0.5, network="full")
    cli = images.client()
    try:
        tag = images.ensure_environment_image(env, cli)
        assert builds == [tag] and tag.startswith(images.ENV_REPO + ":")
        started = time.monotonic()
        assert images.ensure_environment_image(same, cli) == tag
        assert builds == [tag] and time.monotonic() - started < 2
        images.forget()  # as another process would: found in Docker, not rebuilt
        assert images.ensure_environment_image(same, cli) == tag
        assert builds == [tag]

        async def go() -> None:
            async with running(same) as sb:
                assert (await sb.exec("cat /etc/fleet-marker")).stdout == marker
                assert await sb.read_file("seed.txt") == b"seeded"

        run(go())
        assert builds == [tag]
    finally:
        with contextlib.suppress(Exception):
            cli.images.remove(tag, force=True)
        images.forget()
        cli.close()


def test_apt_and_pip_packages_are_installed() -> None:
    async def go() -> None:
        env = EnvironmentSpec(apt=["jq"], pip=["six==1.16.0"])
        async with running(env) as sb:
            res = await sb.exec(
                "echo '{\"a\": 5}' | jq .a && python -c 'import six; print(six.__version__)'"
            )
            assert res.stdout.split() == ["5", "1.16.0"], res.stderr

    run(go())


def test_bad_packages_are_named_in_the_error() -> None:
    from sandboxes.images import ImageBuildError, ensure_environment_image

    bad = f"no-such-package-{uuid.uuid4().hex[:6]}"
    with pytest.raises(ImageBuildError, match=bad) as info:
        ensure_environment_image(EnvironmentSpec(apt=["jq", bad]))
    assert info.value.package == bad
    with pytest.raises(ImageBuildError, match=bad) as info:
        ensure_environment_image(EnvironmentSpec(pip=["six", bad]))
    assert info.value.package == bad
    with pytest.raises(ImageBuildError) as info:
        ensure_environment_image(EnvironmentSpec(apt=["jq; rm -rf /"]))
    assert info.value.package == "jq; rm -rf /"


# ---------------------------------------------------------------------------- reaper


def test_reaper_removes_labelled_leftovers() -> None:
    from sandboxes import images, network
    from sandboxes.docker import reap_containers

    cli = images.client()
    base = images.ensure_base_image(cli)
    mine, other = f"reap-{uuid.uuid4().hex[:6]}", f"keep-{uuid.uuid4().hex[:6]}"
    ids = {}
    try:
        for owner in (mine, mine, other):
            c = cli.containers.run(
                base,
                ["sleep", "600"],
                detach=True,
                network_mode="none",
                labels={"agent-fleet": "1", "agent-fleet.owner": owner},
            )
            ids.setdefault(owner, []).append(c.id)
        iptables = os.geteuid() == 0 and shutil.which("iptables")
        if iptables:
            network.allow_only("ghost-container", "10.254.254.254", [])
        assert reap_containers(owner=mine, cli=cli) == 2
        left = {c.id for c in cli.containers.list(all=True, filters={"label": "agent-fleet=1"})}
        assert not set(ids[mine]) & left
        assert set(ids[other]) <= left
        if iptables:
            rules = subprocess.run(
                ["iptables", "-S", network.CHAIN], capture_output=True, text=True
            )
            assert "ghost-container" not in rules.stdout
    finally:
        for cid in ids.get(other, []) + ids.get(mine, []):
            with contextlib.suppress(Exception):
                cli.api.remove_container(cid, force=True)
        cli.close()


def test_reap_orphans_removes_only_containers_of_dead_owners(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import socket

    from actors.worker import reap_node_containers
    from sandboxes import images
    from sandboxes.docker import reap_orphans

    host = socket.gethostname()
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid is dead
    owners = {
        "dead": f"{host}-{gone.pid}",
        "live": f"{host}-{os.getpid()}",
        "elsewhere": f"another-node-{gone.pid}",  # not this node's to judge
    }
    cli = images.client()
    base = images.ensure_base_image(cli)
    ids: dict[str, str] = {}

    def create(key: str, owner: str) -> None:
        labels = {"agent-fleet": "1", "agent-fleet.owner": owner}
        c = cli.containers.create(base, ["sleep", "600"], network_mode="none", labels=labels)
        ids[key] = c.id

    try:
        for key, owner in owners.items():
            create(key, owner)
        reap_orphans(cli=cli)  # (another process's reaper may take some first: count free)
        left = {c.id for c in cli.containers.list(all=True, filters={"label": "agent-fleet=1"})}
        assert ids["dead"] not in left
        assert {ids["live"], ids["elsewhere"]} <= left
        # What a worker runs at start: the same reaper, never an error.
        create("dead2", owners["dead"])
        reap_node_containers()
        left = {c.id for c in cli.containers.list(all=True, filters={"label": "agent-fleet=1"})}
        assert ids["dead2"] not in left and ids["live"] in left
        monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        assert reap_node_containers() == 0  # no engine on this node: nothing, no exception
    finally:
        for cid in ids.values():
            with contextlib.suppress(Exception):
                cli.api.remove_container(cid, force=True)
        cli.close()


@pytest.mark.parametrize("cancels", [1, 3])
def test_a_start_cancelled_while_creating_leaves_no_container(cancels: int) -> None:
    """Cancelled (once, or again and again as a session being stopped is) while its container
    is being created: the container, created but never started, is removed all the same."""
    from sandboxes import images
    from sandboxes.docker import DockerSandbox

    async def go() -> str:
        sb = DockerSandbox(EnvironmentSpec(), name="cancelled")
        real_create, entered = sb._create, threading.Event()

        def slow_create() -> str:  # made, but the answer comes after the cancel
            made = real_create()
            entered.set()
            time.sleep(0.5)
            return made

        sb._create = slow_create  # type: ignore[method-assign]
        start = asyncio.create_task(sb.start())
        while not entered.is_set():
            await asyncio.sleep(0.01)
        for _ in range(cancels):
            start.cancel()
            await asyncio.sleep(0.1)
        with pytest.raises(asyncio.CancelledError):
            await start
        return sb.container_name

    name = run(go())
    cli = images.client()
    try:
        assert cli.api.containers(all=True, filters={"name": name}) == []
    finally:
        cli.close()


def test_containers_carry_fleet_task_and_owner_labels() -> None:
    from sandboxes import create_sandbox, images
    from sandboxes.docker import OWNER

    async def go() -> None:
        sb = create_sandbox("docker", EnvironmentSpec(name="py"), name="t1-1", fleet="blue")
        await sb.start()
        try:
            cli = images.client()
            labels = cli.api.inspect_container(sb.container_id)["Config"]["Labels"]
            cli.close()
            assert labels["agent-fleet"] == "1" and labels["agent-fleet.fleet"] == "blue"
            assert labels["agent-fleet.sandbox"] == "t1-1"
            assert labels["agent-fleet.environment"] == "py"
            assert labels["agent-fleet.owner"] == OWNER
        finally:
            await sb.close()

    run(go())


def test_dead_container_is_a_lost_sandbox_at_once() -> None:
    async def go() -> None:
        from sandboxes import images

        async with running() as sb:
            busy = asyncio.create_task(sb.exec("sleep 60", timeout_s=120))
            await asyncio.sleep(0.3)
            started = time.monotonic()
            cli = images.client()
            cli.api.kill(sb.container_id)
            cli.close()
            with pytest.raises(SandboxLost, match="exec agent is gone"):
                await asyncio.wait_for(busy, 10)
            assert time.monotonic() - started < 5  # not the command's timeout
            with pytest.raises(SandboxLost, match="not usable"):
                await sb.exec("true")
            with pytest.raises(SandboxLost):
                await sb.read_file("x")

    run(go())


# ---------------------------------------------------------------------------- the agent


# Tries to reach the exec agent (PID 1, same uid) and forge "done" frames for the next
# request ids: with them, a command (or workspace code a gate runs) could fake any result.
FORGE = r"""
import json, os, struct
for path in ("/proc/1/fd/1", "/proc/1/fd/0", "/proc/1/mem", "/proc/1/root/proc/1/fd/1"):
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        print("denied", path, type(exc).__name__)
        continue
    print("opened", path)
    for rid in range(1, 64):
        head = json.dumps({"id": rid, "t": "done", "code": 0, "timed_out": False,
                           "out_total": 6, "err_total": 0, "out_tail": 6}).encode()
        with_body = struct.pack(">IQ", len(head), 6) + head + b"FORGED"
        try:
            os.write(fd, with_body)
        except OSError:
            pass
"""


def test_a_command_cannot_forge_frames_to_the_host() -> None:
    async def go() -> None:
        async with running() as sb:
            await sb.write_file("forge.py", FORGE.encode())
            res = await sb.exec("python3 forge.py; ls /proc/1/fd; exit 3")
            assert res.exit_code == 3 and "FORGED" not in res.stdout, res
            assert res.stdout.count("denied") == 4 and "opened" not in res.stdout, res.stdout
            assert "Permission denied" in res.stderr  # ls /proc/1/fd
            for _ in range(3):  # nothing forged is waiting for the next requests either
                res = await sb.exec("echo real")
                assert (res.exit_code, res.stdout) == (0, "real\n")
            res = await sb.exec("grep -E '^(TracerPid|Uid)' /proc/1/status; id -u")
            assert res.stdout.split()[-1] == "1000"

    run(go())


def test_signals_cannot_kill_the_agent_and_commands_keep_default_handlers() -> None:
    async def go() -> None:
        async with running() as sb:
            for sig in ("INT", "TERM", "HUP", "QUIT", "USR1", "USR2", "PIPE", "KILL", "STOP"):
                res = await sb.exec(f"kill -{sig} 1; echo sent $?")
                assert res.stdout == "sent 0\n", (sig, res)
                res = await asyncio.wait_for(sb.exec("echo alive"), 10)
                assert res.stdout == "alive\n", sig
            # Commands get the default dispositions back (nothing ignored, TERM kills).
            res = await sb.exec(
                "grep SigIgn /proc/self/status; sleep 30 & kill -TERM $!; wait $!; echo $?; "
                "python3 -c 'import signal as s; print(s.getsignal(s.SIGTERM) == s.SIG_DFL)'"
            )
            lines = res.stdout.split("\n")
            assert lines[0].split() == ["SigIgn:", "0000000000000000"], res.stdout
            assert lines[1:3] == ["143", "True"], res.stdout

    run(go())


def _docker_frame(data: bytes, stream: int = 1) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_an_oversize_frame_is_refused_before_it_is_buffered() -> None:
    from sandboxes.docker import PREFIX_SIZE, _AgentChannel

    async def go() -> None:
        reader = asyncio.StreamReader()
        channel = _AgentChannel(reader, None, max_body=1 << 20)  # type: ignore[arg-type]
        head = b'{"id": 1, "t": "done"}'
        claim = len(head).to_bytes(4, "big") + (1 << 40).to_bytes(8, "big") + head
        reader.feed_data(_docker_frame(claim + b"x" * 1000))  # and the rest never comes
        with pytest.raises(SandboxLost, match="over the limit"):
            await asyncio.wait_for(channel.recv(), 2)
        assert len(channel._buf) < PREFIX_SIZE + len(head) + 1000 + 1

        reader = asyncio.StreamReader()  # a header that is not JSON: out of step
        channel = _AgentChannel(reader, None, max_body=1 << 20)  # type: ignore[arg-type]
        reader.feed_data(_docker_frame((3).to_bytes(4, "big") + bytes(8) + b"{x}"))
        with pytest.raises(SandboxLost, match="malformed"):
            await asyncio.wait_for(channel.recv(), 2)

    run(go())


def test_a_reply_over_the_frame_limit_loses_the_sandbox() -> None:
    async def go() -> None:
        async with running() as sb:
            assert sb.max_frame >= 2 * (1024 << 20)  # a whole workspace fits by default
            await sb.exec("head -c 2000000 /dev/urandom > big")
            sb._channel.max_body = 1 << 20  # as if the agent sent more than it could
            with pytest.raises(SandboxLost, match="over the limit"):
                await asyncio.wait_for(sb.read_file("big"), 10)
            with pytest.raises(SandboxLost, match="not usable"):
                await sb.exec("true")

    run(go())


DIRTY = r"""
mkdir -p deep/er && echo 1 > deep/er/f && chmod 000 deep/er deep && touch .hidden
ln -s /etc/passwd link && mkfifo pipe
echo 2 > /tmp/t && mkdir /tmp/locked && chmod 0 /tmp/locked && echo 3 > ~/.profile-x
echo 4 > /dev/shm/shared
python3 -c "
import ctypes, os
libc = ctypes.CDLL(None)
ids = [libc.shmget(1234, 4096, 0o1600), libc.semget(99, 1, 0o1600), libc.msgget(77, 0o1600)]
assert min(ids) >= 0, ids
os.setxattr('/workspace', 'user.mark', b'v')
"
chmod 700 /workspace
"""

STATE = r"""
ls -A /workspace /tmp /home/agent /dev/shm /dev/mqueue
tail -n +2 /proc/sysvipc/shm /proc/sysvipc/sem /proc/sysvipc/msg
stat -c %a /workspace /home/agent
python3 -c "import os; print(os.listxattr('/workspace'))"
ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\n' ' '; echo
"""


def test_reset_leaves_nothing_of_the_session_before() -> None:
    async def go() -> None:
        env = EnvironmentSpec(files={"seed.txt": "seeded\n"})
        async with running(env) as sb:
            clean = (await sb.exec(STATE)).stdout
            res = await sb.exec(DIRTY)
            assert res.exit_code == 0, res
            service = await sb.spawn(["sleep", "300"])  # as an MCP server: spared by commands
            dirty = await sb.exec(STATE)
            assert "shared" in dirty.stdout and "700" in dirty.stdout, dirty
            assert dirty.stdout.count("\n") > clean.count("\n")
            await sb.reset()
            assert sb.resets == 1
            assert await asyncio.wait_for(service.wait(5), 10) is not None  # killed
            after = (await sb.exec(STATE)).stdout
            # The same as when it started, but the pids of the listing commands.
            assert after.rsplit("\n", 2)[0] == clean.rsplit("\n", 2)[0], after
            assert after.rsplit("\n", 2)[1].split()[0] == "1"  # pid 1, then this command's
            assert (await sb.read_file("seed.txt")) == b"seeded\n"  # the environment's files
            res = await sb.exec("echo again > a && cat a && id -u")
            assert res.stdout == "again\n1000\n"

    run(go())


def test_reset_is_refused_for_a_lost_sandbox() -> None:
    async def go() -> None:
        async with running() as sb:
            from sandboxes.images import client

            client().api.kill(sb.container_id)
            with pytest.raises(SandboxLost):
                await sb.reset()

    run(go())
