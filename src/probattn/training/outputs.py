"""The run directory: checked before training, written atomically after it.

``DIR/checkpoint.pt`` (resumable state), and once the run is finished ``model.pt`` (inference weights, label
names, tokenizer, config), ``config.json``, ``history.json`` and, last, ``metrics.json`` — its presence marks
a finished run, which is never overwritten without ``--overwrite``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from probattn.training.checkpoint import atomic_write, write_json
from probattn.training.config import TrainConfig
from probattn.training.distributed import Distributed

__all__ = ["CHECKPOINT", "METRICS", "MODEL", "prepare_output", "write_run"]

CHECKPOINT, METRICS, MODEL = "checkpoint.pt", "metrics.json", "model.pt"


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
    if (out / CHECKPOINT).exists() and not (config.resume or config.overwrite):
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
        for name in (METRICS, CHECKPOINT):  # a half-replaced run must not look finished or resumable
            (out / name).unlink(missing_ok=True)
    ctx.barrier()
    return out


def write_run(out: Path, *, config: TrainConfig, metrics: dict[str, Any], history: list[dict[str, Any]],
              label_names: tuple[str, ...], state_dict: dict[str, torch.Tensor], tokenizer: dict[str, Any]) -> None:
    """Write the finished run (``metrics.json`` last, every file atomically)."""
    saved = {"format": 1, "config": config.to_dict(), "label_names": list(label_names), "tokenizer": tokenizer,
             "state_dict": state_dict}
    atomic_write(out / MODEL, lambda handle: torch.save(saved, handle))
    write_json(out / "config.json", config.to_dict())
    write_json(out / "history.json", history)
    write_json(out / METRICS, metrics)
