"""A throwaway PostgreSQL server for tests: initdb in a temporary directory, pg_ctl start on a
free loopback port, trust authentication, stopped and deleted at the end.

As root the server runs as the ``postgres`` user (PostgreSQL refuses to run as root); as
anyone else, as that user. The binaries come from PATH or Debian's /usr/lib/postgresql/*/bin
(scripts/ci-postgres.sh installs them).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


def pg_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A running server; ``dsn`` connects to its ``postgres`` database as ``postgres``."""

    bin_dir: Path
    base: Path
    port: int
    user: str | None

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        as_user = {"user": self.user, "group": self.user, "extra_groups": []} if self.user else {}
        result = subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            **as_user,  # type: ignore[arg-type]
            capture_output=True,
            text=True,
            timeout=120,
            cwd=self.base,
        )
        if result.returncode != 0:
            log = self.base / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {result.stderr.strip()}\n{tail}")

    @classmethod
    def start(cls, bin_dir: Path) -> PostgresServer:
        user = "postgres" if os.geteuid() == 0 else None
        base = Path(tempfile.mkdtemp(prefix="fleet-pg-"))
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(base, entry.pw_uid, entry.pw_gid)
        server = cls(bin_dir, base, _free_port(), user)
        server._run(
            "initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        options = f"-h 127.0.0.1 -p {server.port} -k {server.data} -F"
        server._run("pg_ctl", "-D", str(server.data), "-l", str(base / "log"), "-o", options,
                    "-w", "-t", "60", "start")  # fmt: skip
        return server

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
