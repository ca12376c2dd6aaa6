"""Two gloo processes split the blocks and all-reduce: the Gram equals the single-process one."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
from conftest import random_walk, write_run

import trajlib
from trajlib.stats import GramStats

WORKER = textwrap.dedent("""
    import sys, torch.distributed as dist, trajlib
    run, init, rank, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    stats = trajlib.gram(trajlib.open_trajectory(run), groups=["all", "layers"], cache=False,
                         progress=False, block_bytes=2048)
    stats.save(out)
    dist.destroy_process_group()
""")


def test_two_gloo_ranks_match_one_process(tmp_path, rng):
    thetas = random_walk(rng, {"a.weight": (40, 30), "a.bias": (40,), "b.weight": (7, 40)}, 12)
    run = write_run(tmp_path / "r", thetas)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [subprocess.Popen([sys.executable, str(script), str(run), init, str(r), str(tmp_path / f"g{r}.npz")])
             for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    single = trajlib.gram(trajlib.open_trajectory(run), groups=["all", "layers"], cache=False,
                          progress=False, block_bytes=2048)
    for r in range(2):
        multi = GramStats.load(tmp_path / f"g{r}.npz")
        assert multi.meta["world_size"] == 2
        for g in single.groups:
            np.testing.assert_allclose(multi[g], single[g], rtol=1e-12, atol=0)
