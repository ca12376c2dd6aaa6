"""The claims ledger: each notebook's claim rows, written as results JSON and rendered as the
book's front page.

A notebook calls :func:`claim` for each paper claim it tests and :func:`write_results` once;
``python -m trajlib.paper reproduce`` renders every results file into one Markdown table (:func:`render`):
claim, what the paper says and where that comes from, our effect with its 95 % interval over
seeds, and a verdict: agrees, disagrees or inconclusive (:mod:`trajlib.paper.verdict`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..manifest import atomic_write
from .verdict import VERDICTS, judge, judge_interval


KINDS = {
    "paper": "Paper claims, tested on trained networks",
    "mechanism": "The mechanism, in our own model (simulation)",
    "extension": "Beyond the paper: its next checks and open questions (ours, not counted above)",
    "property": "Descriptive numbers (properties, not findings)",
}
# Where a paper number or claim comes from (../shared/PAPER-SOURCES.md), strongest first.
SOURCES = {
    "A2": "arXiv v2 abstract", "A1": "arXiv v1 abstract", "W": "TF2M 2024 workshop abstract",
    "I": "ICLR 2025 abstract", "R": "a reproducibility summary quoting the ICLR text",
    "S": "a secondary, machine-written summary of v2: unverified against the paper's text",
    "ours": "our own count or computation, not the paper's",
}


def claim(text: str, *, paper: str, source: str, ours: float | None = None, effects=None,
          direction: int | None = None, kind: str = "paper", level: str = "", std: float | None = None,
          agrees: bool | None = None, unit: str = "", note: str = "", digits: int = 3,
          shown: str | None = None, blocked: str | None = None, interval: tuple | None = None) -> dict:
    """One ledger row.

    ``effects``: the claim's effect per seed (paired by seed where the design pairs them), signed
    so that the paper's direction is ``direction`` (+1 or −1); the row then carries the mean, its
    95 % t-interval, n and a three-way verdict (:mod:`trajlib.paper.verdict`). ``paper``: what
    the paper says, with ``source`` naming where that comes from (a key of :data:`SOURCES`).
    ``kind``: "paper", "mechanism", "extension" (a question the paper leaves open, tested here)
    or "property" (only "paper" rows count in the headline; a property has no verdict). ``level``: what the effect is measured on (e.g. "step",
    "checkpoint"). ``shown``: how to print the numbers when a pair of values says more.
    ``blocked``: why the row's inputs were rejected upstream (an audit of the public checkpoints
    it reads): the row then has verdict "blocked" and no effect, whatever was computed.
    ``interval``: (estimate, low, high, n) of an effect whose 95 % interval is not over seeds
    (a rank correlation over runs with its bootstrap interval); judged like ``effects``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; valid: {', '.join(KINDS)}")
    unknown = [k for k in str(source).split(",") if k.strip() not in SOURCES]
    if unknown:
        raise ValueError(f"source={source!r}; valid: {', '.join(SOURCES)} (several joined by commas)")
    row = {"claim": text, "paper": paper, "source": source, "kind": kind, "level": level, "unit": unit,
           "note": note, "digits": digits, "shown": shown, "std": None if std is None else float(std),
           "effect": None, "verdict": None}
    if effects is not None or interval is not None:
        if direction is None:
            raise ValueError(f"{text!r}: effects need the paper's direction (+1 or -1)")
        if effects is not None and interval is not None:
            raise ValueError(f"{text!r}: give per-seed effects or an interval, not both")
        effect = judge(effects, direction=direction) if interval is None else \
            judge_interval(*interval[:3], n=int(interval[3]), direction=direction)
        if effect.n == 0:  # nothing to judge here (e.g. a model too shallow to have middle layers)
            row.update(ours=None, note=(note + "; " if note else "") + "not computable at this preset")
        else:
            row.update(effect=effect.as_dict(), verdict=effect.verdict, ours=effect.mean)
    else:
        row["ours"] = None if ours is None else float(ours)
        if agrees is not None:
            row["verdict"] = "agrees" if agrees else "disagrees"
    if kind == "property":
        row["verdict"] = None
    if blocked:
        row.update(verdict="blocked", effect=None, ours=None,
                   note=(note + "; " if note else "") + f"blocked by an upstream data defect: {blocked}")
    row["agrees"] = {"agrees": True, "disagrees": False}.get(row["verdict"])
    return row


def glue_all(**values) -> None:
    """Glue each value (as a plain Python number or string) for ``{glue:text}`name:.3f``` in prose."""
    from myst_nb import glue

    for name, value in values.items():
        if hasattr(value, "item"):
            value = value.item()
        glue(name, value, display=False)


def write_results(name: str, *, title: str, claims: list[dict], values: dict, parameters: dict,
                  results_dir: str | Path = "results") -> Path:
    """Write ``results_dir/<name>.json`` atomically: title, preset, the resolved parameters,
    values, claims, and what decides the numbers (:func:`~trajlib.paper.provenance.provenance`)."""
    from .provenance import provenance

    for row in claims:
        missing = {"claim", "paper", "source", "kind", "ours", "verdict"} - set(row)
        if missing:
            raise ValueError(f"{name}: claim row lacks {sorted(missing)}; build rows with trajlib.paper.ledger.claim")
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"notebook": name, "title": title, "preset": parameters.get("preset", "ci"),
           "parameters": parameters, "provenance": provenance(parameters), "values": values, "claims": claims}
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
    d = row.get("digits", 3)
    unit = f" {row['unit']}" if row.get("unit") else ""
    effect = row.get("effect")
    if effect:
        if effect["low"] is None:
            text = f"{effect['mean']:+.{d}f}{unit} (1 seed: no interval)"
        else:
            text = f"{effect['mean']:+.{d}f} [{effect['low']:+.{d}f}, {effect['high']:+.{d}f}]{unit}, n = {effect['n']}"
        return f"{row['shown']}<br>effect {text}" if row.get("shown") else text
    if row.get("shown"):
        return row["shown"]
    if row.get("ours") is None or (isinstance(row["ours"], float) and math.isnan(row["ours"])):
        return "—"
    s = f"{row['ours']:.{d}f}"
    if row.get("std") is not None:
        s += f" ± {row['std']:.{d}f}"
    return s + unit


VERDICT_TEXT = {"agrees": "**agrees**", "disagrees": "**disagrees**", "inconclusive": "inconclusive",
                "blocked": "blocked by an upstream data defect", None: "—"}


def headline(results: list[dict]) -> dict:
    """Counts of the paper claims tested on trained networks, by verdict (the front page's
    headline; mechanism rows and properties are not counted)."""
    rows = [r for doc in results for r in doc["claims"] if r.get("kind", "paper") == "paper"]
    counts = {v: sum(r.get("verdict") == v for r in rows) for v in VERDICTS}
    return {"claims": len(rows), **counts, "blocked": sum(r.get("verdict") == "blocked" for r in rows),
            "untested": sum(r.get("verdict") is None for r in rows)}


def sensitivity(row: dict, alternatives: dict) -> dict:
    """Judge ``row``'s claim again under other analysis choices and say in its note how each
    verdict compares. ``alternatives``: choice (e.g. "fixed learning rate") → per-seed effects
    with the row's sign convention. Adds ``row["sensitivity"]`` (choice → effect dict) and a note
    per choice, "… (the verdict flips)" where it differs from the row's own. Returns the row."""
    if row.get("effect") is None:
        return row
    direction, notes = row["effect"]["direction"], []
    row["sensitivity"] = {}
    for choice, effects in alternatives.items():
        e = judge(effects, direction=direction)
        row["sensitivity"][choice] = e.as_dict()
        interval = f" [{e.low:+.{row['digits']}f}, {e.high:+.{row['digits']}f}]" if e.n >= 2 else ""
        flips = " (the verdict flips)" if e.verdict != row["verdict"] else ""
        notes.append(f"{choice}: {e.verdict}, {e.mean:+.{row['digits']}f}{interval}, n = {e.n}{flips}")
    row["note"] = "; ".join(x for x in [row.get("note"), *notes] if x)
    return row


def render(results: list[dict], *, link_prefix: str = "figures/") -> str:
    """The ledger as MyST Markdown: the headline (paper claims only), one table per kind of row
    (claim, what the paper says and from where, our effect with its 95 % interval over seeds,
    the verdict), and the key to the sources."""
    h = headline(results)
    presets = sorted({doc["preset"] for doc in results})
    lines = [f"**Of {h['claims']} paper claims tested on trained networks, {h['agrees']} agree, "
             f"{h['disagrees']} disagree and {h['inconclusive']} are inconclusive** (a verdict needs the 95 % "
             f"interval of the effect over seeds to exclude zero)"
             + (f"; {h['untested']} more are not tested at this preset" if h["untested"] else "")
             + (f"; {h['blocked']} are blocked by an upstream data defect (the inputs' audit rejected them)"
                if h["blocked"] else "")
             + f". These pages were produced by the **{', '.join(presets) or '—'}** preset"
             f"{'s' if len(presets) > 1 else ''}.", ""]
    used = set()
    for kind, title in KINDS.items():
        table = []
        for doc in results:
            for r in doc["claims"]:
                if r.get("kind", "paper") != kind:
                    continue
                used.update(k.strip() for k in str(r.get("source")).split(","))
                level = f" ({r['level']} level)" if r.get("level") else ""
                table.append({
                    "page": f"[{doc['notebook'][:2]}]({link_prefix}{doc['notebook']}.ipynb)",
                    "claim": r["claim"] + level + (f" <br><small>{r['note']}</small>" if r.get("note") else ""),
                    "the paper (source)": f"{r['paper']} ({r.get('source', '?')})",
                    "ours": _fmt(r), "verdict": VERDICT_TEXT[r.get("verdict")], "preset": doc["preset"]})
        if table:
            lines += [f"### {title}", "", pd.DataFrame(table).to_markdown(index=False), ""]
    if not results:
        lines += ["No results yet: run `python -m trajlib.paper reproduce`.", ""]
    lines += ["Sources: " + "; ".join(f"**{k}**: {v}" for k, v in SOURCES.items() if k in used) + "."]
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
