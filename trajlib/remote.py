"""Safetensors files on an HTTP server (the Hugging Face hub), read by byte ranges.

A :class:`RemoteSafetensors` reads the file's 8-byte length and JSON header, then, for each block
of a Gram pass, exactly the byte range that block needs: nothing is written to disk. Transient
failures (a dropped connection, a short body, HTTP 429 or 5xx) are retried with exponential
backoff, honouring ``Retry-After``; a server that ignores ``Range`` or answers another range is
refused. :meth:`RemoteSafetensors.verify` streams the whole file once through sha256 (in
memory, counted apart as ``bytes_verified``): a file whose bytes do not hash to its LFS sha256
is named and never used; skipping verification halves the traffic of a pass.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import PurePosixPath
from urllib.parse import quote

from .formats import SafetensorsFile, ShardedCheckpoint
from .manifest import TrajectoryError

log = logging.getLogger("trajlib.remote")

TRANSIENT = (429, 500, 502, 503, 504)


class RangeClient:
    """HTTP GETs of byte ranges through a ``requests``/``httpx``-like session, with retries.

    ``bytes_read``: body bytes received by range reads (what a pass cost); ``bytes_verified``:
    bytes streamed to check sha256s."""

    def __init__(self, session=None, *, headers: dict | None = None, retries: int = 6, backoff: float = 0.5,
                 max_wait: float = 60.0):
        if session is None:
            from huggingface_hub import get_session
            from huggingface_hub.utils import build_hf_headers

            session, headers = get_session(), {**build_hf_headers(), **(headers or {})}
        self.session, self.headers = session, headers or {}
        self.retries, self.backoff, self.max_wait = retries, backoff, max_wait
        self._retry_after: float | None = None
        self.bytes_read = self.bytes_verified = self.retried = 0
        self._lock = threading.Lock()

    def _get(self, url: str, headers: dict):
        try:
            return self.session.get(url, headers={**self.headers, **headers}, follow_redirects=True)
        except TypeError:  # requests spells it allow_redirects
            return self.session.get(url, headers={**self.headers, **headers}, allow_redirects=True)

    def _wait(self, attempt: int) -> float:
        """Seconds before retry ``attempt``: the server's Retry-After if it sent one, else
        exponential backoff; at most ``max_wait``."""
        wait, self._retry_after = self._retry_after, None
        return min(self.max_wait, wait if wait is not None else self.backoff * 2 ** (attempt - 1))

    def _stream(self, url: str):
        if hasattr(self.session, "stream"):  # httpx
            return self.session.stream("GET", url, headers=self.headers, follow_redirects=True)
        return self.session.get(url, headers=self.headers, stream=True, allow_redirects=True)  # requests

    def read(self, url: str, start: int, n: int, label: str) -> bytes:
        """Bytes ``[start, start + n)`` of ``url``; ``label`` names the file in errors."""
        if n == 0:
            return b""
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                with self._lock:
                    self.retried += 1
                time.sleep(self._wait(attempt))
            try:
                r = self._get(url, {"Range": f"bytes={start}-{start + n - 1}"})
                status = r.status_code
                if status in TRANSIENT:
                    last = f"HTTP {status}"
                    self._retry_after = _seconds(r.headers.get("Retry-After"))
                    continue
                if status == 404:
                    raise TrajectoryError(f"{label}: not found on the server (HTTP 404)")
                if status not in (200, 206):
                    raise TrajectoryError(f"{label}: HTTP {status} reading bytes {start}..{start + n - 1}")
                if status == 200:  # the whole file: the server ignored Range
                    raise TrajectoryError(f"{label}: the server ignores byte ranges (HTTP 200 for bytes "
                                          f"{start}..{start + n - 1}); open it through the local cache instead")
                got = r.headers.get("Content-Range", "")
                if not got.startswith(f"bytes {start}-"):
                    raise TrajectoryError(f"{label}: asked for bytes {start}..{start + n - 1}, the server sent {got!r}")
                data = r.content
                if len(data) != n:
                    last = f"got {len(data)} of {n} bytes"
                    continue
                with self._lock:
                    self.bytes_read += n
                return data
            except TrajectoryError:
                raise
            except Exception as exc:  # the session's transport errors: a dropped connection, a reset
                last = f"{type(exc).__name__}: {exc}"
        raise TrajectoryError(f"{label}: bytes {start}..{start + n - 1} failed after {self.retries + 1} tries ({last})")

    def sha256(self, url: str, label: str) -> str:
        """sha256 of the whole body of ``url``, streamed in 1 MiB chunks (never stored)."""
        last = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._wait(attempt))
            try:
                h, n = hashlib.sha256(), 0
                with self._stream(url) as r:
                    if r.status_code in TRANSIENT:
                        last = f"HTTP {r.status_code}"
                        continue
                    if r.status_code != 200:
                        raise TrajectoryError(f"{label}: HTTP {r.status_code}")
                    chunks = r.iter_bytes(1 << 20) if hasattr(r, "iter_bytes") else r.iter_content(1 << 20)
                    for chunk in chunks:
                        h.update(chunk)
                        n += len(chunk)
                with self._lock:
                    self.bytes_verified += n
                return h.hexdigest()
            except TrajectoryError:
                raise
            except Exception as exc:
                last = f"{type(exc).__name__}: {exc}"
        raise TrajectoryError(f"{label}: could not be read to verify it ({last})")


def _seconds(value) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to backoff


def resolve_url(endpoint: str, repo_id: str, revision: str, path: str) -> str:
    """The hub's download address of ``path`` at ``revision`` (``{endpoint}/{repo}/resolve/{rev}/{path}``)."""
    return f"{endpoint.rstrip('/')}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"


class RemoteSafetensors(SafetensorsFile):
    """One safetensors file at ``url`` of ``size`` bytes, read by ranges through ``client``.

    ``path`` is a label (``repo@revision/file``) for errors; ``sha256``: the LFS hash the hub lists."""

    def __init__(self, url: str, *, size: int, client: RangeClient, label: str, sha256: str | None = None):
        self._fd = None
        self.url, self.size, self.client, self.sha256 = url, size, client, sha256
        self.path = PurePosixPath(label)
        self._parse_header(size, lambda offset, n: client.read(url, offset, n, label))

    def read(self, name, start, stop, out):
        item = out.dtype.itemsize
        data = self.client.read(self.url, self.data_start + self.offsets[name] + start * item,
                                (stop - start) * item, str(self.path))
        memoryview(out).cast("B")[:] = data

    def verify(self) -> None:
        """Stream the file and compare it with its LFS sha256; a mismatch names the file."""
        if self.sha256 is None:
            return
        got = self.client.sha256(self.url, str(self.path))
        if got != self.sha256:
            raise TrajectoryError(f"{self.path}: its bytes hash to {got[:12]}…, the hub's LFS sha256 is "
                                  f"{self.sha256[:12]}… (corrupt blob): not used")

    def content_sha256(self) -> str:
        return self.sha256 or super().content_sha256()

    def identity(self) -> str:
        return f"{self.url}|{self.size}|{self.sha256}"

    def close(self):
        pass


def remote_checkpoint(endpoint: str, repo_id: str, revision: str, files: list, client: RangeClient, *,
                      index: dict | None = None, verify: bool = True):
    """The reader of one hub revision's safetensors weights: ``files`` are its weight files
    (``FileMeta``); ``index``: the parsed ``model.safetensors.index.json`` for a sharded one."""
    by_name = {f.path: f for f in files}

    def one(path: str) -> RemoteSafetensors:
        meta = by_name.get(path)
        if meta is None:
            raise TrajectoryError(f"{repo_id}@{revision}: the index names {path}, which the branch lacks")
        reader = RemoteSafetensors(resolve_url(endpoint, repo_id, revision, path), size=meta.size, client=client,
                                   label=f"{repo_id}@{revision}/{path}", sha256=meta.sha256)
        if verify:
            reader.verify()
        return reader

    if index is None:
        return one("model.safetensors")
    return ShardedCheckpoint(f"{repo_id}@{revision}/model.safetensors.index.json", weight_map=index["weight_map"],
                             open_shard=one)
