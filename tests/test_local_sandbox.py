import asyncio
import os
import time

import pytest

from sandboxes.base import CappedOutput, SandboxError
from sandboxes.local import LocalSandbox


def run(coro):
    return asyncio.run(coro)


async def started(**kw) -> LocalSandbox:
    box = LocalSandbox(**kw)
    await box.start()
    return box


def test_exec_runs_in_the_workspace_with_exit_code_and_streams():
    async def go():
        box = await started()
        try:
            r = await box.exec("pwd; echo out; echo err >&2; exit 7")
            assert r.exit_code == 7
            assert r.stdout.splitlines() == [box.workdir, "out"]
            assert r.stderr.strip() == "err"
        finally:
            await box.close()
        assert not os.path.exists(box.workdir)

    run(go())


def test_timeout_kills_the_whole_process_tree():
    async def go():
        box = await started()
        try:
            t0 = time.perf_counter()
            r = await box.exec("(sleep 1; touch late) & sleep 30", timeout_s=0.3)
            assert r.timed_out and r.exit_code == 124
            assert time.perf_counter() - t0 < 5
            await asyncio.sleep(1.5)  # the background child would have touched 'late' by now
            assert not os.path.exists(os.path.join(box.workdir, "late"))
        finally:
            await box.close()

    run(go())


def test_background_process_does_not_hang_a_finished_command():
    async def go():
        box = await started()
        try:
            t0 = time.perf_counter()
            r = await box.exec("sleep 60 & echo started")
            assert r.exit_code == 0 and "started" in r.stdout
            assert time.perf_counter() - t0 < 5
        finally:
            await box.close()

    run(go())


def test_output_is_capped_while_streaming():
    async def go():
        box = await started(output_limit=1000)
        try:
            r = await box.exec("seq 1 1000000")
            assert r.truncated
            assert len(r.stdout) < 1200
            assert r.stdout.startswith("1\n2\n") and r.stdout.rstrip().endswith("1000000")
            assert "bytes elided" in r.stdout
        finally:
            await box.close()

    run(go())


def test_files_stay_inside_the_workspace_and_snapshot_restores_elsewhere():
    async def go():
        a, b = await started(), await started()
        try:
            await a.write_file("src/x.py", b"print(1)\n")
            assert await a.read_file("src/x.py") == b"print(1)\n"
            assert await a.read_file(os.path.join(a.workdir, "src/x.py")) == b"print(1)\n"
            for bad in ("../escape", "/etc/passwd"):
                with pytest.raises(SandboxError, match="outside the workspace"):
                    await a.write_file(bad, b"x")
            await a.exec("ln -s /etc linkout")
            with pytest.raises(SandboxError, match="outside the workspace"):
                await a.read_file("linkout/hostname")
            with pytest.raises(SandboxError, match="no such file"):
                await a.read_file("missing.txt")
            await b.restore(await a.snapshot())
            assert await b.read_file("src/x.py") == b"print(1)\n"
        finally:
            await a.close()
            await b.close()

    run(go())


def test_commands_get_a_clean_environment(monkeypatch):
    secrets = {
        "FLEET_API_TOKEN": "tok-fleet",
        "OPENAI_API_KEY": "sk-openai",
        "ANTHROPIC_API_KEY": "sk-anthropic",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "GOOGLE_APPLICATION_CREDENTIALS": "/keys/gcp.json",
        "RAY_ADDRESS": "10.0.0.1:6379",
        "DB_PASSWORD": "hunter2",
        "SOME_SERVICE_TOKEN": "svc-token",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TMPDIR", "/tmp")

    async def go():
        box = await started(env={"FROM_ENV_SPEC": "yes"})
        try:
            r = await box.exec("env; cat /dev/null")
            seen = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
            assert not set(secrets) & set(seen), seen
            for value in secrets.values():
                assert value not in r.stdout
            assert not [k for k in seen if k.startswith(("FLEET_", "RAY_", "OPENAI_"))]
            assert seen["FROM_ENV_SPEC"] == "yes"  # declared by the environment: passed on
            assert seen["HOME"] == box.workdir
            assert seen["LC_ALL"] == "C.UTF-8" and seen["TMPDIR"] == "/tmp"
            assert set(seen) <= {
                "PATH", "HOME", "LANG", "LC_ALL", "TERM", "SHELL", "TMPDIR", "FROM_ENV_SPEC",
                "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL",
                "PWD", "SHLVL", "_", "OLDPWD",  # bash's own
            }, sorted(seen)  # fmt: skip
        finally:
            await box.close()

    run(go())


def test_create_sandbox_takes_only_a_resolved_kind():
    from core.specs import EnvironmentSpec
    from sandboxes import create_sandbox, describe_kind

    with pytest.raises(SandboxError, match="'auto' is not a backend: resolve it once"):
        create_sandbox("auto", EnvironmentSpec(), name="x")
    assert isinstance(create_sandbox("local", EnvironmentSpec(), name="x"), LocalSandbox)
    notice = describe_kind("local", "no Docker engine answered")
    assert notice.startswith("sandbox: local (no Docker engine answered: commands run as host")
    assert "not isolated" in notice and "not isolated" not in describe_kind("docker")


def test_capped_output_counts_what_it_drops():
    cap = CappedOutput(10)
    for _ in range(10):
        cap.feed(b"abcdefghij")
    assert cap.total == 100 and cap.truncated
    assert cap.text().startswith("abcde") and cap.text().endswith("fghij")
    assert "90 bytes elided" in cap.text()
