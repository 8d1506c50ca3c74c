"""Two gloo processes on CPU compute what one process computes with the same micro-batches."""

from __future__ import annotations

import multiprocessing
import os
import socket

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probattn.training import TrainConfig, train
from probattn.training.distributed import epoch_order, micro_batches

FORK = multiprocessing.get_context("fork")  # children inherit the imports: no interpreter start-up


@settings(max_examples=50, deadline=None)
@given(world=st.integers(1, 4), accum=st.integers(1, 4), per=st.integers(1, 3), step=st.integers(0, 2),
       seed=st.integers(0, 1000))
def test_micro_batches_do_not_depend_on_the_process_layout(world, accum, per, step, seed):
    batch = world * accum * per
    order = epoch_order(batch * 3 + 1, seed=seed, epoch=0)
    layout = [mb for rank in range(world)
              for mb in micro_batches(order, step, batch_size=batch, grad_accum=accum, world_size=world, rank=rank)]
    single = micro_batches(order, step, batch_size=batch, grad_accum=world * accum, world_size=1, rank=0)
    assert layout == single
    assert sorted(i for mb in layout for i in mb) == sorted(order[step * batch:(step + 1) * batch].tolist())


def test_epoch_order_depends_on_seed_and_epoch_only():
    assert np.array_equal(epoch_order(50, seed=3, epoch=2), epoch_order(50, seed=3, epoch=2))
    assert not np.array_equal(epoch_order(50, seed=3, epoch=2), epoch_order(50, seed=3, epoch=1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, config: TrainConfig, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = train(config, progress=False)
    torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, f"{out}/rank{rank}.pt")


@pytest.mark.distributed
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_two_gloo_processes_match_one_process(small_config, tmp_path, grad_accum):
    """2 processes with --grad-accum G = 1 process with --grad-accum 2G (up to summation order, not bitwise)."""
    config = small_config.replace(alignment="ct", repulsive="spos", max_steps=4, checkpoint_every=2,
                                  grad_accum=grad_accum)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # import torch._dynamo once, before forking
    port = _free_port()
    processes = [FORK.Process(target=_rank, args=(r, port, config.replace(output=str(tmp_path / "ddp")), str(tmp_path)))
                 for r in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(timeout=300)
    assert [p.exitcode for p in processes] == [0, 0]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    single = train(config.replace(grad_accum=2 * grad_accum, output=str(tmp_path / "one")),
                   progress=False).model.state_dict()
    for name, value in single.items():
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], value, atol=1e-6, rtol=0, msg=name)
    assert (tmp_path / "ddp" / "metrics.json").is_file()
    assert not list(tmp_path.glob("ddp/.*"))  # rank 1 wrote nothing, no temporary files left


@pytest.mark.distributed
def test_torchrun_runs_the_cli_unchanged(sample_csv, tmp_path):
    import json
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
               "-m", "probattn", "train", "--preset", "tiny", "--data", str(sample_csv), "--text-column", "text", "--label-column",
               "label", "--embed-dim", "16", "--max-length", "16", "--batch-size", "8", "--max-steps", "2",
               "--alignment", "mmd", "--repulsive", "svgd", "--output", str(out), "--no-progress"]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("test: accuracy") == 1  # rank 0 alone reports
    assert json.loads((out / "metrics.json").read_text())["train"]["world_size"] == 2
