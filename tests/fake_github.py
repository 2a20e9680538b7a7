"""A small, real HTTP server that answers the parts of GitHub's REST API the fleet uses.

It runs in a thread (stdlib ``ThreadingHTTPServer``) and keeps repositories, issues, labels,
comments, issue events and pull requests in memory, answering with the JSON shapes GitHub
documents (https://docs.github.com/en/rest): the same fields the fleet reads, ``Link``
headers for pagination (``per_page``/``page``), 401 ``Bad credentials`` without the right
token (``Authorization: Bearer <token>`` or ``token <token>``), 404 ``Not Found`` for an
unknown repository or issue, 422 for invalid pull requests. Endpoints:

- ``GET /repos/{owner}/{repo}``
- ``GET /repos/{owner}/{repo}/issues`` (``labels``, ``state``, ``sort``, ``direction``)
- ``GET|PATCH /repos/{owner}/{repo}/issues/{number}``
- ``POST /repos/{owner}/{repo}/issues/{number}/labels``,
  ``DELETE /repos/{owner}/{repo}/issues/{number}/labels/{name}``
- ``GET|POST /repos/{owner}/{repo}/issues/{number}/comments``,
  ``DELETE /repos/{owner}/{repo}/issues/comments/{id}``
- ``GET /repos/{owner}/{repo}/issues/{number}/events`` (``labeled``/``unlabeled``/
  ``closed``/``reopened``)
- ``GET|POST /repos/{owner}/{repo}/pulls`` (``state``, ``head``, ``base`` filters)

Tests act as people through the Python methods (:meth:`FakeGitHub.add_issue`,
:meth:`FakeGitHub.set_labels`, :meth:`FakeGitHub.close`, ...), inject faults with
:meth:`FakeGitHub.fail_next` and assert on :attr:`FakeGitHub.requests`.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Request:
    """One request the fake answered."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any
    status: int


@dataclass
class Fault:
    status: int
    retry_after: float | None


@dataclass
class Repo:
    owner: str
    name: str
    id: int
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)
    issues: dict[int, dict[str, Any]] = field(default_factory=dict)
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    pulls: dict[int, dict[str, Any]] = field(default_factory=dict)
    next_number: int = 1

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


class HttpError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.payload = {
            "message": message,
            "documentation_url": "https://docs.github.com/rest",
            **extra,
        }


class FakeGitHub:
    """The in-memory GitHub and its HTTP server (see the module docstring)."""

    def __init__(self, token: str, login: str = "fleet-bot") -> None:
        self.token = token
        self.login = login
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self._ids = 1000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._pairing: float | None = None
        self._pairs: dict[str, threading.Event] = {}
        self._pairs_lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> FakeGitHub:
        fake = self

        class Handler(_Handler):
            github = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- acting as people --------------------------------------------------------------
    def _id(self) -> int:
        self._ids += 1
        return self._ids

    def add_repo(self, full_name: str) -> Repo:
        owner, name = full_name.split("/")
        with self.lock:
            return self.repos.setdefault(full_name, Repo(owner, name, self._id()))

    def add_issue(
        self, repo: str, title: str, body: str | None = None, labels: list[str] | None = None
    ) -> int:
        """Open an issue (with its ``labeled`` events, as GitHub records them)."""
        with self.lock:
            r = self.add_repo(repo)
            number = r.next_number
            r.next_number += 1
            now = _now()
            r.issues[number] = {
                "id": self._id(),
                "node_id": f"I_{number}",
                "number": number,
                "title": title,
                "body": body,
                "state": "open",
                "state_reason": None,
                "locked": False,
                "labels": [],
                "user": self._user(),
                "assignee": None,
                "assignees": [],
                "milestone": None,
                "comments": 0,
                "created_at": now,
                "updated_at": now,
                "closed_at": None,
                "author_association": "OWNER",
            }
            r.comments[number] = []
            r.events[number] = []
            self._add_labels(r, number, labels or [])
            return number

    def issue(self, repo: str, number: int) -> dict[str, Any]:
        with self.lock:
            return self._issue_json(self.repos[repo], number)

    def labels(self, repo: str, number: int) -> list[str]:
        with self.lock:
            return [label["name"] for label in self.repos[repo].issues[number]["labels"]]

    def comments(self, repo: str, number: int) -> list[str]:
        with self.lock:
            return [c["body"] for c in self.repos[repo].comments[number]]

    def set_labels(self, repo: str, number: int, labels: list[str]) -> None:
        with self.lock:
            r = self.repos[repo]
            for name in [n for n in self.labels(repo, number) if n not in labels]:
                self._remove_label(r, number, name)
            self._add_labels(r, number, labels)

    def close(self, repo: str, number: int) -> None:
        self.edit(repo, number, state="closed")

    def edit(self, repo: str, number: int, **fields: Any) -> None:
        with self.lock:
            self._patch_issue(self.repos[repo], number, fields)

    def fail_next(self, count: int, status: int = 503, retry_after: float | None = None) -> None:
        """The next ``count`` requests (any) answer ``status`` (with ``Retry-After``)."""
        with self.lock:
            self.faults.extend(Fault(status, retry_after) for _ in range(count))

    def pair_comment_posts(self, timeout_s: float = 1.0) -> None:
        """From now on, hold the answer to a comment POST until a second comment is posted on
        the same issue (or ``timeout_s`` passes): two clients commenting at once then both
        see both comments when they read them back, whatever the timing."""
        self._pairing = timeout_s

    def _hold_for_pair(self, path: str) -> None:
        if self._pairing is None:
            return
        with self._pairs_lock:
            waiting = self._pairs.pop(path, None)
            if waiting is None:
                mine = self._pairs[path] = threading.Event()
        if waiting is not None:
            waiting.set()  # the second comment: release the first
            return
        if not mine.wait(self._pairing):
            with self._pairs_lock:
                if self._pairs.get(path) is mine:
                    del self._pairs[path]

    def count(self, method: str, path_part: str = "") -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.method == method and path_part in r.path)

    # -- the model ---------------------------------------------------------------------
    def _user(self) -> dict[str, Any]:
        return {"login": self.login, "id": 1, "type": "User"}

    def _label(self, r: Repo, name: str) -> dict[str, Any]:
        if name not in r.labels:
            r.labels[name] = {
                "id": self._id(),
                "node_id": f"LA_{name}",
                "url": f"{self.url}/repos/{r.full_name}/labels/{urllib.parse.quote(name)}",
                "name": name,
                "color": "ededed",
                "default": False,
                "description": None,
            }
        return r.labels[name]

    def _event(self, r: Repo, number: int, kind: str, **extra: Any) -> None:
        r.events[number].append(
            {
                "id": self._id(),
                "node_id": f"E_{kind}",
                "event": kind,
                "actor": self._user(),
                "commit_id": None,
                "created_at": _now(),
                **extra,
            }
        )

    def _touch(self, r: Repo, number: int) -> None:
        r.issues[number]["updated_at"] = _now()

    def _add_labels(self, r: Repo, number: int, names: list[str]) -> None:
        issue = r.issues[number]
        have = {label["name"] for label in issue["labels"]}
        for name in names:
            if name not in have:
                label = self._label(r, name)
                issue["labels"].append(label)
                have.add(name)
                self._event(r, number, "labeled", label={"name": name, "color": label["color"]})
        self._touch(r, number)

    def _remove_label(self, r: Repo, number: int, name: str) -> bool:
        issue = r.issues[number]
        kept = [label for label in issue["labels"] if label["name"] != name]
        if len(kept) == len(issue["labels"]):
            return False
        issue["labels"] = kept
        self._event(r, number, "unlabeled", label={"name": name, "color": "ededed"})
        self._touch(r, number)
        return True

    def _patch_issue(self, r: Repo, number: int, fields: dict[str, Any]) -> None:
        issue = r.issues[number]
        for key in ("title", "body"):
            if key in fields:
                issue[key] = fields[key]
        if "state" in fields and fields["state"] != issue["state"]:
            if fields["state"] not in ("open", "closed"):
                raise HttpError(422, "Validation Failed")
            issue["state"] = fields["state"]
            closed = fields["state"] == "closed"
            issue["closed_at"] = _now() if closed else None
            issue["state_reason"] = "completed" if closed else "reopened"
            self._event(r, number, "closed" if closed else "reopened")
        if "labels" in fields:
            names = [n if isinstance(n, str) else n["name"] for n in fields["labels"]]
            for name in [label["name"] for label in issue["labels"]]:
                if name not in names:
                    self._remove_label(r, number, name)
            self._add_labels(r, number, names)
        self._touch(r, number)

    def _issue_json(self, r: Repo, number: int) -> dict[str, Any]:
        issue = r.issues.get(number)
        if issue is None:
            raise HttpError(404, "Not Found")
        base = f"{self.url}/repos/{r.full_name}/issues/{number}"
        out = {
            **issue,
            "url": base,
            "repository_url": f"{self.url}/repos/{r.full_name}",
            "labels_url": base + "/labels{/name}",
            "comments_url": base + "/comments",
            "events_url": base + "/events",
            "html_url": f"https://github.example/{r.full_name}/issues/{number}",
            "labels": [dict(label) for label in issue["labels"]],
            "comments": len(r.comments[number]),
        }
        if number in r.pulls:
            out["pull_request"] = {"url": f"{self.url}/repos/{r.full_name}/pulls/{number}"}
        return out

    def _repo_json(self, r: Repo) -> dict[str, Any]:
        return {
            "id": r.id,
            "node_id": f"R_{r.id}",
            "name": r.name,
            "full_name": r.full_name,
            "owner": {"login": r.owner, "id": 2, "type": "Organization"},
            "private": False,
            "html_url": f"https://github.example/{r.full_name}",
            "url": f"{self.url}/repos/{r.full_name}",
            "default_branch": "main",
        }

    def _pull_json(self, r: Repo, number: int) -> dict[str, Any]:
        pull = r.pulls[number]
        issue = r.issues[number]
        return {
            "id": issue["id"],
            "node_id": f"PR_{number}",
            "number": number,
            "url": f"{self.url}/repos/{r.full_name}/pulls/{number}",
            "html_url": f"https://github.example/{r.full_name}/pull/{number}",
            "state": issue["state"],
            "title": issue["title"],
            "body": issue["body"],
            "user": issue["user"],
            "draft": pull["draft"],
            "merged": False,
            "head": {"ref": pull["head"], "label": f"{r.owner}:{pull['head']}", "sha": "0" * 40},
            "base": {"ref": pull["base"], "label": f"{r.owner}:{pull['base']}", "sha": "1" * 40},
            "created_at": issue["created_at"],
            "updated_at": issue["updated_at"],
            "closed_at": issue["closed_at"],
        }

    # -- the REST handlers ---------------------------------------------------------------
    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        """Answer one authenticated request: (status, JSON payload, extra headers)."""
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if len(parts) < 3 or parts[0] != "repos":
            raise HttpError(404, "Not Found")
        r = self.repos.get(f"{parts[1]}/{parts[2]}")
        if r is None:
            raise HttpError(404, "Not Found")
        rest = parts[3:]
        q = {k: v[-1] for k, v in query.items()}
        match method, rest:
            case "GET", []:
                return 200, self._repo_json(r), {}
            case "GET", ["issues"]:
                return self._list_issues(r, q, path)
            case "GET", ["issues", number]:
                return 200, self._issue_json(r, self._number(r, number)), {}
            case "PATCH", ["issues", number]:
                n = self._number(r, number)
                self._patch_issue(r, n, body or {})
                return 200, self._issue_json(r, n), {}
            case "POST", ["issues", number, "labels"]:
                n = self._number(r, number)
                names = body.get("labels") if isinstance(body, dict) else body
                if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
                    raise HttpError(422, "Invalid request.")
                self._add_labels(r, n, names)
                return 200, self._issue_json(r, n)["labels"], {}
            case "DELETE", ["issues", number, "labels", name]:
                n = self._number(r, number)
                if not self._remove_label(r, n, name):
                    raise HttpError(404, "Label does not exist")
                return 200, self._issue_json(r, n)["labels"], {}
            case "GET", ["issues", number, "comments"]:
                n = self._number(r, number)
                return self._page(list(r.comments[n]), q, path)
            case "POST", ["issues", number, "comments"]:
                n = self._number(r, number)
                if not isinstance(body, dict) or not isinstance(body.get("body"), str):
                    raise HttpError(422, "Invalid request.")
                comment_id = self._id()
                comment = {
                    "id": comment_id,
                    "node_id": f"IC_{comment_id}",
                    "url": f"{self.url}/repos/{r.full_name}/issues/comments/{comment_id}",
                    "html_url": f"https://github.example/{r.full_name}/issues/{n}"
                    f"#issuecomment-{comment_id}",
                    "issue_url": f"{self.url}/repos/{r.full_name}/issues/{n}",
                    "body": body["body"],
                    "user": self._user(),
                    "created_at": _now(),
                    "updated_at": _now(),
                    "author_association": "OWNER",
                }
                r.comments[n].append(comment)
                self._touch(r, n)
                return 201, comment, {}
            case "DELETE", ["issues", "comments", comment_id]:
                for comments in r.comments.values():
                    for c in comments:
                        if str(c["id"]) == comment_id:
                            comments.remove(c)
                            return 204, None, {}
                raise HttpError(404, "Not Found")
            case "GET", ["issues", number, "events"]:
                n = self._number(r, number)
                return self._page(list(r.events[n]), q, path)
            case "GET", ["pulls"]:
                return self._list_pulls(r, q, path)
            case "POST", ["pulls"]:
                return self._create_pull(r, body)
        raise HttpError(404, "Not Found")

    def _number(self, r: Repo, text: str) -> int:
        if not text.isdigit() or int(text) not in r.issues:
            raise HttpError(404, "Not Found")
        return int(text)

    def _list_issues(
        self, r: Repo, q: dict[str, str], path: str
    ) -> tuple[int, Any, dict[str, str]]:
        state = q.get("state", "open")
        wanted = [x for x in q.get("labels", "").split(",") if x]
        found = []
        for number in r.issues:
            issue = self._issue_json(r, number)
            names = {label["name"] for label in issue["labels"]}
            if state != "all" and issue["state"] != state:
                continue
            if all(name in names for name in wanted):
                found.append(issue)
        key = q.get("sort", "created")
        field_name = {"created": "created_at", "updated": "updated_at"}.get(key, "created_at")
        found.sort(key=lambda i: (i[field_name], i["number"]), reverse=q.get("direction") != "asc")
        return self._page(found, q, path)

    def _list_pulls(self, r: Repo, q: dict[str, str], path: str) -> tuple[int, Any, dict[str, str]]:
        state = q.get("state", "open")
        found = []
        for number in sorted(r.pulls):
            pull = self._pull_json(r, number)
            if state != "all" and pull["state"] != state:
                continue
            if "head" in q and pull["head"]["label"] != q["head"]:
                continue
            if "base" in q and pull["base"]["ref"] != q["base"]:
                continue
            found.append(pull)
        return self._page(found, q, path)

    def _create_pull(self, r: Repo, body: Any) -> tuple[int, Any, dict[str, str]]:
        if not isinstance(body, dict):
            raise HttpError(422, "Validation Failed")
        missing = [k for k in ("head", "base") if not isinstance(body.get(k), str)]
        if missing or not isinstance(body.get("title"), str):
            errors = [
                {"resource": "PullRequest", "field": k, "code": "missing_field"}
                for k in [*missing, *([] if isinstance(body.get("title"), str) else ["title"])]
            ]
            raise HttpError(422, "Validation Failed", errors=errors)
        head = body["head"].split(":", 1)[-1]
        if head == body["base"]:
            raise HttpError(
                422,
                "Validation Failed",
                errors=[{"resource": "PullRequest", "code": "custom", "message": "No commits"}],
            )
        for number, pull in r.pulls.items():
            if pull["head"] == head and r.issues[number]["state"] == "open":
                message = f"A pull request already exists for {r.owner}:{head}."
                raise HttpError(
                    422,
                    "Validation Failed",
                    errors=[{"resource": "PullRequest", "code": "custom", "message": message}],
                )
        number = self.add_issue(r.full_name, body["title"], body.get("body"))
        r.pulls[number] = {"head": head, "base": body["base"], "draft": bool(body.get("draft"))}
        return 201, self._pull_json(r, number), {}

    def _page(
        self, items: list[dict[str, Any]], q: dict[str, str], path: str
    ) -> tuple[int, Any, dict[str, str]]:
        per_page = max(1, min(100, int(q.get("per_page", "30"))))
        page = max(1, int(q.get("page", "1")))
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        links = []

        def link(p: int, rel: str) -> str:
            query = urllib.parse.urlencode({**q, "per_page": per_page, "page": p})
            return f'<{self.url}{path}?{query}>; rel="{rel}"'

        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        return 200, chunk, ({"Link": ", ".join(links)} if links else {})


class _Handler(BaseHTTPRequestHandler):
    github: FakeGitHub
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out without a delayed-ACK stall

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        gh = self.github
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        headers: dict[str, str] = {}
        with gh.lock:
            fault = gh.faults.pop(0) if gh.faults else None
            auth = self.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            try:
                if fault is not None:
                    if fault.retry_after is not None:
                        headers["Retry-After"] = str(fault.retry_after)
                    raise HttpError(fault.status, "injected fault")
                if scheme.lower() not in ("bearer", "token") or token != gh.token:
                    raise HttpError(401, "Bad credentials")
                status, payload, headers = gh.handle(self.command, parsed.path, query, body)
            except HttpError as exc:
                status, payload = exc.status, exc.payload
            gh.requests.append(
                Request(self.command, parsed.path, query, dict(self.headers), body, status)
            )
        if self.command == "POST" and parsed.path.endswith("/comments") and status == 201:
            gh._hold_for_pair(parsed.path)
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if data:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-GitHub-Api-Version-Selected", "2022-11-28")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve


@contextmanager
def fake_github(token: str) -> Iterator[FakeGitHub]:
    """A started fake GitHub that accepts ``token``; stopped afterwards."""
    server = FakeGitHub(token).start()
    try:
        yield server
    finally:
        server.stop()
