"""probattn bench: the grid runner (one real subprocess run of a tiny grid), skips, table and CLI errors."""

from __future__ import annotations

import argparse
import json

import pytest

from probattn import benchmarking


def _args(**overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    benchmarking.add_arguments(parser)
    args = parser.parse_args([])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def test_tiny_grid_measures_ratios_and_skips_over_budget(tmp_path, capsys):
    args = _args(lengths=[32], modes=["fwd_bwd"], methods=["sdpa", "naive_doubly", "doubly_chunked"], heads=2,
                 head_dim=8, repeats=1, threads=1, memory_budget_gib=1e-6, out=str(tmp_path))
    assert benchmarking.run(args) == 0
    printed = capsys.readouterr().out
    assert "| 32 | fwd_bwd | doubly_chunked |" in printed
    assert "skipped: needs" in printed  # naive_doubly is over the (tiny) budget
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".csv", ".json", ".md"]
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]
    assert [r["method"] for r in rows] == ["sdpa", "naive_doubly", "doubly_chunked"]
    row = rows[-1]
    assert row["note"] == "" and row["median_ms"] > 0 and row["time_vs_sdpa"] > 0
    assert row["peak_mib"] >= 0 and row["peak_method"] in ("VmHWM", "ru_maxrss")


@pytest.mark.parametrize(("overrides", "flag"), [(dict(lengths=[0]), "--lengths"), (dict(repeats=0), "--repeats"),
                                                 (dict(memory_budget_gib=0.0), "--memory-budget-gib")])
def test_bad_options_name_the_flag(overrides, flag):
    with pytest.raises(ValueError, match=flag):
        benchmarking.run(_args(**overrides))


def test_table_marks_missing_numbers():
    row = dict(length=8, mode="fwd", method="naive_doubly", median_ms=None, time_vs_sdpa=None, peak_mib=None,
               memory_vs_sdpa=None, note="skipped: needs ~9.0 GiB > budget 4 GiB")
    assert "| 8 | fwd | naive_doubly | - | - | - | - | skipped" in benchmarking.format_table([row])


def test_bench_measures_cpu_time_by_default():
    import argparse

    from probattn.benchmarking import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).clock == "cpu"
