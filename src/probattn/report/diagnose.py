"""``probattn diagnose``: measure explaining away, head collapse, key/query misalignment and calibration of a
pretrained (or probattn-trained) model on real text, and write a report.

    probattn diagnose minilm --data sample --max-examples 64 --output report-minilm
    probattn diagnose smollm2 --data sample --max-examples 64 --output report-smollm2
    probattn diagnose --compare minilm minilm --normalization softmax doubly --data sample

MODEL: a registry name (``minilm``, ``smollm2``), a local Hugging Face directory, a ``probattn train`` output
directory, or a ``.gguf`` file. Writes ``report.md`` (+ PNG figures), ``report.html`` (figures embedded, with
interactive token and per-head views), ``metrics.json`` and the bertviz export ``attention*.safetensors`` /
``.json`` (see :mod:`probattn.report.bertviz`) into ``--output``, and prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from probattn.data import load_file, read_table
from probattn.functional import NORMALIZATIONS
from probattn.metrics import SINK_THRESHOLD
from probattn.report.collect import Diagnosis, collect
from probattn.report.writer import Report, format_table

REGISTRY = ("minilm", "smollm2")  # probattn.hf.PRETRAINED's names, without importing transformers for --help

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "samples" / "rt_sample.csv"
KEEP = "keep"  # --normalization value: use the model as loaded
REPORT_FILES = ("report.md", "report.html", "metrics.json")

__all__ = ["SAMPLE", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help=f"registry name ({', '.join(REGISTRY)}), a local Hugging Face "
                        "model directory, a `probattn train` output directory or a .gguf file")
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
    parser.add_argument("--pairwise-examples", type=int, default=32, help="measure head similarity, Lin and q/k "
                        "MMD² (pairwise, the costly statistics) on the first N examples; 0 = all (default: 32)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow a model folder whose config "
                        "names Python classes of its own (auto_map): runs the .py files in that folder (default: "
                        "refuse such folders)")
    parser.add_argument("--layers-per-page", type=int, default=6, help="layers per per-head attention figure "
                        "(deep models get several pages; default: 6)")


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
                               ("--max-length", args.max_length, 2), ("--sinkhorn-iters", args.sinkhorn_iters, 1),
                               ("--pairwise-examples", args.pairwise_examples, 0),
                               ("--layers-per-page", args.layers_per_page, 1)):
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


def _model_label_ids(model, label_names: tuple[str, ...], labels: list[int],
                     trained_names: tuple[str, ...] | None = None) -> tuple[list[int] | None, str]:
    """Map the file's labels onto the model's class ids: by ``config.label2id`` names (or a ``probattn train``
    model's label names), else integer labels."""
    config = getattr(model, "config", None)
    if trained_names is not None:
        label2id, num_labels = {name: i for i, name in enumerate(trained_names)}, len(trained_names)
    else:
        label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
        num_labels = int(getattr(config, "num_labels", 0) or 0)
    if label_names and all(name in label2id for name in label_names):
        return [label2id[label_names[y]] for y in labels], ""
    if label_names and all(name.lstrip("-").isdigit() and 0 <= int(name) < num_labels for name in label_names):
        return [int(label_names[y]) for y in labels], ""
    return None, (f"the data's labels {list(label_names)} match neither the model's label names "
                  f"{sorted(label2id)} nor its class ids 0..{num_labels - 1}")


def _is_hf_directory(path: Path) -> bool:
    """A Hugging Face model directory: its config.json names a ``model_type`` (a `probattn train` output's does not)."""
    try:
        return "model_type" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def _load(name: str, trust_remote_code: bool = False):
    """``(model, tokenizer or encoder, label names of a probattn train model or None)`` for any MODEL."""
    path = Path(name)
    if name not in REGISTRY and path.is_dir() and not _is_hf_directory(path):
        from probattn.training.modeling import load_trained

        try:
            model, encoder, label_names = load_trained(path, trust_remote_code=trust_remote_code)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{name}: a directory that is neither a Hugging Face model (config.json) nor a "
                                    f"`probattn train` output ({exc})") from None
        if encoder.state.get("kind") == "minilm":  # an HF tokenizer gives readable tokens
            from probattn.hf.pretrained import load_tokenizer

            encoder = load_tokenizer("minilm")
        return model, encoder, tuple(label_names)
    if name not in REGISTRY and not path.exists():
        raise FileNotFoundError(f"MODEL {name!r} is neither a registered model ({', '.join(REGISTRY)}) nor an "
                                "existing directory or .gguf file")
    from probattn.hf import load_model

    model, tokenizer = load_model(name, task="encoder" if name in REGISTRY else None,
                                  trust_remote_code=trust_remote_code)
    return model, tokenizer, None


def _renormalize(model, normalization: str, args) -> None:
    """Switch every attention layer of ``model`` to ``normalization`` (weights unchanged)."""
    options = {"sinkhorn_iters": args.sinkhorn_iters,
               "hybrid_alpha": args.hybrid_alpha if normalization == "hybrid" else None}
    if hasattr(getattr(model, "config", None), "model_type"):
        from probattn.hf import convert

        convert(model, normalization=normalization, **options)
        return
    from probattn.nn import MultiheadAttention

    for module in model.modules():
        if isinstance(module, MultiheadAttention):
            module.configure(normalization=normalization, sinkhorn_iters=options["sinkhorn_iters"],
                             **({"hybrid_alpha": options["hybrid_alpha"]} if options["hybrid_alpha"] is not None
                                else {}))


def _diagnose_one(name: str, normalization: str, args, texts, labels, label_names, device) -> Diagnosis:
    model, tokenizer, trained_names = _load(name, getattr(args, "trust_remote_code", False))
    if normalization != KEEP:
        _renormalize(model, normalization, args)
    model_labels, note = (None, "the data has no label column") if labels is None else _model_label_ids(
        model, label_names, labels, trained_names)
    result = collect(model, tokenizer, texts, labels=model_labels, label=name,
                     batch_size=args.batch_size, max_length=args.max_length, device=device,
                     progress=not args.no_progress, no_labels_reason=note,
                     pairwise_examples=args.pairwise_examples or None)
    short = name if name in REGISTRY else (Path(name).name or name)
    result.label = f"{short} ({result.normalization})"
    return result


def _mean(values) -> float | None:
    return None if values is None else float(np.mean(values))


LAYER_COLUMNS = [
    ("EA<0.1", "explained_away_0.1"), ("EA<0.01", "explained_away_0.01"), ("min mass", "min_incoming_mass"),
    ("sinks", "sink_fraction"), ("sink share", "sink_share"),
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


GLOSSARY = [
    ("incoming mass m̃", "m̃_j = m_j / u_j: the attention key j receives, m_j = Σ_i A_ij over the queries that may "
     "see it, divided by u_j = Σ_i 1/n_i, what it would receive if every query spread its attention uniformly over "
     "the n_i keys it may see. Without a causal mask u_j = N_q/N_k; under a causal mask key j is seen by the N − j "
     "later queries only, and u_j accounts for it. 1 = fair share on every model; uniform attention gives 1 "
     "everywhere."),
    ("EA<τ (explained away)", "fraction of keys with m̃ < τ (τ = 0.1, 0.01), over all keys and examples: keys "
     "that barely reach the next layer. Doubly-normalized attention guarantees m̃ ≥ 1/N_q."),
    ("min mass", "smallest m̃ seen over the data."),
    ("sinks", f"fraction of keys with m̃ ≥ {SINK_THRESHOLD:g} (three times the fair share): tokens such as [CLS], "
     "[SEP] or a decoder's first token that absorb attention; reported apart from explained-away keys. Under a "
     "causal mask the first key reaches at most m̃ = N/H_N (H_N = 1 + 1/2 + … + 1/N; 4.7 at N = 16), hence 3; "
     "and a sink must also hold 3 times its share of all the attention (m_j·N_k/N_q ≥ 3), so that a last token "
     "attending to itself, the only query that sees it, is no sink."),
    ("sink share", "mean over queries of the attention mass that lands on sink keys."),
    ("entropy", "row entropy −Σ_j A_ij ln A_ij / ln n_i (n_i = keys the query may see; queries that see one key "
     "are left out), mean over queries: 1 = uniform, 0 = one-hot."),
    ("attn sim", "1 − Jensen–Shannon divergence (bits) between two heads' attention rows, mean over queries and "
     "head pairs (1 = identical heads)."),
    ("head clusters", "heads of all layers grouped by average-linkage clustering of their Jensen–Shannon "
     "divergences on the first 4 examples, and laid out in 2-D by classical MDS of sqrt(JS), as in Clark et al. "
     "(2019), What does BERT look at?"),
    ("output CKA", "linear CKA between heads' outputs over tokens (1 = same features up to rotation and scale)."),
    ("Lin", "‖AAᵀ − I‖_F over the heads' rows at each query (the repulsive-attention authors' code)."),
    ("param cos", "mean pairwise cosine between heads' query / key / value projection parameters (n/a for fused "
     "projections)."),
    ("q/k MMD², q/k dist", "Gaussian-kernel MMD² (median bandwidth) between a head's query and key clouds per "
     "sequence, and the distance of their means."),
    ("embedding cosine", "(--compare) cosine between the two models' mean-pooled last hidden states of each "
     "example (needs the same hidden size)."),
]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def _doubly_note(r: Diagnosis) -> str:
    if r.normalization != "doubly":
        return ""
    values = [v for layer in r.layers for v in layer.get("explained_away_0.1", [])]
    longest = max(len(t) for t in r.token_examples) if r.token_examples else 0
    if values and max(values) == 0:
        return (f"{r.label}: explained away is 0 here by construction of doubly-normalized attention, which "
                "normalizes every key's column before the rows and so keeps m̃ ≥ 1/N_q (a guarantee below τ = 0.1 "
                f"for sequences of up to 10 tokens; measured 0 on these examples, the first of which has {longest}).")
    return (f"{r.label}: doubly-normalized attention keeps m̃ ≥ 1/N_q by construction; the keys counted here lie in "
            "longer sequences, where 1/N_q < τ.")


def _cluster_table(r: Diagnosis) -> tuple[list[list], np.ndarray] | None:
    if r.head_distance is None:
        return None
    from probattn.metrics import head_clusters

    heads = [layer["heads"] for layer in r.layers]
    distance = torch.as_tensor(r.head_distance, dtype=torch.float64)
    distance = (0.5 * (distance + distance.T)).fill_diagonal_(0.0)
    k = min(6, len(distance))
    labels = head_clusters(distance, k).numpy()
    names = [f"L{i}H{h}" for i, n in enumerate(heads) for h in range(n)]
    rows = []
    for c in range(k):
        members = [names[i] for i in np.flatnonzero(labels == c)]
        rows.append([r.label, c, len(members), " ".join(members[:12]) + (" …" if len(members) > 12 else "")])
    return rows, labels


def _embedding_cosine(a: Diagnosis, b: Diagnosis) -> tuple[np.ndarray | None, str]:
    if a.embeddings is None or b.embeddings is None:
        return None, "n/a — a model returned no hidden states"
    if a.embeddings.shape != b.embeddings.shape:
        return None, f"n/a — hidden sizes differ ({a.embeddings.shape[1]} vs {b.embeddings.shape[1]})"
    x, y = torch.as_tensor(a.embeddings, dtype=torch.float64), torch.as_tensor(b.embeddings, dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(x, y, dim=1).numpy()
    return cos, (f"mean {cos.mean():.4f}, median {np.median(cos):.4f}, min {cos.min():.4f} over {len(cos)} "
                 "examples")


def _token_markdown(r: Diagnosis) -> str:
    """Per example: tokens that are sinks / explained away in at least half of all layers × heads."""
    lines = [f"Token view of {r.label} (tokens that are sinks / explained away in ≥ half of all layer × head "
             "pairs; the HTML report has the interactive view):", ""]
    for e, tokens in enumerate(r.token_examples):
        masses = np.concatenate([layer[e] for layer in r.token_mass if e < len(layer)])  # (ΣH, N)
        sink = np.concatenate([layer[e] for layer in r.token_sinks if e < len(layer)]).mean(0) >= 0.5
        away = (masses < 0.1).mean(0) >= 0.5
        text = " ".join(f"**{t}**" if s else (f"~~{t}~~" if a else t) for t, s, a in zip(tokens, sink, away))
        lines.append(f"- example {e}: {text}")
    lines += ["", "(**bold**: sink, ~~struck~~: explained away)"]
    return "\n".join(lines)


def _build_report(results: list[Diagnosis], source: str, args) -> tuple[Report, dict]:
    """The report, and extra JSON (head clusters, embedding cosine) for metrics.json."""
    from probattn.report import figures, views

    report = Report("probattn diagnose report")
    extra: dict = {"head_clusters": {}}
    runs = [(r.label, r.layers) for r in results]
    report.text(f"Models: {', '.join(r.label for r in results)}. Data: {source}, {results[0].examples} examples "
                f"(first rows), truncated to {args.max_length} tokens. Statistics are accumulated over all "
                "examples, except attn sim, Lin and q/k MMD²/dist: over the first "
                f"{args.pairwise_examples or 'all'} examples (--pairwise-examples); per-layer values are means over "
                "heads unless stated.")
    for r in results:
        if any(layer.get("causal") for layer in r.layers):
            report.text(f"{r.label}: causal attention layers; incoming mass and entropy use the causal-aware "
                        "normalizations (see the glossary).")
        note = _doubly_note(r)
        if note:
            report.text(note)
    report.heading("Summary (means over layers)")
    report.table(["model", *(c for c, _ in LAYER_COLUMNS), "ECE"], _summary_rows(results))
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
    report.heading("Explained away and sinks")
    report.image("explained_away.png", figures.explained_away_grid(runs, 0.1),
                 "fraction of keys explained away (normalized incoming mass < 0.1), layer x head")
    report.image("sinks.png", figures.layer_head_grid(runs, "sink_fraction", f"fraction of keys that are sinks "
                 f"(m̃ ≥ {SINK_THRESHOLD:g})", cmap="Oranges"), "fraction of keys that are sinks, layer x head")
    report.image("incoming_mass.png", figures.mass_histograms(runs),
                 "histograms of log10 normalized incoming mass per layer")
    report.html(views.token_view("tokens", [{"label": r.label, "tokens": r.token_examples, "mass": r.token_mass,
                                             "sinks": r.token_sinks} for r in results], sink=SINK_THRESHOLD),
                "\n\n".join(_token_markdown(r) for r in results))
    report.heading("Heads")
    report.image("entropy.png", figures.layer_head_grid(runs, "entropy", "normalized attention entropy per head",
                                                        cmap="viridis"), "attention entropy, layer x head")
    attention_sim = figures.similarity_heatmaps(runs, "attention_similarity", "head similarity of attention maps "
                                                "(1 - Jensen-Shannon divergence, bits)")
    report.image("attention_similarity.png", attention_sim, "head x head similarity of attention maps per layer")
    output_sim = figures.similarity_heatmaps(runs, "output_cka", "head similarity of outputs (linear CKA)")
    if output_sim is None:
        report.text("Head-output similarity: n/a — the attention layers expose no per-head outputs.")
    else:
        report.image("output_cka.png", output_sim, "head x head linear CKA of head outputs per layer")
    for i, r in enumerate(results):
        clustered = _cluster_table(r)
        if clustered is None:
            continue
        rows, labels = clustered
        extra["head_clusters"][r.label] = labels.tolist()
        report.table(["model", "cluster", "heads", "members"], rows)
        report.image(f"head_clusters_{i}.png", figures.head_clusters_figure(
            r.head_distance, [layer["heads"] for layer in r.layers], labels, r.label),
            f"{r.label}: heads of all layers by Jensen–Shannon distance (classical MDS), coloured by layer")
    if len(results) == 2:
        report.heading("Differences")
        diff = figures.difference_grid(runs[0], runs[1], {"explained_away_0.1": "EA<0.1", "sink_fraction": "sinks",
                                                          "entropy": "entropy"})
        if diff is None:
            report.text("Difference plots: n/a — the two models differ in layers or heads.")
        else:
            report.image("difference.png", diff, "B − A per layer and head: explained away, sinks, entropy")
        cos, text = _embedding_cosine(*results)
        report.text(f"Embedding cosine between {results[0].label} and {results[1].label}: {text}.")
        extra["embedding_cosine"] = None if cos is None else {"mean": float(cos.mean()), "min": float(cos.min()),
                                                              "per_example": cos.tolist()}
        if cos is not None:
            report.image("embedding_cosine.png", figures.embedding_cosine(cos, (results[0].label, results[1].label)),
                         "per-example cosine of the two models' mean-pooled last hidden states")
    report.heading("Attention of the first example")
    report.html(views.head_map_view("heads", [{"label": r.label, "tokens": r.example_tokens,
                                               "maps": r.example_attention} for r in results]),
                "The HTML report has an interactive per-head view (choose the model, layer and head).")
    report.image("example_attention.png",
                 figures.example_maps(runs, [r.example_maps for r in results], [r.example_tokens for r in results]),
                 "attention map of the first example per layer (mean over heads)")
    for i, r in enumerate(results):
        for page, png in enumerate(figures.head_maps(r.example_attention, r.example_tokens, r.label,
                                                     args.layers_per_page)):
            report.image(f"heads_{i}_{page}.png", png, f"{r.label}: attention per head of the first example, "
                         f"page {page + 1}")
    report.heading("Per layer")
    report.table(["model", "layer", *(c for c, _ in LAYER_COLUMNS)], [row for r in results for row in _layer_rows(r)])
    report.heading("Glossary")
    report.table(["term", "definition"], [list(row) for row in GLOSSARY])
    stems = _export_stems(results)
    report.text("bertviz: " + ", ".join(f"{s}.safetensors / {s}.json" for s in stems) + " hold the first "
                "example's attention (a tuple of per-layer (1, heads, N, N) tensors) and its tokens. In a notebook: "
                "from probattn.report.bertviz import load_attention; attention, tokens = load_attention(DIR + "
                f"'/{stems[0]}.safetensors'); from bertviz import head_view; head_view(attention, tokens).")
    return report, extra


def _export_stems(results: list[Diagnosis]) -> list[str]:
    return ["attention"] if len(results) == 1 else [f"attention-{i}-{_slug(r.label)}" for i, r in enumerate(results)]


def _reliability_png(results: list[Diagnosis], source: str) -> bytes:
    """The reliability diagram shared with ``probattn compare`` (:func:`probattn.report.figures.reliability_figure`)."""
    from probattn.report.figures import reliability_figure

    runs = [{"variant": r.label, "reliability": {"data": asdict(r.calibration)}} for r in results]
    with tempfile.TemporaryDirectory() as tmp:
        path = reliability_figure(runs, [r.label for r in results], {"data": source}, Path(tmp) / "reliability.png")
        return Path(path).read_bytes()


def _to_json(results: list[Diagnosis], source: str, args, extra: dict | None = None) -> dict:
    models = []
    for r in results:
        calibration = asdict(r.calibration) if r.calibration else {"status": "n/a", "reason": r.calibration_note}
        models.append({"label": r.label, "examples": r.examples, "seconds": r.seconds,
                       "layer_names": r.layer_names, "layers": r.layers, "calibration": calibration})
    settings = {k: v for k, v in vars(args).items() if not k.startswith("_") and k != "command"}
    return {"data": source, "settings": settings, "models": models, **(extra or {})}


def run(args: argparse.Namespace) -> int:
    models = _models(args)
    output = Path(args.output)
    existing = [name for name in REPORT_FILES if (output / name).exists()]
    if existing and not args.overwrite:
        raise ValueError(f"--output {output} already holds {', '.join(existing)}; choose another directory or "
                         "pass --overwrite")
    from probattn.io import claim_output_dir, write_text

    # every argument and the data are checked before the output folder is claimed: a refused command creates nothing
    texts, labels, label_names = _read_data(args)
    source = SAMPLE.name if args.data == "sample" else str(args.data)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here; use --device cpu")
    claim_output_dir(output, command="probattn diagnose", overwrite=args.overwrite, will_write=REPORT_FILES)
    results = [_diagnose_one(name, norm, args, texts, labels, label_names, device) for name, norm in models]
    report, extra = _build_report(results, source, args)
    report.write(output)
    from probattn.report.bertviz import export_attention

    for stem, r in zip(_export_stems(results), results):
        export_attention(output / f"{stem}.safetensors", r.example_attention, r.example_tokens, model=r.label,
                         layer_names=r.layer_names)
    write_text(output / "metrics.json", json.dumps(_to_json(results, source, args, extra), indent=1))
    print(format_table(["model", *(c for c, _ in LAYER_COLUMNS), "ECE"], _summary_rows(results)))
    for r in results:
        if r.calibration is None:
            print(f"calibration of {r.label}: n/a ({r.calibration_note})")
    print(f"report: {output / 'report.md'}, {output / 'report.html'}, {output / 'metrics.json'}")
    return 0
