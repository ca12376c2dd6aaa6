"""Reproducible runs from plain configs: train once, reuse forever.

A run is addressed by the hash of its config (model, data, optimiser, schedule, seed), so
re-executing a notebook re-reads finished runs instead of retraining, and two configs never
share a directory. A finished run holds ``config.json`` and ``history.csv`` beside its
checkpoints; an unfinished one (killed mid-training) is trained again from scratch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from . import data as datasets
from . import models
from .gram import gram
from .stats import GramStats
from .store import open_trajectory
from .train import train_char_lm, train_classifier

log = logging.getLogger("trajlib.experiment")

MODELS = {
    "small_cnn": models.SmallCNN, "cifar_resnet": models.CifarResNet, "resnet20": models.resnet20,
    "vgg": models.VGG, "mlp": models.MLP, "resnet50": models.resnet50,
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
    (run_dir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
    history.to_csv(run_dir / ".history.csv.tmp", index=False)
    (run_dir / ".history.csv.tmp").replace(run_dir / "history.csv")  # the completion marker
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


def build_model(name: str, *, seed: int, dataset: str, **kwargs) -> torch.nn.Module:
    """A model from :data:`MODELS`, initialised under ``seed``; input channels follow the dataset."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")
    if name in ("small_cnn", "cifar_resnet", "vgg") and "in_channels" not in kwargs:
        kwargs["in_channels"] = 1 if dataset == "digits" else 3
    if name == "resnet50" and dataset == "cifar10":
        kwargs.setdefault("num_classes", 10)
    torch.manual_seed(seed)
    return MODELS[name](**kwargs)


def run_classification(runs_dir, *, name: str, model: str, dataset: str = "digits", seed: int = 0,
                       model_kwargs: dict | None = None, data_root: str | None = None, device="cpu",
                       **train_kwargs) -> Run:
    """Train (or reuse) one classification run; ``train_kwargs`` go to :func:`train_classifier`."""
    config = {"task": "classification", "model": model, "model_kwargs": model_kwargs or {},
              "dataset": dataset, "seed": seed, **train_kwargs}
    run_dir = _run_dir(runs_dir, name, config)
    cached = _cached(run_dir, config)
    if cached is not None:
        return cached
    net = build_model(model, seed=seed, dataset=dataset, **(model_kwargs or {}))
    data = load_data(dataset, seed=seed, data_root=data_root)
    history = train_classifier(net, data, run_dir=run_dir, seed=seed, device=device,
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
