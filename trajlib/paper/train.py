"""Minimal training loops that record their trajectory with :class:`~trajlib.record.Recorder`.

* :func:`train_classifier`: SGD with momentum, weight decay and a per-step learning-rate
  schedule on in-memory tensors or a torchvision dataset; checkpoints once per epoch (or every
  ``record_every`` steps); optional BatchNorm-only training from ``freeze_epoch`` (notebook 07).
* :func:`train_char_lm`: AdamW on random windows of a character corpus, recorded on a
  Pythia-like log+linear schedule (notebooks 04, 05).

Both return the per-epoch (or per-evaluation) history as a DataFrame.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

with warnings.catch_warnings():  # tqdm.auto warns in kernels without ipywidgets (the `lab` extra has them)
    warnings.filterwarnings("ignore", message="IProgress not found")
    from tqdm.auto import tqdm

from .data import CharCorpus, TensorData
from ..record import Recorder, batchnorm_parameters, log_linear_steps


def lr_at(step: int, total: int, *, lr: float, schedule: str, warmup: int = 0) -> float:
    """Learning rate at ``step`` of ``total``: "cosine" (to 0), "step" (×0.1 at 50% and 75%),
    or "constant"; a linear warm-up over the first ``warmup`` steps."""
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    frac = step / max(1, total)
    if schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * frac))
    if schedule == "step":
        return lr * (0.1 ** ((frac >= 0.5) + (frac >= 0.75)))
    if schedule == "constant":
        return lr
    raise ValueError(f"unknown schedule {schedule!r}; valid: cosine, step, constant")


def _batches(data, batch_size: int, generator: torch.Generator, *, train: bool, num_workers: int = 0):
    if isinstance(data, TensorData):
        x, y = (data.x_train, data.y_train) if train else (data.x_test, data.y_test)
        order = torch.randperm(len(y), generator=generator) if train else torch.arange(len(y))
        for i in range(0, len(y), batch_size):
            idx = order[i: i + batch_size]
            if train and len(idx) < 2:  # BatchNorm needs two samples
                continue
            yield x[idx], y[idx]
    else:
        train_set, test_set = data
        loader = torch.utils.data.DataLoader(train_set if train else test_set, batch_size=batch_size,
                                             shuffle=train, generator=generator, drop_last=train,
                                             num_workers=num_workers)
        yield from loader


def _steps_per_epoch(data, batch_size: int) -> int:
    if isinstance(data, TensorData):
        n = len(data.y_train)
        return n // batch_size + (n % batch_size >= 2)
    return len(data[0]) // batch_size


@torch.no_grad()
def evaluate(model: nn.Module, data, *, batch_size: int = 512, device="cpu") -> float:
    """Top-1 accuracy on the test split, in [0, 1]."""
    model.eval()
    correct = total = 0
    for x, y in _batches(data, batch_size, torch.Generator(), train=False):
        pred = model(x.to(device)).argmax(1)
        correct += (pred.cpu() == y).sum().item()
        total += len(y)
    model.train()
    return correct / total


def bn_only(model: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter except BatchNorm scales and shifts; return the trainable ones."""
    keep = {id(p) for p in batchnorm_parameters(model).values()}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return trainable(model)


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should update (``requires_grad``), in model order."""
    return [p for p in model.parameters() if p.requires_grad]


def _lr_groups(model: nn.Module, params: list[nn.Parameter], *, weight_decay: float, optimizer: str):
    """``params`` as optimizer groups with an ``lr_mult`` each when the model asks for per-parameter
    rates (``model.lr_multipliers()``, e.g. the MLP's μP for SGD); otherwise the plain list. A
    group's coupled weight decay is divided by its multiplier, so lr × decay, the shrink per step,
    stays the base one (as the ``mup`` package's MuSGD does)."""
    groups = getattr(model, "lr_multipliers", None)
    groups = groups() if groups is not None else [(params, 1.0)]
    if all(mult == 1.0 for _, mult in groups):
        return params
    if optimizer != "sgd":
        raise ValueError(f"{type(model).__name__}'s learning-rate multipliers are SGD's (μP for SGD); "
                         f"optimizer={optimizer!r} would apply them unchanged")
    keep = {id(p) for p in params}
    out = [{"params": [p for p in ps if id(p) in keep], "lr_mult": mult, "weight_decay": weight_decay / mult}
           for ps, mult in groups]
    if sum(len(g["params"]) for g in out) != len(params):
        raise ValueError(f"{type(model).__name__}.lr_multipliers() does not cover each trainable parameter once")
    return [g for g in out if g["params"]]


def train_classifier(model: nn.Module, data, *, run_dir: str | Path, epochs: int, batch_size: int = 64,
                     lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 5e-4,
                     optimizer: str = "sgd", schedule: str = "cosine", warmup_epochs: float = 0.0, record_every: int | None = None,
                     freeze_epoch: int | None = None, seed: int = 0, device="cpu", num_workers: int = 0,
                     meta: dict | None = None, step_stats: bool | list = False,
                     directions: dict | None = None, sketch: int | dict | None = None,
                     subspace: dict | None = None) -> pd.DataFrame:
    """Train with SGD (or AdamW) and record θ_t into ``run_dir``; returns one row per epoch
    (epoch, step, lr, train_loss, test_accuracy, seconds).

    ``optimizer``: "sgd" (``momentum``, coupled ``weight_decay``) or "adamw" (``momentum`` is its
    β1, β2 = 0.999, ``weight_decay`` decoupled: each step shrinks θ by lr · weight_decay).
    ``data``: :class:`~trajlib.data.TensorData` or a (train, test) pair of datasets.
    ``freeze_epoch``: from this epoch on only BatchNorm parameters train (all are still recorded).
    ``step_stats``/``directions``: exact statistics of every step beside the run
    (:mod:`trajlib.steps`; notebooks 02, 03); ``sketch``: a sketch of every step
    (:mod:`trajlib.sketch`; notebook 01's dense map).
    ``subspace``: {"from_epoch": K, "basis": {name: (k, *shape) orthonormal directions}}: from
    epoch K on only the coefficients of θ_K + Vᵀ c train (SGD only; :mod:`trajlib.paper.subspace`).
    """
    model.to(device).train()
    spe = _steps_per_epoch(data, batch_size)
    total = epochs * spe
    every = record_every or spe
    trainable_params = trainable(model)
    params = _lr_groups(model, trainable_params, weight_decay=weight_decay, optimizer=optimizer)
    if optimizer == "sgd":
        make_opt = lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum, weight_decay=weight_decay)  # noqa: E731
    elif optimizer == "adamw":
        make_opt = lambda ps: torch.optim.AdamW(ps, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)  # noqa: E731
    else:
        raise ValueError(f"optimizer={optimizer!r}: expected 'sgd' or 'adamw'")
    if subspace is not None and (optimizer != "sgd" or freeze_epoch is not None or params is not trainable_params):
        raise ValueError("subspace training needs optimizer='sgd', no freeze_epoch and one learning rate for "
                         "every parameter")
    opt, sub = make_opt(params), None
    gen = torch.Generator().manual_seed(seed)
    rows, step, t0 = [], 0, time.time()
    run_meta = {"task": "classification", "epochs": epochs, "batch_size": batch_size, "schedule": schedule,
                "freeze_epoch": freeze_epoch, **(meta or {})}
    with Recorder(model, run_dir, every=every, optimizer=opt, seed=seed, meta=run_meta,
                  step_stats=step_stats or None, directions=directions, sketch=sketch) as rec:
        for epoch in tqdm(range(epochs), desc=f"train {Path(run_dir).name}", unit="epoch", leave=False,
                           disable=None):
            if freeze_epoch is not None and epoch == freeze_epoch:
                opt = make_opt(bn_only(model))
            if subspace is not None and epoch == subspace["from_epoch"]:
                from .subspace import SubspaceStep

                sub = SubspaceStep(model, subspace["basis"], lr=lr, momentum=momentum, weight_decay=weight_decay)
                opt = sub.optimizer
            losses = []
            for x, y in _batches(data, batch_size, gen, train=True, num_workers=num_workers):
                for group in opt.param_groups:
                    group["lr"] = group.get("lr_mult", 1.0) * lr_at(step, total, lr=lr, schedule=schedule,
                                                                     warmup=int(warmup_epochs * spe))
                loss = F.cross_entropy(model(x.to(device)), y.to(device))
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{run_dir}: loss is {loss.item()} at step {step} (epoch {epoch}); "
                                             f"lower the learning rate (lr={lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                sub.step() if sub is not None else opt.step()
                step += 1
                losses.append(loss.item())
                rec.step(step, epoch=step / spe)
            rows.append({"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"] / opt.param_groups[0].get("lr_mult", 1.0),
                         "train_loss": float(np.mean(losses)),
                         "test_accuracy": evaluate(model, data, device=device), "seconds": time.time() - t0})
    return pd.DataFrame(rows)


def train_char_lm(model: nn.Module, corpus: CharCorpus, *, run_dir: str | Path, steps: int, batch_size: int = 32,
                  context: int = 64, lr: float = 1e-3, weight_decay: float = 0.1, warmup: int = 0,
                  record_every: int = 100, seed: int = 0, device="cpu", meta: dict | None = None) -> pd.DataFrame:
    """Train a causal LM (``model(input_ids).logits``) with AdamW and a cosine schedule; record
    on :func:`~trajlib.record.log_linear_steps`. Returns (step, lr, train_loss, valid_loss) rows
    at each recorded step."""
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    ids = corpus.train
    schedule = log_linear_steps(steps, every=record_every)
    config = getattr(model, "config", None)
    run_meta = {"task": "char_lm", "steps": steps, "context": context, "batch_size": batch_size,
                "config": config.to_dict() if config is not None else None, **(meta or {})}
    rows = []
    with Recorder(model, run_dir, steps=schedule, optimizer=opt, seed=seed, meta=run_meta) as rec:
        for step in tqdm(range(1, steps + 1), desc=f"train {Path(run_dir).name}", unit="step", leave=False,
                         disable=None):
            for group in opt.param_groups:
                group["lr"] = lr_at(step - 1, steps, lr=lr, schedule="cosine", warmup=warmup)
            start = torch.randint(0, len(ids) - context - 1, (batch_size,), generator=gen)
            window = torch.stack([ids[s: s + context + 1] for s in start.tolist()]).to(device)
            logits = model(window[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if rec.step(step):
                rows.append({"step": step, "lr": opt.param_groups[0]["lr"], "train_loss": loss.item(),
                             "valid_loss": lm_loss(model, corpus.valid, context=context, device=device)})
    return pd.DataFrame(rows)


@torch.no_grad()
def lm_loss(model: nn.Module, ids: torch.Tensor, *, context: int = 64, max_windows: int = 64, device="cpu") -> float:
    """Mean next-character cross-entropy (nats) over up to ``max_windows`` disjoint windows of ``ids``."""
    model.eval()
    n = min(max_windows, (len(ids) - 1) // context)
    x = ids[: n * context + 1]
    inp = x[:-1].view(n, context).to(device)
    tgt = x[1:].view(n, context).to(device)
    logits = model(inp).logits
    model.train()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1)).item()
