"""The oscillation mechanism measured on a trained network (notebook 06's second half).

* :func:`top_eigenvector`: the top eigenpair of the training-loss Hessian by power iteration on
  Hessian-vector products (``torch.func``: forward-mode over reverse-mode, no new dependency).
* :func:`oscillation_window`: continue training a model from a checkpoint for a window of steps
  with a given optimizer setting, recording exact step statistics with the eigenvector as a
  fixed direction (:mod:`trajlib.steps`), and return the per-step projections ⟨u_t, v⟩.
* :func:`oscillation_summary`: sign flips and obtuse consecutive projections of such a window.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..record import Recorder


def top_eigenvector(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, iters: int = 100, seed: int = 0,
                    tol: float = 1e-4) -> tuple[float, dict[str, torch.Tensor]]:
    """Top eigenvalue (largest |λ|) and unit eigenvector {name: tensor} of the Hessian of the
    cross-entropy of ``model`` on the batch (x, y), w.r.t. its trainable parameters.

    BatchNorm normalises with the batch's statistics, as in training, without updating its
    running statistics (they are switched off for the computation), so the model is unchanged.
    Stops when successive Rayleigh quotients agree within ``tol`` (relative) or after ``iters``
    Hessian-vector products. Shortcut: plain power iteration converges as (|λ₂|/|λ₁|)^iters, so
    with a close second eigenvalue the vector is only approximate (tests/test_hessian.py checks
    it against a dense Hessian); Lanczos would converge faster."""
    from torch.func import functional_call, grad, jvp

    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    model.train()
    for m in norms:  # batch statistics, no in-place update of running ones (torch.func forbids it)
        m.track_running_stats = False

    def loss(ps):
        return F.cross_entropy(functional_call(model, ps, (x,), strict=False), y)

    g = grad(loss)

    def hvp(v):
        return jvp(g, (params,), (v,))[1]

    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for n, p in params.items()}
    norm = torch.sqrt(sum((t ** 2).sum() for t in v.values()))
    v = {n: t / norm for n, t in v.items()}
    lam = 0.0
    try:
        with warnings.catch_warnings():
            # torch's first jvp builds its decompositions with torch.jit.script, which warns about
            # its own deprecation: not something the caller can act on
            warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
            for _ in range(iters):
                hv = hvp(v)
                new = float(sum((hv[n] * v[n]).sum() for n in names))  # Rayleigh quotient
                norm = torch.sqrt(sum((t ** 2).sum() for t in hv.values()))
                v = {n: t / norm for n, t in hv.items()}
                if abs(new - lam) <= tol * abs(new):
                    lam = new
                    break
                lam = new
    finally:
        model.train(was_training)
        for m in norms:
            m.track_running_stats = True
    return lam, {n: t.detach() for n, t in v.items()}


def oscillation_window(model: nn.Module, batches, *, direction: dict[str, torch.Tensor], lr: float,
                       momentum: float, weight_decay: float, steps: int, warmup: int = 20,
                       run_dir: str | Path | None = None) -> pd.DataFrame:
    """Train ``model`` (in place) for ``warmup`` + ``steps`` SGD steps on ``batches`` (a list of
    (x, y), cycled) at a constant ``lr``; the last ``steps`` are recorded with exact step
    statistics and ``direction`` as the fixed direction "top". The warm-up fills the momentum
    buffer, which a checkpoint of our runs does not store. Returns the step table of group
    "all": step, step_norm, consecutive_update_cos, proj:top, cos:top, ..."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum,
                          weight_decay=weight_decay)
    model.train()

    def one(step):
        x, y = batches[step % len(batches)]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for step in range(warmup):
        one(step)
    with tempfile.TemporaryDirectory(prefix="trajlib-window-") as tmp:
        where = Path(run_dir) if run_dir is not None else Path(tmp)
        with Recorder(model, where, every=10**9, step_stats=["all"], directions={"top": direction}, fresh=True) as rec:
            for step in range(1, steps + 1):
                one(warmup + step)
                rec.step(step)
        from ..steps import read_step_table

        table = read_step_table(where)
    return table[table["group"] == "all"].reset_index(drop=True)


def oscillation_summary(proj: np.ndarray) -> dict[str, float]:
    """For per-step projections p_t = ⟨u_t, v⟩: the fraction of sign flips between consecutive
    steps (p_t p_{t-1} < 0; 0 for monotone drift, about 1 for period-2 oscillation), and the
    lag-1 autocorrelation of p (negative: consecutive projections point apart)."""
    p = np.asarray(proj, dtype=np.float64)
    if p.ndim != 1 or len(p) < 3:
        raise ValueError(f"need a 1-D series of at least 3 projections, got shape {p.shape}")
    flips = float(np.mean(p[1:] * p[:-1] < 0))
    c = p - p.mean()
    denom = float((c ** 2).sum())
    ac = float((c[1:] * c[:-1]).sum() / denom) if denom > 0 else float("nan")
    return {"sign_flip_fraction": flips, "lag1_autocorrelation": ac}
