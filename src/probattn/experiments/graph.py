"""Graph attention on the WordNet 3.0 noun graph: node classification (the alignment paper's GAT experiment, §5).

The alignment-attention paper adds its key/query alignment to graph attention networks for node classification
(Cora/Citeseer/Pubmed). Those ship in no package; here the graph is WordNet's noun hypernym graph (Debian
``wordnet-base``: 82,115 synsets, 84,427 hypernym edges, used in both directions), the task is the synset's
lexicographer class (26), and node features are the glosses' TF-IDF reduced by SVD (:mod:`probattn.data.wordnet`).
One fixed random split 60/20/20 (the validation part is unused: every run trains a fixed number of epochs).

Model: :class:`probattn.models.GraphTransformer` (pre-norm blocks of :class:`probattn.nn.GraphAttention`), trained
full-batch with AdamW. Variants: ``softmax``, ``doubly``, ``hybrid`` (alpha 0.5), ``repulsive`` (softmax + SVGD
over each layer's Q/K/V heads, :class:`probattn.repulsive.RepulsiveHeads`), ``alignment`` (softmax + CT alignment,
:func:`probattn.alignment.attach_alignment`). Baselines in the same run: an MLP on the same features (same
seeds) and the majority class of the training nodes.

Measured per run on the test nodes: accuracy, ECE (15 bins), NLL; on all edges of the trained model (mean over
layers and heads): the explained-away fraction of edges (edges into targets of in-degree >= 2 that get < 0.1 of
their fair share 1/in-degree) and of source nodes (total outgoing weight < 0.1 of the fair total), head diversity (pairwise JS divergence between heads, bits); CPU seconds per training
epoch (``time.process_time``, all threads). The table gives means with 95% Student-t intervals over seeds and the
paired bootstrap over (seeds x test nodes) against ``softmax`` (:func:`probattn.metrics.paired_bootstrap`).

Run it with ``probattn experiment graph``; ``--sample`` uses the 203-synset sample shipped with probattn.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from probattn.experiments.results import load_runs, run_path, save_run, write_json
from probattn.io import claim_output_dir, write_text

__all__ = ["VARIANTS", "add_arguments", "run", "run_graph", "train_one"]

VARIANTS = ("softmax", "doubly", "hybrid", "sinkhorn", "repulsive", "alignment", "mlp")
DEFAULT_VARIANTS = ("softmax", "doubly", "hybrid", "repulsive", "alignment", "mlp")
BASELINE = "softmax"


def prepare_graph(path: str | None, sample: bool, features: int) -> dict[str, Any]:
    """Load the graph, build features, the undirected edge list and the fixed split."""
    from probattn.data.wordnet import SAMPLE_PATH, gloss_features, load_wordnet_nouns, node_split

    graph = load_wordnet_nouns(SAMPLE_PATH if sample else path)
    src, dst = graph.edge_index
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])  # hyponym <-> hypernym
    return {"x": gloss_features(graph.glosses, dim=features), "y": graph.labels, "edge_index": edge_index,
            "split": node_split(graph.num_nodes, seed=0), "num_nodes": graph.num_nodes}


def _attention_diagnostics(weights: list[Tensor], edge_index: Tensor, num_nodes: int) -> dict[str, float]:
    from probattn.metrics.graph import (
        edge_explained_away_fraction,
        edge_head_js_divergence,
        source_explained_away_fraction,
    )

    away, sources, diversity = [], [], []
    for w in weights:
        away.append(float(edge_explained_away_fraction(w, edge_index, num_nodes, threshold=0.1).mean()))
        sources.append(float(source_explained_away_fraction(w, edge_index, num_nodes, threshold=0.1).mean()))
        js = edge_head_js_divergence(w, edge_index, num_nodes)
        h = js.shape[0]
        diversity.append(float(js.sum() / (h * (h - 1))) if h > 1 else math.nan)
    return {"explained_away": float(np.mean(away)), "sources_explained_away": float(np.mean(sources)),
            "head_diversity": float(np.mean(diversity))}


def train_one(data: dict[str, Any], variant: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one (variant, seed) and return the run record (metrics, per-node test scores, timings)."""
    from probattn.metrics import calibration
    from probattn.models import GraphTransformer, MLPClassifier

    torch.manual_seed(seed)
    x, y, edges, split = data["x"], data["y"], data["edge_index"], data["split"]
    classes = int(y.max()) + 1
    if variant == "mlp":
        model: nn.Module = MLPClassifier(x.shape[1], classes, hidden=args.hidden, dropout=args.dropout)
    else:
        normalization = variant if variant in ("doubly", "hybrid", "sinkhorn") else "softmax"
        model = GraphTransformer(x.shape[1], classes, hidden=args.hidden, num_heads=args.heads,
                                 num_layers=args.layers, dropout=args.dropout, normalization=normalization)
    params: Any = model.parameters()
    if variant == "alignment":
        from probattn.alignment import alignment_loss, alignment_parameter_groups, attach_alignment

        attach_alignment(model, "ct", weight=args.alignment_weight, max_tokens=args.alignment_tokens)
        params = alignment_parameter_groups(model)
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    if variant == "repulsive":
        from probattn.repulsive import RepulsiveHeads

        RepulsiveHeads(model, alpha=args.repulsive_alpha, seed=seed).attach(optimizer)
    train = split["train"]
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    for _ in range(args.epochs):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x, edges)[train], y[train])
        if variant == "alignment":
            loss = loss + alignment_loss(model, distance_batch=0)[0]
        loss.backward()
        optimizer.step()
    cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    eval_cpu, eval_wall = time.process_time(), time.perf_counter()
    model.eval()
    with torch.no_grad():
        if variant == "mlp":
            logits, weights = model(x, edges), []
        else:
            logits, weights = model(x, edges, need_weights=True)
    test = split["test"]
    probs = logits[test].softmax(-1)
    correct = (probs.argmax(-1) == y[test]).double()
    nll = -probs.gather(1, y[test, None]).clamp_min(1e-12).log()[:, 0].double()
    metrics = {"accuracy": float(correct.mean()), "ece": float(calibration(probs, y[test]).ece),
               "nll": float(nll.mean()), "cpu_s_per_epoch": cpu / args.epochs, "wall_s_per_epoch": wall / args.epochs}
    if weights:
        metrics.update(_attention_diagnostics(weights, edges, data["num_nodes"]))
    metrics["run_cpu_s"] = cpu + time.process_time() - eval_cpu  # training + evaluation
    metrics["run_wall_s"] = wall + time.perf_counter() - eval_wall
    return {"variant": variant, "seed": seed, "metrics": metrics,
            "scores": {"correct": correct.tolist(), "nll": [round(v, 6) for v in nll.tolist()]}}


def _interval(values: Sequence[float], digits: int) -> str:
    from probattn.metrics import mean_interval

    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "n/a"
    mean, low, high = mean_interval(finite)
    return f"{mean:.{digits}f}" if not math.isfinite(low) else f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


COLUMNS = (("accuracy", "accuracy ↑", 3), ("ece", "ECE ↓", 3), ("nll", "NLL ↓", 3),
           ("explained_away", "edges explained away ↓", 3), ("sources_explained_away", "sources explained away ↓", 4),
           ("head_diversity", "head diversity (JS, bits) ↑", 3),
           ("cpu_s_per_epoch", "CPU s / epoch", 2))


def summarize_graph(runs: list[dict[str, Any]], variants: Sequence[str], majority: float,
                    n_resamples: int) -> tuple[str, dict[str, Any]]:
    """The Markdown tables and a JSON summary: means [95% interval] per variant; paired tests vs softmax."""
    from probattn.metrics import mean_interval, paired_bootstrap

    by_variant = {v: sorted((r for r in runs if r["variant"] == v), key=lambda r: r["seed"]) for v in variants}
    header = ["variant", "seeds", *[label for _, label, _ in COLUMNS]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary: dict[str, Any] = {"variants": {}, "paired_vs_softmax": {}, "majority_accuracy": majority}
    for v, rs in by_variant.items():
        if not rs:
            continue
        cells = [v if v != "mlp" else "mlp (no graph, baseline)", str(len(rs))]
        summary["variants"][v] = {}
        for key, _, digits in COLUMNS:
            values = [r["metrics"].get(key, math.nan) for r in rs]
            cells.append(_interval(values, digits))
            finite = [x for x in values if math.isfinite(x)]
            summary["variants"][v][key] = list(mean_interval(finite)) if finite else None
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"| majority class (baseline) | – | {majority:.3f} |" + " |" * (len(COLUMNS) - 1))
    table = "\n".join(lines)
    base = by_variant.get(BASELINE, [])
    paired = ["| variant vs softmax | Δ accuracy [95% CI] | p | verdict | Δ NLL [95% CI] | p | verdict |",
              "|---|---|---|---|---|---|---|"]
    for v, rs in by_variant.items():
        if v == BASELINE or not rs or not base:
            continue
        seeds = sorted({r["seed"] for r in rs} & {r["seed"] for r in base})
        if not seeds:
            continue
        row, record = [v], {}
        for key, higher in (("correct", True), ("nll", False)):
            a = [next(r for r in base if r["seed"] == s)["scores"][key] for s in seeds]
            b = [next(r for r in rs if r["seed"] == s)["scores"][key] for s in seeds]
            c = paired_bootstrap(a, b, higher_is_better=higher, n_resamples=n_resamples)
            row += [f"{c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}]", f"{c.p_value:.3g}", c.verdict]
            record[key] = {"difference": c.difference, "low": c.low, "high": c.high, "p_value": c.p_value,
                           "verdict": c.verdict, "seeds": seeds}
        paired.append("| " + " | ".join(row) + " |")
        summary["paired_vs_softmax"][v] = record
    return table + "\n\n" + "\n".join(paired), summary


def _figures(summary: dict[str, Any], output: Path) -> list[Path]:
    from probattn.experiments.plots import interval_figure

    rows = summary["variants"]
    graph_rows = [v for v in rows if v != "mlp"]
    paths = []
    lines = {"majority class": summary["majority_accuracy"]}
    if rows.get("mlp") and rows["mlp"]["accuracy"]:
        lines["MLP (no graph)"] = rows["mlp"]["accuracy"][0]
    acc = [rows[v]["accuracy"] for v in graph_rows]
    paths.append(interval_figure(output / "accuracy.png", graph_rows, acc, ylabel="test accuracy",
                                 title="WordNet nouns: accuracy (mean, 95% interval over seeds)", lines=lines))
    away = [rows[v].get("explained_away") for v in graph_rows]
    if all(a is not None for a in away):
        paths.append(interval_figure(output / "explained_away.png", graph_rows, away,
                                     ylabel="edges < 0.1 of fair share", title="Explained-away edges"))
    return paths


def run_graph(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Train every (variant, seed), saving each run as it finishes; then the tables, JSON and figures."""
    output = claim_output_dir(args.output, command="probattn experiment graph",
                              overwrite=getattr(args, "overwrite", False), resume=args.resume,
                              will_write=("results.md", "results.json"))
    prep_cpu, prep_wall = time.process_time(), time.perf_counter()
    data = prepare_graph(args.wordnet, args.sample, args.features)
    prep_cpu, prep_wall = time.process_time() - prep_cpu, time.perf_counter() - prep_wall
    train_labels = data["y"][data["split"]["train"]]
    majority_class = int(torch.bincount(train_labels).argmax())
    majority = float((data["y"][data["split"]["test"]] == majority_class).double().mean())
    for seed in args.seeds:
        for variant in args.variants:
            if args.resume and run_path(output, variant, seed).is_file():
                continue
            record = train_one(data, variant, seed, args)
            save_run(output, record)
            m = record["metrics"]
            print(f"{variant} seed {seed}: accuracy {m['accuracy']:.4f} ECE {m['ece']:.4f} "
                  f"CPU {m['cpu_s_per_epoch']:.2f} s/epoch", flush=True)
    runs = [r for r in load_runs(output) if r["variant"] in args.variants and r["seed"] in args.seeds]
    table, summary = summarize_graph(runs, args.variants, majority, args.resamples)
    total_cpu = sum(r["metrics"]["run_cpu_s"] for r in runs)  # each run's own time, also for runs resumed
    total_wall = sum(r["metrics"]["run_wall_s"] for r in runs)
    summary.update({"command": command, "nodes": data["num_nodes"], "edges": int(data["edge_index"].shape[1]),
                    "test_nodes": len(data["split"]["test"]), "prepare_cpu_s": prep_cpu, "prepare_wall_s": prep_wall,
                    "runs_cpu_s": total_cpu, "runs_wall_s": total_wall, "threads": torch.get_num_threads()})
    figures = _figures(summary, output)
    text = "\n".join([
        "# Graph attention on the WordNet noun graph", "", f"`{command}`", "",
        f"{data['num_nodes']:,} nodes, {summary['edges']:,} directed edges (hypernym edges both ways), "
        f"{summary['test_nodes']:,} test nodes; {torch.get_num_threads()} threads; features {prep_cpu:.0f} s CPU "
        f"({prep_wall:.0f} s wall); training + evaluation of the {len(runs)} runs {total_cpu:.0f} s CPU "
        f"({total_wall:.0f} s wall; each run's own process time, summed).", "",
        "Means with 95% Student-t intervals over seeds; paired bootstrap over seeds × test nodes "
        f"({args.resamples} resamples) against softmax; a difference is called only when p < 0.05.", "",
        table, "", *[f"![{p.stem}]({p.name})" for p in figures], ""])
    write_text(output / "results.md", text)
    write_json(output / "results.json", summary)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS), choices=VARIANTS, metavar="NAME",
                        help=f"default: {' '.join(DEFAULT_VARIANTS)} (mlp = the no-graph baseline); "
                             f"available: {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default 0 1 2)")
    parser.add_argument("--epochs", type=int, default=40, help="full-batch training epochs (default 40)")
    parser.add_argument("--lr", type=float, default=0.01, help="AdamW learning rate (default 0.01)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--hidden", type=int, default=32, help="hidden width (default 32)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    parser.add_argument("--layers", type=int, default=1, help="graph attention blocks (default 1)")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--features", type=int, default=128, help="SVD dimensions of the gloss TF-IDF (default 128)")
    parser.add_argument("--repulsive-alpha", type=float, default=0.01, help="SVGD repulsion α (default 0.01)")
    parser.add_argument("--alignment-weight", type=float, default=0.01, help="CT alignment weight λ (default 0.01)")
    parser.add_argument("--alignment-tokens", type=int, default=512,
                        help="nodes sampled per layer and step for the CT term (default 512)")
    parser.add_argument("--resamples", type=int, default=2000, help="paired bootstrap resamples (default 2000)")
    parser.add_argument("--wordnet", default=None, help="data.noun file or folder (default /usr/share/wordnet)")
    parser.add_argument("--sample", action="store_true", help="use the 203-synset sample shipped with probattn")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the scatter ops gain little from threads on a shared CPU)")
    parser.add_argument("--output", default="probattn-experiments/graph", help="output folder")
    parser.add_argument("--resume", action="store_true", help="skip the runs already saved in --output")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in --output: delete the files probattn wrote there (never other files)")


def run(args: argparse.Namespace) -> int:
    for name in ("epochs", "hidden", "heads", "layers", "features", "threads", "resamples", "alignment_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.hidden % args.heads:
        raise ValueError(f"--hidden ({args.hidden}) must be divisible by --heads ({args.heads})")
    if BASELINE not in args.variants:
        raise ValueError("--variants must include softmax: every variant is tested against it")
    torch.set_num_threads(args.threads)
    typed = sys.argv[1:3] == ["experiment", "graph"]
    command = shlex.join(["probattn", *(sys.argv[1:] if typed else ["experiment", "graph"])])
    summary = run_graph(args, command)
    print((Path(args.output) / "results.md").read_text(encoding="utf-8"))
    print(f"CPU {summary['prepare_cpu_s'] + summary['runs_cpu_s']:.0f} s, "
          f"wall {summary['prepare_wall_s'] + summary['runs_wall_s']:.0f} s")
    return 0
