"""One error hierarchy: every exception class of the project derives from FleetError, and the
error an actor raised reaches the caller from Ray's structured fields."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import tomllib
import uuid
from pathlib import Path

import pytest

import core.errors
from core.errors import FleetError, InputError, StateError, StorageError, one_line, root_cause

# The project's packages, as the layer contract lists them (a new package is walked too).
PACKAGES = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["tool"][
    "importlinter"
]["root_packages"]


def project_exception_classes() -> list[type[BaseException]]:
    """Every exception class defined (not imported) in a module of the project's packages."""
    found: dict[str, type[BaseException]] = {}
    for name in PACKAGES:
        package = importlib.import_module(name)
        modules = [package]
        for info in pkgutil.walk_packages(package.__path__, prefix=f"{name}."):
            modules.append(importlib.import_module(info.name))
        for module in modules:
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and issubclass(cls, BaseException):
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return sorted(found.values(), key=lambda cls: cls.__qualname__)


def test_every_project_exception_derives_from_fleet_error() -> None:
    classes = project_exception_classes()
    names = {cls.__name__ for cls in classes}
    # The walk finds them all (an empty walk would pass the check below vacuously).
    assert {"TaskRejected", "SandboxLost", "ImageBuildError", "PolicyError", "CliError"} <= names
    assert len(classes) >= 20
    strays = [f"{cls.__module__}.{cls.__qualname__}" for cls in classes]
    strays = [
        name for name, cls in zip(strays, classes, strict=True) if not issubclass(cls, FleetError)
    ]
    assert strays == [], f"exception classes outside the FleetError hierarchy: {strays}"


def test_the_tree_in_core_errors_names_every_exception_class() -> None:
    doc = core.errors.__doc__ or ""
    missing = [cls.__name__ for cls in project_exception_classes() if cls.__name__ not in doc]
    assert missing == [], f"add these to the tree in core/errors.py: {missing}"


def test_fleet_error_is_one_class_wherever_it_is_imported_from() -> None:
    from fleet import FleetError as from_fleet
    from fleet.api import FleetError as from_api
    from fleet.api import FleetUnavailable

    assert from_fleet is from_api is FleetError
    assert issubclass(FleetUnavailable, FleetError) and issubclass(FleetUnavailable, RuntimeError)


def test_classes_keep_the_builtin_bases_code_catches_them_by() -> None:
    from actors.registry import SpecConflict
    from actors.scheduler import TaskRejected, UnknownSpec
    from core.analytics import AnalyticsError
    from core.eventlog import EventLogError
    from core.taskfile import InputError as taskfile_input_error
    from sandboxes.base import SandboxError, SandboxLost
    from serve.plumbing import BodyTooLarge
    from serve.policy import PolicyError

    assert taskfile_input_error is InputError
    assert issubclass(TaskRejected, InputError) and issubclass(TaskRejected, ValueError)
    assert issubclass(PolicyError, ValueError)
    assert issubclass(SpecConflict, StateError) and issubclass(SpecConflict, ValueError)
    assert issubclass(UnknownSpec, StateError) and issubclass(UnknownSpec, LookupError)
    assert issubclass(EventLogError, StorageError) and issubclass(AnalyticsError, StorageError)
    assert issubclass(SandboxLost, SandboxError) and issubclass(SandboxError, RuntimeError)
    # A ValueError would be caught by the strict JSON parser and answered 422, not 413.
    assert not issubclass(BodyTooLarge, ValueError)
    rejected = TaskRejected("t1", "agent", "unknown agent 'x'")
    assert (rejected.task_id, rejected.field, str(rejected)) == (
        "t1",
        "agent",
        "task t1: agent: unknown agent 'x'",
    )
    assert BodyTooLarge(10).status_code == 413


def test_root_cause_of_a_plain_exception_is_itself() -> None:
    error = KeyError("k")
    assert root_cause(error) is error
    assert one_line(ValueError("first\nsecond")) == "first"
    assert one_line(RuntimeError()) == "RuntimeError"


# -- with Ray --------------------------------------------------------------------------------
class Refused(InputError):
    """What the test actors raise."""


@pytest.mark.ray
def test_root_cause_finds_what_an_actor_raised(ray_session: None) -> None:
    import ray

    @ray.remote
    class Fails:
        def __init__(self, in_init: bool) -> None:
            if in_init:
                raise Refused("bad setting in __init__")

        def method(self) -> None:
            raise Refused("bad setting in a method")

        def nested(self, other: object) -> None:
            ray.get(other.method.remote())  # type: ignore[attr-defined]

        def conflict(self) -> None:
            from actors.registry import SpecConflict

            raise SpecConflict("agent 'coder' is at version 2, not 1")

    ok = Fails.remote(False)
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(ok.method.remote())
    assert isinstance(info.value, Refused)  # Ray's dual class keeps our bases
    cause = root_cause(info.value)
    assert type(cause) is Refused and str(cause) == "bad setting in a method"

    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(Fails.remote(False).nested.remote(ok))
    cause = root_cause(info.value)
    assert type(cause) is Refused and str(cause) == "bad setting in a method"

    from actors.registry import SpecConflict  # a class with a builtin mixin base

    with pytest.raises(SpecConflict) as conflict:
        ray.get(ok.conflict.remote())
    assert isinstance(conflict.value, ray.exceptions.RayTaskError)
    assert one_line(root_cause(conflict.value)) == "agent 'coder' is at version 2, not 1"

    broken = Fails.remote(True)
    with pytest.raises(ray.exceptions.ActorDiedError) as died:
        ray.get(broken.method.remote())
    assert died.value.actor_init_failed
    cause = root_cause(died.value)
    assert type(cause) is Refused and one_line(cause) == "bad setting in __init__"


@pytest.mark.ray
def test_a_supervisor_that_cannot_start_says_why(ray_session: None, tmp_path: Path) -> None:
    from fleet import Fleet, FleetError

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the events directory should be")
    events = blocker / "events"
    with pytest.raises(FleetError) as info:
        Fleet.start(
            name=f"t{uuid.uuid4().hex[:8]}",
            events_dir=str(events),
            wal_dir=str(tmp_path / "wal"),
            sandbox="local",
            workers=1,
            namespace="agent-fleet-tests",
        )
    message = str(info.value)
    assert message.startswith("the supervisor failed to start: cannot write the event log at ")
    assert str(events) in message and "Not a directory" in message
    assert "\n" not in message and "Traceback" not in message
