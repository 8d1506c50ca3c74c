"""``probattn diagnose``: measure explaining away, head collapse, key/query misalignment and calibration of a
pretrained (or probattn-trained) model on real text, and write a report.

    probattn diagnose minilm --data sample --max-examples 64 --output report-minilm
    probattn diagnose --compare minilm minilm --normalization softmax doubly --data sample

Writes ``report.md`` (+ PNG figures), ``report.html`` (figures embedded) and ``metrics.json`` into
``--output``, and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from probattn.data import load_file, read_table
from probattn.functional import NORMALIZATIONS
from probattn.hf import PRETRAINED, convert, load_model
from probattn.report import figures
from probattn.report.collect import Diagnosis, collect
from probattn.report.writer import Report, format_table

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "samples" / "rt_sample.csv"
KEEP = "keep"  # --normalization value: use the model as loaded
REPORT_FILES = ("report.md", "report.html", "metrics.json")

__all__ = ["SAMPLE", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="registry name (minilm), a probattn-saved directory or a local "
                        "Hugging Face model directory")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="diagnose two models side by side")
    parser.add_argument("--data", required=True, help="CSV / TSV / JSONL / Parquet file with a text column, "
                        f"or 'sample' for the shipped Rotten Tomatoes sample ({SAMPLE.name}, 200 snippets)")
    parser.add_argument("--text-column", default="text", help="column holding the text (default: text)")
    parser.add_argument("--label-column", default=None, help="column of class labels for calibration (default: "
                        "'label' when the file has it)")
    parser.add_argument("--max-examples", type=int, default=256, help="use the first N rows (default: 256)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128, help="truncate texts to this many tokens")
    parser.add_argument("--normalization", nargs="+", choices=(*NORMALIZATIONS, KEEP), default=None,
                        help="convert before diagnosing: one value for every model, or one per --compare model; "
                        f"'{KEEP}' = as loaded (default)")
    parser.add_argument("--hybrid-alpha", type=float, default=None, help="softmax weight of 'hybrid'")
    parser.add_argument("--sinkhorn-iters", type=int, default=3, help="iterations of 'sinkhorn'")
    parser.add_argument("--output", default="diagnose-report", help="report directory (default: diagnose-report)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in --output")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _models(args: argparse.Namespace) -> list[tuple[str, str]]:
    """``[(model, normalization)]`` from the positional model / --compare and --normalization."""
    if (args.model is None) == (args.compare is None):
        raise ValueError("give either one MODEL or --compare A B (not both, not neither)")
    names = [args.model] if args.compare is None else list(args.compare)
    norms = args.normalization or [KEEP]
    if len(norms) == 1:
        norms = norms * len(names)
    if len(norms) != len(names):
        raise ValueError(f"--normalization takes one value or one per model ({len(names)}), got {len(norms)}")
    if args.hybrid_alpha is not None and "hybrid" not in norms:
        raise ValueError("--hybrid-alpha is only used with --normalization hybrid")
    return list(zip(names, norms))


def _read_data(args: argparse.Namespace) -> tuple[list[str], list[int] | None, tuple[str, ...]]:
    """Texts, label ids (None without a label column) and the label names, first --max-examples rows."""
    for flag, value, least in (("--max-examples", args.max_examples, 1), ("--batch-size", args.batch_size, 1),
                               ("--max-length", args.max_length, 2), ("--sinkhorn-iters", args.sinkhorn_iters, 1)):
        if value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    path = SAMPLE if args.data == "sample" else Path(args.data)
    frame = read_table(path)
    label_column = args.label_column
    if label_column is None and "label" in frame.columns:
        label_column = "label"
    if label_column is None:
        if args.text_column not in frame.columns:
            raise ValueError(f"--data {path}: --text-column {args.text_column!r} is not a column; its columns are: "
                             f"{', '.join(map(str, frame.columns))}")
        texts = frame[args.text_column].head(args.max_examples)
        if not texts.map(lambda v: isinstance(v, str) and bool(v.strip())).all():
            raise ValueError(f"--data {path}: --text-column {args.text_column!r} has empty or non-text values")
        return texts.tolist(), None, ()
    data = load_file(path, text_column=args.text_column, label_column=label_column)
    data = data.subset(range(min(len(data), args.max_examples)))
    return data.texts, data.labels, data.label_names


def _model_label_ids(model, label_names: tuple[str, ...], labels: list[int]) -> tuple[list[int] | None, str]:
    """Map the file's labels onto the model's class ids: by ``config.label2id`` names, else integer labels."""
    config = getattr(model, "config", None)
    label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
    num_labels = int(getattr(config, "num_labels", 0) or 0)
    if label_names and all(name in label2id for name in label_names):
        return [label2id[label_names[y]] for y in labels], ""
    if label_names and all(name.lstrip("-").isdigit() and 0 <= int(name) < num_labels for name in label_names):
        return [int(label_names[y]) for y in labels], ""
    return None, (f"the data's labels {list(label_names)} match neither the model's label names "
                  f"{sorted(label2id)} nor its class ids 0..{num_labels - 1}")


def _diagnose_one(name: str, normalization: str, args, texts, labels, label_names, device) -> Diagnosis:
    task = "encoder" if name in PRETRAINED else None
    model, tokenizer = load_model(name, task=task)
    if normalization != KEEP:
        convert(model, normalization=normalization, sinkhorn_iters=args.sinkhorn_iters,
                hybrid_alpha=args.hybrid_alpha if normalization == "hybrid" else None)
    used = (getattr(model.config, "probattn", None) or {}).get("normalization", "softmax")
    model_labels, note = (None, "the data has no label column") if labels is None else _model_label_ids(
        model, label_names, labels)
    return collect(model, tokenizer, texts, labels=model_labels, label=f"{name} ({used})",
                   batch_size=args.batch_size, max_length=args.max_length, device=device,
                   progress=not args.no_progress, no_labels_reason=note)


def _mean(values) -> float | None:
    return None if values is None else float(np.mean(values))


LAYER_COLUMNS = [
    ("EA<0.1", "explained_away_0.1"), ("EA<0.01", "explained_away_0.01"), ("min mass", "min_incoming_mass"),
    ("entropy", "entropy"), ("attn sim", "mean_attention_similarity"), ("output CKA", "mean_output_cka"),
    ("Lin", "lin_redundancy"), ("param cos", "parameter_cosine"), ("q/k MMD²", "qk_mmd2"),
    ("q/k dist", "qk_mean_distance"),
]


def _layer_value(layer: dict, key: str) -> float | None:
    value = layer.get(key)
    if key == "min_incoming_mass" and value is not None:
        return float(np.min(value))
    if isinstance(value, dict):  # parameter_cosine: mean over query, key, value
        return _mean(list(value.values()))
    return _mean(value) if isinstance(value, list) else value


def _layer_rows(result: Diagnosis) -> list[list]:
    return [[result.label, i, *(_layer_value(layer, key) for _, key in LAYER_COLUMNS)]
            for i, layer in enumerate(result.layers)]


def _summary_rows(results: list[Diagnosis]) -> list[list]:
    rows = []
    for r in results:
        per_layer = np.asarray([[np.nan if v is None else v for v in row[2:]] for row in _layer_rows(r)], dtype=float)
        means = [None if np.isnan(col).all() else float(np.nanmean(col)) for col in per_layer.T]
        means[2] = None if np.isnan(per_layer[:, 2]).all() else float(np.nanmin(per_layer[:, 2]))  # min mass: min
        rows.append([r.label, *means, None if r.calibration is None else r.calibration.ece])
    return rows


def _build_report(results: list[Diagnosis], source: str, args) -> Report:
    report = Report("probattn diagnose report")
    runs = [(r.label, r.layers) for r in results]
    report.text(f"Models: {', '.join(r.label for r in results)}. Data: {source}, {results[0].examples} examples "
                f"(first rows), truncated to {args.max_length} tokens. Statistics are accumulated over all "
                "examples; per-layer values are means over heads unless stated.")
    report.heading("Summary (means over layers)")
    report.table(["model", *(c for c, _ in LAYER_COLUMNS), "ECE"], _summary_rows(results))
    report.heading("Per layer")
    report.table(["model", "layer", *(c for c, _ in LAYER_COLUMNS)], [row for r in results for row in _layer_rows(r)])
    report.heading("Calibration")
    for r in results:
        if r.calibration is None:
            report.text(f"{r.label}: n/a — {r.calibration_note}.")
        else:
            c = r.calibration
            report.text(f"{r.label}: ECE {c.ece:.4f}, MCE {c.mce:.4f}, NLL {c.nll:.4f}, Brier {c.brier:.4f}, "
                        f"accuracy {c.accuracy:.4f} over {c.count} labelled examples (15 equal-width bins).")
            report.table(["bin", "count", "confidence", "accuracy"],
                         [[f"{lo:.3f}-{hi:.3f}", n, conf, acc] for lo, hi, n, conf, acc in
                          zip(c.bin_edges, c.bin_edges[1:], c.bin_count, c.bin_confidence, c.bin_accuracy) if n])
    calibrated = [r for r in results if r.calibration is not None]
    if calibrated:
        report.image("reliability.png", _reliability_png(calibrated, source),
                     "reliability diagram: accuracy per confidence bin against the diagonal")
    report.heading("Figures")
    report.image("explained_away.png", figures.explained_away_grid(runs, 0.1),
                 "fraction of keys explained away (normalized incoming mass < 0.1), layer x head")
    report.image("incoming_mass.png", figures.mass_histograms(runs),
                 "histograms of log10 normalized incoming mass per layer")
    attention_sim = figures.similarity_heatmaps(runs, "attention_similarity", "head similarity of attention maps "
                                                "(1 - Jensen-Shannon divergence, bits)")
    report.image("attention_similarity.png", attention_sim, "head x head similarity of attention maps per layer")
    output_sim = figures.similarity_heatmaps(runs, "output_cka", "head similarity of outputs (linear CKA)")
    if output_sim is None:
        report.text("Head-output similarity: n/a — the attention layers expose no per-head outputs.")
    else:
        report.image("output_cka.png", output_sim, "head x head linear CKA of head outputs per layer")
    report.image("example_attention.png",
                 figures.example_maps(runs, [r.example_maps for r in results], [r.example_tokens for r in results]),
                 "attention map of the first example per layer (mean over heads)")
    report.heading("How to read it")
    report.text("EA<τ: fraction of keys whose normalized incoming mass m̃_j = (Σ_i A_ij)·N_k/N_q is below τ "
                "(1 = fair share; explained-away keys barely reach the next layer). min mass: smallest m̃ seen. "
                "entropy: row entropy / ln N_k (1 = uniform). attn sim: 1 − Jensen–Shannon divergence (bits) "
                "between heads' attention rows, mean over head pairs (1 = identical heads). output CKA: linear CKA "
                "between heads' outputs over tokens (1 = same features up to rotation and scale). Lin: "
                "‖AAᵀ − I‖_F over the heads' rows at each query, the measure in the repulsive-attention authors' "
                "code (whether the paper reports it is unverified). param cos: mean pairwise cosine between heads' query / "
                "key / value projection parameters (mean of the three), the measure in the same authors' "
                "GraphWriter code (n/a for fused projections). q/k MMD²: Gaussian-kernel MMD² (median "
                "bandwidth) between a head's query and key clouds per sequence; q/k dist: distance of their means.")
    return report


def _reliability_png(results: list[Diagnosis], source: str) -> bytes:
    """The reliability diagram of ``probattn compare`` (:func:`probattn.experiments.plots.reliability_figure`)."""
    from probattn.experiments.plots import reliability_figure

    runs = [{"variant": r.label, "reliability": {"data": asdict(r.calibration)}} for r in results]
    with tempfile.TemporaryDirectory() as tmp:
        path = reliability_figure(runs, [r.label for r in results], {"data": source}, Path(tmp) / "reliability.png")
        return Path(path).read_bytes()


def _to_json(results: list[Diagnosis], source: str, args) -> dict:
    models = []
    for r in results:
        calibration = asdict(r.calibration) if r.calibration else {"status": "n/a", "reason": r.calibration_note}
        models.append({"label": r.label, "examples": r.examples, "seconds": r.seconds,
                       "layer_names": r.layer_names, "layers": r.layers, "calibration": calibration})
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    return {"data": source, "settings": settings, "models": models}


def run(args: argparse.Namespace) -> int:
    models = _models(args)
    output = Path(args.output)
    existing = [name for name in REPORT_FILES if (output / name).exists()]
    if existing and not args.overwrite:
        raise ValueError(f"--output {output} already holds {', '.join(existing)}; choose another directory or "
                         "pass --overwrite")
    texts, labels, label_names = _read_data(args)
    source = SAMPLE.name if args.data == "sample" else str(args.data)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")
    results = [_diagnose_one(name, norm, args, texts, labels, label_names, device) for name, norm in models]
    report = _build_report(results, source, args)
    report.write(output)
    (output / "metrics.json").write_text(json.dumps(_to_json(results, source, args), indent=1), encoding="utf-8")
    print(format_table(["model", *(c for c, _ in LAYER_COLUMNS), "ECE"], _summary_rows(results)))
    for r in results:
        if r.calibration is None:
            print(f"calibration of {r.label}: n/a ({r.calibration_note})")
    print(f"report: {output / 'report.md'}, {output / 'report.html'}, {output / 'metrics.json'}")
    return 0
