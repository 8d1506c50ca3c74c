"""``probattn train``: one run from ``--preset``, ``--config FILE`` and flags (each overrides the one before).

With ``--output DIR`` the run also writes ``results.md`` (the metrics table) and ``reliability.png``.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

from probattn.training.config import MODELS, NORMALIZATIONS, REPULSIVE_METHODS, TrainConfig, load_config_file
from probattn.training.loop import NonFiniteError, train
from probattn.training.presets import DEFAULT_PRESET, PRESET_HELP, PRESETS

__all__ = ["add_arguments", "config_from_args", "run"]

# (field, type, help); every TrainConfig field has a flag named after it (tests check this)
_OPTIONS: list[tuple[str, type, str]] = [
    ("model", str, f"model: {', '.join(MODELS)} (default tiny), or a local Hugging Face model directory "
                   "(fine-tuned with a new sequence-classification head)"),
    ("normalization", str, f"attention normalization: {', '.join(NORMALIZATIONS)}"),
    ("hybrid_alpha", float, "softmax weight of --normalization hybrid, in [0, 1]"),
    ("sinkhorn_iters", int, "iterations of --normalization sinkhorn"),
    ("alignment", str, "key/query alignment regularizer: ct, gan, mmd or sinkhorn (default off)"),
    ("alignment_weight", float, "lambda of the alignment term (default 0.01)"),
    ("repulsive", str, f"repulsive heads: {', '.join(REPULSIVE_METHODS)} (default off)"),
    ("repulsive_alpha", float, "repulsion weight alpha (default 0.01)"),
    ("repulsive_preset", str, "repulsive hyper-parameters of a released run (alpha, stepsize, layers; "
                              "--repulsive-alpha is then unused), e.g. electra_small: layer 0's Q/K/V only"),
    ("adapt_steps", int, "minilm / Hugging Face directory with --normalization doubly, hybrid or sinkhorn: first "
                         "distil the converted encoder toward the original on the training texts for this many "
                         "steps (probattn.hf.adapt), then fine-tune (default 0: off)"),
    ("embed_dim", int, "tiny / self-attentive: width"),
    ("num_heads", int, "tiny: attention heads; self-attentive: hops"),
    ("num_layers", int, "tiny: encoder layers"),
    ("dropout", float, "dropout of tiny / self-attentive"),
    ("data", str, "rotten_tomatoes (default) or your CSV / JSONL / Parquet file"),
    ("text_column", str, "--data FILE: the text column"),
    ("label_column", str, "--data FILE: the label column (integers or strings)"),
    ("text_pair_column", str, "--data FILE: a second text column for sentence pairs"),
    ("ood", str, "out-of-domain test set: amazon or a file with the same columns and labels"),
    ("data_seed", int, "seed of the train/validation/test split (default 0)"),
    ("max_train_examples", int, "use a random subset of this many training examples"),
    ("max_length", int, "truncate inputs to this many tokens (default 64)"),
    ("seed", int, "seed of initialisation, data order and dropout"),
    ("max_steps", int, "optimizer steps"),
    ("batch_size", int, "global batch per optimizer step (all processes and --grad-accum micro-batches)"),
    ("grad_accum", int, "micro-batches per optimizer step"),
    ("lr", float, "AdamW learning rate (default: 3e-3 tiny, 5e-4 self-attentive, 5e-5 minilm and Hugging Face directories)"),
    ("weight_decay", float, "AdamW weight decay"),
    ("warmup_steps", int, "linear warm-up steps (then linear decay to 0)"),
    ("max_grad_norm", float, "clip the gradient norm (0 = off)"),
    ("eval_batch_size", int, "batch size for evaluation"),
    ("eval_every", int, "model selection: evaluate on the validation split every N steps and keep the best "
                        "checkpoint (0 = off: the last step)"),
    ("patience", int, "early stopping: stop after N validations without improvement (0 = never)"),
    ("output", str, "run directory: checkpoints, model.safetensors + model.json, metrics.json"),
    ("checkpoint_every", int, "write a checkpoint every N steps (and always at the end)"),
    ("device", str, "auto (default), cpu or cuda[:N]"),
]
_SWITCHES = [("resume", "continue the run in --output from its checkpoint"),
             ("overwrite", "replace a finished run in --output"),
             ("trust_remote_code", "allow a Hugging Face --model folder whose config names Python classes of its "
                                   "own (auto_map): runs the .py files in that folder (default: refuse it)")]


def _default_text(name: str) -> str:
    """``default X`` from TrainConfig, plus the presets that set another value."""
    default = TrainConfig.__dataclass_fields__[name].default
    by_preset = [f"{p} {v}" for p, values in PRESETS.items() if (v := values.get(name, default)) != default]
    return f"default {default}" + (f"; preset {', '.join(by_preset)}" if by_preset else "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``probattn train`` (defaults: TrainConfig, then --preset, then --config, then the flags)."""
    parser.add_argument("--preset", default=DEFAULT_PRESET, choices=list(PRESETS),
                        help=f"option set shared with `probattn compare --preset` (default {DEFAULT_PRESET}): "
                             + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items()))
    parser.add_argument("--config", metavar="FILE", help="YAML / TOML / JSON file of options (overrides the preset; "
                                                          "flags override it)")
    for name, kind, text in _OPTIONS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=argparse.SUPPRESS,
                            help=f"{text} ({_default_text(name)})")
    for name, text in _SWITCHES:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true", default=argparse.SUPPRESS,
                            help=text)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """defaults < ``--preset`` < ``--config`` file < flags."""
    values = dict(PRESETS[getattr(args, "preset", None) or DEFAULT_PRESET])
    values.update(load_config_file(args.config) if getattr(args, "config", None) else {})
    names = {f.name for f in fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return TrainConfig.from_dict(values, source=args.config or "probattn train")


def _summary(result) -> str:
    lines = []
    for split in ("validation", "test", "ood"):
        if split in result.metrics:
            m = result.metrics[split]
            lines.append(f"{split:>10}: accuracy {m['accuracy']:.4f}  ece {m['ece']:.4f}  nll {m['nll']:.4f}  "
                         f"brier {m['brier']:.4f}  (n={m['count']})")
    t = result.metrics["train"]
    if t["seconds_per_step"] is not None:
        lines.append(f"     train: {t['steps']} steps, {t['seconds_per_step']:.3f} s/step, "
                     f"peak memory {t['peak_memory_mb']:.0f} MB")
    if result.output_dir is not None:
        lines.append(f"    output: {result.output_dir}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        result = train(config, progress=not args.no_progress)
    except (NonFiniteError, ModuleNotFoundError, OSError) as exc:  # OSError: e.g. the disk filled up
        if args.debug:
            raise
        print(f"probattn train: error: {exc}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        if result.output_dir is not None:
            _write_results(result)
        print(_summary(result))
    return 0


def _write_results(result) -> None:
    """``results.md`` (metrics of every split) and ``reliability.png`` in the run directory."""
    from probattn.io import write_text
    from probattn.metrics.calibration import measure_probabilities
    from probattn.report.figures import reliability_figure

    out, config = result.output_dir, result.config
    rows, reliability = [], {}
    for split, data in (("validation", result.splits.validation), ("test", result.splits.test), ("ood", result.ood)):
        if data is None:
            continue
        predictions = result.predict(data)
        measured = measure_probabilities(predictions.probs.numpy(), predictions.labels.tolist(), "x")
        m = measured["metrics"]
        rows.append(f"| {split} | {len(data)} | {m['accuracy_x']:.4f} | {m['ece_x']:.4f} | {m['nll_x']:.4f} | "
                    f"{m['brier_x']:.4f} |")
        reliability[split] = measured["reliability"]
    t = result.metrics["train"]
    text = ["# probattn train\n", f"Command: `probattn {' '.join(sys.argv[1:])}`\n",
            f"Model `{config.model}`, normalization `{config.normalization}`, alignment `{config.alignment}`, "
            f"repulsive `{config.repulsive}`; {config.max_steps} steps of {config.batch_size} "
            f"({result.metrics['data']['train']} training examples); one seed ({config.seed}), so no interval: "
            "use `probattn compare` to compare variants.\n",
            "| split | n | accuracy ↑ | ECE ↓ | NLL ↓ | Brier ↓ |", "|---|---|---|---|---|---|", *rows, "",
            f"Training: {t['seconds_per_step']:.3f} s/step wall, {t['cpu_seconds_per_step']:.3f} s/step CPU.\n"
            if t["seconds_per_step"] is not None else "", "![reliability](reliability.png)\n"]
    write_text(out / "results.md", "\n".join(text))
    reliability_figure([{"variant": "run", "reliability": reliability}], ["run"],
                       {k: k for k in reliability}, out / "reliability.png")
