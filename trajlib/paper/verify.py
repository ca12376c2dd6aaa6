"""``python -m trajlib.paper verify``: re-execute pages from scratch and compare every number they
write with the published results JSON.

Each selected page runs again at the preset its published JSON names, in a new temporary folder
(nothing reused: every run is trained again), with the other published results beside it so a
page that reads another's parameters (05 reads 04's) finds them. Then every number under the
page's ``parameters``, ``values`` and ``claims`` is compared with the published one: it passes
when |re-run − published| ≤ atol + rtol · |published|; every string there (verdicts, labels)
must match exactly. A field present on one side only is a mismatch. ``provenance`` is shown when
it differs (another CPU, thread count or library version explains a difference) but never fails.
Each page's kernel gets the CPU thread count its published JSON records, since the order of a
multithreaded sum, and so the last bits of a number, follow it.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

COMPARED = ("parameters", "values", "claims")


@dataclass
class Difference:
    """One compared field: its path in the JSON, both values, |difference| and whether it passed."""

    page: str
    field: str
    published: object
    rerun: object
    difference: float | None
    ok: bool


def leaves(doc, prefix: str = "") -> dict[str, object]:
    """{dotted path: value} of every number, string, bool and null in ``doc``."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            out.update(leaves(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(doc, list):
        out = {}
        for i, v in enumerate(doc):
            out.update(leaves(v, f"{prefix}[{i}]"))
        return out
    return {prefix: doc}


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def compare(page: str, published: dict, rerun: dict, *, rtol: float, atol: float) -> list[Difference]:
    """Every field of ``COMPARED`` in either document, compared (see the module docstring)."""
    a = {k: v for part in COMPARED for k, v in leaves(published.get(part), part).items()}
    b = {k: v for part in COMPARED for k, v in leaves(rerun.get(part), part).items()}
    out = []
    for field in [*a, *(f for f in b if f not in a)]:
        p, r = a.get(field, "(absent)"), b.get(field, "(absent)")
        if _number(p) and _number(r):
            if math.isnan(p) or math.isnan(r):
                diff, ok = None, math.isnan(p) and math.isnan(r)
            else:
                diff = abs(float(r) - float(p))
                ok = diff <= atol + rtol * abs(float(p))
        else:
            diff, ok = None, (field in a and field in b and p == r)
        out.append(Difference(page, field, p, r, diff, ok))
    return out


def rerun_pages(names: list[str], *, published: Path, repo, preset: str | None, work: Path, echo=print) -> dict:
    """Execute ``names`` in ``work`` (a fresh layout holding the repository's notebooks and the
    published results); returns {page: re-run results JSON}."""
    from .book import Layout, execute, select

    layout = Layout(work)
    shutil.copytree(repo.notebooks, layout.notebooks)
    layout.results.mkdir(parents=True)
    for f in Path(published).glob("*.json"):
        shutil.copy(f, layout.results / f.name)
    out = {}
    for name, source in select(layout, names).items():
        doc = json.loads((Path(published) / f"{name}.json").read_text())
        (layout.results / f"{name}.json").unlink()
        page_preset = preset or doc["preset"]
        echo(f"{name}: executing at the {page_preset} preset in {work} ...")
        threads = ((doc.get("provenance") or {}).get("threads") or {}).get("torch_intra_op")  # as published
        echo(f"{name}: {threads} thread(s), as published" if threads else f"{name}: no thread count published; "
             "torch's default")
        ok, seconds, message = execute(name, source, layout, page_preset, threads)
        if not ok:
            raise RuntimeError(message)
        echo(f"{name}: ran in {seconds:.0f} s")
        out[name] = json.loads((layout.results / f"{name}.json").read_text())
    return out


def _show(x) -> str:
    if _number(x):
        return f"{x:.10g}"
    s = str(x)
    return s if len(s) <= 40 else s[:37] + "..."


def table(rows: list[Difference], sides: tuple[str, str] = ("published", "re-run")) -> str:
    """A plain-text table: page, field, the two sides' values, difference, ok (provenance
    fields are shown, never judged)."""
    head = ("page", "field", *sides, "difference", "ok")
    judged = lambda r: "shown" if r.field.startswith("provenance") else "ok" if r.ok else "MISMATCH"  # noqa: E731
    body = [(r.page, r.field, _show(r.published), _show(r.rerun),
             "" if r.difference is None else f"{r.difference:.3g}", judged(r)) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*b) for b in body)])


def verify(names: list[str] | None = None, *, published: str | Path | None = None, preset: str | None = None,
           rtol: float = 1e-9, atol: float = 1e-12, show_all: bool = False, work: str | Path | None = None,
           root: str | Path | None = None, echo=print) -> int:
    """Re-execute ``names`` (every page with a published JSON by default) and compare; prints the
    table (mismatches only unless ``show_all``) and returns 0 when every field passed, else 1.
    ``published``: the folder of results JSON (default the last build's, ``book/figures/results``)."""
    from .book import Layout, select

    repo = Layout(Path(root) if root else Path.cwd())
    published = Path(published) if published else repo.results
    if not published.is_dir():
        raise FileNotFoundError(f"{published}: no published results folder (build the book first, or pass --published)")
    have = {p.stem for p in published.glob("*.json")}
    chosen = list(select(repo, names)) if names else sorted(have & set(select(repo, None)))
    missing = [n for n in chosen if n not in have]
    if missing:
        raise FileNotFoundError(f"{published}: no published results for {', '.join(missing)}")
    scratch = Path(work) if work else Path(tempfile.mkdtemp(prefix="trajlib-verify-"))
    try:
        reruns = rerun_pages(chosen, published=published, repo=repo, preset=preset, work=scratch, echo=echo)
    finally:
        if work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    rows, failed = [], 0
    for name in chosen:
        doc = json.loads((published / f"{name}.json").read_text())
        diffs = compare(name, doc, reruns[name], rtol=rtol, atol=atol)
        bad = [d for d in diffs if not d.ok]
        failed += len(bad)
        rows += diffs if show_all else bad
        numbers = sum(_number(d.published) for d in diffs)
        echo(f"{name}: {len(diffs)} fields ({numbers} numbers) compared, {len(bad)} outside tolerance")
        env = {k: v for k, v in leaves(reruns[name].get("provenance"), "provenance").items()
               if leaves(doc.get("provenance"), "provenance").get(k) != v}
        for k, v in env.items():
            echo(f"  {k}: published {leaves(doc.get('provenance'), 'provenance').get(k)!r}, re-run {v!r}")
    if rows:
        echo(table(rows))
    echo(f"verify: {'ok' if not failed else f'{failed} field(s) outside tolerance'} "
         f"(|re-run − published| ≤ {atol:g} + {rtol:g}·|published|)")
    return 1 if failed else 0


def compare_builds(first: str | Path, second: str | Path, *, rtol: float = 0.0, atol: float = 0.0,
                   echo=print) -> int:
    """Compare two builds' results folders field by field (exact by default): per page, whether
    the files are byte-identical, how many fields were compared and which differ, provenance
    included (shown, not failed, as in :func:`verify`). Returns 0 when every compared field
    passed and both folders hold the same pages, else 1."""
    first, second = Path(first), Path(second)
    for folder in (first, second):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no results folder")
    a, b = ({p.stem for p in f.glob("*.json")} for f in (first, second))
    rows, failed, compared = [], 0, 0
    for name in sorted(a | b):
        if name not in a or name not in b:
            failed += 1
            echo(f"{name}: only in {first if name in a else second}")
            continue
        raw_a, raw_b = (f / f"{name}.json" for f in (first, second))
        docs = [_load(p) for p in (raw_a, raw_b)]
        diffs = compare(name, *docs, rtol=rtol, atol=atol)
        compared += len(diffs)
        bad = [d for d in diffs if not d.ok]
        env_a, env_b = (leaves(d.get("provenance"), "provenance") for d in docs)
        env = [Difference(name, k, env_a.get(k, "(absent)"), env_b.get(k, "(absent)"), None, True)
               for k in [*env_a, *(k for k in env_b if k not in env_a)] if env_a.get(k, "(absent)") != env_b.get(k, "(absent)")]
        failed += len(bad)
        rows += bad + env
        same = raw_a.read_bytes() == raw_b.read_bytes()
        echo(f"{name}: {'byte-identical, ' if same else ''}{len(diffs)} fields compared, {len(bad)} differ"
             + (f", {len(env)} provenance field(s) differ" if env else ""))
    if not compared:
        failed += 1
        echo(f"no results JSON with parameters, values or claims in {first} and {second}")
    if rows:
        echo(table(rows, sides=("first", "second")))
    echo(f"compare: {'ok' if not failed else f'{failed} difference(s)'} "
         f"(|second − first| ≤ {atol:g} + {rtol:g}·|first|)")
    return 1 if failed else 0


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not a results JSON ({exc})") from None
