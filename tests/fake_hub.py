"""An in-memory fake of the Hugging Face Hub HTTP API, for tests that drive the real ``huggingface_hub`` client.

Why: Hub code must be tested through the real client (upload_folder, snapshot_download, ...) with no network.
This speaks what huggingface_hub 2.4 sends for model repos (read from its source): whoami, repo creation,
preupload + NDJSON commits, info/tree/refs, branches and ``/resolve`` downloads (HEAD and GET).

Known leniency: preupload answers "regular" for every file, so even binaries travel inline (base64) in the
commit, where the Hub would send *.safetensors to Xet/LFS. The server decides that, not the client, so the
fake needs neither Xet (which a stdlib server cannot speak) nor LFS. Stdlib only; logs nothing; never
echoes a token.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

USER = "test-user"  # the account FakeHub's token belongs to
_LFS_PATTERNS = [
    "*.bin",
    "*.ckpt",
    "*.gguf",
    "*.h5",
    "*.npy",
    "*.onnx",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.safetensors",
]
# What a new Hub repo's first commit holds (abridged); FakeHub stores it but does not act on it.
DEFAULT_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _LFS_PATTERNS).encode()
FAULT_KINDS = frozenset(
    {"whoami", "create_repo", "validate_yaml", "repo_info", "tree", "refs", "create_branch", "preupload"}
    | {"commit", "download"}
)
Response = tuple[int, Any, dict[str, str]]  # status, body (bytes, or JSON-able), headers


def git_blob_oid(data: bytes) -> str:
    """``git hash-object``: the id the Hub gives a regular file, and the ETag it serves it with."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass(frozen=True)
class Commit:
    oid: str
    title: str
    description: str
    parent: str | None
    files: dict[str, bytes]  # the whole tree at this commit
    date: str


@dataclass
class Repo:
    private: bool
    created: str
    branches: dict[str, str] = field(default_factory=dict)  # branch -> head commit oid
    commits: dict[str, Commit] = field(default_factory=dict)


class HubError(Exception):
    """An error answer; ``code`` becomes X-Error-Code, which the client maps to RepositoryNotFoundError & co."""

    def __init__(self, status: int, message: str, code: str = "", **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra
        self.headers: dict[str, str] = extra.pop("headers", {})


@dataclass
class Request:
    query: dict[str, list[str]]
    body: bytes
    authed: bool  # the right token was sent (a wrong one never gets this far)

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    def require_auth(self) -> None:
        if not self.authed:
            raise HubError(401, "You must be authenticated to do this: missing Authorization header")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive like the Hub; every answer has a Content-Length
    timeout = 10  # idle keep-alive connections close on their own
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self.server.hub._handle(self)

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: FakeHub


class FakeHub:
    """A Hub on 127.0.0.1 (ephemeral port, background thread); use it as a context manager.

    ``requests`` lists each (method, path) received; ``files()``/``commits()`` show the stored state;
    ``fail_next()`` makes the next request(s) of one kind answer an HTTP error.
    """

    def __init__(self, token: str = "hf_test_token") -> None:
        self.token, self.endpoint = token, ""
        self.requests: list[tuple[str, str]] = []
        self._repos: dict[str, Repo] = {}
        self._faults: dict[str, list[tuple[int, str]]] = {}
        self._lock = threading.RLock()  # requests are handled one at a time
        self._counter = itertools.count()
        self._server: _Server | None = None

    def __enter__(self) -> FakeHub:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            return dict(self._resolve(self._repos[repo_id], revision).files)

    def commits(self, repo_id: str, revision: str = "main") -> list[Commit]:
        """The history of ``revision``, oldest first (starting with the repo's initial commit)."""
        with self._lock:
            repo = self._repos[repo_id]
            out = [self._resolve(repo, revision)]
            while out[-1].parent is not None:
                out.append(repo.commits[out[-1].parent])
            return out[::-1]

    def fail_next(self, kind: str, status: int = 500, *, times: int = 1, message: str = "") -> None:
        """Make the next ``times`` requests of ``kind`` (one of FAULT_KINDS) answer ``status``.

        The client retries 408/429/5xx for preupload, downloads' metadata and upload_folder's commits
        (after 1 s, 2 s, ...): use a 4xx, or ``times`` > 1, to see them fail. ``create_commit`` never retries.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        fault = (status, message or f"FakeHub: injected {kind} failure")
        with self._lock:
            self._faults.setdefault(kind, []).extend([fault] * times)

    # -- HTTP plumbing --------------------------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        url = urlsplit(h.path)
        body = _read_body(h)
        auth = h.headers.get("Authorization")
        with self._lock:
            self.requests.append((h.command, url.path))
            try:
                if auth is not None and not hmac.compare_digest(
                    auth.encode(), f"Bearer {self.token}".encode()
                ):
                    raise HubError(401, "Invalid credentials in Authorization header")
                kind, action = self._route(h.command, [unquote(s) for s in url.path.split("/")[1:]])
                if self._faults.get(kind):
                    raise HubError(*self._faults[kind].pop(0))
                status, payload, headers = action(Request(parse_qs(url.query), body, auth is not None))
            except HubError as e:
                status, payload = e.status, {"error": e.message, **e.extra}
                headers = {"X-Error-Message": e.message, **e.headers}
                if e.code:
                    headers["X-Error-Code"] = e.code
            except (KeyError, ValueError, TypeError) as e:  # a malformed request
                status, payload, headers = 400, {"error": f"FakeHub: bad request ({type(e).__name__})"}, {}
        if not isinstance(payload, bytes):
            payload, headers = json.dumps(payload).encode(), {"Content-Type": "application/json", **headers}
        h.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(payload))}.items():
            h.send_header(key, value)
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(payload)

    def _route(self, method: str, p: list[str]) -> tuple[str, Callable[[Request], Response]]:
        """(fault kind, handler) for a request; the URL shapes are those huggingface_hub builds."""
        if p == ["api", "whoami-v2"]:
            return "whoami", self._whoami
        if p == ["api", "repos", "create"] and method == "POST":
            return "create_repo", self._create_repo
        if p == ["api", "validate-yaml"] and method == "POST":  # README metadata: accepted, not checked
            return "validate_yaml", lambda r: (200, {"errors": [], "warnings": []}, {})
        if len(p) >= 4 and p[:2] == ["api", "models"]:
            repo_id, action, rest = f"{p[2]}/{p[3]}", (p[4] if len(p) > 4 else "revision"), p[5:]
            rev = rest[0] if rest else "main"
            routes: dict[tuple[str, str], tuple[str, Callable[[Request], Response]]] = {
                ("GET", "revision"): ("repo_info", lambda r: self._info(r, repo_id, rev)),
                ("GET", "tree"): ("tree", lambda r: self._tree(r, repo_id, rev, "/".join(rest[1:]))),
                ("GET", "refs"): ("refs", lambda r: self._refs(r, repo_id)),
                ("POST", "branch"): ("create_branch", lambda r: self._create_branch(r, repo_id, rev)),
                ("POST", "preupload"): ("preupload", lambda r: self._preupload(r, repo_id, rev)),
                ("POST", "commit"): ("commit", lambda r: self._commit(r, repo_id, rev)),
            }
            if (method, action) in routes:
                return routes[(method, action)]
        if len(p) >= 5 and p[2] == "resolve" and method in ("GET", "HEAD"):
            return "download", lambda r: self._download(r, f"{p[0]}/{p[1]}", p[3], "/".join(p[4:]))
        raise HubError(404, f"FakeHub: no route for {method} /{'/'.join(p)}")

    # -- state (the lock is held) ---------------------------------------------------------------------

    def _repo(self, repo_id: str, req: Request) -> Repo:
        """Like the Hub, a private repo is "not found" to anonymous callers."""
        repo = self._repos.get(repo_id)
        if repo is None or (repo.private and not req.authed):
            raise HubError(404 if req.authed else 401, "Repository not found", "RepoNotFound")
        return repo

    @staticmethod
    def _resolve(repo: Repo, rev: str, branch_only: bool = False) -> Commit:
        """A branch's head, or a commit by oid (for reads only: commits go to an existing branch)."""
        oid = repo.branches.get(rev, None if branch_only else rev)
        if oid not in repo.commits:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return repo.commits[oid]

    def _new_commit(self, repo: Repo, branch: str, title: str, desc: str, files: dict[str, bytes]) -> Commit:
        parent = repo.branches.get(branch)
        tree = sorted((p, git_blob_oid(d)) for p, d in files.items())
        oid = hashlib.sha1(json.dumps([parent, title, desc, next(self._counter), tree]).encode()).hexdigest()
        repo.commits[oid] = Commit(oid, title, desc, parent, files, _now())
        repo.branches[branch] = oid
        return repo.commits[oid]

    # -- endpoints ------------------------------------------------------------------------------------

    def _whoami(self, req: Request) -> Response:
        req.require_auth()
        auth = {"type": "access_token", "accessToken": {"displayName": "fake-hub", "role": "write"}}
        return 200, {"type": "user", "name": USER, "fullname": "Test User", "orgs": [], "auth": auth}, {}

    def _create_repo(self, req: Request) -> Response:
        req.require_auth()
        payload = req.json()
        if payload.get("type") not in (None, "model"):
            raise HubError(400, "FakeHub only hosts model repos")
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        url = f"{self.endpoint}/{repo_id}"
        if repo_id in self._repos:  # with exist_ok=True the client reads "url" from this 409's body
            raise HubError(409, "You already created this model repo", url=url)
        repo = self._repos[repo_id] = Repo(private=payload.get("visibility") == "private", created=_now())
        self._new_commit(repo, "main", "initial commit", "", {".gitattributes": DEFAULT_GITATTRIBUTES})
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def _info(self, req: Request, repo_id: str, rev: str) -> Response:
        repo = self._repo(repo_id, req)
        commit = self._resolve(repo, rev)
        siblings: list[dict[str, Any]] = [{"rfilename": path} for path in sorted(commit.files)]
        for sibling in siblings if "blobs" in req.query else []:  # files_metadata=True
            data = commit.files[sibling["rfilename"]]
            sibling |= {"size": len(data), "blobId": git_blob_oid(data)}
        info = {"id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid}
        info |= {"lastModified": commit.date, "createdAt": repo.created, "private": repo.private}
        return 200, info | {"gated": False, "disabled": False, "tags": [], "siblings": siblings}, {}

    def _tree(self, req: Request, repo_id: str, rev: str, folder: str) -> Response:
        commit = self._resolve(self._repo(repo_id, req), rev)
        recursive = req.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for path in sorted(p for p in commit.files if p.startswith(prefix)):
            parts = path[len(prefix) :].split("/")
            for i in range(1, len(parts) if recursive else min(len(parts), 2)):  # the folders above it
                d = prefix + "/".join(parts[:i])
                tree_oid = hashlib.sha1(f"{commit.oid}:{d}".encode()).hexdigest()
                entries.setdefault(d, {"type": "directory", "oid": tree_oid, "size": 0, "path": d})
            if recursive or len(parts) == 1:
                data = commit.files[path]
                entries[path] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
        if prefix and not entries:
            raise HubError(404, f"Entry not found: {folder}", "EntryNotFound")
        return 200, list(entries.values()), {}

    def _refs(self, req: Request, repo_id: str) -> Response:
        repo = self._repo(repo_id, req)
        branches = [
            {"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.branches.items()
        ]
        return 200, {"branches": branches, "converts": [], "tags": [], "pullRequests": []}, {}

    def _create_branch(self, req: Request, repo_id: str, branch: str) -> Response:
        req.require_auth()
        repo = self._repo(repo_id, req)
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = self._resolve(repo, req.json().get("startingPoint") or "main").oid
        return 200, {}, {}

    def _preupload(self, req: Request, repo_id: str, rev: str) -> Response:
        """Every file "regular" (see the module docstring), with the oid already stored at its path, which
        lets the client skip unchanged files. The ``gitIgnore`` field is not applied."""
        req.require_auth()
        head = self._resolve(self._repo(repo_id, req), rev, branch_only=True)
        files = []
        for f in req.json()["files"]:
            entry = {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            if f["path"] in head.files:
                entry["oid"] = git_blob_oid(head.files[f["path"]])
            files.append(entry)
        return 200, {"files": files, "commitOid": head.oid}, {}

    def _commit(self, req: Request, repo_id: str, branch: str) -> Response:
        """Apply an NDJSON commit all or nothing: header, file (base64), deletedFile, deletedFolder."""
        req.require_auth()
        repo = self._repo(repo_id, req)
        if req.query.get("create_pr"):
            raise HubError(400, "FakeHub does not implement pull requests (create_pr)")
        head = self._resolve(repo, branch, branch_only=True)
        files, header = dict(head.files), None
        for line in filter(bytes.strip, req.body.splitlines()):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            path = value.get("path", "")
            folder = path.rstrip("/") + "/"
            if key == "header":
                header = value
            elif key == "file":
                files[path] = base64.b64decode(value["content"])
            elif key == "deletedFile" and path in files:
                del files[path]
            elif key == "deletedFolder" and any(p.startswith(folder) for p in files):
                files = {p: d for p, d in files.items() if not p.startswith(folder)}
            elif key in ("deletedFile", "deletedFolder"):
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            else:  # lfsFile cannot come: preupload never says "lfs"
                raise HubError(400, f"FakeHub: unsupported commit operation {key!r}")
        if header is None or not header.get("summary"):
            raise HubError(400, "The commit needs a header with a summary")
        if header.get("parentCommit") not in (None, head.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        commit = self._new_commit(repo, branch, header["summary"], header.get("description", ""), files)
        url = f"{self.endpoint}/{repo_id}/commit/{commit.oid}"
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": ""}, {}

    def _download(self, req: Request, repo_id: str, rev: str, path: str) -> Response:
        """HEAD/GET ``/resolve``: the client needs X-Repo-Commit, an ETag and Content-Length."""
        commit = self._resolve(self._repo(repo_id, req), rev)
        if path not in commit.files:
            raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": commit.oid})
        data = commit.files[path]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(data)}"'}
        return 200, data, headers | {"Content-Type": "application/octet-stream"}


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    """The request body, sized by Content-Length or chunked (httpx streams file-like bodies chunked)."""
    if h.headers.get("Transfer-Encoding", "").lower() != "chunked":
        return h.rfile.read(int(h.headers.get("Content-Length") or 0))
    chunks = []
    while size := int(h.rfile.readline().split(b";")[0].strip() or b"0", 16):
        chunks.append(h.rfile.read(size))
        h.rfile.readline()
    while h.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
        pass
    return b"".join(chunks)


def configure_client(monkeypatch: Any, hub: FakeHub, home: Path, *, with_token: bool = True) -> None:
    """Point huggingface_hub at ``hub``, with its caches and token file under ``home`` (a pytest MonkeyPatch).

    huggingface_hub copies HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE... into ``huggingface_hub.constants`` when it
    is imported, so once imported only the constants count: both are patched, and so is the endpoint of the
    module-level ``HfApi`` behind ``huggingface_hub.create_repo`` & co. HF_TOKEN is read on every call.
    """
    from huggingface_hub import constants, hf_api

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    paths = {"HF_HOME": home, "HF_HUB_CACHE": home / "hub", "HF_XET_CACHE": home / "xet"}
    for name, path in {**paths, "HF_TOKEN_PATH": home / "token"}.items():
        monkeypatch.setenv(name, str(path))
        monkeypatch.setattr(constants, name, str(path))
    patched = {
        "ENDPOINT": hub.endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / "agent_harnesses.json"),  # fetched from the endpoint once
        "HF_HUB_OFFLINE": False,
    }
    for name, value in patched.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(hf_api.api, "endpoint", hub.endpoint)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)  # for subprocesses
    if with_token:
        monkeypatch.setenv("HF_TOKEN", hub.token)


@contextlib.contextmanager
def fake_hub_env(monkeypatch: Any, home: Path, *, token: str = "hf_test_token") -> Iterator[FakeHub]:
    """A running FakeHub with the client pointed at it, HF_TOKEN set, and HF_HOME under ``home``."""
    with FakeHub(token=token) as hub:
        configure_client(monkeypatch, hub, home)
        yield hub
