"""Reproducible runs and sweeps from plain configs: train once, reuse forever.

A run is addressed by the hash of its config (model, data, optimiser, schedule, seed), so
re-executing a notebook re-reads finished runs instead of retraining, and two configs never
share a directory. A finished run holds ``config.json`` and ``history.csv`` beside its
checkpoints; an unfinished one (killed mid-training) is trained again from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..gram import gram
from ..hallmarks import hallmark_table
from ..manifest import atomic_write
from ..sources import open_trajectory
from ..stats import GramStats
from ..steps import STEPS_FILE
from . import data as datasets
from . import models
from .train import train_char_lm, train_classifier

log = logging.getLogger("trajlib.paper.runs")

MODELS = {
    "small_cnn": models.SmallCNN, "cifar_resnet": models.CifarResNet, "resnet20": models.resnet20,
    "vgg": models.VGG, "vgg16": models.vgg16, "mlp": models.MLP, "resnet50": models.resnet50,
    "tiny_vit": models.TinyViT, "vit_b_16": models.vit_b_16,
}
DATASETS = ("digits", "cifar10", "imagenet")


@dataclass
class Run:
    """A finished training run: its directory, config and per-epoch (or per-eval) history."""

    run_dir: Path
    config: dict
    history: pd.DataFrame

    def trajectory(self):
        return open_trajectory(self.run_dir)

    def stats(self, groups=None, **kwargs) -> GramStats:
        """The Gram of this run (computed once, then read from the cache beside the run)."""
        traj = self.trajectory()
        try:
            return gram(traj, groups=groups, progress=False, **kwargs)
        finally:
            traj.close()

    def steps_table(self) -> pd.DataFrame:
        """The run's step statistics (runs trained with ``step_stats=True``)."""
        from ..steps import read_step_table

        return read_step_table(self.run_dir)

    @property
    def final_accuracy(self) -> float:
        return float(self.history["test_accuracy"].iloc[-1])


def _run_dir(runs_dir, name: str, config: dict) -> Path:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    return Path(runs_dir) / f"{name}-seed{config['seed']}-{digest}"


def _cached(run_dir: Path, config: dict) -> Run | None:
    done = run_dir / "history.csv"
    if done.is_file() and (run_dir / "config.json").is_file():
        return Run(run_dir, json.loads((run_dir / "config.json").read_text()), pd.read_csv(done))
    if run_dir.exists():
        log.warning("%s: unfinished run (no history.csv); training it again", run_dir)
        shutil.rmtree(run_dir)
    return None


def _finish(run_dir: Path, config: dict, history: pd.DataFrame) -> Run:
    atomic_write(run_dir / "config.json", json.dumps(config, indent=1, sort_keys=True).encode())
    atomic_write(run_dir / "history.csv", history.to_csv(index=False).encode())  # the completion marker
    return Run(run_dir, config, history)


def load_data(dataset: str, *, seed: int = 0, data_root: str | None = None):
    """``digits`` (embedded; TensorData), ``cifar10`` or ``imagenet`` (folders; (train, test) datasets)."""
    if dataset == "digits":
        return datasets.digits(seed=seed)
    if dataset == "cifar10":
        return datasets.cifar10(data_root, train=True), datasets.cifar10(data_root, train=False)
    if dataset == "imagenet":
        return datasets.imagenet(data_root, split="train"), datasets.imagenet(data_root, split="val")
    raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")


def build_model(name: str, *, seed: int, dataset: str, bn_init: float | None = None, **kwargs) -> torch.nn.Module:
    """A model from :data:`MODELS`, initialised under ``seed``; input channels follow the dataset.
    ``bn_init``: every BatchNorm scale set to this value after initialisation (0: notebook 09's
    dead initialisation, :func:`~trajlib.paper.models.set_bn_scale`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    if name in ("small_cnn", "cifar_resnet", "vgg", "vgg16", "tiny_vit") and "in_channels" not in kwargs:
        kwargs["in_channels"] = 1 if dataset == "digits" else 3
    if name == "tiny_vit" and dataset == "cifar10":
        kwargs.setdefault("image_size", 32)
        kwargs.setdefault("patch", 4)
    if name in ("resnet50", "vit_b_16") and dataset == "cifar10":
        kwargs.setdefault("num_classes", 10)
    if name == "mlp" and dataset == "digits":
        kwargs.setdefault("in_features", 64)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the caller's RNG is untouched
        torch.manual_seed(seed)
        model = MODELS[name](**kwargs)
    return model if bn_init is None else models.set_bn_scale(model, bn_init)


def run_classification(runs_dir, *, name: str, model: str, dataset: str = "digits", seed: int = 0,
                       model_kwargs: dict | None = None, data_root: str | None = None, device="cpu",
                       num_workers: int = 0, **train_kwargs) -> Run:
    """Train (or reuse) one classification run; ``train_kwargs`` go to :func:`train_classifier`
    and into the run's config (``device``, ``data_root`` and ``num_workers`` do not: they
    change where and how fast, not what is computed)."""
    config = {"task": "classification", "model": model, "model_kwargs": model_kwargs or {},
              "dataset": dataset, "seed": seed, **train_kwargs}
    run_dir = _run_dir(runs_dir, name, config)
    cached = _cached(run_dir, config)
    if cached is not None:
        return cached
    net = build_model(model, seed=seed, dataset=dataset, **(model_kwargs or {}))
    data = load_data(dataset, seed=seed, data_root=data_root)
    history = train_classifier(net, data, run_dir=run_dir, seed=seed, device=device, num_workers=num_workers,
                               meta={"config": config}, **train_kwargs)
    return _finish(run_dir, config, history)


def run_char_lm(runs_dir, *, name: str, width: int, layers: int, heads: int, context: int = 64, seed: int = 0,
                device="cpu", **train_kwargs) -> Run:
    """Train (or reuse) a tiny GPT-NeoX on the pydoc corpus; ``train_kwargs`` go to :func:`train_char_lm`."""
    config = {"task": "char_lm", "width": width, "layers": layers, "heads": heads, "context": context,
              "seed": seed, **train_kwargs}
    run_dir = _run_dir(runs_dir, name, config)
    cached = _cached(run_dir, config)
    if cached is not None:
        return cached
    corpus = datasets.char_corpus()
    net = models.tiny_gpt_neox(vocab_size=corpus.vocab_size, width=width, layers=layers, heads=heads,
                               context=context, seed=seed)
    history = train_char_lm(net, corpus, run_dir=run_dir, context=context, seed=seed, device=device,
                            **train_kwargs)
    return _finish(run_dir, config, history)


def momentum_weight_decay_grid(momentum: float, weight_decay: float) -> dict[str, dict]:
    """The 2 × 2 grid of notebook 02 (and 08, which reads 02's runs): label → SGD overrides."""
    return {
        "momentum + wd": dict(momentum=momentum, weight_decay=weight_decay),
        "momentum only": dict(momentum=momentum, weight_decay=0.0),
        "wd only": dict(momentum=0.0, weight_decay=weight_decay),
        "neither": dict(momentum=0.0, weight_decay=0.0),
    }


def adamw_grid(beta1: float, weight_decay: float, lr: float) -> dict[str, dict]:
    """Notebook 10's 2 × 2 grid for AdamW, β1 on/off × decoupled weight decay on/off: label →
    overrides of :func:`train_classifier` (``momentum`` is AdamW's β1)."""
    on = dict(optimizer="adamw", lr=lr)
    return {
        "β1 + wd": dict(on, momentum=beta1, weight_decay=weight_decay),
        "β1 only": dict(on, momentum=beta1, weight_decay=0.0),
        "wd only": dict(on, momentum=0.0, weight_decay=weight_decay),
        "neither": dict(on, momentum=0.0, weight_decay=0.0),
    }


def grid_order_margin(mds_by_seed: pd.DataFrame, both: str, singles: tuple[str, str], neither: str) -> pd.Series:
    """Per seed, the smaller margin of the MDS order both < each single < neither (positive:
    the order holds on that seed). Notebooks 02 and 10."""
    s = mds_by_seed[list(singles)]
    return np.minimum(s.min(axis=1) - mds_by_seed[both], mds_by_seed[neither] - s.max(axis=1))


SWEEP_COLUMNS = ("mds", "mds_full", "relative_mds", "update_mds", "mean_consecutive_update_cos",
                 "mean_update_param_cos", "straightness")
STEP_COLUMNS = ("step_consecutive_update_cos", "step_update_param_cos", "step_obtuse_fraction")


def step_summary(table: pd.DataFrame, group: str = "all") -> dict:
    """Step-level counterparts of the sweep's update hallmarks, from a run's step table: the
    mean over steps of cos(u_t, u_{t-1}) and of cos(u_t, θ_{t-1}), and the fraction of steps
    whose consecutive updates are obtuse (cos < 0)."""
    rows = table[table["group"] == group]
    cons = rows["consecutive_update_cos"].dropna()
    return {"step_consecutive_update_cos": float(cons.mean()),
            "step_update_param_cos": float(rows["update_param_cos"].mean()),
            "step_obtuse_fraction": float((cons < 0).mean())}


@dataclass
class Sweep:
    """Runs of several configs × seeds: ``table`` has one row per run (label, seed, hallmarks of
    ``group``, final accuracy), ``runs[(label, seed)]`` the runs, ``run_stats[(label, seed)]``
    their Grams (every group the sweep was asked for, from one pass each)."""

    table: pd.DataFrame
    runs: dict
    run_stats: dict

    def summary(self, columns=("mds", "relative_mds", "mean_consecutive_update_cos", "final_accuracy")) -> pd.DataFrame:
        """Mean and std over seeds per label (labels in sweep order)."""
        order = list(dict.fromkeys(self.table["label"]))
        out = self.table.groupby("label", sort=False)[list(columns)].agg(["mean", "std"])
        return out.loc[order]

    def by_seed(self, column: str) -> pd.DataFrame:
        """One column of the table as seeds × labels (labels in sweep order)."""
        order = list(dict.fromkeys(self.table["label"]))
        return self.table.pivot(index="seed", columns="label", values=column)[order]

    def stats(self, label, seed=None) -> GramStats:
        """The Grams of one run (the first seed by default)."""
        seed = self.table["seed"].iloc[0] if seed is None else seed
        return self.run_stats[(label, seed)]


def sweep(runs_dir, *, name: str, configs: dict, seeds, group: str = "all", groups=None,
          task: str = "classification", **common) -> Sweep:
    """Train (or reuse) every config × seed and tabulate the hallmarks of ``group``.

    ``configs``: label → keyword overrides of ``common`` (for :func:`run_classification`, or
    :func:`run_char_lm` with ``task="char_lm"``). ``groups``: every parameter group the caller
    will read (``group`` included), computed in one pass per run. Notebooks 02–05 and 07.
    """
    groups = list(dict.fromkeys([group, *(groups or [])]))
    run = run_classification if task == "classification" else run_char_lm
    rows, runs, run_stats = [], {}, {}
    for label, overrides in configs.items():
        for seed in seeds:
            r = run(runs_dir, name=name, seed=seed, **{**common, **overrides})
            stats = r.stats(groups)
            row = {"label": label, "seed": seed, **hallmark_table(stats, [group]).loc[group, list(SWEEP_COLUMNS)].to_dict(),
                   "n_params": stats.n_params[group], "run_dir": str(r.run_dir)}
            if "test_accuracy" in r.history:
                row["final_accuracy"] = r.final_accuracy
            if "valid_loss" in r.history:
                row["final_valid_loss"] = float(r.history["valid_loss"].iloc[-1])
            if (r.run_dir / STEPS_FILE).is_file():
                row.update(step_summary(r.steps_table(), group))
            rows.append(row)
            runs[(label, seed)], run_stats[(label, seed)] = r, stats
    return Sweep(pd.DataFrame(rows), runs, run_stats)


def per_run_table(sweeps: dict[str, Sweep], tag: str) -> pd.DataFrame:
    """The per-run tables of several sweeps stacked, each row's column ``tag`` naming its sweep's
    key, without the run folders (they name this machine's paths)."""
    tables = [s.table.assign(**{tag: key}) for key, s in sweeps.items()]
    return pd.concat(tables).drop(columns="run_dir").reset_index(drop=True)


def parting_epochs(a: Sweep, label_a: str, b: Sweep, label_b: str, *, band: float) -> list[float]:
    """Per seed, the epoch at which run ``label_a`` of ``a`` and run ``label_b`` of ``b`` (one
    initialisation) part, from their joint Gram (:func:`trajlib.joint.where_runs_part`); NaN
    for a seed whose runs never leave the band."""
    from ..joint import where_runs_part

    out = []
    for seed in dict.fromkeys(a.table["seed"]):
        st = gram([a.runs[(label_a, seed)].trajectory(), b.runs[(label_b, seed)].trajectory()],
                  cache=False, progress=False)
        step = where_runs_part(st, 0, 1, band=band)
        out.append(math.nan if step is None else float(dict(zip(st.steps, st.epochs))[step]))
    return out


def uniform_checkpoints(stats, every: int):
    """``stats`` (GramStats) read at the checkpoints whose step is a multiple of ``every`` only:
    a log+linear schedule without its dense early part (no re-reading, see GramStats.select)."""
    return stats.select([i for i, s in enumerate(stats.steps) if int(s) % every == 0])


def width_scaled_rate(width: int, *, base_lr: float, base_width: int, lr_width_exponent: float) -> float:
    """Page 04's learning-rate rule: base_lr · (base_width / width)^exponent."""
    return base_lr * (base_width / width) ** lr_width_exponent


def fixed_rate_family(parameters: dict) -> dict:
    """Page 04's parameters for its fixed-rate check: ``fixed_lr_widths`` all trained at the rate
    the width-scaled rule gives width ``fixed_lr_at`` (``base_lr`` when it is None). Where that
    width is in the family, its run is the family's own (same config, reused, not retrained)."""
    p = parameters
    at = p.get("fixed_lr_at") or p["base_width"]
    rate = width_scaled_rate(at, base_lr=p["base_lr"], base_width=p["base_width"], lr_width_exponent=p["lr_width_exponent"])
    return {**p, "widths": p["fixed_lr_widths"], "base_lr": rate, "lr_width_exponent": 0.0}


def char_lm_family(runs_dir, *, widths, seeds, groups, base_lr: float, base_width: int,
                   lr_width_exponent: float, name: str = "04-scale", **train_kwargs) -> dict:
    """Tiny GPT-NeoX models of the given ``widths`` trained here on the pydoc corpus, with
    lr = base_lr · (base_width / width)^exponent (Pythia shrinks the rate with size); run name
    ``name``. Returns {(width, seed): GramStats with ``groups``}."""
    configs = {w: dict(width=w, lr=width_scaled_rate(w, base_lr=base_lr, base_width=base_width,
                                                      lr_width_exponent=lr_width_exponent)) for w in widths}
    return sweep(runs_dir, name=name, task="char_lm", configs=configs, seeds=seeds, groups=groups,
                 **train_kwargs).run_stats


def deeper_models(parameters: dict, *, width: int, layers: int, seeds: int, steps: int | None = None,
                  groups, runs_dir="runs") -> dict:
    """Tiny GPT-NeoX models deeper than page 04's family (``layers`` layers at one ``width``),
    trained like that family otherwise (its learning-rate rule, heads, context, batch size,
    weight decay, cadence; ``steps`` defaults to its own); run name ``05-qkv-deep``. Notebook 05
    judges the middle-layer claim on them: a middle third of 12 layers is 4 layers, of 4 layers
    it is 2. Returns {(label, seed): GramStats with ``groups``}, label "<layers> layers"."""
    p = {k: parameters[k] for k in LM_TRAIN_KEYS}
    p.update(layers=layers, steps=p["steps"] if steps is None else steps)
    by_width = char_lm_family(runs_dir, widths=[width], seeds=range(seeds), groups=groups, base_lr=parameters["base_lr"],
                              base_width=parameters["base_width"], lr_width_exponent=parameters["lr_width_exponent"],
                              name="05-qkv-deep", **p)
    return {(f"{layers} layers", seed): st for (_, seed), st in by_width.items()}


LM_TRAIN_KEYS = ("layers", "heads", "context", "steps", "batch_size", "weight_decay", "record_every", "device")


def language_models(parameters: dict, *, groups, runs_dir="runs") -> tuple[dict, dict]:
    """The language-model family of notebooks 04 and 05 from page 04's parameters: tiny
    GPT-NeoX models trained here (``source="tiny"``) or Pythia checkpoints from the hub
    (``source="hub"``: ``sizes`` at every ``revision_every``-th linear revision).
    Returns ({(label, seed): GramStats with ``groups``}, {label: dropped duplicate revisions})."""
    from . import pythia

    p = parameters
    if p["source"] == "hub":
        return pythia.suite(p["sizes"], revision_every=p["revision_every"], groups=groups, device=p["device"],
                            cache_dir=p.get("hub_cache"))
    if p["source"] != "tiny":
        raise ValueError(f"source={p['source']!r}: expected 'tiny' or 'hub'")
    stats = char_lm_family(runs_dir, widths=p["widths"], seeds=range(p["seeds"]), groups=groups,
                           base_lr=p["base_lr"], base_width=p["base_width"],
                           lr_width_exponent=p["lr_width_exponent"], **{k: p[k] for k in LM_TRAIN_KEYS})
    return stats, {}
