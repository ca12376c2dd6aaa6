"""Every figure of the book has a caption and alt text, and shares its cell with no table.

The figures are drawn by notebook cells that end in ``plt.show()``; myst-nb renders a cell's
``metadata.mystnb.figure`` (caption, name) and ``metadata.mystnb.image`` (alt) as a numbered
<figure> with a <figcaption> around an <img alt=...>. The built pages are checked in test_book.py.
"""

from __future__ import annotations

import ast
import re

import nbformat
import pytest
from conftest import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def figure_cells(path):
    nb = nbformat.read(path, as_version=4)
    return [c for c in nb.cells if c.cell_type == "code" and "plt.show()" in c.source]


def test_the_notebooks_draw_figures():
    assert NOTEBOOKS and sum(len(figure_cells(p)) for p in NOTEBOOKS) >= len(NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_figure_has_a_caption_a_name_and_alt_text(path):
    for cell in figure_cells(path):
        meta = cell.metadata.get("mystnb", {})
        figure, image = meta.get("figure", {}), meta.get("image", {})
        where = f"{path.name}, cell {cell.get('id')}"
        caption, alt = str(figure.get("caption", "")).strip(), str(image.get("alt", "")).strip()
        assert len(caption.split()) >= 8, f"{where}: no caption (metadata.mystnb.figure.caption)"
        assert len(alt.split()) >= 6, f"{where}: no alt text (metadata.mystnb.image.alt)"
        assert alt != caption, f"{where}: the alt text describes the picture, the caption reads it"
        assert re.fullmatch(r"fig-[a-z0-9-]+", str(figure.get("name", ""))), f"{where}: figure name"
        assert "{glue" not in alt, f"{where}: alt text is plain text"


def test_figure_names_are_unique_across_the_book():
    names = [c.metadata["mystnb"]["figure"]["name"] for p in NOTEBOOKS for c in figure_cells(p)
             if "figure" in c.metadata.get("mystnb", {})]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_figure_cell_shows_nothing_but_its_figure(path):
    """myst-nb puts every rich output of a captioned cell into a figure with that caption, so a
    table displayed by the same cell would be captioned as the figure: its last statement must
    not be an expression (a DataFrame) other than the figure itself."""
    for cell in figure_cells(path):
        last = ast.parse(cell.source).body[-1]
        shown = isinstance(last, ast.Expr) and not (
            isinstance(last.value, ast.Call) and ast.unparse(last.value.func) in ("plt.show", "print"))
        assert not shown, f"{path.name}, cell {cell.get('id')}: ends in {ast.unparse(last)[:50]!r}"
        assert "display(" not in cell.source, f"{path.name}, cell {cell.get('id')}: displays more than its figure"
