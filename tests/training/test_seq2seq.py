"""The translation training loop: token batches, resume equals an uninterrupted run, variants attach."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sacrebleu")

from probattn.training.seq2seq import Seq2SeqData, Seq2SeqTrainConfig, token_batches, train_seq2seq


def _data(n: int = 24) -> Seq2SeqData:
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(4, 30, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]
    return Seq2SeqData(train_sources=rows, train_targets=[r[::-1] for r in rows], validation_sources=rows[:3],
                       validation_references=["a b", "c", "d e f"],
                       decode=lambda ids: [" ".join(map(str, row)) for row in ids], vocab_size=30)


def _config(**options) -> Seq2SeqTrainConfig:
    return Seq2SeqTrainConfig(**{"embed_dim": 16, "num_heads": 2, "ffn_dim": 32, "encoder_layers": 1,
                                 "decoder_layers": 1, "max_steps": 7, "max_tokens": 40, "warmup_steps": 2,
                                 "eval_every": 3, "checkpoint_every": 2, "device": "cpu", **options})


def test_token_batches_cover_the_epoch_within_the_token_budget():
    lengths = [3, 9, 4, 4, 1, 7, 2, 8, 5, 6]
    batches = token_batches(lengths, max_tokens=12, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(len(b) * max(lengths[i] for i in b) <= 12 for b in batches)
    assert batches == token_batches(lengths, max_tokens=12, seed=1, epoch=0)
    assert batches != token_batches(lengths, max_tokens=12, seed=1, epoch=1)
    with pytest.raises(ValueError, match="max_tokens=8 is smaller than the longest training pair"):
        token_batches(lengths, max_tokens=8, seed=1, epoch=0)


@pytest.mark.parametrize("variant", [{}, {"repulsive": "spos"}, {"alignment": "ct"}])
def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path, variant):
    data, config = _data(), _config(**variant)
    whole = train_seq2seq(config, data, output=tmp_path / "whole", progress=False)

    def crash(record):
        if record["step"] == 5:  # after the checkpoint of step 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_seq2seq(config, data, output=tmp_path / "cut", progress=False, on_step=crash)
    resumed = train_seq2seq(config, data, output=tmp_path / "cut", resume=True, progress=False)
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [h["step"] for h in resumed.history if "loss" in h] == list(range(1, 8))
    assert [h["step"] for h in resumed.history if "val_bleu" in h] == [3, 6, 7]
    assert resumed.steps_this_process == 3
    with pytest.raises(ValueError, match=r"--resume: .* other options"):
        train_seq2seq(_config(lr=5e-4, **variant), data, output=tmp_path / "cut", resume=True, progress=False)
    with pytest.raises(ValueError, match="--resume: the training data changed"):
        train_seq2seq(config, _data(20), output=tmp_path / "cut", resume=True, progress=False)


@pytest.mark.parametrize("variant", [{}, {"repulsive": "svgd"}])
def test_a_larger_max_steps_continues_a_finished_run_exactly(tmp_path, variant):
    """Train 6 steps, then resume with max_steps=9 (eval_every 3): the same weights as 9 steps in one go."""
    data = _data()
    whole = train_seq2seq(_config(max_steps=9, **variant), data, output=tmp_path / "whole", progress=False)
    train_seq2seq(_config(max_steps=6, **variant), data, output=tmp_path / "short", progress=False)
    longer = train_seq2seq(_config(max_steps=9, **variant), data, output=tmp_path / "short", resume=True,
                           progress=False)
    for (name, a), b in zip(whole.model.state_dict().items(), longer.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert longer.steps_this_process == 3
    with pytest.raises(ValueError, match=r"--resume: .* other options .*max_steps"):  # fewer steps than were run
        train_seq2seq(_config(max_steps=4, **variant), data, output=tmp_path / "short", resume=True, progress=False)


def test_config_errors():
    with pytest.raises(ValueError, match="repulsive must be None, 'svgd' or 'spos'"):
        Seq2SeqTrainConfig(repulsive="sgld")
    with pytest.raises(ValueError, match=r"unknown Seq2SeqTrainConfig options \['layers'\]"):
        Seq2SeqTrainConfig.from_dict({"layers": 3})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, config: Seq2SeqTrainConfig, out: str) -> None:
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    run = train_seq2seq(config, _data(), output=f"{out}/ddp", progress=False)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in run.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")


@pytest.mark.distributed
def test_two_gloo_processes_match_one_process(tmp_path):
    import multiprocessing

    from safetensors.torch import load_file

    config = _config(dropout=0.0, repulsive="svgd", max_tokens=10, max_steps=4)  # steps 2-4: 1 pair, rank 1 idle
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # import torch._dynamo once, before forking
    port = _free_port()
    fork = multiprocessing.get_context("fork")
    processes = [fork.Process(target=_rank, args=(r, port, config, str(tmp_path))) for r in range(2)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    assert [p.exitcode for p in processes] == [0, 0]
    single = train_seq2seq(config, _data(), progress=False).model.state_dict()
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    for name, value in single.items():
        torch.testing.assert_close(ranks[0][name], ranks[1][name], rtol=0, atol=0, msg=name)
        mine = ranks[0][name]
        if name.endswith("in_proj_bias"):  # the key bias (entries E..2E) cancels in the softmax: its gradient
            keep = torch.ones_like(value, dtype=torch.bool)  # is rounding noise, which Adam scales to full steps
            keep[16:32] = False
            mine, value = mine[keep], value[keep]
        torch.testing.assert_close(mine, value, rtol=1e-4, atol=1e-5, msg=name)
