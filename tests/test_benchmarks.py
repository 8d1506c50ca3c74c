"""The benchmark scripts behind docs/performance.md: benchmarks/attention.py and benchmarks/impl_crossover.py."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(threads, head_dim, scores, ratio, normalization="doubly"):
    return dict(threads=threads, head_dim=head_dim, scores=scores, normalization=normalization,
                fwd_bwd_ratio=ratio)


def test_crossover_is_interpolated_where_the_ratio_crosses_one():
    crossover = _script("impl_crossover").crossovers
    rows = [
        # (1, 64): loses at 2**19 (median of 1.2 and 1.0 is 1.1), wins at 2**21 and 2**23 -> between them
        _row(1, 64, 2**17, 1.3), _row(1, 64, 2**19, 1.2), _row(1, 64, 2**19, 1.0), _row(1, 64, 2**21, 1 / 1.1),
        _row(1, 64, 2**23, 0.5), _row(1, 64, 2**21, 5.0, normalization="sinkhorn"),  # only doubly counts
        # (2, 32): wins everywhere -> the smallest measured count
        _row(2, 32, 2**17, 0.9), _row(2, 32, 2**19, 0.8),
        # (2, 128): a win below a loss does not count; loses at the largest -> None
        _row(2, 128, 2**17, 0.9), _row(2, 128, 2**19, 1.1),
    ]
    table = crossover(rows)
    assert table[(1, 64)] == 2**20  # log-linear: ratio 1.1 at 2**19 and 1/1.1 at 2**21 cross at 2**20
    assert table[(2, 32)] == 2**17
    assert table[(2, 128)] is None


def test_crossover_from_json_prints_the_table(tmp_path, capsys):
    script = _script("impl_crossover")
    stored = tmp_path / "run.json"
    stored.write_text(json.dumps({"rows": [_row(1, 64, 2**19, 1.2), _row(1, 64, 2**21, 0.8)]}))
    assert script.main(["--from-json", str(stored)]) == 0
    assert "| 1 | 64 | 2**20 |" in capsys.readouterr().out


def test_attention_benchmark_writes_interleaved_ratios(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert _script("attention").main(["--lengths", "16", "--threads", "1", "2", "--rounds", "1",
                                          "--min-sample-ms", "2", "--dense-budget-gib", "1e-9",
                                          "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    (json_path,) = tmp_path.glob("attention-interleaved-cpu-*.json")
    assert {p.suffix for p in tmp_path.iterdir()} == {".json", ".csv", ".md"}
    result = json.loads(json_path.read_text())
    assert result["meta"]["date"] and result["meta"]["machine"] and result["meta"]["load_before"]
    rows = {(r["threads"], r["method"]): r for r in result["rows"]}
    assert set(rows) == {(t, m) for t in (1, 2) for m in _script("attention").METHODS}
    for t in (1, 2):
        assert rows[(t, "sdpa")]["cpu_vs_sdpa"] == 1.0
        assert math.isfinite(rows[(t, "sinkhorn3_chunked")]["cpu_vs_sdpa"])
        assert rows[(t, "doubly_dense")]["note"].startswith("skipped")  # over the (tiny) dense budget
        assert rows[(t, "sdpa")]["calls_per_sample"] > 1  # an L = 16 call takes far less than 2 ms
    out = capsys.readouterr().out
    assert "| 16 | 2 |" in out and "skipped" in out


@pytest.mark.parametrize(("bad", "message"), [(["--rounds", "0"], "must be positive"),
                                              (["--threads", "0"], "must be positive"),
                                              (["--min-sample-ms", "-1"], "--min-sample-ms -1.0: must be >= 0")])
def test_attention_benchmark_refuses_bad_options(bad, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        _script("attention").main([*bad, "--out", str(tmp_path)])
