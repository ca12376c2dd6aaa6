"""Snapshots of a model's tensors as one flat buffer with a fixed safetensors header.

A model's recorded tensors never change name, shape or dtype, so the safetensors header of
every checkpoint is the same bytes: :class:`SnapshotLayout` builds it once. A snapshot is then
one ``torch._foreach_copy_`` into a pooled flat buffer on the training thread, and writing it
is two ``write`` calls and one sha256 on the writer thread; no per-tensor work, no JSON, no
fresh allocation per step. Tensors are laid out by decreasing item size so every one is
naturally aligned with no gaps (the format allows no holes). The header carries no step or
time, so equal weights give byte-identical files and the file's sha256 also finds duplicates.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
from pathlib import Path

import torch

from .checkpoint_file import dtype_code
from .manifest import dumps


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
        head = dumps(header).encode()
        head += b" " * (-len(head) % 8)  # the format allows space padding; keeps data 8-byte aligned
        self.prefix = struct.pack("<Q", len(head)) + head
        self.data_bytes = offset
        self.file_bytes = len(self.prefix) + offset
        self._prefix_hash = hashlib.sha256(self.prefix)
        self._free: queue.Queue = queue.Queue()
        self._made, self.max_buffers = 0, max(2, max_buffers)

    def _views(self, buf: torch.Tensor) -> list[torch.Tensor]:
        return [buf[a:b].view(t.dtype).view(t.shape) for (a, b), t in zip(self._spans, self.live)]

    def take(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """A snapshot of the live tensors now: (flat uint8 buffer, per-tensor views into it).

        Blocks when all ``max_buffers`` buffers are waiting to be written (backpressure)."""
        try:
            buf = self._free.get_nowait()
        except queue.Empty:
            if self._made < self.max_buffers:
                self._made += 1
                buf = torch.empty(self.data_bytes, dtype=torch.uint8)
            else:
                buf = self._free.get()
        views = self._views(buf)
        with torch.no_grad():
            torch._foreach_copy_(views, self.live)
        return buf, views

    def give_back(self, buf: torch.Tensor) -> None:
        self._free.put(buf)

    def write(self, path: Path, buf: torch.Tensor) -> str:
        """Write one snapshot to ``path`` and fsync it (no rename); returns the file's sha256."""
        data = memoryview(buf.numpy()).cast("B")
        h = self._prefix_hash.copy()
        h.update(data)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:  # few system calls: each one hands the GIL back and forth with the training thread
            written = os.writev(fd, [self.prefix, data])
            if written != self.file_bytes:
                raise OSError(f"{path}: short write ({written} of {self.file_bytes} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        return h.hexdigest()
