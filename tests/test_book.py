"""The built book: every page in the table of contents, local assets only, math rendered locally."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

import yaml


class Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []  # (tag, url) of things the browser loads

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.refs.append((tag, a["src"]))
        elif tag == "link" and a.get("href") and a.get("rel") and set(a["rel"].split()) & {"stylesheet", "preload", "icon"}:
            self.refs.append((tag, a["href"]))
        elif tag in ("img", "iframe", "source") and a.get("src"):
            self.refs.append((tag, a["src"]))


def html_dir(root: Path) -> Path:
    return root / "book" / "_build" / "html"


pytestmark = pytest.mark.slow


def test_book_built_with_warnings_as_errors(ci_book):
    root, status, log = ci_book
    assert status == 0, "\n".join(log)
    assert (html_dir(root) / "intro.html").is_file()


def test_every_toc_page_exists(ci_book):
    root, _, _ = ci_book
    toc = yaml.safe_load((root / "book" / "_generated" / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for p in toc["parts"] for c in p["chapters"]]
    full = yaml.safe_load((root / "book" / "_toc.yml").read_text())
    assert len(files) == 1 + sum(len(p["chapters"]) for p in full["parts"]), "a toc page was dropped"
    for f in files:
        assert (html_dir(root) / f"{f}.html").is_file(), f


def test_no_network_references_and_every_asset_exists(ci_book):
    root, _, _ = ci_book
    pages = sorted(p for p in html_dir(root).rglob("*.html") if "_static" not in p.parts)
    assert pages
    for page in pages:
        parser = Refs()
        parser.feed(page.read_text())
        for tag, url in parser.refs:
            assert not url.startswith(("http:", "https:", "//")), f"{page.name}: <{tag}> loads {url}"
            local = (page.parent / url.split("?")[0].split("#")[0]).resolve()
            assert local.exists(), f"{page.name}: <{tag}> {url} does not exist"


def test_math_is_rendered_by_the_local_mathjax(ci_book):
    root, _, _ = ci_book
    methods = (html_dir(root) / "methods.html").read_text()
    assert 'class="math' in methods
    assert 'src="_static/mathjax/tex-chtml.js' in methods  # a rebuild appends ?v=<checksum>
    assert (html_dir(root) / "_static" / "mathjax" / "tex-chtml.js").stat().st_size > 100_000
    assert list((html_dir(root) / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))


def test_front_page_is_the_claims_ledger(ci_book):
    root, _, _ = ci_book
    intro = (html_dir(root) / "intro.html").read_text()
    assert "Claims ledger" in intro and "paper claims tested on trained networks" in intro
    assert "What we could not check" in intro and "Paper claims, tested on trained networks" in intro
    assert "figures/01-trajectory-map.html" in intro
    assert "thebe" not in intro.lower() or "thebe-launch" not in intro


def test_bibliography_labels_are_author_year(ci_book):
    import re

    root, _, _ = ci_book
    refs = re.sub(r"<[^>]+>", "", (html_dir(root) / "references.html").read_text())
    assert re.search(r"\[Goyal et al\. 2017\]", refs)
    assert not re.search(r"\[[A-Z][A-Za-z]{0,6}\+?\d\d\]", refs), "pybtex alpha keys such as [GDollarG+17]"


def test_figure_pages_show_one_parameters_toggle_and_no_bookkeeping(ci_book):
    root, _, _ = ci_book
    page = (html_dir(root) / "figures" / "02-momentum-weight-decay.html").read_text()
    import html

    assert html.unescape(page).count("Show this page's parameters") == 1
    assert "write_results(" not in page and "glue_all(" not in page
    assert "TqdmWarning" not in page and "PosixPath(" not in page


class Figures(HTMLParser):
    """Each <img> of a page with its alt text and the caption of the <figure> around it (None if
    it is in no figure); the links of the page."""

    def __init__(self):
        super().__init__()
        self.images: list[dict] = []
        self.links: list[str] = []
        self._figures: list[dict] = []  # open <figure> elements, innermost last
        self._in_caption = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self._figures.append({"caption": ""})
        elif tag == "figcaption":
            self._in_caption += 1
        elif tag == "img":
            self.images.append({"src": a.get("src", ""), "alt": (a.get("alt") or "").strip(),
                                "width": a.get("width") or _style_width(a.get("style") or ""),
                                "figure": self._figures[-1] if self._figures else None})
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "figure" and self._figures:
            self._figures.pop()
        elif tag == "figcaption":
            self._in_caption -= 1

    def handle_data(self, data):
        if self._in_caption and self._figures:
            self._figures[-1]["caption"] += data


def _style_width(style: str) -> str | None:
    import re

    m = re.search(r"(?:^|;)\s*width:\s*(\d+)px", style)
    return m.group(1) if m else None


def png_width(path: Path) -> int:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big")


def figure_pages(root: Path) -> list[Path]:
    pages = sorted((html_dir(root) / "figures").glob("*.html"))
    assert pages, "no figure page was built"
    return pages


def test_every_figure_is_captioned_with_alt_text_at_retina_resolution(ci_book):
    root, _, _ = ci_book
    for page in figure_pages(root):
        parser = Figures()
        parser.feed(page.read_text())
        assert parser.images, f"{page.name} shows no figure"
        for img in parser.images:
            where = f"{page.name}: <img src={img['src']}>"
            assert img["alt"], f"{where} has no alt text"
            assert img["figure"] is not None, f"{where} is not in a <figure>"
            caption = " ".join(img["figure"]["caption"].split())
            assert caption.startswith("Fig.") and len(caption.split()) >= 8, f"{where}: caption {caption!r}"
            # retina: the PNG holds twice the pixels of the width it is shown at (rounded down)
            assert img["width"], f"{where} has no display width"
            assert png_width((page.parent / img["src"]).resolve()) // 2 == int(img["width"]), where


def test_figure_pages_offer_their_notebook_for_download_and_no_launch_buttons(ci_book):
    import nbformat

    root, _, _ = ci_book
    for page in figure_pages(root):
        parser = Figures()
        text = page.read_text()
        parser.feed(text)
        wanted = f"_sources/figures/{page.stem}.ipynb"
        links = [h for h in parser.links if h.endswith(wanted)]
        assert links, f"{page.name} offers no download of {page.stem}.ipynb"
        nb = nbformat.read((page.parent / links[0]).resolve(), as_version=4)  # the executed notebook
        assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
        assert "launch-buttons" not in text and "thebe-launch-button" not in text, page.name


def test_figure_pages_show_no_stray_warnings(ci_book):
    import re

    root, _, _ = ci_book
    for page in figure_pages(root):
        found = re.findall(r"\b\w*Warning: [^<]{0,80}", page.read_text())
        assert not found, f"{page.name}: {found[0]}"


def test_markdown_tables_show_cells_as_given_and_right_align_numbers():
    from trajlib.paper.book import _markdown

    lines = _markdown([{"n": "2.0", "name": "syrk", "share": "94% (0.086 s)"},
                       {"n": "1,024", "name": "tiles", "share": "—"}]).splitlines()
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["2.0", "syrk", "94% (0.086 s)"]  # not "2"
    marks = lines[1].strip("|").split("|")
    assert [m.startswith(":") for m in marks] == [False, True, True] and marks[0].endswith(":")  # n right, text left


def test_methods_page_shows_every_seed_check_as_measured_and_the_front_page_says_how_to_verify(ci_book):
    import json

    from trajlib.paper.seed_checks import CHECKS, trusted

    root, _, _ = ci_book
    methods = (html_dir(root) / "methods.html").read_text()
    path = root / "book" / "benchmarks" / "seed_margins.json"
    measured = json.loads(path.read_text()) if path.is_file() else {}
    for check in CHECKS:
        row = methods.split(f"<code class=\"docutils literal notranslate\"><span class=\"pre\">{check.name}</span>")
        assert len(row) == 2, check.name
        cells = row[1].split("</tr>")[0]
        record = measured.get(check.name)
        assert (f">{record['n']}<" if record else ">not measured<") in cells, check.name
        assert (">yes<" in cells) == trusted(record), check.name
    import html
    import re

    intro = html.unescape(re.sub(r"<[^>]+>", "", (html_dir(root) / "intro.html").read_text()))  # code is highlighted
    assert "python -m trajlib.paper verify" in intro and "rtol" in intro


def _public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_") and getattr(v, "__module__", None)
                 == module.__name__]
    return names


def test_reference_page_documents_every_public_name(ci_book):
    """Every public name of trajlib (its ``__all__``, the modules there included) and of each
    trajlib.integrations module has an entry on the reference page, built from its docstring."""
    import importlib

    import trajlib

    root, _, _ = ci_book
    page = (html_dir(root) / "reference.html").read_text()
    missing = [n for n in _public_names(trajlib)
               if f'id="trajlib.{n}"' not in page and f'id="module-trajlib.{n}"' not in page]
    for sub in ("hf", "lightning", "live", "session"):
        module = importlib.import_module(f"trajlib.integrations.{sub}")
        missing += [f"{module.__name__}.{n}" for n in _public_names(module)
                    if f'id="{module.__name__}.{n}"' not in page]
    assert not missing, missing
    assert 'id="trajlib.open_trajectory"' in page and "weights-only" in page  # a docstring, rendered
