"""Our model of the paper's mechanism (notebook 06), as small exact simulations.

* Heavy-ball SGD with L2 weight decay on a quadratic: along a Hessian eigenvalue h the iterate
  obeys x_{t+1} = (1 + μ − η(h + λ)) x_t − μ x_{t−1}; the roots of r² − (1 + μ − ηa) r + μ
  (a = h + λ) give the regime: *monotone* (real positive roots), *rotating* (complex roots,
  |r| = √μ) or *sign-flipping* (a negative dominant root). :func:`regime` classifies them.
* :func:`simulate_quadratic`: the same dynamics on a noisy quadratic with a decaying spectrum,
  checkpoints every ``record_every`` steps, the top-eigenvector component of every step.
* :func:`simulate_sphere`: a scale-invariant (normalised) model, whose loss ignores ‖θ‖; with
  weight decay the norm settles where the angular step is √(2ηλ/(1+μ)) (Wan et al. 2021).

Pure numpy; the hallmarks come from :func:`trajlib.hallmarks.gram_from_checkpoints`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def characteristic_roots(eta: float, h: float, *, momentum: float, weight_decay: float) -> np.ndarray:
    """Roots (complex, 2,) of r² − (1 + μ − η(h + λ)) r + μ."""
    b = 1 + momentum - eta * (h + weight_decay)
    return np.roots([1.0, -b, momentum]).astype(complex)


def regime(eta: float, h: float, *, momentum: float, weight_decay: float) -> str:
    """"monotone", "rotating", "sign-flipping" or "divergent" for one eigen-direction."""
    r = characteristic_roots(eta, h, momentum=momentum, weight_decay=weight_decay)
    if np.max(np.abs(r)) >= 1:
        return "divergent"
    if np.any(np.abs(r.imag) > 1e-12):
        return "rotating"
    dominant = r[np.argmax(np.abs(r))].real
    return "monotone" if dominant >= 0 else "sign-flipping"


@dataclass
class QuadraticRun:
    """checkpoints (T, d); steps (T,); top_component (S,): the update along the top eigenvector
    at every step; step_cos (S-1,): cosines between consecutive single-step updates."""

    checkpoints: np.ndarray
    steps: np.ndarray
    top_component: np.ndarray
    step_cos: np.ndarray


def spectrum(dim: int, *, top: float = 1.0, decay: float = 1.0) -> np.ndarray:
    """Hessian eigenvalues top · i^(−decay), i = 1..dim."""
    return top * np.arange(1, dim + 1, dtype=float) ** -decay


def simulate_quadratic(*, dim: int = 100, eta: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.01,
                       noise: float = 0.1, steps: int = 3000, record_every: int = 100, top: float = 1.0,
                       decay: float = 1.0, shift: float = 1.0, seed: int = 0) -> QuadraticRun:
    """Heavy-ball SGD (v ← μv + g; θ ← θ − ηv) on ½(θ − θ*)ᵀH(θ − θ*) + ½λ‖θ‖² with gradient
    noise of std ``noise`` per coordinate. θ_0 ~ N(0, I) (‖θ_0‖ ≈ √dim, like a network's
    initialisation) and θ* = θ_0 + shift·N(0, I): training travels a short way from a large
    initial vector, as in a network. H = diag(spectrum): its top eigenvector is e_1."""
    rng = np.random.default_rng(seed)
    h = spectrum(dim, top=top, decay=decay)
    theta = rng.standard_normal(dim)
    target = theta + shift * rng.standard_normal(dim)
    v = np.zeros(dim)
    ckpts, ck_steps, top_comp, prev, cos = [theta.copy()], [0], [], None, []
    for t in range(1, steps + 1):
        g = h * (theta - target) + weight_decay * theta + noise * rng.standard_normal(dim)
        v = momentum * v + g
        u = -eta * v
        theta = theta + u
        top_comp.append(u[0])
        if prev is not None:
            cos.append(float(u @ prev / (np.linalg.norm(u) * np.linalg.norm(prev))))
        prev = u
        if t % record_every == 0:
            ckpts.append(theta.copy())
            ck_steps.append(t)
    return QuadraticRun(np.array(ckpts), np.array(ck_steps), np.array(top_comp), np.array(cos))


def sign_flip_fraction(x: np.ndarray) -> float:
    """Share of consecutive entries whose signs differ."""
    s = np.sign(x)
    return float(np.mean(s[1:] != s[:-1]))


def simulate_sphere(*, dim: int = 500, eta: float = 0.1, momentum: float = 0.0, weight_decay: float = 1e-3,
                    grad_scale: float = 1.0, steps: int = 20000, seed: int = 0) -> dict[str, np.ndarray]:
    """A scale-invariant model: the loss gradient is orthogonal to θ and scales as 1/‖θ‖
    (here a random direction, the noise-dominated limit), plus weight decay λθ.

    Returns per-step ``angle`` (radians between θ_t and θ_{t+1}) and ``norm`` (‖θ_t‖); at
    equilibrium the mean angle approaches √(2ηλ/(1+μ)).
    """
    rng = np.random.default_rng(seed)
    theta = rng.standard_normal(dim)
    theta *= (eta * grad_scale**2 / (2 * weight_decay * (1 + momentum))) ** 0.25 / np.linalg.norm(theta)  # start near equilibrium
    v = np.zeros(dim)
    angles, norms = np.empty(steps), np.empty(steps)
    for t in range(steps):
        n = np.linalg.norm(theta)
        xi = rng.standard_normal(dim)
        xi -= (xi @ theta) / n**2 * theta  # orthogonal to θ
        g = grad_scale * xi / (np.linalg.norm(xi) * n) + weight_decay * theta
        v = momentum * v + g
        new = theta - eta * v
        angles[t] = np.arccos(np.clip(new @ theta / (np.linalg.norm(new) * n), -1, 1))
        norms[t] = n
        theta = new
    return {"angle": angles, "norm": norms}


def equilibrium_angle(eta: float, weight_decay: float, momentum: float = 0.0) -> float:
    """√(2ηλ/(1+μ)): the angular step of a scale-invariant weight at equilibrium (radians)."""
    return float(np.sqrt(2 * eta * weight_decay / (1 + momentum)))


def quadratic_grid(*, momenta=(0.9, 0.0), weight_decays=(0.1, 0.0), noises=(0.02, 0.0), seeds=range(3),
                   **kwargs):
    """Simulate every (noise, momentum, weight decay, seed); one row each with the checkpoint
    hallmarks (MDS, mean consecutive-update cosine between checkpoints), the mean cosine between
    consecutive single steps, and the share of steps whose top-eigenvector component flips sign.
    ``kwargs`` go to :func:`simulate_quadratic` (same η for every cell, as the paper disables
    momentum and weight decay at a fixed learning rate)."""
    import pandas as pd

    from ..hallmarks import consecutive_update_cos, gram_from_checkpoints, mds

    rows = []
    for noise in noises:
        for mu in momenta:
            for wd in weight_decays:
                for seed in seeds:
                    r = simulate_quadratic(momentum=mu, weight_decay=wd, noise=noise, seed=seed, **kwargs)
                    G = gram_from_checkpoints(r.checkpoints)
                    rows.append({"noise": noise, "momentum": mu, "weight_decay": wd, "seed": seed,
                                 "label": f"μ={mu:g}, λ={wd:g}", "mds": mds(G),
                                 "checkpoint_update_cos": float(np.nanmean(consecutive_update_cos(G))),
                                 "step_cos": float(r.step_cos.mean()),
                                 "top_flip_share": sign_flip_fraction(r.top_component)})
    return pd.DataFrame(rows)


def regime_grid(curvature_steps: np.ndarray, momenta: np.ndarray) -> np.ndarray:
    """Regime names over a grid: rows = momenta μ, columns = η(h + λ) values (object array)."""
    return np.array([[regime(x, 1.0, momentum=mu, weight_decay=0.0) for x in curvature_steps] for mu in momenta],
                    dtype=object)
