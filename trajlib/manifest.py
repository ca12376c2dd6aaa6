"""The run manifest: schema, atomic writes, and the error type every reader raises.

A run directory holds ``manifest.json`` and one ``ckpt-<step>.safetensors`` per checkpoint
(DESIGN §5). The manifest is the single source of truth for tensor order, shapes, dtypes,
parameter groups, checkpoint steps (stored as integers, never parsed from names) and run metadata.
Every write goes through :func:`atomic_write`: temp file, fsync, rename, fsync of the directory,
so a crash leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

FORMAT = "trajlib-run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class TrajectoryError(ValueError):
    """Invalid or inconsistent trajectory data; the message names the file, tensor or step."""


def atomic_write(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new content, never a mix.

    ``sync_dir=False`` leaves the directory sync (which makes the rename durable) to the caller,
    who can then sync once for several files.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


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


def write_manifest(run_dir: Path, manifest: dict, entry_json: list[str] | None = None) -> None:
    """Atomically rewrite the manifest. ``entry_json``: the checkpoints already serialised (one
    string per entry, in order), so a long run does not re-encode its whole history each time."""
    if entry_json is None:
        entry_json = [dumps(e) for e in manifest["checkpoints"]]
    head = dumps({k: v for k, v in manifest.items() if k != "checkpoints"})
    text = f'{head[:-1]},"checkpoints":[{",".join(entry_json)}]}}'
    atomic_write(Path(run_dir) / MANIFEST, text.encode())


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """Load and check a run's manifest; raise naming the file on any defect."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest.json; is {run_dir} a trajlib run directory?")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrajectoryError(f"{path}: manifest is not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT:
        raise TrajectoryError(f"{path}: not a trajlib manifest (format={manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise TrajectoryError(
            f"{path}: format version {manifest['format_version']} is newer than this trajlib "
            f"reads ({FORMAT_VERSION}); upgrade trajlib"
        )
    for key in ("tensors", "checkpoints", "groups", "meta"):
        if key not in manifest:
            raise TrajectoryError(f"{path}: manifest lacks the {key!r} entry")
    return manifest
