"""One ``torch.distributed.checkpoint`` (DCP) save, read in place: the checkpoint directory of
FSDP, torchtitan and other distributed trainers (a ``.metadata`` file and one ``.distcp`` file per
rank that wrote).

Names, shapes and dtypes come from the metadata alone. A read loads one tensor through DCP's own
reader, planning only that tensor (the ranges of each rank's file that hold its chunks, which DCP
assembles whatever the sharding was); the last tensor loaded is kept for the next range of it.
The model's tensors are those under ``model.`` when the save nests a model beside an optimizer
(torchtitan, ``{"model": ..., "optimizer": ...}``), else every tensor outside ``optimizer.``.
Loaded tensors are kept in one cache shared by every checkpoint, bounded in bytes
(:data:`CACHE_BYTES`), so a pass that reads a tensor block by block loads it once per checkpoint
while the cache holds it.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .formats import CheckpointReader, dtype_code, torch_dtype
from .manifest import TrajectoryError
from .state_dicts import strip_wrappers

METADATA = ".metadata"
CACHE_BYTES = 1 << 30  # loaded tensors kept across all DCP checkpoints of a process

_cache: "OrderedDict[tuple[str, str], object]" = OrderedDict()
_cache_lock = threading.Lock()


def _cached(key, load):
    """``load()``'s tensor for ``key``, through the shared least-recently-used cache."""
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    tensor = load()
    with _cache_lock:
        _cache[key] = tensor
        size = sum(t.numel() * t.element_size() for t in _cache.values())
        while size > CACHE_BYTES and len(_cache) > 1:
            _, old = _cache.popitem(last=False)
            size -= old.numel() * old.element_size()
    return tensor


def is_dcp_dir(path: Path) -> bool:
    return (path / METADATA).is_file()


class DCPCheckpoint(CheckpointReader):
    """A DCP checkpoint directory as a :class:`~trajlib.formats.CheckpointReader`.

    ``prefix``: keep only tensors whose key starts with it, stripped (default: ``"model."`` when
    the save holds ``model.`` and ``optimizer.`` keys, else ``""``); wrapper prefixes (``_orig_mod.``, ``module.``) are stripped too.
    Every storage file the kept tensors need must exist and be long enough (checked on open).
    """

    def __init__(self, directory: str | Path, *, prefix: str | None = None):
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = Path(directory)
        if not is_dcp_dir(self.path):
            raise FileNotFoundError(f"{self.path}: no {METADATA} (not a torch.distributed.checkpoint directory)")
        try:
            metadata = FileSystemReader(str(self.path)).read_metadata()
        except Exception as exc:
            raise TrajectoryError(f"{self.path / METADATA}: unreadable DCP metadata ({exc})") from exc
        tensors = {k: m for k, m in metadata.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}
        if prefix is None:  # {"model": ..., "optimizer": ...} saves (torchtitan); a bare state dict keeps every key
            nested = any(k.startswith("model.") for k in tensors) and any(k.startswith("optimizer.") for k in tensors)
            prefix = "model." if nested else ""
        self._fqn: dict[str, str] = {}
        self.shapes, self.dtypes = {}, {}
        for fqn, m in tensors.items():
            if not fqn.startswith(prefix) or fqn.startswith("optimizer."):
                continue
            name = strip_wrappers(fqn[len(prefix):])
            if name in self._fqn:
                raise TrajectoryError(f"{self.path}: keys {self._fqn[name]!r} and {fqn!r} both name tensor {name!r}")
            self._fqn[name] = fqn
            self.shapes[name] = tuple(int(d) for d in m.size)
            self.dtypes[name] = dtype_code(m.properties.dtype)
        if not self._fqn:
            raise TrajectoryError(f"{self.path}: no tensor under {prefix!r} in this DCP checkpoint")
        self.names = list(self._fqn)
        self._files = self._check_storage(metadata)

    def _check_storage(self, metadata) -> dict[str, list[Path]]:
        """{name: the storage files holding its chunks}; a missing or short file is named."""
        wanted = {fqn: name for name, fqn in self._fqn.items()}
        files, sizes = {}, {}
        for index, info in metadata.storage_data.items():
            name = wanted.get(index.fqn)
            if name is None:
                continue
            f = self.path / info.relative_path
            if f not in sizes:
                if not f.is_file():
                    raise TrajectoryError(f"{f}: storage file of tensor {index.fqn!r} is missing")
                sizes[f] = f.stat().st_size
            if info.offset + info.length > sizes[f]:
                raise TrajectoryError(f"{f}: truncated: tensor {index.fqn!r} needs bytes up to "
                                      f"{info.offset + info.length}, the file has {sizes[f]}")
            if f not in files.setdefault(name, []):
                files[name].append(f)
        return files

    def file_of(self, name: str) -> Path:
        files = self._files.get(name)
        return files[0] if files and len(files) == 1 else self.path

    def identity(self) -> str:
        """The metadata file and every storage file: path, size, modification time."""
        files = [self.path / METADATA] + sorted({f for fs in self._files.values() for f in fs})
        return "+".join(f"{f}|{f.stat().st_size}|{f.stat().st_mtime_ns}" for f in files)

    def _load(self, name: str):
        import torch
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemReader

        def load():
            out = torch.empty(self.shapes[name], dtype=torch_dtype(self.dtypes[name]))
            try:
                with warnings.catch_warnings():  # single-process reading is the intent here
                    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                    dcp.load({self._fqn[name]: out}, storage_reader=FileSystemReader(str(self.path)), no_dist=True)
            except Exception as exc:
                raise TrajectoryError(f"{self.file_of(name)}: cannot read tensor {self._fqn[name]!r} ({exc})") from exc
            return out

        return _cached((str(self.path), name), load)

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        import torch

        flat = self._load(name).reshape(-1)[start:stop]
        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        out[...] = flat.numpy().view(out.dtype)

