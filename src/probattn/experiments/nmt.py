"""``probattn experiment nmt``: the repulsive paper's Transformer NMT experiment on the verse-aligned Bible.

The paper (research notes repulsive.md §3.3, §5.2) trains fairseq's Transformer on IWSLT14 De→En with SVGD
applied once per update to Q, K and V of every encoder self-, decoder self- and cross-attention (6+6 layers:
54 particle sets; α = 0.01, stepsize 0.01, lower median, Adam (0.9, 0.98), weight decay 1e-4, label smoothing
0.1, no clipping, beam 5, length penalty 1). Here: Spanish RV1909 → English WEB verse pairs split **by book**
(:mod:`probattn.data.bible`), a joint BPE vocabulary learned from the training books, and a smaller model so a
run fits a CPU budget (``--size``; the 6+6 IWSLT model is ``--size iwslt``). Variants:

* ``softmax``: the baseline;
* ``svgd`` / ``spos``: :class:`~probattn.repulsive.RepulsiveHeads` with the ``fairseq_iwslt`` preset on all
  ``3 × (encoder layers + 2 × decoder layers)`` Q/K/V sets (SPOS: β = 1);
* ``doubly-encoder``: doubly-normalized encoder self-attention (the decoder stays softmax: column
  normalization over decoder queries would leak the future);
* ``alignment``: CT key/query alignment (λ = 0.01) on the encoder self-attention.

Per (variant, seed): validation BLEU/chrF (greedy) every ``--eval-every`` steps, then on the held-out test books
beam-search BLEU and chrF (sacreBLEU), per-sentence chrF, head diversity per attention type and time per
step. ``results.md`` carries two baselines computed in the same run (copy the source; a translation memory
that returns the target of the most similar training source), mean and 95% interval over seeds, and the
paired bootstrap over seeds × test sentences of per-sentence chrF against softmax; ``val_bleu.png`` plots
validation BLEU over steps. Runs are saved as they finish (``runs/<variant>-seed<k>.json``); ``--resume``
skips finished runs and continues unfinished ones from their checkpoints.

Budget (docs/experiments.md, "Translation"): the default size ``small`` took 1.29 s of CPU per training step
with one thread, so the default run of one variant (500 steps, validation every 100, beam 5 on the 425 test
pairs) needs at most about 13.5 minutes of one idle core (14.5 for the slowest variant, alignment).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from probattn.experiments.runner import Claim, Metric, Report, Study, Table, _finite, build_report
from probattn.io import claim_output_dir, write_json

__all__ = ["SCHEDULES", "SIZES", "STUDY", "VARIANTS", "NmtStudy", "add_arguments", "baselines", "head_diversity", "run",
           "run_experiment", "write_summary"]

VARIANTS: dict[str, dict[str, Any]] = {
    "softmax": {},
    "svgd": {"repulsive": "svgd"},
    "spos": {"repulsive": "spos"},
    "doubly-encoder": {"normalization": "doubly"},
    "alignment": {"alignment": "ct"},
}
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"embed_dim": 64, "num_heads": 4, "ffn_dim": 128, "encoder_layers": 1, "decoder_layers": 1},
    "small": {"embed_dim": 256, "num_heads": 4, "ffn_dim": 512, "encoder_layers": 3, "decoder_layers": 3},
    "medium": {"embed_dim": 256, "num_heads": 4, "ffn_dim": 1024, "encoder_layers": 6, "decoder_layers": 6},
    "iwslt": {"embed_dim": 512, "num_heads": 4, "ffn_dim": 1024, "encoder_layers": 6, "decoder_layers": 6},
}
# --schedule: the step budget and evaluation costs (flags given explicitly win). ``cpu`` (the default) is sized for
# a 2-core machine (about one epoch); ``gpu`` for one GPU (docs/experiments.md, "Translation"): 8x larger batches
# (16,384 padded tokens: on an H200 a small-model step of 8k, 16k and 32k tokens took 27, 30 and 51 ms, so small
# batches waste the GPU), 500 steps (~6 epochs of the 31,002 training pairs; benchmarks/nmt_gpu.sh picks the step
# count that fits its budget), a cheap validation curve (256 pairs).
SCHEDULES: dict[str, dict[str, int | None]] = {
    "cpu": {"max_steps": 500, "max_tokens": 2048, "warmup_steps": 150, "eval_every": 100, "checkpoint_every": 100,
            "validation_examples": None},
    "gpu": {"max_steps": 500, "max_tokens": 16384, "warmup_steps": 100, "eval_every": 125, "checkpoint_every": 0,
            "validation_examples": 256},
}
DEFAULT_SIZE, DEFAULT_SCHEDULE, DEFAULT_SEEDS = "small", "cpu", (0, 1)
DEFAULT_STEPS = SCHEDULES[DEFAULT_SCHEDULE]["max_steps"]
DIVERSITY_EXAMPLES, EXAMPLES_SHOWN = 64, 4
RUNS_DIR, TOKENIZER, PREPARED = "runs", "tokenizer.json", "prepared.json"


def _is_main() -> bool:
    """Rank 0 under torchrun (or no torchrun): the process that writes files."""
    return int(os.environ.get("RANK", "0")) == 0


# -- data -------------------------------------------------------------------------------------------------------
def load_splits(name: str):
    from probattn.data.bible import bible_splits, load_bible_sample, split_by_book

    if name == "bible":
        return bible_splits()
    if name == "sample":
        return split_by_book(load_bible_sample())
    raise ValueError(f"--data {name!r}: choose 'bible' (the SWORD export) or 'sample' (the 200 shipped pairs)")


def prepare(splits, output: Path, *, vocab_size: int, max_length: int, resume: bool):
    """Tokenizer (trained on the training books, or reloaded on resume) and the tokenized data."""
    from probattn.data.subword import BOS, EOS, PAD, SubwordTokenizer, train_bpe
    from probattn.training.seq2seq import Seq2SeqData

    path = output / TOKENIZER
    if path.is_file() and resume:
        tokenizer = SubwordTokenizer.load(path)
    else:  # deterministic: every torchrun process learns the same vocabulary; rank 0 saves it
        tokenizer = train_bpe(splits.train.sources + splits.train.targets, vocab_size=vocab_size)
        if _is_main():
            tokenizer.save(path)
    sources, targets = tokenizer.encode(splits.train.sources), tokenizer.encode(splits.train.targets)
    keep = [i for i, (s, t) in enumerate(zip(sources, targets)) if max(len(s), len(t)) < max_length]
    data = Seq2SeqData(
        train_sources=[sources[i] for i in keep], train_targets=[targets[i] for i in keep],
        validation_sources=tokenizer.encode(splits.validation.sources),
        validation_references=list(splits.validation.targets), decode=tokenizer.decode,
        vocab_size=tokenizer.vocab_size, pad_id=PAD, bos_id=BOS, eos_id=EOS)
    stats = {"train_pairs": len(keep), "train_pairs_dropped_longer_than_max_length": len(sources) - len(keep),
             "validation_pairs": len(splits.validation), "test_pairs": len(splits.test),
             "vocab_size": tokenizer.vocab_size, "validation_books": sorted(set(splits.validation.books)),
             "test_books": sorted(set(splits.test.books))}
    return tokenizer, data, stats


# -- measurements -----------------------------------------------------------------------------------------------
def _test_set(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """The runner's ``sets["test"]``: corpus BLEU/chrF, the mean sentence chrF and each sentence's chrF."""
    from probattn.training.seq2seq import corpus_scores

    sentence = _sentence_chrf(hypotheses, references)
    return {"metrics": {**corpus_scores(hypotheses, references), "sentence_chrf": sum(sentence) / len(sentence)},
            "scores": {"chrf": sentence}}


def baselines(splits, test_examples: int | None = None) -> dict[str, dict[str, Any]]:
    """Test scores (first ``test_examples`` test pairs) of two trivial systems, as run records (``sets``): the
    source copied, and a translation memory (the training target of the most similar training source, TF-IDF
    over word 1-2-grams; needs scikit-learn)."""
    test = splits.test.head(test_examples)
    refs = test.targets
    out = {"copy source": {"sets": {"test": _test_set(test.sources, refs)}}}
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ModuleNotFoundError:
        return out
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(splits.train.sources)
    similarity = vectorizer.transform(test.sources) @ vectorizer.transform(splits.train.sources).T
    nearest = [int(similarity.getrow(i).toarray().argmax()) for i in range(similarity.shape[0])]
    out["translation memory"] = {"sets": {"test": _test_set([splits.train.targets[j] for j in nearest], refs)}}
    return out


@torch.no_grad()
def head_diversity(model, sources: list[list[int]], targets: list[list[int]]) -> dict[str, float]:
    """Per attention type (encoder_self, decoder_self, cross), averaged over layers:

    * ``js_<type>``: mean pairwise Jensen–Shannon divergence between heads' attention rows (bits, higher = more
      diverse), teacher-forced on the given pairs, over real queries;
    * ``cos_<type>``: mean pairwise cosine of the heads' Q/K/V weight slices (the repulsive authors' measure;
      lower = more diverse).
    """
    from probattn.metrics import head_js_divergence, parameter_cosine_similarity
    from probattn.models.seq2seq import ATTENTION_TYPES, attention_modules, collate
    from probattn.repulsive import build_particle_sets, projections_of

    c = model.config
    device = next(model.parameters()).device
    batch = collate(sources, targets, pad_id=c.pad_id, bos_id=c.bos_id, eos_id=c.eos_id, device=device)
    model.eval()
    out = model(batch["src"], batch["tgt_in"], return_attention=True)
    valid = {"encoder_self": batch["src"] != c.pad_id, "decoder_self": batch["tgt_in"] != c.pad_id,
             "cross": batch["tgt_in"] != c.pad_id}
    result = {}
    modules = attention_modules(model)
    for kind in ATTENTION_TYPES:
        h = c.num_heads  # the (B, H, H) matrices have zeros on the diagonal: average the H(H-1) pairs
        js = [float(head_js_divergence(w.double(), query_valid=valid[kind]).sum((-1, -2)).mean()) / (h * (h - 1))
              for w in out.attentions[kind]]
        result[f"js_{kind}"] = sum(js) / len(js)
        cos = [float(parameter_cosine_similarity(s.weights().double()))
               for name, m in modules[kind] for s in build_particle_sets(name, projections_of(m))]
        result[f"cos_{kind}"] = sum(cos) / len(cos)
    return result


def _sentence_chrf(hypotheses: Sequence[str], references: Sequence[str]) -> list[float]:
    import sacrebleu

    return [sacrebleu.sentence_chrf(h, [r]).score for h, r in zip(hypotheses, references)]


def run_one(variant: str, seed: int, base: dict[str, Any], data, splits, tokenizer, output: Path, args) -> dict:
    """Train and measure one (variant, seed); returns the run record."""
    from probattn.training.seq2seq import Seq2SeqTrainConfig, train_seq2seq, translate

    config = Seq2SeqTrainConfig.from_dict({**base, **VARIANTS[variant], "seed": seed})
    began = time.perf_counter()
    trained = train_seq2seq(config, data, output=output / "checkpoints" / f"{variant}-seed{seed}",
                            resume=args.resume, progress=not args.no_progress,
                            validation_limit=args.validation_examples)
    if not _is_main():
        return {}
    test_began = time.perf_counter()
    test = splits.test.head(args.test_examples)
    test_sources = tokenizer.encode(test.sources)
    hypotheses = tokenizer.decode(translate(trained.model, test_sources, beam=args.beam, lenpen=args.lenpen))
    test_set = _test_set(hypotheses, test.targets)
    metrics = {k: test_set["metrics"][k] for k in ("bleu", "chrf")}
    n = min(DIVERSITY_EXAMPLES, len(test))
    metrics.update(head_diversity(trained.model, [s[: config.max_positions - 2] for s in test_sources[:n]],
                                  [t[: config.max_positions - 2] for t in tokenizer.encode(test.targets[:n])]))
    timing = trained.timing
    metrics["ms_per_step"] = 1000 * timing["seconds"] / max(1, timing["steps"])
    metrics["cpu_ms_per_step"] = 1000 * timing["cpu_seconds"] / max(1, timing["steps"])
    validation = [h for h in trained.history if "val_bleu" in h]
    metrics["val_bleu"] = validation[-1]["val_bleu"] if validation else math.nan
    metrics["test_seconds"] = time.perf_counter() - test_began  # beam search + head diversity
    train_records = [h for h in trained.history if "loss" in h]
    return {"variant": variant, "seed": seed, "fold": None, "config": config.to_dict(), "metrics": metrics,
            "sets": {"test": test_set}, "sentence_chrf": test_set["scores"]["chrf"], "hypotheses": hypotheses,
            "history": trained.history, "repulsive_sets": trained.repulsive_sets,
            "parameters": sum(p.numel() for p in trained.model.parameters()),
            "final_train_loss": train_records[-1]["loss"] if train_records else None,
            "seconds": time.perf_counter() - began, "threads": torch.get_num_threads()}


# -- summary: the runner's statistics, verdict and files ---------------------------------------------------------
_BOUNDED = (0.0, 100.0)
TEST_TABLE = Table("Test books", (Metric("bleu", "BLEU", True, 2, _BOUNDED), Metric("chrf", "chrF", True, 2, _BOUNDED),
                                  Metric("sentence_chrf", "sentence chrF", True, 2, _BOUNDED, score="chrf")), "test",
                   note="BLEU and chrF: corpus scores (sacreBLEU); sentence chrF: the mean per-sentence chrF, tested "
                        "by the paired bootstrap over seeds × test sentences.")
_KINDS = {"encoder_self": "enc-self", "decoder_self": "dec-self", "cross": "cross"}
DIVERSITY_TABLE = Table(
    f"Head diversity (first {DIVERSITY_EXAMPLES} test pairs, mean over layers)",
    (*(Metric(f"js_{k}", f"JS {label}", True, 3, (0.0, 1.0)) for k, label in _KINDS.items()),
     *(Metric(f"cos_{k}", f"cos {label}", False, 3, (-1.0, 1.0)) for k, label in _KINDS.items())), None,
    note="JS: mean pairwise Jensen–Shannon divergence between heads' attention rows (bits, ↑ more diverse). cos: "
         "mean pairwise cosine of the heads' Q/K/V weights (↓ more diverse).")
COST_TABLE = Table("Cost", (Metric("ms_per_step", "ms / step", False, 0, (0.0, math.inf)),
                            Metric("cpu_ms_per_step", "CPU ms / step", False, 0, (0.0, math.inf))), None, tests=False)
CLAIMS = (
    Claim("svgd", "encoder self-attention heads more diverse (JS up)", "js_encoder_self", "up", None),
    Claim("svgd", "translation quality up (sentence chrF)", "sentence_chrf", "up", digits=2),
    Claim("spos", "encoder self-attention heads more diverse (JS up)", "js_encoder_self", "up", None),
    Claim("spos", "translation quality up (sentence chrF)", "sentence_chrf", "up", digits=2),
    Claim("doubly-encoder", "translation quality up (sentence chrF)", "sentence_chrf", "up", digits=2),
    Claim("alignment", "translation quality up (sentence chrF)", "sentence_chrf", "up", digits=2),
)


class NmtStudy(Study):
    """The report of ``probattn experiment nmt`` (its grid, torchrun and parallel processes stay in
    :func:`run_experiment`)."""

    name = "experiment nmt"
    title = "Translation: Spanish RV1909 → English WEB (held-out books)"
    output = "probattn-experiments/nmt"
    variants: ClassVar[dict[str, Any]] = VARIANTS
    default_variants = tuple(VARIANTS)
    default_seeds = DEFAULT_SEEDS
    primary = ("test", "sentence_chrf")
    tables = (TEST_TABLE, DIVERSITY_TABLE, COST_TABLE)
    claims = CLAIMS

    def sections(self, report: Report) -> list[str]:
        header, runs = report.header, report.runs
        text = ["## Example translations (test books, first seed of each variant)\n"]
        first = {v: min((r for r in runs if r["variant"] == v), key=lambda r: r["seed"]) for v in report.variants}
        for i in header["example_indices"]:
            ex = header["examples"][str(i)]
            text.append(f"**{ex['ref']}** — source: {ex['source']}\n\n- reference: {ex['target']}")
            text += [f"- {v}: {first[v]['hypotheses'][i]}" for v in report.variants
                     if i < len(first[v].get("hypotheses", []))]
            text.append("")
        return ["\n".join(text)]

    def figures(self, report: Report, output: Path) -> list[Path]:
        from probattn.experiments.plots import curves_figure

        return [curves_figure(report.runs, report.variants, "val_bleu", "validation BLEU (greedy)",
                              output / "val_bleu.png")]


STUDY = NmtStudy()


def write_summary(output: Path, *, variants: Sequence[str], header: dict[str, Any], figures: bool = True) -> str:
    """Rebuild ``results.md``, ``results.json`` (and with ``figures`` the figures) from the saved runs, through the
    runner (:func:`probattn.experiments.runner.build_report`)."""
    data = header["data"]
    describe = (f"Data: {data['train_pairs']} training pairs, {data['validation_pairs']} validation pairs "
                f"({', '.join(data['validation_books'])}), {data['test_pairs']} test pairs "
                f"({', '.join(data['test_books'])}; {header['test_examples']} decoded); joint BPE vocabulary of "
                f"{data['vocab_size']}. Model: {header['model']}. {header['steps']} steps, beam {header['beam']}, "
                f"length penalty {header['lenpen']}. sacreBLEU {header['sacrebleu']}."
                + (" CUDA float32 matmuls in TF32." if header.get("tf32") else "")
                + (f"\n\nRuns not finished (left out of every table): {', '.join(header['missing_runs'])}."
                   if header.get("missing_runs") else ""))
    invocation = {"command": header["command"], "started": header["started"], "workers": 1,
                  "threads": torch.get_num_threads(), "wall_seconds": header.get("wall_seconds"),
                  "cpu_seconds": header.get("cpu_seconds")}
    report = build_report(STUDY, output, variants=variants, figures=figures,
                          header={**header, "describe": describe, "invocations": [invocation], "folds": None},
                          baselines={"all": header["baselines"]})
    return (output / "results.md").read_text() if report is not None else ""


# -- the command ------------------------------------------------------------------------------------------------
def _apply_schedule(args: argparse.Namespace) -> None:
    """Fill the options left at None from ``SCHEDULES[args.schedule]`` (explicit flags win)."""
    name = getattr(args, "schedule", None) or DEFAULT_SCHEDULE
    if name not in SCHEDULES:
        raise ValueError(f"--schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
    for key, value in SCHEDULES[name].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _baselines(output: Path, splits, test_examples: int) -> dict[str, dict[str, float]]:
    """:func:`baselines`, computed once per output folder and test size (``prepared.json``), so that parallel
    worker processes and the final report read the same numbers instead of each recomputing them."""
    path = output / PREPARED
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    if saved.get("test_examples") == test_examples and saved.get("test_pairs") == len(splits.test) \
            and saved.get("format") == 2:
        return saved["baselines"]
    scores = baselines(splits, test_examples)
    if _is_main():
        write_json(path, {"format": 2, "test_examples": test_examples, "test_pairs": len(splits.test),
                          "baselines": scores})
    return scores


def run_experiment(args: argparse.Namespace, command: str = "probattn experiment nmt") -> dict[str, Any]:
    """Every (variant, seed) of ``args`` (see :func:`add_arguments`); returns the content of ``results.json``.

    Parallel processes into one ``--output`` (benchmarks/nmt_gpu.sh): one ``--prepare-only`` process writes the
    shared files (tokenizer, baselines), then one ``--resume --no-report`` process per (variant, seed) writes
    its ``runs/<variant>-seed<k>.json``, then one ``--resume --report-only`` process builds the tables from the
    finished runs. With ``--prepare-only`` the return value is empty.
    """
    import sacrebleu

    _apply_schedule(args)
    variants, seeds = list(args.variants), list(args.seeds)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ValueError(f"--variants {' '.join(unknown) or '(none)'}: choose from {', '.join(VARIANTS)}")
    if len(set(variants)) != len(variants) or len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError("--variants and --seeds must be non-empty and list each value once")
    if args.size not in SIZES:
        raise ValueError(f"--size {args.size!r}: choose one of {', '.join(SIZES)}")
    prepare_only, report_only, no_report = (bool(getattr(args, k, False))
                                            for k in ("prepare_only", "report_only", "no_report"))
    if prepare_only + report_only + no_report > 1:
        raise ValueError("--prepare-only, --report-only and --no-report exclude each other; pass one")
    if getattr(args, "tf32", False):
        torch.backends.cuda.matmul.allow_tf32 = True  # CUDA float32 matmuls in TF32 (10-bit mantissa inputs)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}: must be >= 1")
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    overwrite = getattr(args, "overwrite", False)
    if _is_main() and (output / TOKENIZER).exists() and not (args.resume or overwrite):
        raise ValueError(f"--output {output} already holds a run; pass --resume to skip the finished runs and "
                         "continue the others, --overwrite to start over, or choose another --output")
    if report_only and not (output / TOKENIZER).exists():
        raise ValueError(f"--report-only: {output} holds no prepared run (no {TOKENIZER}); run the experiment (or "
                         "--prepare-only and the runs) into this --output first")
    if _is_main():  # refuses a folder holding files probattn did not write
        claim_output_dir(output, command="probattn experiment nmt", overwrite=overwrite,
                         resume=args.resume or report_only,
                         will_write=(TOKENIZER, PREPARED, "results.md", "results.json"))
    output.mkdir(parents=True, exist_ok=True)
    splits = load_splits(args.data)
    tokenizer, data, stats = prepare(splits, output, vocab_size=args.vocab_size, max_length=args.max_length,
                                     resume=args.resume or report_only)
    size = {**SIZES[args.size], **{k: getattr(args, k) for k in SIZES[args.size] if getattr(args, k) is not None}}
    base = {**size, "max_steps": args.max_steps, "max_tokens": args.max_tokens, "lr": args.lr,
            "warmup_steps": args.warmup_steps, "dropout": args.dropout, "eval_every": args.eval_every,
            "checkpoint_every": args.checkpoint_every, "device": args.device,
            "max_positions": max(256, args.max_length + 2)}
    test_examples = min(len(splits.test), args.test_examples or len(splits.test))
    scores = _baselines(output, splits, test_examples)
    if prepare_only:
        print(f"prepared {output}: {TOKENIZER} (vocabulary {stats['vocab_size']}), {PREPARED} (baselines on "
              f"{test_examples} test pairs); now run each (variant, seed) with --resume --no-report", flush=True)
        return {}
    shown = sorted({round(i * (test_examples - 1) / max(1, EXAMPLES_SHOWN - 1)) for i in range(EXAMPLES_SHOWN)})
    began, cpu_began = time.perf_counter(), time.process_time()
    header = {"title": "Translation: Spanish RV1909 → English WEB (held-out books)", "command": command,
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "data": stats, "model": ", ".join(f"{k}={v}" for k, v in size.items()), "steps": args.max_steps,
              "beam": args.beam, "lenpen": args.lenpen, "tf32": bool(getattr(args, "tf32", False)), "seeds": seeds,
              "test_examples": test_examples,
              "sacrebleu": sacrebleu.__version__, "baselines": scores, "example_indices": shown,
              "examples": {str(i): {"ref": splits.test.refs[i], "source": splits.test.sources[i],
                                    "target": splits.test.targets[i]} for i in shown}}
    args.test_examples = test_examples
    todo = [(v, s) for v in variants for s in seeds]
    missing = []
    for i, (variant, seed) in enumerate(todo, 1):
        path = output / RUNS_DIR / f"{variant}-seed{seed}.json"
        action = f"training {args.max_steps} steps"
        if path.exists():
            saved = json.loads(path.read_text())
            from probattn.training.seq2seq import Seq2SeqTrainConfig

            expected = Seq2SeqTrainConfig.from_dict({**base, **VARIANTS[variant], "seed": seed}).to_dict()
            diff = {k: (saved["config"].get(k), v) for k, v in expected.items()
                    if saved["config"].get(k) != v and k != "device"}
            longer = set(diff) == {"max_steps"} and diff["max_steps"][0] < diff["max_steps"][1] and not report_only
            if diff and not longer:
                raise ValueError(f"--resume: {path} was made with other options {diff}; use the same options or "
                                 "another --output (only a larger --max-steps continues finished runs)")
            if not longer:
                print(f"[{i}/{len(todo)}] {variant} seed {seed}: finished before, skipped", flush=True)
                continue
            action = f"finished at {diff['max_steps'][0]} steps, continuing from its checkpoint to {args.max_steps}"
        elif report_only:
            missing.append(f"{variant}-seed{seed}")
            print(f"[{i}/{len(todo)}] {variant} seed {seed}: not finished, left out of the report", flush=True)
            continue
        print(f"[{i}/{len(todo)}] {variant} seed {seed}: {action} ...", flush=True)
        record = run_one(variant, seed, base, data, splits, tokenizer, output, args)
        if not record:  # another torchrun process: rank 0 evaluates and writes
            continue
        write_json(path, _finite(record))
        m = record["metrics"]
        print(f"[{i}/{len(todo)}] {variant} seed {seed}: test BLEU {m['bleu']:.2f}, chrF {m['chrf']:.2f}, "
              f"{m['ms_per_step']:.0f} ms/step ({m['cpu_ms_per_step']:.0f} CPU ms/step), {record['seconds']:.0f} s",
              flush=True)
        if not no_report:
            write_summary(output, variants=variants, header=header, figures=False)
    if not _is_main() or no_report:
        return {}
    header.update(missing_runs=missing, wall_seconds=time.perf_counter() - began,
                  cpu_seconds=time.process_time() - cpu_began)
    markdown = write_summary(output, variants=variants, header=header)
    if not markdown:
        raise ValueError(f"--report-only: no finished run of {' '.join(variants)} × seeds "
                         f"{' '.join(map(str, seeds))} in {output / RUNS_DIR}")
    print(markdown)
    return json.loads((output / "results.json").read_text())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cpu = SCHEDULES[DEFAULT_SCHEDULE]
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME",
                        help=f"variants (default: all: {' '.join(VARIANTS)})")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS),
                        help=f"seeds (default {' '.join(map(str, DEFAULT_SEEDS))})")
    parser.add_argument("--schedule", default=DEFAULT_SCHEDULE, choices=list(SCHEDULES),
                        help="defaults of --max-steps, --max-tokens, --warmup-steps, --eval-every, "
                             "--checkpoint-every and --validation-examples (flags given win): " + "; ".join(
                                 f"{k}: " + ", ".join(f"{o} {v}" for o, v in d.items()) for k, d in SCHEDULES.items()))
    parser.add_argument("--max-steps", type=int, default=None,
                        help=f"optimizer steps per run (default {cpu['max_steps']}; --schedule gpu: "
                             f"{SCHEDULES['gpu']['max_steps']})")
    parser.add_argument("--size", default=DEFAULT_SIZE, choices=list(SIZES),
                        help=f"model size (default {DEFAULT_SIZE}): " + "; ".join(
                            f"{k}: {v['encoder_layers']}+{v['decoder_layers']} layers, E={v['embed_dim']}, "
                            f"FFN {v['ffn_dim']}" for k, v in SIZES.items()))
    for flag, help_text in (("--embed-dim", "embedding size"), ("--num-heads", "heads"), ("--ffn-dim", "FFN size"),
                            ("--encoder-layers", "encoder layers"), ("--decoder-layers", "decoder layers")):
        parser.add_argument(flag, type=int, default=None, help=f"override the size's {help_text}")
    parser.add_argument("--output", default="probattn-experiments/nmt", help="output folder")
    parser.add_argument("--resume", action="store_true",
                        help="skip finished runs in --output and continue unfinished ones from their checkpoints")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in --output: delete the files probattn wrote there (never other files)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--prepare-only", action="store_true",
                      help="write the files the runs share (tokenizer, baselines) into --output and stop: start "
                           "parallel processes after it")
    mode.add_argument("--no-report", action="store_true",
                      help="train and save the runs only (runs/*.json), no results.md/json/png: for parallel "
                           "processes into one --output (pass --resume after --prepare-only)")
    mode.add_argument("--report-only", action="store_true",
                      help="train nothing: build results.md/json/png from the finished runs in --output (the "
                           "unfinished ones are listed and left out)")
    parser.add_argument("--data", default="bible", choices=("bible", "sample"),
                        help="bible: the SWORD export (default); sample: the 200 pairs shipped with probattn")
    parser.add_argument("--vocab-size", type=int, default=8000, help="joint BPE vocabulary size (default 8000)")
    parser.add_argument("--max-length", type=int, default=128,
                        help="drop training pairs with a side this many subwords or longer (default 128)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help=f"padded tokens per batch (default {cpu['max_tokens']})")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help=f"linear warm-up steps (default {cpu['warmup_steps']})")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout (default 0.1)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help=f"validation BLEU every N steps (default {cpu['eval_every']})")
    parser.add_argument("--checkpoint-every", type=int, default=None,
                        help=f"checkpoint every N steps (0: at the end; default {cpu['checkpoint_every']})")
    parser.add_argument("--validation-examples", type=int, default=None,
                        help="decode only the first N validation pairs for the BLEU curve (default all)")
    parser.add_argument("--test-examples", type=int, default=None, help="decode only the first N test pairs")
    parser.add_argument("--beam", type=int, default=5, help="beam size on the test books (default 5; 1 = greedy)")
    parser.add_argument("--lenpen", type=float, default=1.0, help="length penalty (default 1.0)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--tf32", action="store_true",
                        help="CUDA float32 matmuls in TF32 (about 1.5x faster training steps at 32k tokens on an "
                             "H200; default: full float32)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    typed = sys.argv[1:3] == ["experiment", "nmt"]
    command = shlex.join(["probattn", *(sys.argv[1:] if typed else ["experiment", "nmt"])])
    run_experiment(args, command)
    output = Path(args.output)
    if args.prepare_only:
        return 0
    if args.no_report:
        print(f"wrote the runs into {output / RUNS_DIR}; build the tables with --resume --report-only")
        return 0
    print(f"wrote {output / 'results.md'}, results.json, val_bleu.png")
    return 0
