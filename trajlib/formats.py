"""Checkpoint file formats: one dtype table, the safetensors header (read and write), and readers
for one checkpoint on disk: safetensors, sharded safetensors, and ``torch.save`` files
(``pytorch_model.bin``, a loop's ``.pt``, a Lightning ``.ckpt``).

Every reader exposes the same small interface (:class:`CheckpointReader`): ordered tensor names,
shapes, dtypes, and ``read(name, start, stop, out)``, which copies a flat element range of a
tensor into a caller-owned buffer. Safetensors files are parsed directly (8-byte header length,
JSON header, raw data) and read with ``os.preadv``, so streaming a slice never maps or copies the
whole file and the resident memory of a Gram pass stays at its block buffers. ``torch.save`` files load
only through ``torch.load(weights_only=True)``: nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from .manifest import TrajectoryError

# The one dtype table: safetensors code -> (numpy storage dtype, torch dtype name). BF16 is held
# by numpy as its uint16 bit pattern (numpy has no bfloat16); conversion to float happens in torch.
DTYPES = {
    "F64": (np.dtype("<f8"), "float64"), "F32": (np.dtype("<f4"), "float32"),
    "F16": (np.dtype("<f2"), "float16"), "BF16": (np.dtype("<u2"), "bfloat16"),
    "I64": (np.dtype("<i8"), "int64"), "I32": (np.dtype("<i4"), "int32"),
    "I16": (np.dtype("<i2"), "int16"), "I8": (np.dtype("i1"), "int8"),
    "U8": (np.dtype("u1"), "uint8"), "BOOL": (np.dtype("?"), "bool"),
}
ST_DTYPES = {code: np_dtype for code, (np_dtype, _) in DTYPES.items()}  # code -> numpy storage dtype
FLOAT_CODES = ("F64", "F32", "F16", "BF16")
_CODE_OF_TORCH = {f"torch.{name}": code for code, (_, name) in DTYPES.items()}
_MAX_HEADER = 100 * 2**20


def sha256_file(path: Path, *, offset: int = 0) -> str:
    """sha256 of a file's bytes from ``offset`` on, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def dtype_code(torch_dtype) -> str:
    """The safetensors code ("F32", "BF16", ...) of a torch dtype."""
    try:
        return _CODE_OF_TORCH[str(torch_dtype)]
    except KeyError:
        raise TrajectoryError(f"unsupported tensor dtype {torch_dtype}") from None


def torch_dtype(code: str):
    """The torch dtype of a safetensors code."""
    import torch

    return getattr(torch, DTYPES[code][1])


def to_float64(arr: np.ndarray, code: str) -> np.ndarray:
    """A storage-dtype array (BF16 as uint16 bits) converted to float64."""
    if code == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return arr.astype(np.float64)


def safetensors_prefix(header: dict) -> bytes:
    """The 8-byte length and JSON header of a safetensors file, space-padded so the data that
    follows is 8-byte aligned (the format allows trailing spaces in the header)."""
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head


def _tensor_entry(path: Path, name: str, info) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """(dtype code, shape, (begin, end)) of one header entry, every field checked."""
    def bad(field: str, why: str):
        return TrajectoryError(f"{path}: field {field} of tensor {name!r} {why}")

    if not isinstance(info, dict):
        raise bad("entry", f"is a {type(info).__name__}, not an object")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if code not in ST_DTYPES:
        raise bad("dtype", f"is {code!r}, not one of {', '.join(ST_DTYPES)}")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise bad("shape", f"is {shape!r}, not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(x) is int for x in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise bad("data_offsets", f"is {offsets!r}, not [begin, end] with 0 ≤ begin ≤ end")
    return code, tuple(shape), (offsets[0], offsets[1])


class CheckpointReader:
    """Interface of one checkpoint: ``names`` (ordered), ``shapes``, ``dtypes`` (safetensors codes)."""

    path: Path
    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        """Copy flat elements ``[start, stop)`` of tensor ``name`` into ``out`` (storage dtype)."""
        raise NotImplementedError

    def file_of(self, name: str) -> Path:
        return self.path

    def identity(self) -> str:
        """What names this checkpoint's bytes without reading them: path, size, modification time."""
        st = Path(self.path).stat()
        return f"{self.path}|{st.st_size}|{st.st_mtime_ns}"

    def tensor(self, name: str) -> np.ndarray:
        """The whole tensor as a numpy array of its storage dtype, in its shape."""
        shape = self.shapes[name]
        out = np.empty(int(np.prod(shape, dtype=np.int64)), ST_DTYPES[self.dtypes[name]])
        self.read(name, 0, out.size, out)
        return out.reshape(shape)

    def content_sha256(self) -> str:
        """sha256 of the tensor bytes in storage order (``names``), nothing else: byte-identical
        weights give equal digests. For one safetensors file this is the hash of its data section
        (tensors are contiguous in offset order), which is what ``Recorder`` stores."""
        h = hashlib.sha256()
        for name in self.names:
            h.update(np.ascontiguousarray(self.tensor(name)).tobytes())
        return h.hexdigest()

    def close(self) -> None:
        pass


class SafetensorsFile(CheckpointReader):
    """One ``.safetensors`` file, header validated against the file size on open."""

    def __init__(self, path: str | Path):
        self._fd: int | None = None
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: checkpoint file is missing")
        with open(self.path, "rb") as f:
            self._parse_header(self.path.stat().st_size, lambda offset, n: (f.seek(offset), f.read(n))[1])

    def _parse_header(self, size: int, read_at) -> None:
        """Read and validate the header of a ``size``-byte file through ``read_at(offset, n) → bytes``:
        sets ``metadata``, ``data_start``, ``shapes``, ``dtypes``, ``offsets`` and ``names``."""
        head = read_at(0, 8)
        if len(head) < 8:
            raise TrajectoryError(f"{self.path}: truncated ({size} bytes; no safetensors header)")
        (hlen,) = struct.unpack("<Q", head)
        if hlen > min(size - 8, _MAX_HEADER):
            raise TrajectoryError(
                f"{self.path}: corrupt or truncated safetensors header (declares {hlen} bytes, "
                f"file has {size})"
            )
        try:
            header = json.loads(read_at(8, hlen))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise TrajectoryError(f"{self.path}: corrupt safetensors header ({exc})") from exc
        if not isinstance(header, dict):
            raise TrajectoryError(f"{self.path}: safetensors header is a {type(header).__name__}, not an object")
        metadata = header.pop("__metadata__", None) or {}
        self.metadata = metadata if isinstance(metadata, dict) else {}
        self.data_start = 8 + hlen
        data_size = size - self.data_start
        self.shapes, self.dtypes, self.offsets = {}, {}, {}
        spans = []
        for name, info in header.items():
            code, shape, (begin, end) = _tensor_entry(self.path, name, info)
            expected = math.prod(shape) * ST_DTYPES[code].itemsize  # Python ints: no overflow
            if end - begin != expected:
                raise TrajectoryError(
                    f"{self.path}: tensor {name!r} spans {end - begin} bytes, its shape {list(shape)} "
                    f"and dtype {code} need {expected}"
                )
            if end > data_size:
                raise TrajectoryError(
                    f"{self.path}: truncated: tensor {name!r} ends at byte {self.data_start + end}, "
                    f"the file has {size}"
                )
            self.shapes[name], self.dtypes[name], self.offsets[name] = shape, code, begin
            spans.append((begin, end, name))
        spans.sort()
        edge, prev = 0, None
        for begin, end, name in spans:  # the format allows no overlap and no hole
            if begin != edge:
                what = f"overlaps {prev!r}" if begin < edge else f"leaves a hole of {begin - edge} bytes before it"
                raise TrajectoryError(f"{self.path}: field data_offsets of tensor {name!r}: {what}")
            edge, prev = end, name
        self.names = sorted(self.shapes, key=self.offsets.__getitem__)

    def read(self, name: str, start: int, stop: int, out: np.ndarray) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        item = ST_DTYPES[self.dtypes[name]].itemsize
        nbytes = (stop - start) * item
        got = os.preadv(self._fd, [memoryview(out).cast("B")], self.data_start + self.offsets[name] + start * item)
        if got != nbytes:
            raise TrajectoryError(
                f"{self.path}: truncated while reading tensor {name!r} (got {got} of {nbytes} bytes)"
            )

    def content_sha256(self) -> str:
        """sha256 of the data section: the tensor bytes in offset order (the header validated
        on open leaves no gap between tensors)."""
        return sha256_file(self.path, offset=self.data_start)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


class ShardedCheckpoint(CheckpointReader):
    """A Hugging Face sharded checkpoint: an index JSON whose ``weight_map`` names each tensor's shard."""

    def __init__(self, index_path: str | Path, *, weight_map: dict | None = None, open_shard=None):
        """``weight_map`` (tensor → shard file) and ``open_shard(shard name) → reader`` default to
        the index file's map and the shard files beside it (remote shards pass both)."""
        self.path = Path(index_path)
        if weight_map is None:
            try:
                weight_map = json.loads(self.path.read_text())["weight_map"]
            except (OSError, KeyError, json.JSONDecodeError) as exc:
                raise TrajectoryError(f"{self.path}: unreadable shard index ({exc})") from exc
        open_shard = open_shard or (lambda shard: open_file(self.path.parent / shard))
        self.shards = {}
        for shard in sorted(set(weight_map.values())):
            self.shards[shard] = open_shard(shard)
        self._where = {}
        self.names, self.shapes, self.dtypes = [], {}, {}
        for shard, reader in self.shards.items():
            for name in reader.names:
                self._where[name] = reader
                self.names.append(name)
                self.shapes[name], self.dtypes[name] = reader.shapes[name], reader.dtypes[name]
        missing = sorted(set(weight_map) - set(self._where))
        if missing:
            raise TrajectoryError(f"{self.path}: index lists tensors no shard holds: {missing[:5]}")

    def read(self, name, start, stop, out):
        self._where[name].read(name, start, stop, out)

    def file_of(self, name):
        return self._where[name].path

    def identity(self):
        return "+".join(r.identity() for r in self.shards.values())

    def close(self):
        for reader in self.shards.values():
            reader.close()


class TorchSaveFile(CheckpointReader):
    """A ``torch.save`` checkpoint: ``pytorch_model.bin``, a loop's ``ckpt_{step}.pt``, a nanoGPT
    ``ckpt.pt`` (weights under ``model``), a Lightning ``.ckpt`` (under ``state_dict``).

    Loaded with ``torch.load(weights_only=True)`` only (memory-mapped where the file allows):
    a file whose pickle needs more than tensors and plain containers is refused, named. Names
    lose their wrapper prefixes (``_orig_mod.``, ``module.``) and, with ``prefix``, keep only
    those under it, stripped. Tied tensors (one storage under two names) are read once, under
    the first name: ``aliases`` maps each dropped name to the kept one. ``fields``: the file's
    top-level numbers (``global_step``, ``epoch``, ``iter_num``); optimizer state is never read.
    """

    def __init__(self, path: str | Path, *, prefix: str | None = None):
        import pickle

        import torch

        from .state_dicts import find_weights, shared_aliases, unwrapped

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: checkpoint file is missing")

        def load(**kw):
            return torch.load(self.path, map_location="cpu", weights_only=True, **kw)

        try:
            try:
                obj = load(mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc) and "zip" not in str(exc):
                    raise
                obj = load()  # legacy (non-zip) serialisation cannot be memory-mapped
        except pickle.UnpicklingError as exc:
            raise TrajectoryError(
                f"{self.path}: refused: its pickle needs more than a weights-only load allows ({exc}). "
                f"trajlib never unpickles arbitrary objects; re-save the weights with "
                f"torch.save(model.state_dict(), ...) or as safetensors") from None
        except Exception as exc:
            raise TrajectoryError(f"{self.path}: cannot load as a weights-only state dict "
                                  f"(truncated or not a torch.save file: {exc})") from exc
        try:
            state, self.fields = find_weights(obj, str(self.path))
            state = unwrapped(state, str(self.path))
        except ValueError as exc:
            raise TrajectoryError(str(exc)) from None
        if prefix:
            state = {n[len(prefix):]: t for n, t in state.items() if n.startswith(prefix)}
            if not state:
                raise TrajectoryError(f"{self.path}: no tensor name starts with {prefix!r}")
        self.aliases = shared_aliases(state)
        self._tensors = {k: v for k, v in state.items() if k not in self.aliases}
        self.names = list(self._tensors)
        self.shapes = {k: tuple(v.shape) for k, v in self._tensors.items()}
        self.dtypes = {k: dtype_code(v.dtype) for k, v in self._tensors.items()}

    def read(self, name, start, stop, out):
        import torch

        flat = self._tensors[name].reshape(-1)[start:stop]
        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        out[...] = flat.numpy().view(out.dtype)


TORCH_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def open_file(path: str | Path) -> CheckpointReader:
    """A reader for one checkpoint file, by suffix."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchSaveFile(path)
    if path.name.endswith(".index.json"):
        return ShardedCheckpoint(path)
    raise TrajectoryError(f"{path}: unknown checkpoint format (expected .safetensors, an index, or a torch.save file: .bin .pt .pth .ckpt)")


HF_FILES = (
    "model.safetensors", "model.safetensors.index.json",
    "pytorch_model.bin", "pytorch_model.bin.index.json",
)


def open_checkpoint_dir(directory: str | Path) -> CheckpointReader:
    """A reader for a Hugging Face checkpoint directory, preferring safetensors over ``.bin``."""
    directory = Path(directory)
    for fname in HF_FILES:
        if (directory / fname).exists():
            return open_file(directory / fname)
    raise FileNotFoundError(
        f"{directory}: no checkpoint found (looked for {', '.join(HF_FILES)})"
    )
