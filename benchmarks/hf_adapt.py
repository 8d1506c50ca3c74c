"""MiniLM converted to doubly (or hybrid / sinkhorn): held-out cosine to the original and downstream accuracy,
before and after ``probattn.hf.adapt``, all in one run.

    python benchmarks/hf_adapt.py --normalization doubly --time-budget 300 --threads 1

* Held-out cosine: mean cosine between the converted model's and the original's mean-pooled sentence embeddings
  on Rotten Tomatoes test sentences (movie split, seed 0; never seen by adapt, which reads the train part).
* Downstream: a logistic regression (scikit-learn, C=1) on frozen sentence embeddings, trained on validation
  sentences, scored on the held-out test sentences, for the original (the baseline), the converted model before
  adapting and after; differences through the paired bootstrap over test examples.
CPU time is process CPU time (all threads) of this process; the machine is shared, so wall time says little.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--normalization", default="doubly")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--time-budget", type=float, default=300.0, help="CPU seconds for adapt")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--pooled-weight", type=float, default=0.0)
    parser.add_argument("--held-out", type=int, default=400)
    parser.add_argument("--probe-train", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)

    from sklearn.linear_model import LogisticRegression

    from probattn.data.sources import rotten_tomatoes_splits
    from probattn.hf import adapt, convert, load_pretrained, sentence_embeddings
    from probattn.metrics.significance import paired_bootstrap

    splits = rotten_tomatoes_splits(seed=0)
    test_x, test_y = splits.test.texts[:args.held_out], np.array(splits.test.labels[:args.held_out])
    probe_x, probe_y = splits.validation.texts[:args.probe_train], np.array(splits.validation.labels[:args.probe_train])
    reference, tokenizer = load_pretrained("minilm")
    model = convert(copy.deepcopy(reference), normalization=args.normalization)

    def embed(m):
        return sentence_embeddings(m, tokenizer, probe_x).numpy(), sentence_embeddings(m, tokenizer, test_x).numpy()

    def probe(train_e, test_e):
        clf = LogisticRegression(C=1.0, max_iter=2000).fit(train_e, probe_y)
        return (clf.predict(test_e) == test_y).astype(float)

    def cosine(a, b):
        return float((torch.nn.functional.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b))).mean())

    cpu0 = time.process_time()
    ref_train, ref_test = embed(reference)
    before_train, before_test = embed(model)
    eval_cpu = time.process_time() - cpu0
    print(f"held-out cosine before: {cosine(before_test, ref_test):.4f} (embedding CPU {eval_cpu:.0f} s)", flush=True)
    result = adapt(model, reference, splits.train.texts, tokenizer=tokenizer, steps=args.steps,
                   batch_size=args.batch_size, lr=args.lr, pooled_weight=args.pooled_weight,
                   time_budget=args.time_budget,
                   log=lambda s, loss: print(f"step {s} loss {loss:.4f} cpu {time.process_time() - cpu0:.0f}", flush=True))
    after_train, after_test = embed(model)
    correct = {"original": probe(ref_train, ref_test), "converted": probe(before_train, before_test),
               "adapted": probe(after_train, after_test)}
    rows = {name: float(c.mean()) for name, c in correct.items()}
    tests = {f"{name} vs original": asdict(paired_bootstrap(correct["original"], correct[name]))
             for name in ("converted", "adapted")}
    tests["adapted vs converted"] = asdict(paired_bootstrap(correct["converted"], correct["adapted"]))
    report = {
        "normalization": args.normalization, "lr": args.lr, "pooled_weight": args.pooled_weight,
        "batch_size": args.batch_size, "threads": args.threads,
        "steps": result.steps, "adapt_cpu_seconds": result.cpu_seconds, "adapt_wall_seconds": result.wall_seconds,
        "cosine_before": cosine(before_test, ref_test), "cosine_after": cosine(after_test, ref_test),
        "held_out": len(test_x), "probe_train": len(probe_x), "probe_accuracy": rows,
        "paired_bootstrap": {k: {kk: (vv if isinstance(vv, (int, float, str, bool)) or vv is None else str(vv))
                                 for kk, vv in v.items()} for k, v in tests.items()},
        "losses": result.losses,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"hf-adapt-{args.normalization}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "losses"}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
