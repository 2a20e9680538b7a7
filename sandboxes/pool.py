"""A warm pool of started sandboxes, so a session does not wait for a container to start.

Keyed by a hash of the environment spec: ``acquire`` hands out an idle, already started
sandbox for that environment (or starts one when none is ready), then tops the pool back up
to ``size`` in the background. ``size`` bounds the whole pool, not each environment: topping
up for one environment closes (or stops starting) sandboxes of the others beyond it, so idle
containers do not pile up over many environments. The caller closes a sandbox it was handed,
or hands it to ``release``. Background starts that fail are logged and dropped; the next
``acquire`` then starts one itself, so the error reaches a caller.

Without ``reuse``, a sandbox handed out is never handed out again: ``release`` closes it in
the background (container removal off the caller's critical path; at most ``max_closing`` at
once, ``close`` waits for them all). With ``reuse``, ``release`` resets a sandbox that can be
(see :class:`sandboxes.base.Resettable`) in the background and puts it back with the idle
ones of its environment; one whose reset fails is closed. Such sandboxes on loan count as on
their way back when the pool tops up, all but one (the caller's running session's), and a
reused one may be idle beyond ``size`` by one: a worker, whose finished session gives its
sandbox back while the next one runs, then alternates between two containers instead of
starting one per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from sandboxes.base import Resettable, Sandbox, SandboxError

if TYPE_CHECKING:
    from core.specs import EnvironmentSpec

log = logging.getLogger(__name__)


def environment_key(environment: EnvironmentSpec) -> str:
    return hashlib.sha256(environment.model_dump_json().encode()).hexdigest()[:16]


class WarmPool:
    def __init__(
        self,
        factory: Callable[[EnvironmentSpec], Sandbox],
        size: int = 1,
        max_closing: int = 2,
        *,
        reuse: bool = False,
    ) -> None:
        if size < 0 or max_closing < 1:
            raise ValueError("size must be >= 0 and max_closing >= 1")
        self._factory = factory
        self.size = size
        self.max_closing = max_closing
        self.reuse = reuse
        self._idle: dict[str, deque[Sandbox]] = {}
        self._starting: dict[str, set[asyncio.Task[None]]] = {}
        self._closing: set[asyncio.Task[None]] = set()
        """Background closes: evicted idle sandboxes and released used ones."""
        self._lent: dict[int, tuple[str, EnvironmentSpec]] = {}
        """Sandboxes handed out that may come back (``reuse``): id -> environment key, spec."""
        self._closed = False
        self.hits = 0
        """Acquires served at once by an idle, started sandbox."""
        self.waits = 0
        """Acquires that found none idle and waited for one already starting."""
        self.misses = 0
        """Acquires that found none idle or starting and started one themselves."""
        self.started = 0
        """Sandboxes this pool started (for a caller, or to refill), failed starts left out."""
        self.reused = 0
        """Released sandboxes reset and put back with the idle ones."""

    def idle(self, environment: EnvironmentSpec) -> int:
        """How many started sandboxes wait for ``environment``."""
        return len(self._idle.get(environment_key(environment), ()))

    def held(self) -> int:
        """Sandboxes idle or starting, over all environments (at most ``size`` after a fill)."""
        return sum(map(len, self._idle.values())) + sum(map(len, self._starting.values()))

    async def acquire(self, environment: EnvironmentSpec) -> Sandbox:
        """A started sandbox for ``environment``, now yours to use and close."""
        if self._closed:
            raise SandboxError("warm pool is closed")
        key = environment_key(environment)
        idle = self._idle.setdefault(key, deque())
        starting = self._starting.setdefault(key, set())
        sandbox: Sandbox | None = None
        waited = False
        while sandbox is None:
            if idle:
                sandbox = idle.popleft()
                if waited:
                    self.waits += 1
                else:
                    self.hits += 1
            elif starting:
                # One is on its way: usually quicker to wait for it than to start another.
                waited = True
                await asyncio.wait(set(starting), return_when=asyncio.FIRST_COMPLETED)
            else:
                self.misses += 1
                sandbox = await self._start(environment)
        if self.reuse and isinstance(sandbox, Resettable):
            self._lent[id(sandbox)] = (key, environment)
        self.fill(environment)
        return sandbox

    def _room(self, key: str) -> bool:
        """Whether a reused sandbox of ``key`` may join the idle ones: up to one beyond
        ``size`` (a worker's finished session gives its sandbox back while the one after it
        runs, so it alternates between two), and none when ``size`` is 0 (on demand)."""
        return self.size > 0 and len(self._idle.get(key, ())) <= self.size

    def _returning(self, key: str) -> int:
        """Sandboxes of ``key`` on loan that will come back, all but the newest loan's."""
        return max(0, sum(1 for k, _ in self._lent.values() if k == key) - 1)

    def fill(self, environment: EnvironmentSpec) -> None:
        """Start sandboxes in the background until ``size`` are idle or starting."""
        if self._closed:
            return
        key = environment_key(environment)
        idle = self._idle.setdefault(key, deque())
        starting = self._starting.setdefault(key, set())
        wanted = self.size - len(idle) - len(starting) - self._returning(key)
        if wanted > 0:
            self._make_room(key, wanted)
        for _ in range(wanted):
            task = asyncio.create_task(self._start_idle(key, environment))
            starting.add(task)
            task.add_done_callback(starting.discard)

    def _make_room(self, keep: str, wanted: int) -> None:
        """Close idle sandboxes, then cancel starts, of environments other than ``keep``
        until ``wanted`` more fit in ``size``."""
        excess = self.held() + wanted - self.size
        for key, queue in self._idle.items():
            while excess > 0 and key != keep and queue:
                self._close_behind(queue.popleft())
                excess -= 1
        for key, tasks in self._starting.items():
            for task in list(tasks):
                if excess > 0 and key != keep and not task.done():
                    task.cancel()  # _start closes what it had started
                    tasks.discard(task)
                    excess -= 1

    async def release(self, sandbox: Sandbox) -> None:
        """Take back a sandbox ``acquire`` handed out, done with. With ``reuse`` it is reset
        and kept (or closed when its reset fails or the pool has enough idle ones), else it
        is closed, in the background either way. Returns at once unless ``max_closing``
        closes are already running; then it waits for one to end first, so closes cannot pile
        up."""
        loan = self._lent.pop(id(sandbox), None)
        if loan is not None and not self._closed and self._room(loan[0]):
            key, environment = loan
            task = asyncio.create_task(self._reuse(key, sandbox))
            starting = self._starting.setdefault(key, set())
            starting.add(task)  # an acquire waits for it as for a start
            task.add_done_callback(starting.discard)
            task.add_done_callback(lambda done: self._after_reuse(done, sandbox, environment))
            return
        while len(self._closing) >= self.max_closing:
            await asyncio.wait(set(self._closing), return_when=asyncio.FIRST_COMPLETED)
        self._close_behind(sandbox)

    async def _reuse(self, key: str, sandbox: Sandbox) -> bool:
        """Reset ``sandbox`` and keep it with the idle ones; False when it was closed."""
        assert isinstance(sandbox, Resettable)
        try:
            await sandbox.reset()
        except Exception as exc:
            log.warning("warm pool: a sandbox is closed, not reused: %s", exc)
            self._close_behind(sandbox)
            return False
        if self._closed or not self._room(key):
            self._close_behind(sandbox)
            return False
        self.reused += 1
        self._idle[key].append(sandbox)
        return True

    def _after_reuse(
        self, reuse: asyncio.Task[bool], sandbox: Sandbox, environment: EnvironmentSpec
    ) -> None:
        """A reuse cancelled (the pool closing, or making room), even before it began, or
        broken closes its sandbox; one that did not keep it starts another if the pool is
        short."""
        if reuse.cancelled() or reuse.exception() is not None:
            self._close_behind(sandbox)
        elif not reuse.result():
            self.fill(environment)

    def _close_behind(self, sandbox: Sandbox) -> None:
        task = asyncio.create_task(_close_quietly(sandbox))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _start(self, environment: EnvironmentSpec) -> Sandbox:
        sandbox = self._factory(environment)
        try:
            await sandbox.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await sandbox.close()
            raise
        self.started += 1
        return sandbox

    async def _start_idle(self, key: str, environment: EnvironmentSpec) -> None:
        try:
            sandbox = await self._start(environment)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning(
                "warm pool: starting a sandbox for %s failed", environment.name, exc_info=True
            )
            return
        if self._closed:
            await sandbox.close()
        else:
            self._idle[key].append(sandbox)

    async def close(self) -> None:
        """Stop background starts, close every idle sandbox and wait for the closes of
        released ones."""
        self._closed = True
        tasks = [task for tasks in self._starting.values() for task in tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        idle = [sb for queue in self._idle.values() for sb in queue]
        self._idle.clear()
        await asyncio.gather(*(_close_quietly(sb) for sb in idle), *self._closing)


async def _close_quietly(sandbox: Sandbox) -> None:
    try:
        await sandbox.close()
    except Exception as exc:
        log.warning("warm pool: closing a sandbox failed: %s", exc)
