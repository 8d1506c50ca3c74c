"""The run directory: checked before training, written atomically after it.

``DIR/checkpoint-<step>/`` (resumable state, the newest two kept; see :mod:`probattn.training.checkpoint`),
and once the run is finished ``model.safetensors`` (inference weights) with ``model.json`` (format, config,
label names, tokenizer, the sha256 of ``model.safetensors``), ``config.json``, ``history.json`` and, last,
``metrics.json`` — its presence marks a finished run, which is never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from probattn.training.checkpoint import (
    FORMAT,
    LEGACY_CHECKPOINT,
    atomic_write,
    file_digest,
    find_checkpoints,
    tensors_to_bytes,
    write_json,
)
from probattn.training.config import TrainConfig
from probattn.training.distributed import Distributed

__all__ = ["METRICS", "MODEL", "MODEL_INFO", "has_checkpoint", "prepare_output", "write_run"]

METRICS, MODEL, MODEL_INFO = "metrics.json", "model.safetensors", "model.json"
LEGACY_MODEL = "model.pt"  # probattn 0.1's pickle: refused, never loaded


def has_checkpoint(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint (or a legacy ``checkpoint.pt``, which ``--resume`` then refuses)."""
    return bool(find_checkpoints(out)) or (out / LEGACY_CHECKPOINT).is_file()


def prepare_output(config: TrainConfig, ctx: Distributed) -> Path | None:
    """Check (before any training) that ``config.output`` can be written and holds no run we would clobber."""
    if config.output is None:
        for flag, value in (("checkpoint_every", config.checkpoint_every), ("resume", config.resume)):
            if value:
                raise ValueError(f"--{flag.replace('_', '-')} needs --output DIR (where checkpoints live)")
        return None
    out = Path(config.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out}: exists and is not a directory; choose a directory path")
    if (out / METRICS).exists() and not config.overwrite:
        raise ValueError(f"--output {out}: holds a finished run ({METRICS}); pass --overwrite to replace it or "
                         f"choose another --output")
    if has_checkpoint(out) and not (config.resume or config.overwrite):
        raise ValueError(f"--output {out}: holds a checkpoint of an unfinished run; pass --resume to continue it "
                         f"or --overwrite to start over")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probattn-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--output {out}: cannot write there ({exc.strerror or exc}); choose a writable "
                         f"directory") from exc
    ctx.barrier()
    if config.overwrite and not config.resume and ctx.is_main:
        for name in (METRICS, LEGACY_CHECKPOINT):  # a half-replaced run must not look finished or resumable
            (out / name).unlink(missing_ok=True)
        for _, directory in find_checkpoints(out):
            shutil.rmtree(directory)
    ctx.barrier()
    return out


def write_run(out: Path, *, config: TrainConfig, metrics: dict[str, Any], history: list[dict[str, Any]],
              label_names: tuple[str, ...], state_dict: dict[str, torch.Tensor], tokenizer: dict[str, Any]) -> None:
    """Write the finished run (``metrics.json`` last, every file atomically)."""
    weights = tensors_to_bytes(state_dict)
    atomic_write(out / MODEL, lambda handle: handle.write(weights))
    write_json(out / MODEL_INFO, {"format": FORMAT, "config": config.to_dict(), "label_names": list(label_names),
                                  "tokenizer": tokenizer, "sha256": {MODEL: file_digest(weights)}})
    write_json(out / "config.json", config.to_dict())
    write_json(out / "history.json", history)
    write_json(out / METRICS, metrics)
