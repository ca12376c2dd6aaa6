"""Recorder: save parameter checkpoints from any PyTorch training loop into a run directory.

Two or three lines in a loop::

    with Recorder(model, "runs/mine", every=100, optimizer=opt, seed=0) as rec:  # saves θ_0 now
        for step in range(1, n_steps + 1):
            ...                                   # forward, backward, optimizer.step()
            rec.step(step, epoch=epoch)           # saves when the schedule says so

Saving copies the tensors to host memory on the calling thread; a background
:class:`~trajlib.writer.CheckpointWriter` hashes and writes them, so training does not wait on
the disk. Snapshots waiting in memory are bounded by ``max_pending_bytes``.

Durability: every file is written under a temporary name and renamed into place; the manifest
lists it only once its data and rename are durable, and is replaced once per group of
checkpoints (snapshots reach the writer at most ``flush_interval`` seconds apart) by a kernel
copy that appends the group: Python serialises the group only, whatever the run's length. A killed
process loses only snapshots not yet committed: those of its last ``flush_interval`` seconds, and
never more than the snapshot pool (``max_pending_bytes`` / snapshot size, at least 2; a
snapshot's buffer returns to the pool only once it is committed, and ``save`` waits for a free
one). See the ``fsync`` argument of :class:`Recorder` for what a machine crash can lose; the run
always reopens. Reopening a run directory that holds checkpoints appends to it and says so with
a warning; ``fresh=True`` starts the run over. One Recorder per directory at a time.
"""

from __future__ import annotations

import logging
import platform
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Iterable

import torch

from .formats import dtype_code
from .manifest import (FORMAT_VERSION, MANIFEST, StaleManifest, TrajectoryError, append_checkpoints, dumps, fsync_dir,
                       new_manifest, read_manifest, write_manifest)
from .sketch import SKETCH_FILE
from .steps import STEPS_FILE, StepLog
from .writer import CheckpointWriter, RunLock, SnapshotLayout, remove_leftovers

log = logging.getLogger("trajlib.record")

_BATCHNORM = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm,
              torch.nn.LazyBatchNorm1d, torch.nn.LazyBatchNorm2d, torch.nn.LazyBatchNorm3d)


def log_linear_steps(last_step: int, *, every: int, log_until: int | None = None) -> list[int]:
    """A Pythia-like schedule of steps: 0 and the powers of two below ``log_until`` (default
    ``every``), then every ``every`` steps up to ``last_step``."""
    log_until = every if log_until is None else log_until
    steps, k = {0}, 1
    while k < log_until and k <= last_step:
        steps.add(k)
        k *= 2
    steps.update(range(every, last_step + 1, every))
    return sorted(steps)


def batchnorm_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Scale and shift parameters of every BatchNorm module of ``model``, by qualified name."""
    return {f"{mname}.{p}" if mname else p: param
            for mname, module in model.named_modules() if isinstance(module, _BATCHNORM)
            for p, param in module.named_parameters(recurse=False)}


def select_tensors(model: torch.nn.Module, *, include: str | None = None, exclude: str | None = None,
                   buffers: bool = False) -> dict[str, tuple[torch.Tensor, str]]:
    """The tensors a Recorder saves: name → (tensor, "parameter" | "buffer"), in model order.

    ``include``/``exclude``: regexes searched in the names. Parameters always (frozen ones
    too, tied ones once); float buffers (BatchNorm running statistics) only with ``buffers``."""
    items = [(n, p, "parameter") for n, p in model.named_parameters()]
    if buffers:
        items += [(n, b, "buffer") for n, b in model.named_buffers() if b.is_floating_point()]
    return {name: (tensor, kind) for name, tensor, kind in items
            if (include is None or re.search(include, name)) and not (exclude and re.search(exclude, name))}


def _versions() -> dict[str, str]:
    import numpy

    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "trajlib": __version__}


def _optimizer_meta(optimizer) -> dict | None:
    if optimizer is None:
        return None
    plain = (int, float, str, bool, tuple, list, type(None))
    groups = [{k: v for k, v in g.items() if k != "params" and isinstance(v, plain)} for g in optimizer.param_groups]
    return {"class": type(optimizer).__name__, "param_groups": groups}


def _open_for_writing(run_dir: Path, model, tensors: dict, *, fresh: bool, meta: dict) -> dict:
    """The manifest a Recorder appends to: the run's own (checked against ``tensors``, leftovers
    of a killed writer removed, a warning that it resumes), or a new one. Called under the lock."""
    specs = [{"name": n, "shape": list(t.shape), "dtype": dtype_code(t.dtype), "kind": kind}
             for n, (t, kind) in tensors.items()]
    if (run_dir / MANIFEST).exists() and fresh:
        _start_over(run_dir)
    if not (run_dir / MANIFEST).exists():
        bn = batchnorm_parameters(model)
        frozen = [n for n, (t, kind) in tensors.items() if kind == "parameter" and not t.requires_grad]
        manifest = new_manifest(specs, {"bn": [n for n in tensors if n in bn], "frozen": frozen},
                                {"model": type(model).__name__, "versions": _versions(), "created": time.time(),
                                 **meta})
        write_manifest(run_dir, manifest)
        return manifest
    manifest = read_manifest(run_dir)
    if manifest["tensors"] != specs:
        old = {t["name"]: t for t in manifest["tensors"]}
        new = {t["name"]: t for t in specs}
        diff = sorted(set(old) ^ set(new)) or [n for n in new if old[n] != new[n]]
        raise TrajectoryError(f"{run_dir / MANIFEST}: cannot resume: the model's tensors differ from the recorded "
                              f"run (first difference: {diff[0]!r}); pass fresh=True to start the run over")
    if manifest.get("format_version", 1) < FORMAT_VERSION:  # v1 hashed whole files
        for c in manifest["checkpoints"]:
            c.pop("content_sha256", None)
        manifest["format_version"] = FORMAT_VERSION
    removed = remove_leftovers(run_dir, {c["file"] for c in manifest["checkpoints"]})
    if removed:
        log.warning("%s: removed %d file(s) a killed writer left unlisted: %s", run_dir, len(removed),
                    ", ".join(removed[:5]))
    cks = manifest["checkpoints"]
    if cks:
        warnings.warn(f"Recorder: resuming {run_dir} after step {cks[-1]['step']} ({len(cks)} checkpoints "
                      f"already recorded); pass fresh=True to start over", stacklevel=3)
    return manifest


def _start_over(run_dir: Path) -> None:
    """``fresh=True``: delete the manifest, checkpoints, Gram caches and PCA directions of the
    previous run."""
    listed = {c.get("file") for c in read_manifest(run_dir)["checkpoints"]}
    (run_dir / MANIFEST).unlink()
    for path in run_dir.iterdir():
        if path.name in listed or path.name.startswith(("gram-", "pca-")) or path.name in (STEPS_FILE, SKETCH_FILE):
            path.unlink()
    remove_leftovers(run_dir, set())
    fsync_dir(run_dir)
    log.warning("%s: fresh=True: removed the previous run (%d checkpoints)", run_dir, len(listed))


class Recorder:
    """Write θ_t of ``model`` to ``run_dir`` on a schedule.

    Schedule: ``steps`` (an explicit iterable, e.g. :func:`log_linear_steps`) or ``every`` N
    steps (default 1). Selection: see :func:`select_tensors`. θ_0 is saved at construction
    (step ``start_step``) unless the run already holds checkpoints: then the recorder appends
    (a warning says so) or, with ``fresh=True``, deletes them and starts over. Steps must
    increase: a repeated or smaller step raises ``ValueError`` rather than being dropped.

    The Recorder snapshots the tensors the model holds when it is created: move the model to its
    device and dtype first (``model.to()``, ``.half()`` or ``load_state_dict(assign=True)``
    afterwards replace those tensors, and later snapshots would keep the old ones).

    Durability (``fsync``; files are always renamed into place atomically, and a killed process
    loses nothing that was committed, since committed files are in the page cache):

    * ``"interval"`` (default): snapshots reach the writer in groups at most ``flush_interval``
      seconds apart (0.2 s); each group's files are fsynced together, then the directory, then
      the manifest lists them; also at :meth:`flush` and :meth:`close`. A killed process *and*
      a machine crash (power loss) lose the same window: the checkpoints not yet committed,
      i.e. those taken in the last ``flush_interval`` plus any backlog the writer had not
      finished. The manifest never lists a file whose data a machine crash could lose.
    * ``"always"``: every snapshot goes to the writer at once and is fsynced, renamed and listed
      on its own (three fsyncs a checkpoint): either kind of crash loses at most the checkpoint
      being written and those queued behind it.
    * ``"never"`` (``False``): no fsync of checkpoint files: a killed process loses what
      ``"interval"`` loses, but after a machine crash the manifest may list files whose data
      was lost (``open_trajectory`` then names them). For scratch runs on slow disks.

    ``True`` means ``"always"`` (the former default).

    Step level (opt-in; off costs nothing): ``step_stats`` (True for ``"all"``, or group specs
    as for ``gram``) records exact per-step statistics of every step (:mod:`trajlib.steps`:
    ‖u_t‖, ‖θ_t‖, cos(u_t, u_{t-1}), cos(u_t, θ_{t-1}), and ⟨u_t, v⟩, cos(u_t, v) for each of
    ``directions``, name → a dict of tensors by parameter name or one flat vector); memory: two
    copies of the grouped parameters (θ_{t-1} in their dtype, u_{t-1} in float32: 8 bytes per
    float32 parameter) plus 8 bytes per parameter per direction. ``sketch`` (k, or {"k", "seed",
    "every", "groups"}) stores a CountSketch Φθ_t of every ``every``-th step (:mod:`trajlib.sketch`;
    8·k bytes per step and group). Both are written beside the run every ``flush_interval`` and
    read by ``traj.steps_table()`` and ``traj.sketches()``; ``rec.step_log.stats.listeners`` get
    each flushed block of rows.
    """

    def __init__(self, model: torch.nn.Module, run_dir: str | Path, *, every: int | None = None,
                 steps: Iterable[int] | None = None, include: str | None = None,
                 exclude: str | None = None, buffers: bool = False, meta: dict | None = None,
                 optimizer: torch.optim.Optimizer | None = None, seed: int | None = None,
                 start_step: int = 0, fresh: bool = False, flush_interval: float = 0.2,
                 max_pending_bytes: int = 256 << 20, fsync: str | bool = "interval", step_stats=None,
                 directions: dict | None = None, sketch=None):
        if every is not None and steps is not None:
            raise ValueError("give either every= or steps=, not both")
        if every is not None and every < 1:
            raise ValueError(f"every={every}: must be a positive number of steps")
        self.model, self.run_dir = model, Path(run_dir)
        self.every = 1 if every is None and steps is None else every
        self.schedule = None if steps is None else set(int(s) for s in steps)
        self.tensors = select_tensors(model, include=include, exclude=exclude, buffers=buffers)
        if not self.tensors:
            raise ValueError(f"include={include!r}/exclude={exclude!r} select no tensor of {type(model).__name__}")
        self.flush_interval = flush_interval
        self._lock = threading.Lock()
        self._manifest_stamp = None  # the manifest as _commit last wrote it (ManifestStamp)
        snapshot = sum(t.numel() * t.element_size() for t, _ in self.tensors.values())
        self.layout = SnapshotLayout({n: t for n, (t, _) in self.tensors.items()},
                                     max_buffers=min(512, max_pending_bytes // max(1, snapshot)))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._run_lock = RunLock(self.run_dir)
        try:
            self.manifest = _open_for_writing(self.run_dir, model, self.tensors, fresh=fresh,
                                              meta={"optimizer": _optimizer_meta(optimizer), "seed": seed, **(meta or {})})
            new_run = not self.manifest["checkpoints"]
            self.step_log = None
            if step_stats or sketch:
                self.step_log = StepLog(self.run_dir, self.manifest, self.tensors, step_stats=step_stats,
                                        directions=directions, sketch=sketch, new_run=new_run,
                                        start_step=start_step, fsync=fsync)
                write_manifest(self.run_dir, self.manifest)
        except BaseException:
            self._run_lock.release()
            raise
        self._last = max((c["step"] for c in self.manifest["checkpoints"]), default=None)
        self._unsaved: int | None = None  # the last step() that took no checkpoint: save() may still take it
        self._batch: list = []
        self._handed_off, self._started = time.monotonic(), False
        self._writer = CheckpointWriter(self.run_dir, self.layout, self._commit, flush_interval=flush_interval,
                                        fsync=fsync)
        if not self.manifest["checkpoints"]:
            self.save(start_step, epoch=0)

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

    def _check_order(self, step: int, *, seen_ok: bool = False) -> None:
        if self._last is not None and step <= self._last and not (seen_ok and step == self._unsaved):
            raise ValueError(f"{self.run_dir}: step {step} is not after the last step seen ({self._last}); steps "
                             f"must increase (a counter reset each epoch? pass a global step)")

    def step(self, step: int, *, epoch: float | None = None, metrics: dict | None = None) -> bool:
        """Call once per training step (steps increasing); saves if the schedule says so.
        Returns whether a checkpoint was taken."""
        self._writer.raise_failures()
        step = int(step)
        self._check_order(step)
        if self.step_log is not None:
            self.step_log.update(step)
            if time.monotonic() - self._handed_off >= self.flush_interval:
                self._handoff()
        if not self.due(step):
            self._last = self._unsaved = step
            return False
        self.save(step, epoch=epoch, metrics=metrics)
        return True

    def save(self, step: int, *, epoch: float | None = None, metrics: dict | None = None) -> None:
        """Snapshot the tensors now; they are written in the background. ``step`` must be after
        every step seen, or equal to the last one ``step()`` saw without saving (a framework's
        own checkpoint at that step).

        Snapshots are handed to the writer in groups, at most ``flush_interval`` seconds apart
        (or sooner when they fill half of ``max_pending_bytes``): one thread wake-up per group
        rather than per step keeps recording off the training loop's critical path.
        """
        self._writer.raise_failures()
        step = int(step)
        self._check_order(step, seen_ok=True)  # a step that step() saw but did not save may be saved
        self._last, self._unsaved = step, None
        entry = {"step": step, "epoch": None if epoch is None else float(epoch),
                 "wall_time": time.time(), "metrics": dict(metrics or {})}
        self._batch.append((entry, self.layout.take()))
        now = time.monotonic()
        if (now - self._handed_off >= self.flush_interval or len(self._batch) == 1 and not self._started
                or len(self._batch) >= self.layout.max_buffers // 2 or self._writer.fsync == "always"):
            self._handoff()

    def _handoff(self) -> None:
        if self.step_log is not None:  # step rows reach the table before their checkpoints are listed
            self.step_log.flush()
        if self._batch:
            batch, self._batch = self._batch, []
            self._writer.put(batch)
        self._handed_off = time.monotonic()
        self._started = True

    def _commit(self, done: list[dict]) -> None:
        """Writer thread: list completed checkpoints in the manifest (after a directory sync).
        The first commit rewrites the manifest whole; later ones append to it
        (:func:`~trajlib.manifest.append_checkpoints`), so Python serialises the new entries
        only (the kernel copies the rest). If the manifest cannot be written, the in-memory
        manifest is left as it was: those checkpoints are reported as not saved, and their files
        are removed at the next resume. Once the new manifest is in place they are listed,
        whatever follows: a failed directory sync after the rename is logged (a machine crash
        could still lose the rename), never reported as a lost checkpoint."""
        fsync_dir(self.run_dir)  # the renames are durable before the manifest lists them
        with self._lock:
            listed = self.manifest["checkpoints"]
            steps = [c["step"] for c in listed[-1:] + done]
            appended = False
            if self._manifest_stamp is not None and all(a < b for a, b in zip(steps, steps[1:])):
                try:
                    stamp = append_checkpoints(self.run_dir, self._manifest_stamp, [dumps(e) for e in done],
                                               sync_dir=False)
                    listed.extend(done)
                    appended = True
                except StaleManifest as exc:
                    log.warning("%s; rewriting it whole", exc)
                    self._manifest_stamp = None
            if not appended:
                checkpoints = sorted(listed + done, key=lambda c: c["step"])
                stamp = write_manifest(self.run_dir, {**self.manifest, "checkpoints": checkpoints}, sync_dir=False)
                self.manifest["checkpoints"] = checkpoints
            self._manifest_stamp = stamp
        try:
            fsync_dir(self.run_dir)
        except OSError as exc:
            log.error("%s: the manifest now lists step(s) %d..%d, but syncing the directory after its rename "
                      "failed (%s): a machine crash could still lose that rename", self.run_dir, done[0]["step"],
                      done[-1]["step"], exc)

    def flush(self) -> None:
        """Block until every snapshot taken so far is on disk; raise naming any step not saved."""
        self._handoff()
        self._writer.join()
        self._writer.raise_failures()

    def close(self) -> None:
        """Flush, stop the writer thread and release the run's lock."""
        try:
            self._handoff()
            self._writer.join()
            self._writer.stop()
            self._writer.raise_failures()
        finally:
            if self.step_log is not None:
                self.step_log.close()
            self._run_lock.release()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def rewind(run_dir: str | Path, step: int) -> list[int]:
    """Drop the checkpoints recorded after ``step`` from a run (under its lock); returns their steps.

    For resuming training from an earlier checkpoint of the training framework: the steps after
    it are trained again, so what was recorded past it belongs to an abandoned branch. The
    manifest is rewritten first, then the files are deleted (a kill in between leaves unlisted
    files, which the next Recorder removes)."""
    run_dir = Path(run_dir)
    lock = RunLock(run_dir)
    try:
        manifest = read_manifest(run_dir)
        drop = [c for c in manifest["checkpoints"] if c["step"] > step]
        if not drop:
            return []
        manifest["checkpoints"] = [c for c in manifest["checkpoints"] if c["step"] <= step]
        write_manifest(run_dir, manifest)
        for c in drop:
            (run_dir / c["file"]).unlink(missing_ok=True)
        fsync_dir(run_dir)
    finally:
        lock.release()
    steps = [c["step"] for c in drop]
    warnings.warn(f"{run_dir}: resuming at step {step}: dropped {len(steps)} checkpoint(s) recorded after it "
                  f"(steps {steps[0]}..{steps[-1]}), which the resumed training replaces", stacklevel=2)
    return steps
