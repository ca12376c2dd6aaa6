"""Writes a torch.distributed.checkpoint run for tests/test_trainer_formats.py: FSDP2 over two gloo
processes on the CPU, a tied-embedding model, one DCP save per step ({"model", "optimizer"}, as
torchtitan) and the full parameters gathered on rank 0 as the reference. Usage: dcp_writer.py ROOT"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn


class TiedLM(nn.Module):
    def __init__(self, vocab=17, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x):
        return self.head(torch.tanh(self.mix(self.emb(x))))


def work(rank: int, world: int, root: str, port: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    warnings.simplefilter("ignore")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = TiedLM()
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for step in range(4):
        if step:
            x = torch.randint(0, 17, (32,), generator=g)
            nn.functional.cross_entropy(model(x), x).backward()
            opt.step()
            opt.zero_grad()
        dcp.save({"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, opt)},
                 checkpoint_id=f"{root}/run/step-{step}")
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            Path(root, "reference").mkdir(exist_ok=True)
            torch.save({k: v.clone() for k, v in full.items()}, f"{root}/reference/step-{step}.pt")
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    import torch.multiprocessing as mp

    with socket.socket() as s:  # a free port on loopback
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(work, args=(2, sys.argv[1], port), nprocs=2)
