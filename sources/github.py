"""GitHub Issues as a source of work (``kind: github``), through the async client gidgethub.

Each open issue that carries the *ready* label (default ``agent-ready``) in one of the
configured repositories is an item; its id is ``owner/name#number``, its prompt the issue's
title and body, its labels the issue's labels (less the fleet's own), and a label
``agent:<name>`` (the prefix is configurable) names the agent. Everything the fleet writes is
a label or a comment, so people see it where they work:

- **claim**: a claim comment, then the label swap ``agent-ready`` -> ``agent-running``;
- **progress**: a comment per report (``task ... queued``, ``task ... running``);
- **outcome**: a comment with the summary, the reason and the pull request or branch when
  the outcome has one, and the label of the final state instead of the running one
  (``agent-done``, ``agent-needs-human``, ``agent-failed``, ``agent-rejected``,
  ``agent-cancelled``).

Every write is conditional, as the interface asks: a watcher writes progress or an outcome
only while the issue is open and carries the running label, so a person who closes the issue
or takes the running label off has withdrawn it (:meth:`GitHubSource.wanted` leaves it out and
the watcher cancels its task). Editing the title or body changes the prompt.

**Claims between several watchers.** GitHub has no compare-and-set on labels, so a claim is
decided by comments, which GitHub numbers in creation order. A watcher that finds the issue
open, ready and not running posts a *claim comment* carrying a hidden marker
``<!-- agent-fleet:claim round=R owner=O -->``, then re-reads the issue's comments: the claim
is won only if the *first* claim comment of round ``R`` (lowest comment id) carries its own
owner id ``O`` (the fleet's name, :attr:`Source.owner`). Only the winner swaps the labels; a
loser deletes its comment and returns False. Two watchers that race both post, both re-read,
and both see the same first comment (GitHub reads after writes), so exactly one wins. The
round ``R`` is the id of the issue's last ``labeled`` event for the ready label, so when a
person labels an issue ready again after a run (or after taking it back), the claims of the
earlier run do not count. A watcher restarted between its claim comment and the label swap
claims again and wins again (same owner): nothing is lost. Watchers that share a GitHub
repository must have distinct owner ids (fleet names); a source without an owner uses a
random one and :meth:`GitHubSource.list_claimed` then returns every running issue.

Config (``sources:`` in the fleet config file)::

    sources:
      - name: issues
        kind: github
        options:
          repos: [acme/api, acme/web]
          token_env: GITHUB_TOKEN          # or token_file: /run/secrets/github-token
          base_url: https://api.github.com # GitHub Enterprise: https://ghe.example/api/v3
          labels: {ready: agent-ready}     # only the ones that differ from the defaults
          agent_label_prefix: "agent:"
          repo_urls: {acme/api: https://github.com/acme/api.git}   # the task's repo
          poll_interval_s: 30

The token is read from the environment variable or the file, never from the config text, and
appears in no error message, log line or repr. Rate limits (429, or 403 with the rate limit
spent) and 5xx answers are retried after ``Retry-After`` (or an exponential wait) up to
``retries`` times, then raise the one :class:`SourceError`, on which the watcher backs off.
A 401 or 404 is a :class:`SourceError` naming the repository.

Why gidgethub: it is async (the Source interface is), small, returns GitHub's JSON as is
(no schema of its own that a GitHub Enterprise version could disagree with), follows ``Link``
pagination, takes a ``base_url``, and its ``handle_rate_limit_error`` hook sees each failed
response's headers, which is where the ``Retry-After`` wait is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any

import gidgethub
from gidgethub import httpx as gh_httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from core.errors import InputError, StateError
from core.specs import plain_name
from sources.base import (
    ItemState,
    Outcome,
    Source,
    SourceError,
    WorkItem,
    read_secret,
)

REPO = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
"""``owner/name`` as GitHub allows them."""

API_VERSION = "2022-11-28"
MARKER = re.compile(r"<!-- agent-fleet:(?P<kind>[a-z]+)(?P<fields>(?: [a-z]+=[^ >]*)*) -->")
WANTED_CONCURRENCY = 8
"""Issues :meth:`GitHubSource.wanted` reads at once (one GET each)."""
HTTPError: type[Exception] = gh_httpx.httpx.HTTPError  # transport errors (connect, timeout)


class LabelNames(BaseModel):
    """The label that marks each item state on an issue."""

    model_config = ConfigDict(extra="forbid")

    ready: str = "agent-ready"
    running: str = "agent-running"
    succeeded: str = "agent-done"
    failed: str = "agent-failed"
    needs_human: str = "agent-needs-human"
    cancelled: str = "agent-cancelled"
    rejected: str = "agent-rejected"

    @field_validator("*")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip() or len(value) > 50:
            raise ValueError("a label is 1 to 50 characters, not blank")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> LabelNames:
        values = list(self.model_dump().values())
        if len(set(values)) != len(values):
            raise ValueError("each state needs its own label")
        return self

    def of(self, state: ItemState) -> str:
        return str(getattr(self, state.value))


class GitHubOptions(BaseModel):
    """The ``options:`` of a ``kind: github`` source."""

    model_config = ConfigDict(extra="forbid")

    repos: list[str] = Field(min_length=1, description="Repositories, as owner/name.")
    token_env: str | None = Field(None, description="Environment variable holding the token.")
    token_file: str | None = Field(None, description="File holding the token (first line).")
    base_url: str = Field(
        "https://api.github.com", description="The REST API root (GitHub Enterprise: .../api/v3)."
    )
    labels: LabelNames = Field(default_factory=LabelNames)
    agent_label_prefix: str | None = Field(
        "agent:", description="A label with this prefix names the agent (null: never)."
    )
    repo_urls: dict[str, str] = Field(
        default_factory=dict,
        description="owner/name -> the task's repo (a clone URL or a local directory).",
    )
    poll_interval_s: float = Field(30.0, gt=0)
    retries: int = Field(3, ge=0, le=10, description="Retries of a rate-limited or 5xx request.")
    retry_base_s: float = Field(1.0, gt=0, description="First wait when there is no Retry-After.")
    retry_max_wait_s: float = Field(
        60.0, gt=0, description="Longest wait before a retry; longer limits raise at once."
    )
    timeout_s: float = Field(30.0, gt=0)
    user_agent: str = Field("agent-fleet", min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_token(cls, data: Any) -> Any:
        if isinstance(data, dict) and "token" in data:
            raise ValueError(
                "token: the token is never written in the config; name an environment "
                "variable (token_env) or a file (token_file) that holds it"
            )
        return data

    @field_validator("repos")
    @classmethod
    def _repo_names(cls, value: list[str]) -> list[str]:
        for repo in value:
            if not REPO.fullmatch(repo):
                raise ValueError(f"{repo!r} is not a repository name 'owner/name'")
        if len(set(value)) != len(value):
            raise ValueError("a repository is listed twice")
        return value

    @field_validator("token_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        return None if value is None else plain_name(value)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials (use token_env or token_file)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check(self) -> GitHubOptions:
        if (self.token_env is None) == (self.token_file is None):
            raise ValueError("give exactly one of token_env and token_file")
        unknown = sorted(set(self.repo_urls) - set(self.repos))
        if unknown:
            raise ValueError(f"repo_urls names repositories not in repos: {', '.join(unknown)}")
        return self


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``Retry-After`` (seconds or an HTTP date), or from
    ``x-ratelimit-reset`` when the rate limit is spent; None when neither says."""
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset"):
        with contextlib.suppress(ValueError):
            return max(0.0, float(headers["x-ratelimit-reset"]) - time.time())
    return None


def _retryable(exc: gidgethub.HTTPException) -> bool:
    status = int(exc.status_code)
    if status == 429 or status >= 500:
        return True
    return status == 403 and (
        isinstance(exc, gidgethub.RateLimitExceeded) or "retry-after" in exc.headers
    )


class _Client(gh_httpx.GitHubAPI):
    """gidgethub's httpx client, retrying rate-limited and 5xx answers (see the module)."""

    def __init__(self, http: Any, options: GitHubOptions, token: str) -> None:
        super().__init__(http, options.user_agent, oauth_token=token, base_url=options.base_url)
        self._options = options
        self.attempts = 0
        """Attempts of the request that failed last (for its error message)."""

    def __repr__(self) -> str:
        return f"_Client(base_url={self.base_url!r})"

    async def handle_rate_limit_error(
        self, *, method: str, url: str, exception: gidgethub.HTTPException, attempt: int
    ) -> bool:
        self.attempts = attempt
        if attempt > self._options.retries or not _retryable(exception):
            return False
        wait = retry_after(exception.headers)
        if wait is None:
            wait = self._options.retry_base_s * 2 ** (attempt - 1)
        if wait > self._options.retry_max_wait_s:
            return False  # a long limit: the watcher's backoff waits, not this request
        await self.sleep(wait)
        return True


class IssueGone(StateError):
    """The addressed issue (or label) is not there: 404, 410 (deleted) or 301 (moved).
    Raised by requests made with ``gone_ok`` and handled in this module."""


class IssueError(InputError):
    """An issue that cannot become a task; the message is the reason written to it."""


@dataclass(frozen=True)
class _Claim:
    comment_id: int
    round: int
    owner: str


def _marker(kind: str, **fields: str | int) -> str:
    text = " ".join(f"{k}={urllib.parse.quote(str(v), safe='')}" for k, v in fields.items())
    return f"<!-- agent-fleet:{kind}{' ' + text if text else ''} -->"


def _markers(body: str | None) -> list[tuple[str, dict[str, str]]]:
    found = []
    for match in MARKER.finditer(body or ""):
        fields = {}
        for part in match.group("fields").split():
            key, _, value = part.partition("=")
            fields[key] = urllib.parse.unquote(value)
        found.append((match.group("kind"), fields))
    return found


def _names(issue: Mapping[str, Any]) -> list[str]:
    return [label["name"] for label in issue.get("labels") or [] if isinstance(label, dict)]


def issue_prompt(issue: Mapping[str, Any]) -> str:
    """The prompt of an issue: its title, then its body after a blank line."""
    title = str(issue.get("title") or "").strip()
    body = str(issue.get("body") or "").strip()
    return f"{title}\n\n{body}" if body else title


OUTCOME_TEXT = {
    ItemState.succeeded: "✅ Done",
    ItemState.failed: "❌ Failed",
    ItemState.needs_human: "🙋 Needs a person",
    ItemState.cancelled: "⏹️ Cancelled",
    ItemState.rejected: "⛔ Rejected",
}


class GitHubSource(Source):
    """Items are GitHub issues with the ready label (see the module docstring)."""

    Options = GitHubOptions
    options: GitHubOptions

    def __init__(self, name: str, options: GitHubOptions) -> None:  # type: ignore[override]
        super().__init__(name, options)
        self.poll_interval_s = options.poll_interval_s
        self.__token = read_secret(name, "token", options.token_env, options.token_file)
        self._instance = "anon-" + uuid.uuid4().hex[:12]
        self._client: _Client | None = None
        self._http: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return (
            f"GitHubSource(name={self.name!r}, repos={self.options.repos!r}, "
            f"base_url={self.options.base_url!r})"
        )

    @property
    def owner_id(self) -> str:
        """The id written into claim comments: :attr:`owner`, or a random one per instance."""
        return self.owner or self._instance

    # -- talking to GitHub -------------------------------------------------------------
    def _api(self) -> _Client:
        """The client of the running event loop (made on first use, remade in a new loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._http = gh_httpx.httpx.AsyncClient(timeout=self.options.timeout_s)
            self._client = _Client(self._http, self.options, self.__token)
            self._loop = loop
        return self._client

    def _scrub(self, text: str) -> str:
        return text.replace(self.__token, "***") if self.__token else text

    def _where_token(self) -> str:
        if self.options.token_env is not None:
            return f"the token in ${self.options.token_env}"
        return f"the token in {self.options.token_file}"

    def _error(self, repo: str, what: str, exc: Exception) -> SourceError:
        """The SourceError for a failed request (no token in it, ever)."""
        if isinstance(exc, gidgethub.HTTPException):
            status = int(exc.status_code)
            detail = self._scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
            if status == 401:
                message = (
                    f"GitHub refused {self._where_token()} for repository {repo} "
                    f"(401 {detail or phrase}) while {what}"
                )
            elif status == 404:
                message = (
                    f"repository {repo} was not found, or {self._where_token()} cannot see it "
                    f"(404) while {what}"
                )
            elif _retryable(exc):
                attempts = self._client.attempts if self._client is not None else 1
                wait = retry_after(exc.headers)
                until = f", retry after {wait:.0f}s" if wait is not None else ""
                message = (
                    f"GitHub answered {status} {detail or phrase} for repository {repo} while "
                    f"{what} ({attempts} attempts{until})"
                )
            else:
                message = f"GitHub answered {status} {detail or phrase} for repository {repo} "
                message += f"while {what}"
        else:
            detail = self._scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            message = (
                f"cannot reach GitHub at {self.options.base_url} while {what} for repository "
                f"{repo}: {type(exc).__name__}: {detail}"
            ).rstrip(": ")
        return SourceError(self.name, message)

    @staticmethod
    def _vars(repo: str, **more: Any) -> dict[str, Any]:
        owner, name = repo.split("/", 1)
        return {"owner": owner, "repo": name, **more}

    async def _call(
        self,
        repo: str,
        what: str,
        method: str,
        url: str,
        url_vars: Mapping[str, Any],
        data: Any = b"",
        gone_ok: bool = False,
    ) -> Any:
        """One request; a failure is a SourceError, or :class:`IssueGone` when ``gone_ok``."""
        api = self._api()
        headers = {"x-github-api-version": API_VERSION}
        try:
            if method == "GET":
                return await api.getitem(url, url_vars, extra_headers=headers)
            if method == "POST":
                return await api.post(url, url_vars, data=data, extra_headers=headers)
            if method == "DELETE":
                return await api.delete(url, url_vars, extra_headers=headers)
            raise ValueError(f"unsupported method {method}")
        except gidgethub.HTTPException as exc:
            if gone_ok and int(exc.status_code) in (301, 404, 410):
                raise IssueGone from None
            raise self._error(repo, what, exc) from None
        except HTTPError as exc:
            raise self._error(repo, what, exc) from None

    async def _pages(
        self, repo: str, what: str, url: str, url_vars: Mapping[str, Any], limit: int | None = None
    ) -> AsyncIterator[Any]:
        """The items of a paginated listing (following ``Link: rel="next"``)."""
        api = self._api()
        headers = {"x-github-api-version": API_VERSION}
        count = 0
        pages = api.getiter(url, url_vars, extra_headers=headers)
        try:
            async for item in pages:
                yield item
                count += 1
                if limit is not None and count >= limit:
                    return
        except gidgethub.HTTPException as exc:
            raise self._error(repo, what, exc) from None
        except HTTPError as exc:
            raise self._error(repo, what, exc) from None
        finally:
            await pages.aclose()

    async def _issue(self, repo: str, number: int) -> dict[str, Any] | None:
        """The issue, or None if it is gone (deleted, moved) while the repository is there."""
        try:
            return await self._call(
                repo,
                f"reading issue #{number}",
                "GET",
                "/repos/{owner}/{repo}/issues/{number}",
                self._vars(repo, number=number),
                gone_ok=True,
            )
        except IssueGone:
            # Is the issue gone, or the repository (or our access to it)? The latter raises.
            await self._call(
                repo, "reading the repository", "GET", "/repos/{owner}/{repo}", self._vars(repo)
            )
            return None

    async def _comment(self, repo: str, number: int, body: str) -> dict[str, Any]:
        return await self._call(
            repo,
            f"commenting on issue #{number}",
            "POST",
            "/repos/{owner}/{repo}/issues/{number}/comments",
            self._vars(repo, number=number),
            data={"body": body},
        )

    async def _add_label(self, repo: str, number: int, label: str) -> None:
        await self._call(
            repo,
            f"labelling issue #{number}",
            "POST",
            "/repos/{owner}/{repo}/issues/{number}/labels",
            self._vars(repo, number=number),
            data={"labels": [label]},
        )

    async def _remove_label(self, repo: str, number: int, label: str) -> None:
        """Take ``label`` off the issue (already off: nothing to do)."""
        with contextlib.suppress(IssueGone):
            await self._call(
                repo,
                f"unlabelling issue #{number}",
                "DELETE",
                "/repos/{owner}/{repo}/issues/{number}/labels/{name}",
                self._vars(repo, number=number, name=label),
                gone_ok=True,
            )

    async def _swap(self, repo: str, number: int, old: str, new: str) -> None:
        await self._remove_label(repo, number, old)
        await self._add_label(repo, number, new)

    async def _round(self, repo: str, number: int) -> int:
        """The id of the issue's last ``labeled`` event for the ready label (0: none)."""
        last = 0
        async for event in self._pages(
            repo,
            f"reading the events of issue #{number}",
            "/repos/{owner}/{repo}/issues/{number}/events{?per_page}",
            self._vars(repo, number=number, per_page=100),
        ):
            label = event.get("label") or {}
            if event.get("event") == "labeled" and label.get("name") == self.options.labels.ready:
                last = int(event["id"])
        return last

    async def _marks(self, repo: str, number: int) -> list[tuple[int, str, dict[str, str]]]:
        """The fleet's markers in the issue's comments: (comment id, kind, fields), in
        creation (id) order."""
        marks = []
        async for comment in self._pages(
            repo,
            f"reading the comments of issue #{number}",
            "/repos/{owner}/{repo}/issues/{number}/comments{?per_page}",
            self._vars(repo, number=number, per_page=100),
        ):
            marks += [(int(comment["id"]), k, f) for k, f in _markers(comment.get("body"))]
        return sorted(marks, key=lambda m: m[0])

    async def _claims(self, repo: str, number: int) -> list[_Claim]:
        """The claim comments of the issue, in creation (id) order."""
        return [
            _Claim(comment_id, int(fields["round"]), fields.get("owner", ""))
            for comment_id, kind, fields in await self._marks(repo, number)
            if kind == "claim" and fields.get("round", "").isdigit()
        ]

    async def _outcome_posted(self, repo: str, number: int) -> bool:
        """Whether the outcome of the current claim is commented already (a report whose
        label swap failed is retried without a second comment)."""
        marks = await self._marks(repo, number)
        last_claim = max((i for i, kind, _ in marks if kind == "claim"), default=0)
        return any(kind == "outcome" and i > last_claim for i, kind, _ in marks)

    # -- items -------------------------------------------------------------------------
    def _parse(self, item_id: str) -> tuple[str, int] | None:
        """``owner/name#number`` of a configured repository, else None."""
        repo, _, number = item_id.rpartition("#")
        if repo not in self.options.repos or not number.isdigit():
            return None
        return repo, int(number)

    def _item(self, repo: str, issue: dict[str, Any]) -> WorkItem:
        labels = self.options.labels
        own = set(labels.model_dump().values())
        names = _names(issue)
        agent = None
        prefix = self.options.agent_label_prefix
        if prefix:
            agents = sorted({n[len(prefix) :].strip() for n in names if n.startswith(prefix)})
            agents = [a for a in agents if a]
            if len(agents) > 1:
                raise IssueError(f"more than one agent label: {', '.join(agents)}")
            agent = agents[0] if agents else None
        prompt = issue_prompt(issue)
        if not prompt.strip():
            raise IssueError("the issue has neither a title nor a body")
        return WorkItem(
            source=self.name,
            id=f"{repo}#{issue['number']}",
            prompt=prompt,
            repo=self.options.repo_urls.get(repo),
            labels=[n for n in names if n not in own],
            agent=agent,
            raw={**issue, "repository": repo},
        )

    async def _reject_ready(self, repo: str, number: int, reason: str) -> None:
        labels = self.options.labels
        await self._comment(
            repo, number, f"{_marker('outcome', state='rejected')}\n⛔ Rejected: {reason}"
        )
        await self._swap(repo, number, labels.ready, labels.rejected)

    async def _listing(self, repo: str, label: str, what: str, limit: int) -> list[dict[str, Any]]:
        """Open issues (not pull requests) of ``repo`` with ``label``, oldest first."""
        found = []
        async for issue in self._pages(
            repo,
            what,
            "/repos/{owner}/{repo}/issues{?labels,state,sort,direction,per_page}",
            self._vars(
                repo,
                labels=label,
                state="open",
                sort="created",
                direction="asc",
                per_page=min(100, max(1, limit)),
            ),
            limit=limit,
        ):
            if "pull_request" not in issue:
                found.append(issue)
        return found

    # -- the Source interface ------------------------------------------------------------
    async def list_ready(self, limit: int = 100) -> list[WorkItem]:
        """Open issues with the ready label (and not the running one) in every configured
        repository, oldest first. An issue with two agent labels is rejected here."""
        labels = self.options.labels
        candidates: list[tuple[str, str, int, WorkItem]] = []
        for repo in self.options.repos:
            for issue in await self._listing(repo, labels.ready, "listing ready issues", limit):
                if labels.running in _names(issue):
                    continue  # a claim is being made
                try:
                    item = self._item(repo, issue)
                except IssueError as exc:
                    await self._reject_ready(repo, int(issue["number"]), str(exc))
                    continue
                candidates.append(
                    (str(issue.get("created_at") or ""), repo, item.raw["number"], item)
                )
        candidates.sort(key=lambda c: c[:3])
        return [c[3] for c in candidates[:limit]]

    async def claim(self, item_id: str) -> bool:
        """Claim comment, re-read, the first claim of this round wins, the winner swaps the
        labels (see the module docstring)."""
        parsed = self._parse(item_id)
        if parsed is None:
            return False
        repo, number = parsed
        labels = self.options.labels
        issue = await self._issue(repo, number)
        if issue is None or issue.get("state") != "open":
            return False
        names = _names(issue)
        if labels.ready not in names or labels.running in names:
            return False
        round_id = await self._round(repo, number)
        owner = self.owner_id
        mine = await self._comment(
            repo,
            number,
            f"{_marker('claim', round=round_id, owner=owner)}\n"
            f"🤖 Picked up by the agent fleet `{owner}`: a task will run for this issue.",
        )
        claims = [c for c in await self._claims(repo, number) if c.round == round_id]
        first = claims[0] if claims else None
        if first is None or first.comment_id != int(mine["id"]):
            with contextlib.suppress(SourceError, IssueGone):  # only tidying up
                await self._call(
                    repo,
                    "deleting a claim comment",
                    "DELETE",
                    "/repos/{owner}/{repo}/issues/comments/{id}",
                    self._vars(repo, id=mine["id"]),
                    gone_ok=True,
                )
        if first is None or first.owner != owner:
            return False
        await self._swap(repo, number, labels.ready, labels.running)
        return True

    async def list_claimed(self, limit: int = 10_000) -> list[WorkItem]:
        """Open issues with the running label whose winning claim (the first claim comment of
        the latest round) is this watcher's; without an :attr:`owner`, every running issue."""
        items: list[WorkItem] = []
        for repo in self.options.repos:
            running = await self._listing(
                repo, self.options.labels.running, "listing claimed issues", limit
            )
            for issue in running:
                if self.owner is not None:
                    claims = await self._claims(repo, int(issue["number"]))
                    if not claims:
                        continue
                    latest = max(c.round for c in claims)
                    first = next(c for c in claims if c.round == latest)
                    if first.owner != self.owner:
                        continue
                with contextlib.suppress(IssueError):
                    items.append(self._item(repo, issue))
        return items[:limit]

    async def _running_issue(self, item_id: str) -> tuple[str, int, dict[str, Any]] | None:
        """The issue if it is open and carries the running label, else None."""
        parsed = self._parse(item_id)
        if parsed is None:
            return None
        repo, number = parsed
        issue = await self._issue(repo, number)
        if issue is None or issue.get("state") != "open":
            return None
        if self.options.labels.running not in _names(issue):
            return None
        return repo, number, issue

    async def report_progress(self, item_id: str, note: str | None = None) -> bool:
        found = await self._running_issue(item_id)
        if found is None:
            return False
        repo, number, _ = found
        await self._comment(repo, number, f"{_marker('progress')}\n⏳ {note or 'still running'}")
        return True

    async def report_outcome(self, item_id: str, outcome: Outcome) -> bool:
        """An outcome comment (summary, reason, pull request or branch), then the running
        label swapped for the outcome's; False if the issue was taken back meanwhile. Safe to
        retry after a failure: the comment is posted once per claim."""
        found = await self._running_issue(item_id)
        if found is None:
            return False
        repo, number, _ = found
        lines = [_marker("outcome", state=outcome.state.value), OUTCOME_TEXT[outcome.state]]
        if outcome.summary:
            lines[-1] += f": {outcome.summary}"
        if outcome.reason:
            lines.append(f"Reason: {outcome.reason}")
        if outcome.pr_url:
            lines.append(f"Pull request: {outcome.pr_url}")
        if outcome.branch:
            lines.append(f"Branch: `{outcome.branch}`")
        if not await self._outcome_posted(repo, number):
            await self._comment(repo, number, "\n\n".join(lines))
        labels = self.options.labels
        # The outcome's label first: if that fails the issue still looks running, so the
        # retry finds it (and finds its comment posted already).
        await self._add_label(repo, number, labels.of(outcome.state))
        await self._remove_label(repo, number, labels.running)
        return True

    async def wanted(self, item_ids: Collection[str]) -> dict[str, str]:
        """Of ``item_ids``, the issues still open with the running label, with their current
        prompt (title and body); a closed, deleted or moved issue, or one whose running label
        was taken off, is withdrawn."""
        gate = asyncio.Semaphore(WANTED_CONCURRENCY)

        async def check(item_id: str) -> tuple[str, dict[str, Any]] | None:
            async with gate:
                found = await self._running_issue(item_id)
            return None if found is None else (item_id, found[2])

        answers = await asyncio.gather(
            *(check(i) for i in dict.fromkeys(item_ids)), return_exceptions=True
        )
        out = {}
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer  # the first failure (the others ran to their end)
            if answer is not None:
                out[answer[0]] = issue_prompt(answer[1])
        return out

    async def close(self) -> None:
        """Close the HTTP client (a client of another, finished event loop is dropped)."""
        http, loop = self._http, self._loop
        self._http = self._client = self._loop = None
        if http is not None and loop is asyncio.get_running_loop():
            with contextlib.suppress(Exception):
                await http.aclose()
