"""Live hallmarks while a run trains: an exact, incremental Gram and what to log from it.

:class:`RunningGram` keeps G (T, T), float64, of the rows [θ_0; u_0..u_{T-2}] (:mod:`trajlib.gram.rows`) as
checkpoints arrive: a new checkpoint θ_T adds one row and one column, the inner products of
u_{T-1} = θ_T − θ_{T-1} (formed in float64 from the values, never by subtracting Gram entries)
with θ_0 and every earlier update. It equals what :func:`trajlib.gram` computes from the files
afterwards (same rows, another summation order: agreement to ~1e-12 relative, tested).

The cost is stated, not hidden: adding a checkpoint costs one (T, P) × (P,) float64 product, and
the rows are held in host memory in float64 (T·P·8 bytes; ``max_bytes`` bounds it). Past that
budget the live map stops growing (a warning says so) and the exact map comes from ``trajlib.gram``
on the run directory; a sketched map for long runs is :mod:`trajlib.sketch`'s job.

:class:`LiveHallmarks` turns the running Gram into what a logger shows: the MDS, relative MDS,
angle from θ_0 and distance from θ_0 as scalars at every checkpoint, and every ``image_every``
checkpoints the trajectory map as an image. It writes through a :class:`LogSink`: a
TensorBoard ``SummaryWriter`` (:class:`TensorBoardSink`) or any callable. Hook it to a plain
:class:`~trajlib.Recorder` with :func:`attach`; the Trainer and Lightning callbacks use it too.
"""

from __future__ import annotations

import logging
import warnings
from typing import Callable, Mapping, Protocol

import numpy as np
import torch

from .. import hallmarks as H

log = logging.getLogger("trajlib.integrations.live")


def flat_parameters(tensors: Mapping[str, tuple[torch.Tensor, str]]) -> list[torch.Tensor]:
    """The recorded parameters (buffers left out, as in the ``all`` group) of a Recorder's
    ``tensors`` selection, in manifest order."""
    return [t for t, kind in tensors.values() if kind == "parameter"]


class RunningGram:
    """G (T, T) of [θ_0; u_0..u_{T-2}], grown by one row per checkpoint, exact in float64.

    Holds the rows themselves, float64, in one (capacity, P) buffer that doubles when full, and
    θ_{T-1} to form the next update; ``max_bytes`` bounds the rows' memory (T·P·8 bytes)."""

    def __init__(self, *, max_bytes: int = 1 << 30):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes={max_bytes}: must be positive")
        self.max_bytes = int(max_bytes)
        self._rows: torch.Tensor | None = None  # (capacity, P) float64: θ_0, u_0, u_1, ...
        self._prev: torch.Tensor | None = None  # θ_{T-1}, float64 (P,)
        self._dtype = None
        self._G = np.zeros((0, 0))
        self.steps: list[int] = []
        self.full = False

    @property
    def T(self) -> int:
        return len(self.steps)

    @property
    def G(self) -> np.ndarray:
        """(T, T) float64; a copy."""
        return self._G.copy()

    def add(self, step: int, tensors: list[torch.Tensor] | torch.Tensor) -> bool:
        """Append checkpoint θ_T (the tensors, flattened and concatenated in the given order) at
        ``step``; returns False (and warns once) when the memory budget is spent."""
        step = int(step)
        if self.steps and step <= self.steps[-1]:
            raise ValueError(f"RunningGram: step {step} is not after the last checkpoint's ({self.steps[-1]})")
        parts = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
        with torch.no_grad():
            theta = torch.cat([p.detach().reshape(-1).to("cpu") for p in parts])
        T, P = self.T, theta.numel()
        if self._prev is not None and (P, theta.dtype) != (self._prev.numel(), self._dtype):
            raise ValueError(f"RunningGram: checkpoint of step {step} has {P} {theta.dtype} values, "
                             f"θ_0 had {self._prev.numel()} {self._dtype}")
        if (T + 1) * P * 8 > self.max_bytes:
            if not self.full:
                warnings.warn(f"RunningGram: {T + 1} rows of {P:,} float64 values exceed max_bytes="
                              f"{self.max_bytes:,}; the live map stops at step {self.steps[-1] if self.steps else None} "
                              f"(trajlib.gram on the run directory gives the whole map)", stacklevel=2)
            self.full = True
            return False
        theta64 = theta.to(torch.float64)
        r = theta64 if self._prev is None else theta64 - self._prev  # u_{T-1}, formed from the values
        if self._rows is None or len(self._rows) == T:
            grown = torch.empty(max(4, 2 * T), P, dtype=torch.float64)
            if T:
                grown[:T] = self._rows[:T]
            self._rows = grown
        self._rows[T] = r
        row = (self._rows[: T + 1] @ r).numpy()  # ⟨r_s, r_T⟩ for s ≤ T
        G = np.zeros((T + 1, T + 1))
        G[:T, :T] = self._G
        G[T, :] = G[:, T] = row
        self._G, self._prev, self._dtype = G, theta64, theta.dtype
        self.steps.append(step)
        return True


class LogSink(Protocol):
    """Where live hallmarks go: scalars by name at a step, and optionally an image (H, W, 3) uint8."""

    def scalars(self, values: Mapping[str, float], step: int) -> None: ...

    def image(self, tag: str, rgb: np.ndarray, step: int) -> None: ...


class CallableSink:
    """A sink from a function ``log(values: dict[str, float], step: int)``; images are dropped."""

    def __init__(self, fn: Callable[[dict, int], None]):
        self.fn = fn

    def scalars(self, values, step):
        self.fn(dict(values), step)

    def image(self, tag, rgb, step):
        pass


class TensorBoardSink:
    """Writes through a TensorBoard ``SummaryWriter`` (``torch.utils.tensorboard``, Lightning's
    ``TensorBoardLogger.experiment``, or the one a Trainer callback opens in ``logging_dir``)."""

    def __init__(self, writer):
        self.writer = writer

    def scalars(self, values, step):
        for k, v in values.items():
            if v is not None and np.isfinite(v):
                self.writer.add_scalar(k, float(v), global_step=step)

    def image(self, tag, rgb, step):
        self.writer.add_image(tag, rgb, global_step=step, dataformats="HWC")

    def flush(self):
        self.writer.flush()


def tensorboard_writer(log_dir: str):
    """A ``SummaryWriter`` on ``log_dir``; a clear error when the ``tensorboard`` extra is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("logging live hallmarks to TensorBoard needs tensorboard: "
                          "pip install 'trajlib[tensorboard]'") from None
    return SummaryWriter(log_dir=log_dir)


def map_image(C: np.ndarray, *, size: int = 256, vmin: float | None = None) -> np.ndarray:
    """The trajectory map C (T, T) as an RGB uint8 image (size, size, 3), drawn without a
    figure: nearest-neighbour upscaling of the ``rocket`` colour map (matplotlib's colormap
    table only). Row 0 (θ_0) at the top, as in :func:`trajlib.plot.trajectory_map`."""
    from matplotlib import colormaps

    try:
        import seaborn  # noqa: F401  (registers "rocket")
        cmap = colormaps["rocket"]
    except (ImportError, KeyError):
        cmap = colormaps["magma"]
    C = np.asarray(C, dtype=np.float64)
    lo = np.nanmin(C) if vmin is None else vmin
    scaled = np.clip((C - lo) / max(1.0 - lo, 1e-12), 0.0, 1.0)
    idx = np.minimum((np.arange(size) * len(C)) // size, len(C) - 1)
    rgba = cmap(np.nan_to_num(scaled[np.ix_(idx, idx)], nan=0.0))
    return (rgba[..., :3] * 255).round().astype(np.uint8)


def live_scalars(G: np.ndarray, prefix: str = "trajectory/") -> dict[str, float]:
    """Scalars from the running G: mds, relative_mds (T ≥ 3), angle and distance of the newest
    checkpoint from θ_0, and the newest step norm ‖u_{T-2}‖ (from G, exact)."""
    T = len(G)
    if T < 2:
        return {}
    out = {"mds": H.mds(G), "angle_from_init": float(H.angle_from_init(G)[-1]),
           "distance_from_init": float(H.distance_from_init(G)[-1]),
           "last_update_norm": float(H.step_norm(G)[-1]), "checkpoints": float(T)}
    if T >= 3:
        out["relative_mds"] = H.relative_mds(G)
    return {prefix + k: v for k, v in out.items()}


def step_statistics_of(recorder) -> dict[str, float]:
    """Per-step statistics to log at the current step. PLUG-IN POINT for the step-level issue:
    when the Recorder computes step statistics (‖u_t‖, cos(u_t, u_{t-1}), ...), return its
    latest row here (names → floats) and every caller below logs it; today it returns what a
    Recorder exposes as ``last_step_statistics`` if anything, else nothing."""
    latest = getattr(recorder, "last_step_statistics", None)
    if callable(latest):
        latest = latest()
    return {f"step/{k}": float(v) for k, v in (latest or {}).items()}


class LiveHallmarks:
    """Feeds checkpoints into a :class:`RunningGram` and logs its hallmarks to a sink.

    ``every``: log the scalars every N checkpoints (1 = each); ``image_every``: the map image
    every N checkpoints (0 = never). ``prefix`` starts every tag."""

    def __init__(self, sink: LogSink | Callable | None, *, every: int = 1, image_every: int = 5,
                 max_bytes: int = 1 << 30, prefix: str = "trajectory/"):
        if every < 1 or image_every < 0:
            raise ValueError(f"every={every} must be ≥ 1 and image_every={image_every} ≥ 0")
        self.sink = CallableSink(sink) if callable(sink) and not hasattr(sink, "scalars") else sink
        self.every, self.image_every, self.prefix = every, image_every, prefix
        self.gram = RunningGram(max_bytes=max_bytes)
        self.logged: list[int] = []

    def add(self, step: int, tensors: list[torch.Tensor]) -> dict[str, float]:
        """Add checkpoint θ at ``step``; log (and return) the live scalars when due."""
        if not self.gram.add(step, tensors):
            return {}
        T = self.gram.T
        if T < 2 or (T - 1) % self.every:
            return {}
        G = self.gram._G
        values = live_scalars(G, self.prefix)
        if self.sink is not None:
            self.sink.scalars(values, step)
            if self.image_every and (T - 1) % self.image_every == 0:
                self.sink.image(self.prefix + "map", map_image(H.trajectory_map(G)), step)
            if hasattr(self.sink, "flush"):
                self.sink.flush()
        self.logged.append(step)
        return values

    def log_step(self, recorder, step: int) -> None:
        """Log the recorder's per-step statistics, if it has any (see :func:`step_statistics_of`)."""
        values = step_statistics_of(recorder)
        if values and self.sink is not None:
            self.sink.scalars(values, step)


def attach(recorder, live: LiveHallmarks) -> Callable[[int], bool]:
    """A ``step(step, **kw)`` function for a plain loop: ``recorder.step`` plus live hallmarks.

    ``rec_step = attach(rec, live)`` then call ``rec_step(step)`` instead of ``rec.step(step)``;
    θ_0 (saved when the Recorder was built) is fed first."""
    params = flat_parameters(recorder.tensors)
    if live.gram.T == 0:  # the model as the Recorder last saved it (θ_0, or where a resume starts)
        live.add(recorder._last if recorder._last is not None else 0, params)

    def step(step: int, **kwargs) -> bool:
        saved = recorder.step(step, **kwargs)
        if saved:
            live.add(step, params)
        live.log_step(recorder, step)
        return saved

    return step
