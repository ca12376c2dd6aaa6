"""Directional exploration against generalisation, over every digits run the book trains (page 12).

The book's pages train many small classifiers on scikit-learn's digits (grids, batch sizes,
freezes, dead ends, seeds). :func:`collect_runs` finds the finished ones in a runs folder; for
each, :func:`final_model` rebuilds the network at its last checkpoint and
:func:`generalisation_table` scores it on a shifted copy of its test split (:func:`rotated`: digits
turned by a fixed angle, half clockwise, half anticlockwise). :func:`rank_correlation` gives
Spearman's ρ between two columns with a percentile bootstrap interval over runs.

Runs record parameters only, not BatchNorm's running statistics, so a rebuilt network's
BatchNorm layers are re-estimated on the training split (one pass in training mode, cumulative
average) before it is scored; the clean accuracy is re-measured the same way, so the shift's
cost compares like with like.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..gram import gram
from ..hallmarks import hallmark_table
from ..manifest import TrajectoryError
from ..sources import open_trajectory
from .data import TensorData
from .runs import build_model, load_data


def rotated(data: TensorData, degrees: float) -> TensorData:
    """``data`` with its test images turned by ``degrees`` (even-indexed images clockwise,
    odd-indexed anticlockwise), bilinear, the background filled with each image's own minimum
    (the standardised blank); training split unchanged."""
    x = data.x_test
    sign = torch.where(torch.arange(len(x)) % 2 == 0, -1.0, 1.0)
    a = torch.deg2rad(torch.tensor(float(degrees))) * sign
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    turned = F.grid_sample(x - background, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return TensorData(data.x_train, data.y_train, turned + background, data.y_test, data.num_classes)


def collect_runs(runs_dir, *, pages) -> list[Path]:
    """Finished classification runs on digits in ``runs_dir`` whose name starts with one of
    ``pages`` (notebook names or their number prefixes), sorted by name. Raises naming the
    pages that have none (they have not run here: page 12 reads, never trains, their runs).
    Every finished run in the folder counts, older configurations of a page included: a folder
    shared by builds at several settings gives a mixed table (its ``run`` column names them)."""
    prefixes = tuple(f"{p.split('-')[0]}-" for p in pages)
    out = []
    for config_path in sorted(Path(runs_dir).glob("*/config.json")):
        run = config_path.parent
        if not run.name.startswith(prefixes) or not (run / "history.csv").is_file():
            continue
        config = json.loads(config_path.read_text())
        if config.get("task") == "classification" and config.get("dataset") == "digits":
            out.append(run)
    missing = [p for p in prefixes if not any(r.name.startswith(p) for r in out)]
    if missing:
        names = " ".join(p.rstrip("-") for p in missing)
        raise FileNotFoundError(f"{runs_dir}: no finished digits runs of page(s) {names}; execute them first "
                                f"(python -m trajlib.paper reproduce --only {names} ...)")
    return out


def final_model(run_dir, data: TensorData | None = None) -> tuple[torch.nn.Module, dict]:
    """The network of a finished run at its last checkpoint, BatchNorm re-estimated on the
    training split; returns (model in eval mode, the run's config)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    model = build_model(config["model"], seed=config["seed"], dataset=config["dataset"], **config["model_kwargs"])
    traj = open_trajectory(run_dir)
    try:
        final = int(pd.read_csv(run_dir / "history.csv")["step"].iloc[-1])
        if int(traj.steps[-1]) != final:
            raise TrajectoryError(f"{run_dir}: last checkpoint is step {traj.steps[-1]}, training ended at {final}")
        named = dict(model.named_parameters())
        missing = [n for n in named if n not in traj.names]
        if missing:
            raise TrajectoryError(f"{run_dir}: last checkpoint lacks parameters {missing[:3]}")
        with torch.no_grad():
            for name, p in named.items():
                p.copy_(torch.from_numpy(np.ascontiguousarray(traj.tensor(len(traj.checkpoints) - 1, name)))
                        .reshape(p.shape))
    finally:
        traj.close()
    data = data if data is not None else load_data(config["dataset"], seed=config["seed"])
    recalibrate_batchnorm(model, data)
    return model.eval(), config


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, data: TensorData, *, batch_size: int | None = None) -> torch.nn.Module:
    """Re-estimate every BatchNorm layer's running mean and variance on the training split (one
    pass in training mode, cumulative average; by default one batch of the whole split, so the
    statistics are the split's own); a model without BatchNorm is left as it is."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the mean over the pass's batches
    model.train()
    batch_size = batch_size or len(data.y_train)
    for i in range(0, len(data.y_train), batch_size):
        model(data.x_train[i: i + batch_size])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (eval mode) on (x, y)."""
    model.eval()
    correct = sum(int((model(x[i: i + batch_size]).argmax(1) == y[i: i + batch_size]).sum())
                  for i in range(0, len(y), batch_size))
    return correct / len(y)


def generalisation_table(run_dirs, *, degrees: float) -> pd.DataFrame:
    """One row per run: page (number prefix), run (folder name), seed, MDS of all parameters,
    the history's final test accuracy, and the clean and rotated test accuracy of the
    BatchNorm-recalibrated final network."""
    rows, data_by_seed = [], {}
    for run in run_dirs:
        run = Path(run)
        seed = json.loads((run / "config.json").read_text())["seed"]
        if seed not in data_by_seed:
            data = load_data("digits", seed=seed)
            data_by_seed[seed] = (data, rotated(data, degrees))
        data, turned = data_by_seed[seed]
        model, config = final_model(run, data)
        history = pd.read_csv(run / "history.csv")
        traj = open_trajectory(run)
        try:
            mds = float(hallmark_table(gram(traj, progress=False), ["all"]).loc["all", "mds"])
        finally:
            traj.close()
        rows.append({"page": run.name.split("-")[0], "run": run.name, "seed": seed, "mds": mds,
                     "final_accuracy": float(history["test_accuracy"].iloc[-1]),
                     "clean_accuracy": accuracy(model, data.x_test, data.y_test),
                     "shifted_accuracy": accuracy(model, turned.x_test, turned.y_test)})
    return pd.DataFrame(rows)


def rank_correlation(x, y, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Spearman's ρ between ``x`` and ``y`` (pairs with a NaN dropped) and its percentile
    bootstrap interval over pairs (``n_boot`` resamples under ``seed``; resamples with a constant
    column skipped), every ρ rounded to 12 decimals; an interval that misses the estimate is
    widened to hold it. Returns {rho, low, high, n}; fewer than 4 pairs (or no usable resample):
    NaN bounds."""
    from scipy.stats import rankdata

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)

    def rho(a, b):
        ra, rb = rankdata(a), rankdata(b)
        sa, sb = ra.std(), rb.std()
        if sa == 0 or sb == 0:
            return math.nan
        return round(float(np.mean((ra - ra.mean()) * (rb - rb.mean())) / (sa * sb)), 12)  # ±1 stays exact

    estimate = rho(x, y) if n >= 2 else math.nan
    if n < 4 or not np.isfinite(estimate):
        return {"rho": estimate, "low": math.nan, "high": math.nan, "n": n}
    rng = np.random.default_rng(seed)
    boots = np.array([rho(x[i], y[i]) for i in rng.integers(0, n, size=(n_boot, n))])
    boots = boots[np.isfinite(boots)]
    if len(boots) == 0:
        return {"rho": estimate, "low": math.nan, "high": math.nan, "n": n}
    low, high = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    # a percentile interval can miss the estimate (small, tied samples): widened to hold it
    return {"rho": estimate, "low": float(min(low, estimate)), "high": float(max(high, estimate)), "n": n}
