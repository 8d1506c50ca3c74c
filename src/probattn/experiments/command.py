"""``probattn experiment NAME``: the papers' experiments at CPU scale, one module each.

* ``gmm``: explaining away on a Gaussian-mixture toy; doubly-normalized attention equals an EM step.
* ``self-attentive``: Lin et al. (2017) sentence classifier on Rotten Tomatoes, with and without repulsion.
* ``alignment``: MiniLM fine-tuned on Rotten Tomatoes, baseline vs alignment (CT, GAN), tested on Amazon.
* ``nmt``: Transformer translation Spanish -> English on the verse-aligned Bible (held-out books): softmax vs
  repulsive (SVGD, SPOS) vs doubly-normalized encoder vs alignment.
* ``finetune``: the papers' own setting: a pretrained encoder fine-tuned with each variant acting on its own
  attention layers; in domain, out of domain, calibration (ECE 10 and 15 bins) and PWWS / DeepWordBug attacks.
* ``graph``: node classification on the WordNet noun graph: softmax / doubly / hybrid / repulsive / aligned
  graph attention, with an MLP and the majority class as baselines.
* ``vqa``: visual question answering on easy-VQA with an MCAN-style co-attention network: every attention
  softmax / doubly / hybrid / repulsive / aligned; accuracy, PAvPU, clean and with noisy image features.

Each experiment module has ``add_arguments(parser)`` and ``run(args) -> int`` like a top-level command.
"""

from __future__ import annotations

import argparse
import importlib

# experiment name -> (module, one-line help)
EXPERIMENTS: dict[str, tuple[str, str]] = {
    "gmm": ("probattn.experiments.gmm", "explaining-away toy: softmax vs doubly-normalized vs EM"),
    "self-attentive": ("probattn.experiments.self_attentive", "Lin et al. 2017 on Rotten Tomatoes, +/- repulsion"),
    "alignment": ("probattn.experiments.alignment", "MiniLM on Rotten Tomatoes -> Amazon: baseline vs CT vs GAN"),
    "nmt": ("probattn.experiments.nmt", "Transformer es->en on the Bible (held-out books): softmax vs SVGD/SPOS "
                                       "vs doubly encoder vs alignment"),
    "graph": ("probattn.experiments.graph", "WordNet noun graph node classification: graph attention variants"),
    "finetune": ("probattn.experiments.finetune", "the papers' setting: MiniLM fine-tuned with each variant on its "
                                                  "own layers; in domain, out of domain, calibration, attacks"),
    "vqa": ("probattn.experiments.vqa", "easy-VQA visual question answering, MCAN-style co-attention: softmax / "
                                       "doubly / hybrid / repulsive / alignment, clean and noisy image features"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="experiment", metavar="NAME", required=True)
    for name, (module_name, help_text) in EXPERIMENTS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_experiment_module=module_name)
        importlib.import_module(module_name).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._experiment_module).run(args) or 0)
