"""CPU time of decoding with ``probattn experiment nmt``'s model: greedy on the validation books, beam search on
the test books, for an untrained model (it never emits ``</s>``, so every sentence runs to the length limit
``1.5 × source + 10``: an upper bound for a trained model, which stops at its own ``</s>``).

    PYTHONPATH=src python benchmarks/nmt_decode_time.py --size small --threads 1 --test-examples 100
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from probattn.data.bible import bible_splits
from probattn.experiments.nmt import SIZES, prepare
from probattn.models import Seq2SeqTransformer
from probattn.training.seq2seq import Seq2SeqTrainConfig, translate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--test-examples", type=int, default=100)
    parser.add_argument("--validation-examples", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    splits = bible_splits()
    tokenizer, data, _ = prepare(splits, Path(os.environ.get("TMPDIR", "/tmp")) / "probattn-nmt-bench",
                                 vocab_size=8000, max_length=128, resume=False)
    torch.manual_seed(0)
    config = Seq2SeqTrainConfig.from_dict(SIZES[args.size])
    model = Seq2SeqTransformer(config.model_config(data.vocab_size, pad_id=0, bos_id=2, eos_id=3)).eval()
    rows = {}
    for name, sources, beam in (("validation greedy", data.validation_sources[: args.validation_examples], 1),
                                (f"test beam {args.beam}", tokenizer.encode(splits.test.sources[: args.test_examples]),
                                 args.beam)):
        wall, cpu = time.perf_counter(), time.process_time()
        hyps = translate(model, sources, beam=beam)
        rows[name] = {"sentences": len(sources), "cpu_s": time.process_time() - cpu,
                      "wall_s": time.perf_counter() - wall, "mean_output_tokens": sum(map(len, hyps)) / len(hyps)}
        print(json.dumps({"size": args.size, "threads": args.threads, "what": name, **rows[name]}), flush=True)


if __name__ == "__main__":
    main()
