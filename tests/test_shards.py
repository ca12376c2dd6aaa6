"""Sharded runs: two gloo processes train an FSDP2 model on CPU, each records its own shards;
the whole reads back as one trajectory, and the Gram streamed by each rank from its own shards
equals the single-process Gram of the gathered model to 1e-12."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import trajlib
from trajlib.shards import ShardedRecorder, open_sharded_run
from trajlib.stats import GramStats

WORKER = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist, trajlib
    from torch.distributed.fsdp import fully_shard
    from trajlib.shards import ShardedRecorder, fsdp_pieces
    root, init, rank = sys.argv[1], sys.argv[2], int(sys.argv[3])
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(9, 13), torch.nn.Tanh(), torch.nn.Linear(13, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 3))
    full = {n: p.detach().clone() for n, p in model.named_parameters()}
    fully_shard(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    gathered = {0: full}
    torch.manual_seed(1 + rank)  # each rank its own data, as under data parallelism
    with ShardedRecorder(fsdp_pieces(model), f"{root}/sharded", every=3, meta={"model": "mlp"}) as rec:
        for step in range(1, 13):
            x = torch.randn(16, 9)
            loss = model(x).pow(2).mean()
            opt.zero_grad(); loss.backward(); opt.step()
            rec.step(step)
            if step % 3 == 0:  # the reference: the whole model gathered (a test-only luxury)
                gathered[step] = {n: p.full_tensor().detach().clone() for n, p in model.named_parameters()}
        if rank == 0:
            rec.save(99)  # uneven: a step only rank 0 records (no collective per step: no deadlock)
    if rank == 0:
        ref = torch.nn.Sequential(torch.nn.Linear(9, 13), torch.nn.Tanh(), torch.nn.Linear(13, 5),
                                  torch.nn.Tanh(), torch.nn.Linear(5, 3))
        params = dict(ref.named_parameters())
        def load(step):
            with torch.no_grad():
                for n, v in gathered[step].items():
                    params[n].copy_(v)
        load(0)
        with trajlib.Recorder(ref, f"{root}/reference", steps=sorted(gathered)) as full_rec:
            for step in sorted(gathered)[1:]:
                load(step)
                full_rec.step(step)
    dist.barrier()
    traj = trajlib.open_trajectory(f"{root}/sharded")
    stats = trajlib.gram(traj, groups=["all", "layers"], cache=False, progress=False, block_bytes=256)
    stats.save(f"{root}/g{rank}.npz")
    opened = sorted({r for c in traj.checkpoints for r in c.reader._open})
    json.dump({"opened": opened, "T": traj.T}, open(f"{root}/read{rank}.json", "w"))
    dist.destroy_process_group()
""")


def test_fsdp_shards_recorded_per_rank_and_reduced_without_gathering(tmp_path):
    import json

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), init, str(r)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # the layout: one manifest, one ordinary run per rank, pieces partitioning each tensor
    layout = json.loads((tmp_path / "sharded" / "manifest.json").read_text())
    assert layout["format"] == "trajlib-sharded-run" and layout["world_size"] == 2
    assert {r for r, *_ in layout["pieces"]} == {0, 1}
    assert list(trajlib.open_trajectory(tmp_path / "sharded" / "rank-00001").steps) == [0, 3, 6, 9, 12]
    with pytest.warns(UserWarning, match=r"steps \[99\] are missing on some rank"):
        traj = trajlib.open_trajectory(tmp_path / "sharded")
    ref = trajlib.open_trajectory(tmp_path / "reference")
    assert list(traj.steps) == list(ref.steps) == [0, 3, 6, 9, 12]
    assert traj.names == ref.names
    for t in range(traj.T):  # the shards reassemble the gathered model exactly
        np.testing.assert_array_equal(traj.flat(t), ref.flat(t))
    single = trajlib.gram(ref, groups=["all", "layers"], cache=False, progress=False)
    whole = trajlib.gram(traj, groups=["all", "layers"], cache=False, progress=False)
    for r in range(2):
        assert json.loads((tmp_path / f"read{r}.json").read_text())["opened"] == [r]  # own shards only
        multi = GramStats.load(tmp_path / f"g{r}.npz")
        assert multi.meta["world_size"] == 2 and multi.groups == single.groups
        for g in single.groups:
            np.testing.assert_allclose(multi[g], single[g], rtol=1e-12, atol=0)
            np.testing.assert_allclose(whole[g], single[g], rtol=1e-12, atol=0)


def test_sharded_recorder_refuses_pieces_that_do_not_partition(tmp_path):
    w = torch.zeros(6)
    with pytest.raises(ValueError, match=r"tensor 'a.w': the pieces cover 3 of 6 elements"):
        ShardedRecorder({"a.w": (w[:3], (6,), 0)}, tmp_path / "r")
    with pytest.raises(ValueError, match=r"tensor 'a.w': the pieces leave a gap at element 0"):
        ShardedRecorder({"a.w": (w[:3], (6,), 3)}, tmp_path / "r")


def test_a_single_process_sharded_run_reads_back_and_checks_its_files(tmp_path):
    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    with ShardedRecorder({"w": (w, (3, 4), 0)}, tmp_path / "r", every=1) as rec:
        for s in (1, 2):
            w.add_(1.0)
            rec.step(s)
    traj = open_sharded_run(tmp_path / "r")
    assert list(traj.steps) == [0, 1, 2] and traj.tensor(2, "w")[2, 3] == 13.0
    # a rank file that does not hold what the layout says is named on read
    layout = (tmp_path / "r" / "manifest.json")
    layout.write_text(layout.read_text().replace('"shape":[3,4]', '"shape":[4,4]').replace("0,12]", "0,16]"))
    bad = open_sharded_run(tmp_path / "r")
    with pytest.raises(trajlib.TrajectoryError, match=r"rank-00000/ckpt-000000000.safetensors: tensor 'w' should be F32\[16\]"):
        bad.tensor(0, "w")
