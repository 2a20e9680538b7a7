"""Tasks: batch submit (a JSON array or JSONL), a task's full record, cancel, review."""

import uuid
from typing import Annotated, Any

from fastapi import HTTPException, Query, Request
from pydantic import ValidationError

from core.records import TaskRecord
from core.specs import TaskSpec
from serve import models as m
from serve.auth import ClientCaller
from serve.clients import shown
from serve.deps import Admit, Settings, Sup, record_of
from serve.openapi import CONFLICT, NOT_FOUND, TOO_MANY, VALIDATION
from serve.plumbing import field_error, loads_strict
from serve.policy import PolicyError
from serve.routes import v1_router

router = v1_router(tags=["tasks"])

BATCH_BODY = {
    "required": True,
    "description": "A JSON array of tasks, or JSONL (one task per line).",
    "content": {
        "application/json": {
            "schema": {"type": "array", "items": {"$ref": "#/components/schemas/TaskSpec"}}
        },
        "application/x-ndjson": {"schema": {"type": "string"}},
    },
}


@router.post(
    "/tasks", openapi_extra={"requestBody": BATCH_BODY}, responses={422: VALIDATION, **TOO_MANY}
)
async def submit_tasks(
    request: Request,
    config: Settings,
    admit: Admit,
    caller: ClientCaller,
    batch: Annotated[str | None, Query(max_length=200)] = None,
) -> m.BatchResult:
    """Queue a batch. Bad tasks are listed in `rejected`; the others still run."""
    items, rejected = parse_batch(await request.body(), config.max_batch)
    operator = await admit.operator_specs(caller)
    specs: list[TaskSpec] = []
    for line, item in items:
        if not isinstance(item, dict):
            rejected.append(m.Rejection(task_id="?", field="", error="not an object", line=line))
            continue
        task_id = str(item.get("id", "?"))
        try:
            specs.append(admit.admit(TaskSpec.model_validate(item), operator))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            rejected.append(
                m.Rejection(task_id=task_id, field=field, error=first["msg"], line=line)
            )
        except PolicyError as exc:
            rejected.append(
                m.Rejection(task_id=task_id, field=exc.field, error=exc.message, line=line)
            )
    batch = batch or f"b-{uuid.uuid4().hex[:8]}"
    out = await admit.submit(specs, batch, caller) if specs else {"accepted": [], "rejected": []}
    rejected += [m.Rejection(**r) for r in out["rejected"]]
    return m.BatchResult(batch=batch, accepted=out["accepted"], rejected=rejected)


def parse_batch(raw: bytes, max_batch: int) -> tuple[list[tuple[int, Any]], list[m.Rejection]]:
    """A JSON array, or JSONL: (line, item) pairs plus the lines that are not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise field_error(("body",), "not UTF-8 text") from None
    items: list[tuple[int, Any]] = []
    rejected: list[m.Rejection] = []
    if text.lstrip().startswith("["):
        try:
            parsed = loads_strict(text)
        except ValueError as exc:
            raise field_error(("body",), f"invalid JSON: {exc}") from None
        items = list(enumerate(parsed, start=1))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append((n, loads_strict(line)))
            except ValueError as exc:
                rejected.append(
                    m.Rejection(task_id="?", field="", error=f"bad JSON: {exc}", line=n)
                )
    if not text.strip():
        raise field_error(("body",), "no tasks")
    if len(items) > max_batch:
        raise field_error(("body",), f"more than {max_batch} tasks")
    return items, rejected


@router.get("/tasks/{task_id}", responses=NOT_FOUND)
async def get_task(sup: Sup, task_id: str) -> TaskRecord:
    """The task's full record (spec, attempts, history, plan); environment variables
    of an inline environment are shown by name only."""
    return shown(await record_of(sup, task_id))


@router.post("/tasks/{task_id}/cancel", responses={**NOT_FOUND, **CONFLICT})
async def cancel_task(sup: Sup, task_id: str) -> TaskRecord:
    await record_of(sup, task_id)
    done = await sup.cancel(task_id)
    if not done:
        raise HTTPException(409, done.reason)
    return shown(await record_of(sup, task_id))


@router.post("/tasks/{task_id}/review", responses={**NOT_FOUND, **CONFLICT})
async def review_task(sup: Sup, task_id: str, body: m.ReviewIn) -> TaskRecord:
    """A person's verdict on a result awaiting review: approve (it succeeds) or reject
    (a new attempt, told why)."""
    await record_of(sup, task_id)
    done = await sup.review(task_id, body.approve, body.message)
    if not done:
        raise HTTPException(409, done.reason)
    return shown(await record_of(sup, task_id))
