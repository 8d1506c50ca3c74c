"""Two gloo ranks with different data stay bit-identical under SPOS (noise seeded from (seed, step))."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

WORKER = r"""
import os, sys
import torch
import torch.distributed as dist
from torch import nn
from probattn.repulsive import RepulsiveHeads

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
model = nn.parallel.DistributedDataParallel(nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
repulsive = RepulsiveHeads(model, method="spos", alpha=0.1, seed=5).attach(optimizer)
torch.manual_seed(1000 + rank)  # the global RNG differs between ranks: SPOS must not depend on it
gen = torch.Generator().manual_seed(100 + rank)  # different data on every rank
for _ in range(3):
    x, y = torch.randn(4, 5, 16, generator=gen), torch.randn(4, 5, 16, generator=gen)
    (model(x) - y).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
gathered = [torch.zeros_like(flat) for _ in range(2)]
dist.all_gather(gathered, flat)
if rank == 0:
    torch.save({"params": gathered, "steps": repulsive.num_steps}, sys.argv[1])
dist.destroy_process_group()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_ranks_stay_identical_under_spos(tmp_path):
    script, result = tmp_path / "worker.py", tmp_path / "result.pt"
    script.write_text(WORKER)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, str(script), str(result)], env={**os.environ, **env, "RANK": str(rank)})
        for rank in range(2)
    ]
    for proc in procs:
        assert proc.wait(timeout=240) == 0
    saved = torch.load(result)
    assert saved["steps"] == 3
    assert torch.equal(saved["params"][0], saved["params"][1])
