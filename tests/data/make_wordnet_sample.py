"""Rebuild ``src/probattn/data/samples/wordnet_sample.noun`` from the installed WordNet (Debian wordnet-base).

The hypernym chains (up to the root) of 40 synsets drawn with seed 0; each line keeps its hypernym pointers
only and its gloss cut to 100 characters. Run: ``PYTHONPATH=src python tests/data/make_wordnet_sample.py``.
"""

from __future__ import annotations

import random

from probattn.data.wordnet import DEFAULT_PATH, SAMPLE_PATH, load_wordnet_nouns


def main() -> None:
    graph = load_wordnet_nouns()
    parents: dict[int, list[int]] = {}
    for s, t in graph.edge_index.t().tolist():
        parents.setdefault(s, []).append(t)
    chosen: set[int] = set()
    stack = random.Random(0).sample(range(graph.num_nodes), 40)
    while stack:
        node = stack.pop()
        if node not in chosen:
            chosen.add(node)
            stack.extend(parents.get(node, []))
    keep = {graph.offsets[i] for i in chosen}
    lines = []
    for line in DEFAULT_PATH.read_text(encoding="utf-8").splitlines():
        if line.startswith("  ") or int(line.split()[0]) not in keep:
            continue
        head, _, gloss = line.partition(" | ")
        f = head.split()
        p_at = 4 + 2 * int(f[3], 16)
        ptrs = [f[p_at + 1 + 4 * i: p_at + 5 + 4 * i] for i in range(int(f[p_at]))]
        hyper = [p for p in ptrs if p[0] in ("@", "@i") and p[2] == "n" and int(p[1]) in keep]
        fields = f[:p_at] + [f"{len(hyper):03d}"] + [x for p in hyper for x in p]
        lines.append(" ".join(fields) + " | " + gloss.strip()[:100])
    SAMPLE_PATH.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} synsets -> {SAMPLE_PATH}")


if __name__ == "__main__":
    main()
