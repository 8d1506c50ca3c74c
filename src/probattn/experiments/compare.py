"""``probattn compare``: train attention variants over seeds on real data and give a plain answer.

With no arguments: the variants softmax, doubly, hybrid, repulsive (SVGD) and alignment (CT) on Rotten
Tomatoes (split by movie) with 2,000 Amazon Fine Food reviews as the out-of-domain set, 3 seeds each, using
the ``minilm`` preset: two fresh probattn attention layers trained over the frozen token states of the
pretrained all-MiniLM-L6-v2 (computed once and cached on disk, :mod:`probattn.hf.states`). The variants
change exactly those trained attention layers. Measured run time and results: docs/experiments.md.

The run, in order:

1. the baselines (majority class, bag of words + logistic regression, frozen MiniLM + logistic regression;
   :mod:`probattn.experiments.baselines`) on the same splits, saved as ``baselines.json``;
2. every (variant, seed): :func:`probattn.training.train`, then on the in-domain test split and the OOD set
   accuracy, ECE (15 bins), NLL, Brier, per-example correctness and reliability data, and on the first 256
   test texts per layer head diversity, explained-away fraction and key/query distance
   (:mod:`probattn.experiments.diagnostics`); saved at once as ``runs/<variant>-seed<k>.json``;
3. a dedicated timing pass (:func:`timing_pass`): the variants interleaved round by round, wall and CPU
   time per step and peak memory, saved as ``timing.json``;
4. ``results.md`` (verdict first: :mod:`probattn.experiments.verdict`), ``results.json`` and the figures.

``results.md``/``results.json`` are rebuilt after every run, so a later failure never loses earlier ones;
``--resume`` skips what is finished.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from probattn.benchmarking import _reset_peak_rss, _status_kib
from probattn.experiments import plots
from probattn.experiments.diagnostics import collect_layer_statistics, layer_metrics
from probattn.experiments.results import (
    RUNS_DIR,
    Column,
    format_table,
    load_runs,
    run_path,
    save_run,
    summarize,
    summary_records,
    write_json,
)
from probattn.experiments.verdict import accuracy_comparison, format_verdicts, verdicts
from probattn.training.presets import DEFAULT_PRESET, PRESET_HELP, PRESETS

__all__ = ["COLUMNS", "DEFAULT_PRESET", "PRESETS", "VARIANTS", "add_arguments", "add_run_arguments",
           "apply_threads", "compare", "peak_memory", "run", "run_compare", "timing_pass"]

# variant name -> TrainConfig options that make it
VARIANTS: dict[str, dict[str, Any]] = {
    "softmax": {"normalization": "softmax"},
    "doubly": {"normalization": "doubly"},
    "hybrid": {"normalization": "hybrid"},
    "sinkhorn": {"normalization": "sinkhorn"},
    "repulsive": {"repulsive": "svgd"},
    "repulsive-spos": {"repulsive": "spos"},
    "alignment": {"alignment": "ct"},
    "alignment-gan": {"alignment": "gan"},
}
DEFAULT_VARIANTS = ("softmax", "doubly", "hybrid", "repulsive", "alignment")
DEFAULT_SEEDS = (0, 1, 2)
# presets: probattn.training.presets (shared with probattn train)
COLUMNS_IN_DOMAIN = [
    Column("accuracy_id", "accuracy", True), Column("ece_id", "ECE", False),
    Column("nll_id", "NLL", False), Column("brier_id", "Brier", False),
]
COLUMNS_OOD = [
    Column("accuracy_ood", "accuracy", True), Column("ece_ood", "ECE", False),
    Column("nll_ood", "NLL", False), Column("brier_ood", "Brier", False),
]
COLUMNS_ATTENTION = [
    Column("head_diversity", "head diversity (JS, bits)", True),
    Column("explained_away_0.1", "explained away (m̃<0.1)", False),
    Column("explained_away", "explained away (m̃<0.01)", False),
    Column("kq_alignment", "k/q distance (MMD²)", False, 4),
]
COLUMNS_COST = [
    Column("ms_per_step", "wall ms / step", False, 1),
    Column("cpu_ms_per_step", "CPU ms / step", False, 1),
    Column("peak_memory_mb", "peak memory (MiB)", False, 1),
]
COST_KEYS = {c.key for c in COLUMNS_COST}
COLUMNS = COLUMNS_IN_DOMAIN + COLUMNS_OOD + COLUMNS_ATTENTION
TABLES = {"In domain: test split": COLUMNS_IN_DOMAIN,
          "Out of domain": COLUMNS_OOD,
          "Attention (first 256 test texts, mean over layers)": COLUMNS_ATTENTION}
DIAGNOSTIC_EXAMPLES = 256


class Messages:
    """Notices of a run, printed once each as ``<command>: <message>`` above the progress bars."""

    def __init__(self, command: str = "probattn compare") -> None:
        self.prefix = command.split(" --")[0].split(" -")[0]
        self.seen: set[str] = set()

    def __call__(self, message: str) -> None:
        if message in self.seen:
            return
        self.seen.add(message)
        from tqdm.auto import tqdm

        tqdm.write(f"{self.prefix}: {message}", file=sys.stderr)


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Measure the peak memory of the enclosed code, in MiB, into the yielded dict's ``"mb"``.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak. CPU (Linux): the peak resident set
    size above the level at entry (free heap memory is first returned to the OS with ``malloc_trim`` and the
    kernel's high-water mark reset through ``/proc/self/clear_refs``). NaN where neither is available.
    """
    box = {"mb": math.nan}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        yield box
        box["mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        return
    start = None
    gc.collect()
    with contextlib.suppress(OSError):  # not Linux/glibc, or /proc not writable: leave NaN
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        start = _status_kib("VmRSS") if _reset_peak_rss() else None
    yield box
    end = _status_kib("VmHWM")
    if start is not None and end is not None:
        box["mb"] = (end - start) / 1024


def _split_metrics(predictions, suffix: str) -> dict[str, Any]:
    from probattn.experiments.baselines import measure_probabilities

    return measure_probabilities(predictions.probs.numpy(), predictions.labels.tolist(), suffix)


def train_and_measure(config, ood, *, log: Callable[[str], None] | None = None, progress: bool = False,
                      desc: str | None = None, extra: Callable[[Any], dict[str, Any]] | None = None
                      ) -> dict[str, Any]:
    """Train one run and measure it; returns the run record (without ``variant``/``seed``).

    ``extra(result)`` (the :class:`probattn.training.TrainResult`, its model in eval mode) may measure more: its
    ``"metrics"`` join the run's metrics, its other keys join the record."""
    from probattn.training import train

    began, cpu_began = time.perf_counter(), time.process_time()
    result = train(config, progress=progress, log=log, desc=desc, evaluate=False)  # evaluated here, once
    metrics: dict[str, float] = {}
    record: dict[str, Any] = {"reliability": {}}
    for split, data in (("id", result.splits.test), ("ood", ood)):
        if data is None:
            continue
        measured = _split_metrics(result.predict(data), split)
        metrics.update(measured["metrics"])
        record[f"correct_{split}"] = measured["correct"]
        record["reliability"]["in_domain" if split == "id" else "ood"] = measured["reliability"]
    test = result.splits.test
    summaries = collect_layer_statistics(result.model, result.encode(test.texts[:DIAGNOSTIC_EXAMPLES], None),
                                         max_examples=DIAGNOSTIC_EXAMPLES)
    per_layer_values = [layer_metrics(s) for s in summaries]
    per_layer = {k: [v[k] for v in per_layer_values]
                 for k in ("head_diversity", "explained_away_0.1", "explained_away", "kq_alignment", "lin_redundancy")}
    for key, values in per_layer.items():
        finite = [v for v in values if math.isfinite(v)]
        metrics[key] = sum(finite) / len(finite) if finite else math.nan
    if extra is not None:
        more = dict(extra(result))
        metrics.update(more.pop("metrics", {}))
        record.update(more)
    return {"metrics": metrics, **record, "per_layer": per_layer, "config": config.to_dict(),
            "seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - cpu_began,
            "final_loss": result.metrics["train"]["final_loss"]}


def timing_pass(configs: dict[str, Any], *, rounds: int, steps: int,
                progress: Callable[[str], None] | None = None) -> dict[str, list[dict[str, float]]]:
    """Time ``steps`` training steps of every variant, interleaved: round 1 runs each variant once, then round 2...

    ``configs``: ``{variant: TrainConfig}``. Returns ``{variant: [one record per round]}`` with ``ms_per_step``
    (wall), ``cpu_ms_per_step`` (process CPU time, all threads) and ``peak_memory_mb`` (:func:`peak_memory`).
    Interleaving spreads any change of machine load over all variants alike.
    """
    from probattn.training import train

    out: dict[str, list[dict[str, float]]] = {v: [] for v in configs}
    for r in range(rounds):
        for variant, config in configs.items():
            if progress is not None:
                progress(f"timing round {r + 1}/{rounds}: {variant}")
            device = _device(config)
            with peak_memory(device) as memory:
                result = train(config.replace(max_steps=steps, warmup_steps=0), progress=False,
                               log=lambda _: None, evaluate=False)
            t = result.metrics["train"]
            out[variant].append({"ms_per_step": 1000 * t["seconds_per_step"],
                                 "cpu_ms_per_step": 1000 * t["cpu_seconds_per_step"],
                                 "peak_memory_mb": memory["mb"]})
    return out


def _device(config) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(config.device)


def _majority(data) -> float:
    counts = torch.bincount(torch.tensor(data.labels))
    return float(counts.max() / counts.sum())


def evaluation_data(config, ood_examples: int | None):
    """``(splits of config's data, OOD set or None)``.

    Rotten Tomatoes: Amazon Fine Food reviews, cut to a fixed random subset of ``ood_examples``. A user's
    ``--data FILE``: ``--ood FILE`` (or ``amazon``) when given, else no OOD set.
    """
    from probattn.data import load_amazon_fine_food
    from probattn.training.data import load_ood, load_splits

    splits = load_splits(config)
    if config.data == "rotten_tomatoes" or config.ood == "amazon":
        ood = load_amazon_fine_food() if config.ood is None else load_ood(config, splits.label_names)
    else:
        ood = load_ood(config, splits.label_names)
    if ood is not None and ood_examples is not None:
        if ood_examples < 1:
            raise ValueError(f"--ood-examples {ood_examples}: must be >= 1")
        if ood_examples < len(ood):
            keep = torch.randperm(len(ood), generator=torch.Generator().manual_seed(0))[:ood_examples]
            ood = ood.subset(sorted(keep.tolist()), name=f"{ood.name}:{ood_examples}")
    return splits, ood


def _cached_json(path: Path, fingerprint: dict[str, Any], make: Callable[[], Any], log: Callable[[str], None],
                 what: str) -> Any:
    """``make()``, saved to ``path`` with ``fingerprint``; reused when ``path`` holds the same fingerprint."""
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == fingerprint:
            log(f"{what}: reusing {path}")
            return saved["data"]
    data = make()
    write_json(path, {"fingerprint": fingerprint, "data": data})
    return data


def _interval_text(e: dict[str, Any] | None) -> str:
    if e is None:
        return ""
    return f"{e['difference']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}], p = {e['p_value']:.3f}: {e['verdict']}"


def _baseline_runs(baselines: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"variant": name, "seed": 0, **record} for name, record in baselines.items()]


def write_summary(output: Path, *, variants: Sequence[str], header: dict[str, Any],
                  failed: Sequence[dict[str, Any]] = (), tables: dict[str, list[Column]] | None = None,
                  figures: bool = True, claims: Sequence[Any] | None = None) -> str:
    """Rebuild ``results.md``, ``results.json`` (and with ``figures`` the PNG figures) from the saved runs,
    ``baselines.json`` and ``timing.json`` in ``output``.

    ``tables``: ``{title: columns}`` of the Markdown file (default :data:`TABLES`); the cost table (from the
    timing pass) is added after them. ``claims``: the verdict's claims (default
    :data:`probattn.experiments.verdict.CLAIMS`). A table whose first column is neither in- nor out-of-domain
    lists the variants, and the baselines that measured any of its columns.
    """
    runs = [r for r in load_runs(output) if r["variant"] in variants]
    if not runs:
        return ""
    baselines = json.loads((output / "baselines.json").read_text())["data"] if (output / "baselines.json").is_file() \
        else {}
    timing = json.loads((output / "timing.json").read_text())["data"] if (output / "timing.json").is_file() else {}
    tables = tables or TABLES
    columns_all = [c for cols in tables.values() for c in cols if c.key not in COST_KEYS]
    summary = summarize(runs + _baseline_runs(baselines), columns_all, order=[*variants, *baselines])
    found = [v for v in variants if v in summary.index]
    claims = verdicts(runs) if claims is None else verdicts(runs, claims)
    comparisons = {split: {v: accuracy_comparison(runs, v, split) for v in found if v != "softmax"}
                   for split in ("id", "ood")}
    ood_name = header.get("ood_name") or "none"
    text = [f"# {header['title']}\n\nCommand: `{header['command']}`\n",
            f"Preset `{header['preset']}` ({PRESET_HELP.get(header['preset'], '')}); variants "
            f"{', '.join(variants)}; seeds {header['seeds']}. Data: {header['data_name']} "
            f"({header['sizes']}); out of domain: {ood_name}. Cells: mean [95% Student-t interval over seeds]; "
            "baselines are single deterministic fits. A variant differs from softmax only where the paired "
            "bootstrap (seeds × test examples, p < 0.05) says so; nothing is marked best. "
            "↑ higher is better, ↓ lower is better.\n"]
    verdict_lines = format_verdicts(claims)
    text.append("## Verdict (each paper's claim against softmax, at this scale)\n\n" + "\n".join(verdict_lines) + "\n")
    for title, columns in tables.items():
        columns = [c for c in columns if c.key not in COST_KEYS]
        if not columns:
            continue
        extra = None
        split = "id" if columns[0].key.endswith("_id") else "ood" if columns[0].key.endswith("_ood") else None
        if split is not None and columns[0].key.startswith("accuracy") and comparisons[split]:
            extra = {"accuracy − softmax [95%], paired bootstrap": {v: _interval_text(e) for v, e in
                                                                    comparisons[split].items()}}
        if split == "ood" and not any(c.key in r["metrics"] for r in runs for c in columns):
            continue
        rows = summary.loc[:, [c.key for c in columns]]
        if split is None:
            rows = rows.loc[[v for v in rows.index if v in found or (v in baselines and any(
                math.isfinite(rows.loc[v, (c.key, "mean")]) for c in columns))]]
        text.append(f"## {title}\n\n{format_table(rows, columns, extra)}\n")
    cost = None
    if timing:
        cost = summarize([{"variant": v, "seed": i, "metrics": m} for v, ms in timing["rounds"].items()
                          for i, m in enumerate(ms)], COLUMNS_COST, order=variants)
        text.append(f"## Cost (dedicated timing pass: {timing['steps']} steps × {len(next(iter(timing['rounds'].values())))} "
                    f"interleaved rounds per variant, {timing['threads']} thread(s); interval over rounds; never "
                    f"ranked)\n\n{format_table(cost, COLUMNS_COST)}\n")
    text.append("![accuracy and ECE](metrics.png)\n\n![reliability](reliability.png)\n\n![per layer](per_layer.png)\n"
                + ("\n![cost](cost.png)\n" if timing else ""))
    if failed:
        text.append("## Failed runs\n\n" + "\n".join(f"- {f['variant']} seed {f['seed']}: {f['error']}"
                                                     for f in failed) + "\n")
    if header.get("timings"):
        text.append("## Run time\n\n" + header["timings"] + "\n")
    markdown = "\n".join(text)
    (output / "results.md").write_text(markdown)
    write_json(output / "results.json", {**header, "variants": list(variants), "verdicts": claims,
                                         "comparisons": comparisons,
                                         "summary": summary_records(summary, columns_all),
                                         "cost": summary_records(cost, COLUMNS_COST) if cost is not None else None,
                                         "failed": list(failed), "runs": runs})
    if not figures:
        return markdown
    splits = {"in_domain": "in domain", **({"ood": "out of domain"} if header.get("ood_name") else {})}
    plots.metrics_figure(summary, found, list(baselines), splits, output / "metrics.png")
    plots.reliability_figure(runs, found, splits, output / "reliability.png")
    plots.per_layer_figure(runs, found, {"head_diversity": "head diversity (JS, bits)",
                                         "explained_away_0.1": "explained-away fraction (m̃<0.1)",
                                         "kq_alignment": "key/query distance (MMD²)"}, output / "per_layer.png")
    if cost is not None:
        plots.cost_figure(cost, found, output / "cost.png")
    return markdown


def compare(*, variants: Sequence[str] = DEFAULT_VARIANTS, seeds: Sequence[int] = DEFAULT_SEEDS,
            preset: str = DEFAULT_PRESET, output: str | Path = "probattn-compare", resume: bool = False,
            overrides: dict[str, Any] | None = None, ood_examples: int | None = 2000,
            command: str = "probattn compare", title: str = "probattn compare",
            tables: dict[str, list[Column]] | None = None, baselines: bool = True, timing_rounds: int = 3,
            timing_steps: int = 20, progress: bool = True, threads: int | None = None,
            variant_options: dict[str, dict[str, Any]] | None = None,
            measure: Callable[..., dict[str, Any]] | None = None, claims: Sequence[Any] | None = None,
            baselines_extra: Callable[[Any, Any], dict[str, dict[str, Any]]] | None = None,
            study_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Baselines, every (variant, seed), a timing pass, and the summary files with the verdict first.

    ``overrides`` are :class:`probattn.training.TrainConfig` options applied over the preset (e.g.
    ``{"max_steps": 50}`` or ``{"data": "my.csv", "text_column": "text", "label_column": "label"}``);
    ``ood_examples`` evaluates on a fixed random subset of that many OOD texts (None = all);
    ``timing_rounds=0`` skips the timing pass; ``threads``: torch threads for training (default: torch's for
    every preset but tiny / self-attentive, which use 1); ``title``, ``tables`` and ``claims`` shape
    ``results.md`` (see :func:`write_summary`). A study built on this loop (``experiment finetune``) passes its
    own ``variant_options`` (``{variant: TrainConfig options}``, default :data:`VARIANTS`), ``measure(config,
    ood, log=, progress=, desc=) -> record`` (default :func:`train_and_measure`) and ``baselines_extra(splits,
    ood) -> {baseline: more record entries}`` (merged into ``baselines.json``); ``study_options`` (JSON) are
    the study's own options: part of the baselines' fingerprint, and a finished run made with other ones is
    refused on ``--resume``. Returns the content of ``results.json``. Raises ``ValueError`` for unknown
    variants/presets, and when ``output`` already holds runs but ``resume`` is False.
    """
    from tqdm.auto import tqdm

    from probattn.training import TrainConfig

    table = VARIANTS if variant_options is None else variant_options
    unknown = [v for v in variants if v not in table]
    if unknown or not variants:
        raise ValueError(f"--variants {' '.join(unknown) or '(none)'}: choose from {', '.join(table)}")
    if len(set(variants)) != len(variants) or len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError("--variants and --seeds must be non-empty and list each value once")
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if timing_rounds < 0 or timing_steps < 1:
        raise ValueError(f"--timing-rounds {timing_rounds} / --timing-steps {timing_steps}: need rounds >= 0 "
                         "and steps >= 1")
    output = Path(output)
    existing = sorted((output / RUNS_DIR).glob("*.json")) if (output / RUNS_DIR).is_dir() else []
    if existing and not resume:
        raise ValueError(f"--output {output} already holds {len(existing)} finished run(s); pass --resume to "
                         "skip them and run the rest, or choose another --output")
    log = Messages(command)
    began, cpu_began = time.perf_counter(), time.process_time()
    base = {**PRESETS[preset], **(overrides or {})}
    configs = {(v, s): TrainConfig.from_dict({**base, **table[v], "seed": s}, source="compare")
               for v in variants for s in seeds}
    first = next(iter(configs.values()))
    splits, ood = evaluation_data(first, ood_examples)
    fingerprint = {"preset": preset, "overrides": overrides or {}, "ood_examples": ood_examples,
                   **({"study_options": study_options} if study_options else {}),
                   "sizes": [len(splits.train), len(splits.validation), len(splits.test), len(ood) if ood else 0]}
    minilm_states = first.model == "minilm-states"
    if minilm_states:  # the frozen part once, up front (cached on disk): every run and baseline reuses it
        from probattn.hf.states import STORE

        t0 = time.perf_counter()
        for data in (splits.train, splits.validation, splits.test, *([ood] if ood is not None else [])):
            STORE.encode(data.texts, data.text_pairs, max_length=first.max_length, log=log, progress=progress)
        log(f"frozen MiniLM token states ready in {time.perf_counter() - t0:.0f} s")
        if threads:  # default: torch's (all cores); on an idle 2-core machine a run takes 23 s instead of 32 s
            torch.set_num_threads(threads)
    if baselines:
        from probattn.experiments.baselines import run_baselines

        def make_baselines() -> dict[str, dict[str, Any]]:
            found = run_baselines(splits, ood, minilm=minilm_states or first.model == "minilm",
                                  max_length=first.max_length, log=log)
            for name, more in (baselines_extra(splits, ood) if baselines_extra is not None else {}).items():
                record = found.setdefault(name, {"metrics": {}})
                record["metrics"].update(more.get("metrics", {}))
                record.update({k: v for k, v in more.items() if k != "metrics"})
            return found

        _cached_json(output / "baselines.json", fingerprint, make_baselines, log, "baselines")
    header = {"title": title, "command": command, "preset": preset, "seeds": list(seeds), "overrides": overrides or {},
              "data_name": "Rotten Tomatoes, split by movie" if first.data == "rotten_tomatoes" else first.data,
              "ood_name": (f"{len(ood)} {'Amazon Fine Food reviews' if 'amazon' in ood.name else ood.name}"
                           if ood is not None else None),
              "sizes": f"train {len(splits.train)}, validation {len(splits.validation)}, test {len(splits.test)}",
              "ood_examples": len(ood) if ood is not None else 0,
              "majority_id": _majority(splits.test), "majority_ood": _majority(ood) if ood is not None else None}
    failed: list[dict[str, Any]] = []
    todo = list(configs.items())
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not progress, dynamic_ncols=True)
    for i, ((variant, seed), config) in enumerate(todo, 1):
        path = run_path(output, variant, seed)
        if path.exists():
            saved = json.loads(path.read_text())
            diff = TrainConfig.from_dict(saved["config"], source=str(path)).differences(config)
            if not diff and (saved.get("study_options") or None) != (study_options or None):
                diff = {"study options": (saved.get("study_options"), study_options)}
            if diff:
                raise ValueError(f"--resume: {path} was made with other options ({diff}); use the same options "
                                 "or another --output")
            log(f"[{i}/{len(todo)}] {variant} seed {seed}: finished before, skipped")
            bar.update(1)
            continue
        bar.set_postfix_str(f"{variant} seed {seed}")
        try:
            record = (measure or train_and_measure)(config, ood, log=log, progress=progress,
                                                    desc=f"{variant} seed {seed}")
        except Exception as exc:  # keep going: the other runs are independent; reported at the end
            failed.append({"variant": variant, "seed": seed, "error": f"{type(exc).__name__}: {exc}"})
            tqdm.write(f"[{i}/{len(todo)}] {variant} seed {seed}: FAILED: {type(exc).__name__}: {exc}")
            bar.update(1)
            continue
        save_run(output, {"variant": variant, "seed": seed, **record,
                          **({"study_options": study_options} if study_options else {})})
        m = record["metrics"]
        tqdm.write(f"[{i}/{len(todo)}] {variant} seed {seed}: accuracy {m['accuracy_id']:.3f} (OOD "
                   f"{m.get('accuracy_ood', math.nan):.3f}), ECE {m['ece_id']:.3f} (OOD "
                   f"{m.get('ece_ood', math.nan):.3f}), {record['seconds']:.1f} s ({record['cpu_seconds']:.1f} s CPU)")
        bar.update(1)
        write_summary(output, variants=variants, header=header, failed=failed, tables=tables, figures=False,
                      claims=claims)
    bar.close()
    finished = {r["variant"] for r in load_runs(output)}
    if timing_rounds:
        timed = {v: configs[(v, seeds[0])] for v in variants if v in finished}
        fingerprint_t = {**fingerprint, "variants": list(timed), "rounds": timing_rounds, "steps": timing_steps,
                         "threads": torch.get_num_threads()}
        _cached_json(output / "timing.json", fingerprint_t, lambda: {
            "rounds": timing_pass(timed, rounds=timing_rounds, steps=timing_steps, progress=log),
            "steps": timing_steps, "threads": torch.get_num_threads()}, log, "timing pass")
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu_began
    header["timings"] = (f"This invocation: {wall:.0f} s wall, {cpu:.0f} s CPU (process time, all threads; "
                         f"{torch.get_num_threads()} torch thread(s)).")
    markdown = write_summary(output, variants=variants, header=header, failed=failed, tables=tables, claims=claims)
    if not markdown:
        raise RuntimeError(f"no run finished; see the errors above ({len(failed)} failed)")
    print(markdown)
    verdict = markdown.split("## Verdict", 1)[1].split("\n## ", 1)[0]
    print("## Verdict" + verdict.rstrip() + "\n", flush=True)
    return json.loads((output / "results.json").read_text())


def add_run_arguments(parser: argparse.ArgumentParser, *, seeds: Sequence[int], max_steps: int | None,
                      output: str, ood_examples: int) -> None:
    """The options every compare-based command shares: ``--seeds``, ``--max-steps``, ``--output``, ``--resume``,
    ``--ood-examples``, ``--threads``, ``--timing-rounds``, ``--timing-steps``, ``--no-progress``."""
    parser.add_argument("--seeds", nargs="+", type=int, default=list(seeds), help="seeds")
    parser.add_argument("--max-steps", type=int, default=max_steps,
                        help="optimizer steps per run (None = the preset's)")
    parser.add_argument("--output", default=output, help="output folder")
    parser.add_argument("--resume", action="store_true", help="skip the runs already finished in --output")
    parser.add_argument("--ood-examples", type=int, default=ood_examples,
                        help="evaluate on a fixed random subset of this many out-of-domain texts (0 = all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for training (None: 1 for the from-scratch presets tiny and "
                             "self-attentive, whose small matrices gain little from threads; torch's default, all "
                             "cores, for minilm and minilm-full; pass 1 on a CPU shared with other jobs)")
    parser.add_argument("--timing-rounds", type=int, default=3,
                        help="rounds of the interleaved timing pass (0 = skip it)")
    parser.add_argument("--timing-steps", type=int, default=20, help="training steps per variant and timing round")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), metavar="NAME",
                        help=f"variants to compare (available: {', '.join(VARIANTS)})")
    add_run_arguments(parser, seeds=DEFAULT_SEEDS, max_steps=None, output="probattn-compare", ood_examples=2000)
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                        help="; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()))
    parser.add_argument("--data", default=None,
                        help="your CSV / JSONL / Parquet file instead of Rotten Tomatoes (needs --text-column and "
                             "--label-column; split 70/10/20 at random)")
    parser.add_argument("--text-column", default=None, help="--data FILE: the text column")
    parser.add_argument("--label-column", default=None, help="--data FILE: the label column")
    parser.add_argument("--ood", default=None,
                        help="out-of-domain test file with the same columns and labels (or 'amazon' for binary "
                             "sentiment); Rotten Tomatoes uses Amazon by default")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per text (None = the preset's)")
    parser.add_argument("--max-train-examples", type=int, default=None, help="train on a random subset")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def apply_threads(threads: int | None, preset: str) -> None:
    """``torch.set_num_threads``: ``threads``, or 1 for the small from-scratch presets, else leave torch's."""
    threads = threads if threads is not None else (1 if preset in ("tiny", "self-attentive") else None)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads}: must be >= 1")
        torch.set_num_threads(threads)


def run_compare(args: argparse.Namespace, *, name: str, preset: str, variants: Sequence[str],
                overrides: dict[str, Any], title: str = "probattn compare",
                tables: dict[str, list[Column]] | None = None) -> int:
    """Run :func:`compare` with the options of :func:`add_run_arguments`; exit code 1 when a run failed.

    ``name``: the command as typed after ``probattn`` (``"compare"``, ``"experiment alignment"``); the command
    line recorded in ``results.md`` is the real one when the process was started as ``probattn name ...``.
    """
    if PRESETS[preset]["model"] != "minilm-states":
        apply_threads(args.threads, preset)
    if args.max_steps is not None:
        overrides = {**overrides, "max_steps": args.max_steps}
    words = name.split()
    typed = sys.argv[1:1 + len(words)] == words
    command = shlex.join(["probattn", *(sys.argv[1:] if typed else words)])
    result = compare(variants=variants, seeds=args.seeds, preset=preset, output=args.output, resume=args.resume,
                     overrides=overrides, ood_examples=args.ood_examples or None, command=command, title=title,
                     tables=tables, timing_rounds=args.timing_rounds, timing_steps=args.timing_steps,
                     progress=not args.no_progress, threads=args.threads)
    print(f"wrote {Path(args.output) / 'results.md'}, results.json and the figures (metrics.png, reliability.png, "
          "per_layer.png, cost.png)")
    return 1 if result["failed"] else 0


def run(args: argparse.Namespace) -> int:
    if args.data is not None and (args.text_column is None or args.label_column is None):
        raise ValueError(f"--data {args.data}: also give --text-column and --label-column")
    overrides = {k: v for k, v in (("max_train_examples", args.max_train_examples), ("max_length", args.max_length),
                                   ("data", args.data), ("text_column", args.text_column),
                                   ("label_column", args.label_column), ("ood", args.ood),
                                   ("device", args.device if args.device != "auto" else None)) if v is not None}
    return run_compare(args, name="compare", preset=args.preset, variants=args.variants, overrides=overrides)
