"""Shared fixtures: synthetic runs written through the real Recorder, and a dense fp64 oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import trajlib


def module_with(shapes: dict[str, tuple[int, ...]]) -> torch.nn.Module:
    """A module whose named_parameters() are exactly ``shapes`` (dotted names allowed), in order."""
    root = torch.nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        mod = root
        for part in path:
            if not hasattr(mod, part):
                mod.add_module(part, torch.nn.Module())
            mod = getattr(mod, part)
        mod.register_parameter(leaf, torch.nn.Parameter(torch.zeros(shape)))
    return root


def write_run(path: Path, thetas: list[dict[str, np.ndarray]], steps=None, **kwargs) -> Path:
    """Record the given checkpoints (float32) at ``steps`` (default 0..T-1) through Recorder."""
    steps = list(range(len(thetas))) if steps is None else list(steps)
    model = module_with({k: v.shape for k, v in thetas[0].items()})
    params = dict(model.named_parameters())

    def load(theta):
        with torch.no_grad():
            for k, v in theta.items():
                params[k].copy_(torch.as_tensor(v, dtype=torch.float32))

    load(thetas[0])
    with trajlib.Recorder(model, path, steps=steps, start_step=steps[0], **kwargs) as rec:
        for theta, step in zip(thetas[1:], steps[1:]):
            load(theta)
            rec.save(step)
    return Path(path)


def stacked(thetas: list[dict[str, np.ndarray]]) -> np.ndarray:
    """(T, P) float64 of the float32-rounded checkpoints, flattened in dict order."""
    return np.stack([np.concatenate([np.asarray(v, np.float32).ravel() for v in th.values()]).astype(np.float64)
                     for th in thetas])


def oracle(X: np.ndarray) -> dict[str, np.ndarray]:
    """Every hallmark computed densely and directly in float64 from X (T, P)."""
    def cos(A, B=None):
        B = A if B is None else B
        return (A @ B.T) / np.outer(np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1))

    U = np.diff(X, axis=0)
    D = X[1:] - X[0]
    un = np.linalg.norm(U, axis=1)
    return {
        "trajectory_map": cos(X), "relative_map": cos(D), "update_map": cos(U),
        "consecutive_update_cos": np.einsum("ij,ij->i", U[:-1], U[1:]) / (un[:-1] * un[1:]),
        "update_param_cos": np.einsum("ij,ij->i", U, X[:-1]) / (un * np.linalg.norm(X[:-1], axis=1)),
        "param_norm": np.linalg.norm(X, axis=1), "step_norm": un,
        "distance_from_init": np.linalg.norm(X - X[0], axis=1),
        "angle_from_init": np.degrees(np.arccos(np.clip(cos(X)[0], -1, 1))),
    }


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_walk(rng, shapes: dict[str, tuple[int, ...]], T: int, *, step: float = 0.05, drift: float = 0.02):
    """Checkpoints of a noisy drifting walk: θ_{t+1} = θ_t + drift·v + step·noise."""
    theta = {k: rng.standard_normal(s) for k, s in shapes.items()}
    v = {k: rng.standard_normal(s) for k, s in shapes.items()}
    out = []
    for _ in range(T):
        out.append({k: a.astype(np.float32) for k, a in theta.items()})
        theta = {k: a + drift * v[k] + step * rng.standard_normal(a.shape) for k, a in theta.items()}
    return out


SHAPES = {"conv.weight": (8, 3, 3, 3), "conv.bias": (8,), "bn.weight": (8,), "bn.bias": (8,),
          "fc.weight": (10, 32), "fc.bias": (10,)}


@pytest.fixture
def walk_run(tmp_path, rng):
    thetas = random_walk(rng, SHAPES, 9)
    return write_run(tmp_path / "walk", thetas), thetas


def fake_hub(cache, repo: str, width: int, revs: list[str], duplicate_of: dict[str, str]):
    """A huggingface_hub cache folder holding ``repo`` at ``revs`` (tiny GPT-NeoX, float16);
    ``duplicate_of`` maps a revision to an earlier one whose weights it repeats."""
    import json

    from safetensors.torch import save_file

    from trajlib.paper.models import tiny_gpt_neox

    model = tiny_gpt_neox(vocab_size=17, width=width, layers=2, heads=2, context=8, seed=width)
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    (root / "refs").mkdir(parents=True)
    states = {}
    for i, rev in enumerate(revs):
        if rev in duplicate_of:
            state = states[duplicate_of[rev]]
        else:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            state = {k: v.detach().clone().half() for k, v in model.state_dict().items()}
        states[rev] = state
        commit = f"{width:08x}{i:032x}"
        (root / "refs" / rev).write_text(commit)
        snap = root / "snapshots" / commit
        snap.mkdir(parents=True)
        save_file(state, snap / "model.safetensors")
        (snap / "config.json").write_text(json.dumps(model.config.to_dict()))


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def ci_book(tmp_path_factory):
    """The repository's notebooks executed at the ci preset and the book built, in a scratch copy.

    Returns (root, exit status, log lines). Shared by the notebook and book tests.
    """
    import shutil

    from trajlib.paper.book import reproduce

    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("_build", "figures", "_generated"))
    shutil.copy(REPO / "_config.yml", root / "_config.yml")
    log: list[str] = []
    status = reproduce(preset="ci", root=root, keep_going=True, echo=log.append)
    return root, status, log
