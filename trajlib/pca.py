"""Trajectory PCA from the Gram: coordinates and explained variance by additions of G entries and
one small eigendecomposition; the P-dimensional directions from one more streamed pass.

Every vector here is a linear combination of the engine's rows R = [θ_0; u_0; ...; u_{T-2}]
(``trajlib.stats``): a coefficient matrix A (n, T) stands for the vectors A R, whose Gram is
A G Aᵀ. Two conventions:

* ``centered=True``: principal components of the checkpoints θ_0..θ_{T-1} after removing their
  mean, i.e. of c_t = d_t − mean_s d_s with d_t = θ_t − θ_0 = Σ_{s<t} u_s. Centring removes θ_0,
  so A has no θ_0 column and the centred Gram is formed from the update Gram U alone; ‖θ_0‖²,
  which dwarfs late updates, never enters (no cancellation). This is the convention
  of tomgoldstein/loss-landscape (Li et al. 2018): its ``setup_PCA_directions`` stacks
  θ_t − θ_final for every saved model and fits scikit-learn's ``PCA``, which centres the rows, so
  θ_final cancels; its plotted path is the projection of θ_t − θ_final on those directions
  (:meth:`TrajectoryPCA.relative_to` with the last checkpoint).
* ``centered=False``: the uncentred PCA (SVD) of the displacements d_1..d_{T-1} from θ_0;
  "explained variance" is then the share of Σ_t ‖d_t‖².

With Dc = A G Aᵀ = W Λ Wᵀ (T, T): the coordinates of checkpoint t are W_tk sqrt(λ_k) (what
``PCA.fit_transform`` returns), the explained-variance ratio λ_k / trace(Dc), and the unit
direction v_k = Σ_t W_tk c_t / sqrt(λ_k) = (Wᵀ A / sqrt(λ))_k R. :func:`directions` forms these
combinations block by block in one streamed pass (memory O(block)) and writes them as a
safetensors file beside the run; notebook 08 draws the loss on the plane they span.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm

from .formats import ST_DTYPES, SafetensorsFile, safetensors_prefix, torch_dtype
from .gram.engine import _cache_path, _device, _fill
from .groups import Block, plan_blocks, resolve_groups
from .manifest import TrajectoryError, atomic_file
from .stats import GramStats

log = logging.getLogger("trajlib.pca")

FORMAT = "trajlib-pca-directions"
OUT_DTYPES = {"F32": np.dtype("<f4"), "F64": np.dtype("<f8")}


@dataclass
class TrajectoryPCA:
    """The top-k principal components of one group's trajectory, from its Gram alone.

    ``coords`` (T, k): coordinate of each checkpoint on each direction (centred scores, or
    ⟨d_t, v_k⟩); ``singular_values`` (k,): sqrt(λ_k); ``explained_variance`` (k,): λ_k/(T−1)
    (scikit-learn's normalisation); ``explained_variance_ratio`` (k,): λ_k / ``total``;
    ``total``: trace of the (centred) displacement Gram, the variance all T−1 components hold;
    ``coef`` (k, T): v_k = Σ_r coef[k, r] R_r over the rows R = [θ_0; u_0..u_{T-2}].
    Sign: each component is oriented so the path runs from the first checkpoint towards the last.
    """

    steps: np.ndarray
    coords: np.ndarray
    singular_values: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    total: float
    coef: np.ndarray
    centered: bool
    group: str
    n_params: int

    @property
    def k(self) -> int:
        return self.coords.shape[1]

    @property
    def convention(self) -> str:
        return "centered" if self.centered else "displacement"

    def relative_to(self, t: int = -1) -> np.ndarray:
        """(T, k): coordinates of θ_s − θ_t on the directions (t = −1: the final checkpoint,
        loss-landscape's origin); the plane of :func:`trajlib.landscape.loss_surface` centred at θ_t."""
        return self.coords - self.coords[t]


def coefficients(T: int, *, centered: bool) -> np.ndarray:
    """A (T, T) over the rows R: A R = [d_0..d_{T-1}] (displacements, d_0 = 0), or these minus
    their mean (``centered``). Column 0 (θ_0) is zero either way."""
    A = np.zeros((T, T))
    A[:, 1:] = np.tri(T, T - 1, k=-1)  # d_t = Σ_{s<t} u_s
    if centered:
        A -= A.mean(axis=0)
    return A


def trajectory_pca(stats, *, group: str = "all", k: int = 2, centered: bool = True) -> TrajectoryPCA:
    """Principal components of a trajectory from ``stats`` (:class:`~trajlib.stats.GramStats`).

    ``k``: components kept (1 ≤ k ≤ T−1; each must have non-zero variance). Float64 throughout;
    cost O(T³), nothing is re-read. Notebook 08; the README's PCA view.
    """
    from .hallmarks import one_run

    one_run(stats)
    G = np.asarray(stats[group], dtype=np.float64)
    T = len(G)
    if T < 2 or not 1 <= k <= T - 1:
        raise ValueError(f"k={k}: a trajectory of T={T} checkpoints has at most {T - 1} principal components")
    A = coefficients(T, centered=centered)[:, 1:]  # (T, T-1): θ_0 never enters
    M = A @ G[1:, 1:] @ A.T
    M = 0.5 * (M + M.T)
    lam, W = np.linalg.eigh(M)
    lam, W = lam[::-1][:k], W[:, ::-1][:, :k]
    total = float(np.trace(M))
    small = np.flatnonzero(lam <= max(total, 0.0) * 1e-13)
    if len(small):
        raise ValueError(f"k={k}: component {small[0] + 1} of group {group!r} has no variance "
                         f"(the trajectory spans fewer than {k} directions); lower k")
    for j in range(k):  # orient: the path runs towards +; ties broken by the largest entry
        w = W[:, j]
        s = np.sign(w[-1] - w[0]) or np.sign(w[np.argmax(np.abs(w))])
        W[:, j] = s * w
    sv = np.sqrt(lam)
    coef = np.zeros((k, T))
    coef[:, 1:] = (W.T @ A) / sv[:, None]
    return TrajectoryPCA(steps=np.asarray(stats.steps).copy(), coords=W * sv, singular_values=sv,
                         explained_variance=lam / (T - 1), explained_variance_ratio=lam / total, total=total,
                         coef=coef, centered=centered, group=group, n_params=int(stats.n_params[group]))


def random_walk_pca(T: int, *, k: int = 2) -> TrajectoryPCA:
    """The PCA of a random walk of T checkpoints with i.i.d. isotropic steps in high dimension
    (U = I): the reference a trajectory's explained variance is read against. Its components are
    cosines in time (Lissajous curves) and the top two hold ≈ 6/π² · (1 + 1/4) ≈ 0.76 of the
    variance for large T (Antognini & Sohl-Dickstein 2018): a high share on two directions does
    not by itself mean low-dimensional motion. Notebook 08."""
    steps = np.arange(T, dtype=np.int64)
    stats = GramStats(steps, np.full(T, np.nan), {"walk": np.eye(T)}, {"walk": 0})
    return trajectory_pca(stats, group="walk", k=k)


def squared_distances(G: np.ndarray) -> np.ndarray:
    """(T, T): ‖θ_i − θ_j‖² = Σ_{i≤s,r<j} U_sr, summed per pair (never a difference of
    cumulative sums, which cancels when the segment is short). O(T³)."""
    U = np.asarray(G, dtype=np.float64)[1:, 1:]
    T = len(U) + 1
    out = np.zeros((T, T))
    for i in range(T - 1):
        S = np.cumsum(np.cumsum(U[i:, i:], axis=0), axis=1)
        out[i, i + 1:] = np.diag(S)
    return np.maximum(out, out.T)


def in_plane_fraction(pca: TrajectoryPCA, G: np.ndarray, *, center: int = -1) -> np.ndarray:
    """(T,): share of ‖θ_t − θ_center‖² that lies on the PCA directions (1: the checkpoint sits on
    the plane drawn; NaN at the center). What a PCA plot hides is 1 − this."""
    d2 = squared_distances(G)[center]
    got = (pca.relative_to(center) ** 2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = got / d2
    frac[d2 == 0] = np.nan
    return frac


# -- the streamed pass ------------------------------------------------------------------------
def row_blocks(traj, segments, *, block_bytes: int, progress: bool = True,
               desc: str = "pass") -> Iterator[tuple[Block, torch.Tensor]]:
    """Yield (block, R) over the parameter ``segments`` of ``traj``: R (T, ncols) float64 holds
    the rows [θ_0; u_0..u_{T-2}] of the block's columns, formed from the slice as the Gram engine
    does. Memory: one read slab of ``block_bytes`` and a few float64 copies of it."""
    T = traj.T
    plan = plan_blocks(traj, {"g": segments}, block_cols=max(1, block_bytes // (4 * T)))
    item = max((ST_DTYPES[b.dtype].itemsize for b in plan.blocks), default=8)
    buf = torch.empty(T * plan.max_cols * item, dtype=torch.uint8)
    for block in tqdm(plan.blocks, desc=desc, disable=not progress, leave=False, delay=1.0):
        src = _fill(traj, block, buf)
        X = src.view(torch_dtype(block.dtype)).view(T, block.ncols).to(torch.float64)
        X[1:] = torch.diff(X, dim=0)  # diff reads X before the copy writes it
        yield block, X


def _segments(traj, pca: TrajectoryPCA, spec):
    resolved = resolve_groups(traj, [spec or pca.group])
    if pca.group not in resolved:
        raise ValueError(f"group {pca.group!r} is not produced by spec {spec or pca.group!r} on {traj.source} "
                         f"(groups: {', '.join(resolved)}); pass the spec the Gram was computed with, spec=...")
    segs = resolved[pca.group]
    if sum(b - a for _, a, b in segs) != pca.n_params:
        raise TrajectoryError(f"{traj.source}: group {pca.group!r} has {sum(b - a for _, a, b in segs):,} "
                              f"elements, the PCA was computed on {pca.n_params:,}")
    return segs


def _check_same_run(traj, pca: TrajectoryPCA) -> None:
    if traj.T != len(pca.steps) or not np.array_equal(traj.steps, pca.steps):
        raise TrajectoryError(f"{traj.source}: steps {traj.steps[:3].tolist()}… (T={traj.T}) differ from the "
                              f"PCA's {pca.steps[:3].tolist()}… (T={len(pca.steps)}); not the same trajectory")


def directions(traj, pca: TrajectoryPCA, *, path: str | Path | None = None, spec=None, dtype: str = "F32",
               block_bytes: int = 8 << 20, device="cpu", progress: bool = True, cache: bool = True) -> Path:
    """Write the k unit directions v_k (P-dimensional) as a safetensors file; return its path.

    One streamed pass forms v = coef · R block by block (memory O(block), never T × P). The file
    holds one tensor per recorded tensor of the group, shape ``(k, *shape)`` (elements outside the
    group, e.g. other heads of a fused QKV weight, are 0), ``dtype`` F32 or F64, and metadata:
    format, group, convention, steps, explained-variance ratios. ``path``: default
    ``pca-<key>.safetensors`` beside the run (or under ``$TRAJLIB_CACHE``); ``cache`` reuses a
    file with the same key. ``spec``: the group spec the Gram used, when it is not the group name.
    """
    if dtype not in OUT_DTYPES:
        raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(OUT_DTYPES)}")
    _check_same_run(traj, pca)
    device = _device(device)
    segs = _segments(traj, pca, spec)
    key = hashlib.sha256(json.dumps([traj.fingerprint(), pca.group, pca.convention, pca.coef.tolist(), dtype])
                         .encode()).hexdigest()[:20]
    path = Path(path) if path is not None else _cache_path(traj, True) / f"pca-{key}.safetensors"
    if cache and path.is_file():
        try:
            if SafetensorsFile(path).metadata.get("key") == key:
                log.info("reusing %s", path)
                return path
        except TrajectoryError as exc:
            log.warning("%s: unreadable directions file (%s); rewriting", path, exc)
    out = OUT_DTYPES[dtype]
    names = [n for n in traj.names if any(s[0] == n for s in segs)]
    header, base, offset = {}, {}, 0
    for n in names:
        nbytes = pca.k * traj.numel(n) * out.itemsize
        header[n] = {"dtype": dtype, "shape": [pca.k, *traj.shapes[n]], "data_offsets": [offset, offset + nbytes]}
        base[n], offset = offset, offset + nbytes
    header["__metadata__"] = {
        "format": FORMAT, "key": key, "group": pca.group, "convention": pca.convention, "k": str(pca.k),
        "steps": json.dumps(pca.steps.tolist()), "source": str(traj.source),
        "explained_variance_ratio": json.dumps(pca.explained_variance_ratio.tolist())}
    prefix = safetensors_prefix(header)
    B = torch.as_tensor(pca.coef, dtype=torch.float64, device=device)  # (k, T)
    with atomic_file(path) as f:
        f.write(prefix)
        f.truncate(len(prefix) + offset)  # zeros (sparse) where the group does not reach
        f.flush()
        fd, data0 = f.fileno(), len(prefix)
        for block, R in row_blocks(traj, segs, block_bytes=block_bytes, progress=progress, desc="pca directions"):
            V = (B @ R.to(device)).cpu().numpy().astype(out)  # (k, ncols)
            for name, a, b, col in block.pieces:
                numel = traj.numel(name)
                for j in range(pca.k):
                    at = data0 + base[name] + (j * numel + a) * out.itemsize
                    _pwrite_all(fd, V[j, col: col + b - a].tobytes(), at, path)
    return path


def _pwrite_all(fd: int, data: bytes, at: int, path: Path) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, at)
        if n <= 0:
            raise OSError(f"{path}: short write at byte {at}")
        view, at = view[n:], at + n


@dataclass
class Directions:
    """Directions in parameter space: ``tensors[name]`` ``(k, *shape)``, float32 or float64 torch
    tensors; ``meta``: what they are (format, group, convention, explained-variance ratios)."""

    tensors: dict[str, torch.Tensor]
    meta: dict

    @property
    def k(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def flat(self) -> torch.Tensor:
        """(k, P) float64, tensors concatenated in file order: for tests and small models."""
        return torch.cat([t.reshape(self.k, -1).double() for t in self.tensors.values()], dim=1)


def read_directions(path: str | Path) -> Directions:
    """Read a directions file written by :func:`directions` (header validated on open)."""
    reader = SafetensorsFile(path)
    try:
        if reader.metadata.get("format") != FORMAT:
            raise TrajectoryError(f"{path}: not a trajlib directions file (format={reader.metadata.get('format')!r})")
        tensors = {n: torch.from_numpy(np.ascontiguousarray(reader.tensor(n))) for n in reader.names}
    finally:
        reader.close()
    meta = dict(reader.metadata)
    for key in ("steps", "explained_variance_ratio"):
        if key in meta:
            meta[key] = json.loads(meta[key])
    return Directions(tensors, meta)
