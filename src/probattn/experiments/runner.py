"""The one study runner: variants x seeds (x folds), workers, resume, statistics, verdicts, reports.

A *study* (compare, nmt, graph, finetune, vqa, ...) subclasses :class:`Study` and provides only what is its own:
data prepared once (and cached), one (variant, seed[, fold]) trained and evaluated into per-example records and
run-level quantities, baselines, claims, tables, optional flags, sections and figures. The runner owns the rest:
the grid, separate worker processes, resume, one JSON file per run, statistics (intervals inside each
quantity's range, paired tests, Holm correction), the baseline-first verdict, ``results.md`` / ``results.json``,
the standard figure, progress and messages. The contract is written out in docs/design.md ("Study runner").

A run record (what :meth:`Study.run` returns, saved as ``runs/<variant>-seed<k>[-fold<f>].json``)::

    {"metrics": {key: float},                       # run-level quantities (head diversity, ms/step, ...)
     "sets": {name: {"metrics": {key: float},       # one entry per evaluation set: "test", "ood", "noisy",
                     "scores": {score: [float]}}},  # "attack", ...; scores: one value per example, same order
     "epochs": float | None,                        # epochs actually trained (model selection), optional
     ...}                                           # anything else the study wants to keep (JSON)

The runner adds ``variant``, ``seed``, ``fold``, ``seconds``, ``cpu_seconds`` and ``threads``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import math
import multiprocessing
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = ["FOLDS_BELOW", "MIN_REPLICATES", "Claim", "Messages", "Metric", "Report", "RunSpec", "Split", "Study",
           "Table", "add_arguments", "fold_assignment", "fold_indices", "main", "plan_workers", "run_study"]

FOLDS_BELOW = 3000  # --folds defaults to DEFAULT_FOLDS when the labelled set has fewer rows than this
DEFAULT_FOLDS = 5
MIN_REPLICATES = 3  # fewer seeds (x folds): a warning and no interval
ALPHA = 0.05
REBUILD_SECONDS = 60.0  # results.md is rebuilt after a finished run at most this often (and at the end)
RUNS_DIR, STUDY_FILE, BASELINES_FILE = "runs", "study.json", "baselines.json"


# -- what a study declares ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One reported quantity.

    ``key``: its name in ``sets[name]["metrics"]`` (or the run's ``metrics`` for run-level tables); ``bounds``:
    the quantity's range (intervals are clipped to it); ``score``: the per-example score whose mean this metric
    is (``accuracy`` is the mean of ``correct``): such metrics get a bootstrap interval over seeds x examples and
    a paired bootstrap test; the others a Student-t interval and a paired t-test over seeds (x folds).
    """

    key: str
    label: str
    higher_is_better: bool
    digits: int = 3
    bounds: tuple[float, float] = (-math.inf, math.inf)
    score: str | None = None


@dataclass(frozen=True)
class Table:
    """One table of ``results.md``: ``metrics`` of the evaluation set ``records`` (None: run-level metrics).

    With ``tests`` every metric of every variant is tested against the study's reference variant and the
    family of the table's tests is Holm-corrected.
    """

    title: str
    metrics: tuple[Metric, ...]
    records: str | None = "test"
    tests: bool = True
    note: str = ""


@dataclass(frozen=True)
class Claim:
    """A paper's claim about ``variant`` against the reference variant (softmax).

    ``direction``: ``"up"`` / ``"down"`` (tested; Holm-corrected with every other test of the verdict), or
    ``"at_most"``: every run of ``variant`` must have ``metric <= value`` (a guaranteed bound, checked, not
    tested). ``records``: the evaluation set (None: run-level metric).
    """

    variant: str
    what: str
    metric: str
    direction: str
    records: str | None = "test"
    value: float = 0.0
    digits: int = 3


@dataclass(frozen=True)
class Split:
    """Which split a run trains and tests on: the study's own fixed split (``fold`` None), or fold ``fold`` of
    ``folds`` (cross-validation: test on the fold, see :func:`fold_indices`), drawn with ``seed``, keeping the
    rows of one ``group_column`` value together."""

    fold: int | None = None
    folds: int | None = None
    seed: int = 0
    group_column: str | None = None


@dataclass(frozen=True)
class RunSpec:
    """One run: ``variant``, ``seed``, ``split``; ``workdir`` (a folder the run may create for checkpoints);
    ``threads`` (torch threads it was given); ``progress`` (show a progress bar)."""

    variant: str
    seed: int
    split: Split
    workdir: Path
    threads: int = 1
    progress: bool = False


@dataclass
class Report:
    """Everything a study's :meth:`Study.sections` / :meth:`Study.figures` may read."""

    header: dict[str, Any]
    variants: list[str]
    runs: list[dict[str, Any]]
    baselines: dict[str, dict[str, dict[str, Any]]]  # fold key -> baseline name -> record
    summary: dict[str, dict[str, dict[str, dict[str, float | None]]]]  # table -> variant -> metric -> cell
    tests: dict[str, list[dict[str, Any]]]
    verdict: dict[str, Any]
    extra: Any = None
    failed: list[dict[str, Any]] = field(default_factory=list)


class Study:
    """Base class of a study; override what is yours (see docs/design.md, "Study runner")."""

    name = "study"  # the command after ``probattn`` ("compare", "experiment nmt")
    title = "study"
    output = "probattn-study"  # default --output
    variants: ClassVar[dict[str, Any]] = {}
    default_variants: tuple[str, ...] = ()
    default_seeds: tuple[int, ...] = (0, 1, 2)
    reference = "softmax"  # the attention model every test and the verdict compare against
    primary: tuple[str, str] = ("test", "accuracy")  # (set, metric) of the baseline-first comparison
    tables: tuple[Table, ...] = ()
    claims: tuple[Claim, ...] = ()
    supports_folds = False  # whether --folds / --group-column / --split-seed apply
    parallel = True  # whether runs may go to separate worker processes

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The study's own flags (the runner adds --variants, --seeds, --output, --resume, --workers, --threads,
        --folds, --group-column, --split-seed, --no-progress)."""

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        """The JSON options that define the results (checked on --resume; passed to every method)."""
        return {}

    def prepare(self, options: dict[str, Any], *, output: Path, log: Callable[[str], None]) -> Any:
        """Load and cache the data once. Called in the main process, then once in each worker process: the
        second call must be cheap (read the cache). Returns what :meth:`run` and :meth:`baselines` need."""
        return None

    def labelled_size(self, prepared: Any) -> int | None:
        """Rows of the labelled set, for the --folds default (None: folds do not apply)."""
        return None

    def describe(self, prepared: Any, options: dict[str, Any]) -> str:
        """One Markdown paragraph: the data and model."""
        return ""

    def baselines(self, prepared: Any, options: dict[str, Any], split: Split, *,
                  log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
        """``{name: record}``: deterministic baselines on ``split``, records shaped like a run's (``sets``)."""
        return {}

    def run(self, prepared: Any, options: dict[str, Any], spec: RunSpec, *,
            log: Callable[[str], None]) -> dict[str, Any]:
        """Train and evaluate one (variant, seed[, fold]); returns the run record (module docstring)."""
        raise NotImplementedError

    def after_runs(self, prepared: Any, options: dict[str, Any], variants: list[str], *, output: Path,
                   log: Callable[[str], None]) -> Any:
        """Optional work after the grid (e.g. a timing pass); its JSON result is ``Report.extra``."""
        return None

    def sections(self, report: Report) -> list[str]:
        """Extra Markdown sections of ``results.md`` (after the tables)."""
        return []

    def figures(self, report: Report, output: Path) -> list[Path]:
        """Extra figures (written under ``output``); returns their paths."""
        return []

    def progress_line(self, record: dict[str, Any]) -> str:
        """What the progress log says when a run finishes."""
        test = record.get("sets", {}).get(self.primary[0], {}).get("metrics", {})
        value = test.get(self.primary[1])
        return f"{self.primary[1]} {value:.3f}" if isinstance(value, float) else "done"


# -- messages ----------------------------------------------------------------------------------------------------
class Messages:
    """Notices of a run, printed once each as ``<command>: <message>`` above the progress bars; kept in ``seen``."""

    def __init__(self, command: str = "probattn") -> None:
        self.prefix = command.split(" --")[0].split(" -")[0]
        self.seen: list[str] = []

    def __call__(self, message: str) -> None:
        if message in self.seen:
            return
        self.seen.append(message)
        from tqdm.auto import tqdm

        tqdm.write(f"{self.prefix}: {message}", file=sys.stderr)


# -- writing: every file through probattn.io (atomic, no links, recorded in the claimed folder's manifest) ---------
def _write_bytes(path: Path, data: bytes) -> None:
    from probattn.io import write_bytes

    write_bytes(path, data)


def _finite(value: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python, so the JSON is strict."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _write_json(path: Path, obj: Any) -> None:
    _write_bytes(path, json.dumps(_finite(obj), indent=1, allow_nan=False).encode())


def _claim_output(output: Path, study: Study, options: dict[str, Any], resume: bool, overwrite: bool = False,
                  command: str = "probattn") -> dict[str, Any]:
    """Claim ``output`` for this study (:func:`probattn.io.claim_output_dir`: a new or empty folder, or one holding
    only files probattn wrote; ``overwrite`` deletes those first), then check that a folder written before holds
    this study with the same options. Returns the study file's content (its ``invocations`` so far)."""
    from probattn.io import claim_output_dir

    claim_output_dir(output, command=command, overwrite=overwrite, resume=resume,
                     will_write=(STUDY_FILE, "results.md", "results.json", BASELINES_FILE))
    marker = output / STUDY_FILE
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("study") != study.name:
            raise ValueError(f"--output {output} holds a '{saved.get('study')}' study; choose another --output")
        if saved.get("options") != _finite(options):
            changed = sorted(k for k in {**saved.get("options", {}), **options}
                             if saved.get("options", {}).get(k) != _finite(options).get(k))
            raise ValueError(f"--output {output} was made with other options ({', '.join(changed)}); use the same "
                             "options, --overwrite, or another --output")
        runs = list((output / RUNS_DIR).glob("*.json")) if (output / RUNS_DIR).is_dir() else []
        if runs and not resume:
            raise ValueError(f"--output {output} already holds {len(runs)} finished run(s); pass --resume to skip "
                             "them and run the rest, --overwrite to start over, or choose another --output")
        return saved
    saved = {"study": study.name, "options": _finite(options), "invocations": []}
    _write_json(marker, saved)
    return saved


# -- splits -------------------------------------------------------------------------------------------------------
def fold_assignment(n: int, folds: int, seed: int, groups: Sequence[Any] | None = None) -> np.ndarray:
    """Fold id ``(n,)`` of each row: a seeded random partition into ``folds`` parts of near-equal size; with
    ``groups`` all rows of a group share a fold (groups are dealt to the currently smallest fold, largest first)."""
    if folds < 2 or folds > n:
        raise ValueError(f"--folds {folds}: need 2 <= folds <= {n} (the labelled rows)")
    rng = np.random.default_rng(seed)
    if groups is None:
        out = np.empty(n, dtype=np.int64)
        out[rng.permutation(n)] = np.arange(n) % folds
        return out
    keys = np.asarray([str(g) for g in groups])
    names, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if len(names) < folds:
        raise ValueError(f"--group-column: {len(names)} groups cannot fill {folds} folds; lower --folds")
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]
    sizes, fold_of = np.zeros(folds, dtype=np.int64), np.empty(len(names), dtype=np.int64)
    for g in order:
        f = int(np.argmin(sizes))
        fold_of[g], sizes[f] = f, sizes[f] + counts[g]
    return fold_of[inverse]


def fold_indices(assignment: np.ndarray, fold: int, *, seed: int, validation_fraction: float = 0.125,
                 groups: Sequence[Any] | None = None) -> tuple[list[int], list[int], list[int]]:
    """``(train, validation, test)`` row indices of ``fold``: test = the fold; validation = a seeded random
    ``validation_fraction`` of the other rows (whole groups with ``groups``); train = the rest."""
    test = np.flatnonzero(assignment == fold)
    rest = np.flatnonzero(assignment != fold)
    rng = np.random.default_rng([seed, fold])
    if groups is None:
        chosen = rng.permutation(rest)[:max(1, round(validation_fraction * len(rest)))]
    else:
        keys = np.asarray([str(g) for g in groups])[rest]
        names = rng.permutation(np.unique(keys))
        chosen_names, total = set(), 0
        for name in names:
            if total >= validation_fraction * len(rest):
                break
            chosen_names.add(name)
            total += int((keys == name).sum())
        chosen = rest[np.isin(keys, list(chosen_names))]
    validation = np.sort(chosen)
    train = np.setdiff1d(rest, validation)
    return train.tolist(), validation.tolist(), test.tolist()


# -- workers and threads ------------------------------------------------------------------------------------------
def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """``(busy, total)`` clock ticks of ``cpus`` since boot from ``/proc/stat``; None where it cannot be read."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [float(f) for f in fields[:8]]  # user nice system idle iowait irq softirq steal
            total += sum(ticks)
            busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total > 0 else None


def busy_elsewhere(cpus: set[int], interval: float = 0.5) -> float | None:
    """Cores of ``cpus`` that other processes keep busy now: the busy share of ``/proc/stat`` over ``interval``
    seconds times ``len(cpus)``, less this process's own CPU time meanwhile. None where ``/proc/stat`` is not
    readable. (The 1-minute load average is no measure of this: it lags a minute and counts this process's own
    earlier work, e.g. a frozen-model state pass just before the runs start.)"""
    first, own = _cpu_times(cpus), time.process_time()
    if first is None:
        return None
    time.sleep(interval)
    second, own = _cpu_times(cpus), time.process_time() - own
    if second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return max(0.0, share * len(cpus) - own / interval)


def free_cores() -> tuple[int, int, float]:
    """``(free cores, usable cores, busy)``: cores this process may use (``os.sched_getaffinity``) less the cores
    other processes keep busy now (:func:`busy_elsewhere`; the 1-minute load average where ``/proc/stat`` is not
    readable), at least 1."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = len(cpus)
    busy = busy_elsewhere(cpus)
    if busy is None:
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores, int(cores - busy + 0.5))), cores, busy


def plan_workers(workers: int | None, threads: int | None, jobs: int, *, parallel: bool = True,
                 log: Callable[[str], None] | None = None, gpus: int = 0) -> tuple[int, int]:
    """``(workers, threads per worker)``. Default: one worker per GPU where there are GPUs, else one per free
    core (at most ``jobs``), and ``threads = free cores // workers``, so the default never uses more threads than
    free cores. Explicit values are kept (a warning when they exceed the free cores)."""
    say = log or (lambda _: None)
    free, cores, load = free_cores()
    if workers is not None and workers < 1:
        raise ValueError(f"--workers {workers}: must be >= 1")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads {threads}: must be >= 1")
    if workers is None:
        workers = 1 if not parallel else max(1, min(gpus or free, jobs))
    if threads is None:
        threads = max(1, free // workers) if not gpus else max(1, cores // workers)
    elif workers * threads > free and not gpus:
        say(f"--workers {workers} x --threads {threads} = {workers * threads} threads on {free} free core(s) "
            f"({cores} cores, {load:.1f} busy with other processes): runs will contend; lower --threads")
    say(f"{workers} worker(s) x {threads} thread(s) ({cores} cores, {load:.1f} busy with other processes)")
    return workers, threads


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


_WORKER: dict[str, Any] = {}


def _gpu_ids(gpus: int) -> list[str]:
    """The ids to hand out, one per worker: ``CUDA_VISIBLE_DEVICES``'s entries when set, else 0..gpus-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    return ids[:gpus] if ids else [str(i) for i in range(gpus)]


def _worker_init(study: Study, options: dict[str, Any], output: str, threads: int, gpu_queue: Any = None) -> None:
    if gpu_queue is not None:  # one GPU per worker, chosen before CUDA starts in this process
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())
    _set_threads(threads)
    log = Messages(f"[worker {os.getpid()}]")  # each notice once per worker
    _WORKER.update(study=study, options=options, log=log, prepared=study.prepare(options, output=Path(output),
                                                                                  log=log))


def _worker_run(spec: RunSpec) -> dict[str, Any]:
    return _attempt(_WORKER["study"], _WORKER["prepared"], _WORKER["options"], spec, _WORKER["log"])


def _attempt(study: Study, prepared: Any, options: dict[str, Any], spec: RunSpec,
             log: Callable[[str], None]) -> dict[str, Any]:
    """Run one spec; never raises: ``{"record": ...}`` or ``{"error": "...", "traceback": "..."}``."""
    began, cpu_began = time.perf_counter(), time.process_time()
    try:
        record = study.run(prepared, options, spec, log=log)
        _check_record(record)
    except Exception as exc:  # the other runs are independent: report this one and go on
        return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    record = {**record, "variant": spec.variant, "seed": spec.seed, "fold": spec.split.fold,
              "seconds": time.perf_counter() - began, "cpu_seconds": time.process_time() - cpu_began,
              "threads": spec.threads}
    return {"record": _finite(record)}


def _check_record(record: Any) -> None:
    if not isinstance(record, dict) or not isinstance(record.get("metrics", {}), dict) \
            or not isinstance(record.get("sets", {}), dict):
        raise TypeError("Study.run must return {'metrics': {...}, 'sets': {name: {'metrics', 'scores'}}, ...}")
    for name, entry in record.get("sets", {}).items():
        for score, values in entry.get("scores", {}).items():
            array = np.asarray(values, dtype=float)
            if array.ndim != 1 or not np.isfinite(array).all():
                raise ValueError(f"set {name!r} score {score!r}: need one finite number per example")


# -- files of one output folder -----------------------------------------------------------------------------------
def run_file(output: Path, variant: str, seed: int, fold: int | None) -> Path:
    """``output/runs/<variant>-seed<seed>[-fold<fold>].json``."""
    return Path(output) / RUNS_DIR / (f"{variant}-seed{seed}" + (f"-fold{fold}" if fold is not None else "") + ".json")


def load_runs(output: Path) -> list[dict[str, Any]]:
    """Every saved run, sorted by (variant, seed, fold)."""
    folder = Path(output) / RUNS_DIR
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return sorted(runs, key=lambda r: (r["variant"], r["seed"], -1 if r.get("fold") is None else r["fold"]))


def _fold_key(fold: int | None) -> str:
    return "all" if fold is None else str(fold)


# -- statistics ---------------------------------------------------------------------------------------------------
def _value(record: dict[str, Any], records: str | None, key: str) -> float:
    holder = record.get("metrics", {}) if records is None else record.get("sets", {}).get(records, {}).get("metrics", {})
    value = holder.get(key)
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.nan


def _scores(record: dict[str, Any], records: str | None, score: str) -> list[float] | None:
    if records is None:
        return None
    return record.get("sets", {}).get(records, {}).get("scores", {}).get(score)


def _units(runs: Sequence[dict[str, Any]], variant: str) -> dict[tuple[int, int | None], dict[str, Any]]:
    return {(r["seed"], r.get("fold")): r for r in runs if r["variant"] == variant}


def _matrix(units: dict[tuple[Any, Any], dict[str, Any]], records: str | None, score: str,
            keys: Sequence[tuple[Any, Any]] | None = None) -> tuple[np.ndarray | None, list[tuple[Any, Any]]]:
    """Per-example ``score`` as ``(seeds, examples)``: each seed's folds concatenated in fold order. Uses the
    folds every seed has; returns (None, []) when some run lacks the score or lengths disagree."""
    keys = sorted(keys if keys is not None else units, key=lambda u: (u[0] is None, u[0] or 0, u[1] or 0))
    seeds = sorted({u[0] for u in keys}, key=lambda s: (s is None, s or 0))
    folds = [f for f in sorted({u[1] for u in keys}, key=lambda f: -1 if f is None else f)
             if all((s, f) in set(keys) for s in seeds)]
    rows = []
    for s in seeds:
        parts = [_scores(units[(s, f)], records, score) for f in folds]
        if not folds or any(p is None for p in parts):
            return None, []
        rows.append([x for p in parts for x in p])
    if len({len(r) for r in rows}) != 1:
        return None, []
    return np.asarray(rows, dtype=float), [(s, f) for s in seeds for f in folds]


def _cell(units: dict[tuple[Any, Any], dict[str, Any]], metric: Metric, records: str | None,
          intervals: bool = True) -> dict[str, Any]:
    """mean, low, high, n (replicates), method of one variant and metric (``intervals=False``: the mean only)."""
    from probattn.metrics import bootstrap_interval, mean_interval

    lo, hi = metric.bounds
    if metric.score is not None:
        matrix, used = _matrix(units, records, metric.score)
        if matrix is not None:
            if len(used) >= MIN_REPLICATES and intervals:
                mean, low, high = bootstrap_interval(matrix, bounds=metric.bounds)
            else:
                mean, low, high = float(matrix.mean()), math.nan, math.nan
            return {"mean": mean, "low": low, "high": high, "n": len(used), "method": "bootstrap"}
    values = [v for v in (_value(r, records, metric.key) for r in units.values()) if math.isfinite(v)]
    if not values:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0, "method": None}
    mean, low, high = mean_interval(values)
    if len(values) < MIN_REPLICATES or not intervals:
        low = high = math.nan
    else:
        low, high = min(max(low, lo), hi), min(max(high, lo), hi)
    return {"mean": mean, "low": low, "high": high, "n": len(values), "method": "t"}


def _baseline_units(baselines: dict[str, dict[str, Any]], name: str) -> dict[tuple[Any, Any], dict[str, Any]]:
    return {(None, None if fold == "all" else int(fold)): records[name]
            for fold, records in baselines.items() if name in records}


_MEMO: dict[tuple[Any, ...], dict[str, Any] | None] = {}  # tests of one build_report (tables and verdict share)


def _compare(a_units: dict, b_units: dict, records: str | None, metric_key: str, score: str | None,
             higher_is_better: bool, memo: tuple[Any, ...] | None = None) -> dict[str, Any] | None:
    """Paired test ``b - a`` (a: reference, b: the other). Baseline units (seed None) pair with every seed.
    ``memo``: a key under which the result is reused within one report (the same test in a table and a claim)."""
    if memo is not None:
        key = (*memo, records, metric_key, score)
        if key not in _MEMO:
            _MEMO[key] = _compare(a_units, b_units, records, metric_key, score, higher_is_better)
        return dict(_MEMO[key]) if _MEMO[key] is not None else None
    from probattn.metrics import paired_bootstrap, paired_t_test

    a_is_baseline = all(s is None for s, _ in a_units)
    if a_is_baseline:
        a_units = {(s, f): a_units[(None, f)] for s, f in b_units if (None, f) in a_units}
    common = sorted(set(a_units) & set(b_units), key=lambda u: (u[0] or 0, u[1] or 0))
    if not common:
        return None
    if score is not None:
        a, used = _matrix(a_units, records, score, common)
        b, _ = _matrix(b_units, records, score, common)
        if a is not None and b is not None and a.shape == b.shape:
            result = paired_bootstrap(a, b, higher_is_better=higher_is_better)
            return {"difference": result.difference, "low": result.low, "high": result.high,
                    "p": result.p_value, "units": len(used), "method": "paired bootstrap"}
    diffs = [_value(b_units[u], records, metric_key) - _value(a_units[u], records, metric_key) for u in common]
    diffs = [d for d in diffs if math.isfinite(d)]
    if len(diffs) < MIN_REPLICATES:
        return {"difference": float(np.mean(diffs)) if diffs else math.nan, "low": math.nan, "high": math.nan,
                "p": math.nan, "units": len(diffs), "method": "paired t-test"} if diffs else None
    mean, low, high, p = paired_t_test(diffs)
    return {"difference": mean, "low": low, "high": high, "p": p, "units": len(diffs), "method": "paired t-test"}


def _call(test: dict[str, Any], higher_is_better: bool) -> str:
    adjusted = test.get("p_holm", math.nan)
    if not math.isfinite(adjusted) or adjusted >= ALPHA or test["difference"] == 0:
        return "no difference"
    return "better" if (test["difference"] > 0) == higher_is_better else "worse"


def _holm(tests: list[dict[str, Any]]) -> None:
    from probattn.metrics import holm

    for test, adjusted in zip(tests, holm([t["p"] for t in tests])):
        test["p_holm"] = adjusted


def table_tests(study: Study, table: Table, runs: Sequence[dict[str, Any]], variants: Sequence[str]) -> list[dict]:
    """Every metric of every variant against the reference, Holm-corrected over the table."""
    reference = _units(runs, study.reference)
    tests = []
    for variant in variants:
        if variant == study.reference or not reference:
            continue
        other = _units(runs, variant)
        for metric in table.metrics:
            test = _compare(reference, other, table.records, metric.key, metric.score, metric.higher_is_better,
                            memo=(study.reference, variant))
            if test is not None:
                tests.append({"variant": variant, "metric": metric.key, "label": metric.label,
                              "higher_is_better": metric.higher_is_better, "digits": metric.digits, **test})
    _holm(tests)
    for test in tests:
        test["verdict"] = _call(test, test["higher_is_better"])
    return tests


def _metric_of(study: Study, records: str | None, key: str) -> Metric:
    for table in study.tables:
        if table.records == records:
            for metric in table.metrics:
                if metric.key == key:
                    return metric
    return Metric(key, key, True)


def verdict(study: Study, runs: Sequence[dict[str, Any]], baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The reference against the strongest baseline on the primary metric, then every claim; one Holm family."""
    records, key = study.primary
    metric = _metric_of(study, records, key)
    reference = _units(runs, study.reference)
    names = sorted({name for fold in baselines.values() for name in fold})
    opening = None
    if reference and names:
        means = {n: _cell(_baseline_units(baselines, n), metric, records, False)["mean"] for n in names}
        means = {n: m for n, m in means.items() if math.isfinite(m)}
        if means:
            strongest = (max if metric.higher_is_better else min)(means, key=means.get)
            test = _compare(_baseline_units(baselines, strongest), reference, records, key, metric.score,
                            metric.higher_is_better)
            if test is not None:
                opening = {"baseline": strongest, "baseline_mean": means[strongest], "metric": key,
                           "label": metric.label, "reference_mean": _cell(reference, metric, records, False)["mean"],
                           "higher_is_better": metric.higher_is_better, **test}
    claims = []
    ran = {r["variant"] for r in runs}
    for claim in study.claims:
        entry = {"variant": claim.variant, "claim": claim.what, "metric": claim.metric, "records": claim.records,
                 "direction": claim.direction, "digits": claim.digits}
        if claim.variant not in ran or (claim.direction != "at_most" and study.reference not in ran):
            continue
        units = _units(runs, claim.variant)
        if claim.direction == "at_most":
            values = [_value(r, claim.records, claim.metric) for r in units.values()]
            values = [v for v in values if math.isfinite(v)]
            entry.update(worst=max(values) if values else math.nan, value=claim.value, units=len(values),
                         verdict=("not measured" if not values else
                                  "reproduced" if max(values) <= claim.value else "not reproduced"))
        else:
            metric_c = _metric_of(study, claim.records, claim.metric)
            test = _compare(reference, units, claim.records, claim.metric, metric_c.score, claim.direction == "up",
                            memo=(study.reference, claim.variant))
            entry.update(test or {"p": math.nan})
            entry["tested"] = test is not None
        claims.append(entry)
    family = ([opening] if opening else []) + [c for c in claims if c.get("tested")]
    _holm(family)
    if opening:
        opening["verdict"] = _call(opening, metric.higher_is_better)
    for c in claims:
        if c.get("tested"):
            call = _call(c, c["direction"] == "up")  # "better" = the claimed way
            c["verdict"] = ("inconclusive at this scale" if call == "no difference" else
                            "reproduced" if call == "better" else "not reproduced")
        elif "verdict" not in c:
            c["verdict"] = "not measured"
    return {"opening": opening, "claims": claims}


def _fmt(x: float, digits: int, sign: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _pe(p: float) -> str:
    """``= 0.034`` or ``< 0.001`` (for sentences)."""
    return "n/a" if p is None or not math.isfinite(p) else ("< 0.001" if p < 0.001 else f"= {p:.3f}")


def _p(p: float) -> str:
    return "n/a" if p is None or not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def format_verdict(study: Study, result: dict[str, Any]) -> list[str]:
    """Markdown lines: the reference against the strongest baseline first, then each claim."""
    lines, qualifier = [], ""
    o = result["opening"]
    if o is not None:
        d = 4 if abs(o["difference"]) < 0.01 else 3
        evidence = (f"{o['label']} {_fmt(o['reference_mean'], 3)} vs {_fmt(o['baseline_mean'], 3)}: Δ = "
                    f"{_fmt(o['difference'], d, True)} [{_fmt(o['low'], d, True)}, {_fmt(o['high'], d, True)}] "
                    f"({o['method']}, p {_pe(o['p'])}, Holm p {_pe(o.get('p_holm'))})")
        ref, base = study.reference, o["baseline"]
        if o["verdict"] == "better":
            lines.append(f"- **{ref} beats the strongest baseline, {base}**: {evidence}.")
        elif o["verdict"] == "worse":
            qualifier = f" (about a model weaker than {base})"
            lines.append(f"- **{ref} is weaker than the strongest baseline, {base}**: {evidence}. Every claim "
                         f"below is about a model weaker than {base}.")
        else:
            qualifier = f" (about a model no better than {base})"
            lines.append(f"- **{ref} does not beat the strongest baseline, {base}** (no difference at this "
                         f"scale): {evidence}. Every claim below is about a model no better than {base}.")
    for c in result["claims"]:
        d = c["digits"]
        if c["direction"] == "at_most":
            lines.append(f"- **{c['variant']}**: {c['claim']}: worst run {_fmt(c.get('worst'), d)} (bound "
                         f"{_fmt(c['value'], d)}, {c.get('units', 0)} runs) → **{c['verdict']}**{qualifier}")
        elif c.get("tested"):
            lines.append(f"- **{c['variant']}**: {c['claim']}: Δ vs {study.reference} = {_fmt(c['difference'], d, True)}"
                         f" [{_fmt(c['low'], d, True)}, {_fmt(c['high'], d, True)}] ({c['method']} over "
                         f"{c['units']} runs, p {_pe(c['p'])}, Holm p {_pe(c.get('p_holm'))}) → "
                         f"**{c['verdict']}**{qualifier}")
        else:
            lines.append(f"- **{c['variant']}**: {c['claim']}: not measured in this run")
    return lines or [f"- No claim applies: run {study.reference} and the variants the claims name."]


def _table_markdown(study: Study, table: Table, variants: Sequence[str], cells: dict[str, dict[str, Any]],
                    baseline_cells: dict[str, dict[str, Any]], tests: list[dict[str, Any]]) -> str:
    header = ["variant", "runs", *[f"{m.label} {'↑' if m.higher_is_better else '↓'}" for m in table.metrics]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row, kind in [*((v, cells[v], "") for v in variants if v in cells),
                            *((b, baseline_cells[b], " (baseline)") for b in baseline_cells)]:
        n = max((c["n"] for c in row.values()), default=0)
        values = []
        for m in table.metrics:
            c = row[m.key]
            text = _fmt(c["mean"], m.digits)
            if math.isfinite(c["low"]) and math.isfinite(c["high"]):
                text += f" [{_fmt(c['low'], m.digits)}, {_fmt(c['high'], m.digits)}]"
            values.append(text)
        lines.append("| " + " | ".join([f"{name}{kind}", str(n) if not kind else "1 fit", *values]) + " |")
    text = "\n".join(lines)
    if tests:
        rows = ["| variant | metric | Δ vs " + study.reference + " [95%] | test | p | Holm p | verdict |",
                "|---|---|---|---|---|---|---|"]
        for t in tests:
            d = t["digits"]
            interval = (f" [{_fmt(t['low'], d, True)}, {_fmt(t['high'], d, True)}]"
                        if math.isfinite(t["low"]) else " [no interval]")
            rows.append(f"| {t['variant']} | {t['label']} | {_fmt(t['difference'], d, True)}{interval} | "
                        f"{t['method']} ({t['units']} runs) | {_p(t['p'])} | {_p(t.get('p_holm'))} | {t['verdict']} |")
        text += ("\n\nPaired tests against " + study.reference + f" ({len(tests)} tests, Holm-corrected together):"
                 "\n\n" + "\n".join(rows))
    return text


def build_report(study: Study, output: Path, *, variants: Sequence[str], header: dict[str, Any],
                 failed: Sequence[dict[str, Any]] = (), extra: Any = None, figures: bool = True,
                 baselines: dict[str, dict[str, Any]] | None = None, interim: str | None = None) -> Report | None:
    """Rebuild ``results.md`` and ``results.json`` (and with ``figures`` the figures) from the saved runs.

    ``baselines``: ``{fold key: {name: record}}`` (default: ``baselines.json`` of ``output``). ``interim``: a
    progress note (e.g. "4 of 15 runs finished"): the tables get means only, without the intervals, tests and
    verdict that the final report computes (they cost up to a minute of CPU on the default study)."""
    runs = [r for r in load_runs(output) if r["variant"] in variants]
    if not runs:
        return None
    _MEMO.clear()
    path = output / BASELINES_FILE
    if baselines is None:
        baselines = json.loads(path.read_text())["data"] if path.is_file() else {}
    present = [v for v in variants if any(r["variant"] == v for r in runs)]
    names = sorted({n for fold in baselines.values() for n in fold})
    summary, tests, sections = {}, {}, []
    for table in study.tables:
        cells = {v: {m.key: _cell(_units(runs, v), m, table.records, not interim) for m in table.metrics}
                 for v in present}
        if not any(math.isfinite(c["mean"]) for row in cells.values() for c in row.values()):
            continue  # e.g. no OOD set: no table, no "(OOD nan)"
        baseline_cells = {}
        if table.records is not None:
            for n in names:
                row = {m.key: _cell(_baseline_units(baselines, n), m, table.records, False) for m in table.metrics}
                if any(math.isfinite(c["mean"]) for c in row.values()):
                    baseline_cells[n] = {k: {**c, "low": math.nan, "high": math.nan} for k, c in row.items()}
        table_test = table_tests(study, table, runs, present) if table.tests and not interim else []
        summary[table.title] = {**cells, **{f"{b} (baseline)": c for b, c in baseline_cells.items()}}
        tests[table.title] = table_test
        sections.append(f"## {table.title}\n\n" + (f"{table.note}\n\n" if table.note else "")
                        + _table_markdown(study, table, present, cells, baseline_cells, table_test) + "\n")
    result = verdict(study, runs, baselines) if not interim else {"opening": None, "claims": []}
    report = Report(header=header, variants=present, runs=runs, baselines=baselines, summary=summary, tests=tests,
                    verdict=result, extra=extra, failed=list(failed))
    epochs = {v: [r["epochs"] for r in runs if r["variant"] == v and isinstance(r.get("epochs"), int | float)]
              for v in present}
    training = [f"{v} {np.mean(e):.1f} (range {min(e):.1f}–{max(e):.1f})" for v, e in epochs.items() if e]
    replicates = max((len(_units(runs, v)) for v in present), default=0)
    text = [f"# {header['title']}\n", "Invocations (every command that wrote into this folder):\n",
            *[f"- `{i['command']}`: started {i['started']}, {i['wall_seconds']:.0f} s wall, {i['cpu_seconds']:.0f} s "
              f"CPU ({i['workers']} worker(s) x {i['threads']} thread(s))" if i.get("wall_seconds") is not None else
              f"- `{i['command']}`: started {i['started']} (running or interrupted)" for i in header["invocations"]],
            "", header.get("describe", ""), "",
            f"Variants {', '.join(present)}; seeds {' '.join(map(str, header['seeds']))}; "
            + (f"{header['folds']}-fold cross-validation (split seed {header['split_seed']}"
               + (f", grouped by {header['group_column']}" if header.get("group_column") else "") + "); "
               if header.get("folds") else "the study's fixed split; ")
            + "Cells: mean [95% interval]: for per-example quantities (accuracy, NLL, ...) a percentile bootstrap "
              "over seeds × examples, otherwise a Student-t interval over runs clipped to the quantity's range; "
              f"no interval below {MIN_REPLICATES} runs. Baselines are deterministic fits (one per fold). Tests: "
              "paired bootstrap (seeds × examples) or paired t-test over runs against "
              f"{study.reference}; p-values Holm-corrected within each table and within the verdict; a difference "
              "is called only when the corrected p < 0.05. ↑ higher is better, ↓ lower is better.\n"]
    notes = list(header.get("messages", []))
    if replicates < MIN_REPLICATES:
        notes.append(f"only {replicates} run(s) per variant: no intervals; use at least {MIN_REPLICATES} seeds "
                     "(or folds) for intervals and seed-level tests")
    if notes:
        text.append("Notes:\n\n" + "\n".join(f"- {m}" for m in notes) + "\n")
    if interim:
        text.append(f"## Interim ({interim})\n\nMeans only: the intervals, paired tests and the verdict are "
                    "computed when the grid ends (or with --resume once every run is saved).\n")
    else:
        text.append(f"## Verdict (each claim against {study.reference}, at this scale)\n\n"
                    + "\n".join(format_verdict(study, result)) + "\n")
    text += sections
    if training:
        text.append("## Training\n\nEpochs actually trained (model selection on the validation split: the best "
                    "checkpoint is kept, early stopping with patience), mean (range) over runs: "
                    + "; ".join(training) + ".\n")
    text += study.sections(report)
    if failed:
        text.append("## Failed runs\n\n" + "\n".join(
            f"- {f['variant']} seed {f['seed']}" + (f" fold {f['fold']}" if f.get("fold") is not None else "")
            + f": {f['error']}" for f in failed) + "\n")
    shown: list[Path] = []
    if figures:
        from probattn.experiments import plots

        primary = next((t for t in study.tables if t.title in summary and t.records is not None), None)
        if primary is not None:
            shown.append(plots.summary_figure(summary[primary.title], present, [f"{b} (baseline)" for b in names],
                                              primary.metrics, output / "summary.png", title=primary.title))
        shown += study.figures(report, output)
    else:
        shown = sorted(output.glob("*.png"))
    text.append("\n".join(f"![{p.stem}]({p.name})" for p in shown) + "\n")
    _write_bytes(output / "results.md", "\n".join(text).encode())
    _write_json(output / "results.json", {**header, "variants": present, "summary": summary, "tests": tests,
                                          "verdict": result, "extra": extra, "failed": list(failed), "runs": runs,
                                          "baselines": baselines})
    return report


# -- the run ------------------------------------------------------------------------------------------------------
def run_study(study: Study, args: argparse.Namespace, *, command: str | None = None,
              gpus: int | None = None) -> dict[str, Any]:
    """Run the study as ``args`` (:func:`add_arguments`) say; returns the content of ``results.json``.

    Raises ``ValueError`` naming the flag for bad options, a foreign ``--output``, or changed options on
    ``--resume``; ``RuntimeError`` when no run finished. A failed run is named and the others go on.
    """
    from tqdm.auto import tqdm

    command = command or _command_line(study.name)
    log = Messages(command)
    variants, seeds = list(args.variants), list(args.seeds)
    unknown = [v for v in variants if v not in study.variants]
    if unknown or not variants:
        raise ValueError(f"--variants {' '.join(unknown) or '(none)'}: choose from {', '.join(study.variants)}")
    if len(set(variants)) != len(variants) or len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError("--variants and --seeds must be non-empty and list each value once")
    if not study.supports_folds and (args.folds not in (None, 1) or args.group_column):
        raise ValueError(f"--folds / --group-column: {study.name} has a fixed split (no cross-validation)")
    began, cpu_began = time.perf_counter(), time.process_time()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    options = {**study.options(args), "split_seed": args.split_seed, "group_column": args.group_column}
    output = Path(args.output)
    saved = _claim_output(output, study, {**options, "folds_flag": args.folds}, args.resume,
                          getattr(args, "overwrite", False), command.split(" --")[0])
    if gpus is None:
        gpus = _gpu_count()
    free, _, _ = free_cores()
    _set_threads(args.threads or free)  # the data pass (e.g. frozen-model states) gets the free cores too
    prepared = study.prepare(options, output=output, log=log)
    folds = args.folds
    size = study.labelled_size(prepared) if study.supports_folds else None
    if folds is None and size is not None and size < FOLDS_BELOW:
        folds = DEFAULT_FOLDS
        log(f"the labelled set has {size} rows (< {FOLDS_BELOW}): {folds}-fold cross-validation (--folds {folds}); "
            "--folds 1 keeps one fixed split")
    folds = None if folds in (None, 1) else folds
    splits = ([Split(fold=f, folds=folds, seed=args.split_seed, group_column=args.group_column)
               for f in range(folds)] if folds else [Split(seed=args.split_seed, group_column=args.group_column)])
    fingerprint = {**options, "folds": folds}
    _baselines(study, prepared, options, splits, output, fingerprint, log)
    jobs = [RunSpec(v, s, sp, output / "work" / run_file(output, v, s, sp.fold).stem)
            for v in variants for s in seeds for sp in splits]
    todo = [j for j in jobs if not run_file(output, j.variant, j.seed, j.split.fold).is_file()]
    if len(todo) < len(jobs):
        log(f"--resume: {len(jobs) - len(todo)} of {len(jobs)} runs finished before, skipped")
    workers, threads = plan_workers(args.workers, args.threads, max(1, len(todo)), parallel=study.parallel,
                                    log=log, gpus=gpus)
    invocation = {"command": command, "started": started, "wall_seconds": None, "cpu_seconds": None,
                  "workers": workers, "threads": threads}
    invocations = [*saved.get("invocations", []), invocation]
    _write_json(output / STUDY_FILE, {**saved, "invocations": invocations})
    header = {"title": study.title, "command": command, "invocations": invocations, "seeds": seeds,
              "folds": folds, "split_seed": args.split_seed, "group_column": args.group_column, "options": options,
              "describe": study.describe(prepared, options), "messages": log.seen}
    failed: list[dict[str, Any]] = []
    rebuilt, done = [time.perf_counter()], [0]
    bar = tqdm(total=len(todo), desc="runs", unit="run", disable=args.no_progress, dynamic_ncols=True)

    def finish(spec: RunSpec, outcome: dict[str, Any]) -> None:
        name = f"{spec.variant} seed {spec.seed}" + (f" fold {spec.split.fold}" if spec.split.fold is not None else "")
        if "error" in outcome:
            failed.append({"variant": spec.variant, "seed": spec.seed, "fold": spec.split.fold,
                           "error": outcome["error"]})
            tqdm.write(f"{name}: FAILED: {outcome['error']}", file=sys.stderr)
        else:
            record = outcome["record"]
            _write_json(run_file(output, spec.variant, spec.seed, spec.split.fold), record)
            tqdm.write(f"{name}: {study.progress_line(record)}, {record['seconds']:.1f} s "
                       f"({record['cpu_seconds']:.1f} s CPU)", file=sys.stderr)
            done[0] += 1
            if time.perf_counter() - rebuilt[0] > REBUILD_SECONDS:  # the means so far, for a look mid-run
                build_report(study, output, variants=variants, header=header, failed=failed, figures=False,
                             interim=f"{done[0]} of {len(todo)} runs of this invocation finished")
                rebuilt[0] = time.perf_counter()
        bar.update(1)

    todo = [RunSpec(j.variant, j.seed, j.split, j.workdir, threads, progress=not args.no_progress and workers == 1)
            for j in todo]
    if workers == 1 or len(todo) <= 1:
        _set_threads(threads)
        for spec in todo:
            bar.set_postfix_str(f"{spec.variant} seed {spec.seed}")
            finish(spec, _attempt(study, prepared, options, spec, log))
    else:
        context = multiprocessing.get_context("spawn")
        gpu_queue = None
        if gpus:
            gpu_queue = context.Queue()
            ids = _gpu_ids(gpus)
            for i in range(workers):
                gpu_queue.put(ids[i % len(ids)])
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                                    initializer=_worker_init,
                                                    initargs=(study, options, str(output), threads, gpu_queue)) as pool:
            futures = {pool.submit(_worker_run, spec): spec for spec in todo}
            for future in concurrent.futures.as_completed(futures):
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker process died (killed, out of memory)
                    outcome = {"error": f"worker process failed: {type(exc).__name__}: {exc}"}
                finish(futures[future], outcome)
    bar.close()
    _set_threads(threads)
    finished = sorted({r["variant"] for r in load_runs(output) if r["variant"] in variants},
                      key=variants.index)
    extra = study.after_runs(prepared, options, finished, output=output, log=log) if finished else None
    invocation.update(wall_seconds=time.perf_counter() - began, cpu_seconds=_cpu_seconds(cpu_began))
    _write_json(output / STUDY_FILE, {**saved, "invocations": invocations})
    report = build_report(study, output, variants=variants, header=header, failed=failed, extra=extra)
    if report is None:
        raise RuntimeError(f"no run finished; see the errors above ({len(failed)} failed)")
    markdown = (output / "results.md").read_text()
    print(markdown)
    print("## Verdict" + markdown.split("## Verdict", 1)[1].split("\n## ", 1)[0].rstrip() + "\n", flush=True)
    return json.loads((output / "results.json").read_text())


def _cpu_seconds(began: float) -> float:
    """This process's CPU time since ``began`` plus that of its finished worker processes."""
    children = os.times()
    return time.process_time() - began + children.children_user + children.children_system


def _gpu_count() -> int:
    with contextlib.suppress(Exception):
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    return 0


def _baselines(study: Study, prepared: Any, options: dict[str, Any], splits: list[Split], output: Path,
               fingerprint: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    path = output / BASELINES_FILE
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("fingerprint") == _finite(fingerprint):
            return saved["data"]
    data = {_fold_key(sp.fold): study.baselines(prepared, options, sp, log=log) for sp in splits}
    data = _finite(data)
    if any(data.values()):
        _write_json(path, {"fingerprint": fingerprint, "data": data})
    return data


def _command_line(name: str) -> str:
    words = name.split()
    typed = sys.argv[1:1 + len(words)] == words
    return shlex.join(["probattn", *(sys.argv[1:] if typed else words)])


def add_arguments(parser: argparse.ArgumentParser, study: Study) -> None:
    """The runner's flags, then the study's own (:meth:`Study.add_arguments`)."""
    parser.add_argument("--variants", nargs="+", default=list(study.default_variants), metavar="NAME",
                        help=f"variants (default {' '.join(study.default_variants)}; available: "
                             f"{', '.join(study.variants)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(study.default_seeds),
                        help=f"seeds (default {' '.join(map(str, study.default_seeds))}; at least "
                             f"{MIN_REPLICATES} runs per variant for intervals)")
    parser.add_argument("--output", default=study.output, help=f"output folder (default {study.output}): new, "
                                                              "empty, or written by this study before")
    parser.add_argument("--resume", action="store_true", help="skip the runs already finished in --output")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in --output: delete the files probattn wrote there (never other files)")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs in parallel, each in its own process (default: one per GPU, else one per free "
                             "core: cores minus what other processes keep busy, measured from /proc/stat over 0.5 s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per worker (default: free cores // workers)")
    if study.supports_folds:
        parser.add_argument("--folds", type=int, default=None,
                            help=f"K-fold cross-validation, paired tests over folds × seeds (default: "
                                 f"{DEFAULT_FOLDS} when the labelled set has fewer than {FOLDS_BELOW} rows, else "
                                 "the fixed split; 1 = the fixed split)")
        parser.add_argument("--group-column", default=None,
                            help="keep the rows of one value of this column in one fold (grouped splits)")
        parser.add_argument("--split-seed", type=int, default=0, help="seed of the folds (default 0)")
    else:
        parser.set_defaults(folds=None, group_column=None, split_seed=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    study.add_arguments(parser)


def main(study: Study, args: argparse.Namespace) -> int:
    """``run_study`` for a command: exit code 1 when a run failed."""
    result = run_study(study, args)
    print(f"wrote {Path(args.output) / 'results.md'} and results.json")
    return 1 if result["failed"] else 0
