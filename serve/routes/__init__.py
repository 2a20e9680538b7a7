"""The API's routes, one router per resource (:func:`serve.app.create_app` includes them).

Every /v1 router is made by :func:`v1_router`: its routes need a token (streams also take
it as ``?token=``), parse JSON bodies strictly and document the shared error answers."""

from fastapi import APIRouter, Depends

from serve.auth import client, stream_client
from serve.openapi import ERRORS
from serve.plumbing import StrictJSONRoute


def v1_router(tags: list[str] | None = None, streams: bool = False) -> APIRouter:
    return APIRouter(
        prefix="/v1",
        tags=tags or [],
        dependencies=[Depends(stream_client if streams else client)],
        responses=ERRORS,
        route_class=StrictJSONRoute,
    )
