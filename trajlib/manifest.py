"""The run manifest: schema, atomic writes, and the error type every reader raises.

A run directory holds ``manifest.json`` and one ``ckpt-<step>.safetensors`` per checkpoint.
The manifest is the single source of truth for tensor order, shapes, dtypes,
parameter groups, checkpoint steps (stored as integers, never parsed from names) and run metadata.
Every write goes through :func:`atomic_write` (:func:`atomic_file` for a file written in pieces):
temp file, fsync, rename, fsync of the directory, so a crash leaves either the old or the new
file, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator, NamedTuple

FORMAT = "trajlib-run"
FORMAT_VERSION = 2  # 2: content_sha256 is the hash of the data section; no whole-file sha256
MANIFEST = "manifest.json"


class TrajectoryError(ValueError):
    """Invalid or inconsistent trajectory data; the message names the file, tensor or step."""


@contextlib.contextmanager
def atomic_file(path: Path, *, sync_dir: bool = True) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``path`` atomically when the block exits cleanly.

    The file is a temporary created exclusively beside ``path`` (``mkstemp``: ``O_EXCL``, mode
    0600, never following a planted name); on success it is flushed, fsynced and renamed onto
    ``path``; on any error it is removed and ``path`` is untouched. Large outputs (the PCA
    directions of ``trajlib.pca``) are written through it piece by piece (``os.pwrite`` on
    ``f.fileno()`` after ``f.flush()``), so no whole copy is ever held in memory.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix.

    ``sync_dir=False`` leaves the directory sync (which makes the rename durable) to the caller,
    who can then sync once for several files.
    """
    with atomic_file(path, sync_dir=sync_dir) as f:
        f.write(data)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (no-op where directories cannot be opened)."""
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def new_manifest(tensors: list[dict], groups: dict[str, list[str]], meta: dict) -> dict:
    """A manifest with no checkpoints yet.

    ``tensors``: ordered ``[{"name", "shape", "dtype", "kind"}]`` (kind: parameter or buffer);
    ``groups``: named lists of tensor names recorded from the model (e.g. ``bn``).
    """
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tensors": tensors,
        "groups": groups,
        "meta": meta,
        "checkpoints": [],
    }


def dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def write_manifest(run_dir: Path, manifest: dict, entry_json: list[str] | None = None, *,
                   sync_dir: bool = True) -> "ManifestStamp | None":
    """Atomically rewrite the manifest; returns the new file's :class:`ManifestStamp` (None if
    it cannot be read back). ``entry_json``: the checkpoints already serialised (one string per
    entry, in order). The checkpoint list is the last key, so :func:`append_checkpoints` can
    extend the file without parsing it. ``sync_dir``: as for :func:`atomic_write`."""
    if entry_json is None:
        entry_json = [dumps(e) for e in manifest["checkpoints"]]
    head = dumps({k: v for k, v in manifest.items() if k != "checkpoints"})
    path = Path(run_dir) / MANIFEST
    atomic_write(path, f'{head[:-1]},"checkpoints":[{",".join(entry_json)}]}}'.encode(), sync_dir=sync_dir)
    return ManifestStamp.read(path)


class ManifestStamp(NamedTuple):
    """What identifies the manifest a writer wrote: device, inode, size, and the modification and
    status-change times (ns), read after its rename."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> "ManifestStamp":
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @classmethod
    def read(cls, path: Path) -> "ManifestStamp | None":
        """The stamp of ``path`` (not following a symlink), or None: the next commit then
        rewrites the manifest whole. Never raises: the file is already in place."""
        try:
            return cls.of(os.lstat(path))
        except OSError:
            return None


class StaleManifest(Exception):
    """The manifest on disk is not the one :func:`append_checkpoints` was told about."""


def append_checkpoints(run_dir: Path, stamp: ManifestStamp, entry_json: list[str], *,
                       sync_dir: bool = True) -> ManifestStamp | None:
    """Atomically replace the manifest by one that also lists ``entry_json`` (serialised entries
    whose steps follow the last one listed); returns the new file's stamp (see
    :meth:`ManifestStamp.read`).

    ``stamp`` is that of the manifest as this writer last wrote it (by :func:`write_manifest`
    or this function). The new file is built beside it as :func:`atomic_write` builds one (temp
    file, fsync, rename, directory fsync unless ``sync_dir=False``), but its unchanged bytes are
    copied by the kernel (``copy_file_range``; a shared extent where the file system supports
    reflinks), so Python serialises the new entries only, not the whole history; the bytes
    copied and fsynced still grow with the manifest (24 MB at 100,000 checkpoints) unless the
    file system shares extents. Raises :class:`StaleManifest`, with the manifest untouched, if
    the file is not a regular file with that stamp (replaced, edited, a symlink or a FIFO planted
    there) or the copy does not come out at the expected size; the caller then rewrites it whole."""
    path = Path(run_dir) / MANIFEST
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        src = os.open(path, flags)  # O_NONBLOCK: a FIFO planted there must not block the writer
    except OSError as exc:
        raise StaleManifest(f"{path}: {exc}") from exc
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or ManifestStamp.of(st) != stamp or st.st_size < 3:
            raise StaleManifest(f"{path}: not the manifest this writer wrote (replaced or changed since)")
        end = os.pread(src, 3, st.st_size - 3)
        if end[1:] != b"]}":
            raise StaleManifest(f"{path}: does not end its checkpoint list as this writer does")
        sep = b"" if end[:1] == b"[" else b","
        tail = sep + ",".join(entry_json).encode() + b"]}"
        with atomic_file(path, sync_dir=sync_dir) as f:
            dst = f.fileno()
            try:
                _copy_range(src, dst, st.st_size - 2)
            finally:  # closed before the rename: nothing may fail once the new manifest is in place
                os.close(src)
                src = None
            _pwrite_all(dst, tail, st.st_size - 2)
            size = os.fstat(dst).st_size
            if size != st.st_size - 2 + len(tail):
                raise StaleManifest(f"{path}: the copy came out at {size} bytes, not {st.st_size - 2 + len(tail)}")
    finally:
        if src is not None:
            os.close(src)
    return ManifestStamp.read(path)


def _copy_range(src: int, dst: int, n: int) -> None:
    """Copy bytes [0, n) of ``src`` to the same offsets of ``dst`` inside the kernel."""
    done = 0
    try:
        while done < n:
            k = os.copy_file_range(src, dst, n - done, done, done)
            if k == 0:
                raise OSError(errno.EIO, "copy_file_range copied nothing before the end")
            done += k
        return
    except AttributeError:  # no copy_file_range on this platform
        pass
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EIO):
            raise  # ENOSPC and the like: the caller's problem, the old manifest is untouched
    while done < n:  # copy_file_range refused this file system
        chunk = os.pread(src, min(n - done, 1 << 20), done)
        if not chunk:
            raise OSError(errno.EIO, "the manifest shrank while it was being copied")
        _pwrite_all(dst, chunk, done)
        done += len(chunk)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        k = os.pwrite(fd, view, offset)
        view, offset = view[k:], offset + k


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """Load and check a run's manifest; raise naming the file on any defect."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest.json; is {run_dir} a trajlib run directory?")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrajectoryError(f"{path}: manifest is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        manifest = manifest if isinstance(manifest, dict) else {}
        raise TrajectoryError(f"{path}: not a trajlib manifest (format={manifest.get('format')!r})")
    if type(manifest.get("format_version", 0)) is not int:
        raise TrajectoryError(f"{path}: format_version is {manifest['format_version']!r}, not an integer")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise TrajectoryError(
            f"{path}: format version {manifest['format_version']} is newer than this trajlib "
            f"reads ({FORMAT_VERSION}); upgrade trajlib"
        )
    _check_schema(path, manifest)
    return manifest


def _check_schema(path: Path, manifest) -> None:
    """Raise a TrajectoryError naming the field of the first entry whose type is wrong."""
    def bad(where: str, why: str):
        raise TrajectoryError(f"{path}: {where} {why}")

    for key, kind in (("tensors", list), ("checkpoints", list), ("groups", dict), ("meta", dict)):
        if key not in manifest:
            bad(f"the {key!r} entry", "is missing")
        if not isinstance(manifest[key], kind):
            bad(f"the {key!r} entry", f"is a {type(manifest[key]).__name__}, not a {kind.__name__}")
    for i, t in enumerate(manifest["tensors"]):
        if not isinstance(t, dict):
            bad(f"tensors[{i}]", "is not an object")
        if not isinstance(t.get("name"), str):
            bad(f"tensors[{i}].name", f"is {t.get('name')!r}, not a string")
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            bad(f"tensors[{i}].shape ({t['name']!r})", f"is {shape!r}, not a list of non-negative integers")
        if not isinstance(t.get("dtype"), str) or t.get("kind") not in ("parameter", "buffer"):
            bad(f"tensors[{i}] ({t['name']!r})", "needs a string dtype and kind 'parameter' or 'buffer'")
    for i, c in enumerate(manifest["checkpoints"]):
        if not isinstance(c, dict):
            bad(f"checkpoints[{i}]", "is not an object")
        if type(c.get("step")) is not int:
            bad(f"checkpoints[{i}].step", f"is {c.get('step')!r}, not an integer")
        name = c.get("file")
        if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
            bad(f"checkpoints[{i}].file (step {c['step']})", f"is {name!r}, not a file name inside the run directory")
        if type(c.get("bytes")) is not int or c["bytes"] < 0:
            bad(f"checkpoints[{i}].bytes (step {c['step']})", f"is {c.get('bytes')!r}, not a byte count")
    steps = [c["step"] for c in manifest["checkpoints"]]
    if len(set(steps)) != len(steps):
        dup = sorted(s for s in set(steps) if steps.count(s) > 1)
        bad("checkpoints", f"list step {dup[0]} more than once")
    for g, members in manifest["groups"].items():
        if not isinstance(members, list) or not all(isinstance(n, str) for n in members):
            bad(f"groups[{g!r}]", "is not a list of tensor names")
