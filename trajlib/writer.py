"""The background checkpoint writer: pooled snapshots, group commit, one writer per run directory.

A model's recorded tensors never change name, shape or dtype, so the safetensors header of every
checkpoint is the same bytes: :class:`SnapshotLayout` builds it once. A snapshot is one
``torch._foreach_copy_`` into a pooled flat buffer on the training thread; writing it is two
``write`` calls and one sha256 on the writer thread, with no per-tensor work. Tensors are laid
out by decreasing item size so every one is naturally aligned with no gaps. The header carries no
step or time, so equal weights give byte-identical files.

:class:`CheckpointWriter` owns the thread, which runs at nice 10 so that writing yields to training. Each file is written to a temporary name created
exclusively (``O_EXCL | O_NOFOLLOW``: a planted file or symlink is never followed) and renamed
into place; the manifest is replaced (appended to) once per group of checkpoints (group commit) and lists a
file only once its data and its rename are durable, under the durability policy ``fsync``
(:data:`FSYNC_POLICIES`):

* ``"interval"`` (default): the files of a group are written without waiting for the disk, then
  fsynced together at the group's commit (one journal commit for the group on ext4-like file
  systems, where N fsyncs spread over the group cost N), then the directory, then the manifest.
* ``"always"``: each file is fsynced before its rename and committed on its own.
* ``"never"``: no fsync of checkpoint files (the manifest is still written atomically): after a
  machine crash the manifest may list a file whose data was lost; ``open_trajectory`` reports it.

A write error commits every checkpoint completed before it, returns the failed snapshots'
buffers to the pool (training never hangs), and is raised on the training thread naming the
steps that were not saved.

:class:`RunLock` is an OS lock (``flock``) on ``<run>/.lock`` held for a Recorder's lifetime: a
second writer fails naming the holder's pid; the kernel drops the lock when its process dies, so
a kill never blocks a resume.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import secrets
import threading
import time
from pathlib import Path
from typing import Callable

import torch

from .formats import dtype_code, safetensors_prefix
from .manifest import TrajectoryError, fsync_dir

log = logging.getLogger("trajlib.writer")

FSYNC_POLICIES = ("interval", "always", "never")


def fsync_policy(fsync: str | bool) -> str:
    """The policy name of ``fsync`` (True/False: the older booleans, "always"/"never")."""
    if fsync is True or fsync is False:
        return "always" if fsync else "never"
    if fsync not in FSYNC_POLICIES:
        raise ValueError(f"fsync={fsync!r}: expected one of {', '.join(map(repr, FSYNC_POLICIES))}")
    return fsync


def fsync_file(path: Path) -> None:
    """fsync a file that is already in place (opened read-only, never following a symlink)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SnapshotLayout:
    """Fixed layout of ``tensors`` (name → live tensor, in manifest order) in one flat buffer."""

    def __init__(self, tensors: dict[str, torch.Tensor], *, max_buffers: int = 4):
        self.names = list(tensors)
        self.live = [t.detach() for t in tensors.values()]
        order = sorted(range(len(self.live)), key=lambda i: -self.live[i].element_size())
        header, offset, self._spans = {}, 0, [None] * len(self.live)
        for i in order:
            t = self.live[i]
            n = t.numel() * t.element_size()
            header[self.names[i]] = {"dtype": dtype_code(t.dtype), "shape": list(t.shape),
                                     "data_offsets": [offset, offset + n]}
            self._spans[i] = (offset, offset + n)
            offset += n
        self.prefix = safetensors_prefix(header)
        self.data_bytes = offset
        self.file_bytes = len(self.prefix) + offset
        self._free: queue.Queue = queue.Queue()
        self._made, self.max_buffers = 0, max(2, max_buffers)
        self._views_of: dict[int, list[torch.Tensor]] = {}  # buffer address → its tensor views

    def _views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        # made once per pooled buffer: building ~3 views per tensor costs more than the copy itself
        views = self._views_of.get(buf.data_ptr())
        if views is None:
            views = [buf[a:b].view(t.dtype).view(t.shape) for (a, b), t in zip(self._spans, self.live)]
            self._views_of[buf.data_ptr()] = views
        return views

    def take(self) -> torch.Tensor:
        """A snapshot of the live tensors now, as a flat uint8 buffer.

        Blocks when all ``max_buffers`` buffers are waiting to be written (backpressure)."""
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            if self._made < self.max_buffers:
                self._made += 1
                buf = torch.empty(self.data_bytes, dtype=torch.uint8)
            else:
                buf = self._free.get()
        with torch.no_grad():
            torch._foreach_copy_(self._views(buf), self.live)
        return buf

    def give_back(self, buf: torch.Tensor) -> None:
        self._free.put(buf)

    def write(self, path: Path, buf: torch.Tensor, *, fsync: bool = True) -> str:
        """Create ``path`` exclusively and write one snapshot into it (no rename); returns the
        sha256 of the data section (``content_sha256``: the tensor bytes alone)."""
        data = memoryview(buf.numpy()).cast("B")
        digest = hashlib.sha256(data).hexdigest()
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o644)
        try:  # few system calls: each one hands the GIL back and forth with the training thread
            written = os.writev(fd, [self.prefix, data])
            whole = memoryview(self.prefix + bytes(data)) if written < self.file_bytes else None
            while written < self.file_bytes:  # a short write: go on until the OS says why (ENOSPC)
                n = os.write(fd, whole[written:])
                if n == 0:
                    raise OSError(errno.EIO, f"short write ({written} of {self.file_bytes} bytes)", str(path))
                written += n
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return digest


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock`` for the lifetime of one writer."""

    NAME = ".lock"

    def __init__(self, run_dir: Path):
        import fcntl

        self.path = Path(run_dir) / self.NAME
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise TrajectoryError(f"{self.path}: cannot open the run's lock file ({exc})") from exc
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise TrajectoryError(f"{run_dir}: another Recorder (pid {holder}) is writing this run; "
                                  f"one writer per run directory") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


class CheckpointWriter:
    """Writes snapshots on a background thread and commits them to the manifest in groups.

    ``commit(entries)`` is called on the writer thread with the entries whose files are in
    place, after their data is durable (policy ``fsync``, see the module docstring), in step
    order within a group; it makes the renames durable and lists them. ``flush_interval`` bounds
    the seconds between commits during a long backlog.
    """

    def __init__(self, run_dir: Path, layout: SnapshotLayout, commit: Callable[[list[dict]], None], *,
                 flush_interval: float = 0.2, fsync: str | bool = "interval"):
        self.run_dir, self.layout, self._commit = Path(run_dir), layout, commit
        self.flush_interval, self.fsync = flush_interval, fsync_policy(fsync)
        self._queue: queue.Queue = queue.Queue()  # memory is bounded by the snapshot buffer pool
        self._failed: list[tuple[int, BaseException]] = []
        self._failed_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="trajlib-writer", daemon=True)
        self._thread.start()

    def put(self, batch: list[tuple[dict, torch.Tensor]]) -> None:
        self._queue.put(batch)

    def _run(self) -> None:
        try:  # Linux applies this to the calling thread only: training keeps the cores it needs
            # (not SCHED_IDLE: other busy processes then starve the writer and the pool's
            # backpressure stalls training for seconds)
            os.setpriority(os.PRIO_PROCESS, 0, 10)
        except (AttributeError, OSError):
            pass
        while True:
            batches = [self._queue.get()]
            while not self._queue.empty():
                batches.append(self._queue.get_nowait())
            items = [item for b in batches if b is not None for item in b]
            try:
                if items:
                    self._write(items)
            finally:
                for _ in batches:
                    self._queue.task_done()
            if any(b is None for b in batches):
                return

    def _write(self, items: list[tuple[dict, torch.Tensor]]) -> None:
        """Write every item; commit what is complete every ``flush_interval`` s, at the end, and
        before reporting a failure, so an error never discards a finished checkpoint. A buffer
        returns to the pool only once its checkpoint is committed (or has failed), so the
        snapshots a kill can lose are bounded by the pool."""
        done, held, t0 = [], [], time.monotonic()
        for k, (entry, buf) in enumerate(items):
            step = entry["step"]
            fname = f"ckpt-{step:09d}.safetensors"
            tmp = self.run_dir / f".{fname}.{secrets.token_hex(4)}.tmp"
            try:
                sha = self.layout.write(tmp, buf, fsync=self.fsync == "always")
                os.replace(tmp, self.run_dir / fname)
                entry.update(file=fname, bytes=self.layout.file_bytes, content_sha256=sha)
                done.append(entry)
                held.append(buf)
            except BaseException as exc:
                with self._failed_lock:
                    self._failed.append((step, exc))
                _unlink_quietly(tmp)
                self.layout.give_back(buf)
            if done and (k == len(items) - 1 or self.fsync == "always"
                         or time.monotonic() - t0 >= self.flush_interval):
                self._sync_and_commit(done)
                for b in held:
                    self.layout.give_back(b)
                done, held, t0 = [], [], time.monotonic()

    def _sync_and_commit(self, done: list[dict]) -> None:
        """fsync the group's files (policy "interval"), then hand them to ``commit``. When the
        manifest does not fit on a full disk, the group's newest files are deleted one at a time
        until it does, so the checkpoints finished first stay listed. Any other failure names
        every step of the group and deletes their files (unlisted, so not saved)."""
        try:
            if self.fsync == "interval":
                for entry in done:
                    fsync_file(self.run_dir / entry["file"])
            while True:
                try:
                    self._commit(done)
                    break
                except OSError as exc:  # a full disk: free the group's newest file and list the rest
                    if exc.errno != errno.ENOSPC or len(done) == 1:
                        raise
                    last = done.pop()
                    _unlink_quietly(self.run_dir / last["file"])
                    with self._failed_lock:
                        self._failed.append((last["step"], exc))
        except BaseException as exc:
            with self._failed_lock:
                self._failed += [(e["step"], exc) for e in done]
            for e in done:
                _unlink_quietly(self.run_dir / e["file"])

    def raise_failures(self) -> None:
        """Raise (once) a TrajectoryError naming every step whose checkpoint was not saved."""
        with self._failed_lock:
            failed, self._failed = self._failed, []
        if failed:
            steps = ", ".join(str(s) for s, _ in failed)
            raise TrajectoryError(f"{self.run_dir}: checkpoint(s) of step {steps} not saved: "
                                  f"{failed[0][1]}") from failed[0][1]

    def join(self) -> None:
        """Block until every batch put so far has been written or has failed."""
        self._queue.join()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_leftovers(run_dir: Path, listed: set[str]) -> list[str]:
    """Delete temporary files and checkpoint files the manifest does not list (what a killed
    writer leaves behind); returns their names. Called under the run's lock."""
    removed = []
    for path in Path(run_dir).iterdir():
        name = path.name
        stray_tmp = name.startswith((".ckpt-", ".manifest.json.")) and name.endswith(".tmp")
        unlisted = name.startswith("ckpt-") and name.endswith(".safetensors") and name not in listed
        if (stray_tmp or unlisted) and (path.is_file() or path.is_symlink()):
            _unlink_quietly(path)
            removed.append(name)
    if removed:
        fsync_dir(run_dir)
    return sorted(removed)
