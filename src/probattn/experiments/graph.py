"""Graph attention on the WordNet 3.0 noun graph: node classification (the alignment paper's GAT experiment, §5).

The alignment-attention paper adds its key/query alignment to graph attention networks for node classification
(Cora/Citeseer/Pubmed). Those ship in no package; here the graph is WordNet's noun hypernym graph (Debian
``wordnet-base``: 82,115 synsets, 84,427 hypernym edges, used in both directions), the task is the synset's
lexicographer class (26), and node features are the glosses' TF-IDF reduced by SVD (:mod:`probattn.data.wordnet`).
One fixed random split 60/20/20; the validation part drives model selection (``--eval-every`` epochs, the best
weights kept, ``--patience``; ``--eval-every 0`` trains a fixed number of epochs as in 0.2.0).

Model: :class:`probattn.models.GraphTransformer` (pre-norm blocks of :class:`probattn.nn.GraphAttention`), trained
full-batch with AdamW. Variants: ``softmax``, ``doubly``, ``hybrid`` (alpha 0.5), ``repulsive`` (softmax + SVGD
over each layer's Q/K/V heads, :class:`probattn.repulsive.RepulsiveHeads`), ``alignment`` (softmax + CT alignment,
:func:`probattn.alignment.attach_alignment`). Baselines in the same run: an MLP on the same features (same
seeds) and the majority class of the training nodes.

Measured per run on the test nodes: accuracy, ECE (15 bins), NLL; on all edges of the trained model (mean over
layers and heads): the explained-away fraction of edges (edges into targets of in-degree >= 2 that get < 0.1 of
their fair share 1/in-degree) and of source nodes (total outgoing weight < 0.1 of the fair total), head diversity (pairwise JS divergence between heads, bits); CPU seconds per training
epoch (``time.process_time``, all threads). A study of :mod:`probattn.experiments.runner`: intervals, paired tests
against ``softmax`` (Holm-corrected), the baseline-first verdict and the files come from the runner.

Run it with ``probattn experiment graph``; ``--sample`` uses the 203-synset sample shipped with probattn.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from probattn.experiments import runner
from probattn.experiments.runner import Claim, Metric, RunSpec, Study, Table

__all__ = ["STUDY", "VARIANTS", "GraphStudy", "add_arguments", "run", "train_one"]

VARIANTS = ("softmax", "doubly", "hybrid", "sinkhorn", "repulsive", "alignment", "mlp")
DEFAULT_VARIANTS = ("softmax", "doubly", "hybrid", "repulsive", "alignment", "mlp")


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
    from probattn.training.selection import BestCheckpoint

    train, validation = split["train"], split["val"]
    selection = BestCheckpoint(args.patience) if args.eval_every else None
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    epochs = 0
    for epoch in range(args.epochs):
        model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x, edges)[train], y[train])
        if variant == "alignment":
            loss = loss + alignment_loss(model, distance_batch=0)[0]
        loss.backward()
        optimizer.step()
        epochs = epoch + 1
        if selection is not None and (epochs % args.eval_every == 0 or epochs == args.epochs):
            model.eval()
            with torch.no_grad():
                score = float((model(x, edges)[validation].argmax(-1) == y[validation]).double().mean())
            if selection.update(epochs, score, model):
                break
    if selection is not None:
        selection.restore(model)
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
    test_metrics = {"accuracy": float(correct.mean()), "ece": float(calibration(probs, y[test]).ece),
                    "nll": float(nll.mean())}
    metrics = {"cpu_s_per_epoch": cpu / epochs, "wall_s_per_epoch": wall / epochs}
    if weights:
        metrics.update(_attention_diagnostics(weights, edges, data["num_nodes"]))
    metrics["run_cpu_s"] = cpu + time.process_time() - eval_cpu  # training + evaluation
    metrics["run_wall_s"] = wall + time.perf_counter() - eval_wall
    return {"metrics": metrics, "epochs": epochs, "selection": selection.record() if selection else None,
            "sets": {"test": {"metrics": test_metrics,
                              "scores": {"correct": correct.tolist(), "nll": nll.tolist()}}}}


ACCURACY = Metric("accuracy", "accuracy", True, bounds=(0.0, 1.0), score="correct")
TABLES = (
    Table("Test nodes", (ACCURACY, Metric("ece", "ECE", False, bounds=(0.0, 1.0)),
                         Metric("nll", "NLL", False, bounds=(0.0, math.inf), score="nll")), "test"),
    Table("Attention on all edges (mean over layers and heads)", (
        Metric("explained_away", "edges explained away", False, bounds=(0.0, 1.0)),
        Metric("sources_explained_away", "sources explained away", False, 4, bounds=(0.0, 1.0)),
        Metric("head_diversity", "head diversity (JS, bits)", True, bounds=(0.0, 1.0))), None),
    Table("Cost", (Metric("cpu_s_per_epoch", "CPU s / epoch", False, 2, bounds=(0.0, math.inf)),), None, tests=False),
)
CLAIMS = (
    Claim("alignment", "accuracy up (the alignment paper's GAT result)", "accuracy", "up"),
    Claim("doubly", "accuracy up", "accuracy", "up"),
    Claim("doubly", "edges explained away (< 0.1 of fair share) down", "explained_away", "down", None),
    Claim("hybrid", "accuracy up", "accuracy", "up"),
    Claim("repulsive", "head diversity up", "head_diversity", "up", None),
)
NUMBERS = ("epochs", "hidden", "heads", "layers", "features", "alignment_tokens")


class GraphStudy(Study):
    """``probattn experiment graph``."""

    name = "experiment graph"
    title = "Graph attention on the WordNet noun graph"
    output = "probattn-experiments/graph"
    variants: ClassVar[dict[str, Any]] = {v: {} for v in VARIANTS}
    default_variants = DEFAULT_VARIANTS
    tables = TABLES
    claims = CLAIMS

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--epochs", type=int, default=40, help="full-batch training epochs at most (default 40)")
        parser.add_argument("--eval-every", type=int, default=1,
                            help="model selection: validation accuracy every N epochs, best weights kept (default 1; "
                                 "0 = off: the last epoch, as in 0.2.0)")
        parser.add_argument("--patience", type=int, default=10,
                            help="stop after N validations without improvement (default 10; 0 = never)")
        parser.add_argument("--lr", type=float, default=0.01, help="AdamW learning rate (default 0.01)")
        parser.add_argument("--weight-decay", type=float, default=1e-4)
        parser.add_argument("--hidden", type=int, default=32, help="hidden width (default 32)")
        parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
        parser.add_argument("--layers", type=int, default=1, help="graph attention blocks (default 1)")
        parser.add_argument("--dropout", type=float, default=0.1)
        parser.add_argument("--features", type=int, default=128,
                            help="SVD dimensions of the gloss TF-IDF (default 128)")
        parser.add_argument("--repulsive-alpha", type=float, default=0.01, help="SVGD repulsion α (default 0.01)")
        parser.add_argument("--alignment-weight", type=float, default=0.01, help="CT alignment weight λ (default 0.01)")
        parser.add_argument("--alignment-tokens", type=int, default=512,
                            help="nodes sampled per layer and step for the CT term (default 512)")
        parser.add_argument("--wordnet", default=None, help="data.noun file or folder (default /usr/share/wordnet)")
        parser.add_argument("--sample", action="store_true", help="use the 203-synset sample shipped with probattn")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        for name in NUMBERS:
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.eval_every < 0 or args.patience < 0:
            raise ValueError("--eval-every and --patience must be >= 0")
        if args.hidden % args.heads:
            raise ValueError(f"--hidden ({args.hidden}) must be divisible by --heads ({args.heads})")
        if self.reference not in args.variants:
            raise ValueError("--variants must include softmax: every variant is tested against it")
        keys = (*NUMBERS, "eval_every", "patience", "lr", "weight_decay", "dropout", "repulsive_alpha",
                "alignment_weight", "wordnet", "sample")
        return {k: getattr(args, k) for k in keys}

    def prepare(self, options: dict[str, Any], *, output: Path, log: Callable[[str], None]) -> dict[str, Any]:
        began = time.process_time()
        data = prepare_graph(options["wordnet"], options["sample"], options["features"])
        data["prepare_cpu_s"] = time.process_time() - began
        train_labels = data["y"][data["split"]["train"]]
        majority_class = int(torch.bincount(train_labels).argmax())
        data["majority_class"] = majority_class
        return data

    def describe(self, prepared: dict[str, Any], options: dict[str, Any]) -> str:
        selection = (f"model selection on the validation nodes every {options['eval_every']} epoch(s), patience "
                     f"{options['patience']}" if options["eval_every"] else "no model selection (the last epoch)")
        return (f"{prepared['num_nodes']:,} nodes, {int(prepared['edge_index'].shape[1]):,} directed edges (hypernym "
                f"edges both ways), {len(prepared['split']['test']):,} test nodes; at most {options['epochs']} "
                f"full-batch epochs, {selection}; features {prepared['prepare_cpu_s']:.0f} s CPU. The `mlp` variant "
                "is the no-graph model (same features, same seeds).")

    def baselines(self, prepared, options, split, *, log):
        y, test = prepared["y"], prepared["split"]["test"]
        correct = (y[test] == prepared["majority_class"]).double()
        return {"majority class": {"sets": {"test": {"metrics": {"accuracy": float(correct.mean())},
                                                     "scores": {"correct": correct.tolist()}}}},
                "MLP, no graph (seed 0)": train_one(prepared, "mlp", 0, argparse.Namespace(**options))}

    def run(self, prepared: dict[str, Any], options: dict[str, Any], spec: RunSpec, *,
            log: Callable[[str], None]) -> dict[str, Any]:
        return train_one(prepared, spec.variant, spec.seed, argparse.Namespace(**options))

    def progress_line(self, record: dict[str, Any]) -> str:
        m = record["sets"]["test"]["metrics"]
        return (f"accuracy {m['accuracy']:.4f} ECE {m['ece']:.4f}, {record['epochs']} epochs, CPU "
                f"{record['metrics']['cpu_s_per_epoch']:.2f} s/epoch")


STUDY = GraphStudy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_arguments(parser, STUDY)


def run(args: argparse.Namespace) -> int:
    return runner.main(STUDY, args)
