"""Work in, work out: a task on a git repository (``repo: {url, ref}``) works on a real
checkout on its own branch, and a result that passed is committed and pushed to that branch.

Plain asyncio around the ``git`` command (``asyncio.create_subprocess_exec``: the loop is
never blocked); no Ray. The session runner calls :func:`checkout`; the dispatcher (and the
review command) call :func:`deliver` and :func:`push_wip`.

**Where git runs, and why there.** Every git command that talks to the remote runs on the
host (the worker's or the supervisor's process), never in the sandbox:

- *In*: the worker clones ``url`` at ``ref`` into a temporary directory of its own, makes the
  branch (``branch_pattern``, ``fleet/<task id>``) and copies that directory, ``.git`` and
  all, into the sandbox like any other starting files. The agent gets a real checkout whose
  ``origin`` is the plain URL, without credentials. Cloning inside the sandbox would need its
  network opened and the token inside it; one way in for every sandbox backend is simpler.
  The commit checked out is recorded in ``session.started`` (``base_commit``).
- *Out*: the agent's ``.git`` is the agent's to change (hooks, config, objects), so the host
  never runs git on it. The supervisor fetches the base commit into a fresh repository of its
  own, lays the files of the final workspace over it (everything but ``.git``, and ``.skills``
  unless the repository has it), commits them with the author and message of the settings
  (the message names the task and ends with the trailer ``Fleet-Task: <id>``) and pushes
  ``HEAD:refs/heads/<branch>`` without force. Files the repository ignores stay out.

**Credentials.** The token comes from the variable named by ``git_token_env`` (or the file
``git_token_file``), read where git runs. It reaches git only for ``http(s)`` remotes, as an
``Authorization`` header in the environment of that one command (``GIT_CONFIG_*`` entries,
``http.<scheme>://<host>/.extraHeader``): never in a URL, an argument, a file or the sandbox.
Git runs without the system's and the user's config (no credential helpers, hooks or signing
of this host), without a terminal prompt and with only the file, git, ssh and http(s)
transports. Every error and log line built from git's output is scrubbed of the token.

**Exactly once, around crashes.** Delivery runs in the supervisor after a session's result
arrived and before the one append that logs it with its decision (``task.delivered``, then
``task.succeeded``). Killed before the push: nothing is logged, recovery requeues the task and
a new session delivers. Killed after the push but before the append: the log does not know,
so the task runs again; before it pushes, delivery reads the remote branch, and a tip that is
already a commit of this task (its ``Fleet-Task`` trailer, not a work-in-progress one) is
adopted as the delivery and nothing is pushed: a retry never puts a different commit over a
delivered one. Pushing the same commit again is a no-op for git. Killed after the append:
done. A branch holding anything else (someone's commits, a WIP commit) refuses the push
(non-fast-forward, never forced) and the task goes to a person with git's error. A worker
plays no part in delivery, so killing one changes nothing here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from core.errors import FleetError, InputError
from core.settings import FleetSettings, host_variable
from core.specs import RepoSpec
from core.vault import read_secret_file
from harness.skills import SKILLS_DIR
from sandboxes.base import tar_directory

log = logging.getLogger("fleet.delivery")

TASK_TRAILER = "Fleet-Task"
WIP_TRAILER = "Fleet-WIP"
PASSED_ON = ("PATH", "HOME", "SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "SSL_CERT_FILE")
PASSED_ON += ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
"""The host's variables git gets (ssh keys and agent, proxies, CA file); nothing else."""
HIDDEN = "***"


class GitError(FleetError, RuntimeError):
    """A git command failed; the message holds git's error, scrubbed of the token."""


@dataclass(frozen=True)
class Auth:
    """The token for https remotes (None: no credentials) and how git gets it."""

    token: str | None = None

    @classmethod
    def from_settings(cls, settings: FleetSettings) -> Auth:
        token = host_variable(settings.git_token_env) if settings.git_token_env else None
        if token is None and settings.git_token_file:
            try:  # the vault's reader (core/vault.py): its first line
                token = read_secret_file(settings.git_token_file, "git_token_file", True)
            except InputError as exc:
                raise GitError(str(exc)) from None
        return cls(token)

    def _header(self) -> str:
        basic = base64.b64encode(f"x-access-token:{self.token}".encode()).decode()
        return f"Authorization: Basic {basic}"

    def config(self, url: str) -> dict[str, str]:
        """Environment entries that give git the header for ``url``'s host only."""
        match = re.match(r"^(https?://[^/@]+)", url)
        if not self.token or match is None:
            return {}
        return {
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": f"http.{match.group(1)}/.extraHeader",
            "GIT_CONFIG_VALUE_0": self._header(),
        }

    def scrub(self, text: str) -> str:
        """``text`` without the token (nor the header made of it)."""
        if not self.token:
            return text
        for secret in (self._header().split(" ", 2)[2], self.token):
            text = text.replace(secret, HIDDEN)
        return text


def git_env(auth: Auth, url: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one git command: no config of this host, no prompt, known
    transports, the token's header for ``url`` (https only)."""
    env = {name: value for name in PASSED_ON if (value := host_variable(name)) is not None}
    env |= {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ALLOW_PROTOCOL": "file:git:ssh:http:https",
        "LC_ALL": "C",
    }
    if url is not None:
        env |= auth.config(url)
    return env | (extra or {})


async def git(
    *args: str,
    cwd: Path,
    auth: Auth,
    url: str | None = None,
    timeout_s: float = 300.0,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> tuple[int, str]:
    """Run ``git args`` in ``cwd``; (exit code, stdout). With ``check``, a non-zero exit is
    a GitError holding git's error output (scrubbed). ``url``: the remote this command talks
    to (it gets the token's header when that is an https URL)."""
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=git_env(auth, url, env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        _kill(proc)
        await proc.wait()
        raise GitError(f"git {args[0]} took longer than {timeout_s:g}s") from None
    except asyncio.CancelledError:  # the session or the call went away: git goes too
        _kill(proc)
        raise
    code = proc.returncode or 0
    if check and code != 0:
        message = auth.scrub(err.decode(errors="replace").strip() or out.decode(errors="replace"))
        raise GitError(f"git {args[0]} failed (exit {code}): {message[-4000:]}")
    return code, out.decode(errors="replace")


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def branch_name(settings: FleetSettings, task_id: str) -> str:
    """The task's branch: ``branch_pattern`` filled with the task id made safe for a ref."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", task_id).strip(".-") or "task"
    safe = re.sub(r"\.{2,}", ".", safe).removesuffix(".lock")
    return settings.branch_pattern.format(task_id=safe)


class Checkout(BaseModel):
    """A task's repository checked out on its branch, ready to go into a sandbox."""

    archive: bytes
    """The checkout (with ``.git``) as a tar for ``Sandbox.restore``."""
    branch: str
    base_commit: str

    def payload(self) -> dict[str, str]:
        """What ``session.started`` records of it (the scheduler keeps ``base_commit``)."""
        return {"branch": self.branch, "base_commit": self.base_commit}


async def _fetch(dest: Path, repo: RepoSpec, ref: str, auth: Auth, timeout_s: float) -> str:
    """Fetch ``ref`` of the remote into ``dest``; its commit."""
    await git(
        "fetch",
        "-q",
        "--no-tags",
        "origin",
        ref,
        cwd=dest,
        auth=auth,
        url=repo.url,
        timeout_s=timeout_s,
    )
    _, sha = await git("rev-parse", "FETCH_HEAD^{commit}", cwd=dest, auth=auth)
    return sha.strip()


async def _init(dest: Path, repo: RepoSpec, auth: Auth) -> None:
    await git("init", "-q", cwd=dest, auth=auth)
    await git("remote", "add", "origin", repo.url, cwd=dest, auth=auth)


async def probe(repo: RepoSpec, settings: FleetSettings) -> None:
    """Raise :class:`GitError` (git's error, scrubbed) when ``repo`` cannot be cloned at its
    ref: unreachable, not a repository, refused credentials, or no such branch or tag. A ref
    that is a commit id is not checked (a remote lists names only), the remote still is."""
    auth = Auth.from_settings(settings)
    commit = repo.ref is not None and re.fullmatch(r"[0-9a-fA-F]{7,40}", repo.ref)
    ref = "HEAD" if repo.ref is None or commit else repo.ref
    _, out = await git(
        "ls-remote",
        "--",
        repo.url,
        ref,
        cwd=Path(tempfile.gettempdir()),
        auth=auth,
        url=repo.url,
        timeout_s=settings.git_timeout_s,
    )
    if not out.strip():
        missing = "has no commits" if ref == "HEAD" else f"has no branch or tag {ref!r}"
        raise GitError(f"repository {repo.url} {missing}")


async def checkout(repo: RepoSpec, task_id: str, settings: FleetSettings) -> Checkout:
    """Clone ``repo`` at its ref on the host, on the task's branch: what seeds its sandbox."""
    auth = Auth.from_settings(settings)
    branch = branch_name(settings, task_id)
    with tempfile.TemporaryDirectory(prefix="fleet-checkout-") as tmp:
        dest = Path(tmp)
        await _init(dest, repo, auth)
        base = await _fetch(dest, repo, repo.ref or "HEAD", auth, settings.git_timeout_s)
        await git("checkout", "-q", "-b", branch, base, cwd=dest, auth=auth)
        archive = await asyncio.to_thread(tar_directory, dest)
    return Checkout(archive=archive, branch=branch, base_commit=base)


class Delivery(BaseModel):
    """What delivering a task's result did: pushed ``commit`` to ``branch``, found it there
    already (``adopted``), had nothing to commit (``commit`` None), or was refused
    (``error``, git's message, scrubbed). ``pr_url`` / ``pr_error``: the pull request opened
    for the branch, or why none could be (:mod:`actors.pulls`; the push stands either way)."""

    url: str
    branch: str
    commit: str | None = None
    adopted: bool = False
    wip: bool = False
    error: str = ""
    pr_url: str | None = None
    pr_error: str = ""

    @property
    def refused(self) -> bool:
        return bool(self.error)

    def payload(self) -> dict[str, Any]:
        """The ``task.delivered`` event's payload."""
        payload: dict[str, Any] = {
            "branch": self.branch,
            "commit": self.commit,
            "url": self.url,
            "adopted": self.adopted,
            "wip": self.wip,
        }
        if self.pr_url:
            payload["pr_url"] = self.pr_url
        if self.pr_error:
            payload["pr_error"] = self.pr_error
        return payload


def commit_message(settings: FleetSettings, task_id: str, summary: str, wip: bool) -> str:
    """The message of the fleet's commit: the template filled, then the trailers."""
    summary = summary.strip() or "(no summary)"
    title = summary.splitlines()[0][:72]
    if wip:
        title = f"WIP: {title}"
    text = settings.git_commit_message.format(task_id=task_id, title=title, summary=summary)
    trailers = f"{TASK_TRAILER}: {task_id}" + (f"\n{WIP_TRAILER}: true" if wip else "")
    return f"{text.rstrip()}\n\n{trailers}\n"


def _is_ours(message: str, task_id: str) -> bool:
    """Is this commit message the delivered (not work-in-progress) commit of ``task_id``?"""
    lines = [line.strip() for line in message.splitlines()]
    return f"{TASK_TRAILER}: {task_id}" in lines and f"{WIP_TRAILER}: true" not in lines


def _lay_over(dest: Path, workspace: bytes, keep_skills: bool) -> None:
    """Make ``dest``'s files (all but ``.git``) those of the ``workspace`` archive."""
    for entry in dest.iterdir():
        if entry.name == ".git":
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    with tarfile.open(fileobj=io.BytesIO(workspace), mode="r:") as tar:
        members = []
        for member in tar:
            parts = Path(member.name.removeprefix("./")).parts
            if not parts or ".git" in parts or (parts[0] == SKILLS_DIR and not keep_skills):
                continue
            members.append(member)
        # 'data': no absolute paths, no '..', no links leaving dest, no devices.
        tar.extractall(dest, members=members, filter="data")


async def deliver(
    settings: FleetSettings,
    task_id: str,
    repo: RepoSpec,
    base_commit: str | None,
    workspace: bytes,
    summary: str,
    wip: bool = False,
) -> Delivery:
    """Commit the final ``workspace`` on top of ``base_commit`` and push it to the task's
    branch (see the module's docstring). Never raises for git's refusals: they come back in
    ``Delivery.error``."""
    branch = branch_name(settings, task_id)
    result = Delivery(url=repo.url, branch=branch, wip=wip)
    try:
        auth = Auth.from_settings(settings)
    except GitError as exc:
        return result.model_copy(update={"error": str(exc)})
    timeout = settings.git_timeout_s
    with tempfile.TemporaryDirectory(prefix="fleet-deliver-") as tmp:
        dest = Path(tmp)
        try:
            await _init(dest, repo, auth)
            _, remote = await git(
                "ls-remote",
                "--heads",
                "origin",
                f"refs/heads/{branch}",
                cwd=dest,
                auth=auth,
                url=repo.url,
                timeout_s=timeout,
            )
            if remote.strip():
                tip = await _fetch(dest, repo, f"refs/heads/{branch}", auth, timeout)
                _, message = await git("log", "-1", "--format=%B", tip, cwd=dest, auth=auth)
                if not wip and _is_ours(message, task_id):
                    log.info("task %s: %s already holds its commit %s", task_id, branch, tip)
                    return result.model_copy(update={"commit": tip, "adopted": True})
            base = await _fetch(dest, repo, base_commit or repo.ref or "HEAD", auth, timeout)
            await git("checkout", "-q", "--detach", base, cwd=dest, auth=auth)
            keep_skills = (dest / SKILLS_DIR).exists()
            await asyncio.to_thread(_lay_over, dest, workspace, keep_skills)
            await git("add", "-A", cwd=dest, auth=auth)
            unchanged, _ = await git(
                "diff", "--cached", "--quiet", cwd=dest, auth=auth, check=False
            )
            if unchanged == 0:
                log.info("task %s changed nothing: nothing to push", task_id)
                return result
            who = {
                f"GIT_{role}_{part}": value
                for role in ("AUTHOR", "COMMITTER")
                for part, value in (
                    ("NAME", settings.git_author_name),
                    ("EMAIL", settings.git_author_email),
                )
            }
            message = commit_message(settings, task_id, summary, wip)
            await _commit(dest, auth, who, message)
            _, sha = await git("rev-parse", "HEAD", cwd=dest, auth=auth)
            sha = sha.strip()
            await git(
                "push",
                "-q",
                "origin",
                f"HEAD:refs/heads/{branch}",
                cwd=dest,
                auth=auth,
                url=repo.url,
                timeout_s=timeout,
            )
        except (GitError, OSError, tarfile.TarError) as exc:
            error = auth.scrub(str(exc))
            log.warning("task %s: delivery to %s refused: %s", task_id, branch, error)
            return result.model_copy(update={"error": error})
    log.info("task %s: pushed %s to %s", task_id, sha, branch)
    return result.model_copy(update={"commit": sha})


async def _commit(dest: Path, auth: Auth, who: dict[str, str], message: str) -> None:
    """Commit what is staged, the message given through a file (any length, any text)."""
    msg = dest / ".git" / "FLEET_MSG"
    msg.write_text(message)
    await git("commit", "-q", "--no-verify", "-F", str(msg), cwd=dest, auth=auth, env=who)


async def push_wip(
    settings: FleetSettings,
    task_id: str,
    repo: RepoSpec,
    base_commit: str | None,
    workspace: bytes,
    summary: str,
) -> Delivery:
    """A task that went to a person: its last workspace as a work-in-progress commit on its
    branch (``git_push_wip``), for them to pick up."""
    return await deliver(settings, task_id, repo, base_commit, workspace, summary, wip=True)
