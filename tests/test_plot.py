"""Figures that draw numbers: what is on the axes is what the hallmarks say."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from trajlib import hallmarks as H  # noqa: E402
from trajlib import plot  # noqa: E402
from trajlib.stats import GramStats  # noqa: E402


def test_lengths_draws_the_norms_of_checkpoints_displacements_and_updates():
    rng = np.random.default_rng(0)
    X = np.cumsum(rng.normal(size=(7, 30)), axis=0) + 5.0  # (T, P)
    epochs = np.arange(7) * 2.0
    st = GramStats(np.arange(7), epochs, {"all": H.gram_from_checkpoints(X)}, {"all": 30})
    ax = plot.lengths(H.per_checkpoint(st))
    norm, dist, step = ax.lines
    np.testing.assert_allclose(norm.get_xdata(), epochs)
    np.testing.assert_allclose(norm.get_ydata(), np.linalg.norm(X, axis=1), rtol=1e-10)
    d = np.linalg.norm(X - X[0], axis=1)
    assert np.isnan(dist.get_ydata()[0])  # zero distance at θ_0: not drawn on a log scale
    np.testing.assert_allclose(dist.get_ydata()[1:], d[1:], rtol=1e-10)
    np.testing.assert_allclose(step.get_xdata(), epochs[:-1] + 1.0)  # midpoints of each interval
    np.testing.assert_allclose(step.get_ydata(), np.linalg.norm(np.diff(X, axis=0), axis=1), rtol=1e-10)
    assert ax.get_yscale() == "log"
    plt.close(ax.figure)
    ax = plot.lengths(H.per_checkpoint(st), x="step", logy=False)
    assert ax.lines[1].get_ydata()[0] == 0.0 and ax.get_yscale() == "linear" and ax.get_xlabel() == "step"
    plt.close(ax.figure)
