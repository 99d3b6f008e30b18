"""A tiny Hugging Face Hub look-alike on 127.0.0.1 for tests.

It serves what ``huggingface_hub.hf_hub_download`` asks for:
HEAD and GET ``/{repo_id}/resolve/{revision}/{filename}``, answering with the headers the
client reads (``X-Repo-Commit``, ``ETag``; for LFS files ``X-Linked-Etag`` = sha256 and
``X-Linked-Size``; ``Content-Length``) and Hub error codes (``X-Error-Code``:
RepoNotFound, RevisionNotFound, EntryNotFound). Every request is logged, so tests can
count transfers. ``corrupt`` makes GETs of LFS files send other bytes of the same length (the
safetensors header intact, the last tensor bytes flipped).
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

LFS_SUFFIXES = (".safetensors", ".bin", ".pth")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Revision:
    commit: str                      # 40 hex digits
    files: dict[str, bytes]


@dataclass
class FakeHub:
    """Repositories: repo_id -> {revision name or commit: Revision}."""

    repos: dict[str, dict[str, Revision]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)   # (method, path, authorization)
    corrupt: bool = False
    url: str = ""

    def add(self, repo_id: str, commit: str, folder: Path | dict, branches=("main",)) -> None:
        if not isinstance(folder, dict):
            folder = {p.name: p.read_bytes() for p in Path(folder).iterdir() if p.is_file()}
        files = folder
        rev = Revision(commit, files)
        refs = self.repos.setdefault(repo_id, {})
        refs[commit] = rev
        for b in branches:
            refs[b] = rev

    @property
    def file_requests(self) -> list[tuple[str, str, str | None]]:
        """Requests for repository files (huggingface_hub also fetches a few /api/ registries)."""
        return [r for r in self.requests if "/resolve/" in r[1]]

    def count(self, method: str) -> int:
        """Requests for repository files with ``method`` (GET = a transfer)."""
        return sum(1 for m, _, _ in self.file_requests if m == method)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FakeHub":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._serve(self, body=False)

            def do_GET(self):
                hub._serve(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------ answers
    def _error(self, h, code: int, error_code: str, commit: str | None = None) -> None:
        h.send_response(code)
        h.send_header("X-Error-Code", error_code)
        h.send_header("X-Error-Message", error_code)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(h.path.split("?", 1)[0])
        self.requests.append((h.command, path, h.headers.get("authorization")))
        parts = path.strip("/").split("/")
        if "resolve" not in parts:
            return self._error(h, 404, "EntryNotFound")
        i = parts.index("resolve")
        repo_id, revision, filename = "/".join(parts[:i]), parts[i + 1], "/".join(parts[i + 2:])
        if repo_id not in self.repos:
            return self._error(h, 404, "RepoNotFound")
        rev = self.repos[repo_id].get(revision)
        if rev is None:
            return self._error(h, 404, "RevisionNotFound")
        if filename not in rev.files:
            return self._error(h, 404, "EntryNotFound", rev.commit)
        data = rev.files[filename]
        lfs = filename.endswith(LFS_SUFFIXES)
        h.send_response(200)
        h.send_header("X-Repo-Commit", rev.commit)
        if lfs:
            sha = hashlib.sha256(data).hexdigest()
            h.send_header("ETag", f'"{sha}"')
            h.send_header("X-Linked-Etag", f'"{sha}"')
            h.send_header("X-Linked-Size", str(len(data)))
        else:
            h.send_header("ETag", f'"{git_blob_sha1(data)}"')
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if body:
            if self.corrupt and lfs:
                data = data[:-64] + bytes(b ^ 0xFF for b in data[-64:])   # header intact, tensor bytes wrong
            h.wfile.write(data)
