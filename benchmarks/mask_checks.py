"""CPU time of one typical attention call with padding, to see what the mask checks cost on the hot path.

Usage (interleave two source trees, e.g. before and after a change; one thread, CPU time per call):

    for i in 1 2 3 4 5 6; do
      python benchmarks/mask_checks.py /path/to/old/src | sed 's/^/old /'
      python benchmarks/mask_checks.py src | sed 's/^/new /'
    done

Prints a dict of milliseconds per call for B=8, H=8, L=128, D=64 (float32): softmax with a key padding
mask, doubly with key and query padding, and doubly with the padding spelled as a (B, 1, L, L) bool attn_mask
(which runs the block-completeness check).
"""

import sys
import time
import warnings

import torch

sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "src")
from probattn.functional import attention

torch.set_num_threads(1)
warnings.simplefilter("ignore")
B, H, L, D = 8, 8, 128, 64
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(B, H, L, D, generator=g) for _ in range(3))
valid = torch.arange(L)[None, :] < torch.randint(L // 2, L + 1, (B, 1), generator=g)
pattern = valid[:, None, :, None] & valid[:, None, None, :]
results = {}
for name, normalization, masks in [
    ("softmax+kpm", "softmax", dict(key_padding_mask=valid)),
    ("doubly+kpm+qpm", "doubly", dict(key_padding_mask=valid, query_padding_mask=valid)),
    ("doubly+attn_mask(B,1,L,L)", "doubly", dict(attn_mask=pattern)),
]:
    for _ in range(3):
        attention(q, k, v, normalization=normalization, **masks)
    n = 40 if normalization == "softmax" else 20
    start = time.process_time()
    for _ in range(n):
        attention(q, k, v, normalization=normalization, **masks)
    results[name] = round((time.process_time() - start) / n * 1e3, 2)
print(results)
