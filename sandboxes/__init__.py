"""Sandboxes: where agents run commands. ``create_sandbox`` picks and builds a backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sandboxes.base import CappedOutput, ExecResult, Sandbox, SandboxError, SandboxLost
from sandboxes.local import LocalSandbox
from sandboxes.pool import WarmPool

if TYPE_CHECKING:
    from fleet.specs import EnvironmentSpec

__all__ = [
    "CappedOutput",
    "ExecResult",
    "LocalSandbox",
    "Sandbox",
    "SandboxError",
    "SandboxLost",
    "WarmPool",
    "create_sandbox",
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


def create_sandbox(
    kind: str,
    environment: EnvironmentSpec,
    name: str,
    output_limit: int = 1_000_000,
    fleet: str = "",
) -> Sandbox:
    """Build (not start) a sandbox of ``kind`` for ``environment``; ``fleet`` labels it."""
    kind = resolve_kind(kind)
    if kind == "docker":
        from sandboxes.docker import DockerSandbox

        return DockerSandbox(environment, name=name, output_limit=output_limit, fleet=fleet)
    return LocalSandbox(env=environment.env, output_limit=output_limit, name=name)
