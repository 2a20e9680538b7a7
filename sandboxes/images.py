"""Images for docker sandboxes, built locally and cached by name.

Three layers, each tagged by a hash of what went into it, so nothing is rebuilt twice:

- ``agent-fleet-rootfs:bookworm``: a Debian root filesystem. Pulled (``python:3.11-slim``)
  when a registry answers, else made with ``debootstrap`` and ``docker import``.
  The ``base_source`` setting (``FLEET_BASE_SOURCE``: ``auto``, ``pull`` or ``debootstrap``)
  picks the way; ``debian_mirror`` (``FLEET_DEBIAN_MIRROR``) is debootstrap's mirror.
- ``agent-fleet-base:<hash>``: the rootfs plus the uid 1000 user, ``/workspace``, the exec
  agent and the host's CA bundle (so pip works behind a TLS-inspecting proxy).
- ``agent-fleet-env:<hash>``: an environment's ``image``/``apt``/``pip``/absolute ``files``
  on top. The hash covers only what changes the image (not name, network or limits).

Builds hold a file lock per tag, so concurrent workers on one host build an image once.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import functools
import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.settings import FleetSettings, host_variable
from sandboxes.base import SandboxError

if TYPE_CHECKING:
    import docker

    from core.specs import EnvironmentSpec

log = logging.getLogger(__name__)

ROOTFS_IMAGE = "agent-fleet-rootfs:bookworm"
BASE_REPO = "agent-fleet-base"
ENV_REPO = "agent-fleet-env"
PULL_IMAGE = "python:3.11-slim"
AGENT_SOURCE = Path(__file__).with_name("exec_agent.py")
AGENT_PATH = "/opt/fleet/exec_agent.py"
CA_PATH = "/etc/fleet/ca-bundle.pem"
VENV = "/opt/venv"
UID = 1000
LABEL = "agent-fleet"
LOCK_DIR = Path(tempfile.gettempdir()) / "agent-fleet-locks"

_known: dict[str, str] = {}
"""Images this process has built or found: spec digest (or "base") -> tag."""
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
"""Colour codes apt and pip put in their output."""
_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]*(:[a-z0-9]+)?([=][A-Za-z0-9.+:~\-]+)?$")
"""A Debian package name, an optional :arch and an optional =version (nothing for a shell)."""
_PIP_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_PIP_CLAUSE = r"(?:===|==|!=|<=|>=|~=|<|>)[A-Za-z0-9.*+!_-]+"
_PIP_REQUIREMENT = re.compile(
    rf"^{_PIP_NAME}(?:\[{_PIP_NAME}(?:,{_PIP_NAME})*\])?(?:{_PIP_CLAUSE}(?:,{_PIP_CLAUSE})*)?$"
)
"""A PEP 508 name, optional [extras] and version clauses: no URL, option, marker or space."""
_PIP_FAILURES = [
    re.compile(r"No matching distribution found for ([^\s]+)"),
    re.compile(r"Could not find a version that satisfies the requirement ([^\s]+)"),
    re.compile(r"Failed to build ([^\s]+)"),
]
_APT_FAILURES = [
    re.compile(r"Unable to locate package ([^\s]+)"),
    re.compile(r"Package '?([^\s']+)'? has no installation candidate"),
    re.compile(r"Version '[^']+' for '([^']+)' was not found"),
]


class ImageBuildError(SandboxError):
    """An image could not be built; ``package`` names the culprit when it is known."""

    def __init__(self, message: str, package: str | None = None, log_tail: str = "") -> None:
        super().__init__(message)
        self.package = package
        self.log_tail = log_tail


def client() -> docker.DockerClient:
    import docker

    try:
        return docker.from_env(timeout=600)
    except Exception as exc:
        raise SandboxError(f"no Docker engine answers: {exc}") from exc


@contextlib.contextmanager
def _file_lock(name: str) -> Iterator[None]:
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_DIR / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _exists(cli: docker.DockerClient, tag: str) -> bool:
    import docker

    try:
        cli.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def forget() -> None:
    """Drop this process's memory of which images exist (after images were removed)."""
    _known.clear()


@functools.lru_cache(maxsize=1)
def host_ca_bundle() -> Path | None:
    """The CA bundle this host's pip trusts (it may include a TLS-inspecting proxy's CA)."""
    candidates = [host_variable(v) for v in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")]
    candidates.append(pip_config_cert())
    candidates.append("/etc/ssl/certs/ca-certificates.crt")
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


SYSTEM_PIP_CONF = Path("/etc/pip.conf")


def pip_config_files() -> list[Path]:
    """pip's configuration files, in pip's order (a later one wins): ``PIP_CONFIG_FILE``
    alone when set, else the global ones (``XDG_CONFIG_DIRS``, ``/etc``), the user's
    (``~/.pip``, ``~/.config/pip``) and the environment's (this Python's prefix)."""
    named = host_variable("PIP_CONFIG_FILE")
    if named:
        return [Path(named)]
    xdg = host_variable("XDG_CONFIG_DIRS") or "/etc/xdg"
    config = Path(host_variable("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [
        *(Path(d) / "pip" / "pip.conf" for d in reversed(xdg.split(os.pathsep)) if d),
        SYSTEM_PIP_CONF,
        Path.home() / ".pip" / "pip.conf",
        config / "pip" / "pip.conf",
        Path(sys.prefix) / "pip.conf",
    ]


def pip_config_cert() -> str | None:
    """``global.cert`` from pip's configuration files, read as ``pip config get`` does but
    without starting pip (half a second of CPU in every worker)."""
    parser = configparser.RawConfigParser()
    for path in pip_config_files():
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(path)
    return parser.get("global", "cert", fallback=None)


# ---------------------------------------------------------------------------- rootfs


def _registry_answers(host: str = "registry-1.docker.io") -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def _pull_rootfs(cli: docker.DockerClient) -> bool:
    repo, tag = PULL_IMAGE.split(":")
    try:
        image = cli.images.pull(repo, tag=tag)
    except Exception as exc:
        log.warning("pull of %s failed (%s); falling back to debootstrap", PULL_IMAGE, exc)
        return False
    image.tag(*ROOTFS_IMAGE.split(":"))
    return True


def _debootstrap_rootfs(cli: docker.DockerClient, mirror: str) -> None:
    if os.geteuid() != 0:
        raise SandboxError("building the base image with debootstrap needs root")
    if not shutil.which("debootstrap"):
        raise SandboxError("no registry answers and debootstrap is not installed")
    work = Path(tempfile.mkdtemp(prefix="fleet-rootfs-"))
    root = work / "rootfs"
    try:
        cmd = [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,git,ca-certificates",
            "bookworm",
            str(root),
            mirror,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise ImageBuildError(
                f"debootstrap failed: {done.stdout[-2000:]}{done.stderr[-2000:]}",
                log_tail=done.stdout[-4000:],
            )
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        tarball = work / "rootfs.tar"
        subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
        repo, tag = ROOTFS_IMAGE.split(":")
        cli.api.import_image(src=str(tarball), repository=repo, tag=tag)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ensure_rootfs(
    cli: docker.DockerClient | None = None, settings: FleetSettings | None = None
) -> str:
    """The Debian root filesystem image, made once per host as ``settings`` say (default:
    this process's environment, ``FleetSettings()``): pulled or debootstrapped."""
    cli = cli or client()
    settings = settings or FleetSettings()
    if _exists(cli, ROOTFS_IMAGE):
        return ROOTFS_IMAGE
    with _file_lock("rootfs"):
        if _exists(cli, ROOTFS_IMAGE):
            return ROOTFS_IMAGE
        source = settings.base_source
        pulled = False
        if source == "pull" or (source == "auto" and _registry_answers()):
            pulled = _pull_rootfs(cli)
        if not pulled:
            _debootstrap_rootfs(cli, settings.debian_mirror)
    return ROOTFS_IMAGE


# ---------------------------------------------------------------------------- base layer


def _setup_steps() -> list[str]:
    """Dockerfile lines that make any Debian-like image a sandbox image."""
    ca = host_ca_bundle()
    lines = [
        # A pulled python image has no git; the debootstrap rootfs has it already.
        "RUN command -v git >/dev/null || (apt-get update && apt-get install -y "
        "--no-install-recommends git ca-certificates && rm -rf /var/lib/apt/lists/*)",
        f"RUN (getent passwd {UID} >/dev/null || "
        f"echo 'agent:x:{UID}:{UID}:fleet agent:/home/agent:/bin/bash' >> /etc/passwd) && "
        f"(getent group {UID} >/dev/null || echo 'agent:x:{UID}:' >> /etc/group) && "
        f"mkdir -p /workspace /home/agent /opt/fleet /etc/fleet && "
        f"chown {UID}:{UID} /workspace /home/agent",
        f"COPY exec_agent.py {AGENT_PATH}",
    ]
    if ca:
        lines.append(f"COPY ca-bundle.pem {CA_PATH}")
    lines += [
        "WORKDIR /workspace",
        f'CMD ["python3", "-I", "{AGENT_PATH}"]',
    ]
    return lines


def _context_files() -> dict[str, bytes]:
    files = {"exec_agent.py": AGENT_SOURCE.read_bytes()}
    ca = host_ca_bundle()
    if ca:
        files["ca-bundle.pem"] = ca.read_bytes()
    return files


def _digest(parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _context_digest() -> str:
    return _digest({k: hashlib.sha256(v).hexdigest() for k, v in _context_files().items()})


def ensure_base_image(cli: docker.DockerClient | None = None) -> str:
    """The tag of the fleet's base image, building it (and the rootfs) if needed."""
    if _known.get("base"):
        return _known["base"]
    cli = cli or client()
    rootfs = ensure_rootfs(cli)
    rootfs_id = cli.images.get(rootfs).id
    steps = _setup_steps()
    tag = f"{BASE_REPO}:{_digest([rootfs_id, steps, _context_digest()])}"
    dockerfile = "\n".join([f"FROM {rootfs}", *steps]) + "\n"
    _build_once(cli, tag, dockerfile, _context_files(), kind="base")
    _known["base"] = tag
    return tag


# ---------------------------------------------------------------------------- environments


def environment_image_spec(environment: EnvironmentSpec) -> dict[str, Any]:
    """The parts of an environment that change its image."""
    return {
        "image": environment.image,
        "apt": sorted(environment.apt),
        "pip": list(environment.pip),
        "files": {k: v for k, v in sorted(environment.files.items()) if os.path.isabs(k)},
    }


def needs_derived_image(environment: EnvironmentSpec) -> bool:
    spec = environment_image_spec(environment)
    return bool(spec["image"] or spec["apt"] or spec["pip"] or spec["files"])


def environment_tag(environment: EnvironmentSpec, base: str) -> str:
    return f"{ENV_REPO}:{_digest([base, environment_image_spec(environment)])}"


def check_packages(environment: EnvironmentSpec) -> None:
    """Refuse apt or pip entries that are more than a package requirement (an option such as
    ``--index-url``, a URL, a path, a marker, shell characters): ImageBuildError names it."""
    for name in environment.apt:
        if not isinstance(name, str) or not _APT_NAME.fullmatch(name):
            raise ImageBuildError(
                f"apt: {name!r} is not a Debian package name (name, optional :arch and =version)",
                package=str(name),
            )
    for requirement in environment.pip:
        if not isinstance(requirement, str) or not _PIP_REQUIREMENT.fullmatch(requirement):
            raise ImageBuildError(
                f"pip: {requirement!r} is not a plain requirement (a name, optional [extras] "
                "and version clauses such as ==1.2 or >=1,<2; no URL, option or space)",
                package=str(requirement),
            )


def ensure_environment_image(
    environment: EnvironmentSpec, cli: docker.DockerClient | None = None
) -> str:
    """The image for ``environment``: the base image, or a derived one built once and cached."""
    check_packages(environment)
    key = _digest(environment_image_spec(environment))
    if key in _known:
        return _known[key]
    tag = _ensure_environment_image(environment, cli or client())
    _known[key] = tag
    return tag


def _ensure_environment_image(environment: EnvironmentSpec, cli: docker.DockerClient) -> str:
    if environment.image and not _exists(cli, environment.image):
        try:
            cli.images.pull(environment.image)
        except Exception as exc:
            raise ImageBuildError(
                f"image {environment.image!r} is not here and could not be pulled: {exc}",
                package=environment.image,
            ) from exc
    base = ensure_base_image(cli) if not environment.image else environment.image
    if not needs_derived_image(environment):
        return base
    tag = environment_tag(environment, base if not environment.image else _image_id(cli, base))
    if _exists(cli, tag):
        return tag
    lines = [f"FROM {base}"]
    files = {}
    if environment.image:
        lines += _setup_steps()
        files.update(_context_files())
    lines.append("USER root")
    if environment.apt:
        pkgs = " ".join(environment.apt)
        lines.append(
            "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y "
            f"--no-install-recommends {pkgs} && rm -rf /var/lib/apt/lists/*"
        )
    if environment.pip:
        pkgs = " ".join(shlex.quote(p) for p in environment.pip)
        cert = f"PIP_CERT={CA_PATH} " if "ca-bundle.pem" in _context_files() else ""
        lines.append(
            f"RUN (python3 -m venv {VENV} 2>/dev/null || (rm -rf {VENV} && apt-get update && "
            f"apt-get install -y --no-install-recommends python3-venv && "
            f"rm -rf /var/lib/apt/lists/* && python3 -m venv {VENV})) && "
            f"{cert}PIP_DISABLE_PIP_VERSION_CHECK=1 {VENV}/bin/pip install --no-cache-dir {pkgs}"
        )
    for i, (path, content) in enumerate(environment_image_spec(environment)["files"].items()):
        files[f"files/{i}"] = content.encode()
        lines.append(f"COPY files/{i} {json.dumps(path)}")
    _build_once(cli, tag, "\n".join(lines) + "\n", files, kind="environment", env=environment)
    return tag


def _image_id(cli: docker.DockerClient, tag: str) -> str:
    return cli.images.get(tag).id


# ---------------------------------------------------------------------------- build


def _build_once(
    cli: docker.DockerClient,
    tag: str,
    dockerfile: str,
    files: dict[str, bytes],
    kind: str,
    env: EnvironmentSpec | None = None,
) -> None:
    if _exists(cli, tag):
        return
    with _file_lock(tag.replace(":", "_").replace("/", "_")):
        if _exists(cli, tag):
            return
        log.info("building %s image %s", kind, tag)
        _build(cli, tag, dockerfile, files, kind, env)


def _build(
    cli: docker.DockerClient,
    tag: str,
    dockerfile: str,
    files: dict[str, bytes],
    kind: str,
    env: EnvironmentSpec | None,
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in {"Dockerfile": dockerfile.encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    lines: list[str] = []
    error = None
    for chunk in cli.api.build(
        fileobj=buf,
        custom_context=True,
        tag=tag,
        rm=True,
        forcerm=True,
        decode=True,
        labels={LABEL: "1", f"{LABEL}.kind": kind},
    ):
        if "stream" in chunk:
            lines.append(chunk["stream"])
        if "error" in chunk:
            error = chunk["error"]
    if error is None:
        return
    text = _ANSI.sub("", "".join(lines))
    error = _ANSI.sub("", error)
    package = _culprit(text + error, env)
    what = f" because of package {package!r}" if package else ""
    tail = text[-3000:]
    raise ImageBuildError(
        f"building {kind} image {tag} failed{what}: {error}\n{tail}", package, tail
    )


def _culprit(log_text: str, env: EnvironmentSpec | None) -> str | None:
    """Name the package a failed build stumbled on, from apt's or pip's own words."""
    for pattern in _APT_FAILURES + _PIP_FAILURES:
        match = pattern.search(log_text)
        if match:
            return match.group(1).strip("'\"")
    if env is not None:
        for name in [*env.apt, *env.pip]:
            if re.search(rf"\b{re.escape(name)}\b.*(error|not found|failed)", log_text, re.I):
                return name
    return None
