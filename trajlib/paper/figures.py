"""Figures only this paper's notebooks draw: seed summaries of sweeps (02, 07), the regime map of
the oscillation theory (06), width families (11), and runs against their MDS and accuracy by
subspace size (12). General figures live in :mod:`trajlib.plot`."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns


def summary_points(summary, column: str, *, ax=None, xlabel: str | None = None, title: str | None = None,
                   color: str = "C0", fmt: str = ".3f"):
    """Mean ± std over seeds per label (one row each, top to bottom), from ``Sweep.summary()``."""
    ax = ax or plt.subplots(figsize=(4.2, 2.6))[1]
    mean, std = summary[(column, "mean")], summary[(column, "std")].fillna(0.0)
    y = np.arange(len(mean))[::-1]
    ax.errorbar(mean, y, xerr=std, fmt="o", color=color, capsize=4, ms=6)
    ax.set_yticks(y, [str(k) for k in mean.index])
    for yi, m, sd in zip(y, mean, std):
        ax.annotate(format(m, fmt), (m + sd, yi), textcoords="offset points", xytext=(6, 0), va="center",
                    fontsize="small")
    ax.set_xlabel(xlabel or column)
    ax.margins(x=0.3, y=0.15)
    if title:
        ax.set_title(title)
    sns.despine(ax=ax)
    return ax


REGIME_COLORS = {"monotone": "#9ecae1", "rotating": "#fdae6b", "sign-flipping": "#d62728", "divergent": "#525252"}


def regime_map(grid, x, y, *, ax=None, xlabel: str = "η (h + λ)", ylabel: str = "momentum μ",
               colors: dict | None = None):
    """A categorical map (rows = ``y``, columns = ``x``) of regime names, with a legend."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    colors = colors or REGIME_COLORS
    names = list(colors)
    codes = np.vectorize(names.index)(grid)
    ax = ax or plt.subplots(figsize=(4.6, 3.4))[1]
    ax.imshow(codes, origin="lower", aspect="auto", cmap=ListedColormap([colors[n] for n in names]),
              vmin=-0.5, vmax=len(names) - 0.5, extent=(x[0], x[-1], y[0], y[-1]), interpolation="nearest")
    ax.legend(handles=[Patch(color=colors[n], label=n) for n in names], fontsize="small", loc="upper right",
              framealpha=0.9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax


def mds_against(table, column: str, *, ax=None, hue: str = "page", ylabel: str | None = None, title: str | None = None):
    """One point per run: MDS (x) against ``column`` (y), coloured by ``hue`` (page 12)."""
    ax = ax or plt.subplots(figsize=(4.6, 3.4))[1]
    for i, (key, rows) in enumerate(table.groupby(hue, sort=True)):
        ax.scatter(rows["mds"], rows[column], s=22, color=f"C{i}", label=str(key), alpha=0.85)
    return _labelled(ax, "MDS (all parameters)", ylabel or column, title)


def accuracy_by_subspace(by_k, references: dict, *, ax=None, title: str | None = None):
    """Final accuracy (mean ± std over seeds) against the subspace size k (log₂ axis), from
    ``by_k`` (seeds × k), with each reference (label → per-seed accuracies) as a band (page 12)."""
    ax = ax or plt.subplots(figsize=(4.8, 3.4))[1]
    ks = np.asarray(by_k.columns, dtype=float)
    ax.errorbar(ks, 100 * by_k.mean(), yerr=100 * by_k.std().fillna(0.0), fmt="o-", capsize=4, color="C0",
                label="top-k span of the early trajectory")
    for i, (label, acc) in enumerate(references.items()):
        m, s = 100 * np.mean(acc), 100 * (np.std(acc, ddof=1) if len(acc) > 1 else 0.0)
        ax.axhline(m, color=f"C{i + 1}", ls="--", label=label)
        ax.axhspan(m - s, m + s, color=f"C{i + 1}", alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(int(k)) for k in ks])
    ax.legend(fontsize="small", frameon=False)
    return _labelled(ax, "directions trained after the switch (k)", "final test accuracy (%)", title)


def _labelled(ax, xlabel: str, ylabel: str, title: str | None):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    sns.despine(ax=ax)
    return ax


def by_width(table, column: str, *, ax=None, ylabel: str | None = None, logy: bool = False, title: str | None = None):
    """One line per family (mean ± std over seeds) of ``column`` against width (log₂ axis), from
    :func:`trajlib.paper.scale_families.family_table` (page 11)."""
    ax = ax or plt.subplots(figsize=(4.8, 3.4))[1]
    for i, (family, rows) in enumerate(table.groupby("family", sort=False)):
        g = rows.groupby("width")[column]
        mean, std = g.mean(), g.std().fillna(0.0)
        mu = family.startswith("μP")
        ax.errorbar(mean.index, mean, yerr=std, fmt="o-" if not mu else "s--", capsize=3, color=f"C{i}",
                    label=family, lw=2.2 if mu else 1.4)
    ax.set_xscale("log", base=2)
    widths = sorted(table["width"].unique())
    ax.set_xticks(widths, [str(w) for w in widths])
    if logy:
        from matplotlib import ticker

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    return _labelled(ax, "width (hidden units)", ylabel or column, title)
