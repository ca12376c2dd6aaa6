"""`python -m trajlib.paper verify`: pages re-executed from scratch, every number compared."""

from __future__ import annotations

import json
import math

import nbformat
import nbformat.v4 as v4
import pytest

from trajlib.paper.book import reproduce
from trajlib.paper.verify import compare, verify

PAGE = '''import numpy as np
from trajlib.paper.ledger import claim, write_results
x = float(np.random.default_rng(seed).normal())
write_results(NAME, title="t", claims=[claim("x is drawn", paper="p", source="ours", ours=x)],
              values={"x": x, "label": "drawn"}, parameters={"preset": preset, "seed": seed}, results_dir=results_dir)'''


def _layout(root):
    (root / "notebooks").mkdir(parents=True)
    for name, seed in (("01-a", 1), ("02-b", 2)):
        nb = v4.new_notebook()
        params = v4.new_code_cell(f'preset = "ci"\nseed = {seed}\nresults_dir = "results"')
        params.metadata["tags"] = ["parameters"]
        nb.cells = [v4.new_markdown_cell("# t"), params, v4.new_code_cell(PAGE.replace("NAME", repr(name)))]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, root / "notebooks" / f"{name}.ipynb")
    (root / "notebooks" / "presets.yml").write_text("laptop:\n  01-a:\n    seed: 5\n")
    assert reproduce(preset="laptop", root=root, build=False, echo=lambda m: None) == 0
    return root / "book" / "figures" / "results"


@pytest.mark.slow
def test_verify_reproduces_every_number_and_catches_a_changed_one(tmp_path):
    published = _layout(tmp_path)
    log: list[str] = []
    assert verify(root=tmp_path, echo=log.append) == 0, "\n".join(log)
    assert any("01-a: executing at the laptop preset" in line for line in log)  # the page's own preset
    assert any("0 outside tolerance" in line for line in log)
    doc = json.loads((published / "01-a.json").read_text())
    doc["values"]["x"] += 1e-6
    (published / "01-a.json").write_text(json.dumps(doc))
    log.clear()
    assert verify(["01"], root=tmp_path, echo=log.append) == 1
    text = "\n".join(log)
    assert "values.x" in text and "MISMATCH" in text and "1e-06" in text
    assert "claims[0].ours" not in text.split("values.x")[0].splitlines()[-1]  # one row per field
    assert verify(["01"], root=tmp_path, rtol=1e-3, echo=log.append) == 0  # within a stated tolerance
    with pytest.raises(FileNotFoundError, match="no published results for 02-b"):
        (published / "02-b.json").unlink()
        verify(["02"], root=tmp_path, echo=log.append)


def test_compare_fields_absent_on_one_side_strings_and_nan():
    a = {"values": {"x": 1.0, "s": "agrees", "n": math.nan, "gone": 2}, "claims": [], "parameters": {}}
    b = {"values": {"x": 1.0 + 1e-12, "s": "inconclusive", "n": math.nan, "new": 3}, "claims": [], "parameters": {}}
    rows = {r.field: r for r in compare("p", a, b, rtol=1e-9, atol=0)}
    assert rows["values.x"].ok and rows["values.n"].ok
    assert not rows["values.s"].ok and not rows["values.gone"].ok and not rows["values.new"].ok
    assert rows["values.gone"].rerun == "(absent)" and rows["values.new"].published == "(absent)"
    assert not compare("p", a, {**b, "values": {**b["values"], "x": 1.1}}, rtol=1e-9, atol=0)[0].ok


def test_compare_builds_names_identical_pages_differences_and_provenance(tmp_path):
    from trajlib.paper.verify import compare_builds

    doc = {"preset": "laptop", "parameters": {"seeds": 3}, "values": {"x": 0.25, "v": "agrees"}, "claims": [],
           "provenance": {"threads": {"torch_intra_op": 2}}}
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "01-a.json").write_text(json.dumps(doc))
    log: list[str] = []
    assert compare_builds(first, second, echo=log.append) == 0
    assert "01-a: byte-identical, 3 fields compared, 0 differ" in log
    changed = {**doc, "values": {"x": 0.25 + 2 ** -54, "v": "agrees"}, "provenance": {"threads": {"torch_intra_op": 1}}}
    (second / "01-a.json").write_text(json.dumps(changed))
    (first / "02-b.json").write_text(json.dumps(doc))
    log.clear()
    assert compare_builds(first, second, echo=log.append) == 1  # exact: one ulp is a difference
    text = "\n".join(log)
    assert "01-a: 3 fields compared, 1 differ, 1 provenance field(s) differ" in text
    assert f"02-b: only in {first}" in text
    assert "values.x" in text and "provenance.threads.torch_intra_op" in text and "shown" in text
    (first / "02-b.json").unlink()
    assert compare_builds(first, second, rtol=1e-12, echo=log.append) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    log.clear()
    assert compare_builds(empty, empty, echo=log.append) == 1  # nothing compared is not a pass
    assert "no results JSON with parameters, values or claims" in "\n".join(log)
    (second / "01-a.json").write_text("{not json")
    with pytest.raises(ValueError, match="01-a.json: not a results JSON"):
        compare_builds(first, second, echo=log.append)
