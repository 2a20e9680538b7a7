"""Delivery benchmark: ``python -m benchmarks.delivery [tasks]``.

For each of ~20 tasks on one repository (a local bare remote of 200 files): the host-side
checkout that seeds a session (clone at ``main``, branch ``fleet/<id>``), then what follows a
gate that passed: the final workspace (one file changed, one added) laid over a fresh
host-side clone, committed and pushed to the task's branch (``actors.delivery.deliver``, what
the supervisor runs before it logs ``task.delivered``). Prints p50 and p95 of both, and checks
that every branch holds its commit.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from actors.delivery import checkout, deliver
from core.settings import FleetSettings
from core.specs import RepoSpec
from sandboxes.base import tar_files

FILES = 200


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_remote(root: Path) -> Path:
    seed, bare = root / "seed", root / "remote.git"
    seed.mkdir()
    git("init", "-q", "-b", "main", cwd=seed)
    for n in range(FILES):
        (seed / f"pkg{n % 10}").mkdir(exist_ok=True)
        (seed / f"pkg{n % 10}" / f"mod{n}.py").write_text(f"VALUE = {n}\n" * 20)
    git("add", "-A", cwd=seed)
    git("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "seed", cwd=seed)
    git("clone", "-q", "--bare", str(seed), str(bare), cwd=root)
    return bare


def edited(archive: bytes, task_id: str) -> bytes:
    """The checkout as an agent leaves it: one file changed, one added."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                files[member.name] = handle.read()
    files["pkg0/mod0.py"] += b"CHANGED = True\n"
    files[f"notes/{task_id}.md"] = b"done\n"
    return tar_files(files)


async def run(tasks: int) -> tuple[list[float], list[float]]:
    settings = FleetSettings()
    checkouts: list[float] = []
    pushes: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        bare = make_remote(Path(tmp))
        repo = RepoSpec(url=str(bare), ref="main")
        for n in range(tasks):
            task_id = f"bench-{n}"
            started = time.perf_counter()
            got = await checkout(repo, task_id, settings)
            checkouts.append(time.perf_counter() - started)
            workspace = edited(got.archive, task_id)
            started = time.perf_counter()
            done = await deliver(settings, task_id, repo, got.base_commit, workspace, "bench")
            pushes.append(time.perf_counter() - started)
            assert done.commit and not done.refused, done
            assert git("rev-parse", f"fleet/{task_id}", cwd=bare) == done.commit
    return checkouts, pushes


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


def main() -> None:
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    checkouts, pushes = asyncio.run(run(tasks))
    print(f"delivery over {tasks} tasks, {FILES}-file repository, local bare remote")
    for name, values in (("checkout (seed)", checkouts), ("gate passed -> pushed", pushes)):
        median, tail = statistics.median(values) * 1000, p95(values) * 1000
        print(f"  {name:24s} p50 {median:7.1f} ms   p95 {tail:7.1f} ms")


if __name__ == "__main__":
    main()
