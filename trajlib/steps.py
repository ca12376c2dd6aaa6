"""Step-level statistics: exact per-optimizer-step update statistics from the live parameters.

:class:`StepStats` runs after every optimizer step (``Recorder(..., step_stats=...)`` calls
it, or call :meth:`StepStats.update` yourself). For each parameter group (the specs of
``trajlib.groups``: ``all``, ``layers``, ``name=regex``, ...) and the update u_t = θ_t − θ_{t-1}
of the step that produced θ_t it gives

* ``step_norm`` ‖u_t‖, ``param_norm`` ‖θ_t‖,
* ``consecutive_update_cos`` cos(u_t, u_{t-1}) (NaN at the first step after a (re)start),
* ``update_param_cos`` cos(u_t, θ_{t-1}): the update against the parameters it leaves, as the
  checkpoint-level hallmark of the same name (u_t = θ_{t+1} − θ_t there),
* ``proj:<name>`` ⟨u_t, v⟩ and ``cos:<name>`` cos(u_t, v) for fixed user directions v.

Exactness: θ_{t-1} is kept as a copy in the parameters' own dtype (exact) and u_{t-1} in
float32; each block of the live θ_t is converted to float64 in a cache-sized work buffer, u_t is
formed there by one float64 subtraction per element (exact up to float64 rounding), and every
statistic is a float64 dot product of formed vectors: none is a difference of large dot
products. Rounding u_{t-1} to float32 moves cos(u_t, u_{t-1}) by at most 2^-24 ≈ 6e-8
(Cauchy-Schwarz); float64 parameters keep u_{t-1} in float64.

Memory: two copies of the grouped parameters (θ_{t-1} in their dtype, u_{t-1} in float32: 8 bytes
per float32 parameter; overlapping groups share them), plus 8 bytes per parameter per direction,
plus float64 work buffers of 4 × ``block_cols``. With sketches only (``groups=None``) nothing is
kept but the work buffers (and, on the CPU, the sketch's cached int64 buckets).
Results stay on the device until :meth:`drain` (one transfer per flush, no sync per step).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import torch

from .formats import dtype_code
from .groups import plan_blocks, resolve_groups
from .manifest import TrajectoryError, read_manifest
from .rows import read_rows
from .sketch import CountSketch

STATS = ("step_norm", "param_norm", "consecutive_update_cos", "update_param_cos")
STEPS_FILE = "steps.f64"


class LiveLayout:
    """The recorded tensors of a live model, seen as :mod:`trajlib.groups` sees a Trajectory."""

    def __init__(self, tensors: Mapping[str, tuple[torch.Tensor, str]], *, groups: dict | None = None,
                 meta: dict | None = None, source: str = "model"):
        self.tensors = {n: t for n, (t, _) in tensors.items()}
        self.names = list(self.tensors)
        self.kinds = {n: kind for n, (_, kind) in tensors.items()}
        self.parameters = [n for n in self.names if self.kinds[n] == "parameter"]
        self.shapes = {n: tuple(t.shape) for n, t in self.tensors.items()}
        self.dtypes = {n: dtype_code(t.dtype) for n, t in self.tensors.items()}
        self.groups, self.meta, self.source = groups or {}, meta or {}, source
        self.offsets = dict(zip(self.names, np.cumsum([0] + [t.numel() for t in self.tensors.values()])[:-1].tolist()))

    def numel(self, name: str) -> int:
        return self.tensors[name].numel()


def _flat_direction(layout: LiveLayout, name: str, v) -> dict[str, torch.Tensor]:
    """A direction as {tensor: flat float64 values}: a dict by tensor name (absent = 0) or one
    flat vector over the recorded parameters in order."""
    if isinstance(v, Mapping):
        out = {}
        for tname, t in v.items():
            if tname not in layout.tensors:
                raise ValueError(f"direction {name!r}: {tname!r} is not a recorded tensor")
            t = torch.as_tensor(t)
            if t.numel() != layout.numel(tname):
                raise ValueError(f"direction {name!r}: tensor {tname!r} has {t.numel()} elements, the "
                                 f"parameter {layout.numel(tname)}")
            out[tname] = t.detach().reshape(-1).to(torch.float64)
        return out
    flat = torch.as_tensor(v).detach().reshape(-1).to(torch.float64)
    sizes = [layout.numel(n) for n in layout.parameters]
    if flat.numel() != sum(sizes):
        raise ValueError(f"direction {name!r}: {flat.numel()} values, the recorded parameters have {sum(sizes)}")
    return dict(zip(layout.parameters, flat.split(sizes)))


class StepStats:
    """Exact per-step statistics (and optionally a sketch) of a model's live parameters.

    ``groups``: group specs for the statistics (None/False: none); ``directions``: name → fixed
    direction v; ``sketch``/``sketch_groups``: a :class:`~trajlib.sketch.CountSketch` and the
    groups it sketches; ``device``: where the work runs (default: the parameters' device).
    Call :meth:`reset` once (θ_{t-1} := the live θ), then :meth:`update` after each step.
    """

    def __init__(self, layout: LiveLayout, *, groups=("all",), directions: Mapping | None = None,
                 sketch: CountSketch | None = None, sketch_groups=("all",), device=None,
                 block_cols: int | None = None, cache_hash: bool | None = None):
        self.layout = layout
        first = next(iter(layout.tensors.values()))
        self.device = torch.device(device) if device is not None else first.device
        stat_specs = list(groups) if groups else []
        sk_specs = list(sketch_groups) if sketch is not None else []
        resolved = resolve_groups(layout, stat_specs + sk_specs) if stat_specs or sk_specs else {}
        self.groups = list(resolve_groups(layout, stat_specs)) if stat_specs else []
        self.sketch_groups = list(resolve_groups(layout, sk_specs)) if sk_specs else []
        self.directions = dict(directions or {})
        if block_cols is None:
            block_cols = (1 << 22) if self.device.type == "cuda" else (1 << 15)
        self.plan = plan_blocks(layout, resolved, block_cols=block_cols)
        self.n_params = dict(zip(self.plan.groups, self.plan.n_params))
        blocks = self.plan.blocks
        self._views = [[layout.tensors[n].detach().view(-1)[a:b] for n, a, b, _ in blk.pieces] for blk in blocks]
        self._x = torch.empty(4, self.plan.max_cols, dtype=torch.float64, device=self.device)  # θ_{t-1}, u_{t-1}, θ_t, u_t
        self._X = [self._x[:, : b.ncols] for b in blocks]  # per-block views, made once (indexing costs µs)
        gi = {g: i for i, g in enumerate(self.plan.groups)}
        member = lambda names: torch.tensor([[float(gi[g] in self.plan.members[b.signature]) for b in blocks]  # noqa: E731
                                            for g in names], dtype=torch.float64, device=self.device)
        self._M = member(self.groups)  # (groups, blocks) membership
        nv = len(self.directions)
        if self.groups:  # per block: θ_{t-1} in the parameters' dtype, u_{t-1} in float32 (float64 for
            # float64 parameters), the directions in float64
            self._s0 = [torch.zeros(b.ncols, dtype=self._views[i][0].dtype, device=self.device)
                        for i, b in enumerate(blocks)]
            self._s1 = [torch.zeros(b.ncols, dtype=torch.float64 if s0.dtype == torch.float64 else torch.float32,
                                    device=self.device) for s0, b in zip(self._s0, blocks)]
            self._V = [torch.zeros(nv, b.ncols, dtype=torch.float64, device=self.device) for b in blocks]
            self._fill_directions()
            self._R = torch.zeros(len(blocks), 8 + nv, dtype=torch.float64, device=self.device)
            self._RT, self._RU, self._RV = [r[:4] for r in self._R], [r[4:8] for r in self._R], [r[8:] for r in self._R]
            self._vnorm = (self._M @ self._dir_sq()).sqrt()  # ‖v_j‖ per group, (groups, directions)
        self.sketch = sketch
        if sketch is not None:
            self._skM = member(self.sketch_groups)
            self._acc = torch.zeros(len(blocks), 2 * sketch.k, dtype=torch.float64, device=self.device)
            cache = self.device.type == "cpu" if cache_hash is None else cache_hash
            self._idx = [self._block_index(i) for i in range(len(blocks))] if cache else None
        self._steps: list[int] = []
        self._last: torch.Tensor | None = None
        self._rows: list[torch.Tensor] = []
        self._sk_steps: list[int] = []
        self._sk_rows: list[torch.Tensor] = []
        self.listeners: list[Callable[[pd.DataFrame], None]] = []

    # -- set-up --------------------------------------------------------------------------------
    def _dir_sq(self) -> torch.Tensor:
        """Σ v² per block and direction, (blocks, directions)."""
        return torch.stack([(V ** 2).sum(1) for V in self._V])

    def _fill_directions(self) -> None:
        for j, (name, v) in enumerate(self.directions.items()):
            flat = _flat_direction(self.layout, name, v)
            for V, blk in zip(self._V, self.plan.blocks):
                for tname, a, b, off in blk.pieces:
                    if tname in flat:
                        V[j, off: off + b - a].copy_(flat[tname][a:b])

    def _block_index(self, i: int) -> torch.Tensor:
        blk = self.plan.blocks[i]
        gidx = torch.cat([torch.arange(self.layout.offsets[n] + a, self.layout.offsets[n] + b, device=self.device)
                          for n, a, b, _ in blk.pieces])
        return self.sketch.index(gidx)

    @property
    def columns(self) -> list[str]:
        """Names of one group's statistics, in table order."""
        return [*STATS, *(f"proj:{d}" for d in self.directions), *(f"cos:{d}" for d in self.directions)]

    def _load(self, i: int) -> torch.Tensor:
        x0 = self._X[i][2]
        views = self._views[i]
        if len(views) == 1:
            x0.copy_(views[0])
        else:
            torch.cat(views, out=x0)
        return x0

    @torch.no_grad()
    def reset(self) -> None:
        """Take the live θ as θ_{t-1}; the next update has no u_{t-1} (its cosine is NaN)."""
        if not self.groups:
            return
        tt = torch.zeros(len(self.plan.blocks), dtype=torch.float64, device=self.device)
        for i in range(len(self.plan.blocks)):
            x0 = self._load(i)
            self._s0[i].copy_(x0)
            self._s1[i].zero_()
            tt[i] = x0.dot(x0)
        self._tt_prev = self._M @ tt
        self._uu_prev = torch.full((len(self.groups),), math.nan, dtype=torch.float64, device=self.device)

    # -- per step ------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, step: int, *, stats: bool = True, sketch: bool = False) -> None:
        """One pass over the live parameters after the optimizer step that produced θ_step."""
        stats = stats and bool(self.groups)
        sketch = sketch and self.sketch is not None
        if not (stats or sketch):
            return
        nv = len(self.directions)
        for i in range(len(self.plan.blocks)):
            x0 = self._load(i)  # θ_t in float64, (n,)
            if stats:
                X = self._X[i]  # (4, n): θ_{t-1}, u_{t-1}, θ_t, u_t
                X[0].copy_(self._s0[i])
                X[1].copy_(self._s1[i])
                torch.sub(x0, X[0], out=X[3])  # u_t, exact: a float64 difference of two stored parameter values
                torch.mv(X, X[2], out=self._RT[i])  # every row against θ_t, then against u_t
                torch.mv(X, X[3], out=self._RU[i])
                if nv:
                    torch.mv(self._V[i], X[3], out=self._RV[i])  # ⟨v_j, u_t⟩
                self._s0[i].copy_(x0)
                self._s1[i].copy_(X[3])
            if sketch:
                idx = self._idx[i] if self._idx is not None else self._block_index(i)
                self._acc[i].zero_().scatter_add_(0, idx, x0)  # measured: 2-3× faster than index_add_ on the CPU
        if stats:
            self._steps.append(int(step))
            self._last = self._derive()
            self._rows.append(self._last)
        if sketch:
            self._sk_steps.append(int(step))
            self._sk_rows.append(self.sketch.fold(self._skM @ self._acc).reshape(-1))

    def _derive(self) -> torch.Tensor:
        """Group sums of the blocks' products → one table row (groups × columns), on the device."""
        nv = len(self.directions)
        s = self._M @ self._R  # (groups, 8 + nv): [θ_{t-1}, u_{t-1}, θ_t, u_t] · θ_t, the same · u_t, ⟨v_j, u_t⟩
        tt, tu, uu_dot, uu, vu = s[:, 2], s[:, 4], s[:, 5], s[:, 7], s[:, 8:]
        un = uu.sqrt()
        cos = lambda a, b: (a / b).clamp(-1.0, 1.0)  # noqa: E731  (0/0 → NaN stays NaN)
        row = torch.cat([un[:, None], tt.sqrt()[:, None], cos(uu_dot, (uu * self._uu_prev).sqrt())[:, None],
                         cos(tu, (uu * self._tt_prev).sqrt())[:, None], vu, cos(vu, un[:, None] * self._vnorm)], 1)
        self._uu_prev, self._tt_prev = uu, tt
        return row.reshape(-1)

    def drain(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Rows gathered since the last drain, moved to the host: statistics (n, 1 + groups ×
        columns) and sketches (n, 1 + sketch groups × k), each with the step first; None if none."""
        out = []
        for steps, rows in ((self._steps, self._rows), (self._sk_steps, self._sk_rows)):
            if not steps:
                out.append(None)
                continue
            vals = torch.stack(rows).cpu().numpy()
            out.append(np.column_stack([np.asarray(steps, dtype=np.float64), vals]))
            steps.clear()
            rows.clear()
        if out[0] is not None and self.listeners:
            frame = to_frame(out[0], self.groups, self.columns)
            for fn in self.listeners:
                fn(frame)
        return out[0], out[1]

    def last_row(self) -> dict[str, dict[str, float]]:
        """The latest step's statistics as {group: {column: value}} (synchronises the device)."""
        if self._last is None:
            return {}
        vals = self._last.cpu().numpy().reshape(len(self.groups), -1)
        return {g: dict(zip(self.columns, map(float, vals[i]))) for i, g in enumerate(self.groups)}

    def manifest_entry(self) -> dict:
        return {"file": STEPS_FILE, "groups": self.groups, "columns": self.columns,
                "n_params": {g: self.n_params[g] for g in self.groups}, "directions": list(self.directions),
                "update_param_cos": "cos(θ_t − θ_{t-1}, θ_{t-1})"}


def to_frame(rows: np.ndarray, groups: list[str], columns: list[str]) -> pd.DataFrame:
    """Wide rows (n, 1 + groups × columns) → the long table: one row per (step, group)."""
    n, G = len(rows), len(groups)
    vals = rows[:, 1:].reshape(n, G, len(columns)).reshape(n * G, len(columns))
    df = pd.DataFrame(vals, columns=columns)
    df.insert(0, "group", np.tile(np.asarray(groups, dtype=object), n))
    df.insert(0, "step", np.repeat(rows[:, 0].astype(np.int64), G))
    return df


def read_step_table(run_dir: str | Path) -> pd.DataFrame:
    """The step statistics a Recorder wrote beside ``run_dir``: one row per (step, group), columns
    step, group and :attr:`StepStats.columns`. Raises if the run recorded none."""
    run_dir = Path(run_dir)
    entry = read_manifest(run_dir).get("step_stats")
    if not entry:
        raise TrajectoryError(f"{run_dir}: the run recorded no step statistics (pass step_stats= to the Recorder)")
    rows = read_rows(run_dir / entry["file"], 1 + len(entry["groups"]) * len(entry["columns"]))
    return to_frame(rows, entry["groups"], entry["columns"])


class StepLog:
    """A Recorder's step-level outputs: :class:`StepStats` plus the two row tables beside the run
    (``steps.f64``: statistics every step; ``sketch.f64``: Φθ_t every ``every``-th step), their
    manifest entries, and resume: the first step after a restart drops the rows it will redo."""

    def __init__(self, run_dir: Path, manifest: dict, tensors, *, step_stats=None, directions=None, sketch=None,
                 new_run: bool, start_step: int = 0, fsync: bool = False):
        from .rows import RowFile
        from .sketch import SKETCH_FILE

        groups = (["all"] if step_stats is True else [step_stats] if isinstance(step_stats, str)
                  else list(step_stats or []))
        if directions and not groups:
            raise ValueError("directions= needs step_stats= (the projections are step statistics)")
        sk_opts = _sketch_options(sketch)
        layout = LiveLayout(tensors, groups=manifest["groups"], meta=manifest["meta"], source=str(run_dir))
        cs = CountSketch(sk_opts["k"], seed=sk_opts["seed"]) if sk_opts else None
        self.stats = StepStats(layout, groups=groups, directions=directions, sketch=cs,
                               sketch_groups=sk_opts["groups"] if sk_opts else ())
        self.every = sk_opts["every"] if sk_opts else 0
        self.files = []
        if groups:
            _set_entry(run_dir, manifest, "step_stats", self.stats.manifest_entry(), ("groups", "columns"))
            self.files.append(RowFile(run_dir / STEPS_FILE, 1 + len(self.stats.groups) * len(self.stats.columns),
                                      fsync=fsync))
        else:
            self.files.append(None)
        if cs is not None:
            entry = cs.manifest_entry(every=self.every, groups={g: self.stats.n_params[g] for g in self.stats.sketch_groups})
            _set_entry(run_dir, manifest, "sketch", entry, ("kind", "k", "seed", "groups"))
            self.files.append(RowFile(run_dir / SKETCH_FILE, 1 + cs.k * len(self.stats.sketch_groups), fsync=fsync))
        else:
            self.files.append(None)
        self.stats.reset()
        self._first = True
        if new_run:
            self._truncate(-(1 << 62))
            if cs is not None:
                self.stats.update(start_step, stats=False, sketch=True)  # Φθ_0

    def _truncate(self, step: int) -> None:
        for f in self.files:
            if f is not None:
                f.truncate_from(step)

    def update(self, step: int) -> None:
        """After the optimizer step that produced θ_step."""
        if self._first:
            self._truncate(step)
            self._first = False
        self.stats.update(step, stats=True, sketch=bool(self.every) and step % self.every == 0)

    def flush(self) -> None:
        """Move the rows gathered so far to the tables (before the checkpoints handed off with
        them are listed, so a listed checkpoint's steps are always in the table)."""
        for f, rows in zip(self.files, self.stats.drain()):
            if f is not None and rows is not None:
                f.append(rows)

    def close(self) -> None:
        self.flush()
        for f in self.files:
            if f is not None:
                f.close()


def _sketch_options(sketch) -> dict | None:
    """``sketch=``: None/False, k (int), or {"k", "seed", "every", "groups"}."""
    from .sketch import DEFAULT_K

    if sketch is None or sketch is False:
        return None
    opts = {"k": DEFAULT_K, "seed": 0, "every": 1, "groups": ["all"]}
    if sketch is True:
        return opts
    if isinstance(sketch, int):
        return {**opts, "k": sketch}
    if not isinstance(sketch, Mapping) or set(sketch) - set(opts):
        raise ValueError(f"sketch={sketch!r}: expected k (an int) or a dict with keys {', '.join(opts)}")
    opts.update(sketch)
    if int(opts["every"]) < 1:
        raise ValueError(f"sketch every={opts['every']}: must be a positive number of steps")
    opts["groups"] = [opts["groups"]] if isinstance(opts["groups"], str) else list(opts["groups"])
    return opts


def _set_entry(run_dir: Path, manifest: dict, key: str, entry: dict, must_match) -> None:
    old = manifest.get(key)
    if old is not None and any(old.get(k) != entry[k] for k in must_match):
        k = next(k for k in must_match if old.get(k) != entry[k])
        raise TrajectoryError(f"{run_dir}: cannot resume: the run's {key} were recorded with {k}={old.get(k)!r}, "
                              f"this Recorder asks for {entry[k]!r}; pass fresh=True to start the run over")
    manifest[key] = entry
