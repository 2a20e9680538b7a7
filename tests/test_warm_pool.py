"""WarmPool logic, driven with LocalSandbox (no Docker needed)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from core.specs import EnvironmentSpec
from sandboxes import LocalSandbox, SandboxError
from sandboxes.pool import WarmPool


class Recorder:
    """A LocalSandbox factory that counts starts/closes and can be slowed or made to fail."""

    def __init__(self, root: str, delay_s: float = 0.0) -> None:
        self.root = root
        self.delay_s = delay_s
        self.fail = False
        self.made: list[Any] = []
        self.closed: list[Any] = []

    def __call__(self, env: EnvironmentSpec) -> LocalSandbox:
        recorder = self

        class Tracked(LocalSandbox):
            async def start(self) -> None:
                await asyncio.sleep(recorder.delay_s)
                if recorder.fail:
                    raise SandboxError("start failed on purpose")
                await super().start()

            async def close(self) -> None:
                recorder.closed.append(self)
                await super().close()

        sandbox = Tracked(env=env.env, root=self.root)
        self.made.append(sandbox)
        return sandbox


def test_acquire_returns_started_sandbox_and_refills(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Recorder(str(tmp_path), delay_s=0.2)
        pool = WarmPool(rec, size=1)
        env = EnvironmentSpec(env={"X": "1"})
        first = await pool.acquire(env)  # cold: started on demand
        assert pool.misses == 1 and (await first.exec("echo $X")).stdout == "1\n"
        await asyncio.sleep(0.4)  # the replacement starts in the background
        assert pool.idle(env) == 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        second = await pool.acquire(env)
        assert loop.time() - started < 0.1  # warm: no start delay
        assert pool.hits == 1 and second is not first and second.workdir
        assert pool.started == 2  # the first, and its replacement (the next one is on its way)
        assert (await second.exec("echo ok")).stdout == "ok\n"
        third = await pool.acquire(env)  # none idle: it waits for the refill on its way
        assert (pool.hits, pool.waits, pool.misses) == (1, 1, 1)
        for sandbox in (first, second, third):
            await sandbox.close()
        await pool.close()

    asyncio.run(go())


def test_used_sandboxes_are_never_handed_out_again(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Recorder(str(tmp_path))
        pool = WarmPool(rec, size=2)
        env = EnvironmentSpec()
        seen = []
        for _ in range(6):
            sandbox = await pool.acquire(env)
            assert all(sandbox is not old for old in seen)
            seen.append(sandbox)
            await asyncio.sleep(0.01)
        await pool.close()
        assert len({id(s) for s in seen}) == 6

    asyncio.run(go())


def test_environments_are_kept_apart(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Recorder(str(tmp_path))
        pool = WarmPool(rec, size=2)
        a, b = EnvironmentSpec(env={"WHO": "a"}), EnvironmentSpec(env={"WHO": "b"})
        pool.fill(a)
        await asyncio.sleep(0.05)
        assert pool.idle(a) == 2 and pool.idle(b) == 0
        sb = await pool.acquire(b)  # never one of a's
        assert (await sb.exec("echo $WHO")).stdout == "b\n"
        assert pool.misses == 1 and pool.hits == 0
        await sb.close()
        await pool.close()

    asyncio.run(go())


def test_concurrent_acquires_get_distinct_sandboxes(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Recorder(str(tmp_path), delay_s=0.05)
        pool = WarmPool(rec, size=2)
        env = EnvironmentSpec()
        got = await asyncio.gather(*(pool.acquire(env) for _ in range(5)))
        assert len({id(s) for s in got}) == 5
        assert len({s.workdir for s in got}) == 5
        for sb in got:
            await sb.close()
        await pool.close()

    asyncio.run(go())


def test_close_closes_idle_and_cancels_starts(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Recorder(str(tmp_path), delay_s=0.0)
        pool = WarmPool(rec, size=2)
        env = EnvironmentSpec()
        held = await pool.acquire(env)
        await asyncio.sleep(0.05)
        idle = [s for s in rec.made if s is not held]
        assert len(idle) == 2 and all(os.path.isdir(s.workdir) for s in idle)
        rec.delay_s = 5.0
        pool.size = 3
        pool.fill(env)  # one slow start in flight
        await asyncio.wait_for(pool.close(), 2.0)
        assert all(s in rec.closed for s in idle)
        assert all(not os.path.exists(s.workdir) for s in idle)
        assert held not in rec.closed and os.path.isdir(held.workdir)
        with pytest.raises(SandboxError):
            await pool.acquire(env)
        await held.close()

    asyncio.run(go())


def test_background_failure_surfaces_on_next_acquire(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Recorder(str(tmp_path))
        pool = WarmPool(rec, size=1)
        env = EnvironmentSpec()
        rec.fail = True
        with pytest.raises(SandboxError, match="on purpose"):
            await pool.acquire(env)
        pool.fill(env)
        await asyncio.sleep(0.02)
        assert pool.idle(env) == 0  # the failed background start was dropped
        assert pool.started == 0  # failed starts are not counted
        rec.fail = False
        sb = await pool.acquire(env)
        assert (await sb.exec("echo fine")).stdout == "fine\n"
        await sb.close()
        await pool.close()

    asyncio.run(go())


def test_idle_sandboxes_are_bounded_over_environments(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Recorder(str(tmp_path))
        pool = WarmPool(rec, size=1)
        envs = [EnvironmentSpec(env={"N": str(i)}) for i in range(4)]
        held = []
        for env in envs:
            held.append(await pool.acquire(env))
            await asyncio.sleep(0.05)  # the refill for env starts in the background
            assert pool.idle(env) == 1
            assert sum(pool.idle(e) for e in envs) == 1 == pool.held()
        await asyncio.sleep(0.05)  # evicted ones are closed in the background
        spare = [s for s in rec.made if s not in held]
        still_open = [s for s in spare if s not in rec.closed]
        assert len(spare) == 4 and len(still_open) == 1  # only the last environment's
        assert all(not os.path.exists(s.workdir) for s in spare if s in rec.closed)
        assert not any(s in rec.closed for s in held)  # handed out: never taken back
        await pool.close()
        assert all(s in rec.closed for s in spare)
        for sb in held:
            await sb.close()

    asyncio.run(go())


def test_a_start_for_another_environment_is_cancelled_beyond_the_bound(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Recorder(str(tmp_path), delay_s=0.3)
        pool = WarmPool(rec, size=1)
        a, b = EnvironmentSpec(env={"WHO": "a"}), EnvironmentSpec(env={"WHO": "b"})
        pool.fill(a)  # a slow start for a is in flight
        await asyncio.sleep(0.05)
        sb = await pool.acquire(b)  # b is wanted now: a's start gives way to b's refill
        assert pool.held() == 1
        await asyncio.sleep(0.5)
        assert pool.idle(a) == 0 and pool.idle(b) == 1
        assert (await sb.exec("echo $WHO")).stdout == "b\n"
        await sb.close()
        await pool.close()

    asyncio.run(go())


def test_release_closes_behind_the_caller_bounded_and_close_waits_for_it(tmp_path: Any) -> None:
    closing = asyncio.Event()

    class SlowClose(Recorder):
        def __call__(self, env: EnvironmentSpec) -> LocalSandbox:
            sandbox = super().__call__(env)
            plain_close = sandbox.close

            async def close() -> None:
                await closing.wait()  # a container removal the engine is slow to do
                await plain_close()

            sandbox.close = close  # type: ignore[method-assign]
            return sandbox

    async def go() -> None:
        rec = SlowClose(str(tmp_path))
        pool = WarmPool(rec, size=0, max_closing=2)
        env = EnvironmentSpec()
        used = [await pool.acquire(env) for _ in range(3)]
        for sandbox in used[:2]:  # returns at once: closed in the background
            await asyncio.wait_for(pool.release(sandbox), 0.5)
        third = asyncio.create_task(pool.release(used[2]))
        await asyncio.sleep(0.2)
        assert not third.done()  # two closes running: the third waits for one
        assert rec.closed == []
        closing.set()
        await asyncio.wait_for(third, 2)
        await pool.close()  # waits for the closes still running
        assert len(rec.closed) == 3
        assert not any(os.path.exists(s.workdir) for s in used)

    asyncio.run(go())


class Resetting(Recorder):
    """A factory of LocalSandboxes that can be reset: their workspace emptied (or a reset
    that fails, on demand). Counts resets."""

    def __init__(self, root: str, delay_s: float = 0.0) -> None:
        super().__init__(root, delay_s)
        self.resets = 0
        self.reset_fails = False

    def __call__(self, env: EnvironmentSpec) -> LocalSandbox:
        sandbox = super().__call__(env)
        recorder = self

        async def reset() -> None:
            await asyncio.sleep(0.01)
            if recorder.reset_fails:
                raise SandboxError("dirty on purpose")
            recorder.resets += 1
            await sandbox.exec("rm -rf ./* ./.[!.]*")

        sandbox.reset = reset  # type: ignore[attr-defined]
        return sandbox


async def session(pool: WarmPool, env: EnvironmentSpec, behind: list[Any]) -> Any:
    """A worker's session: the sandbox of the one before it is released only after this
    one has its own (it finished behind), as the worker does."""
    sandbox = await pool.acquire(env)
    for previous in behind:
        await pool.release(previous)
    behind[:] = [sandbox]
    await sandbox.exec("echo mine > left-behind")
    await asyncio.sleep(0.02)
    return sandbox


def test_with_reuse_a_worker_alternates_between_two_sandboxes(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Resetting(str(tmp_path), delay_s=0.05)
        pool = WarmPool(rec, size=1, reuse=True)
        env = EnvironmentSpec()
        pool.fill(env)
        behind: list[Any] = []
        used = [await session(pool, env, behind) for _ in range(10)]
        await pool.release(behind.pop())
        await asyncio.sleep(0.05)
        assert len(rec.made) == pool.started == 2  # not one per session
        assert {id(s) for s in used} == {id(s) for s in rec.made}
        assert pool.reused == rec.resets == 10 and pool.misses == 0
        assert pool.idle(env) == 2  # one beyond the size: the worker's two
        # A reused sandbox comes back empty: no session sees what the one before it left.
        sandbox = await pool.acquire(env)
        assert (await sandbox.exec("ls -A")).stdout == ""
        await pool.release(sandbox)
        await pool.close()
        assert all(s in rec.closed for s in rec.made)

    asyncio.run(go())


def test_without_reuse_every_session_gets_a_new_sandbox(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Resetting(str(tmp_path))
        pool = WarmPool(rec, size=1)  # reuse is the caller's choice: off by default
        env = EnvironmentSpec()
        behind: list[Any] = []
        used = [await session(pool, env, behind) for _ in range(5)]
        await pool.release(behind.pop())
        await pool.close()
        assert len({id(s) for s in used}) == 5 and rec.resets == 0
        assert all(s in rec.closed for s in used)

    asyncio.run(go())


def test_a_sandbox_whose_reset_fails_is_closed_and_replaced(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Resetting(str(tmp_path))
        pool = WarmPool(rec, size=1, reuse=True)
        env = EnvironmentSpec()
        first = await pool.acquire(env)
        await asyncio.sleep(0.02)
        second = await pool.acquire(env)  # the refill started for the first acquire
        rec.reset_fails = True
        await pool.release(first)
        await pool.release(second)
        await asyncio.sleep(0.1)
        assert first in rec.closed and second in rec.closed  # never handed out again
        assert pool.reused == 0 and pool.idle(env) == 1  # a new one took their place
        third = await pool.acquire(env)
        assert third not in (first, second) and (await third.exec("echo ok")).stdout == "ok\n"
        await pool.release(third)
        await pool.close()

    asyncio.run(go())


def test_one_session_after_another_reuses_without_new_sandboxes(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Resetting(str(tmp_path))
        pool = WarmPool(rec, size=1, reuse=True)
        env = EnvironmentSpec()
        for _ in range(6):  # each released before the next acquire (no work waiting)
            sandbox = await pool.acquire(env)
            assert (await sandbox.exec("ls -A")).stdout == ""
            await sandbox.exec("echo mine > left-behind")
            await pool.release(sandbox)
            await asyncio.sleep(0.05)
        assert pool.started == 2 and pool.reused == 6
        await pool.close()

    asyncio.run(go())


def test_reuse_keeps_at_most_one_idle_beyond_the_pool_size(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Resetting(str(tmp_path))
        pool = WarmPool(rec, size=1, reuse=True)
        env = EnvironmentSpec()
        held = [await pool.acquire(env) for _ in range(4)]  # four at once (a burst)
        await asyncio.sleep(0.05)
        for sandbox in held:
            await pool.release(sandbox)
        await asyncio.sleep(0.1)
        assert pool.held() == pool.idle(env) == 2
        assert sum(s not in rec.closed for s in rec.made) == 2
        await pool.close()
        assert all(s in rec.closed for s in rec.made)

    asyncio.run(go())


def test_no_reuse_without_a_warm_pool(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Resetting(str(tmp_path))
        pool = WarmPool(rec, size=0, reuse=True)  # on demand: nothing kept
        env = EnvironmentSpec()
        sandbox = await pool.acquire(env)
        await pool.release(sandbox)
        await asyncio.sleep(0.05)
        assert sandbox in rec.closed and rec.resets == 0 and pool.held() == 0
        await pool.close()

    asyncio.run(go())


def test_a_release_after_close_closes_the_sandbox(tmp_path: Any) -> None:
    async def go() -> None:
        rec = Resetting(str(tmp_path))
        pool = WarmPool(rec, size=1, reuse=True)
        env = EnvironmentSpec()
        sandbox = await pool.acquire(env)
        await pool.close()
        await pool.release(sandbox)
        await asyncio.sleep(0.05)
        assert sandbox in rec.closed and rec.resets == 0

    asyncio.run(go())
