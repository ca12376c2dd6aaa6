"""The loss on a plane through parameter space, with the trajectory drawn on it (Li et al. 2018).

A plane is a center θ_c (a checkpoint's tensors) and two directions d_1, d_2 (name → tensor of
shape ``(k, *shape)``, k ≥ 2; the first two are used): the PCA directions of the trajectory
(:func:`trajlib.pca.directions`) or random filter-normalised ones (:func:`random_directions`,
loss-landscape's default). :func:`loss_surface` evaluates a user's model and loss on a grid
θ(a, b) = θ_c + a d_1 + b d_2; :func:`plane_coordinates` projects every checkpoint on any plane
in one streamed pass; ``trajlib.plot.loss_plane`` draws both. Notebook 08.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .pca import row_blocks

log = logging.getLogger("trajlib.landscape")


def checkpoint_state(traj, t: int = -1, *, names=None) -> dict[str, torch.Tensor]:
    """Tensors of checkpoint ``t`` (−1: the last) as float64 torch tensors in their shapes
    (parameters and any recorded buffers, or ``names``): the center of a plane."""
    t = range(traj.T)[t]
    return {n: torch.from_numpy(traj.tensor(t, n)) for n in (names or traj.names)}


def random_directions(center: Mapping[str, torch.Tensor], *, k: int = 2, seed: int = 0,
                      ignore_1d: bool = True) -> dict[str, torch.Tensor]:
    """Random filter-normalised directions (Li et al. 2018, loss-landscape's ``--xnorm filter``):
    Gaussian, then each filter (slice along dim 0) of a tensor with ≥ 2 dims rescaled to the norm
    of the same filter of ``center``. Tensors with ≤ 1 dim (biases, BatchNorm) get 0
    (``ignore_1d``, ``--xignore biasbn``) or a copy of the center, as loss-landscape does.
    Returns name → ``(k, *shape)`` float64."""
    if k < 1:
        raise ValueError(f"k={k}: need at least one direction")
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in center.items():
        w = torch.as_tensor(w, dtype=torch.float64)
        if w.dim() <= 1:
            out[name] = torch.zeros((k, *w.shape), dtype=torch.float64) if ignore_1d else w.expand(k, *w.shape).clone()
            continue
        d = torch.randn((k, *w.shape), generator=gen, dtype=torch.float64)
        wn = w.reshape(w.shape[0], -1).norm(dim=1)  # (filters,)
        dn = d.reshape(k, w.shape[0], -1).norm(dim=2)  # (k, filters)
        scale = (wn / (dn + 1e-10)).reshape(k, w.shape[0], *([1] * (w.dim() - 1)))
        out[name] = d * scale
    return out


def plane_coordinates(traj, directions: Mapping[str, torch.Tensor], *, center: int = -1,
                      block_bytes: int = 8 << 20, device="cpu", progress: bool = True) -> np.ndarray:
    """(T, k): least-squares coordinates of θ_t − θ_center in the span of ``directions``
    (name → ``(k, *shape)``), for every checkpoint, in one streamed pass.

    The pass accumulates ⟨R_r, d_j⟩ over the rows R = [θ_0; u_0..u_{T-2}]; ⟨θ_t − θ_c, d_j⟩ is
    then a sum of ± those over the updates between c and t (no difference of large inner
    products). ``device``: where the products run (the directions are held there). For orthonormal PCA directions this equals ``pca.relative_to(center)``; for random
    directions the path lands near the origin (Li et al. 2018, §7).
    """
    device = torch.device(device)
    dirs = {n: torch.as_tensor(d, dtype=torch.float64, device=device).reshape(d.shape[0], -1)
            for n, d in directions.items()}
    for n, d in dirs.items():
        if n not in traj.shapes:
            raise ValueError(f"direction tensor {n!r} is not a tensor of {traj.source}")
        if d.shape[1] != traj.numel(n):
            raise ValueError(f"direction tensor {n!r} has {d.shape[1]} elements per direction, "
                             f"{traj.source} has {traj.numel(n)}")
    k = next(iter(dirs.values())).shape[0]
    T, c = traj.T, range(traj.T)[center]
    rows = torch.zeros(T, k, dtype=torch.float64, device=device)  # ⟨R_r, d_j⟩
    segs = [(n, 0, traj.numel(n)) for n in dirs]
    for block, R in row_blocks(traj, segs, block_bytes=block_bytes, progress=progress, desc="projection"):
        R = R.to(device)
        for name, a, b, col in block.pieces:
            rows += R[:, col: col + b - a] @ dirs[name][:, a:b].T
    E = np.zeros((T, T))  # θ_t − θ_c = Σ_s E[t, 1+s] u_s
    for t in range(T):
        if t > c:
            E[t, 1 + c: 1 + t] = 1.0
        elif t < c:
            E[t, 1 + t: 1 + c] = -1.0
    y = E @ rows.cpu().numpy()  # (T, k)
    flat = torch.cat([d for d in dirs.values()], dim=1)
    gram = (flat @ flat.T).cpu().numpy()  # (k, k)
    return np.linalg.solve(gram, y.T).T


def plane_fraction(coords: np.ndarray, directions: Mapping[str, torch.Tensor], G: np.ndarray, *,
                   center: int = -1) -> np.ndarray:
    """(T,): share of ‖θ_t − θ_center‖² in the plane of ``directions`` (name → ``(k, *shape)``), from
    the :func:`plane_coordinates` ``coords`` (T, k) and the Gram G; NaN at the center. For the
    orthonormal PCA directions this is :func:`trajlib.pca.in_plane_fraction`."""
    from .pca import squared_distances

    flat = torch.cat([torch.as_tensor(d, dtype=torch.float64).reshape(d.shape[0], -1) for d in directions.values()], 1)
    gram = (flat @ flat.T).numpy()
    got = np.einsum("ti,ij,tj->t", coords, gram, coords)  # ‖projection‖²
    d2 = squared_distances(G)[center]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = got / d2
    frac[d2 == 0] = np.nan
    return frac


def grid_around(coords: np.ndarray, *, n: int = 21, margin: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Grid axes (a: (n,), b: (n,)) covering the first two columns of ``coords`` (T, ≥2) with a
    ``margin`` (fraction of each span) on every side; a zero span borrows the other's."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] < 2 or n < 2:
        raise ValueError(f"coords must be (T, ≥2) and n ≥ 2; got shape {coords.shape}, n={n}")
    lo, hi = coords[:, :2].min(axis=0), coords[:, :2].max(axis=0)
    span = hi - lo
    span[span == 0] = span.max() or 1.0
    lo, hi = lo - margin * span, hi + margin * span
    return np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)


def _set_batchnorm(model: nn.Module, batchnorm: str) -> None:
    if batchnorm not in ("running", "batch"):
        raise ValueError(f"batchnorm={batchnorm!r}: expected 'running' or 'batch'")
    model.eval()
    if batchnorm == "batch":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()


def loss_surface(model: nn.Module, loss_fn: Callable, data: Iterable, *, center: Mapping[str, torch.Tensor],
                 directions: Mapping[str, torch.Tensor], alphas, betas, device="cpu",
                 batchnorm: str = "running", progress: bool = True) -> np.ndarray:
    """The mean loss at θ(a, b) = center + a·d_1 + b·d_2 for a in ``alphas``, b in ``betas``:
    (len(alphas), len(betas)) float64.

    ``loss_fn(outputs, targets)`` returns a mean over a batch; ``data``: a re-iterable of
    (inputs, targets) batches (a DataLoader, or a list), weighted by batch size. ``center``:
    name → tensor for the model's parameters (and any buffers to load, e.g. BatchNorm running
    statistics); ``directions``: name → ``(k ≥ 2, *shape)``, only the first two used; parameters
    without a direction stay at the center. ``batchnorm``: "running" (eval mode) or "batch"
    (BatchNorm uses each batch's statistics; for runs recorded without buffers). The model is
    restored afterwards. Cost: len(alphas) · len(betas) passes over ``data``.
    """
    device = torch.device(device)
    model.to(device)
    params = dict(model.named_parameters())
    state = {n: t for n, t in model.state_dict(keep_vars=True).items()}
    for n, d in directions.items():
        if n not in params:
            raise ValueError(f"direction tensor {n!r} is not a parameter of the model")
        if d.dim() < 1 or d.shape[0] < 2 or tuple(d.shape[1:]) != tuple(params[n].shape):
            raise ValueError(f"direction tensor {n!r} has shape {list(d.shape)}; expected (≥2, "
                             f"{', '.join(map(str, params[n].shape))})")
    for n in center:
        if n not in state:
            raise ValueError(f"center tensor {n!r} is not a parameter or buffer of the model")
    saved = {n: t.detach().clone() for n, t in state.items()}
    was_training = model.training
    names = [n for n in params if n in directions]
    base = [torch.as_tensor(center.get(n, params[n].detach()), dtype=params[n].dtype, device=device)
            for n in names]
    d1 = [directions[n][0].to(device=device, dtype=params[n].dtype) for n in names]
    d2 = [directions[n][1].to(device=device, dtype=params[n].dtype) for n in names]
    Z = np.empty((len(alphas), len(betas)))
    try:
        with torch.no_grad():
            for n, t in center.items():
                if n not in directions:
                    state[n].copy_(torch.as_tensor(t, dtype=state[n].dtype))
            _set_batchnorm(model, batchnorm)
            bar = tqdm(total=Z.size, desc="loss surface", disable=not progress, leave=False, delay=1.0)
            targets = [params[n] for n in names]
            for i, a in enumerate(alphas):
                for j, b in enumerate(betas):
                    torch._foreach_copy_(targets, base)
                    torch._foreach_add_(targets, d1, alpha=float(a))
                    torch._foreach_add_(targets, d2, alpha=float(b))
                    Z[i, j] = _mean_loss(model, loss_fn, data, device)
                    bar.update()
            bar.close()
    finally:
        with torch.no_grad():
            for n, t in state.items():
                t.copy_(saved[n])
        model.train(was_training)
    return Z


def _mean_loss(model: nn.Module, loss_fn: Callable, data: Iterable, device) -> float:
    total, count = 0.0, 0
    for x, y in data:
        out = model(x.to(device))
        total += float(loss_fn(out, y.to(device))) * len(y)
        count += len(y)
    if count == 0:
        raise ValueError("data yielded no batches")
    return total / count
