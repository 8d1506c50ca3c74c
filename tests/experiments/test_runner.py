"""The study runner, through a toy study (tests/experiments/toy_study.py): seconds per test."""

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

from probattn.experiments import runner
from probattn.metrics import bootstrap_interval, holm
from probattn.training.selection import BestCheckpoint, epoch_warning

HERE = Path(__file__).parent


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))  # worker processes import the study by name
    import toy_study

    return toy_study.ToyStudy()


def parse(study, *argv):
    parser = argparse.ArgumentParser()
    runner.add_arguments(parser, study)
    return parser.parse_args(["--no-progress", *argv])


def run(study, output, *argv, workers=1):
    return runner.run_study(study, parse(study, "--output", str(output), "--workers", str(workers), "--threads", "1",
                                        *argv), command="probattn toy")


def test_a_study_writes_tables_verdict_and_one_file_per_run(toy, tmp_path, capsys):
    result = run(toy, tmp_path / "out", "--folds", "1")
    names = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert names == [f"{v}-seed{s}.json" for v in ("noisy", "softmax") for s in (0, 1, 2)]
    text = (tmp_path / "out" / "results.md").read_text()
    assert text.index("## Verdict") < text.index("## Test") < text.index("## Shifted test")
    assert "least squares (baseline)" in text and "Holm p" in text
    assert (tmp_path / "out" / "summary.png").is_file()
    assert result["verdict"]["opening"]["baseline"] in ("least squares", "majority class")
    assert "## Verdict" in capsys.readouterr().out


def test_resume_skips_finished_runs_and_keeps_every_invocation(toy, tmp_path):
    out = tmp_path / "out"
    run(toy, out, "--folds", "1", "--seeds", "0")
    with pytest.raises(ValueError, match="already holds 2 finished run"):
        run(toy, out, "--folds", "1", "--seeds", "0")
    with pytest.raises(ValueError, match=r"made with other options .*epochs"):
        run(toy, out, "--folds", "1", "--seeds", "0", "--resume", "--epochs", "3")
    before = (out / "runs" / "softmax-seed0.json").read_text()
    result = run(toy, out, "--folds", "1", "--seeds", "0", "1", "--resume")
    assert (out / "runs" / "softmax-seed0.json").read_text() == before  # not rerun
    assert len(result["invocations"]) == 2
    assert (out / "results.md").read_text().count("`probattn toy`: started") == 2


def test_a_foreign_folder_is_refused(toy, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not write"):
        run(toy, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_two_workers_give_the_sequential_results(toy, tmp_path):
    one = run(toy, tmp_path / "one", "--folds", "1", "--seeds", "0", "1")
    two = run(toy, tmp_path / "two", "--folds", "1", "--seeds", "0", "1", workers=2)
    strip = lambda runs: [{k: v for k, v in r.items() if k not in ("seconds", "cpu_seconds")} for r in runs]  # noqa: E731
    assert strip(one["runs"]) == strip(two["runs"])
    assert one["summary"] == two["summary"] and one["tests"] == two["tests"] and one["verdict"] == two["verdict"]
    assert two["invocations"][0]["workers"] == 2


def test_a_failed_run_is_named_and_loses_nothing_else(toy, tmp_path):
    args = parse(toy, "--output", str(tmp_path), "--variants", "softmax", "fail", "--seeds", "0", "1",
                 "--folds", "1", "--workers", "2", "--threads", "1")
    assert runner.main(toy, args) == 1
    result = json.loads((tmp_path / "results.json").read_text())
    assert [(f["variant"], f["seed"]) for f in result["failed"]] == [("fail", 0), ("fail", 1)]
    assert "FloatingPointError: step 3" in result["failed"][0]["error"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["softmax-seed0.json", "softmax-seed1.json"]
    assert "- fail seed 0: FloatingPointError" in (tmp_path / "results.md").read_text()


def test_folds_are_the_default_on_a_small_set_and_cover_every_row(toy, tmp_path, capsys):
    result = run(toy, tmp_path, "--seeds", "0", "--rows", "200")
    assert result["folds"] == runner.DEFAULT_FOLDS
    assert "5-fold cross-validation" in capsys.readouterr().err
    runs = [r for r in result["runs"] if r["variant"] == "softmax"]
    assert sorted(r["fold"] for r in runs) == list(range(5))
    assert sum(len(r["sets"]["test"]["scores"]["correct"]) for r in runs) == 200  # each row tested once
    cell = result["summary"]["Test"]["softmax"]["accuracy"]
    pooled = np.mean([x for r in runs for x in r["sets"]["test"]["scores"]["correct"]])
    assert cell["mean"] == pytest.approx(pooled) and cell["n"] == 5 and cell["low"] is not None


def test_fold_assignment_keeps_groups_together_and_is_seeded():
    groups = np.arange(100) // 7
    assign = runner.fold_assignment(100, 4, 3, groups)
    for g in set(groups):
        assert len(set(assign[groups == g])) == 1
    assert np.bincount(assign).max() - np.bincount(assign).min() <= 7
    assert (runner.fold_assignment(100, 4, 3, groups) == assign).all()
    train, validation, test = runner.fold_indices(assign, 2, seed=0, groups=groups)
    assert set(train).isdisjoint(validation) and set(train) | set(validation) | set(test) == set(range(100))
    assert not {groups[i] for i in validation} & {groups[i] for i in train}
    with pytest.raises(ValueError, match="--folds 1"):
        runner.fold_assignment(10, 1, 0)


def test_model_selection_keeps_the_best_weights_and_stops_with_patience():
    import torch

    model = torch.nn.Linear(1, 1)
    selection = BestCheckpoint(patience=2)
    scores = [0.5, 0.7, 0.6, 0.65, 0.9]
    stopped = None
    for step, score in enumerate(scores, 1):
        with torch.no_grad():
            model.weight.fill_(step)
        if selection.update(step, score, model):
            stopped = step
            break
    assert stopped == 4 and selection.stopped_early
    selection.restore(model)
    assert float(model.weight.detach()) == 2.0 and selection.record()["best_step"] == 2
    assert epoch_warning(300, 32, 561) is not None and epoch_warning(300, 32, 10_000) is None


def test_the_run_reports_epochs_trained_under_early_stopping(toy, tmp_path):
    result = run(toy, tmp_path, "--folds", "1", "--seeds", "0", "--patience", "2", "--epochs", "40")
    epochs = [r["epochs"] for r in result["runs"]]
    assert all(e < 40 for e in epochs)
    assert "Epochs actually trained" in (tmp_path / "results.md").read_text()


def test_intervals_stay_in_range_and_need_three_runs(toy, tmp_path):
    # near-perfect accuracy: a Student-t interval would cross 1; the bootstrap interval cannot
    scores = np.ones((3, 40))
    scores[0, 0] = 0
    mean, low, high = bootstrap_interval(scores, bounds=(0, 1))
    assert 0 <= low <= mean <= high <= 1
    result = run(toy, tmp_path, "--folds", "1", "--seeds", "0", "1")
    cell = result["summary"]["Test"]["softmax"]["accuracy"]
    assert cell["low"] is None and cell["high"] is None and cell["n"] == 2
    assert "no intervals" in (tmp_path / "results.md").read_text()
    units = {(s, None): {"metrics": {"weight_norm": v}} for s, v in enumerate([0.01, 0.02, 0.9])}
    cell = runner._cell(units, runner.Metric("weight_norm", "w", True, bounds=(0.0, 1.0)), None)
    assert cell["low"] == 0.0 and cell["high"] == 1.0  # the t-interval, clipped to the range


def test_holm_matches_a_hand_computation_and_covers_each_table(toy, tmp_path):
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, float("nan")])[1])
    result = run(toy, tmp_path, "--folds", "1", "--variants", "softmax", "noisy", "long")
    tests = result["tests"]["Test"]
    assert len(tests) == 4  # 2 variants x (accuracy, NLL)
    assert [t["p_holm"] for t in tests] == pytest.approx(holm([t["p"] for t in tests]))
    family = [result["verdict"]["opening"], *[c for c in result["verdict"]["claims"] if c.get("tested")]]
    assert [c["p_holm"] for c in family] == pytest.approx(holm([c["p"] for c in family]))


def test_the_verdict_opens_with_the_strongest_baseline(toy, tmp_path):
    # one epoch at a tiny learning rate: softmax stays near chance, the least-squares baseline does not
    result = run(toy, tmp_path, "--folds", "1", "--epochs", "1", "--lr", "0.001")
    opening = result["verdict"]["opening"]
    assert opening["baseline"] == "least squares" and opening["verdict"] == "worse"
    verdict = (tmp_path / "results.md").read_text().split("## Verdict", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in verdict.splitlines() if line.startswith("- ")]
    assert lines[0].startswith("- **softmax is weaker than the strongest baseline, least squares**")
    assert all(line.endswith("(about a model weaker than least squares)") for line in lines[1:])


def test_an_interim_report_has_means_only(toy, tmp_path):
    result = run(toy, tmp_path, "--folds", "1", "--seeds", "0", "1", "2")
    header = {k: result[k] for k in ("title", "invocations", "seeds", "folds", "split_seed", "describe")}
    runner.build_report(toy, tmp_path, variants=["softmax", "noisy"], header=header, figures=False,
                        interim="3 of 6 runs finished")
    text = (tmp_path / "results.md").read_text()
    assert "## Interim (3 of 6 runs finished)" in text and "## Verdict" not in text and "Holm" not in text.split(
        "## Test")[1]
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["Test"]["softmax"]["accuracy"]["low"] is None


def test_each_worker_gets_its_own_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert runner._gpu_ids(2) == ["2", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert runner._gpu_ids(3) == ["0", "1", "2"]
    assert runner.plan_workers(None, None, 10, gpus=2)[0] == 2  # one worker per GPU


def test_the_default_never_uses_more_threads_than_free_cores(monkeypatch):
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda _: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(runner, "busy_elsewhere", lambda cpus: 1.2)
    assert runner.free_cores()[0] == 3
    workers, threads = runner.plan_workers(None, None, 10)
    assert (workers, threads) == (3, 1) and workers * threads <= 3
    assert runner.plan_workers(None, None, 2) == (2, 1)  # never more workers than runs
    assert runner.plan_workers(1, None, 10) == (1, 3)  # one worker gets the free cores
    monkeypatch.setattr(runner, "busy_elsewhere", lambda cpus: 9.0)
    assert runner.plan_workers(None, None, 10) == (1, 1)  # a busy machine: at least one, never more
    messages = []
    runner.plan_workers(2, 2, 10, log=messages.append)
    assert any("contend" in m for m in messages)


def test_free_cores_count_other_processes_now_not_the_load_average(monkeypatch):
    """The 1-minute load average counts this process's own earlier work (a state pass just before the runs):
    on an idle 2-core machine it left one worker. What counts is what other processes use now."""
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    monkeypatch.setattr(runner.os, "getloadavg", lambda: (1.9, 1.0, 0.5))  # our own state pass, a minute ago
    monkeypatch.setattr(runner.time, "sleep", lambda _: None)
    busy_ticks = [10.0]  # busy ticks of 200 over each interval
    calls = [0]

    def cpu_times(cpus):
        calls[0] += 1
        return (1000.0, 4000.0) if calls[0] % 2 else (1000.0 + busy_ticks[0], 4200.0)

    monkeypatch.setattr(runner, "_cpu_times", cpu_times)
    assert runner.busy_elsewhere({0, 1}) == pytest.approx(0.1, abs=0.02)
    assert runner.free_cores()[0] == 2
    assert runner.plan_workers(None, None, 15) == (2, 1)
    busy_ticks[0] = 190.0  # 95 % busy: other processes hold about 1.9 cores
    assert runner.free_cores()[0] == 1
    assert runner.plan_workers(None, None, 15) == (1, 1)
    monkeypatch.setattr(runner, "_cpu_times", lambda cpus: None)  # no /proc/stat: the load average
    assert runner.free_cores() == (1, 2, 1.9)


def test_busy_elsewhere_reads_this_machine():
    busy = runner.busy_elsewhere(runner.os.sched_getaffinity(0), interval=0.05)
    assert busy is None or 0.0 <= busy <= len(runner.os.sched_getaffinity(0)) + 0.5
