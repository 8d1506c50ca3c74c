"""``adapt_steps``: a converted pretrained encoder is distilled toward the original before fine-tuning, once."""

from __future__ import annotations

import json

import pytest
import torch

from probattn.training import TrainConfig, train

pytestmark = pytest.mark.hf


def _config(folder, sample_csv, output, **changes) -> TrainConfig:
    return TrainConfig(**{"model": str(folder), "normalization": "doubly", "adapt_steps": 30, "data": str(sample_csv),
                          "text_column": "text", "label_column": "label", "max_length": 24, "batch_size": 8,
                          "max_steps": 2, "output": str(output), **changes})


@pytest.mark.parametrize(("changes", "message"), [
    ({"normalization": "softmax"}, "--adapt-steps 5: distils a converted model toward the original"),
    ({"model": "tiny", "normalization": "doubly"}, "--adapt-steps 5: needs a pretrained encoder"),
    ({"adapt_steps": -1}, "--adapt-steps -1: must be an integer >= 0"),
])
def test_adapt_steps_needs_a_converted_pretrained_encoder(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"model": "minilm", "normalization": "doubly", "adapt_steps": 5, **changes})


def test_adapted_run_moves_toward_the_original_and_a_reload_does_not_adapt_again(bert_folder, sample_csv, tmp_path,
                                                                               monkeypatch):
    from probattn.training import load_trained

    with pytest.warns(UserWarning, match="changes the attention"):
        result = train(_config(bert_folder, sample_csv, tmp_path / "run"), progress=False)
    adapted = result.metrics["train"]["adapt"]
    assert adapted["steps"] == 30 and adapted["last_loss"] < adapted["first_loss"] and adapted["cpu_seconds"] > 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]["adapt"]["steps"] == 30
    trained = result.model.bert.encoder.layer[0].attention.self.query.weight

    def refuse(*args, **kwargs):
        raise AssertionError("load_trained ran adapt")

    monkeypatch.setattr("probattn.hf.adapt", refuse)
    with pytest.warns(UserWarning, match="changes the attention"):
        model, _, _ = load_trained(tmp_path / "run")
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, trained)


def test_without_adapt_steps_nothing_is_distilled(bert_folder, sample_csv, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("adapt ran")

    monkeypatch.setattr("probattn.hf.adapt", refuse)
    with pytest.warns(UserWarning, match="changes the attention"):
        result = train(_config(bert_folder, sample_csv, tmp_path / "run", adapt_steps=0), progress=False)
    assert result.metrics["train"]["adapt"] is None
