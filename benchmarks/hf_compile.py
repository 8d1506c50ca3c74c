"""torch.compile(fullgraph=True) of a converted all-MiniLM-L6-v2: compiled forward time / eager forward time.

    python benchmarks/hf_compile.py --threads 1 --calls 15

Batch: 16 Rotten Tomatoes test sentences, padded to the longest (max 64 tokens), no gradients. Eager and
compiled calls alternate in one process (the steadiest ratio on a shared machine); each call is timed in
process CPU time; the table gives medians, the compile time of the first call and the max abs difference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--normalizations", nargs="+", default=["softmax", "doubly"])
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", UserWarning)

    from probattn.data.sources import rotten_tomatoes_splits
    from probattn.hf import convert, load_pretrained

    texts = rotten_tomatoes_splits(seed=0).test.texts[:args.batch]
    rows = []
    for normalization in args.normalizations:
        model, tokenizer = load_pretrained("minilm")
        convert(model, normalization=normalization)
        batch = dict(tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True)
        with torch.no_grad():
            t0 = time.process_time()
            got = compiled(**batch).last_hidden_state
            compile_cpu = time.process_time() - t0
            want = model(**batch).last_hidden_state
            valid = batch["attention_mask"].bool()
            diff = float((got - want)[valid].abs().max())
            eager, fast = [], []
            for _ in range(args.calls):
                for fn, times in ((model, eager), (compiled, fast)):
                    t0 = time.process_time()
                    fn(**batch)
                    times.append(time.process_time() - t0)
        row = {"normalization": normalization, "eager_ms": 1e3 * statistics.median(eager),
               "compiled_ms": 1e3 * statistics.median(fast),
               "ratio": statistics.median(fast) / statistics.median(eager),
               "first_call_cpu_s": compile_cpu, "max_abs_diff": diff, "shape": list(batch["input_ids"].shape)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"hf-compile-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"threads": args.threads, "calls": args.calls, "torch": torch.__version__,
                                "rows": rows}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
