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
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")

    async def go():
        box = await started(env={"FROM_ENV_SPEC": "yes"})
        try:
            r = await box.exec("env")
            assert "hunter2" not in r.stdout
            assert "FROM_ENV_SPEC=yes" in r.stdout
        finally:
            await box.close()

    run(go())


def test_capped_output_counts_what_it_drops():
    cap = CappedOutput(10)
    for _ in range(10):
        cap.feed(b"abcdefghij")
    assert cap.total == 100 and cap.truncated
    assert cap.text().startswith("abcde") and cap.text().endswith("fghij")
    assert "90 bytes elided" in cap.text()
