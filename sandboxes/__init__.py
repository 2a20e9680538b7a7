"""Sandboxes: where agents run commands. ``create_sandbox`` builds one of a backend.

The backend is chosen once, when a fleet starts: ``resolve_kind`` turns ``auto`` into
``docker`` or ``local`` and the fleet keeps that answer. ``create_sandbox`` takes only a
concrete kind, so a Docker hiccup later fails that sandbox instead of quietly giving a local
one (which isolates nothing).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandboxes.base import CappedOutput, ExecResult, Sandbox, SandboxError, SandboxLost
from sandboxes.local import LocalSandbox
from sandboxes.pool import WarmPool

if TYPE_CHECKING:
    from core.specs import EnvironmentSpec

__all__ = [
    "CappedOutput",
    "ExecResult",
    "LocalSandbox",
    "Sandbox",
    "SandboxError",
    "SandboxLost",
    "WarmPool",
    "create_sandbox",
    "describe_kind",
    "docker_available",
    "resolve_kind",
]


def docker_available() -> bool:
    """True when a Docker engine answers on this machine."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


def resolve_kind(kind: str) -> str:
    """Turn 'auto' into the best backend that works here."""
    if kind == "auto":
        return "docker" if docker_available() else "local"
    if kind not in ("local", "docker"):
        raise SandboxError(f"unknown sandbox kind {kind!r}: use local, docker or auto")
    return kind


def describe_kind(kind: str, why: str = "") -> str:
    """One line naming the sandbox backend that runs and what it does (not) isolate;
    ``why`` says how it was chosen (e.g. "no Docker engine answered")."""
    if kind == "docker":
        return "sandbox: docker (containers isolated from the host, one session at a time)"
    because = f"{why}: " if why else ""
    return (
        f"sandbox: local ({because}commands run as host processes with the worker's user, "
        "not isolated)"
    )


def create_sandbox(
    kind: str,
    environment: EnvironmentSpec,
    name: str,
    output_limit: int = 1_000_000,
    fleet: str = "",
) -> Sandbox:
    """Build (not start) a sandbox of ``kind`` ("docker" or "local", never "auto": resolve
    that once, with ``resolve_kind``) for ``environment``; ``fleet`` labels it."""
    if kind == "docker":
        from sandboxes.docker import DockerSandbox

        return DockerSandbox(environment, name=name, output_limit=output_limit, fleet=fleet)
    if kind == "local":
        return LocalSandbox(env=environment.plain_env(), output_limit=output_limit, name=name)
    raise SandboxError(
        f"sandbox kind {kind!r} is not a backend: resolve it once when the fleet starts "
        "(resolve_kind), so that every sandbox gets the same isolation"
    )
