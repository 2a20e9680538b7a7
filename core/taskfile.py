"""Reading task files (JSONL) and fleet config files (YAML), with errors a person can act on.

One bad line never sinks the batch: it becomes a :class:`LineError` naming the file, the line
and the field at fault, and every other line is still read. A whole file that is unusable
(missing, unreadable, not YAML, an invalid config) raises :class:`~core.errors.InputError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from core.errors import InputError
from core.specs import FleetConfig, TaskSpec

__all__ = ["InputError", "LineError", "load_config", "load_tasks", "parse_tasks"]


@dataclass
class LineError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        return (
            f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"
        )


def _field_errors(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        out.append((loc, msg))
    return out


def parse_tasks(
    text: str, source: str, config: FleetConfig | None = None
) -> tuple[list[TaskSpec], list[LineError]]:
    """Parse JSONL task lines. Blank lines and lines starting with ``#`` are skipped."""
    config = config or FleetConfig()
    tasks: list[TaskSpec] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            errors.append(
                LineError(source, number, "", f"bad JSON: {exc.msg} at column {exc.colno}")
            )
            continue
        if not isinstance(data, dict):
            errors.append(LineError(source, number, "", "a task line must be a JSON object"))
            continue
        try:
            task = TaskSpec.model_validate(data)
        except ValidationError as exc:
            for field, msg in _field_errors(exc):
                errors.append(LineError(source, number, field, msg))
            continue
        if isinstance(task.agent, str) and task.agent not in config.agents:
            known = ", ".join(sorted(config.agents))
            errors.append(
                LineError(source, number, "agent", f"unknown agent {task.agent!r} (known: {known})")
            )
            continue
        if isinstance(task.environment, str) and task.environment not in config.environments:
            known = ", ".join(sorted(config.environments))
            msg = f"unknown environment {task.environment!r} (known: {known})"
            errors.append(LineError(source, number, "environment", msg))
            continue
        if task.id in seen:
            errors.append(
                LineError(source, number, "id", f"duplicate id {task.id!r} (line {seen[task.id]})")
            )
            continue
        seen[task.id] = number
        tasks.append(task)
    return tasks, errors


def load_tasks(
    path: str | Path, config: FleetConfig | None = None
) -> tuple[list[TaskSpec], list[LineError]]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"task file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read task file {path}: {exc}") from None
    return parse_tasks(text, str(path), config)


def load_config(path: str | Path | None) -> FleetConfig:
    """Read agents and environments from a YAML file; no file means the defaults."""
    if path is None:
        return FleetConfig()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    try:
        return FleetConfig.model_validate(data)
    except ValidationError as exc:
        field, msg = _field_errors(exc)[0]
        raise InputError(f"{path}: {field}: {msg}") from None
