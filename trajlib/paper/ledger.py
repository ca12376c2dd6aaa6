"""The claims ledger: each notebook's claim rows, written as results JSON and rendered as the
book's front page.

A notebook calls :func:`claim` for each paper claim it tests and :func:`write_results` once;
``python -m trajlib.paper reproduce`` renders every results file into one Markdown table (:func:`render`):
claim, the paper's number, ours (± std over seeds), and whether the direction agrees.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..manifest import atomic_write


def claim(text: str, *, paper: str, ours: float | None, std: float | None = None, agrees: bool | None,
          unit: str = "", note: str = "", digits: int = 3, shown: str | None = None, level: str | None = None) -> dict:
    """One ledger row. ``agrees``: whether our direction matches the paper's (None: not tested
    at this preset, e.g. a claim that needs the paper's models). ``ours``/``std``: the number
    the agreement is judged on (an effect size); ``shown``: how to print it when a pair of
    values says more ("0.81 → 0.99"); ``digits`` sets the rounding. ``level``: what the number is
    measured on when it matters ("checkpoint": between saved checkpoints; "step": every optimizer
    step; "trained network": the mechanism measured on a trained model), shown in the ledger."""
    return {"claim": text, "paper": paper, "ours": None if ours is None else float(ours),
            "std": None if std is None else float(std), "agrees": None if agrees is None else bool(agrees),
            "unit": unit, "note": note, "digits": digits, "shown": shown, **({"level": level} if level else {})}


def glue_all(**values) -> None:
    """Glue each value (as a plain Python number or string) for ``{glue:text}`name:.3f``` in prose."""
    from myst_nb import glue

    for name, value in values.items():
        if hasattr(value, "item"):
            value = value.item()
        glue(name, value, display=False)


def write_results(name: str, *, title: str, claims: list[dict], values: dict, parameters: dict,
                  results_dir: str | Path = "results") -> Path:
    """Write ``results_dir/<name>.json`` atomically: title, preset, parameters, values, claims."""
    for row in claims:
        missing = {"claim", "paper", "ours", "agrees"} - set(row)
        if missing:
            raise ValueError(f"{name}: claim row lacks {sorted(missing)}; build rows with trajlib.ledger.claim")
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"notebook": name, "title": title, "preset": parameters.get("preset", "ci"),
           "parameters": parameters, "values": values, "claims": claims}
    path = out / f"{name}.json"
    atomic_write(path, json.dumps(doc, indent=1, default=_jsonable).encode())
    return path


def _jsonable(x):
    if hasattr(x, "to_dict") and hasattr(x, "columns"):  # a DataFrame; MultiIndex columns flattened
        cols = ["_".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in x.columns]
        return {str(k): v for k, v in x.set_axis(cols, axis=1).to_dict("index").items()}
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def read_results(results_dir: str | Path) -> list[dict]:
    """All results files in ``results_dir``, sorted by notebook name."""
    files = sorted(Path(results_dir).glob("*.json"))
    return [json.loads(f.read_text()) for f in files if not f.name.startswith("runtimes")]


def _fmt(row: dict) -> str:
    if row.get("shown"):
        return row["shown"]
    if row["ours"] is None or (isinstance(row["ours"], float) and math.isnan(row["ours"])):
        return "—"
    d = row.get("digits", 3)
    s = f"{row['ours']:.{d}f}"
    if row.get("std") is not None:
        s += f" ± {row['std']:.{d}f}"
    return s + (f" {row['unit']}" if row.get("unit") else "")


AGREES = {True: "**yes**", False: "**no**", None: "not tested"}


def render(results: list[dict], *, link_prefix: str = "figures/") -> str:
    """The ledger as a MyST Markdown table (links point at each notebook's page)."""
    rows = [r for doc in results for r in doc["claims"]]
    tested = [r for r in rows if r["agrees"] is not None]
    agree = sum(r["agrees"] for r in tested)
    presets = sorted({doc["preset"] for doc in results})
    lines = [f"**{agree} of {len(tested)} tested claims agree in direction** "
             f"({len(rows) - len(tested)} more {'is' if len(rows) - len(tested) == 1 else 'are'} reported "
             f"but not tested at this preset). "
             f"These pages were produced by the **{', '.join(presets) or '—'}** preset"
             f"{'s' if len(presets) > 1 else ''}.", ""]
    table = [{"page": f"[{doc['notebook'][:2]}]({link_prefix}{doc['notebook']}.ipynb)",
              "claim": r["claim"] + (f" <br><small>level: {r['level']}</small>" if r.get("level") else "")
              + (f" <br><small>{r['note']}</small>" if r.get("note") else ""),
              "paper": r["paper"], "ours": _fmt(r), "agrees": AGREES[r["agrees"]], "preset": doc["preset"]}
             for doc in results for r in doc["claims"]]
    if not table:
        table = [{"page": "—", "claim": "no results yet: run `python -m trajlib.paper reproduce`", "paper": "",
                  "ours": "", "agrees": "", "preset": ""}]
    lines.append(pd.DataFrame(table).to_markdown(index=False))
    return "\n".join(lines) + "\n"


def notebook_parameters() -> dict:
    """The running notebook's resolved parameters: every name assigned in its ``parameters``
    cell and in papermill's injected cell (the cells made only of assignments of literals, in
    execution order), with its current value. Recorded in the results JSON, so a page's
    parameters are never a hand-kept subset."""
    import ast

    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        raise RuntimeError("notebook_parameters() runs inside a notebook kernel")
    names: list[str] = []
    for source in shell.user_ns.get("In", []):
        try:
            body = ast.parse(source).body
        except SyntaxError:
            continue
        literal = body and all(isinstance(n, ast.Assign) and len(n.targets) == 1
                               and isinstance(n.targets[0], ast.Name) and _is_literal(n.value) for n in body)
        if literal:
            names += [n.targets[0].id for n in body if n.targets[0].id not in names]
    return {n: shell.user_ns[n] for n in names}


def page_parameters(name: str, *, results_dir: str | Path = "results", preset: str | None = None) -> dict:
    """The resolved parameters another page recorded in its results JSON (notebook 05 reuses
    page 04's language-model family); ``preset`` must match the one that page ran at."""
    path = Path(results_dir) / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: page {name} has not run yet; execute it first "
                                f"(python -m trajlib.paper reproduce --only {name[:2]} ...)")
    doc = json.loads(path.read_text())
    if preset is not None and doc.get("preset") != preset:
        raise ValueError(f"{path}: page {name} ran at preset {doc.get('preset')!r}, this page at {preset!r}; "
                         f"run both at the same preset")
    return doc["parameters"]


def _is_literal(node) -> bool:
    try:
        __import__("ast").literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def pm(mean: float, std: float | None = None, digits: int = 3, scale: float = 1.0) -> str:
    """"0.811 ± 0.012": a mean over seeds with its standard deviation (``scale`` e.g. 100 for %)."""
    s = f"{mean * scale:.{digits}f}"
    if std is not None and np.isfinite(std):
        s += f" ± {std * scale:.{digits}f}"
    return s
