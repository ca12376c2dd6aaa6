"""A small Hugging Face hub on 127.0.0.1 for tests: the refs, tree and resolve endpoints the real
``huggingface_hub`` client calls, with LFS metadata, byte ranges, and injectable faults (a blob
whose bytes differ from its listed sha256, a connection dropped in the middle of a range, 503s)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin")


class FakeHub:
    """``repos[repo][branch][path] = bytes``. ``corrupt``: {(repo, branch, path)} served with one
    byte flipped (their listed sha256 stays the true one); ``drop_ranges``: how many range
    requests to cut off half-way before answering in full; ``busy``: how many requests to answer
    503. ``requests``: (method, path, Range header) of each request; ``range_bytes``: body bytes
    sent for range requests."""

    def __init__(self):
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.corrupt: set[tuple[str, str, str]] = set()
        self.drop_ranges = 0
        self.busy = 0
        self.requests: list[tuple[str, str, str | None]] = []
        self.range_bytes = 0
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                hub._handle(self)

            def do_HEAD(self):
                hub._handle(self, head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    # -- answers ------------------------------------------------------------------------------
    def _json(self, h, obj, status=200):
        body = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _handle(self, h, head=False):
        url = urlparse(h.path)
        path = unquote(url.path)
        rng = h.headers.get("Range")
        with self._lock:
            self.requests.append((h.command, path, rng))
            busy = self.busy > 0
            self.busy -= busy
        if busy:
            return self._json(h, {"error": "busy"}, 503)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/refs", path):
            repo = self.repos.get(m[1])
            if repo is None:
                return self._json(h, {"error": "Repository not found"}, 404)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": hashlib.sha1(b.encode()).hexdigest()}
                        for b in repo]
            return self._json(h, {"branches": branches, "converts": [], "tags": []})
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
            files = self.repos.get(m[1], {}).get(m[2])
            if files is None:
                return self._json(h, {"error": "Revision not found"}, 404)
            out = []
            for p, data in sorted(files.items()):
                entry = {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": p}
                if p.endswith(LFS_SUFFIXES):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                out.append(entry)
            return self._json(h, out)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo, branch, p = m[1], m[2], m[3]
            data = self.repos.get(repo, {}).get(branch, {}).get(p)
            if data is None:
                return self._json(h, {"error": "Entry not found"}, 404)
            if (repo, branch, p) in self.corrupt:
                data = data[:-1] + bytes([data[-1] ^ 0xFF])
            return self._send_file(h, data, rng, head, commit=hashlib.sha1(branch.encode()).hexdigest())
        return self._json(h, {"error": f"no such endpoint {path}"}, 404)

    def _send_file(self, h, data: bytes, rng: str | None, head: bool, commit: str):
        status, body = 200, data
        if rng:
            a, b = re.fullmatch(r"bytes=(\d+)-(\d*)", rng).groups()
            a, b = int(a), (int(b) if b else len(data) - 1)
            status, body = 206, data[a:b + 1]
        h.send_response(status)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("X-Repo-Commit", commit)
        h.send_header("X-Linked-Etag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("X-Linked-Size", str(len(data)))
        if status == 206:
            h.send_header("Content-Range", f"bytes {a}-{a + len(body) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        with self._lock:
            drop = rng is not None and self.drop_ranges > 0 and len(body) > 16
            self.drop_ranges -= drop
            if rng is not None and not drop:
                self.range_bytes += len(body)
        if drop:  # half the body, then the connection goes away
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(body)
