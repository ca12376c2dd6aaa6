"""The recording benchmark's own measurements, and the methods page's rendering of them."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from trajlib.paper.book import benchmark_tables

sys.path.insert(0, str(REPO / "benchmarks"))
import gram_bench  # noqa: E402
import record_bench  # noqa: E402


def test_file_cost_times_each_part_and_deletes_nothing(tmp_path):
    cost = record_bench.file_cost(str(tmp_path), 4096, n=20)
    (folder,) = tmp_path.iterdir()  # one new folder: its 20 files renamed into place and one manifest
    assert sorted(p.name for p in folder.iterdir()) == sorted([str(i) for i in range(20)] + ["manifest.json"])
    assert (folder / "0").stat().st_size == 4096 and (folder / "manifest.json").stat().st_size == 200 * 20
    assert set(cost) == {"create", "write", "rename", "fsync", "commit"} and sum(cost.values()) > 0


@pytest.mark.skipif(not Path("/proc/mounts").is_file(), reason="needs Linux /proc/mounts")
def test_file_system_names_the_mount_holding_the_folder(tmp_path):
    kinds = {line.split()[1]: line.split()[2] for line in Path("/proc/mounts").read_text().splitlines()}
    assert record_bench.file_system("/") == kinds["/"]  # the dict keeps the last of stacked mounts, as Linux shows
    if "/dev/shm" in kinds:
        assert record_bench.file_system("/dev/shm") == kinds["/dev/shm"]
        assert record_bench.file_system("/dev/shm/not/yet/made") == kinds["/dev/shm"]


@pytest.mark.skipif(not hasattr(time, "pthread_getcpuclockid"), reason="needs per-thread CPU clocks")
def test_loop_reads_the_writer_threads_cpu(tmp_path):
    from trajlib.paper.data import digits

    data = digits()
    batches = [(data.x_train[i: i + 64], data.y_train[i: i + 64]) for i in range(0, 256, 64)]
    step, close, writer = record_bench.loop(20, 8, str(tmp_path / "run"), batches, "never")
    assert step > 0 and close >= 0 and writer > 0  # 21 files hashed and written on that thread
    assert len(list((tmp_path / "run").glob("ckpt-*.safetensors"))) == 21


def test_methods_page_renders_writer_cost_and_old_rows_alike(tmp_path):
    import json

    old = {"input": "digits", "threads": 2, "policy": "interval", "base_ms": 1.5, "record_ms": 1.8,
           "overhead_best": 0.2, "overhead_median": 0.25, "close_ms": 190}
    new = {**old, "threads": 1, "overhead_with_close": 0.31, "writer_us": 612.4, "writer_share": 0.204,
           "file_system": "ext4", "file_system_us": 480.2, "file_system_after_us": 501.7}
    (tmp_path / "record_bench.json").write_text(json.dumps({"rows": [old, new]}))
    rows = [line for line in benchmark_tables(tmp_path).splitlines() if line.startswith("| digits")]
    assert len(rows) == 2
    cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
    assert cells[0][2] == "—" and cells[0][-4:] == ["—"] * 4  # measured before these columns existed
    assert cells[1][2] == "ext4" and cells[1][-4:] == ["+31%", "612", "480 / 502", "20%"]


def test_contention_runs_the_file_work_from_a_thread_and_from_a_child_process(tmp_path):
    import argparse

    from trajlib.paper.data import digits

    data = digits()
    batches = [(data.x_train[i: i + 64], data.y_train[i: i + 64]) for i in range(0, 256, 64)]
    args = argparse.Namespace(steps=40, width=8, repeat=1)
    rows = record_bench.contention(args, batches, str(tmp_path), 4096)
    assert [(r["where"], r["sched_batch"]) for r in rows] == [("thread", False), ("thread", True),
                                                              ("process", False), ("process", True)]
    for where in ("thread", "process"):  # each variant wrote whole files, in folders of its own
        files = [f for d in tmp_path.glob(f"{where}-*") for f in d.iterdir() if not f.name.endswith(".tmp")]
        assert files and {f.stat().st_size for f in files} == {4096}
    # how many files land inside the timed loop depends on the scheduler (a nice-10 worker on a
    # busy machine may get none): only the bookkeeping is asserted
    assert all(r["files_per_step"] >= 0 for r in rows)
    assert rows[2]["overhead_per_file_per_step"] == pytest.approx(rows[2]["overhead_median"] / rows[2]["files_per_step"])


def test_methods_page_renders_the_contention_table(tmp_path):
    import json

    run = {"threads": 2, "file_system": "tmpfs", "bytes": 97088, "steps": 300, "repeat": 9, "rows": [
        {"where": "thread", "sched_batch": False, "overhead_median": 0.155, "files_per_step": 0.9,
         "overhead_per_file_per_step": 0.172},
        {"where": "process", "sched_batch": True, "overhead_median": 0.066, "files_per_step": 0.41,
         "overhead_per_file_per_step": 0.161},
        {"where": "process", "sched_batch": False, "overhead_median": -0.001, "files_per_step": 1.02,
         "overhead_per_file_per_step": -0.001}]}
    (tmp_path / "record_bench.json").write_text(json.dumps({"rows": [], "contention": [run]}))
    text = benchmark_tables(tmp_path)
    assert "2 torch threads, tmpfs, 97,088-byte files, median of 9 paired runs" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith(("| thread", "| process"))]
    assert rows == [["thread", "no", "+16%", "0.90", "+17%"], ["process", "yes", "+7%", "0.41", "+16%"],
                    ["process", "no", "+0%", "1.02", "+0%"]]  # never "-0%"


def test_manifest_bench_times_both_commits_on_one_manifest_that_lists_every_step(tmp_path):
    import json

    import manifest_bench

    r = manifest_bench.measure(tmp_path, 50, 7, 2)  # raises unless the manifest lists steps 0..N-1
    assert r["checkpoints"] == 50 and r["group"] == 7 and min(r["rewrite_ms"], r["append_ms"], r["rewrite_cached_ms"]) > 0
    assert r["manifest_bytes"] > (50 + 7 * 7) * 150  # 99 entries (3 ways × 2 repeats + the first commit) of ~210 bytes
    assert not list(tmp_path.iterdir())  # its run is removed
    out = manifest_bench.main(["--sizes", "20", "--repeat", "1", "--dir", str(tmp_path),
                               "--save", str(tmp_path / "m.json")])
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["runs"] == [out] and out["rows"][0]["checkpoints"] == 20


def test_methods_page_renders_the_commit_table(tmp_path):
    import json

    run = {"file_system": "ext4", "group": 130, "repeat": 5, "date": "2026-11-29", "rows": [
        {"checkpoints": 100000, "manifest_bytes": 23.8e6, "group": 130, "rewrite_ms": 427.9, "append_ms": 20.1,
         "rewrite_cached_ms": 53.5}]}
    (tmp_path / "manifest_bench.json").write_text(json.dumps({"runs": [run]}))
    text = benchmark_tables(tmp_path)
    assert "130 checkpoints a group, best of 5, ext4" in text
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
            if line.replace(" ", "").startswith("|100,000")]
    assert rows == [["100,000", "23.8", "427.9", "53.5", "20.1", "2.7", "214%", "10.1%"]]


def test_products_time_every_product_and_render_against_the_bound(tmp_path):
    import json

    import gram_bench

    rows = gram_bench.products([8, 70], peak_gflops=50.0, total_bytes=1 << 20, repeat=1)
    assert {(r["T"], r["product"]) for r in rows} >= {(8, "tiles"), (8, "square"), (70, "tiles"), (70, "square")}
    assert all(r["seconds"] > 0 and r["of_bound"] > 0 for r in rows)
    doc = {"T": 64, "P": 10, "run_bytes": 1e9, "cores": 2, "date": "2026-11-29",
           "rows": [{"method": "trajlib", "seconds": 1.0, "peak_mb": 1.0, "errors": {}}],
           "products": {"peak_gflops": 100.0, "date": "2026-11-29", "rows": [
               {"T": 64, "product": "syrk", "seconds": 0.028, "of_bound": 0.74},
               {"T": 256, "product": "syrk", "seconds": 0.086, "of_bound": 0.94},
               {"T": 256, "product": "tiles", "seconds": 0.101, "of_bound": 0.80}]}}
    (tmp_path / "gram_bench.json").write_text(json.dumps(doc))
    table = [[c.strip() for c in line.strip("|").split("|")] for line in benchmark_tables(tmp_path).splitlines()
             if line.startswith(("| syrk", "| tiles"))]
    assert table == [["syrk", "74% (0.028 s)", "94% (0.086 s)"], ["tiles", "—", "80% (0.101 s)"]]
