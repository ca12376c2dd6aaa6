"""A stand-in Hugging Face hub on 127.0.0.1 and a stand-in suite with the defects public suites
have: the refs, tree and resolve endpoints the real ``huggingface_hub`` client calls, LFS
metadata, byte ranges, and injectable faults (a blob whose bytes differ from its listed sha256,
a connection dropped in the middle of a range, 503s). The suite-audit page and the tests use it;
nothing here leaves the loopback interface."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin")

REPO = "trajlib-standin/tiny-neox"
SCHEDULE = [0, 1, 2, 4, 8, 16, 32, 64, 100, 200, 300]
SHAPES = {"embed.weight": (40, 16), "layers.0.attn.weight": (48, 16), "layers.0.attn.bias": (48,),
          "layers.0.rotary.inv_freq": (4,), "layers.0.mlp.weight": (32, 16), "out.weight": (40, 16)}
# What standin_suite injects, by step: the audit (or, for a corrupt blob, the pass) must catch each.
DEFECTS = {8: "identical to step 300 (as pythia #205)", 16: "missing (no branch)",
           32: "one shard of two (as pythia #206)", 5: "a step off the schedule",
           100: "corrupt blob: bytes differ from the listed LFS sha256"}


def standin_suite():
    """The stand-in suite's registry entry (a :class:`trajlib.suites.Suite`)."""
    from trajlib.suites import Suite

    return Suite("standin", (REPO,), r"step(?P<step>\d+)", lambda: SCHEDULE, tokens_per_step=1024,
                 formats=("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"))


def _walk(seed: int, steps) -> dict[int, dict]:
    """float32 checkpoints of a drifting random walk over SHAPES, by step."""
    import numpy as np

    rng = np.random.default_rng(seed)
    theta = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    drift = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    out, last = {}, 0
    for step in steps:
        for k in theta:
            theta[k] = theta[k] + 0.002 * (step - last) * drift[k] + 0.05 * rng.standard_normal(theta[k].shape)
        last = step
        out[step] = {k: v.astype(np.float32) for k, v in theta.items()}
    return out


def _sharded(tensors: dict) -> dict[str, bytes]:
    from safetensors.numpy import save

    names = list(tensors)
    files, weight_map = {}, {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), 1):
        fname = f"model-{i:05d}-of-00002.safetensors"
        files[fname] = save({n: tensors[n] for n in part})
        weight_map.update({n: fname for n in part})
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    return files


def _bin(tensors: dict) -> bytes:
    import io

    import torch

    buf = io.BytesIO()
    torch.save({n: torch.from_numpy(v.copy()) for n, v in tensors.items()}, buf)
    return buf.getvalue()


def standin_files(seed: int = 0) -> tuple[dict[str, dict[str, bytes]], dict[int, dict]]:
    """({branch: {path: bytes}}, {step: tensors}) of the stand-in suite: single safetensors at most
    steps, a correct sharded save at step 4, ``pytorch_model.bin`` at step 64, a ``main`` branch,
    and the defects of :data:`DEFECTS` (the corrupt blob is the server's: see :class:`FakeHub`)."""
    from safetensors.numpy import save

    walk = _walk(seed, [0, 1, 2, 4, 5, 32, 64, 100, 200, 300])
    files = {}
    for step, tensors in walk.items():
        if step == 4:
            files[f"step{step}"] = _sharded(tensors)
        elif step == 32:
            files[f"step{step}"] = {k: v for k, v in _sharded(tensors).items() if "00002-of" not in k}
        elif step == 64:
            files[f"step{step}"] = {"pytorch_model.bin": _bin(tensors)}
        else:
            files[f"step{step}"] = {"model.safetensors": save(tensors)}
        files[f"step{step}"]["config.json"] = b'{"model_type": "gpt_neox"}'
    files["step8"] = dict(files["step300"])
    files["main"] = dict(files["step300"])
    return files, walk


def serve_standin(seed: int = 0) -> tuple["FakeHub", dict[int, dict]]:
    """A started :class:`FakeHub` serving the stand-in suite (step 100's blob corrupted), and the
    true tensors by step. Stop it with ``hub.__exit__()`` or use it as a context manager."""
    files, walk = standin_files(seed)
    hub = FakeHub()
    hub.repos[REPO] = files
    hub.corrupt.add((REPO, "step100", "model.safetensors"))
    return hub.__enter__(), walk


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
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def api(self):
        """A real ``huggingface_hub.HfApi`` pointed at this server."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.url)

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
