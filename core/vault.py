"""The fleet's secrets (the vault): named values that no event, log line, report, checkpoint,
API answer or dashboard ever holds. Specs, events and answers carry references
(``{"secret": "NAME"}``, ``api_key_secret: NAME``); this module is the one place that reads
a value.

Where values live, all on the head (where the supervisor runs):

- the config's ``secrets:`` (:class:`core.specs.SecretSource`): a variable of the head's
  environment or a file, read again each time it is needed (rotate it there);
- the files directly in ``FLEET_SECRETS_DIR`` (``secrets_dir``): each is a secret named
  after its file (the directory an agent's ``api_key_env`` was already looked up in);
- stored secrets, made and rotated over HTTP (``POST/PUT /v1/secrets/{name}``), by
  ``Fleet.put_secret`` or ``fleet secrets set``: one file per secret, mode 0600, in
  ``vault_dir`` (mode 0700), and ``index.json`` with their scope, creation and rotation
  times. They survive a supervisor restart; the event log never holds them.

Scopes (who may name a secret): ``operator`` (the config's, the secrets directory's, and
those made with the admin token or on the head), ``client`` (made with the API token, when
the operator allows it: ``api.client_secrets``; a client's inline environment may name only
these), ``inline`` (the fleet's own: the plain values of an inline environment, kept here
so that ``task.submitted`` holds a reference; never listed, not redacted: they are
configuration, not declared secrets).

Who reads values: the supervisor when it assigns a session (:meth:`Vault.values`: the
session's agent key, reviewer key and environment variables, nothing more; they travel to
the worker in memory with the assignment), the supervisor's manager agent, and a watcher
when it builds a source (:meth:`Vault.location`).

Redaction: a :class:`Redactor` replaces every known value with ``[secret:NAME]``. The
supervisor's journal applies the vault's to every event before it is logged; a session
applies its own values to its commands' output, the files its tools read, its events, its
checkpoints and its result, before anything leaves the worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr

from core.errors import InputError, StateError
from core.events import Event
from core.settings import FleetSettings, host_variable
from core.specs import (
    OPERATOR_SECRET_NAME,
    PLAIN_NAME,
    AgentSpec,
    EnvironmentSpec,
    SecretRef,
    SecretSource,
    TaskSpec,
)

MIN_SECRET_CHARS = 4
"""Shorter values are refused: redacting them would blank out ordinary text."""
MAX_SECRET_BYTES = 64 * 1024
INDEX = "index.json"
KEY = "inline.key"
INLINE_PREFIX = "_inline_"

Scope = Literal["operator", "client", "inline"]
Origin = Literal["config", "secrets_dir", "stored"]


class UnknownSecret(StateError, LookupError):
    """A reference names no secret of the vault (or one that cannot be read now)."""


class SecretDenied(StateError, PermissionError):
    """The caller may not create, rotate or name this secret (it is the operator's)."""


class SecretConflict(StateError, ValueError):
    """The secret exists already (create), or is defined where the vault cannot change it
    (the config, the secrets directory)."""


class SecretInfo(BaseModel):
    """What may be shown of a secret: never its value."""

    name: str
    scope: Scope
    origin: Origin
    created_at: datetime | None = None
    """When it was made (stored), or its file's time (secrets directory); None: config."""
    rotated_at: datetime | None = None
    """When its value was last replaced (stored only); None: never."""


def secret_label(name: str) -> str:
    """What a value is replaced with wherever it would have been written."""
    return f"[secret:{name}]"


def check_value(value: str, where: str) -> str:
    """``value`` when it may be a secret: MIN_SECRET_CHARS characters to MAX_SECRET_BYTES
    bytes (InputError naming ``where`` otherwise; never the value)."""
    if len(value) < MIN_SECRET_CHARS:
        raise InputError(f"{where}: a secret has at least {MIN_SECRET_CHARS} characters")
    if len(value.encode()) > MAX_SECRET_BYTES:
        raise InputError(f"{where}: a secret has at most {MAX_SECRET_BYTES} bytes")
    return value


def read_secret_file(path: str | Path, where: str, first_line: bool = False) -> str:
    """The value in a file (surrounding whitespace cut; only its first line with
    ``first_line``); InputError naming ``where`` and the path when it cannot be read or is
    empty."""
    try:
        value = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: cannot read {path}: {type(exc).__name__}") from None
    if first_line:
        value = value.splitlines()[0].strip() if value else ""
    if not value:
        raise InputError(f"{where}: {path} is empty")
    return value


def read_secret_variable(name: str, where: str) -> str:
    """The value of a variable of this process's environment (surrounding whitespace cut);
    InputError naming ``where`` and the variable when it is unset or empty."""
    value = (host_variable(name) or "").strip()
    if not value:
        raise InputError(f"{where}: environment variable {name} is not set")
    return value


def read_source(source: SecretSource, where: str) -> str:
    """A secret of the config, from its variable or its file."""
    if source.env is not None:
        return read_secret_variable(source.env, where)
    assert source.file is not None
    return read_secret_file(source.file, where)


def secrets_dir_path(secrets_dir: str | None, name: str) -> Path | None:
    """The file ``name`` directly in ``secrets_dir`` when it is there: ``name`` must be a
    plain name, and the file must resolve inside the directory (a symlink out of it is not
    followed). None otherwise."""
    if not secrets_dir or not PLAIN_NAME.fullmatch(name):
        return None
    root = Path(secrets_dir).expanduser().resolve()
    path = (root / name).resolve()
    if path.is_relative_to(root) and path.is_file():
        return path
    return None


def needed_secrets(*specs: AgentSpec | EnvironmentSpec | None) -> set[str]:
    """The secrets a session of these specs is given: agents' keys, the environment's
    variables."""
    names: set[str] = set()
    for spec in specs:
        if isinstance(spec, AgentSpec) and spec.api_key_secret:
            names.add(spec.api_key_secret)
        elif isinstance(spec, EnvironmentSpec):
            names.update(spec.secret_env().values())
    return names


class Redactor:
    """Replaces known values with ``[secret:NAME]`` in text, bytes and JSON-like objects.

    Longer values are replaced first (a value that contains another is replaced whole).
    Cost: one substring search per value over the text (plus a replace where one occurs),
    so it scales with the text's size times the number of values (``benchmarks/vault.py``).
    """

    def __init__(self, secrets: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        """``secrets``: name -> value (or pairs); values shorter than MIN_SECRET_CHARS are
        skipped (the vault never hands one out)."""
        pairs = secrets.items() if isinstance(secrets, Mapping) else secrets
        by_value = {value: name for name, value in pairs if len(value) >= MIN_SECRET_CHARS}
        ordered = sorted(by_value.items(), key=lambda item: -len(item[0]))
        self._text = [(value, secret_label(name)) for value, name in ordered]
        self._bytes = [(value.encode(), label.encode()) for value, label in self._text]

    def __bool__(self) -> bool:
        return bool(self._text)

    def __len__(self) -> int:
        return len(self._text)

    def text(self, text: str) -> str:
        for value, label in self._text:
            if value in text:
                text = text.replace(value, label)
        return text

    def data(self, data: bytes) -> bytes:
        for value, label in self._bytes:
            if value in data:
                data = data.replace(value, label)
        return data

    def obj(self, obj: Any) -> Any:
        """A copy of a JSON-like value (dicts, lists, strings) with every string redacted;
        other values are returned as they are."""
        if not self._text:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            return {self.obj(k): self.obj(v) for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.obj(v) for v in obj]
        return obj

    def events(self, events: list[Event]) -> list[Event]:
        """Redact the events' payloads in place (the same objects); returns ``events``."""
        if self._text:
            for event in events:
                event.payload = self.obj(event.payload)
        return events


def _now() -> datetime:
    return datetime.now(UTC)


class Vault:
    """The fleet's named secrets (see the module's docstring). Plain and synchronous: the
    supervisor holds one; tests build one on a temporary directory."""

    def __init__(
        self,
        directory: str | Path,
        config: Mapping[str, SecretSource] | None = None,
        secrets_dir: str | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.directory = Path(directory).expanduser()
        self.config = dict(config or {})
        self.secrets_dir = secrets_dir
        self.clock = clock
        self._index: dict[str, dict[str, Any]] = self._load_index()
        self._seen: dict[str, str] = {}
        """name -> every value handed out or set under it since this vault was made (old
        values too: a session may still print one after a rotation)."""
        self._old: list[tuple[str, str]] = []
        self._redactor: Redactor | None = None

    @classmethod
    def of(cls, settings: FleetSettings, config: Mapping[str, SecretSource] | None) -> Vault:
        """The vault of a fleet: ``vault_dir`` (default ``~/fleet-vault/<fleet name>``)."""
        directory = settings.vault_dir or os.path.join(
            os.path.expanduser("~/fleet-vault"), re.sub(r"[^A-Za-z0-9_.-]", "_", settings.name)
        )
        events = settings.events_dir
        if "://" not in events and Path(directory).resolve().is_relative_to(Path(events).resolve()):
            raise InputError(f"vault_dir {directory} is inside the events directory {events}")
        return cls(directory, config, settings.secrets_dir)

    # -- what there is ----------------------------------------------------------------------
    def origin(self, name: str) -> Origin | None:
        """Where ``name``'s value comes from (config first, then stored, then the secrets
        directory), or None when no secret has that name."""
        if name in self.config:
            return "config"
        if name in self._index:
            return "stored"
        if secrets_dir_path(self.secrets_dir, name) is not None:
            return "secrets_dir"
        return None

    def scope(self, name: str) -> Scope | None:
        origin = self.origin(name)
        if origin is None:
            return None
        if origin == "stored":
            return self._index[name]["scope"]
        return "operator"

    def info(self, name: str) -> SecretInfo | None:
        origin = self.origin(name)
        if origin is None:
            return None
        if origin == "stored":
            entry = self._index[name]
            return SecretInfo(
                name=name,
                scope=entry["scope"],
                origin=origin,
                created_at=entry.get("created_at"),
                rotated_at=entry.get("rotated_at"),
            )
        created = None
        if origin == "secrets_dir":
            path = secrets_dir_path(self.secrets_dir, name)
            if path is not None:
                created = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return SecretInfo(name=name, scope="operator", origin=origin, created_at=created)

    def names(self) -> list[str]:
        """Every secret's name but the fleet's own (inline) ones, sorted."""
        names = set(self.config) | {n for n, e in self._index.items() if e["scope"] != "inline"}
        if self.secrets_dir and os.path.isdir(os.path.expanduser(self.secrets_dir)):
            root = Path(self.secrets_dir).expanduser()
            names |= {
                p.name
                for p in root.iterdir()
                if OPERATOR_SECRET_NAME.fullmatch(p.name)
                and secrets_dir_path(self.secrets_dir, p.name)
            }
        return sorted(names)

    def list(self, scope: Scope | None = None) -> list[SecretInfo]:
        """What may be shown of every secret (of ``scope``, when given): names, scopes,
        times. Never a value."""
        found = [info for name in self.names() if (info := self.info(name)) is not None]
        return [info for info in found if scope is None or info.scope == scope]

    # -- values -------------------------------------------------------------------------
    def value(self, name: str) -> str:
        """The value of ``name``, read now; UnknownSecret when there is none (or it cannot
        be read: the message says why, never the value)."""
        origin = self.origin(name)
        where = f"secret {name!r}"
        try:
            if origin == "config":
                value = check_value(read_source(self.config[name], where), where)
            elif origin == "stored":
                value = self._read_stored(name, where)
                if self._index[name]["scope"] != "inline":
                    check_value(value, where)
            elif origin == "secrets_dir":
                path = secrets_dir_path(self.secrets_dir, name)
                if path is None:
                    raise InputError(f"{where}: its file left the secrets directory")
                value = check_value(read_secret_file(path, where), where)
            else:
                raise UnknownSecret(f"no secret {name!r}")
        except InputError as exc:
            raise UnknownSecret(str(exc)) from None
        self._remember(name, value)
        return value

    def values(self, names: Iterable[str]) -> dict[str, SecretStr]:
        """name -> value (as SecretStr: a repr or a dump shows no value) for a session."""
        return {name: SecretStr(self.value(name)) for name in sorted(set(names))}

    def put(self, name: str, value: str, *, scope: Scope, create: bool = False) -> SecretInfo:
        """Store ``value`` as the secret ``name``: a new one (of ``scope``), or the next
        value of a stored one (a rotation). ``create``: refuse one that exists
        (SecretConflict). A client (``scope="client"``) may rotate only its own
        (SecretDenied); nobody changes the config's or the secrets directory's here."""
        if scope != "inline" and not OPERATOR_SECRET_NAME.fullmatch(name):
            raise InputError(
                f"secret name {name[:100]!r}: letters, digits and '_', starting with a letter, "
                "at most 100 characters"
            )
        if scope != "inline":
            check_value(value, f"secret {name!r}")
        elif len(value.encode()) > MAX_SECRET_BYTES:
            raise InputError(f"a variable's value has at most {MAX_SECRET_BYTES} bytes")
        current = self.scope(name)
        if scope == "client" and current not in (None, "client"):
            raise SecretDenied(f"secret {name!r} is the operator's: a client may not change it")
        origin = self.origin(name)
        if origin in ("config", "secrets_dir"):
            where = "the fleet's config" if origin == "config" else "the secrets directory"
            raise SecretConflict(f"secret {name!r} is defined in {where}: change it there")
        if create and origin is not None:
            raise SecretConflict(f"secret {name!r} exists: rotate it with PUT")
        now = self.clock()
        entry = self._index.get(name)
        if entry is None:
            entry = {"scope": scope, "created_at": now, "rotated_at": None}
        else:
            entry = entry | {"rotated_at": now}
        self._write(self.directory / name, value.encode())
        self._index[name] = entry
        self._save_index()
        self._remember(name, value)
        info = self.info(name)
        assert info is not None
        return info

    def location(self, name: str) -> tuple[str | None, str | None]:
        """``(variable, file)`` holding ``name``'s value on the head, for code that reads
        it there itself (a source's ``*_env`` / ``*_file`` options); UnknownSecret when
        there is no such secret."""
        origin = self.origin(name)
        if origin == "config":
            source = self.config[name]
            return source.env, source.file
        if origin == "stored":
            return None, str(self.directory / name)
        if origin == "secrets_dir":
            return None, str(secrets_dir_path(self.secrets_dir, name))
        raise UnknownSecret(f"no secret {name!r}")

    # -- inline environments ------------------------------------------------------------
    def seal(self, spec: TaskSpec) -> TaskSpec:
        """``spec`` with its inline environment's plain variable values kept in the vault
        and referenced (``{"secret": "_inline_<keyed hash>"}``), so that the task's events
        and record hold no value. The same value is stored once."""
        environment = spec.environment
        if not isinstance(environment, EnvironmentSpec) or not environment.plain_env():
            return spec
        env: dict[str, str | SecretRef] = {}
        for var, given in environment.env.items():
            if isinstance(given, str):
                name = self._inline_name(var, given)
                if name not in self._index:
                    self.put(name, given, scope="inline")
                given = SecretRef(secret=name)
            env[var] = given
        sealed = environment.model_copy(update={"env": env})
        return spec.model_copy(update={"environment": sealed})

    def _inline_name(self, var: str, value: str) -> str:
        digest = hmac.new(self._key(), f"{var}\0{value}".encode(), hashlib.sha256).hexdigest()
        return f"{INLINE_PREFIX}{digest[:24]}"

    def _key(self) -> bytes:
        """The key inline names are hashed with (made once, kept beside the secrets)."""
        path = self.directory / KEY
        if not path.exists():
            self._write(path, os.urandom(32))
        return path.read_bytes()

    # -- redaction ----------------------------------------------------------------------
    def redactor(self) -> Redactor:
        """A redactor of every declared secret's value this vault can read now, and of
        every value it has handed out or stored since it was made (inline ones are not
        declared secrets: not redacted)."""
        if self._redactor is None:
            for name in self.names():
                with contextlib.suppress(UnknownSecret):
                    self.value(name)
            self._redactor = Redactor(self._old + list(self._seen.items()))
        return self._redactor

    def redact_events(self, events: list[Event]) -> list[Event]:
        """:meth:`Redactor.events` with :meth:`redactor` (for the journal)."""
        return self.redactor().events(events)

    def _remember(self, name: str, value: str) -> None:
        if self._index.get(name, {}).get("scope") == "inline":
            return
        old = self._seen.get(name)
        if old == value:
            return
        if old is not None:
            self._old.append((name, old))
        self._seen[name] = value
        self._redactor = None

    # -- files --------------------------------------------------------------------------
    def _read_stored(self, name: str, where: str) -> str:
        """A stored value exactly as it was put (no whitespace cut)."""
        try:
            return (self.directory / name).read_bytes().decode()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{where}: cannot read it: {type(exc).__name__}") from None

    def _load_index(self) -> dict[str, dict[str, Any]]:
        path = self.directory / INDEX
        if not path.exists():
            return {}
        data = json.loads(path.read_text())
        for entry in data.values():
            for field in ("created_at", "rotated_at"):
                if entry.get(field):
                    entry[field] = datetime.fromisoformat(entry[field])
        return data

    def _save_index(self) -> None:
        data = {
            name: {k: v.isoformat() if isinstance(v, datetime) else v for k, v in entry.items()}
            for name, entry in sorted(self._index.items())
        }
        self._write(self.directory / INDEX, json.dumps(data, indent=1).encode())

    def _write(self, path: Path, data: bytes) -> None:
        """Write a file of the vault atomically, mode 0600, in a 0700 directory, fsynced."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
