"""Figures: integer axes get integer ticks; the style saves figures at twice the screen dpi; what
is on the axes of a drawn number is what the hallmarks say."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from trajlib import hallmarks as H  # noqa: E402
from trajlib import plot  # noqa: E402
from trajlib.stats import GramStats  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def ticks(ax, axis="x"):
    ax.figure.canvas.draw()
    lo, hi = getattr(ax, f"get_{axis}lim")()
    t = np.asarray(getattr(ax, f"get_{axis}ticks")())
    return t[(t >= lo - 1e-9) & (t <= hi + 1e-9)]


@pytest.mark.parametrize("x", [np.array([0, 1, 2]), np.array([0.0, 1.0, 2.0, 3.0]), [1, 2]])
def test_hallmark_curve_counts_get_whole_number_ticks(x):
    ax = plot.hallmark_curve(x, np.linspace(0.2, 0.8, len(x)))
    t = ticks(ax)
    assert len(t) >= 2
    np.testing.assert_array_equal(t, np.round(t))


def test_hallmark_curve_leaves_continuous_and_log_axes_alone():
    ax = plot.hallmark_curve(np.array([0.0, 0.5, 1.0]), np.array([1.0, 2.0, 3.0]))
    assert np.any(ticks(ax) != np.round(ticks(ax))), "a continuous axis keeps fractional ticks"
    ax = plot.hallmark_curve(np.array([0, 1, 2]), np.array([1.0, 2.0, 3.0]), integer_x=False)
    assert np.any(ticks(ax) != np.round(ticks(ax)))
    ax = plot.hallmark_curve(np.array([16, 64, 256]), np.array([1.0, 2.0, 3.0]), logx=True)
    assert ax.get_xscale() == "log"


def test_integer_ticks_on_either_axis_and_bad_axis_named():
    _, ax = plt.subplots()
    ax.plot([0, 1, 2], [0, 2, 1])
    plot.integer_ticks(ax, "both")
    for axis in "xy":
        t = ticks(ax, axis)
        np.testing.assert_array_equal(t, np.round(t))
    with pytest.raises(ValueError, match="'z'"):
        plot.integer_ticks(ax, "z")


def test_style_saves_at_twice_the_screen_dpi_and_restores():
    before = plt.rcParams["savefig.dpi"]
    with plot.style():
        assert plt.rcParams["savefig.dpi"] == 2 * plt.rcParams["figure.dpi"]
    assert plt.rcParams["savefig.dpi"] == before


def tick_texts(ax):
    return [t.get_text() for t in ax.get_xticklabels()]


def test_map_ticks_of_evenly_spaced_labels_are_round_values():
    C = np.eye(265) * 0.5 + 0.5
    # a dense map: 265 steps, 22 a epoch, labelled in fractional epochs
    ax = plot.trajectory_map(C, labels=np.arange(265) / 22)
    texts = tick_texts(ax)
    assert texts and all(t.lstrip("-").isdigit() for t in texts), texts
    assert len(texts) <= 8
    pos = ax.get_xticks()
    np.testing.assert_allclose(pos, np.array([float(t) for t in texts]) * 22 + 0.5)  # cell centres
    # epochs 0..12 on 13 checkpoints: whole numbers at their own cells
    ax = plot.trajectory_map(np.eye(13), labels=np.arange(13.0))
    assert all(t.isdigit() for t in tick_texts(ax))
    np.testing.assert_allclose(ax.get_xticks(), [float(t) + 0.5 for t in tick_texts(ax)])


def test_map_ticks_of_a_log_spaced_schedule_name_checkpoints():
    steps = np.array([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 3000])
    ax = plot.trajectory_map(np.eye(len(steps)), labels=steps, axis_label="step")
    texts = tick_texts(ax)
    assert set(texts) <= {str(s) for s in steps} and "0" in texts


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
