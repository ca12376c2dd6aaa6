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
    assert 'src="_static/mathjax/tex-chtml.js"' in methods
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
