"""Figures: trajectory-map heatmaps, side-by-side map grids with one colour scale, hallmark curves.

Every function takes ``ax=`` (or creates one) and returns what it drew on; colour scale,
limits and labels are arguments. :func:`style` applies the book's look inside a ``with`` block
and leaves matplotlib's global state as it found it.
"""

from __future__ import annotations

import contextlib
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

MAP_CMAP = "rocket"


@contextlib.contextmanager
def style(font_scale: float = 0.9):
    """The book's figure style (seaborn ticks, small fonts), restored on exit. Figures display at
    110 dpi and ``savefig`` writes them at twice that, sharp on high-density screens."""
    with sns.axes_style("ticks"), sns.plotting_context("notebook", font_scale=font_scale), \
            plt.rc_context({"figure.dpi": 110, "savefig.dpi": 220, "axes.titlesize": "medium"}):
        yield


def _tick_positions(n: int, max_ticks: int) -> np.ndarray:
    step = max(1, int(np.ceil(n / max_ticks)))
    return np.arange(0, n, step)


def _map_ticks(labels: list, max_ticks: int) -> tuple[np.ndarray, list[str]]:
    """Tick positions (cell centres at i + 0.5) and texts for the axes of a map.

    Evenly spaced numeric labels (epochs, steps, fractional epochs of a dense map) get ticks at
    round values (whole numbers when every label is one), placed by linear interpolation; other
    labels (a log-spaced schedule, names) are shown at every k-th checkpoint."""
    T = len(labels)
    try:
        x = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        x = None
    if x is not None and T > 2 and np.all(np.isfinite(x)) and x[-1] > x[0]:
        span = x[-1] - x[0]
        if np.all(np.diff(x) >= 0) and np.abs(x - np.linspace(x[0], x[-1], T)).max() <= 0.01 * span:
            from matplotlib.ticker import MaxNLocator

            values = MaxNLocator(nbins=max(1, max_ticks - 1), integer=_integral(x),
                                 steps=[1, 2, 2.5, 5, 10]).tick_values(x[0], x[-1])
            values = values[(values >= x[0] - 1e-9 * span) & (values <= x[-1] + 1e-9 * span)]
            return (values - x[0]) / span * (T - 1) + 0.5, [_fmt(v) for v in values]
    ticks = _tick_positions(T, max_ticks)
    return ticks + 0.5, [_fmt(labels[i]) for i in ticks]


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{v:g}"
    return str(v)


def block_mean(C: np.ndarray, cells: int) -> np.ndarray:
    """(T, T) → (m, m) with m = min(T, cells): the mean of C over a grid of nearly equal
    blocks of consecutive rows and columns (NaN entries skipped)."""
    C = np.asarray(C, dtype=np.float64)
    T = len(C)
    if T <= cells:
        return C
    edges = np.linspace(0, T, cells + 1).round().astype(int)[:-1]
    ok = np.isfinite(C)
    tot = np.add.reduceat(np.add.reduceat(np.where(ok, C, 0.0), edges, axis=0), edges, axis=1)
    cnt = np.add.reduceat(np.add.reduceat(ok.astype(np.float64), edges, axis=0), edges, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tot / cnt


def trajectory_map(C: np.ndarray, *, labels: Sequence | None = None, ax=None, vmin: float | None = None,
                   vmax: float = 1.0, cmap: str = MAP_CMAP, title: str | None = None,
                   axis_label: str = "epoch", cbar: bool = True,
                   cbar_label: str = "cosine similarity", max_ticks: int = 8, cbar_ax=None,
                   max_cells: int = 400):
    """Heatmap of a (T, T) map with checkpoint labels on both axes; returns the Axes.

    ``labels``: one per checkpoint (epochs or steps); ``vmin``/``vmax``: the colour scale
    (pass the same values to maps compared side by side). Maps with more than ``max_cells``
    rows (dense-in-time maps of thousands of steps) are drawn as block means on a
    ``max_cells`` grid (:func:`block_mean`), one image rather than T² cells. Evenly spaced
    numeric labels get at most ``max_ticks`` ticks at round values (whole numbers for epochs and
    steps); others are written at every k-th checkpoint.
    """
    C = np.asarray(C)
    ax = ax or plt.subplots(figsize=(4.2, 3.6))[1]
    T = len(C)
    labels = list(range(T)) if labels is None else list(labels)
    if T > max_cells:
        img = ax.imshow(block_mean(C, max_cells), cmap=cmap, vmin=vmin, vmax=vmax, extent=(0, T, T, 0),
                        interpolation="nearest", aspect="equal", rasterized=True)
        if cbar:
            ax.figure.colorbar(img, ax=ax if cbar_ax is None else None, cax=cbar_ax, label=cbar_label)
    else:
        sns.heatmap(C, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap, square=True, cbar=cbar, cbar_ax=cbar_ax,
                    cbar_kws={"label": cbar_label} if cbar else None, xticklabels=False, yticklabels=False,
                    rasterized=True)
    ticks, texts = _map_ticks(labels, max_ticks)
    ax.set_xticks(ticks, texts, rotation=0)
    ax.set_yticks(ticks, texts, rotation=0)
    ax.set_xlabel(f"checkpoint {axis_label}")
    ax.set_ylabel(f"checkpoint {axis_label}")
    if title:
        ax.set_title(title)
    return ax


def map_grid(maps: Mapping[str, np.ndarray], *, labels: Sequence | Mapping | None = None,
             ncols: int | None = None, vmin: float | None = None, vmax: float = 1.0,
             axis_label: str = "epoch", cbar_label: str = "cosine similarity", panel_size: float = 2.6,
             cmap: str = MAP_CMAP):
    """Maps side by side on one shared colour scale (one colour bar); returns (fig, axes).

    ``maps``: title → (T, T) map (put the MDS in the title); ``labels``: one sequence for all
    panels or a mapping title → sequence. ``vmin`` defaults to the smallest value shown.
    """
    titles = list(maps)
    ncols = ncols or min(4, len(titles))
    nrows = int(np.ceil(len(titles) / ncols))
    if vmin is None:
        vmin = float(np.floor(min(np.nanmin(m) for m in maps.values()) * 20) / 20)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols + 0.9, panel_size * nrows + 0.3),
                             squeeze=False, constrained_layout=True)
    for k, ax in enumerate(axes.flat):
        if k >= len(titles):
            ax.axis("off")
            continue
        lab = labels.get(titles[k]) if isinstance(labels, Mapping) else labels
        trajectory_map(maps[titles[k]], labels=lab, ax=ax, vmin=vmin, vmax=vmax, cmap=cmap,
                       title=titles[k], axis_label=axis_label, cbar=False, max_ticks=5)
        if k % ncols:
            ax.set_ylabel("")
        if k < len(titles) - ncols:
            ax.set_xlabel("")
    mappable = plt.cm.ScalarMappable(norm=plt.Normalize(vmin, vmax), cmap=cmap)
    fig.colorbar(mappable, ax=axes, label=cbar_label, shrink=0.85)
    return fig, axes


def integer_ticks(ax, axis: str = "x"):
    """Ticks at whole numbers only on ``axis`` ("x", "y" or "both") of ``ax``, for counts such as
    steps, epochs, widths, layers or seeds; returns the Axes."""
    from matplotlib.ticker import MaxNLocator

    for name in ("x", "y") if axis == "both" else (axis,):
        if name not in ("x", "y"):
            raise ValueError(f"axis must be 'x', 'y' or 'both', got {axis!r}")
        getattr(ax, f"{name}axis").set_major_locator(MaxNLocator(integer=True))
    return ax


def _integral(x: np.ndarray) -> bool:
    """True when every finite value of ``x`` is a whole number (epochs stored as floats included)."""
    x = np.asarray(x)
    if x.dtype.kind in "iub":
        return True
    if x.dtype.kind != "f":
        return False
    finite = x[np.isfinite(x)]
    return finite.size > 0 and bool(np.all(finite == np.round(finite)))


def hallmark_curve(x: Sequence, y: Sequence, *, yerr: Sequence | None = None, ax=None, label: str | None = None,
                   xlabel: str = "", ylabel: str = "", logx: bool = False, marker: str = "o",
                   integer_x: bool | None = None, **kwargs):
    """A hallmark against a swept quantity (epoch, batch size, parameter count), optional ±yerr.

    ``integer_x``: ticks at whole numbers only (:func:`integer_ticks`); by default when every x is a
    whole number on a linear axis (epochs, steps, gaps between checkpoints).
    """
    ax = ax or plt.subplots(figsize=(4.2, 3.2))[1]
    x, y = np.asarray(x), np.asarray(y)
    ax.plot(x, y, marker=marker, label=label, **kwargs)
    if yerr is not None:
        yerr = np.asarray(yerr)
        ax.fill_between(x, y - yerr, y + yerr, alpha=0.2, color=ax.lines[-1].get_color(), linewidth=0)
    if logx:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    elif integer_x or (integer_x is None and _integral(x)):
        integer_ticks(ax, "x")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    sns.despine(ax=ax)
    return ax


def lengths(curves, *, x: str = "epoch", ax=None, xlabel: str | None = None, logy: bool = True):
    """‖θ_t‖, the distance from initialisation ‖θ_t − θ_0‖ and the step norms ‖u_t‖ against time.

    ``curves``: the table of :func:`trajlib.hallmarks.per_checkpoint` (columns ``param_norm``,
    ``distance_from_init``, ``step_norm`` and ``x``); u_t = θ_{t+1} − θ_t is drawn at the midpoint
    of the interval it spans. ``logy``: a log scale, since step norms shrink by orders of magnitude
    as the learning rate decays. Notebook 01; returns the Axes.
    """
    ax = ax or plt.subplots(figsize=(4.4, 3.2))[1]
    t = np.asarray(curves[x], dtype=np.float64)
    step = np.asarray(curves["step_norm"], dtype=np.float64)[:-1]  # u_t sits on row t; the last row has none
    ax.plot(t, curves["param_norm"], marker=".", color="C0", label="‖θ_t‖")
    dist = np.asarray(curves["distance_from_init"], dtype=np.float64)
    if logy:  # ‖θ_0 − θ_0‖ = 0 has no place on a log scale
        dist = np.where(dist > 0, dist, np.nan)
    ax.plot(t, dist, marker=".", color="C2", label="‖θ_t − θ₀‖")
    ax.plot(0.5 * (t[:-1] + t[1:]), step, marker=".", color="C1", label="‖u_t‖ = ‖θ_t+1 − θ_t‖")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel("Euclidean norm")
    ax.legend(fontsize="small")
    sns.despine(ax=ax)
    return ax


def loss_plane(alphas: Sequence[float], betas: Sequence[float], Z: np.ndarray, coords: np.ndarray, *,
               labels: Sequence | None = None, explained: Sequence[float] | None = None, ax=None,
               levels: int = 14, log: bool = True, vmin: float | None = None, vmax: float | None = None,
               cmap: str = "mako_r", max_labels: int = 6,
               path_color: str = "C3", title: str | None = None, cbar: bool = True,
               axis_names: Sequence[str] = ("PC1", "PC2")):
    """Contours of the loss on a plane with the trajectory drawn on it; returns the Axes.

    ``Z`` (len(alphas), len(betas)): loss at center + a·d_1 + b·d_2 (``trajlib.landscape``);
    ``coords`` (T, ≥2): the checkpoints in the same plane coordinates (``pca.relative_to``);
    ``labels``: one per checkpoint (steps), ``max_labels`` of them written beside the path;
    ``explained``: variance ratios of the two directions, shown on the axes; ``log``: log-spaced
    contour levels from ``vmin`` to ``vmax`` (default: the range of ``Z``; pass the same values to
    planes compared side by side). The center (0, 0) is marked with a star.
    """
    Z = np.asarray(Z, dtype=np.float64)
    coords = np.asarray(coords, dtype=np.float64)
    ax = ax or plt.subplots(figsize=(4.4, 3.8))[1]
    lo = np.nanmin(Z) if vmin is None else vmin
    hi = np.nanmax(Z) if vmax is None else vmax
    Z = np.clip(Z, lo, hi)  # values beyond the scale take its end colour
    if log and lo > 0:
        lv = np.geomspace(lo, hi, levels)
        norm = plt.matplotlib.colors.LogNorm(lo, hi)
    else:
        lv, norm = np.linspace(lo, hi, levels), None
    cs = ax.contourf(alphas, betas, Z.T, levels=lv, cmap=cmap, norm=norm)
    ax.contour(alphas, betas, Z.T, levels=lv, colors="white", linewidths=0.4, alpha=0.5)
    if cbar:
        ax.figure.colorbar(cs, ax=ax, label="loss", format="%.3g")
    ax.plot(coords[:, 0], coords[:, 1], "-", color=path_color, lw=1.4)
    ax.scatter(coords[:, 0], coords[:, 1], s=10, color=path_color, zorder=3)
    ax.plot([0], [0], marker="*", ms=11, color="gold", mec="black", mew=0.6, zorder=4, ls="none")
    if labels is not None:
        idx = np.unique(np.linspace(0, len(coords) - 1, min(max_labels, len(coords))).round().astype(int))
        for i in idx:
            ax.annotate(_fmt(labels[i]), coords[i, :2], xytext=(3, 3), textcoords="offset points",
                        fontsize="x-small", color="white")
    for set_label, name, k in ((ax.set_xlabel, axis_names[0], 0), (ax.set_ylabel, axis_names[1], 1)):
        set_label(name if explained is None else f"{name} ({100 * explained[k]:.1f}% of variance)")
    if title:
        ax.set_title(title)
    return ax
