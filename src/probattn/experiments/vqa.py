"""``probattn experiment vqa``: visual question answering on easy-VQA with an MCAN-style co-attention network.

The alignment-attention paper (research notes studies.md) trains MCAN on VQA-v2 and reports accuracy, accuracy
on a copy of the data with ``N(0, 1)`` noise added to the image features, and PAvPU (uncertainty) clean and
noisy. VQA-v2 ships in no package; PyPI ``easy-vqa`` 1.0 ships real, small VQA data in its wheel
(:mod:`probattn.data.vqa`: 64 × 64 images, 13 answers). Here the validation images are carved from the training
images **by image**, the package's test set is the test set.

Model: :class:`probattn.models.VQATransformer` (CNN grid features trained jointly, question self-attention
encoder, image self-attention + question-guided attention decoder, attentional reductions; every attention is a
:class:`probattn.nn.MultiheadAttention`). Variants: ``softmax``; ``doubly`` and ``hybrid`` (α 0.5) in every
attention; ``repulsive`` (softmax + SVGD over every attention's Q/K/V heads, α 0.01); ``alignment`` (softmax + CT
key/query alignment in every attention, λ 0.01). Baselines in the same run (fit once): the most frequent
training answer, a question-only MLP on the bag of words (the answer prior given the question), and an
image + question MLP without attention (the same CNN's grid features average-pooled, concatenated with the bag
of words), trained for the same steps.

Training: batches of ``--batch-images`` images with every question about them (the CNN runs once per image),
AdamW with a linear warm-up and a linear decay over ``--max-steps``; validation accuracy every ``--eval-every``
steps keeps the best weights (:class:`probattn.training.selection.BestCheckpoint`).

Measured per run on the test set: accuracy (overall and per question type: yes/no, color, shape), ECE (15
bins), NLL, PAvPU (predictive entropy, uncertain iff ``H(p) >= ln 2`` nats; :mod:`probattn.metrics.uncertainty`);
the same on the **noisy test set** (``N(0, σ²)`` added to every grid feature, ``σ = --noise``; the grid features
are normalized per image (mean 0, variance 1), so σ is in units of their standard deviation; the noise is drawn from a fixed seed, so
every model sees the same corrupted features); the accuracy and PAvPU at every σ of ``--noise-sweep``; per
attention layer on ``--diagnostic-examples`` test questions: head diversity (mean pairwise Jensen–Shannon
divergence between heads, bits), explained-away keys (normalized incoming mass ``m̃ < 0.1`` of the fair share),
image cells below the doubly-normalized bound ``1/N_q`` of the fair share, key/query distance (distance between
the mean query and the mean key of each head, and MMD²); CPU time per training step.
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
import torch.nn.functional as F

from probattn.experiments.runner import Claim, Metric, Report, RunSpec, Split, Study, Table

__all__ = ["VQAStudy", "add_arguments", "evaluate", "run"]

QUESTION_TYPES = ("yes/no", "color", "shape")
MAX_QUESTION_LENGTH = 16
DEFAULT_NOISE = 4.0
DEFAULT_SWEEP = (1.0, 2.0, 4.0, 8.0)
NOISE_SEED = 20240
EXAMPLE_QUESTIONS = 4
IMAGE_LAYERS = ("image_self", "image_reduce")  # layers whose keys are image cells

UNIT = (0.0, 1.0)
ACCURACY = Metric("accuracy", "accuracy", True, bounds=UNIT, score="correct")
NLL = Metric("nll", "NLL", False, bounds=(0.0, math.inf), score="nll")
ECE = Metric("ece", "ECE", False, bounds=UNIT)
PAVPU = Metric("pavpu", "PAvPU", True, bounds=UNIT, score="pavpu")
TYPE_ACCURACY = tuple(Metric(f"accuracy_{t}", f"{t} acc.", True, bounds=UNIT) for t in QUESTION_TYPES)
ATTENTION = (
    Metric("head_diversity", "head diversity (JS bits)", True, bounds=UNIT),
    Metric("image_explained_away", "image cells explained away (m̃ < 0.1)", False, bounds=UNIT),
    Metric("image_below_bound", "image cells below 1/N_q", False, bounds=UNIT, digits=4),
    Metric("qk_distance", "key–query distance", False, bounds=(0.0, math.inf)),
    Metric("qk_mmd2", "key–query MMD²", False, bounds=(0.0, 2.0)),
    Metric("cpu_ms_per_step", "CPU ms / step", False, bounds=(0.0, math.inf), digits=1),
)


# -- data --------------------------------------------------------------------------------------------------------
def _encode(tokenizer, data) -> dict[str, Any]:
    encoded = tokenizer(data.questions, max_length=MAX_QUESTION_LENGTH)
    if encoded.truncated:
        raise ValueError(f"{encoded.truncated} {data.name} questions are longer than {MAX_QUESTION_LENGTH} tokens")
    return {"images": data.images, "questions": encoded.input_ids, "answers": torch.tensor(data.answers),
            "image_index": torch.tensor(data.image_index), "types": list(data.question_types),
            "texts": list(data.questions), "image_ids": list(data.image_ids)}


def prepare_data(sample: bool, validation_fraction: float = 0.1) -> dict[str, Any]:
    """Splits (by image), the question tokenizer (training questions) and the encoded tensors."""
    from probattn.data import WordTokenizer
    from probattn.data.vqa import easy_vqa_splits, load_easy_vqa_sample

    splits = load_easy_vqa_sample() if sample else easy_vqa_splits(validation_fraction=validation_fraction)
    tokenizer = WordTokenizer.build(splits.train.questions)
    out = {name: _encode(tokenizer, getattr(splits, name)) for name in ("train", "validation", "test")}
    out.update(answer_names=list(splits.answer_names), vocab_size=len(tokenizer), sample=sample)
    return out


def _batches_by_image(split: dict[str, Any], images_per_batch: int, order: np.ndarray | None = None):
    """``(image rows, question rows, image_index local)`` for consecutive groups of images (in ``order``)."""
    index = split["image_index"].numpy()
    by_image: dict[int, list[int]] = {}
    for row, image in enumerate(index.tolist()):
        by_image.setdefault(image, []).append(row)
    images = np.arange(split["images"].shape[0]) if order is None else order
    for start in range(0, len(images), images_per_batch):
        chosen = images[start:start + images_per_batch]
        rows = [r for image in chosen.tolist() for r in by_image.get(image, [])]
        if not rows:
            continue
        local = {image: i for i, image in enumerate(chosen.tolist())}
        yield (torch.as_tensor(chosen), torch.tensor(rows),
               torch.tensor([local[int(index[r])] for r in rows]))


def _questions(split: dict[str, Any], rows: torch.Tensor) -> torch.Tensor:
    q = split["questions"][rows]
    return q[:, : int((q != 0).sum(1).max())]


# -- evaluation ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def predict(model: torch.nn.Module, split: dict[str, Any], *, sigma: float = 0.0, noise_seed: int = NOISE_SEED,
            images_per_batch: int = 64) -> torch.Tensor:
    """Answer probabilities ``(N, answers)`` in question order; with ``sigma`` > 0 the noisy-feature test, the
    noise drawn from ``noise_seed`` in a fixed order (the same for every model of the same grid and CNN width)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(noise_seed) if sigma > 0 else None
    probs = torch.zeros(len(split["answers"]), model.config.num_answers)
    for images, rows, local in _batches_by_image(split, images_per_batch):
        out = model(split["images"][images], _questions(split, rows), local, noise_std=sigma,
                    noise_generator=generator)
        probs[rows] = out.logits.float().softmax(-1)
    model.train(was_training)
    return probs


def evaluate(probs: torch.Tensor, split: dict[str, Any], *, threshold: float | None = None) -> dict[str, Any]:
    """A ``sets`` entry: accuracy (overall, per question type), ECE, NLL, PAvPU; scores correct / nll / pavpu."""
    from probattn.metrics import PAVPU_THRESHOLD, calibration, certainty_matches

    labels = split["answers"]
    threshold = PAVPU_THRESHOLD if threshold is None else threshold
    correct = (probs.argmax(-1) == labels).double()
    nll = -probs.double().gather(1, labels[:, None]).clamp_min(1e-12).log()[:, 0]
    matches = certainty_matches(probs, labels, threshold=threshold).double()
    metrics = {"accuracy": float(correct.mean()), "nll": float(nll.mean()), "ece": calibration(probs, labels).ece,
               "pavpu": float(matches.mean())}
    types = np.array(split["types"])
    for t in QUESTION_TYPES:
        chosen = torch.from_numpy(types == t)
        metrics[f"accuracy_{t}"] = float(correct[chosen].mean()) if bool(chosen.any()) else math.nan
    return {"metrics": metrics, "scores": {"correct": correct.tolist(), "nll": [round(v, 6) for v in nll.tolist()],
                                           "pavpu": matches.tolist()}}


# -- attention diagnostics -------------------------------------------------------------------------------------------
@torch.no_grad()
def attention_diagnostics(model, split: dict[str, Any], examples: int) -> dict[str, float]:
    """Per layer (``<type>.<layer>``) and averaged: head diversity, explained-away keys (m̃ < 0.1), image cells
    below ``1/N_q``, key/query mean distance and MMD², on the first ``examples`` test questions."""
    from probattn.experiments.diagnostics import StatisticsProbe
    from probattn.report.collect import attached_probes

    rows = torch.arange(min(examples, len(split["answers"])))
    subset = {**split, "questions": split["questions"][rows], "image_index": split["image_index"][rows],
              "answers": split["answers"][rows]}
    names, modules, probes = [], [], []
    for kind, entries in model.attention_modules().items():
        for layer, (_, module) in enumerate(entries):
            names.append(f"{kind}.{layer}")
            modules.append(module)
    was_training = model.training
    model.eval()
    first = None
    for images, batch_rows, local in _batches_by_image(subset, 64):
        if first is None:  # the queries of each layer: known from one forward with weights
            out = model(subset["images"][images], _questions(subset, batch_rows), local, return_attention=True)
            first = {f"{k}.{i}": w.shape[2] for k, ws in out.attentions.items() for i, w in enumerate(ws)}
            # thresholds: 0.1 of the fair share, and just under the doubly bound 1/N_q where N_q is fixed (every
            # layer but the question self-attention, whose N_q is the question's length)
            probes = [StatisticsProbe(m, thresholds=(0.1,) if n.startswith("question_self") else
                             (0.1, (1.0 / first[n]) * (1 - 1e-9))) for n, m in zip(names, modules)]
            break
    with attached_probes(modules, probes):
        for images, batch_rows, local in _batches_by_image(subset, 64):
            model(subset["images"][images], _questions(subset, batch_rows), local)
    model.train(was_training)
    metrics: dict[str, float] = {}

    def mean(values) -> float:
        values = [v for v in values if v is not None and math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    for name, probe in zip(names, probes):
        s = probe.stats.summary() if probe.stats is not None else {}
        similarity = s.get("mean_attention_similarity")
        metrics[f"head_diversity/{name}"] = 1.0 - similarity if similarity is not None else math.nan
        metrics[f"explained_away/{name}"] = mean(s.get("explained_away_0.1", []))
        bound_key = next((k for k in s if k.startswith("explained_away_") and k != "explained_away_0.1"), None)
        metrics[f"below_bound/{name}"] = mean(s.get(bound_key, [])) if bound_key else math.nan
        metrics[f"qk_distance/{name}"] = mean(s.get("qk_mean_distance", []))
        metrics[f"qk_mmd2/{name}"] = mean(s.get("qk_mmd2", []))
    layers = list(names)
    image = [n for n in names if n.split(".")[0] in IMAGE_LAYERS]
    metrics.update(
        head_diversity=mean(metrics[f"head_diversity/{n}"] for n in layers),
        image_explained_away=mean(metrics[f"explained_away/{n}"] for n in image),
        image_below_bound=mean(metrics[f"below_bound/{n}"] for n in image),
        qk_distance=mean(metrics[f"qk_distance/{n}"] for n in layers),
        qk_mmd2=mean(metrics[f"qk_mmd2/{n}"] for n in layers),
    )
    return metrics


@torch.no_grad()
def example_maps(model, split: dict[str, Any], rows: list[int]) -> list[dict[str, Any]]:
    """For test questions ``rows``: the predicted answer, its probability and the image reduction's attention over
    the grid cells (mean over heads and glimpses), for the figure of examples."""
    model.eval()
    index = split["image_index"][rows]
    images, local = torch.unique(index, return_inverse=True)
    out = model(split["images"][images], _questions(split, torch.tensor(rows)), local, return_attention=True)
    probs = out.logits.softmax(-1)
    cells = out.attentions["image_reduce"][0].mean(dim=(1, 2))  # (B, grid²)
    return [{"row": r, "predicted": int(probs[i].argmax()), "probability": float(probs[i].max()),
             "image_map": [round(float(v), 5) for v in cells[i]]} for i, r in enumerate(rows)]


# -- training ----------------------------------------------------------------------------------------------------
def _config(prepared: dict[str, Any], options: dict[str, Any], normalization: str = "softmax"):
    from probattn.models.vqa import VQAConfig

    return VQAConfig(vocab_size=prepared["vocab_size"], num_answers=len(prepared["answer_names"]),
                     embed_dim=options["embed_dim"], num_heads=options["heads"], ffn_dim=2 * options["embed_dim"],
                     layers=options["layers"], grid=options["grid"], cnn_channels=options["cnn_channels"],
                     dropout=options["dropout"], max_question_length=MAX_QUESTION_LENGTH,
                     normalization=normalization, hybrid_alpha=0.5)


def train_model(model: torch.nn.Module, prepared: dict[str, Any], options: dict[str, Any], seed: int, *,
                variant: str = "softmax", log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``model`` (in place) with ``variant``'s regularizers; keep the best validation weights.

    Returns the training record: steps, epochs, CPU seconds per step, the selection record.
    """
    from probattn.training.selection import BestCheckpoint

    settings = VQAStudy.variants.get(variant, {})
    torch.manual_seed(seed)
    params: Any = model.parameters()
    if settings.get("alignment"):
        from probattn.alignment import alignment_loss, alignment_parameter_groups, attach_alignment

        attach_alignment(model, settings["alignment"], weight=options["alignment_weight"])
        params = alignment_parameter_groups(model)
    optimizer = torch.optim.AdamW(params, lr=options["lr"], weight_decay=options["weight_decay"])
    if settings.get("repulsive"):
        from probattn.repulsive import RepulsiveHeads

        RepulsiveHeads(model, method=settings["repulsive"], alpha=options["repulsive_alpha"], seed=seed).attach(
            optimizer)
    steps, warmup = options["max_steps"], max(1, options["max_steps"] // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup))))
    train, validation = prepared["train"], prepared["validation"]
    selection = BestCheckpoint(options["patience"])
    rng = np.random.default_rng(seed)
    step, cpu, questions = 0, 0.0, 0
    n_images = train["images"].shape[0]
    while step < steps and not selection.stopped_early:
        for images, rows, local in _batches_by_image(train, options["batch_images"], rng.permutation(n_images)):
            began = time.process_time()
            model.train()
            out = model(train["images"][images], _questions(train, rows), local)
            loss = F.cross_entropy(out.logits, train["answers"][rows])
            if settings.get("alignment"):
                loss = loss + alignment_loss(model, distance_batch=0)[0]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: the loss is not finite ({float(loss)})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            cpu += time.process_time() - began
            step, questions = step + 1, questions + len(rows)
            if step % options["eval_every"] == 0 or step == steps:
                score = float((predict(model, validation).argmax(-1) == validation["answers"]).double().mean())
                if log is not None:
                    log(f"{variant} seed {seed}: step {step}, validation accuracy {score:.4f}")
                if selection.update(step, score, model):
                    break
            if step >= steps:
                break
    selection.restore(model)
    return {"steps": step, "epochs": questions / len(train["answers"]), "cpu_s_per_step": cpu / max(1, step),
            "selection": selection.record()}


# -- the study ---------------------------------------------------------------------------------------------------
class VQAStudy(Study):
    name = "experiment vqa"
    title = "Visual question answering on easy-VQA (MCAN-style co-attention)"
    output = "probattn-experiments/vqa"
    variants: ClassVar[dict[str, dict[str, Any]]] = {
        "softmax": {"normalization": "softmax"},
        "doubly": {"normalization": "doubly"},
        "hybrid": {"normalization": "hybrid"},
        "repulsive": {"normalization": "softmax", "repulsive": "svgd"},
        "alignment": {"normalization": "softmax", "alignment": "ct"},
    }
    default_variants = ("softmax", "doubly", "hybrid", "repulsive", "alignment")
    default_seeds = (0, 1, 2)
    tables = (
        Table("Test set", (ACCURACY, NLL, ECE, PAVPU)),
        Table("Noisy test set (N(0, σ²) on the image grid features)", (ACCURACY, NLL, ECE, PAVPU), records="noisy"),
        Table("Accuracy per question type (test set)", TYPE_ACCURACY, tests=False),
        Table("Accuracy per question type (noisy test set)", TYPE_ACCURACY, records="noisy", tests=False),
        Table("Attention (mean over layers; image cells: image self-attention and image reduction)", ATTENTION,
              records=None),
    )
    claims = (
        Claim("alignment", "accuracy up", "accuracy", "up"),
        Claim("alignment", "accuracy under noise up", "accuracy", "up", records="noisy"),
        Claim("alignment", "PAvPU up", "pavpu", "up"),
        Claim("alignment", "PAvPU under noise up", "pavpu", "up", records="noisy"),
        Claim("doubly", "no image cell below 1/N_q of its fair share (the guaranteed bound)", "image_below_bound",
              "at_most", records=None, value=0.0, digits=4),
        Claim("doubly", "explained-away image cells (m̃ < 0.1) down", "image_explained_away", "down", records=None),
        Claim("doubly", "accuracy up", "accuracy", "up"),
        Claim("hybrid", "explained-away image cells (m̃ < 0.1) down", "image_explained_away", "down", records=None),
        Claim("hybrid", "accuracy up", "accuracy", "up"),
        Claim("repulsive", "head diversity up", "head_diversity", "up", records=None),
        Claim("repulsive", "accuracy up", "accuracy", "up"),
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sample", action="store_true",
                            help="use the 40-image sample shipped with probattn (tests, a smoke run)")
        parser.add_argument("--max-steps", type=int, default=800, help="training steps (default 800)")
        parser.add_argument("--batch-images", type=int, default=8,
                            help="images per batch, with every question about them (default 8, ~77 questions)")
        parser.add_argument("--eval-every", type=int, default=200, help="validation every N steps (default 200)")
        parser.add_argument("--patience", type=int, default=0,
                            help="stop after N validations without improvement (default 0: never)")
        parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (default 1e-3)")
        parser.add_argument("--weight-decay", type=float, default=0.01)
        parser.add_argument("--embed-dim", type=int, default=64, help="model width (default 64)")
        parser.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
        parser.add_argument("--layers", type=int, default=2, help="encoder and decoder layers (default 2)")
        parser.add_argument("--grid", type=int, default=4, help="image grid side: 4, 8 or 16 (default 4)")
        parser.add_argument("--cnn-channels", type=int, default=32, help="CNN output channels (default 32)")
        parser.add_argument("--dropout", type=float, default=0.1)
        parser.add_argument("--noise", type=float, default=DEFAULT_NOISE,
                            help=f"σ of the noisy test set (default {DEFAULT_NOISE}; chosen from the sweep, "
                                 "docs/experiments.md)")
        parser.add_argument("--noise-sweep", type=float, nargs="*", default=list(DEFAULT_SWEEP),
                            help=f"σ values measured for the accuracy-vs-noise figure (default "
                                 f"{' '.join(map(str, DEFAULT_SWEEP))})")
        parser.add_argument("--repulsive-alpha", type=float, default=0.01, help="SVGD repulsion α (default 0.01)")
        parser.add_argument("--alignment-weight", type=float, default=0.01, help="CT alignment λ (default 0.01)")
        parser.add_argument("--diagnostic-examples", type=int, default=512,
                            help="test questions for the per-layer attention diagnostics (default 512)")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        for name in ("max_steps", "batch_images", "eval_every", "embed_dim", "heads", "layers", "grid",
                     "cnn_channels", "diagnostic_examples"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.embed_dim % args.heads:
            raise ValueError(f"--embed-dim ({args.embed_dim}) must be divisible by --heads ({args.heads})")
        if not args.noise > 0 or any(not s > 0 for s in args.noise_sweep):
            raise ValueError("--noise and every --noise-sweep value must be > 0 (σ of the added noise)")
        if args.grid not in (2, 4, 8, 16, 32):
            raise ValueError(f"--grid {args.grid}: choose 4, 8 or 16 (64 divided by a power of two)")
        return {"sample": args.sample, "max_steps": args.max_steps, "batch_images": args.batch_images,
                "eval_every": args.eval_every, "patience": args.patience, "lr": args.lr,
                "weight_decay": args.weight_decay, "embed_dim": args.embed_dim, "heads": args.heads,
                "layers": args.layers, "grid": args.grid, "cnn_channels": args.cnn_channels,
                "dropout": args.dropout, "noise": args.noise, "noise_sweep": sorted(set(args.noise_sweep)),
                "repulsive_alpha": args.repulsive_alpha, "alignment_weight": args.alignment_weight,
                "diagnostic_examples": args.diagnostic_examples}

    def prepare(self, options: dict[str, Any], *, output: Path, log: Callable[[str], None]) -> Any:
        return prepare_data(options["sample"])

    def describe(self, prepared: Any, options: dict[str, Any]) -> str:
        sizes = {k: (prepared[k]["images"].shape[0], len(prepared[k]["answers"])) for k in ("train", "validation",
                                                                                            "test")}
        source = "the 40-image sample shipped with probattn" if prepared["sample"] else "easy-VQA 1.0 (PyPI easy-vqa)"
        return (f"Data: {source}; train {sizes['train'][0]:,} images / {sizes['train'][1]:,} questions, validation "
                f"{sizes['validation'][0]:,} / {sizes['validation'][1]:,} (carved from train by image), test "
                f"{sizes['test'][0]:,} / {sizes['test'][1]:,}; {len(prepared['answer_names'])} answers, vocabulary "
                f"{prepared['vocab_size']} words. Model: MCAN-style, width {options['embed_dim']}, "
                f"{options['heads']} heads, {options['layers']} encoder + {options['layers']} decoder layers, "
                f"{options['grid']}×{options['grid']} image grid from a CNN trained jointly; {options['max_steps']} "
                f"steps of {options['batch_images']} images (all their questions), validation every "
                f"{options['eval_every']} steps keeps the best weights. Noisy test: σ = {options['noise']} "
                f"(features normalized per image to variance 1: σ is in units of their standard deviation); PAvPU threshold ln 2 nats.")

    def baselines(self, prepared: Any, options: dict[str, Any], split: Split, *,
                  log: Callable[[str], None]) -> dict[str, dict[str, Any]]:
        from probattn.models.vqa import VQABaseline

        test = prepared["test"]
        counts = torch.bincount(prepared["train"]["answers"], minlength=len(prepared["answer_names"]))
        prior = (counts.double() / counts.sum()).float()
        frequent = prior[None].expand(len(test["answers"]), -1).clone()
        frequent_set = evaluate(frequent, test)
        out = {"most frequent answer": {"sets": {"test": frequent_set, "noisy": frequent_set}}}
        for name, kind in (("question only (bag of words MLP)", "question"),
                           ("image + question, no attention (pooled CNN + bag of words MLP)", "image+question")):
            model = VQABaseline(_config(prepared, options), kind)
            train_model(model, prepared, options, seed=0, variant="baseline")
            out[name] = {"sets": {"test": evaluate(predict(model, test), test),
                                  "noisy": evaluate(predict(model, test, sigma=options["noise"]), test)}}
        return out

    def run(self, prepared: Any, options: dict[str, Any], spec: RunSpec, *,
            log: Callable[[str], None]) -> dict[str, Any]:
        from probattn.models.vqa import VQATransformer

        torch.manual_seed(spec.seed)
        settings = self.variants[spec.variant]
        model = VQATransformer(_config(prepared, options, settings["normalization"]))
        training = train_model(model, prepared, options, spec.seed, variant=spec.variant,
                               log=log if spec.progress else None)
        if settings.get("alignment"):
            from probattn.alignment import detach_alignment

            detach_alignment(model)
        test = prepared["test"]
        sets = {"test": evaluate(predict(model, test), test),
                "noisy": evaluate(predict(model, test, sigma=options["noise"]), test)}
        metrics = {"cpu_ms_per_step": 1000 * training["cpu_s_per_step"]}
        for sigma in options["noise_sweep"]:
            measured = sets["noisy"] if sigma == options["noise"] else evaluate(predict(model, test, sigma=sigma), test)
            metrics[f"accuracy@{sigma:g}"] = measured["metrics"]["accuracy"]
            metrics[f"pavpu@{sigma:g}"] = measured["metrics"]["pavpu"]
        metrics.update(attention_diagnostics(model, test, options["diagnostic_examples"]))
        rows = _example_rows(test)
        return {"metrics": metrics, "sets": sets, "epochs": training["epochs"], "steps": training["steps"],
                "selection": training["selection"], "examples": example_maps(model, test, rows)}

    def progress_line(self, record: dict[str, Any]) -> str:
        clean, noisy = record["sets"]["test"]["metrics"], record["sets"]["noisy"]["metrics"]
        return (f"accuracy {clean['accuracy']:.4f} (noisy {noisy['accuracy']:.4f}), PAvPU {clean['pavpu']:.4f} "
                f"(noisy {noisy['pavpu']:.4f})")

    def sections(self, report: Report) -> list[str]:
        return [_sweep_section(report), _layer_section(report), _time_section(report)]

    def figures(self, report: Report, output: Path) -> list[Path]:
        paths = [_noise_figure(report, output / "accuracy_vs_noise.png")]
        examples = _examples_figure(report, output / "examples.png")
        return paths + ([examples] if examples is not None else [])


def _example_rows(test: dict[str, Any]) -> list[int]:
    """One question of each type and one more yes/no question, from different images (fixed choice)."""
    rows, seen = [], set()
    for wanted in ("color", "shape", "yes/no", "yes/no"):
        for r, t in enumerate(test["types"]):
            image = int(test["image_index"][r])
            if t == wanted and image not in seen and r not in rows:
                rows.append(r)
                seen.add(image)
                break
    return rows[:EXAMPLE_QUESTIONS]


def _sigmas(report: Report) -> list[float]:
    return sorted({float(k.split("@")[1]) for r in report.runs for k in r["metrics"] if k.startswith("accuracy@")})


def _run_means(report: Report, key: str) -> dict[str, tuple[float, float, int]]:
    """Per variant: mean, standard deviation and count of run-level ``key``."""
    out = {}
    for v in report.variants:
        values = [r["metrics"].get(key) for r in report.runs if r["variant"] == v]
        values = [x for x in values if x is not None and math.isfinite(x)]
        if values:
            out[v] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                      len(values))
    return out


def _sweep_section(report: Report) -> str:
    sigmas = _sigmas(report)
    clean = {v: [r["sets"]["test"]["metrics"]["accuracy"] for r in report.runs if r["variant"] == v]
             for v in report.variants}
    header = "| variant | σ = 0 | " + " | ".join(f"σ = {s:g}" for s in sigmas) + " |"
    lines = [header, "|" + "---|" * (len(sigmas) + 2)]
    for v in report.variants:
        cells = [f"{np.mean(clean[v]):.4f}"]
        for s in sigmas:
            acc = _run_means(report, f"accuracy@{s:g}").get(v)
            pav = _run_means(report, f"pavpu@{s:g}").get(v)
            cells.append(f"{acc[0]:.4f} / {pav[0]:.4f}" if acc and pav else "n/a")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return ("## Noise sweep\n\nTest accuracy / PAvPU (mean over seeds) with N(0, σ²) added to the per-image normalized "
            "image grid features (σ = 0: accuracy only). The noisy test set of the tables above uses σ = "
            f"{report.header['options']['noise']:g}.\n\n" + "\n".join(lines) + "\n")


def _layer_section(report: Report) -> str:
    keys = sorted({k.split("/", 1)[1] for r in report.runs for k in r["metrics"] if k.startswith("head_diversity/")},
                  key=lambda n: ("question_self", "image_self", "guided", "question_reduce",
                                 "image_reduce").index(n.split(".")[0]) * 100 + int(n.split(".")[1]))
    lines = ["| layer | " + " | ".join(report.variants) + " |", "|" + "---|" * (len(report.variants) + 1)]
    blocks = []
    for quantity, label, digits in (("head_diversity", "head diversity (JS, bits) ↑", 3),
                                    ("explained_away", "keys explained away (m̃ < 0.1) ↓", 3),
                                    ("below_bound", "keys below 1/N_q of the fair share ↓", 4),
                                    ("qk_distance", "key–query distance (mean query − mean key) ↓", 3)):
        rows = [f"**{label}**", "", *lines]
        for name in keys:
            cells = []
            for v in report.variants:
                m = _run_means(report, f"{quantity}/{name}").get(v)
                cells.append(f"{m[0]:.{digits}f}" if m else "n/a")
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(rows))
    return ("## Attention per layer\n\nMean over seeds, on the first "
            f"{report.header['options']['diagnostic_examples']} test questions. Layers: question_self.i (encoder), "
            "image_self.i and guided.i (decoder: image cells attend to image cells / to the question), "
            "question_reduce / image_reduce (attentional reductions, learned queries). Keys of image_self and "
            "image_reduce are image cells.\n\n" + "\n\n".join(blocks) + "\n")


def _time_section(report: Report) -> str:
    times = _run_means(report, "cpu_ms_per_step")
    base = times.get("softmax")
    lines = ["| variant | CPU ms / step | relative to softmax |", "|---|---|---|"]
    for v, (mean, _, _) in times.items():
        ratio = f"{mean / base[0]:.2f}×" if base else "n/a"
        lines.append(f"| {v} | {mean:.1f} | {ratio} |")
    return ("## Time per training step\n\nCPU time (`time.process_time`, one thread per worker) per training step, "
            "mean over runs; the machine's load is in the invocation line above.\n\n" + "\n".join(lines) + "\n")


def _noise_figure(report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = [0.0, *_sigmas(report)]
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=100)
    for v in report.variants:
        means, lows, highs = [], [], []
        for s in sigmas:
            values = [r["sets"]["test"]["metrics"]["accuracy"] if s == 0 else r["metrics"].get(f"accuracy@{s:g}")
                      for r in report.runs if r["variant"] == v]
            values = [x for x in values if x is not None]
            means.append(np.mean(values))
            lows.append(min(values))
            highs.append(max(values))
        ax.plot(sigmas, means, marker="o", label=v)
        ax.fill_between(sigmas, lows, highs, alpha=0.15)
    for name, fold in (report.baselines.get("all", {}) or next(iter(report.baselines.values()), {})).items():
        if "image" in name:
            clean = fold["sets"]["test"]["metrics"]["accuracy"]
            ax.axhline(clean, color="gray", linestyle=":", linewidth=1, label="image + question MLP (clean)")
        elif "question only" in name:
            ax.axhline(fold["sets"]["test"]["metrics"]["accuracy"], color="black", linestyle="--", linewidth=1,
                       label="question only")
    ax.set_xlabel("σ of the noise on the image grid features")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.set_title("easy-VQA: accuracy vs feature noise (mean; band = min–max over seeds)", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    from probattn.io import save_figure

    save_figure(fig, path)
    plt.close(fig)
    return path


def _examples_figure(report: Report, path: Path) -> Path | None:
    """Test images with a question, the true answer and each shown variant's answer and attention over the grid
    (seed of the first run of each variant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {}
    for r in sorted(report.runs, key=lambda r: r["seed"]):
        first.setdefault(r["variant"], r)
    shown = [v for v in report.variants if v in first and first[v].get("examples")]
    if not shown:
        return None
    data = prepare_data(report.header["options"]["sample"])
    test, answers = data["test"], data["answer_names"]
    examples = first[shown[0]]["examples"]
    fig, axes = plt.subplots(len(examples), len(shown) + 1, figsize=(1.7 * (len(shown) + 1), 1.9 * len(examples)),
                             dpi=90, squeeze=False)
    for i, example in enumerate(examples):
        row = example["row"]
        image = test["images"][int(test["image_index"][row])].permute(1, 2, 0).numpy()
        axes[i][0].imshow(image)
        truth = answers[int(test["answers"][row])]
        axes[i][0].set_title(f"{test['texts'][row]}\n(answer: {truth})", fontsize=6)
        for j, v in enumerate(shown, start=1):
            ex = next(e for e in first[v]["examples"] if e["row"] == row)
            grid = round(math.sqrt(len(ex["image_map"])))
            axes[i][j].imshow(image)
            heat = np.asarray(ex["image_map"]).reshape(grid, grid)
            axes[i][j].imshow(heat, cmap="magma", alpha=0.55, extent=(0, 64, 64, 0), interpolation="nearest")
            said = answers[ex["predicted"]]
            axes[i][j].set_title(f"{v}: {said} ({ex['probability']:.2f})", fontsize=6)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    from probattn.io import save_figure

    save_figure(fig, path)
    plt.close(fig)
    return path


STUDY = VQAStudy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from probattn.experiments.runner import add_arguments as runner_arguments

    runner_arguments(parser, STUDY)


def run(args: argparse.Namespace) -> int:
    from probattn.experiments.runner import main

    return main(STUDY, args)
