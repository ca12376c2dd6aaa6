"""Training inside the span of the early trajectory's top principal directions (page 12).

Is the trajectory redundant enough that, after some epochs, the rest of training can happen in a
handful of directions? A full run is recorded densely over its first ``from_epoch`` epochs;
:func:`early_basis` takes the top-k centred principal directions of those checkpoints
(:func:`trajlib.pca.trajectory_pca`, then :func:`trajlib.pca.directions`: unit, orthogonal,
P-dimensional). :func:`run_subspace` retrains the same seed, identical to the full run up to
``from_epoch``, then trains only k coefficients c: θ = θ_K + Vᵀ c with V (k, P) the directions.
The optimiser is SGD on c with the projected gradient V (∇L + λθ) (weight decay coupled, as in
the full run, so momentum acts on the projection of what the full run's momentum would see).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..gram import gram
from ..pca import directions, read_directions, trajectory_pca
from ..sources import open_trajectory


def early_basis(run_dir, *, until_step: int, k: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The top-``k`` centred principal directions of the checkpoints of ``run_dir`` at steps ≤
    ``until_step`` (a recorded step): ({parameter name: (k, *shape) float64}, explained-variance ratios (k,)).
    The directions file is cached beside the run."""
    traj = open_trajectory(run_dir)
    try:
        if until_step not in set(int(s) for s in traj.steps):
            raise ValueError(f"{run_dir}: no checkpoint at step {until_step} (the switch); record at a step "
                             f"count that divides the steps per epoch")
        early = traj.select([i for i, s in enumerate(traj.steps) if s <= until_step])
        pca = trajectory_pca(gram(early, cache=False, progress=False), k=k)
        path = directions(early, pca, dtype="F64", progress=False)
    finally:
        traj.close()
    return read_directions(path).tensors, pca.explained_variance_ratio


class SubspaceStep:
    """SGD on the coefficients c of θ = θ_K + Vᵀ c, θ_K the model's parameters when built.

    ``basis``: {name: (k, *shape)} orthonormal directions covering every parameter of ``model``.
    Each :meth:`step` reads the parameters' gradients, adds ``weight_decay`` · θ, projects onto
    the directions, steps ``optimizer`` (over c) and writes θ_K + Vᵀ c back into the model (formed
    in float64 from θ_K each time, so rounding does not accumulate)."""

    def __init__(self, model: torch.nn.Module, basis: dict, *, lr: float, momentum: float, weight_decay: float):
        self.params = list(model.named_parameters())
        missing = [n for n, _ in self.params if n not in basis]
        if missing:
            raise ValueError(f"the subspace basis lacks parameters {missing[:3]} (of {len(missing)})")
        k = next(iter(basis.values())).shape[0]
        device = self.params[0][1].device
        self.V = torch.cat([basis[n].reshape(k, -1).double() for n, _ in self.params], dim=1).to(device)  # (k, P)
        self.theta_k = self._flat(p.detach() for _, p in self.params)
        self.c = torch.zeros(k, dtype=torch.float64, device=device, requires_grad=True)
        self.weight_decay = weight_decay
        self.optimizer = torch.optim.SGD([self.c], lr=lr, momentum=momentum)

    @staticmethod
    def _flat(tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1).double() for t in tensors])

    def theta(self) -> torch.Tensor:
        """θ_K + Vᵀ c, float64 (P,)."""
        return self.theta_k + self.c.detach() @ self.V

    @torch.no_grad()
    def step(self) -> None:
        theta = self.theta()
        grad = self._flat(p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self.params)
        self.c.grad = self.V @ (grad + self.weight_decay * theta)
        self.optimizer.step()
        theta, at = self.theta(), 0
        for _, p in self.params:
            p.copy_(theta[at: at + p.numel()].reshape(p.shape))
            p.grad = None
            at += p.numel()


def run_subspace(runs_dir, full, *, k: int, from_epoch: int, name: str, data_root=None, device="cpu",
                 num_workers: int = 0, **train_kwargs):
    """Retrain ``full`` (a finished :class:`~trajlib.paper.runs.Run`) with the same config, then
    from ``from_epoch`` on in the top-``k`` directions of its checkpoints up to that epoch.
    The run's config names the full run's folder and the subspace; reused when finished. The
    explained-variance ratios of the k directions are kept in the run's ``subspace.json``."""
    from .runs import _cached, _finish, _run_dir, build_model, load_data
    from .train import train_classifier

    base = {key: v for key, v in full.config.items() if key not in ("task", "model", "model_kwargs", "dataset", "seed")}
    base.update(train_kwargs)
    config = {**full.config, **train_kwargs,
              "subspace": {"k": k, "from_epoch": from_epoch, "basis_of": Path(full.run_dir).name}}
    run_dir = _run_dir(runs_dir, name, config)
    cached = _cached(run_dir, config)
    if cached is not None:
        return cached
    history = full.history
    until = int(history.loc[history["epoch"] == from_epoch, "step"].iloc[0])
    basis, ratio = early_basis(full.run_dir, until_step=until, k=k)
    net = build_model(full.config["model"], seed=full.config["seed"], dataset=full.config["dataset"],
                      **full.config["model_kwargs"])
    data = load_data(full.config["dataset"], seed=full.config["seed"], data_root=data_root)
    meta = {"config": config, "explained_variance_ratio": ratio.tolist()}
    history = train_classifier(net, data, run_dir=run_dir, seed=full.config["seed"], device=device,
                               num_workers=num_workers, meta=meta,
                               subspace={"from_epoch": from_epoch, "basis": basis}, **base)
    (run_dir / "subspace.json").write_text(json.dumps({"explained_variance_ratio": ratio.tolist()}))
    return _finish(run_dir, config, history)


def redundancy_sweep(runs_dir, *, seeds, sizes, from_epoch: int, name: str, **common) -> pd.DataFrame:
    """Per seed: a full run, BatchNorm alone trained from ``from_epoch`` (page 07's freeze) and,
    for each k in ``sizes``, the top-k span of the full run's early trajectory from that epoch.
    One row per (seed, label): final accuracy, accuracy at the switch (the end of ``from_epoch``),
    parameters trained after the switch, and the share of the early trajectory's variance the k
    directions hold. ``common``: keyword
    arguments of :func:`~trajlib.paper.runs.run_classification` (SGD)."""
    from .models import count_parameters
    from .runs import build_model, run_classification

    shape = build_model(common["model"], seed=0, dataset=common.get("dataset", "digits"), **common.get("model_kwargs", {}))
    n_all, n_bn = count_parameters(shape), count_parameters(shape, bn_only=True)
    def at_switch(run) -> float:
        h = run.history
        return float(h.loc[h["epoch"] == from_epoch, "test_accuracy"].iloc[0])

    rows = []
    for seed in seeds:
        full = run_classification(runs_dir, name=name, seed=seed, **common)
        frozen = run_classification(runs_dir, name=name, seed=seed, freeze_epoch=from_epoch, **common)
        rows += [{"seed": seed, "label": "full", "k": math.nan, "trained": n_all, "explained": math.nan,
                  "final_accuracy": full.final_accuracy, "switch_accuracy": at_switch(full)},
                 {"seed": seed, "label": "BatchNorm only", "k": math.nan, "trained": n_bn, "explained": math.nan,
                  "final_accuracy": frozen.final_accuracy, "switch_accuracy": at_switch(frozen)}]
        keep = {key: common[key] for key in ("data_root", "device", "num_workers") if key in common}
        for k in sizes:
            r = run_subspace(runs_dir, full, k=k, from_epoch=from_epoch, name=name, **keep)
            ratio = json.loads((r.run_dir / "subspace.json").read_text())["explained_variance_ratio"]
            rows.append({"seed": seed, "label": f"k = {k}", "k": k, "trained": k, "explained": float(sum(ratio)),
                         "final_accuracy": r.final_accuracy, "switch_accuracy": at_switch(r)})
    return pd.DataFrame(rows)
