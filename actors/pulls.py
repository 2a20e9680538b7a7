"""Pull requests for delivered branches: when a task's result was pushed to its branch
(:mod:`actors.delivery`) and the repository is on GitHub, a pull request from that branch
into the task's ``ref`` (the repository's default branch when the task names none).

Plain asyncio around gidgethub's httpx client (the client style of ``sources/github.py``; the
actors layer does not import sources); no Ray. The dispatcher calls :func:`open_pull` right
after a push, before the delivery is logged, and records what it did in the
``task.delivered`` event (``pr_url``, or ``pr_error``).

**Which repositories.** ``repo.github: owner/name`` names it; otherwise a URL on one of the
``github_hosts`` (``https://github.com/OWNER/NAME(.git)``, ``ssh://git@github.com/...`` or
``git@github.com:OWNER/NAME.git``) does. The API is at ``github_api_url``. Anything else gets
no pull request, and nothing is asked of GitHub.

**Once per branch.** Opening looks for an open pull request whose head is the branch first
and adopts its URL; a 422 on creation (GitHub's "already exists", e.g. a concurrent retry)
looks again. A supervisor killed between the push and the log therefore adopts the pull
request the earlier run opened.

**Failure is not undone.** A pull request that cannot be opened (no token, GitHub down, a
refused request) leaves the push and the task's success as they are: the error, scrubbed of
the token, is ``pr_error`` in the delivered event. 5xx and rate-limited answers are retried a
few times first.

**Credentials.** The token is the git token (``git_token_env`` / ``git_token_file``), read
where this runs (the supervisor), sent as gidgethub's ``Authorization`` header: never in an
event, an error or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

import gidgethub
from gidgethub import httpx as gh_httpx
from pydantic import BaseModel

from core.events import Event, EventType
from core.settings import FleetSettings
from core.specs import GITHUB_REPO, RepoSpec

log = logging.getLogger("fleet.pulls")

API_VERSION = "2022-11-28"
TITLE_LIMIT = 72
OUTPUT_TAIL = 3000
"""Characters of the gate's output the body quotes (its end: where the verdict is)."""
RETRIES = 2
RETRY_BASE_S = 0.5
RETRY_MAX_WAIT_S = 10.0
TIMEOUT_S = 30.0
"""Longest one request to GitHub takes."""
TOTAL_S = 120.0
"""Longest opening a pull request takes, retries included (the dispatcher waits for it)."""
URL = re.compile(
    r"^(?:(?:https?|ssh|git)://(?:[^@/]+@)?(?P<host>[^/:]+)(?::\d+)?/"
    r"|(?:[^@/:]+@)?(?P<scp>[^/:]+):)(?P<path>.+)$"
)
"""A remote URL (``scheme://[user@]host[:port]/path`` or scp-like ``[user@]host:path``)."""


def github_repo(settings: FleetSettings, repo: RepoSpec) -> str | None:
    """``owner/name`` of ``repo`` on GitHub, or None when it is not on GitHub."""
    if repo.github:
        return repo.github
    found = URL.match(repo.url)
    if found is None:
        return None
    host = (found["host"] or found["scp"] or "").lower()
    if host not in {h.lower() for h in settings.github_hosts}:
        return None
    path = found["path"].strip("/").removesuffix(".git")
    return path if GITHUB_REPO.fullmatch(path) else None


def pull_title(prompt: str) -> str:
    """The first line of the task's prompt, cut to :data:`TITLE_LIMIT` characters."""
    lines = [line.strip() for line in prompt.strip().splitlines() if line.strip()]
    title = lines[0] if lines else "Task result"
    return title if len(title) <= TITLE_LIMIT else title[: TITLE_LIMIT - 1].rstrip() + "…"


def _fenced(text: str) -> str:
    """``text`` in a code block whose fence no run of backticks in it closes."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def pull_body(
    task_id: str,
    summary: str,
    gate: str | None,
    gate_output: str | None,
    attempts: int,
    cost_usd: float,
    commit: str | None,
) -> str:
    """The pull request's description: the agent's summary, the gate and the tail of its
    output, then the task's attempts and cost."""
    parts = [summary.strip() or "(no summary)"]
    if gate:
        parts.append(f"**Gate** `{gate}` passed.")
        if gate_output and gate_output.strip():
            tail = gate_output[-OUTPUT_TAIL:]
            cut = " (its end)" if len(gate_output) > OUTPUT_TAIL else ""
            parts.append(f"Its output{cut}:\n\n{_fenced(tail)}")
    else:
        parts.append("No gate command.")
    plural = "" if attempts == 1 else "s"
    facts = f"Task `{task_id}`: {attempts} attempt{plural}, ${cost_usd:.4f}"
    parts.append(facts + (f", commit {commit}." if commit else "."))
    parts.append("Opened by agent-fleet.")
    return "\n\n".join(parts) + "\n"


def gate_of(events: list[Event]) -> tuple[str | None, str | None]:
    """The last passed gate among a session's events: (command, output)."""
    for event in reversed(events):
        if event.type == EventType.gate_passed:
            return event.payload.get("command"), event.payload.get("output")
    return None, None


def cost_of(events: list[Event]) -> float:
    """The cost of a session's ``usage`` events (not yet folded into its record)."""
    return sum(e.cost_usd or 0.0 for e in events if e.type == EventType.usage)


class PullRequest(BaseModel):
    """What opening a pull request did: ``url`` (opened, or ``adopted``), or ``error``."""

    url: str | None = None
    adopted: bool = False
    error: str = ""


def _retryable(exc: gidgethub.HTTPException) -> bool:
    status = int(exc.status_code)
    limited = status == 403 and (
        isinstance(exc, gidgethub.RateLimitExceeded) or "retry-after" in exc.headers
    )
    return status == 429 or status >= 500 or limited


class _Client(gh_httpx.GitHubAPI):
    """gidgethub's httpx client, retrying 5xx and rate-limited answers :data:`RETRIES`
    times (after ``Retry-After``, when it is short, else an exponential wait)."""

    def __repr__(self) -> str:
        return f"_Client(base_url={self.base_url!r})"

    async def handle_rate_limit_error(
        self, *, method: str, url: str, exception: gidgethub.HTTPException, attempt: int
    ) -> bool:
        if attempt > RETRIES or not _retryable(exception):
            return False
        wait = RETRY_BASE_S * 2 ** (attempt - 1)
        with contextlib.suppress(ValueError):
            wait = float(exception.headers.get("retry-after", wait))
        if wait > RETRY_MAX_WAIT_S:
            return False
        await self.sleep(max(0.0, wait))
        return True


async def _find(api: _Client, full_name: str, branch: str) -> dict[str, Any] | None:
    """The open pull request whose head is ``branch`` of ``full_name``, if any."""
    owner, name = full_name.split("/", 1)
    pulls = await api.getitem(
        "/repos/{owner}/{repo}/pulls{?head,state}",
        {"owner": owner, "repo": name, "head": f"{owner}:{branch}", "state": "open"},
        extra_headers={"x-github-api-version": API_VERSION},
    )
    return pulls[0] if pulls else None


async def _open(
    api: _Client, full_name: str, branch: str, base: str | None, title: str, body: str
) -> PullRequest:
    owner, name = full_name.split("/", 1)
    where = {"owner": owner, "repo": name}
    headers = {"x-github-api-version": API_VERSION}
    found = await _find(api, full_name, branch)
    if found is not None:
        return PullRequest(url=found["html_url"], adopted=True)
    if base is None:
        about = await api.getitem("/repos/{owner}/{repo}", where, extra_headers=headers)
        base = str(about["default_branch"])
    data = {"title": title, "body": body, "head": branch, "base": base}
    try:
        made = await api.post(
            "/repos/{owner}/{repo}/pulls", where, data=data, extra_headers=headers
        )
    except gidgethub.BadRequest as exc:
        if int(exc.status_code) != 422:
            raise
        found = await _find(api, full_name, branch)  # opened meanwhile: adopt it
        if found is None:
            raise
        return PullRequest(url=found["html_url"], adopted=True)
    return PullRequest(url=made["html_url"])


async def open_pull(
    settings: FleetSettings,
    full_name: str,
    branch: str,
    base: str | None,
    title: str,
    body: str,
    token: str | None,
) -> PullRequest:
    """Open (or adopt) the pull request of ``branch`` into ``base`` (None: the default
    branch) on ``full_name``. Never raises: a failure comes back in ``error``."""

    def scrub(text: str) -> str:
        return text.replace(token, "***") if token else text

    if not token:
        error = "no token to open a pull request with (git_token_env or git_token_file)"
        return PullRequest(error=error)
    try:
        async with (
            asyncio.timeout(TOTAL_S),
            gh_httpx.httpx.AsyncClient(timeout=TIMEOUT_S) as http,
        ):
            api = _Client(http, "agent-fleet", oauth_token=token, base_url=settings.github_api_url)
            pull = await _open(api, full_name, branch, base, title, body)
    except TimeoutError:
        return _failed(full_name, branch, f"GitHub took longer than {TOTAL_S:g}s")
    except gidgethub.HTTPException as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        error = f"GitHub answered {int(exc.status_code)} {detail}".rstrip()
        return _failed(full_name, branch, scrub(error))
    except (gh_httpx.httpx.HTTPError, gidgethub.GitHubException, KeyError, TypeError) as exc:
        error = f"cannot open a pull request at {settings.github_api_url}: {type(exc).__name__}"
        detail = scrub(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
        return _failed(full_name, branch, f"{error}: {detail}".rstrip(": "))
    how = "adopted" if pull.adopted else "opened"
    log.info("pull request %s for %s on %s: %s", how, branch, full_name, pull.url)
    return pull


def _failed(full_name: str, branch: str, error: str) -> PullRequest:
    log.warning("no pull request for %s on %s: %s", branch, full_name, error)
    return PullRequest(error=f"pull request on {full_name}: {error}")
