"""A toy study for the runner's tests: logistic regression on synthetic data, seconds per study.

Importable by name (the tests put this folder on ``sys.path``), so that worker processes can unpickle it.
Variants: ``softmax`` (the reference), ``noisy`` (30% of the training labels flipped: worse), ``long`` (more
epochs: at least as good), ``fail`` (raises). Baselines: the majority class and a closed-form least-squares
classifier. Flags: ``--epochs``, ``--lr``, ``--patience``, ``--rows``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch

from probattn.experiments.runner import Claim, Metric, Split, Study, Table, fold_assignment, fold_indices
from probattn.training.selection import BestCheckpoint

ACCURACY = Metric("accuracy", "accuracy", True, bounds=(0.0, 1.0), score="correct")
NLL = Metric("nll", "NLL", False, bounds=(0.0, math.inf), score="nll")
WIDTH = Metric("weight_norm", "weight norm", True, bounds=(0.0, math.inf))


class ToyStudy(Study):
    name = "toy"
    title = "Toy study"
    variants: ClassVar[dict] = {"softmax": {}, "noisy": {"flip": 0.3}, "long": {"epochs": 3}, "fail": {}}
    default_variants = ("softmax", "noisy")
    default_seeds = (0, 1, 2)
    tables = (Table("Test", (ACCURACY, NLL)), Table("Shifted test", (ACCURACY,), records="shifted"),
              Table("Weights", (WIDTH,), records=None))
    claims = (Claim("noisy", "accuracy up", "accuracy", "up"), Claim("noisy", "weight norm down", "weight_norm",
                                                                   "down", records=None),
              Claim("long", "weights within 1000", "weight_norm", "at_most", records=None, value=1000.0))
    supports_folds = True

    def add_arguments(self, parser):
        parser.add_argument("--epochs", type=int, default=30)
        parser.add_argument("--lr", type=float, default=0.5)
        parser.add_argument("--patience", type=int, default=0)
        parser.add_argument("--rows", type=int, default=300)

    def options(self, args):
        return {"epochs": args.epochs, "lr": args.lr, "patience": args.patience, "rows": args.rows}

    def prepare(self, options, *, output, log):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(options["rows"], 4))
        y = (x @ np.array([1.5, -1.0, 0.5, 0.0]) + 0.8 * rng.normal(size=len(x)) > 0).astype(np.int64)
        groups = np.arange(len(x)) // 10
        return {"x": x, "y": y, "groups": groups}

    def labelled_size(self, prepared):
        return len(prepared["y"])

    def describe(self, prepared, options):
        return f"{len(prepared['y'])} synthetic rows, 4 features."

    def _split(self, prepared, split: Split):
        n = len(prepared["y"])
        if split.fold is None:
            order = np.random.default_rng(split.seed).permutation(n)
            return order[: n * 6 // 10], order[n * 6 // 10: n * 7 // 10], np.sort(order[n * 7 // 10:])
        groups = prepared["groups"] if split.group_column else None
        assign = fold_assignment(n, split.folds, split.seed, groups)
        return tuple(np.asarray(i) for i in fold_indices(assign, split.fold, seed=split.seed, groups=groups))

    def _measure(self, probs: np.ndarray, y: np.ndarray):
        correct = (probs.argmax(1) == y).astype(float)
        nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1))
        return {"metrics": {"accuracy": float(correct.mean()), "nll": float(nll.mean())},
                "scores": {"correct": correct.tolist(), "nll": nll.tolist()}}

    def _sets(self, prepared, test, predict):
        x, y = prepared["x"], prepared["y"]
        return {"test": self._measure(predict(x[test]), y[test]),
                "shifted": self._measure(predict(x[test] + 0.5), y[test])}

    def baselines(self, prepared, options, split, *, log):
        x, y = prepared["x"], prepared["y"]
        train, _, test = self._split(prepared, split)
        freq = np.bincount(y[train], minlength=2) / len(train)
        w, *_ = np.linalg.lstsq(np.c_[x[train], np.ones(len(train))], 2.0 * y[train] - 1, rcond=None)

        def least_squares(features):
            p = 1 / (1 + np.exp(-3 * (np.c_[features, np.ones(len(features))] @ w)))
            return np.c_[1 - p, p]

        return {"majority class": {"sets": self._sets(prepared, test, lambda f: np.tile(freq, (len(f), 1)))},
                "least squares": {"sets": self._sets(prepared, test, least_squares)}}

    def run(self, prepared, options, spec, *, log):
        if spec.variant == "fail":
            raise FloatingPointError("step 3: the task loss is non-finite")
        settings = self.variants[spec.variant]
        x, y = prepared["x"], prepared["y"]
        train, validation, test = self._split(prepared, spec.split)
        rng = np.random.default_rng(spec.seed)
        labels = y[train].copy()
        flip = rng.random(len(labels)) < settings.get("flip", 0.0)
        labels[flip] = 1 - labels[flip]
        torch.manual_seed(spec.seed)
        model = torch.nn.Linear(4, 2).double()
        optimizer = torch.optim.SGD(model.parameters(), lr=options["lr"])
        xt, yt = torch.from_numpy(x[train]), torch.from_numpy(labels)
        xv, yv = torch.from_numpy(x[validation]), torch.from_numpy(y[validation])
        selection = BestCheckpoint(options["patience"])
        epochs = options["epochs"] * settings.get("epochs", 1)
        trained = 0
        for epoch in range(epochs):
            for batch in torch.randperm(len(xt)).split(32):
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
                optimizer.step()
            trained = epoch + 1
            with torch.no_grad():
                score = float((model(xv).argmax(1) == yv).double().mean())
            if selection.update(trained, score, model):
                break
        selection.restore(model)

        def predict(features):
            with torch.no_grad():
                return model(torch.from_numpy(features)).softmax(1).numpy()

        return {"metrics": {"weight_norm": float(model.weight.detach().norm())}, "sets": self._sets(prepared, test, predict),
                "epochs": trained, "selection": selection.record()}
