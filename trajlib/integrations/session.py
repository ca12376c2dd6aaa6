"""RecordingSession: what the Trainer and Lightning callbacks do, with the framework left out.

A session owns one :class:`~trajlib.Recorder` on the writing process (rank 0; every other
process holds no Recorder and does nothing, so uneven step counts cannot deadlock: no collective
is ever issued), opens it where training starts or resumes, records on the schedule and
optionally at the framework's own checkpoint saves, and feeds live hallmarks.

Resuming: a framework that resumes from its checkpoint at step s replays the steps after s, so
the checkpoints recorded after s belong to an abandoned branch and are dropped
(:func:`trajlib.record.rewind`, with a warning); starting at step 0 in a directory that already
holds a run is refused unless ``fresh=True``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import torch

from ..manifest import MANIFEST, TrajectoryError, read_manifest
from ..record import Recorder, log_linear_steps, rewind
from .live import LiveHallmarks, flat_parameters

log = logging.getLogger("trajlib.integrations.session")


def resolve_schedule(every: int | None, steps: Iterable[int] | str | None, max_steps: int | None) -> dict:
    """Recorder schedule keywords: ``every`` N steps, explicit ``steps``, or ``steps="log_linear"``
    (:func:`trajlib.log_linear_steps` up to the framework's ``max_steps`` with ``every`` as the
    linear interval, default max_steps // 10)."""
    if steps == "log_linear":
        if not max_steps or max_steps < 1:
            raise ValueError("steps='log_linear' needs the training length (max_steps) from the framework")
        return {"steps": log_linear_steps(max_steps, every=every or max(1, max_steps // 10))}
    if isinstance(steps, str):
        raise ValueError(f"steps={steps!r}: expected an iterable of steps or 'log_linear'")
    if every is not None and steps is not None:
        raise ValueError("give either every= or steps=, not both")
    return {"every": every} if steps is None else {"steps": [int(s) for s in steps]}


class RecordingSession:
    """One training run's recording: ``start`` → ``step`` per optimizer step → ``close``.

    ``at_saves``: also record at the framework's checkpoint saves (``saved``); ``live``:
    live hallmarks fed with every recorded checkpoint; ``recorder_kwargs`` go to the Recorder
    (selection, ``fsync``, ``flush_interval``, and step statistics when the Recorder has them)."""

    def __init__(self, run_dir: str | Path, *, every: int | None = None, steps: Iterable[int] | str | None = None,
                 at_saves: bool = False, fresh: bool = False, live: LiveHallmarks | None = None,
                 recorder_kwargs: dict | None = None):
        self.run_dir = Path(run_dir)
        self.every, self.steps, self.at_saves, self.fresh = every, steps, at_saves, fresh
        self.live, self.recorder_kwargs = live, dict(recorder_kwargs or {})
        self.recorder: Recorder | None = None
        self._params: list[torch.Tensor] = []
        self._seen: int | None = None
        self._saved: int | None = None

    @property
    def active(self) -> bool:
        """Whether this process writes (it is the writer and ``start`` has run)."""
        return self.recorder is not None

    def start(self, model: torch.nn.Module, start_step: int, *, is_writer: bool = True,
              max_steps: int | None = None, meta: dict | None = None) -> None:
        """Open the Recorder at ``start_step`` (0, or the step a resumed framework restored)."""
        if not is_writer or self.recorder is not None:
            return
        start_step = int(start_step)
        if (self.run_dir / MANIFEST).is_file() and not self.fresh:
            recorded = [c["step"] for c in read_manifest(self.run_dir)["checkpoints"]]
            if recorded and start_step == 0:
                raise TrajectoryError(f"{self.run_dir}: holds a recorded run (steps {recorded[0]}..{recorded[-1]}) "
                                      f"and training starts at step 0; pass fresh=True to record over it, or resume "
                                      f"the framework from its checkpoint to append")
            if recorded:
                rewind(self.run_dir, start_step)
        kwargs = dict(self.recorder_kwargs)
        kwargs["meta"] = {**(kwargs.get("meta") or {}), **(meta or {})}
        self.recorder = Recorder(model, self.run_dir, start_step=start_step, fresh=self.fresh,
                                 **resolve_schedule(self.every, self.steps, max_steps), **kwargs)
        self._params = flat_parameters(self.recorder.tensors)
        self._seen = self._saved = self.recorder._last
        if self.live is not None:
            self.live.add(self._saved, self._params)

    def step(self, step: int, *, epoch: float | None = None, metrics: dict | None = None) -> bool:
        """Call after each optimizer step with the framework's global step; a repeated step
        (several batches per optimizer step) is ignored. Returns whether a checkpoint was taken."""
        if self.recorder is None or (self._seen is not None and step <= self._seen):
            return False
        self._seen = step
        saved = self.recorder.step(step, epoch=epoch, metrics=metrics)
        if saved:
            self._after_save(step)
        if self.live is not None:
            self.live.log_step(self.recorder, step)
        return saved

    def saved(self, step: int, *, epoch: float | None = None) -> None:
        """The framework saved its checkpoint at ``step``: record it too (``at_saves``) and flush,
        so every recorded checkpoint up to it is on disk before training can resume from it."""
        if self.recorder is None:
            return
        if self.at_saves and step == self._seen and self._saved != step:
            self.recorder.save(step, epoch=epoch)
            self._after_save(step)
        self.recorder.flush()

    def _after_save(self, step: int) -> None:
        self._saved = step
        if self.live is not None:
            self.live.add(step, self._params)

    def close(self) -> None:
        if self.recorder is not None:
            try:
                self.recorder.close()
            finally:
                self.recorder = None
