"""Attention export that bertviz's ``head_view`` / ``model_view`` read directly.

``probattn diagnose`` writes, per model, ``<stem>.safetensors`` (tensors ``layer.0`` … ``layer.{L-1}``, each
``(1, heads, N, N)`` float32: the first example's attention, queries × keys over its real tokens) and
``<stem>.json`` (``{"format": "probattn-bertviz-1", "tokens": [...], "layers": L, "layer_names": [...],
"model": label}``). No pickle: safetensors and JSON only. In a notebook::

    from probattn.report.bertviz import load_attention
    attention, tokens = load_attention("report/attention.safetensors")
    from bertviz import head_view; head_view(attention, tokens)   # or model_view(attention, tokens)

Without probattn: ``safetensors.torch.load_file`` gives the tensors; order them by layer number, and read
``tokens`` from the JSON file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

FORMAT = "probattn-bertviz-1"

__all__ = ["FORMAT", "export_attention", "load_attention"]


def export_attention(path: str | Path, maps: Sequence[np.ndarray], tokens: Sequence[str], *, model: str = "",
                     layer_names: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``path`` (``.safetensors``) and its ``.json`` sidecar; ``maps[layer]`` is ``(H, N, N)`` over ``tokens``.

    Returns the two paths.
    """
    from safetensors.torch import save

    from probattn.io import write_bytes, write_text

    path = Path(path).with_suffix(".safetensors")
    n = len(tokens)
    for i, m in enumerate(maps):
        if m.ndim != 3 or m.shape[1:] != (n, n):
            raise ValueError(f"maps[{i}] must be (heads, {n}, {n}) for {n} tokens, got {tuple(m.shape)}")
    tensors = {f"layer.{i}": torch.as_tensor(np.asarray(m, dtype=np.float32))[None].contiguous()
               for i, m in enumerate(maps)}
    write_bytes(path, save(tensors))  # atomic, never through a link
    meta = {"format": FORMAT, "tokens": list(tokens), "layers": len(maps), "layer_names": list(layer_names),
            "model": model}
    sidecar = path.with_suffix(".json")
    write_text(sidecar, json.dumps(meta, indent=1))
    return path, sidecar


def load_attention(path: str | Path) -> tuple[tuple[torch.Tensor, ...], list[str]]:
    """``(attention, tokens)`` as bertviz takes them: a tuple of per-layer ``(1, heads, N, N)`` tensors and the
    ``N`` token strings, from a file written by :func:`export_attention`."""
    from safetensors.torch import load_file

    path = Path(path).with_suffix(".safetensors")
    meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path.with_suffix('.json')} is not a probattn attention export (format {meta.get('format')!r})")
    tensors = load_file(str(path))
    return tuple(tensors[f"layer.{i}"] for i in range(int(meta["layers"]))), list(meta["tokens"])
