"""Run the notebooks through papermill at a preset, then build the book with Jupyter Book 1.

``python -m trajlib.paper reproduce --preset laptop`` executes ``notebooks/*.ipynb`` into ``book/figures/``
(working directory there, so runs land in ``book/figures/runs`` and results JSON in
``book/figures/results``), renders the claims ledger from the results, and builds the HTML with
warnings as errors. Execution inside Jupyter Book is off: papermill already ran every cell.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

from ..manifest import atomic_write
from .ledger import read_results, render
from .presets import PRESETS, parameters_for

log = logging.getLogger("trajlib.paper.book")


@dataclass
class Layout:
    """Where things are: notebooks and presets in, book sources and outputs out."""

    root: Path = field(default_factory=Path.cwd)

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    @property
    def presets(self) -> Path:
        return self.notebooks / "presets.yml"

    @property
    def book(self) -> Path:
        return self.root / "book"

    @property
    def figures(self) -> Path:
        return self.book / "figures"

    @property
    def results(self) -> Path:
        return self.figures / "results"

    @property
    def config(self) -> Path:
        return self.root / "_config.yml"


def available(layout: Layout) -> dict[str, Path]:
    """Notebook name (file stem) → source path."""
    return {p.stem: p for p in sorted(layout.notebooks.glob("*.ipynb"))}


def select(layout: Layout, only: list[str] | None) -> dict[str, Path]:
    """The notebooks named in ``only`` (full names or their number prefix), all if None."""
    nbs = available(layout)
    if not only:
        return nbs
    chosen = {}
    for name in only:
        match = [k for k in nbs if k == name or _number(k) == name]
        if not match:
            raise ValueError(f"unknown notebook {name!r}; valid: {', '.join(nbs)}")
        chosen[match[0]] = nbs[match[0]]
    return dict(sorted(chosen.items()))


def _present_parameters(path: Path) -> None:
    """One labelled toggle for the parameters on the rendered page: the ``parameters`` cell with
    the values papermill injected written in (each marked), collapsed; the injected cell removed."""
    nb = nbformat.read(path, as_version=4)
    tagged = lambda tag: [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]  # noqa: E731
    params, injected = tagged("parameters"), tagged("injected-parameters")
    overrides = {}
    for cell in injected:
        for line in cell.source.splitlines():
            m = re.match(r"(\w+)\s*=\s*(.*)$", line)
            if m:
                overrides[m.group(1)] = m.group(2).strip()
        cell.metadata["tags"] = sorted(set(cell.metadata["tags"]) | {"remove-cell"})
    for cell in params:
        lines = []
        for line in cell.source.splitlines():
            m = re.match(r"(\w+)(\s*=\s*)(.*?)(\s*#.*)?$", line)
            if m and m.group(1) in overrides and overrides[m.group(1)] != m.group(3).strip():
                comment = (m.group(4) or "  #").rstrip()
                line = f"{m.group(1)}{m.group(2)}{overrides[m.group(1)]}{comment} [preset; default {m.group(3).strip()}]"
            lines.append(line)
        cell.source = "\n".join(lines)
        cell.metadata["tags"] = sorted(set(cell.metadata.get("tags", [])) | {"hide-input"})
        cell.metadata["mystnb"] = {"code_prompt_show": "Show this page's parameters",
                                   "code_prompt_hide": "Hide the parameters"}
    nbformat.write(nb, path)


def execute(name: str, source: Path, layout: Layout, preset: str, threads: int | None = None,
            progress: bool = True) -> tuple[bool, float, str]:
    """Execute one notebook; returns (ok, seconds, message naming the failing cell). ``threads``:
    the kernel's CPU threads (OpenMP, MKL, OpenBLAS; None leaves torch's default, one per core)."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    params = parameters_for(source, preset, layout.presets)
    out = layout.figures / source.name
    layout.figures.mkdir(parents=True, exist_ok=True)
    bar = {"desc": name, "leave": True, "dynamic_ncols": True} if progress and sys.stderr.isatty() else False
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory(prefix="trajlib-kernel-") as sockets:
            papermill.execute_notebook(str(source), str(out), parameters=params, cwd=str(layout.figures),
                                       kernel_name="python3", progress_bar=bar, log_output=False,
                                       kernel_manager_class=_local_kernel_manager(sockets, threads))
    except PapermillExecutionError as exc:
        return False, time.time() - t0, (f"{name}: cell {exc.exec_count} failed: {exc.ename}: "
                                         f"{exc.evalue}".strip())
    _present_parameters(out)
    return True, time.time() - t0, ""


# Pages that train language models run alone, on every core: their matrix products use them all.
# The other pages train small digits models that gain little from a second thread, so with
# ``jobs`` > 1 that many of them run at once, each kernel on cores // jobs threads.
EXCLUSIVE = ("04", "05")
# The pages whose runs a page reads or trains again under their name (05 and 11 page 04's, 06, 08
# and 10 page 02's, 12 the digits runs of its ``pages``): it starts only after those pages, and
# never beside another page that could train the same runs, so two kernels never write one run.
AFTER = {"05": ("04",), "06": ("02",), "08": ("02",), "10": ("02",), "11": ("04",),
         "12": ("01", "02", "03", "07", "09", "10")}


def _number(name: str) -> str:
    return name.split("-", 1)[0]


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def run_plan(names: list[str], jobs: int) -> tuple[list[str], list[str]]:
    """(pages run one at a time on every core, in order; pages run ``jobs`` at a time). With one
    job every page is in the first list. Otherwise the first holds the :data:`EXCLUSIVE` pages and
    the pages that read their runs (those runs' numbers follow the thread count they were trained
    with, and a page's results record its own)."""
    if jobs <= 1:
        return list(names), []
    alone = [n for n in names if _number(n) in EXCLUSIVE
             or set(AFTER.get(_number(n), ())) & set(EXCLUSIVE)]
    return alone, [n for n in names if n not in alone]


def waits_for(name: str, names: list[str]) -> list[str]:
    """The pages among ``names`` that ``name`` reads runs of."""
    return [n for n in names if _number(n) in AFTER.get(_number(name), ())]


def _clashes(name: str, running: list[str], done: set[str]) -> bool:
    """Whether ``name`` could train a run that a running page could also train: both read the
    runs of a page that has not finished here (one not selected: its runs may not exist yet)."""
    pending = set(AFTER.get(_number(name), ())) - {_number(d) for d in done}
    return any(pending & ({_number(r)} | set(AFTER.get(_number(r), ()))) for r in running)


def _execute_in_worker(name, source, layout, preset, threads) -> tuple[bool, float, str]:
    """:func:`execute` in a pool worker: whatever goes wrong comes back as a failure naming the
    page (an exception that cannot be pickled would break the pool)."""
    t0 = time.time()
    try:
        return execute(name, source, layout, preset, threads, False)
    except BaseException as exc:  # noqa: BLE001 - reported, never raised across the process boundary
        return False, time.time() - t0, f"{name}: {type(exc).__name__}: {exc}"


# How the kernel that executes a page renders its figures: PNG at twice the figure's dpi, with the
# display size in the output's metadata (myst-nb writes it as the <img> width), sharp on high-density
# screens. The one place this is set for every page; a notebook opened by hand keeps its own setting.
INLINE_FIGURE_FORMAT = "retina"


def _local_kernel_manager(folder: str, threads: int | None = None):
    """A kernel manager that talks to the kernel over local (IPC) sockets in ``folder`` rather
    than TCP on localhost: nothing listens on a port, and the kernel has no plain-text-TCP
    warning to print for every notebook. Its inline figures are :data:`INLINE_FIGURE_FORMAT`;
    ``threads`` (if given) caps the kernel's OpenMP, MKL and OpenBLAS threads."""
    from jupyter_client.manager import AsyncKernelManager

    class LocalKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport, self.ip = "ipc", f"{folder}/kernel"

        async def _async_pre_start_kernel(self, **kw):
            # progress bars belong to the terminal running the build, not to the rendered pages
            # (and tqdm.auto's "IProgress not found": the build's kernel has no widgets to draw them)
            env = {**os.environ, **(kw.get("env") or {})}
            quiet = "ignore:IProgress not found"
            env["PYTHONWARNINGS"] = ",".join(filter(None, [env.get("PYTHONWARNINGS"), quiet]))
            if threads:
                env.update({k: str(threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
            kw["env"] = {**env, "TQDM_DISABLE": "1"}
            kw["extra_arguments"] = [*(kw.get("extra_arguments") or []),
                                     f"--InlineBackend.figure_formats={INLINE_FIGURE_FORMAT}"]
            return await super()._async_pre_start_kernel(**kw)

    return LocalKernelManager


def write_ledger(layout: Layout) -> Path:
    """The generated parts of the book: the claims ledger and the runtime table."""
    gen = layout.book / "_generated"
    gen.mkdir(parents=True, exist_ok=True)
    path = gen / "ledger.md"
    atomic_write(path, render(read_results(layout.results)).encode())
    atomic_write(gen / "runtimes.md", runtime_table(layout).encode())
    atomic_write(gen / "benchmarks.md", benchmark_tables(layout.book / "benchmarks").encode())
    atomic_write(gen / "seed_margins.md", margin_table(layout.book / "benchmarks" / "seed_margins.json").encode())
    return path


def margin_table(path: Path) -> str:
    """The test suite's seed checks as measured by ``python -m trajlib.paper margins``: per
    check, seeds measured, how many held, mean and smallest margin, z, and whether it is asserted."""
    from .seed_checks import CHECKS, MIN_SEEDS, Z_MIN, trusted

    d = json.loads(path.read_text()) if path.is_file() else {}
    rows = []
    for c in CHECKS:
        r = d.get(c.name)
        measured = {"seeds": str(r["n"]), "held": str(r["held"]), "mean margin": f"{r['mean']:+.4f}",
                    "smallest": f"{r['min']:+.4f}", "z = mean / sd": f"{r['z']:.1f}"} if r else \
            {"seeds": "not measured", "held": "—", "mean margin": "—", "smallest": "—", "z = mean / sd": "—"}
        rows.append({"check": f"`{c.name}`", "page": _number(c.notebook), "statement": c.statement,
                     **measured, "asserted on every ci seed": "yes" if trusted(r) else "no"})
    return (_markdown(rows) + f"\n\nA check is asserted when it held on every one of at least {MIN_SEEDS} seeds "
            f"and its mean margin is at least {Z_MIN:g} standard deviations above zero.\n")


def benchmark_tables(folder: Path) -> str:
    """Markdown tables from the JSON the ``benchmarks/`` scripts save with ``--save``."""
    out = []
    gram = folder / "gram_bench.json"
    if gram.is_file():
        out += _gram_tables(json.loads(gram.read_text()))
    rec = folder / "record_bench.json"
    if rec.is_file():
        d = json.loads(rec.read_text())
        out += ["**Recording every step** (`benchmarks/record_bench.py`, small BatchNorm CNN, one checkpoint file per "
                "step; the durability policy is `Recorder(fsync=...)`, see Storage). *In the loop*: the training "
                "loop's own step time; *with close*: `close` (the writer's backlog and the last group's fsync) "
                "spread over the steps, what a run pays end to end. *Writer CPU*: the writer thread's CPU per "
                "checkpoint in those runs; *file system alone*: what the same file system charges, measured alone "
                "in the same run before and after the runs, to create, write, rename (and, unless `never`, fsync) one "
                "file of that size (under `always`, also one manifest commit). When "
                "training keeps every core busy (threads = cores), the writer's CPU over all cores' time per step "
                "is a floor on the end-to-end overhead:", ""]
        out.append(_markdown([{
            "input": r["input"], "torch threads": r["threads"], "file system": r.get("file_system", "—"),
            "durability": r.get("policy", "per-file fsync (before the policies)"),
            "step (ms)": f"{r['base_ms']:.2f}",
            "added in the loop (best / median)": f"{_percent(r['overhead_best'])} / {_percent(r['overhead_median'])}",
            "added with close (median)": f"{_percent(r['overhead_with_close'])}" if "overhead_with_close" in r else "—",
            "writer CPU (µs)": f"{r['writer_us']:.0f}" if "writer_us" in r else "—",
            "file system alone, before / after the runs (µs)": (
                f"{r['file_system_us']:.0f} / {r['file_system_after_us']:.0f}" if "file_system_after_us" in r
                else f"{r['file_system_us']:.0f}" if "file_system_us" in r else "—"),
            "writer CPU / all cores' time": f"{100 * r['writer_share']:.0f}%" if "writer_share" in r else "—",
        } for r in d["rows"]]))
        out.append("")
        for k, c in enumerate(d.get("contention", [])):
            threads = f"{c['threads']} torch thread{'s' if c['threads'] != 1 else ''}"
            out += [(f"**The same file work beside training** (`benchmarks/record_bench.py --contention`, {threads}, "
                     f"{c['file_system']}, {c['bytes']:,}-byte files, median of {c['repeat']} paired runs): the "
                     "writer's sha256, create, write and rename of one file per plain step, run from a thread of the "
                     "training process or from a child process, at nice 10, with and without `SCHED_BATCH` (its "
                     "wake-ups never preempt). *Per file a step* divides the time added by the files written per "
                     "step, so a variant that falls behind does not look cheaper:") if k == 0 else
                    f"The same with {threads}, {c['file_system']}:", ""]
            out.append(_markdown([{
                "from": r["where"], "SCHED_BATCH": "yes" if r["sched_batch"] else "no",
                "added (median)": f"{_percent(r['overhead_median'])}", "files per step": f"{r['files_per_step']:.2f}",
                "added per file a step": f"{_percent(r['overhead_per_file_per_step'])}",
            } for r in c["rows"]]))
            out.append("")
    commits = folder / "manifest_bench.json"
    if commits.is_file():
        out += _commit_tables(json.loads(commits.read_text()))
    steps = folder / "step_bench.json"
    if steps.is_file() and "models" in json.loads(steps.read_text()):
        d = json.loads(steps.read_text())
        out += [f"**Step statistics and sketches** (`benchmarks/record_bench.py --step-level`, {d['device']}, "
                f"{d['threads']} torch threads, {d['date']}): added to the step time of the plain loop, all modes "
                "interleaved in one run.", ""]
        out.append(_markdown([{
            "model": name, "parameters": f"{r['params']:,}", "step (ms)": f"{r['base_ms']:.1f}",
            **{f"{m} (best / median)": f"{_percent(r[m]['overhead_best'])} / {_percent(r[m]['overhead_median'])}"
               for m in ("step_stats", "sketch", "both")},
        } for name, r in d["models"].items()]))
        out += ["", "Sketch of one step (k = 1024) at growing P, and the linear extrapolation to P = 10⁹:", ""]
        out.append(_markdown([{"P": f"{r['P']:,}", "cached hash": r["cache_hash"], "ms per step": f"{r['ms']:.1f}",
                               "extra memory (MiB)": f"{r['extra_bytes'] / 2**20:.0f}"}
                              for r in d["sketch_scaling"]]
                             + [{"P": "1e9 (extrapolated)", "cached hash": r["cache_hash"],
                                 "ms per step": f"{r['ms']:.0f}", "extra memory (MiB)": f"{r['extra_bytes'] / 2**20:.0f}"}
                                for r in d["extrapolated_1e9"]]))
        out.append("")
    if steps.is_file() and "sketch_errors" in json.loads(steps.read_text()):
        rows = json.loads(steps.read_text())["sketch_errors"]
        out += [f"**Sketch error** (`benchmarks/record_bench.py --sketch-errors`): sketched against exact maps of "
                f"an MLP ({rows[0]['P']:,} parameters) recorded at all {rows[0]['T']} steps, over {rows[0]['seeds']} "
                "sketch seeds; RMS and largest error over the off-diagonal entries.", ""]
        out.append(_markdown([{
            "k": r["k"], "bytes per step": f"{8 * r['k']:,}", "sqrt(2/k)": f"{r['bound']:.4f}",
            **{f"{m.replace('_', ' ')}: RMS (median / worst)": f"{r[m]['rms_median']:.4f} / {r[m]['rms_worst']:.4f}"
               for m in ("trajectory_map", "update_map")},
            **{f"{m.replace('_', ' ')}: largest": f"{r[m]['max_worst']:.4f}" for m in ("trajectory_map", "update_map")},
        } for r in rows]))
        out.append("")
    gpu = folder / "gpu_gram_bench.json"
    if gpu.is_file():
        d = json.loads(gpu.read_text())
        out += [f"**GPU Gram** (`benchmarks/gpu_gram_bench.py`, {d['device']}, {d['date']}):", ""]
        out.append(_markdown([{
            "T": r["T"], "method": r["method"], "ms": f"{1e3 * r['seconds']:.2f}",
            "max error (map / update cos)": (f"{r['map']:.0e} / {r['update_cos']:.0e}" if "map" in r
                                             else f"{r['gbps']:.1f} GB/s" if "gbps" in r else ""),
        } for r in d["rows"]]))
    else:
        out += ["**GPU Gram:** not measured for these pages. "
                "`python benchmarks/gpu_gram_bench.py --save book/benchmarks/gpu_gram_bench.json` on a CUDA "
                "machine fills this table; the fused kernel's correctness is tested on the CPU through "
                "Triton's interpreter."]
    return "\n".join(out) + "\n"


def _commit_tables(d: dict) -> list[str]:
    """The group-commit benchmark: one commit's cost against the run's length, three ways."""
    out = []
    for k, run in enumerate(d["runs"]):
        out += [(f"**A group commit over a long run** (`benchmarks/manifest_bench.py`, {run['group']} checkpoints "
                 f"a group, best of {run['repeat']}, {run['file_system']}, {run['date']}): *rewrite* is the commit "
                 "as it was before appends (its cache of serialised entries never worked, so every entry was "
                 "serialised again, and the whole manifest written); *rewrite, cache working* is the best a whole "
                 "rewrite can do (each entry serialised once); *append* is today's. A share of 0.2 s is the writer's "
                 "time a commit takes at the default `flush_interval`; above 100% the writer falls behind and, once "
                 "the snapshot pool is full, so does training:")
                if k == 0 else f"The same on {run['file_system']} ({run['date']}):", ""]
        out.append(_markdown([{
            "checkpoints listed": f"{r['checkpoints']:,}", "manifest (MB)": f"{r['manifest_bytes'] / 1e6:.1f}",
            "rewrite (ms)": f"{r['rewrite_ms']:.1f}",
            "rewrite, cache working (ms)": f"{r['rewrite_cached_ms']:.1f}" if "rewrite_cached_ms" in r else "—",
            "append (ms)": f"{r['append_ms']:.1f}",
            "cache working / append": f"{r['rewrite_cached_ms'] / r['append_ms']:.1f}" if "rewrite_cached_ms" in r else "—",
            "rewrite, share of 0.2 s": f"{r['rewrite_ms'] / 2:.0f}%", "append, share of 0.2 s": f"{r['append_ms'] / 2:.1f}%",
        } for r in run["rows"]]))
        out.append("")
    return out


def _product_table(pr: dict) -> list[str]:
    """The CPU product alone, each way the engine could take it, against the fp64 peak bound."""
    out = [f"**The product alone** (`benchmarks/gram_bench.py --products`, {pr['date']}): 256 MiB of float64 rows "
           "in the engine's sub-blocks, two worker threads, no read and no conversion, as a share of the fp64 peak "
           f"bound ({pr['peak_gflops']:.0f} GFLOP/s over the T(T+1) flops per column of a lower triangle). *syrk* "
           "is the engine's (OpenBLAS `dsyrk` adding into G); *numpy matmul* its product before (`R @ R.T` into a "
           "scratch, mirrored and added); *tiles* torch row tiles of 64; *square* one full `addmm`:", ""]
    Ts = sorted({r["T"] for r in pr["rows"]})
    cell = {(r["T"], r["product"]): r for r in pr["rows"]}
    out.append(_markdown([{"product": name, **{f"T = {T}": (f"{100 * cell[T, name]['of_bound']:.0f}% "
                                                              f"({cell[T, name]['seconds']:.3f} s)")
                                                  if (T, name) in cell else "—" for T in Ts}}
                          for name in dict.fromkeys(r["product"] for r in pr["rows"])]))
    out.append("")
    return out


def _gram_tables(d: dict) -> list[str]:
    """The CPU Gram benchmark: methods at T₀, the fp64 peak bound, the sweep over T, the products."""
    t = next(r["seconds"] for r in d["rows"] if r["method"] == "trajlib")
    out = [f"**CPU Gram** (`benchmarks/gram_bench.py`, T = {d['T']}, P = {d['P']:,}, "
           f"{d['run_bytes'] / 1e9:.2f} GB, {d['cores']} cores, {d['date']}): trajlib computes the whole "
           "default hallmark set; the baselines compute the map only.", ""]
    names = {"trajlib": "trajlib.gram", "sklearn": "(a) stack + sklearn cosine_similarity",
             "naive": "(b) naive pairwise loop", "read": "(c) plain read of every byte"}
    out.append(_markdown([{
        "method": names.get(r["method"], r["method"]), "seconds": f"{r['seconds']:.3f}",
        "× trajlib's time": f"{r['seconds'] / t:.1f}",
        "peak memory / run size": f"{100 * r['peak_mb'] * 1e6 / d['run_bytes']:.0f}%",
        "max error vs float64": ", ".join(f"{k} {v:.0e}" for k, v in r["errors"].items()) or "—",
    } for r in d["rows"]]))
    out.append("")
    if "peak_gflops" not in d:
        return out + (_product_table(d["products"]) if "products" in d else [])
    out += [f"**Against the machine's limit.** The fp64 GEMM peak measured in the same run (a 2048² float64 "
            f"`torch.mm` on all cores, measured again before each T: the machine is shared) was "
            f"{d['peak_gflops']:.0f} GFLOP/s; an exact pass needs T(T+1)P flops (the lower triangle of G), so no "
            f"float64 pass can take less than T(T+1)P / peak. The same bytes on disk at larger T "
            f"(P = {d['T']}·{d['P']:,} / T):", ""]
    t0 = d["sweep"][0]["trajlib_seconds"]
    out.append(_markdown([{
        "T": r["T"], "P": f"{r['P']:,}", "peak (GFLOP/s)": f"{r.get('peak_gflops', d['peak_gflops']):.0f}",
        "trajlib (s)": f"{r['trajlib_seconds']:.3f}",
        "fp64 peak bound (s)": f"{r['bound_seconds']:.3f}",
        "× bound": f"{r['trajlib_seconds'] / r['bound_seconds']:.2f}", "GFLOP/s": f"{r['gflops']:.0f}",
        "sklearn (s)": f"{r['sklearn_seconds']:.3f}",
        "sklearn / trajlib": f"{r['sklearn_seconds'] / r['trajlib_seconds']:.2f}",
        f"time / T = {d['T']}'s": f"{r['trajlib_seconds'] / t0:.2f}",
    } for r in d["sweep"]]))
    out.append("")
    if "products" in d:
        out += _product_table(d["products"])
    return out


def write_toc(layout: Layout) -> Path:
    """The book's table of contents without the figure pages whose notebook has not run yet."""
    toc = yaml.safe_load((layout.book / "_toc.yml").read_text())
    for part in toc.get("parts", []):
        part["chapters"] = [c for c in part["chapters"] if not c["file"].startswith("figures/")
                            or (layout.book / f"{c['file']}.ipynb").is_file()]
    toc["parts"] = [p for p in toc.get("parts", []) if p["chapters"]]
    path = layout.book / "_generated" / "_toc.yml"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, yaml.safe_dump(toc, sort_keys=False).encode())
    return path


def build_book(layout: Layout) -> int:
    """``jupyter-book build`` with warnings as errors; returns its exit status."""
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(layout.book), "--config",
           str(layout.config), "--toc", str(write_toc(layout)), "--path-output", str(layout.book),
           "-W", "--keep-going", "--all", "--quiet"]
    log.info("building the book: %s", " ".join(cmd))
    return subprocess.run(cmd, cwd=layout.root).returncode


def runtime_table(layout: Layout) -> str:
    """Markdown table of each executed notebook's wall time, from what papermill records in the
    notebook itself (``metadata.papermill``), beside the seeds and CPU threads its results JSON
    records and its share of the total; nothing tracked is rewritten by a build. The last full
    build's wall time (``figures/build.json``) follows the table."""
    import platform

    rows, total = [], 0.0
    for path in sorted(layout.figures.glob("*.ipynb")):
        meta = nbformat.read(path, as_version=4).metadata.get("papermill", {})
        if meta.get("duration") is None:
            continue
        total += meta["duration"]
        prov = _results_of(layout, path.stem).get("provenance", {})
        seeds = prov.get("seeds", {})
        rows.append({"notebook": f"`{path.stem}`", "preset": meta.get("parameters", {}).get("preset", "ci"),
                     "seeds": ", ".join(str(v) if k == "seeds" else f"{k} {v}" for k, v in seeds.items()),
                     "threads": str(prov.get("threads", {}).get("torch_intra_op", "")),
                     "seconds": meta["duration"]})
    if not rows:
        return "No notebook has been executed yet.\n"
    for row in rows:
        row["share"] = f"{100 * row['seconds'] / total:.0f}%" if total else ""
        row["seconds"] = f"{row['seconds']:.0f}"
    rows.append({"notebook": "**total**", "preset": "", "seeds": "", "threads": "", "seconds": f"**{total:.0f}**",
                 "share": ""})
    info = _read_json(layout.figures / BUILD_FILE)
    cores = info.get("cores") or usable_cores()
    text = (_markdown(rows) + f"\n\nMeasured on {cores} cores ({platform.machine()}) by the build that "
            "made these pages; a page whose runs were already on disk reuses them and shows only its analysis time. "
            "Seeds are the page's own seed parameters (05 trains its deeper model on `deep_seeds` and reads page "
            "04's runs).")
    if info.get("jobs", 1) > 1:
        text += (f" The pages on {info['threads']} thread(s) ran {info['jobs']} at a time after "
                 f"{', '.join(_number(n) for n in info['alone'])}, which ran alone on every core: the "
                 f"{info['notebooks']} notebooks took {info['wall_seconds']:.0f} s of wall time, against "
                 f"{total:.0f} s summed above.")
    elif info:
        text += f" The {info['notebooks']} notebooks ran one after another in {info['wall_seconds']:.0f} s."
    return text + "\n"


BUILD_FILE = "build.json"


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _results_of(layout: Layout, name: str) -> dict:
    return _read_json(layout.results / f"{name}.json")


def _percent(fraction: float) -> str:
    """A signed whole percentage, with no "-0%" for a fraction that rounds to zero."""
    return f"{round(100 * fraction) + 0:+d}%"


_NUMBER = re.compile(r"[+\-−]?[\d,]*\.?\d+(e[+\-]?\d+)?\s*[%x×]?")


def _markdown(rows: list[dict]) -> str:
    """A Markdown (pipe) table of ``rows``, every cell shown as given (tabulate would reformat
    "2.0" as "2"); columns whose cells are all numbers are right-aligned."""
    import pandas as pd

    df = pd.DataFrame(rows).astype(str)
    align = ["right" if df[c].map(lambda v: bool(_NUMBER.fullmatch(v.strip()))).all() else "left" for c in df]
    return df.to_markdown(index=False, disable_numparse=True, colalign=align)


def reproduce(*, preset: str = "laptop", only: list[str] | None = None, keep_going: bool = False,
              build: bool = True, root: str | Path | None = None, jobs: int = 1, echo=print) -> int:
    """Execute the selected notebooks at ``preset``, then build the book. Returns an exit status
    (0 only if every notebook ran and the book built). ``jobs`` > 1: the language-model pages
    run first, alone; then up to ``jobs`` other pages at once (:func:`run_plan`). A page whose
    prerequisite (:data:`AFTER`) failed is not run."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    if jobs < 1:
        raise ValueError(f"jobs={jobs}: expected at least 1")
    layout = Layout(Path(root) if root else Path.cwd())
    chosen = select(layout, only)
    (layout.figures / BUILD_FILE).unlink(missing_ok=True)  # it describes a full build; this one is not yet
    t0 = time.time()
    alone, together = run_plan(list(chosen), jobs)
    threads = max(1, usable_cores() // jobs)
    failures: dict[str, str] = {}
    ran: set[str] = set()
    counter = iter(range(1, len(chosen) + 1))

    def started(name, threads=None):
        k = next(counter)
        echo(f"[{k}/{len(chosen)}] {name} ({preset}{f', {threads} thread(s)' if threads else ''}) ...")

    def finished(name, ok, sec, msg):
        echo(f"{name}: {'ok' if ok else 'FAILED'} in {sec:.0f} s")
        if ok:
            ran.add(name)
        else:
            failures[name] = msg
            echo(f"  {msg}")

    for name in alone:
        if failures and not keep_going:
            break
        if _prerequisites_ran(name, list(chosen), failures):
            started(name)
            finished(name, *execute(name, chosen[name], layout, preset))
    if together and (keep_going or not failures):
        _run_together(together, chosen, layout, preset, jobs=jobs, threads=threads, keep_going=keep_going,
                      failures=failures, done=set(ran), started=started, finished=finished)
    wall = time.time() - t0
    how = f" ({jobs} at a time on {threads} thread(s) each" + (f", after {', '.join(alone)} alone)" if alone else ")")
    echo(f"notebooks: {len(ran)} of {len(chosen)} ran in {wall:.0f} s" + (how if together else ""))
    if only is None and not failures:
        atomic_write(layout.figures / BUILD_FILE, json.dumps(
            {"jobs": jobs, "threads": threads if together else None, "alone": alone if together else [],
             "cores": usable_cores(), "wall_seconds": round(wall, 1), "notebooks": len(chosen),
             "preset": preset}).encode())
    write_ledger(layout)
    status = 1 if failures else 0
    if failures:
        echo(f"{len(failures)} notebook(s) failed:\n  " + "\n  ".join(failures.values()))
    if build and not failures:
        status = build_book(layout)
        if status == 0:
            echo(f"book: {layout.book / '_build' / 'html' / 'intro.html'}")
    return status


def _prerequisites_ran(name: str, names: list[str], failures: dict[str, str]) -> bool:
    """False (and ``name`` recorded as not run) when a page it reads the runs of failed."""
    failed = [n for n in waits_for(name, names) if n in failures]
    if failed:
        failures[name] = f"{name}: not run: it reads the runs of {', '.join(failed)}, which failed"
    return not failed


def _run_together(names, chosen, layout, preset, *, jobs, threads, keep_going, failures, done, started,
                  finished) -> None:
    """Execute ``names`` in ``jobs`` worker processes on ``threads`` threads each, each page once
    the pages it :func:`waits_for` have finished (``done``: those finished already) and never
    beside a page it :func:`_clashes` with; a page whose prerequisite failed is not run."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    # pages that others wait for first, so the waiting ones start as early as they can
    needed = {n for name in names for n in waits_for(name, list(chosen))}
    done, waiting, running = set(done), sorted(names, key=lambda n: (n not in needed, n)), {}
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while waiting or running:
            for name in list(waiting):
                if len(running) >= jobs or (failures and not keep_going):
                    break
                if not _prerequisites_ran(name, list(chosen), failures):
                    waiting.remove(name)
                elif all(n in done for n in waits_for(name, list(chosen))) and not _clashes(
                        name, list(running.values()), done):
                    waiting.remove(name)
                    started(name, threads)
                    try:
                        future = pool.submit(_execute_in_worker, name, chosen[name], layout, preset, threads)
                    except BrokenProcessPool as exc:
                        finished(name, False, 0.0, f"{name}: not run: the worker pool broke ({exc})")
                        waiting.clear()
                        break
                    running[future] = name
            if failures and not keep_going:
                waiting.clear()
            if not running:
                if waiting:
                    raise RuntimeError(f"pages {', '.join(waiting)} wait for pages that never run")
                break
            finished_now, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished_now:
                name = running.pop(future)
                try:
                    ok, sec, msg = future.result()
                except BrokenProcessPool as exc:  # a worker died (killed, out of memory)
                    ok, sec, msg = False, 0.0, f"{name}: its worker died ({exc})"
                    waiting.clear()
                finished(name, ok, sec, msg)
                done.add(name)
