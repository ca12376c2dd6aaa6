"""Hallmarks of a trajectory: pure numpy algebra on the small (T, T) Gram of one group.

Input everywhere: G (T, T), float64, the Gram of the rows [θ_0; u_0; ...; u_{T-2}] where
u_t = θ_{t+1} − θ_t (``trajlib.stats``). Writing b_s = ⟨θ_0, u_s⟩ and U_sr = ⟨u_s, u_r⟩:

* displacements d_t = θ_t − θ_0 = Σ_{s<t} u_s, so ⟨θ_0, d_t⟩ = Σ_{s<t} b_s and
  D_ij = ⟨d_i, d_j⟩ = Σ_{s<i} Σ_{r<j} U_sr;
* K_ij = ⟨θ_i, θ_j⟩ = ‖θ_0‖² + ⟨θ_0, d_i⟩ + ⟨θ_0, d_j⟩ + D_ij;
* ⟨u_t, θ_t⟩ = b_t + Σ_{s<t} U_ts.

Only sums of Gram entries appear: no update quantity is a difference of large Gram entries
(:mod:`trajlib.gram.rows`). Names are the API and the column names of the tables.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _check(G: np.ndarray) -> np.ndarray:
    G = np.asarray(G, dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1] or G.shape[0] < 2:
        raise ValueError(f"expected a (T, T) Gram with T ≥ 2, got shape {G.shape}")
    return G


def update_gram(G: np.ndarray) -> np.ndarray:
    """U (T-1, T-1): U_sr = ⟨u_s, u_r⟩."""
    return _check(G)[1:, 1:]


def displacement_gram(G: np.ndarray) -> np.ndarray:
    """D (T, T): D_ij = ⟨d_i, d_j⟩ with d_0 = 0 (row and column 0 are zero)."""
    U = update_gram(G)
    D = np.zeros_like(_check(G))
    S = np.cumsum(np.cumsum(U, axis=0), axis=1)
    D[1:, 1:] = 0.5 * (S + S.T)  # the two summation orders differ in the last bit
    return D


def checkpoint_gram(G: np.ndarray) -> np.ndarray:
    """K (T, T): K_ij = ⟨θ_i, θ_j⟩."""
    G = _check(G)
    a = np.concatenate([[0.0], np.cumsum(G[0, 1:])])  # ⟨θ_0, d_t⟩
    return G[0, 0] + (a[:, None] + a[None, :]) + displacement_gram(G)  # grouped so K is exactly symmetric


def cosine_map(M: np.ndarray) -> np.ndarray:
    """M_ij / sqrt(M_ii M_jj); NaN where a norm is zero."""
    d = np.sqrt(np.clip(np.diag(M), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        C = M / np.outer(d, d)
    C[np.outer(d, d) == 0] = np.nan
    return np.clip(C, -1.0, 1.0)


def trajectory_map(G: np.ndarray) -> np.ndarray:
    """C (T, T): C_ij = K_ij / sqrt(K_ii K_jj), cosine similarity between checkpoints."""
    return cosine_map(checkpoint_gram(G))


def relative_map(G: np.ndarray) -> np.ndarray:
    """(T-1, T-1): cosines between displacements d_1..d_{T-1} from θ_0."""
    return cosine_map(displacement_gram(G)[1:, 1:])


def update_map(G: np.ndarray) -> np.ndarray:
    """(T-1, T-1): cosines between updates u_0..u_{T-2}."""
    return cosine_map(update_gram(G))


def mean_offdiagonal(C: np.ndarray) -> float:
    """Mean of C_ij over i ≠ j (NaN entries, from zero-norm rows, are skipped)."""
    off = C[~np.eye(len(C), dtype=bool)]
    return float(np.nanmean(off)) if np.isfinite(off).any() else float("nan")


def similarity_by_lag(C: np.ndarray) -> np.ndarray:
    """Mean of C_ij over ``|i − j| = k`` for k = 1..T-1, (T-1,): how fast similarity decays."""
    return np.array([np.nanmean(np.diag(C, k)) for k in range(1, len(C))])


def mds(G: np.ndarray) -> float:
    """Mean directional similarity: mean of C_ij over i ≠ j (the convention we report)."""
    return mean_offdiagonal(trajectory_map(G))


def prefix_mds(G: np.ndarray) -> np.ndarray:
    """MDS of the growing prefix θ_0..θ_k for k = 1..T-1, (T-1,); the last entry is ``mds(G)``.

    A prefix's map is the top-left block of the full map (a cosine depends only on its two
    checkpoints), so every prefix comes from one map by cumulative sums: the mean of C_ij over
    i ≠ j ≤ k. When this curve stops changing, adding checkpoints no longer changes the
    trajectory's directionality (the ICLR abstract: it saturates by the initial phase; notebook 09).
    """
    C = trajectory_map(G)
    ok = np.isfinite(C) & ~np.eye(len(C), dtype=bool)
    total = np.cumsum(np.cumsum(np.where(ok, C, 0.0), axis=0), axis=1).diagonal()[1:]
    count = np.cumsum(np.cumsum(ok, axis=0), axis=1).diagonal()[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


def saturation_index(curve, *, tol: float) -> int:
    """The first index k after which ``curve`` stays within ``tol`` (absolute) of its last value:
    ``|curve[j] − curve[-1]| ≤ tol`` for every j ≥ k. 0 if it never leaves the band; len − 1 if it
    enters it only at the end. Applied to :func:`prefix_mds` (notebook 09)."""
    y = np.asarray(curve, dtype=np.float64)
    if y.ndim != 1 or len(y) == 0 or not np.isfinite(y).all():
        raise ValueError(f"expected a non-empty 1-d curve of finite values, got shape {y.shape}")
    if not tol >= 0:
        raise ValueError(f"tol={tol!r}: expected a non-negative tolerance")
    outside = np.flatnonzero(np.abs(y - y[-1]) > tol)
    return int(outside[-1] + 1) if len(outside) else 0


def mds_full(G: np.ndarray) -> float:
    """Mean of C_ij over all i, j, diagonal included: (T-1)/T · mds + 1/T."""
    return float(np.nanmean(trajectory_map(G)))


def relative_mds(G: np.ndarray) -> float:
    return mean_offdiagonal(relative_map(G))


def update_mds(G: np.ndarray) -> float:
    return mean_offdiagonal(update_map(G))


def param_norm(G: np.ndarray) -> np.ndarray:
    """‖θ_t‖, (T,)."""
    return np.sqrt(np.clip(np.diag(checkpoint_gram(G)), 0.0, None))


def step_norm(G: np.ndarray) -> np.ndarray:
    """‖u_t‖, (T-1,)."""
    return np.sqrt(np.clip(np.diag(update_gram(G)), 0.0, None))


def distance_from_init(G: np.ndarray) -> np.ndarray:
    """‖d_t‖ = ‖θ_t − θ_0‖, (T,)."""
    return np.sqrt(np.clip(np.diag(displacement_gram(G)), 0.0, None))


def angle_from_init(G: np.ndarray) -> np.ndarray:
    """arccos C_{0,t} in degrees, (T,)."""
    return np.degrees(np.arccos(trajectory_map(G)[0]))


def consecutive_update_cos(G: np.ndarray) -> np.ndarray:
    """cos(u_t, u_{t+1}), (T-2,); negative values mean the trajectory oscillates."""
    U = update_gram(G)
    n = np.sqrt(np.diag(U))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(np.diag(U, 1) / (n[:-1] * n[1:]), -1.0, 1.0)


def update_param_cos(G: np.ndarray) -> np.ndarray:
    """cos(u_t, θ_t), (T-1,); negative values mean the step shrinks ‖θ‖ (as weight decay does)."""
    G = _check(G)
    U = update_gram(G)
    u_dot_theta = G[0, 1:] + np.tril(U, -1).sum(axis=1)  # b_t + ⟨u_t, d_t⟩
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(u_dot_theta / (step_norm(G) * param_norm(G)[:-1]), -1.0, 1.0)


def path_length(G: np.ndarray) -> float:
    """Σ_t ‖u_t‖ over recorded checkpoints (a lower bound on the step-level path)."""
    return float(step_norm(G).sum())


def displacement(G: np.ndarray) -> float:
    """‖d_{T-1}‖ = ‖θ_{T-1} − θ_0‖."""
    return float(distance_from_init(G)[-1])


def straightness(G: np.ndarray) -> float:
    """displacement / path_length, in (0, 1]; 1 for a straight line."""
    p = path_length(G)
    return displacement(G) / p if p > 0 else float("nan")


SUMMARY = {
    "mds": mds, "mds_full": mds_full, "relative_mds": relative_mds, "update_mds": update_mds,
    "path_length": path_length, "displacement": displacement, "straightness": straightness,
}


def summary(G: np.ndarray) -> dict[str, float]:
    """Scalar hallmarks of one group (the columns of :func:`hallmark_table`)."""
    G = _check(G)
    out = {name: fn(G) for name, fn in SUMMARY.items()}
    cuc = consecutive_update_cos(G)
    out["mean_consecutive_update_cos"] = float(np.nanmean(cuc)) if len(cuc) else float("nan")
    out["mean_update_param_cos"] = float(np.nanmean(update_param_cos(G)))
    out["final_angle_from_init"] = float(angle_from_init(G)[-1])
    return out


def one_run(stats) -> None:
    """Raise for the stats of several runs (:mod:`trajlib.joint`): their rows restart at each
    run's θ_0, which a one-run hallmark would read as an update."""
    if getattr(stats, "meta", {}).get("runs"):
        raise ValueError("these are the stats of several runs: cut one out with trajlib.joint.run_stats, "
                         "or use trajlib.joint's maps")


def hallmark_table(stats, groups=None) -> pd.DataFrame:
    """The per-group hallmark table: one row per group (index ``group``), columns n_params, T
    and the scalar hallmarks of :func:`summary`; for a public suite read through its audit, also
    ``coverage`` (the fraction of the suite's schedule the checkpoints cover). Paper claims
    compare ``mds`` across runs; notebooks 01–05 and 07 call this."""
    one_run(stats)
    coverage = (stats.meta.get("audit") or {}).get("coverage")
    extra = {} if coverage is None else {"coverage": coverage}
    rows = {g: {"n_params": stats.n_params[g], "T": stats.T, **extra, **summary(stats[g])} for g in groups or stats.groups}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "group"
    return df


def per_checkpoint(stats, group: str = "all") -> pd.DataFrame:
    """One row per checkpoint: step, epoch, norms, angle and update cosines of one group (of
    one run); for a public suite read through its audit, also ``tokens`` seen at each step
    (NaN where the suite does not state them), the axis its curves belong on.

    Update quantities sit on the row of the checkpoint the update leaves (t for u_t).
    """
    one_run(stats)
    G = stats[group]
    T = stats.T
    pad = lambda x: np.concatenate([x, np.full(T - len(x), np.nan)])  # noqa: E731
    tokens = (stats.meta.get("audit") or {}).get("tokens")
    extra = {} if not tokens else {"tokens": [np.nan if tokens.get(str(int(s))) is None else float(tokens[str(int(s))])
                                              for s in stats.steps]}
    return pd.DataFrame({
        "step": stats.steps, **extra, "epoch": stats.epochs,
        "param_norm": param_norm(G), "distance_from_init": distance_from_init(G),
        "angle_from_init": angle_from_init(G), "step_norm": pad(step_norm(G)),
        "consecutive_update_cos": pad(consecutive_update_cos(G)),
        "update_param_cos": pad(update_param_cos(G)),
    })


def gram_from_checkpoints(X: np.ndarray) -> np.ndarray:
    """G of the rows [θ_0; u_0..u_{T-2}] for checkpoints already in memory, X (T, P), float64.

    For small simulated trajectories (notebook 06); on-disk runs go through ``trajlib.gram``."""
    X = np.asarray(X, dtype=np.float64)
    R = np.vstack([X[:1], np.diff(X, axis=0)])
    return R @ R.T
