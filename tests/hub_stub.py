"""A local stand-in for the Hugging Face hub's file endpoint (``/{repo}/resolve/{revision}/{path}``),
answering as huggingface.co does, for downloads through huggingface_hub's real code path: it
serves folders as repos at one commit each, and the hub's errors (missing, gated, forbidden repo,
unknown revision, missing file) with the headers huggingface_hub reads. It logs what was fetched."""

from __future__ import annotations

import hashlib
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HubStub:
    def __init__(self) -> None:
        self.repos: dict[str, tuple[Path, str]] = {}  # repo id -> (folder, commit)
        self.gated: set[str] = set()
        self.forbidden: set[str] = set()
        self.replaced: dict[tuple[str, str], bytes] = {}  # (repo, path) -> what is served instead of the file
        self.fetched: list[tuple[str, str]] = []  # (repo, path) of every GET that sent a file
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self):  # noqa: N802 (http.server's naming)
                stub.answer(self, body=False)

            def do_GET(self):  # noqa: N802
                stub.answer(self, body=True)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, repo: str, folder: Path, commit: str = "c0ffee" * 6 + "c0ff") -> str:
        self.repos[repo] = (Path(folder), commit)
        return commit

    def answer(self, request: BaseHTTPRequestHandler, body: bool) -> None:
        repo, _, rest = urllib.parse.unquote(request.path.lstrip("/")).partition("/resolve/")
        revision, _, path = rest.partition("/")
        if repo in self.gated:
            return self.error(request, 401, "GatedRepo")
        if repo in self.forbidden:
            return self.error(request, 403, None)
        if repo not in self.repos:
            return self.error(request, 404, "RepoNotFound")
        folder, commit = self.repos[repo]
        if revision not in ("main", commit):
            return self.error(request, 404, "RevisionNotFound")
        file = folder / path
        if not file.is_file():
            return self.error(request, 404, "EntryNotFound")
        data = self.replaced.get((repo, path), file.read_bytes())
        request.send_response(200)
        request.send_header("X-Repo-Commit", commit)
        request.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        if body:
            self.fetched.append((repo, path))
            request.wfile.write(data)

    @staticmethod
    def error(request: BaseHTTPRequestHandler, status: int, code: str | None) -> None:
        request.send_response(status)
        if code:
            request.send_header("X-Error-Code", code)
        request.send_header("Content-Length", "0")
        request.end_headers()

    def stop(self) -> None:
        self.server.shutdown()
