"""Exec agent: the main process (PID 1) of a docker sandbox container.

It talks to the host over its attached stdin/stdout, which avoids the cost of one
``docker exec`` per command. Both directions carry frames: a 12-byte prefix
(``>IQ``: header length, body length), a JSON header, then the body bytes.

Requests (header ``op``): ``exec``, ``read``, ``write``, ``snapshot``, ``restore``, ``cancel``,
``reset``.
Replies carry the request ``id``; each request ends with exactly one ``done`` frame.
While a command runs, the first ``limit // 2`` bytes of each stream go back at once as
``out``/``err`` frames; the rest is kept as a tail of ``limit - limit // 2`` bytes that rides
on the ``done`` frame. So a command printing gigabytes costs memory of ``limit``, no more.

After every command (finished, timed out or cancelled) every other process in the
container is killed with ``kill(-1, SIGKILL)`` and reaped: nothing escapes by ``setsid``
or double fork, and a fork bomb ends. Processes the host started with ``docker exec``
(long-lived services, such as a stdio MCP server) and their descendants are spared: while
one runs, the others are killed one by one, as listed in ``/proc``, until none is left.
Standard library only; runs on any python3 >= 3.8.

``reset`` makes the container as a fresh one is, for the next session (see :func:`reset`):
every other process killed (services too), every System V IPC object removed, every file the
agent's uid owns on a writable mount removed, the roots of those mounts given back their
first mode, times and extended attributes; then it checks that all of that holds, and says
what does not (the host then removes the container instead of reusing it).

Commands run as the agent's own uid, so the agent guards itself from them: it makes itself
non-dumpable (``PR_SET_DUMPABLE`` 0), so a command can neither open ``/proc/1/fd/*`` (to
forge frames to the host or read its requests) nor ptrace it; and it catches the signals a
process in the container can send to PID 1 (SIGINT, SIGTERM) with a handler that does
nothing (a command gets default handlers back when it is exec'd). The ``ready`` frame says
whether the agent is non-dumpable; the host refuses the container when it is not.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import json
import os
import select
import signal
import stat
import struct
import subprocess
import tarfile
import time
from collections import deque

# Inside the container: the host passes the workspace path in the container's environment
# (this file runs alone there, without the fleet's packages or core.settings).
WORKDIR = os.environ.get("FLEET_WORKDIR", "/workspace")
PREFIX = struct.Struct(">IQ")
CHUNK = 1 << 20
F_SETPIPE_SZ = 1031
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4


class Channel:
    """Frames over fd 0 (in) and fd 1 (out)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.pending: deque[tuple[dict, bytes]] = deque()
        self.eof = False

    def send(self, header: dict, body: bytes = b"") -> None:
        head = json.dumps(header).encode()
        data = memoryview(PREFIX.pack(len(head), len(body)) + head + body)
        while data:
            written = os.write(1, data)
            data = data[written:]

    def fill(self) -> None:
        """Read what stdin has now (call when select says it is readable)."""
        chunk = os.read(0, CHUNK)
        if not chunk:
            self.eof = True
        self.buf += chunk

    def parse(self) -> tuple[dict, bytes] | None:
        if len(self.buf) < PREFIX.size:
            return None
        hlen, blen = PREFIX.unpack_from(self.buf)
        end = PREFIX.size + hlen + blen
        if len(self.buf) < end:
            return None
        header = json.loads(bytes(self.buf[PREFIX.size : PREFIX.size + hlen]))
        body = bytes(self.buf[PREFIX.size + hlen : end])
        del self.buf[:end]
        return header, body

    def next(self) -> tuple[dict, bytes] | None:
        """The next request, blocking; None at end of input."""
        while True:
            if self.pending:
                return self.pending.popleft()
            frame = self.parse()
            if frame:
                return frame
            if self.eof:
                return None
            select.select([0], [], [])
            self.fill()


class Capped:
    """Head sent as it arrives, tail kept here; mirrors sandboxes.base.CappedOutput."""

    def __init__(self, limit: int, kind: str, channel: Channel, rid: int) -> None:
        self.room = limit // 2
        self.tail_limit = limit - limit // 2
        self.tail = bytearray()
        self.total = 0
        self.kind, self.channel, self.rid = kind, channel, rid

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.room > 0:
            head = chunk[: self.room]
            self.room -= len(head)
            self.channel.send({"id": self.rid, "t": self.kind}, head)
            chunk = chunk[len(head) :]
        if not chunk:
            return
        if len(chunk) >= self.tail_limit:
            self.tail = bytearray(chunk[len(chunk) - self.tail_limit :])
        else:
            self.tail += chunk
            if len(self.tail) > self.tail_limit:
                del self.tail[: len(self.tail) - self.tail_limit]


def processes() -> dict[int, int]:
    """Every process in the container: pid -> parent pid (0: a parent outside it)."""
    parents = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle_:
                data = handle_.read()
        except OSError:  # it just ended
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        parents[int(name)] = int(data[data.rindex(b")") + 2 :].split()[1])
    return parents


def services(parents: dict[int, int]) -> set[int]:
    """The processes the host started with ``docker exec`` (``Sandbox.spawn``: a stdio MCP
    server), and their descendants. Their parent is outside the container, so their ppid
    reads 0; a command can neither make such a process nor move one into such a tree."""
    spared = {pid for pid, ppid in parents.items() if ppid == 0 and pid != os.getpid()}
    grown = bool(spared)
    while grown:
        grown = False
        for pid, ppid in parents.items():
            if ppid in spared and pid not in spared:
                spared.add(pid)
                grown = True
    return spared


def kill_others(deadline: float, main: subprocess.Popen | None) -> None:
    """SIGKILL every other process in the container, but the host's services, and reap
    them all."""
    while time.monotonic() < deadline:
        parents = processes()
        spared = services(parents)
        if not spared:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(-1, signal.SIGKILL)
        for pid in parents if spared else ():
            if pid not in spared and pid != os.getpid():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        try:
            while True:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    break
                if main is not None and pid == main.pid and main.returncode is None:
                    main.returncode = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            return
        time.sleep(0.002)


def reap(main: subprocess.Popen | None) -> None:
    """Reap zombies (orphans re-parented to us) without blocking."""
    with contextlib.suppress(ChildProcessError):
        while True:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            if main is not None and pid == main.pid and main.returncode is None:
                main.returncode = os.waitstatus_to_exitcode(status)


def kill_all(deadline: float) -> bool:
    """SIGKILL every other process in the container, services too, until none is left
    (True) or ``deadline`` passes (False). A service's parent is outside the container, which
    reaps it: we wait until ``/proc`` no longer lists it."""
    me = os.getpid()
    while True:
        others = [pid for pid in processes() if pid != me]
        if not others:
            return True
        if time.monotonic() >= deadline:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(-1, signal.SIGKILL)
        reap(None)
        time.sleep(0.002)


IPC_RMID = 0
IPC_KINDS = (("shm", "shmctl"), ("sem", "semctl"), ("msg", "msgctl"))


def ipc_objects() -> list[tuple[str, int]]:
    """The System V IPC objects of the container's IPC namespace: (kind, id)."""
    found = []
    for kind, _ in IPC_KINDS:
        with contextlib.suppress(OSError), open(f"/proc/sysvipc/{kind}") as table:
            for line in list(table)[1:]:  # a header line, then "key id perms ..."
                fields = line.split()
                if len(fields) > 1:
                    found.append((kind, int(fields[1])))
    return found


def remove_ipc() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    calls = {kind: getattr(libc, name) for kind, name in IPC_KINDS}
    for kind, ident in ipc_objects():
        if kind == "sem":
            calls[kind](ident, 0, IPC_RMID, None)
        else:
            calls[kind](ident, IPC_RMID, None)


def writable_mounts() -> list[str]:
    """Mount points a command could write to: read-write tmpfs and mqueue mounts outside
    /proc and /sys (the workspace, /tmp, the home, /dev/shm, /dev/mqueue; /dev itself)."""
    points = []
    with open("/proc/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            if fields[2] not in ("tmpfs", "mqueue") or "rw" not in fields[3].split(","):
                continue
            if point.startswith(("/proc", "/sys")):
                continue
            points.append(point)
    return points


def owned_roots(points: list[str]) -> dict[str, tuple[int, float, float]]:
    """The mount roots this uid owns, with their mode and times as they are now."""
    roots = {}
    for point in points:
        with contextlib.suppress(OSError):
            st = os.lstat(point)
            if st.st_uid == os.getuid():
                roots[point] = (st.st_mode & 0o7777, st.st_atime, st.st_mtime)
    return roots


ROOTS: dict[str, tuple[int, float, float]] = {}
"""The writable mount roots this uid owns, as they were when the agent started."""


def wipe(root: str) -> list[str]:
    """Remove everything under ``root`` that this uid owns, without crossing into other
    mounts; returns what is still there and ours."""
    uid, left = os.getuid(), []
    device = os.lstat(root).st_dev

    def clear(directory: str) -> None:
        try:
            names = os.listdir(directory)
        except PermissionError:
            if os.lstat(directory).st_uid != uid:
                if os.access(directory, os.W_OK):  # ours could be in it, unseen: say so
                    left.append(f"{directory}: writable but not readable")
                return  # else nothing of ours can be in it
            os.chmod(directory, 0o700)
            names = os.listdir(directory)
        for name in names:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if st.st_dev != device:
                continue  # another mount, wiped on its own (or not ours)
            if stat.S_ISDIR(st.st_mode):
                if st.st_uid == uid:
                    os.chmod(path, 0o700)
                clear(path)
                if st.st_uid == uid:
                    os.rmdir(path)
            elif st.st_uid == uid:
                os.unlink(path)

    try:
        clear(root)
    except OSError as exc:
        left.append(f"{root}: {exc}")
    return left


def leftovers(root: str) -> list[str]:
    """What this uid still owns under ``root`` (the mount's root itself left out)."""
    uid, found = os.getuid(), []
    device = os.lstat(root).st_dev
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if st.st_uid == uid and st.st_dev == device:
                    found.append(path)
        dirs[:] = [d for d in dirs if os.lstat(os.path.join(directory, d)).st_dev == device]
    return found


def reset() -> list[str]:
    """Make the container as it was when it started; returns what could not be (empty when
    all of it holds)."""
    problems = []
    if not kill_all(time.monotonic() + 5.0):
        problems.append(f"processes left: {sorted(set(processes()) - {os.getpid()})}")
    try:
        remove_ipc()
    except Exception as exc:  # checked below
        problems.append(f"removing IPC objects: {exc}")
    points = writable_mounts()
    for point in points:
        problems += wipe(point)
    for point, (mode, atime, mtime) in ROOTS.items():
        try:
            for attribute in os.listxattr(point):
                os.removexattr(point, attribute)
            os.chmod(point, mode)
            os.utime(point, (atime, mtime))
        except OSError as exc:
            problems.append(f"{point}: {exc}")
    # Check, rather than trust, what was done.
    for point in points:
        problems += [f"left: {path}" for path in leftovers(point)[:5]]
    for point, (mode, _, _) in ROOTS.items():
        if os.lstat(point).st_mode & 0o7777 != mode or os.listxattr(point):
            problems.append(f"{point}: mode or attributes not restored")
    ipc_left = ipc_objects()
    if ipc_left:
        problems.append(f"IPC objects left: {ipc_left[:5]}")
    with contextlib.suppress(OSError):
        os.chdir(WORKDIR)
    return problems


def run_command(channel: Channel, req: dict, wake_fd: int) -> None:
    rid = req["id"]
    limit = int(req.get("limit", 1_000_000))
    timeout = float(req.get("timeout", 60.0))
    started = time.monotonic()
    deadline = started + timeout
    out = Capped(limit, "out", channel, rid)
    err = Capped(limit, "err", channel, rid)
    try:
        proc = subprocess.Popen(
            ["/bin/bash", "-c", req["cmd"]],
            cwd=req.get("cwd") or WORKDIR,
            env=req.get("env") or {},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        channel.send({"id": rid, "t": "done", "error": f"could not start command: {exc}"})
        return
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    for fd in streams:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)
    timed_out = cancelled = False
    # Phase 1: until the command exits (or times out / is cancelled), pump its output.
    while proc.returncode is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([*streams, 0, wake_fd], [], [], remaining)
        for fd in ready:
            if fd == wake_fd:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_fd, 4096)
            elif fd == 0:
                channel.fill()
                while (frame := channel.parse()) is not None:
                    if frame[0].get("op") == "cancel" and frame[0].get("target") == rid:
                        cancelled = True
                    else:
                        channel.pending.append(frame)
                if channel.eof:
                    cancelled = True
            else:
                chunk = os.read(fd, CHUNK)
                if chunk:
                    streams[fd].feed(chunk)
                else:
                    del streams[fd]
        if cancelled:
            break
        proc.poll()
        reap(proc)
    # Phase 2: kill what is left (background jobs hold the pipes open), then drain.
    kill_others(time.monotonic() + 5.0, proc)
    drain_until = time.monotonic() + 2.0
    while streams and time.monotonic() < drain_until:
        ready, _, _ = select.select(list(streams), [], [], max(0.0, drain_until - time.monotonic()))
        for fd in ready:
            chunk = os.read(fd, CHUNK)
            if chunk:
                streams[fd].feed(chunk)
            else:
                del streams[fd]
    proc.stdout.close()
    proc.stderr.close()
    code = proc.returncode if proc.returncode is not None else proc.wait()
    channel.send(
        {
            "id": rid,
            "t": "done",
            "code": code,
            "timed_out": timed_out,
            "cancelled": cancelled,
            "out_total": out.total,
            "err_total": err.total,
            "out_tail": len(out.tail),
            "duration_ms": (time.monotonic() - started) * 1000,
        },
        bytes(out.tail) + bytes(err.tail),
    )


def inside(rel: str) -> str:
    """Absolute path for a workspace-relative path; refuses ones resolving outside."""
    path = os.path.join(WORKDIR, rel)
    real = os.path.realpath(path)
    root = os.path.realpath(WORKDIR)
    if real != root and not real.startswith(root + os.sep):
        raise ValueError(f"path {rel!r} resolves outside the workspace")
    return path


def _owner_neutral(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def snapshot() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(os.listdir(WORKDIR)):
            tar.add(os.path.join(WORKDIR, name), arcname=name, filter=_owner_neutral)
    return buf.getvalue()


def _checked(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """Refuse members that would land outside the workspace (checked as each is unpacked,
    so a symlink unpacked earlier cannot be written through). Symlinks may point anywhere,
    as in LocalSandbox.restore: nothing is written through them."""
    root = os.path.realpath(WORKDIR)

    def within(path: str) -> bool:
        real = os.path.realpath(path)
        return real == root or real.startswith(root + os.sep)

    if os.path.isabs(member.name) or not within(os.path.join(WORKDIR, member.name)):
        raise ValueError(f"archive member {member.name!r} points outside the workspace")
    if member.islnk() and not within(os.path.join(WORKDIR, member.linkname)):
        raise ValueError(f"hard link {member.name!r} points outside the workspace")
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise ValueError(f"archive member {member.name!r} is a special file")
    member.mode &= 0o777
    member.uid, member.gid = os.getuid(), os.getgid()
    return member


def restore(archive: bytes) -> None:
    directories: list[tuple[str, int]] = []
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            member = _checked(member)
            if member.isdir():  # keep it writable until its contents are in
                directories.append((os.path.join(WORKDIR, member.name), member.mode))
                member.mode |= 0o700
            if hasattr(tarfile, "data_filter"):
                tar.extract(member, WORKDIR, filter="tar")
            else:
                tar.extract(member, WORKDIR)
    for path, mode in reversed(directories):
        os.chmod(path, mode)


def handle(channel: Channel, header: dict, body: bytes, wake_fd: int) -> None:
    rid = header.get("id")
    op = header.get("op")
    try:
        if op == "exec":
            run_command(channel, header, wake_fd)
            return
        if op == "cancel":
            return  # the command it targets has already ended
        if op == "read":
            with open(inside(header["path"]), "rb") as handle_:
                data = handle_.read()
            channel.send({"id": rid, "t": "done"}, data)
        elif op == "write":
            path = inside(header["path"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            inside(os.path.relpath(os.path.dirname(path), WORKDIR))
            with open(path, "wb") as handle_:
                handle_.write(body)
            channel.send({"id": rid, "t": "done"})
        elif op == "snapshot":
            channel.send({"id": rid, "t": "done"}, snapshot())
        elif op == "restore":
            restore(body)
            channel.send({"id": rid, "t": "done"})
        elif op == "reset":
            problems = reset()
            if problems:
                channel.send({"id": rid, "t": "done", "error": "; ".join(problems)[:2000]})
            else:
                channel.send({"id": rid, "t": "done"})
        elif op == "ping":
            channel.send({"id": rid, "t": "done"})
        else:
            channel.send({"id": rid, "t": "done", "error": f"unknown op {op!r}"})
    except FileNotFoundError:
        channel.send({"id": rid, "t": "done", "error": "no such file", "kind": "missing"})
    except IsADirectoryError:
        channel.send({"id": rid, "t": "done", "error": "is a directory", "kind": "directory"})
    except Exception as exc:
        channel.send({"id": rid, "t": "done", "error": f"{type(exc).__name__}: {exc}"})


def seal() -> bool:
    """Make this process non-dumpable: /proc/<pid>/* then belongs to root, so a process of
    the same uid cannot open its fds or memory, nor ptrace it. True when that holds."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def main() -> None:
    sealed = seal()
    os.umask(0o022)
    ROOTS.update(owned_roots(writable_mounts()))
    with contextlib.suppress(OSError):
        os.chdir(WORKDIR)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    # Signals a command may send to PID 1 do nothing (the host ends us by closing stdin, or
    # with SIGKILL from outside). Handlers, unlike SIG_IGN, are reset to default by exec.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    channel = Channel()
    channel.send({"t": "ready", "pid": os.getpid(), "uid": os.getuid(), "sealed": sealed})
    while (frame := channel.next()) is not None:
        handle(channel, frame[0], frame[1], wake_r)
        reap(None)


if __name__ == "__main__":
    main()
