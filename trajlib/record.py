"""Recorder: save parameter checkpoints from any PyTorch training loop into a run directory.

Two or three lines in a loop::

    with Recorder(model, "runs/mine", every=100, optimizer=opt, seed=0) as rec:  # saves θ_0 now
        for step in range(1, n_steps + 1):
            ...                                   # forward, backward, optimizer.step()
            rec.step(step, epoch=epoch)           # saves when the schedule says so

Saving copies the tensors to host memory on the calling thread, then hashes and writes them on
a background thread, so training does not wait on the disk; snapshots waiting in memory are
bounded by ``max_pending_bytes``. Each checkpoint is written durably (temp file, fsync, rename)
before the manifest that lists it, and the manifest is rewritten the same way after each group
of checkpoints (group commit: snapshots reach the writer at most ``flush_interval`` seconds
apart, with one manifest write and one directory sync per group, so recording every step stays
cheap). A crash loses at most the checkpoints in flight: those of the last ``flush_interval``.
Reopening an existing run directory appends to it (resume).
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import re
import threading
import time
from pathlib import Path
from typing import Iterable

import torch

from .checkpoint_file import dtype_code
from .manifest import (
    MANIFEST, TrajectoryError, dumps, fsync_dir, new_manifest, read_manifest, write_manifest,
)
from .snapshot import SnapshotLayout

log = logging.getLogger("trajlib.record")


def log_linear_steps(last_step: int, *, every: int, log_until: int | None = None) -> list[int]:
    """Pythia-like schedule: 0, 1, 2, 4, ... (powers of two below ``log_until``, default
    ``every``), then every ``every`` steps up to ``last_step``."""
    log_until = every if log_until is None else log_until
    steps, k = {0}, 1
    while k < log_until and k <= last_step:
        steps.add(k)
        k *= 2
    steps.update(range(every, last_step + 1, every))
    return sorted(steps)


def _versions() -> dict[str, str]:
    import numpy
    import safetensors

    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "safetensors": safetensors.__version__, "trajlib": __version__}


def _optimizer_meta(optimizer) -> dict | None:
    if optimizer is None:
        return None
    plain = (int, float, str, bool, tuple, list, type(None))
    groups = [{k: v for k, v in g.items() if k != "params" and isinstance(v, plain)} for g in optimizer.param_groups]
    return {"class": type(optimizer).__name__, "param_groups": groups}


class Recorder:
    """Write θ_t of ``model`` to ``run_dir`` on a schedule.

    Schedule: ``steps`` (an explicit iterable, e.g. :func:`log_linear_steps`) or ``every`` N
    steps (default 1). ``include``/``exclude``: regexes searched in parameter names. Buffers
    (BatchNorm running statistics) are recorded only with ``buffers=True``; tied parameters
    once; frozen parameters too. θ_0 is saved at construction (step ``start_step``) unless the
    run already holds checkpoints, in which case the recorder appends.
    """

    def __init__(self, model: torch.nn.Module, run_dir: str | Path, *, every: int | None = None,
                 steps: Iterable[int] | None = None, include: str | None = None,
                 exclude: str | None = None, buffers: bool = False, meta: dict | None = None,
                 optimizer: torch.optim.Optimizer | None = None, seed: int | None = None,
                 start_step: int = 0, flush_interval: float = 0.2, max_pending_bytes: int = 256 << 20):
        if every is not None and steps is not None:
            raise ValueError("give either every= or steps=, not both")
        if every is not None and every < 1:
            raise ValueError(f"every={every}: must be a positive number of steps")
        self.model, self.run_dir = model, Path(run_dir)
        self.every = 1 if every is None and steps is None else every
        self.schedule = None if steps is None else set(int(s) for s in steps)
        self.tensors = self._select(model, include, exclude, buffers)
        if not self.tensors:
            raise ValueError(f"include={include!r}/exclude={exclude!r} select no tensor of "
                             f"{type(model).__name__}")
        self.flush_interval, self.max_pending_bytes = flush_interval, max_pending_bytes
        self._error: BaseException | None = None
        self._entry_json: dict[int, str] = {}
        self._lock = threading.Lock()
        snapshot = sum(t.numel() * t.element_size() for t, _ in self.tensors.values())
        self.layout = SnapshotLayout({n: t for n, (t, _) in self.tensors.items()},
                                     max_buffers=min(512, max_pending_bytes // max(1, snapshot)))
        self._queue: queue.Queue = queue.Queue()  # memory is bounded by the snapshot buffer pool
        self._batch: list = []
        self._handed_off, self._started = time.monotonic(), False
        self._open_or_resume(model, optimizer, seed, meta or {})
        self._known: set[int] = {c["step"] for c in self.manifest["checkpoints"]}
        self._thread = threading.Thread(target=self._writer, name="trajlib-recorder", daemon=True)
        self._thread.start()
        if not self.manifest["checkpoints"]:
            self.save(start_step, epoch=0)

    # -- setup -------------------------------------------------------------------------------
    @staticmethod
    def _select(model, include, exclude, buffers) -> dict[str, tuple[torch.Tensor, str]]:
        items = [(n, p, "parameter") for n, p in model.named_parameters()]
        if buffers:
            items += [(n, b, "buffer") for n, b in model.named_buffers() if b.is_floating_point()]
        keep = {}
        for name, tensor, kind in items:
            if include is not None and not re.search(include, name):
                continue
            if exclude is not None and re.search(exclude, name):
                continue
            keep[name] = (tensor, kind)
        return keep

    def _groups(self, model) -> dict[str, list[str]]:
        bn = []
        for mname, module in model.named_modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                bn += [f"{mname}.{p}" if mname else p for p, _ in module.named_parameters(recurse=False)]
        frozen = [n for n, (t, kind) in self.tensors.items() if kind == "parameter" and not t.requires_grad]
        return {"bn": [n for n in bn if n in self.tensors], "frozen": frozen}

    def _open_or_resume(self, model, optimizer, seed, meta) -> None:
        tensors = [{"name": n, "shape": list(t.shape), "dtype": dtype_code(t.dtype), "kind": kind}
                   for n, (t, kind) in self.tensors.items()]
        if (self.run_dir / MANIFEST).exists():
            self.manifest = read_manifest(self.run_dir)
            if self.manifest["tensors"] != tensors:
                old = {t["name"]: t for t in self.manifest["tensors"]}
                new = {t["name"]: t for t in tensors}
                diff = sorted(set(old) ^ set(new)) or [n for n in new if old[n] != new[n]]
                raise TrajectoryError(
                    f"{self.run_dir / MANIFEST}: cannot resume: the model's tensors differ from the "
                    f"recorded run (first difference: {diff[0]!r})"
                )
            log.info("resuming %s at %d checkpoints", self.run_dir, len(self.manifest["checkpoints"]))
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_meta = {"model": type(model).__name__, "optimizer": _optimizer_meta(optimizer),
                    "seed": seed, "versions": _versions(), "created": time.time(), **meta}
        self.manifest = new_manifest(tensors, self._groups(model), run_meta)
        write_manifest(self.run_dir, self.manifest)

    # -- recording ---------------------------------------------------------------------------
    @property
    def recorded_steps(self) -> list[int]:
        """Steps whose checkpoint is on disk and listed in the manifest."""
        with self._lock:
            return [c["step"] for c in self.manifest["checkpoints"]]

    def due(self, step: int) -> bool:
        """Whether the schedule asks for a checkpoint at ``step``."""
        if self.schedule is not None:
            return step in self.schedule
        return step % self.every == 0

    def step(self, step: int, *, epoch: float | None = None, metrics: dict | None = None) -> bool:
        """Call once per training step; saves if the step is due and not yet recorded."""
        if self._error is not None:
            self._raise_pending()
        if not self.due(step) or step in self._known:
            return False
        self.save(step, epoch=epoch, metrics=metrics)
        return True

    def save(self, step: int, *, epoch: float | None = None, metrics: dict | None = None) -> None:
        """Snapshot the tensors now; they are written in the background.

        Snapshots are handed to the writer in groups, at most ``flush_interval`` seconds apart
        (or sooner when they fill half of ``max_pending_bytes``): one thread wake-up per group
        rather than per step keeps recording off the training loop's critical path.
        """
        self._raise_pending()
        snapshot, _ = self.layout.take()
        entry = {"step": int(step), "epoch": None if epoch is None else float(epoch),
                 "wall_time": time.time(), "metrics": dict(metrics or {})}
        self._known.add(int(step))
        self._batch.append((entry, snapshot))
        now = time.monotonic()
        if (now - self._handed_off >= self.flush_interval or len(self._batch) == 1 and not self._started
                or len(self._batch) >= self.layout.max_buffers // 2):
            self._handoff()

    def _handoff(self) -> None:
        if self._batch:
            batch, self._batch = self._batch, []
            self._queue.put(batch)
        self._handed_off = time.monotonic()
        self._started = True

    def _writer(self) -> None:
        """Group commit: write every queued snapshot, then rewrite the manifest once."""
        try:  # Linux applies this to the calling thread only: training keeps the cores it needs
            os.setpriority(os.PRIO_PROCESS, 0, 10)
        except (AttributeError, OSError):
            pass
        while True:
            batches = [self._queue.get()]
            while not self._queue.empty():
                batches.append(self._queue.get_nowait())
            stop = any(b is None for b in batches)
            items = [item for b in batches if b is not None for item in b]
            try:
                if self._error is None and items:
                    self._write(items)
            except BaseException as exc:  # surfaced on the training thread
                self._error = exc
            finally:
                for _ in batches:
                    self._queue.task_done()
            if stop:
                return

    def _write(self, items: list[tuple[dict, torch.Tensor]]) -> None:
        """Write checkpoints, committing the manifest every ``flush_interval`` seconds of writing
        (and at the end), so a long backlog never leaves many files unlisted."""
        done, t0 = [], time.monotonic()
        for k, (entry, buf) in enumerate(items):
            fname = f"ckpt-{entry['step']:09d}.safetensors"
            tmp = self.run_dir / f".{fname}.tmp"
            sha = self.layout.write(tmp, buf)  # written and fsynced
            os.replace(tmp, self.run_dir / fname)
            self.layout.give_back(buf)
            entry.update(file=fname, bytes=self.layout.file_bytes, sha256=sha, content_sha256=sha)
            done.append(entry)
            if k == len(items) - 1 or time.monotonic() - t0 >= self.flush_interval:
                self._commit(done)
                done, t0 = [], time.monotonic()

    def _commit(self, done: list[dict]) -> None:
        fsync_dir(self.run_dir)  # the renames are durable before the manifest lists them
        with self._lock:
            for entry in done:
                self._entry_json[entry["step"]] = dumps(entry)
                self.manifest["checkpoints"].append(entry)
            self.manifest["checkpoints"].sort(key=lambda c: c["step"])
            for c in self.manifest["checkpoints"]:  # entries of a resumed run
                if c["step"] not in self._entry_json:
                    self._entry_json[c["step"]] = dumps(c)
            write_manifest(self.run_dir, self.manifest,
                           [self._entry_json[c["step"]] for c in self.manifest["checkpoints"]])

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise TrajectoryError(f"{self.run_dir}: writing a checkpoint failed: {err}") from err

    def flush(self) -> None:
        """Block until every snapshot taken so far is on disk."""
        self._handoff()
        self._queue.join()
        self._raise_pending()

    def close(self) -> None:
        """Flush and stop the writer thread."""
        if self._thread.is_alive():
            self._handoff()
            self._queue.join()
            self._queue.put(None)
            self._thread.join()
        self._raise_pending()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
