"""The API as a Ray Serve deployment: ``@serve.deployment`` + ``@serve.ingress`` over the
plain app of :mod:`serve.app`, built on each replica (it looks the supervisor up by name
and wraps its handle in :class:`serve.ports.ActorPort`).
"""

from __future__ import annotations

from typing import Any

import ray
from fastapi import FastAPI
from pydantic import SecretStr
from ray import serve

from actors.supervisor import supervisor_name
from serve.app import create_app
from serve.settings import ServeSettings

APP_NAME = "agent-fleet"


def build(
    fleet_name: str,
    namespace: str,
    settings: ServeSettings,
    replicas: int = 1,
    max_ongoing_requests: int = 1000,
) -> Any:
    """A bound Serve application for the named fleet (``serve.run`` it)."""
    # Resolve the tokens here so a replica needs neither the env vars nor the files.
    token = SecretStr(settings.resolve_token())
    admin = settings.resolve_admin_token()
    settings = settings.model_copy(
        update={
            "token": token,
            "token_file": None,
            "admin_token": SecretStr(admin) if admin is not None else None,
            "admin_token_file": None,
        }
    )

    def build_app() -> FastAPI:
        handle = ray.get_actor(supervisor_name(fleet_name), namespace=namespace)
        return create_app(handle, settings)

    @serve.deployment(
        name="fleet-api",
        num_replicas=replicas,
        # Streams hold a request each: a replica must take many at once.
        max_ongoing_requests=max_ongoing_requests,
        ray_actor_options={"num_cpus": 0},
    )
    @serve.ingress(build_app)
    class FleetAPI:
        pass

    return FleetAPI.bind()


def start(
    fleet_name: str,
    namespace: str,
    settings: ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int = 1,
) -> None:
    """Start Serve's HTTP proxy on ``host:port`` and deploy the API (Ray must be up)."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build(fleet_name, namespace, settings, replicas), name=APP_NAME, route_prefix="/")


def stop() -> None:
    serve.delete(APP_NAME)
