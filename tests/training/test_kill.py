"""SIGKILL tests: a killed run resumes to the same parameters; a kill mid-write keeps the old checkpoint."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time

import pytest
import torch

from probattn.training import TrainConfig, train
from probattn.training import checkpoint as ckpt
from probattn.training.checkpoint import find_checkpoints, load_checkpoint, save_checkpoint

FORK = multiprocessing.get_context("fork")  # the child inherits the imports: no interpreter start-up


def _slow_train(config: TrainConfig) -> None:
    torch.set_num_threads(1)
    train(config, progress=False, on_step=lambda record: time.sleep(0.3))  # slow enough to be killed mid-run


def test_sigkill_then_resume_matches_uninterrupted(small_config, tmp_path):
    config = small_config.replace(alignment="ct", repulsive="svgd", checkpoint_every=2, max_steps=12)
    killed = tmp_path / "killed"
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # import torch._dynamo once, before forking
    process = FORK.Process(target=_slow_train, args=(config.replace(output=str(killed)),))
    process.start()
    deadline = time.monotonic() + 120
    while not find_checkpoints(killed):
        assert process.is_alive(), f"the run exited early with code {process.exitcode}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.join()
    assert process.exitcode == -signal.SIGKILL
    stopped_at = load_checkpoint(killed)["step"]
    assert stopped_at < 12 and not (killed / "metrics.json").exists()

    resumed = train(config.replace(output=str(killed), resume=True), progress=False)
    full = train(config.replace(output=str(tmp_path / "full")), progress=False)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.metrics["test"] == full.metrics["test"]


def _torn_save(path) -> None:
    def torn(file, data):  # write part of a checkpoint file, then die before the rename
        with open(file, "wb") as handle:
            handle.write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

    ckpt._write_file = torn
    save_checkpoint(path, {"step": 2, "weights": torch.zeros(5)}, step=2)


def test_kill_during_checkpoint_write_keeps_previous(tmp_path):
    save_checkpoint(tmp_path, {"step": 1, "weights": torch.arange(5.0)}, step=1)
    process = FORK.Process(target=_torn_save, args=(tmp_path,))
    process.start()
    process.join()
    assert process.exitcode == -signal.SIGKILL
    state = load_checkpoint(tmp_path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.arange(5.0))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the torn temporary directory
    save_checkpoint(tmp_path, {"step": 3}, step=3)  # the next save removes it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000001", "checkpoint-00000003"]


def test_unstorable_state_writes_nothing_and_keeps_previous(tmp_path):
    save_checkpoint(tmp_path, {"step": 1}, step=1)

    class Code:
        pass

    with pytest.raises(TypeError, match=r"state\.bad: cannot store a Code in a checkpoint"):
        save_checkpoint(tmp_path, {"step": 2, "bad": Code()}, step=2)
    assert load_checkpoint(tmp_path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-00000001"]


def test_config_round_trips_through_json():
    config = TrainConfig(alignment="ct", max_train_examples=5)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
