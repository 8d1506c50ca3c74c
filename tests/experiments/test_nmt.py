"""``probattn experiment nmt`` end to end on the shipped sample (a few steps: it checks files, not BLEU)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sacrebleu")
pytest.importorskip("tokenizers")
pytest.importorskip("matplotlib")

from probattn.cli import main

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
    assert "| copy source (baseline) | 1 fit |" in markdown and "| translation memory (baseline) | 1 fit |" in markdown
    assert "| svgd | 2 |" in markdown and "## Head diversity" in markdown and "**Esther " in markdown
    assert markdown.index("## Verdict") < markdown.index("## Test books")
    verdict = markdown.split("## Verdict", 1)[1].splitlines()[2]
    assert verdict.startswith("- **softmax") and "the strongest baseline" in verdict  # baseline first
    results = json.loads((out / "results.json").read_text())
    assert results["variants"] == ["softmax", "svgd", "alignment"]
    tests = [t for t in results["tests"]["Test books"] if t["metric"] == "sentence_chrf"]
    assert {t["variant"] for t in tests} == {"svgd", "alignment"} and {t["units"] for t in tests} == {2}
    assert all(t["method"] == "paired bootstrap" and t["p_holm"] >= t["p"] for t in tests)
    # the same numbers as 0.2.0 (commit 6649000, this command): corpus chrF and JS per variant, the baselines
    summary = results["summary"]
    assert summary["Test books"]["softmax"]["chrf"]["mean"] == pytest.approx((1.5261513418713226 + 1.5295972830557325)
                                                                             / 2)
    js = summary["Head diversity (first 64 test pairs, mean over layers)"]["svgd"]["js_encoder_self"]["mean"]
    assert js == pytest.approx((0.06675984439582468 + 0.07260078457689294) / 2, rel=1e-6)
    base = summary["Test books"]["copy source (baseline)"]
    assert (base["bleu"]["mean"], base["chrf"]["mean"]) == pytest.approx((1.825347170549302, 19.573801346269715))
    assert {t["difference"] for t in tests} == {0.0}  # 0.2.0: Δ chrF 0.0, p 1.0
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


def test_a_larger_max_steps_continues_finished_runs(tmp_path, capsys):
    out = tmp_path / "nmt"
    short = [*SMOKE[:SMOKE.index("--variants")], "--variants", "softmax", *SMOKE[SMOKE.index("--seeds"):]]
    short[short.index("--seeds") + 1: short.index("--seeds") + 3] = ["0"]
    assert main([*short, "--output", str(out)]) == 0
    capsys.readouterr()
    longer = [*short, "--output", str(out), "--resume"]
    longer[longer.index("--max-steps") + 1] = "5"
    assert main(longer) == 0
    assert "finished at 3 steps, continuing from its checkpoint to 5" in capsys.readouterr().out
    run = json.loads((out / "runs" / "softmax-seed0.json").read_text())
    assert [h["step"] for h in run["history"] if "loss" in h] == [1, 2, 3, 4, 5]
    assert main([*short, "--output", str(out), "--resume", "--report-only"]) == 2  # 3 steps asked, 5 were run
    assert "only a larger --max-steps continues finished runs" in capsys.readouterr().err


def test_unknown_variant_is_refused(tmp_path, capsys):
    assert main(["experiment", "nmt", "--data", "sample", "--variants", "repulsive", "--output", str(tmp_path)]) == 2
    assert "--variants repulsive: choose from softmax, svgd, spos, doubly-encoder, alignment" in capsys.readouterr().err


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


PARALLEL = ["experiment", "nmt", "--data", "sample", "--size", "tiny", "--variants", "softmax", "svgd",
            "--max-steps", "3", "--max-tokens", "400", "--vocab-size", "300", "--eval-every", "2", "--warmup-steps",
            "1", "--test-examples", "6", "--validation-examples", "4", "--beam", "2", "--no-progress", "--threads", "1"]
TIMING = ("ms_per_step", "cpu_ms_per_step", "test_seconds")


def _without_timing(results: dict) -> dict:
    runs = [{"variant": r["variant"], "seed": r["seed"], "sets": r["sets"],
             "history": [{k: x for k, x in h.items() if k not in ("val_seconds", "wall_time")} for h in r["history"]]}
            for r in results["runs"]]
    return {"summary": {k: v for k, v in results["summary"].items() if k != "Cost"},
            "tests": results["tests"], "verdict": results["verdict"], "runs": runs,
            "baselines": results["baselines"], "data": results["data"]}


def _table_without_timing(markdown: str) -> str:
    """results.md from the verdict to the cost table (the invocations and the timings differ)."""
    return markdown.split("## Verdict", 1)[1].split("## Cost", 1)[0]


def test_parallel_processes_into_one_folder_give_the_sequential_table(tmp_path, capsys):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import probattn

    sequential, parallel = tmp_path / "sequential", tmp_path / "parallel"
    assert main([*PARALLEL, "--seeds", "0", "1", "--output", str(sequential)]) == 0
    assert main([*PARALLEL, "--seeds", "0", "1", "--output", str(parallel), "--prepare-only"]) == 0
    assert sorted(p.name for p in parallel.iterdir()) == ["prepared.json", "probattn-output.json", "tokenizer.json"]
    env = {**os.environ, "PYTHONPATH": str(Path(probattn.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen([sys.executable, "-m", "probattn", *PARALLEL, "--seeds", seed, "--output",
                                 str(parallel), "--resume", "--no-report"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for seed in ("0", "1")]
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-2000:]
        assert "--report-only" in out
    assert not (parallel / "results.md").exists()  # the workers write their runs only
    assert sorted(p.name for p in (parallel / "runs").iterdir()) == [
        f"{v}-seed{s}.json" for v in ("softmax", "svgd") for s in (0, 1)]
    capsys.readouterr()
    assert main([*PARALLEL, "--seeds", "0", "1", "--output", str(parallel), "--resume", "--report-only"]) == 0
    assert capsys.readouterr().out.count("finished before, skipped") == 4
    assert not (parallel / "checkpoints").exists() or sorted(p.name for p in (parallel / "checkpoints").iterdir()) == [
        f"{v}-seed{s}" for v in ("softmax", "svgd") for s in (0, 1)]
    one, two = (json.loads((d / "results.json").read_text()) for d in (sequential, parallel))
    assert _without_timing(two) == _without_timing(one)
    assert _table_without_timing((parallel / "results.md").read_text()) == _table_without_timing(
        (sequential / "results.md").read_text())
    assert (parallel / "val_bleu.png").is_file()
    from probattn.io import MANIFEST

    recorded = json.loads((parallel / MANIFEST).read_text())["files"]  # every process's files, none lost
    assert {f"runs/{v}-seed{s}.json" for v in ("softmax", "svgd") for s in (0, 1)} <= set(recorded)

    # a report over runs that are not all finished names the missing ones and tables the others
    assert main([*PARALLEL, "--seeds", "0", "1", "2", "--output", str(parallel), "--resume", "--report-only"]) == 0
    assert capsys.readouterr().out.count("not finished, left out of the report") == 2
    assert "Runs not finished (left out of every table): softmax-seed2, svgd-seed2." in (
        parallel / "results.md").read_text()


def test_report_only_needs_a_prepared_folder_and_finished_runs(tmp_path, capsys):
    assert main([*PARALLEL, "--seeds", "0", "--output", str(tmp_path / "none"), "--report-only"]) == 2
    assert "--report-only: " in capsys.readouterr().err
    assert main([*PARALLEL, "--seeds", "0", "--output", str(tmp_path / "prep"), "--prepare-only"]) == 0
    assert main([*PARALLEL, "--seeds", "0", "--output", str(tmp_path / "prep"), "--resume", "--report-only"]) == 2
    assert "--report-only: no finished run of softmax svgd" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="2"):
        main([*PARALLEL, "--seeds", "0", "--output", str(tmp_path / "x"), "--report-only", "--no-report"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_gpu_schedule_fills_the_options_not_given():
    import argparse

    from probattn.experiments.nmt import SCHEDULES, _apply_schedule, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--schedule", "gpu", "--max-steps", "700"])
    _apply_schedule(args)
    assert (args.max_steps, args.max_tokens, args.eval_every) == (700, 16384, SCHEDULES["gpu"]["eval_every"])
    args = parser.parse_args([])
    _apply_schedule(args)
    assert (args.max_steps, args.max_tokens, args.warmup_steps, args.eval_every, args.checkpoint_every,
            args.validation_examples) == (500, 2048, 150, 100, 100, None)  # the CPU defaults, unchanged


@pytest.mark.gpu
def test_every_variant_trains_and_decodes_on_cuda(tmp_path):
    out = tmp_path / "cuda"
    assert main([*PARALLEL[:7], "softmax", "svgd", "spos", "doubly-encoder", "alignment", *PARALLEL[9:],
                 "--seeds", "0", "--device", "cuda", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["variants"] == ["softmax", "svgd", "spos", "doubly-encoder", "alignment"]
    for run in results["runs"]:
        assert run["config"]["device"] == "cuda" and run["final_train_loss"] > 0


def test_a_folder_holding_other_files_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "tokenizer.json").write_text("someone else's tokenizer")
    assert main([*SMOKE, "--output", str(tmp_path), "--overwrite"]) == 2
    assert "tokenizer.json" in capsys.readouterr().err
    assert main([*SMOKE, "--output", str(tmp_path), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "probattn did not write (tokenizer.json)" in err and "--overwrite" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
    assert (tmp_path / "tokenizer.json").read_text() == "someone else's tokenizer"
