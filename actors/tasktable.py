"""Every task's record by id, in the order they were submitted, held compactly while nothing
but the submit has happened to a task.

A big queue is mostly tasks nobody has touched yet: a ``TaskRecord`` with its ``TaskSpec``
costs about 4 KiB of supervisor memory, their submitted form (:class:`Submitted`: the spec as
compact JSON) a tenth of it. A task's record is built from that form the first time it is
looked up by id (``table[id]``, ``get``: its next event, its assignment, a command) and kept
from then on. Readers that go over every task say which they want: ``built()`` (the tasks
past their submit: every running, parked or finished one) or ``records()`` (every task, the
untouched ones built for the moment and not kept); ``peek`` reads one task the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.events import EventType
from core.records import TaskRecord
from core.specs import TaskSpec, TaskState

SUBMITTED = EventType.task_submitted.value


@dataclass(slots=True)
class Submitted:
    """A task as submitted, nothing else having happened to it: what its record is built
    from. ``versions`` and ``labels`` are shared with the tasks submitted alike."""

    spec_json: bytes
    """The ``TaskSpec`` as JSON, without the fields left at their defaults."""
    labels: tuple[str, ...]
    batch: str | None
    plan: dict[str, Any] | None
    versions: dict[str, dict[str, int]]
    at: datetime
    """When it was submitted (the ``task.submitted`` event's ``ts``)."""
    seq: int

    @classmethod
    def of(
        cls,
        spec: TaskSpec,
        labels: tuple[str, ...],
        batch: str | None,
        plan: dict[str, Any] | None,
        versions: dict[str, dict[str, int]],
        at: datetime,
        seq: int,
    ) -> Submitted:
        json = spec.model_dump_json(exclude_defaults=True).encode()
        return cls(json, labels, batch, plan or None, versions, at, seq)

    def build(self) -> TaskRecord:
        """The task's record, as the fold of its ``task.submitted`` event makes it."""
        spec = TaskSpec.model_validate_json(self.spec_json)
        record = TaskRecord(
            id=spec.id,
            spec=spec,
            batch=self.batch,
            submitted_at=self.at,
            plan=self.plan or {},
            seq=self.seq,
            last_event_at=self.at,
            last_event=SUBMITTED,
        )
        record.versions = self.versions  # shared: set, not validated (a copy per task)
        return record


class TaskTable:
    """Task id -> its record (see the module's docstring for what is held compactly)."""

    def __init__(self) -> None:
        self._rows: dict[str, TaskRecord | Submitted] = {}
        self._untouched = 0
        """How many rows are still ``Submitted``."""

    def submitted(self, task_id: str, row: Submitted) -> None:
        """A new task, held as submitted."""
        self._rows[task_id] = row
        self._untouched += 1

    def __setitem__(self, task_id: str, record: TaskRecord) -> None:
        if isinstance(self._rows.get(task_id), Submitted):
            self._untouched -= 1
        self._rows[task_id] = record

    def __getitem__(self, task_id: str) -> TaskRecord:
        """The task's record, built (and kept) if it is still held as submitted."""
        row = self._rows[task_id]
        if isinstance(row, Submitted):
            row = self._rows[task_id] = row.build()
            self._untouched -= 1
        return row

    def get(self, task_id: str) -> TaskRecord | None:
        return self[task_id] if task_id in self._rows else None

    def peek(self, task_id: str) -> TaskRecord | None:
        """The task's record to read, not to change: one held as submitted is built for the
        moment and not kept."""
        row = self._rows.get(task_id)
        return row.build() if isinstance(row, Submitted) else row

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def __iter__(self) -> Iterator[str]:
        """Task ids, in the order they were submitted."""
        return iter(self._rows)

    def __reversed__(self) -> Iterator[str]:
        """Task ids, newest first."""
        return reversed(self._rows)

    @property
    def untouched(self) -> int:
        """How many tasks are held as submitted (every one of them is queued)."""
        return self._untouched

    def seq(self, task_id: str) -> int | None:
        """The ``seq`` of the task's last event (None: no such task), building nothing."""
        row = self._rows.get(task_id)
        return None if row is None else row.seq

    def state(self, task_id: str) -> TaskState | None:
        """The task's state (None: no such task), building nothing."""
        row = self._rows.get(task_id)
        if row is None:
            return None
        return TaskState.queued if isinstance(row, Submitted) else row.state

    def not_before(self, task_id: str) -> float:
        """When the task's backoff ends (0: none), building nothing."""
        row = self._rows[task_id]
        return 0.0 if isinstance(row, Submitted) else row.not_before

    def labels(self, task_id: str) -> list[str]:
        """The task's labels (none for an unknown task), building nothing."""
        row = self._rows.get(task_id)
        if row is None:
            return []
        return list(row.labels) if isinstance(row, Submitted) else row.spec.labels

    def built(self) -> Iterator[TaskRecord]:
        """The records built so far, in submit order: every task past its submit (running,
        parked, finished, queued again) and any looked up. The rest are queued, untouched."""
        for row in list(self._rows.values()):
            if not isinstance(row, Submitted):
                yield row

    def records(self, newest_first: bool = False) -> Iterator[TaskRecord]:
        """Every task's record to read, not to change (see ``peek``), in submit order or
        newest first."""
        rows = list(self._rows.values())
        for row in reversed(rows) if newest_first else rows:
            yield row.build() if isinstance(row, Submitted) else row
