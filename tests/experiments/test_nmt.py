"""``probattn experiment nmt`` end to end on the shipped sample (a few steps: it checks files, not BLEU)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sacrebleu")
pytest.importorskip("tokenizers")
pytest.importorskip("matplotlib")

from probattn.cli import main
from probattn.experiments.nmt import paired_tests

SMOKE = ["experiment", "nmt", "--data", "sample", "--size", "tiny", "--variants", "softmax", "svgd", "alignment",
         "--seeds", "0", "1", "--max-steps", "3", "--max-tokens", "400", "--vocab-size", "300", "--eval-every", "2",
         "--checkpoint-every", "2", "--warmup-steps", "1", "--test-examples", "6", "--validation-examples", "4",
         "--beam", "2", "--no-progress", "--threads", "1"]


def test_smoke_run_writes_table_plot_runs_and_resumes(tmp_path, capsys):
    out = tmp_path / "nmt"
    assert main([*SMOKE, "--output", str(out)]) == 0
    for name in ("results.md", "results.json", "val_bleu.png", "tokenizer.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        f"{v}-seed{s}.json" for v in ("alignment", "softmax", "svgd") for s in (0, 1)]
    markdown = (out / "results.md").read_text()
    assert "| baseline: copy source |" in markdown and "| baseline: translation memory |" in markdown
    assert "| svgd | 2 |" in markdown and "## Head diversity" in markdown and "**Esther " in markdown
    results = json.loads((out / "results.json").read_text())
    assert results["variants"] == ["softmax", "svgd", "alignment"]
    assert set(results["paired_tests"]) == {"svgd", "alignment"}
    assert results["paired_tests"]["svgd"]["seeds"] == [0, 1]
    run = json.loads((out / "runs" / "svgd-seed1.json").read_text())
    assert len(run["repulsive_sets"]) == 9  # 1+1 layers: 3 attention modules x Q/K/V
    assert len(run["sentence_chrf"]) == len(run["hypotheses"]) == 6
    assert [h["step"] for h in run["history"] if "val_bleu" in h] == [2, 3]
    assert 0 <= run["metrics"]["js_encoder_self"] <= 1 and -1 <= run["metrics"]["cos_cross"] <= 1
    capsys.readouterr()

    assert main([*SMOKE, "--output", str(out), "--resume"]) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 6
    assert main([*SMOKE, "--output", str(out)]) == 2  # without --resume: refused, nothing overwritten
    assert "pass --resume" in capsys.readouterr().err


def test_unknown_variant_is_refused(tmp_path, capsys):
    assert main(["experiment", "nmt", "--data", "sample", "--variants", "repulsive", "--output", str(tmp_path)]) == 2
    assert "--variants repulsive: choose from softmax, svgd, spos, doubly-encoder, alignment" in capsys.readouterr().err


def test_paired_tests_pair_by_seed():
    runs = [{"variant": v, "seed": s, "sentence_chrf": [50.0 + d * (i % 3) for i in range(30)]}
            for v, d in (("softmax", 0.0), ("svgd", 1.0), ("spos", 0.0)) for s in (0, 1)]
    runs.append({"variant": "spos", "seed": 5, "sentence_chrf": [0.0] * 30})  # no softmax partner: left out
    tests = paired_tests(runs, ["softmax", "svgd", "spos"])
    assert tests["svgd"]["verdict"] == "better" and tests["svgd"]["difference"] == pytest.approx(1.0)
    assert tests["spos"] == {**tests["spos"], "seeds": [0, 1], "difference": 0.0, "verdict": "no difference"}


def test_head_diversity_matches_an_independent_computation():
    import numpy as np
    import torch
    from scipy.spatial.distance import jensenshannon

    from probattn.experiments.nmt import head_diversity
    from probattn.models import Seq2SeqConfig, Seq2SeqTransformer, collate

    torch.manual_seed(0)
    model = Seq2SeqTransformer(Seq2SeqConfig(vocab_size=30, embed_dim=16, num_heads=4, ffn_dim=32, encoder_layers=2,
                                             decoder_layers=1, dropout=0.0)).eval()
    sources, targets = [[4, 5, 6, 7], [8, 9]], [[10, 11, 12], [13, 14, 15, 16, 17]]
    result = head_diversity(model, sources, targets)
    batch = collate(sources, targets)
    with torch.no_grad():
        maps = model(batch["src"], batch["tgt_in"], return_attention=True).attentions
    valid = {"encoder_self": batch["src"] != 0, "decoder_self": batch["tgt_in"] != 0, "cross": batch["tgt_in"] != 0}
    for kind, layers in maps.items():
        per_layer = []
        for w in layers:
            w = w.double().numpy()
            per_example = []
            for b in range(w.shape[0]):
                queries = np.flatnonzero(valid[kind][b].numpy())
                pairs = [np.mean([jensenshannon(w[b, g, i], w[b, h, i], base=2) ** 2 for i in queries])
                         for g in range(4) for h in range(4) if g != h]
                per_example.append(np.mean(pairs))
            per_layer.append(np.mean(per_example))
        assert result[f"js_{kind}"] == pytest.approx(np.mean(per_layer), rel=1e-6, abs=1e-9), kind
        assert -1 / 3 <= result[f"cos_{kind}"] <= 1
