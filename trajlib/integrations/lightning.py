"""Record a PyTorch Lightning run: a ``Callback`` (extra ``trajlib[lightning]``).

::

    from trajlib.integrations.lightning import TrajectoryCallback
    trainer = L.Trainer(max_steps=1000, callbacks=[TrajectoryCallback(every=50)])
    trainer.fit(module, loader)           # θ_0 at the start, then every 50 optimizer steps

The callback subclasses ``lightning.pytorch.Callback`` (the ``lightning`` package), else
``pytorch_lightning.Callback``: use it with the Trainer of the same package. It records in
``on_train_batch_end`` once per optimizer step (``trainer.global_step``; batches that only
accumulate gradients are skipped), optionally at Lightning's own checkpoint saves
(``on_save_checkpoint``), resumes with ``trainer.fit(..., ckpt_path=...)``, writes on global
rank zero only, and logs live hallmarks through the Trainer's loggers: scalars to every logger,
the map image to TensorBoard loggers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

try:
    import lightning.pytorch as pl
except ImportError:
    try:
        import pytorch_lightning as pl
    except ImportError:  # pragma: no cover - exercised by the core-only install test
        raise ImportError("trajlib.integrations.lightning needs Lightning: pip install 'trajlib[lightning]'") from None

from .live import LiveHallmarks, TensorBoardSink
from .session import RecordingSession


class LoggersSink:
    """Scalars to every Lightning logger (``log_metrics``); images to those with a TensorBoard
    ``SummaryWriter`` as their ``experiment``."""

    def __init__(self, loggers):
        self.loggers = list(loggers)

    def scalars(self, values, step):
        for lg in self.loggers:
            lg.log_metrics(dict(values), step=step)

    def image(self, tag, rgb, step):
        for lg in self.loggers:
            if hasattr(getattr(lg, "experiment", None), "add_image"):
                TensorBoardSink(lg.experiment).image(tag, rgb, step)

    def flush(self):
        for lg in self.loggers:
            exp = getattr(lg, "experiment", None)
            if hasattr(exp, "flush"):
                exp.flush()


class TrajectoryCallback(pl.Callback):
    """Records θ_t of the LightningModule into ``run_dir`` (default
    ``<default_root_dir>/trajectory``).

    ``every`` / ``steps``: the schedule (``steps="log_linear"`` uses ``trainer.max_steps``);
    ``at_saves``: also record at Lightning's checkpoint saves; ``fresh``: start over;
    ``live``: "auto" (the Trainer's loggers), a callable ``log(values, step)``, or None;
    ``live_every`` / ``image_every``: in checkpoints. Other keywords go to the Recorder.
    """

    def __init__(self, run_dir: str | Path | None = None, *, every: int | None = None,
                 steps: Iterable[int] | str | None = None, at_saves: bool = False, fresh: bool = False,
                 live: str | Callable | None = "auto", live_every: int = 1, image_every: int = 5,
                 **recorder_kwargs):
        if live not in ("auto", None) and not callable(live):
            raise ValueError(f"live={live!r}: expected 'auto', None or a callable log(values, step)")
        self.run_dir = run_dir
        self.schedule = dict(every=every, steps=steps, at_saves=at_saves, fresh=fresh)
        self.live_spec, self.live_every, self.image_every = live, live_every, image_every
        self.recorder_kwargs = recorder_kwargs
        self.session: RecordingSession | None = None

    def _live(self, trainer) -> LiveHallmarks | None:
        if callable(self.live_spec):
            sink = self.live_spec
        elif self.live_spec == "auto" and trainer.loggers:
            sink = LoggersSink(trainer.loggers)
        else:
            return None
        return LiveHallmarks(sink, every=self.live_every, image_every=self.image_every)

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # one writer; the other ranks do nothing at all
            return
        run_dir = self.run_dir or os.path.join(trainer.default_root_dir, "trajectory")
        self.session = RecordingSession(run_dir, live=self._live(trainer), recorder_kwargs=self.recorder_kwargs,
                                        **self.schedule)
        max_steps = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        meta = {"framework": f"{pl.__name__}.Trainer", "module": type(pl_module).__name__}
        self.session.start(pl_module, trainer.global_step, max_steps=max_steps, meta=meta)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.session is not None:
            self.session.step(trainer.global_step, epoch=trainer.current_epoch)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.session is not None:
            self.session.saved(trainer.global_step, epoch=trainer.current_epoch)

    def _close(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            finally:
                self.session = None

    def on_train_end(self, trainer, pl_module) -> None:
        self._close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._close()  # flush what was recorded and release the run's lock, so a resume can append
