"""Record a ``transformers.Trainer`` run: a ``TrainerCallback`` (extra ``trajlib[hf]``).

::

    from trajlib.integrations.hf import TrajectoryCallback
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[TrajectoryCallback(every=50)])
    trainer.train()                       # θ_0 at the start, then every 50 optimizer steps
    trajlib.open_trajectory(f"{args.output_dir}/trajectory")

Records after each optimizer step (``on_step_end``, where the model holds θ_t after step t),
on ``every`` N steps, explicit ``steps``, or ``steps="log_linear"``, and with ``at_saves`` at
the Trainer's own checkpoint saves too. ``trainer.train(resume_from_checkpoint=...)`` appends to
the same run (checkpoints recorded after the resumed step are dropped: training replays them).
Only the world's process zero writes. Live hallmarks (running MDS, map image) go to TensorBoard
next to the Trainer's own logs when ``report_to`` includes it, or to any ``log(values, step)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - exercised by the core-only install test
    raise ImportError("trajlib.integrations.hf needs transformers: pip install 'trajlib[hf]'") from None

from .live import LiveHallmarks, TensorBoardSink, tensorboard_writer
from .session import RecordingSession


def _reports_to_tensorboard(args) -> bool:
    report = getattr(args, "report_to", None) or []
    report = [report] if isinstance(report, str) else list(report)
    return "tensorboard" in report or "all" in report


class TrajectoryCallback(TrainerCallback):
    """Records θ_t of the Trainer's model into ``run_dir`` (default ``<output_dir>/trajectory``).

    ``every`` / ``steps``: the schedule (see :func:`~trajlib.integrations.session.resolve_schedule`);
    ``at_saves``: also record when the Trainer saves; ``fresh``: start the run over;
    ``live``: log live hallmarks ("auto": to TensorBoard if ``report_to`` has it; a callable
    ``log(values, step)``; None: off); ``live_every`` / ``image_every``: in checkpoints;
    ``log_dir``: the TensorBoard folder (default ``$TENSORBOARD_LOGGING_DIR`` or
    ``<output_dir>/runs/trajectory``). Other keywords go to :class:`~trajlib.Recorder`.
    """

    def __init__(self, run_dir: str | Path | None = None, *, every: int | None = None,
                 steps: Iterable[int] | str | None = None, at_saves: bool = False, fresh: bool = False,
                 live: str | Callable | None = "auto", live_every: int = 1, image_every: int = 5,
                 log_dir: str | Path | None = None, **recorder_kwargs):
        if live not in ("auto", None) and not callable(live):
            raise ValueError(f"live={live!r}: expected 'auto', None or a callable log(values, step)")
        self.run_dir, self.log_dir = run_dir, log_dir
        self.schedule = dict(every=every, steps=steps, at_saves=at_saves, fresh=fresh)
        self.live_spec, self.live_every, self.image_every = live, live_every, image_every
        self.recorder_kwargs = recorder_kwargs
        self.session: RecordingSession | None = None
        self._writer = None

    def _live(self, args) -> LiveHallmarks | None:
        sink = None
        if callable(self.live_spec):
            sink = self.live_spec
        elif self.live_spec == "auto" and _reports_to_tensorboard(args):
            log_dir = self.log_dir or os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(
                args.output_dir, "runs", "trajectory")
            self._writer = tensorboard_writer(str(log_dir))
            sink = TensorBoardSink(self._writer)
        if sink is None:
            return None
        return LiveHallmarks(sink, every=self.live_every, image_every=self.image_every)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:  # one writer; the other processes do nothing at all
            return
        if model is None:
            raise ValueError("TrajectoryCallback: the Trainer passed no model to on_train_begin")
        run_dir = self.run_dir or os.path.join(args.output_dir, "trajectory")
        self.session = RecordingSession(run_dir, live=self._live(args), recorder_kwargs=self.recorder_kwargs,
                                        **self.schedule)
        meta = {"framework": "transformers.Trainer", "learning_rate": args.learning_rate,
                "train_batch_size": args.per_device_train_batch_size, "seed": args.seed}
        self.session.start(model, state.global_step, max_steps=state.max_steps, meta=meta)

    def on_step_end(self, args, state, control, **kwargs):
        if self.session is not None:
            self.session.step(state.global_step, epoch=state.epoch)

    def on_save(self, args, state, control, **kwargs):
        if self.session is not None:
            self.session.saved(state.global_step, epoch=state.epoch)

    def on_train_end(self, args, state, control, **kwargs):
        if self.session is not None:
            try:
                self.session.close()
            finally:
                self.session = None
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
