"""A warm pool of started sandboxes, so a session does not wait for a container to start.

Keyed by a hash of the environment spec: ``acquire`` hands out an idle, already started
sandbox for that environment (or starts one when none is ready), then tops the pool back up
to ``size`` in the background. A sandbox that was handed out is never taken back: the caller
closes it. Background starts that fail are logged and dropped; the next ``acquire`` then
starts one itself, so the error reaches a caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from sandboxes.base import Sandbox, SandboxError

if TYPE_CHECKING:
    from fleet.specs import EnvironmentSpec

log = logging.getLogger(__name__)


def environment_key(environment: EnvironmentSpec) -> str:
    return hashlib.sha256(environment.model_dump_json().encode()).hexdigest()[:16]


class WarmPool:
    def __init__(self, factory: Callable[[EnvironmentSpec], Sandbox], size: int = 1) -> None:
        if size < 0:
            raise ValueError("size must be >= 0")
        self._factory = factory
        self.size = size
        self._idle: dict[str, deque[Sandbox]] = {}
        self._starting: dict[str, set[asyncio.Task[None]]] = {}
        self._closed = False
        self.hits = 0
        self.misses = 0

    def idle(self, environment: EnvironmentSpec) -> int:
        """How many started sandboxes wait for ``environment``."""
        return len(self._idle.get(environment_key(environment), ()))

    async def acquire(self, environment: EnvironmentSpec) -> Sandbox:
        """A started sandbox for ``environment``, now yours to use and close."""
        if self._closed:
            raise SandboxError("warm pool is closed")
        key = environment_key(environment)
        idle = self._idle.setdefault(key, deque())
        starting = self._starting.setdefault(key, set())
        sandbox: Sandbox | None = None
        while sandbox is None:
            if idle:
                sandbox = idle.popleft()
                self.hits += 1
            elif starting:
                # One is on its way: usually quicker to wait for it than to start another.
                await asyncio.wait(set(starting), return_when=asyncio.FIRST_COMPLETED)
            else:
                self.misses += 1
                sandbox = await self._start(environment)
        self.fill(environment)
        return sandbox

    def fill(self, environment: EnvironmentSpec) -> None:
        """Start sandboxes in the background until ``size`` are idle or starting."""
        if self._closed:
            return
        key = environment_key(environment)
        idle = self._idle.setdefault(key, deque())
        starting = self._starting.setdefault(key, set())
        for _ in range(self.size - len(idle) - len(starting)):
            task = asyncio.create_task(self._start_idle(key, environment))
            starting.add(task)
            task.add_done_callback(starting.discard)

    async def _start(self, environment: EnvironmentSpec) -> Sandbox:
        sandbox = self._factory(environment)
        try:
            await sandbox.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await sandbox.close()
            raise
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
        """Stop background starts and close every idle sandbox."""
        self._closed = True
        tasks = [task for tasks in self._starting.values() for task in tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        idle = [sb for queue in self._idle.values() for sb in queue]
        self._idle.clear()
        results = await asyncio.gather(*(sb.close() for sb in idle), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("warm pool: closing a sandbox failed: %s", result)
