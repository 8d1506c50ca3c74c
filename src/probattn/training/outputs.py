"""The run directory: checked before training, written atomically after it.

``DIR/checkpoint-<step>/`` (resumable state, the newest two kept; see :mod:`probattn.training.checkpoint`),
and once the run is finished ``model.safetensors`` (inference weights) with ``model.json`` (format, config,
label names, tokenizer, the sha256 of ``model.safetensors``), ``config.json``, ``history.json`` and, last,
``metrics.json`` — its presence marks a finished run, which is never overwritten without ``--overwrite``; it
records the run id and the sha256 of ``model.safetensors`` and ``model.json``, which loading checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from probattn import io as safe_io
from probattn.training.checkpoint import (
    FORMAT,
    LEGACY_CHECKPOINT,
    find_checkpoints,
    load_checkpoint,
    tensors_to_bytes,
)
from probattn.training.config import TrainConfig
from probattn.training.distributed import Distributed

__all__ = ["METRICS", "MODEL", "MODEL_INFO", "RUN_FILES", "has_checkpoint", "prepare_output", "write_run"]

METRICS, MODEL, MODEL_INFO = "metrics.json", "model.safetensors", "model.json"
LEGACY_MODEL = "model.pt"  # probattn 0.1's pickle: refused, never loaded
# every file a finished `probattn train --output DIR` writes at the top of DIR (checked before training)
RUN_FILES = (MODEL, MODEL_INFO, "config.json", "history.json", METRICS, "results.md", "reliability.png")


def has_checkpoint(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint (or a legacy ``checkpoint.pt``, which ``--resume`` then refuses)."""
    return bool(find_checkpoints(out)) or (out / LEGACY_CHECKPOINT).is_file()


def prepare_output(config: TrainConfig, ctx: Distributed) -> Path | None:
    """Check (before any training) that ``config.output`` can be written and holds no run we would clobber,
    then claim it (:func:`probattn.io.claim_output_dir`: a folder holding files probattn did not write is
    refused; ``--overwrite`` deletes only the files an earlier probattn command recorded there)."""
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
    if config.resume and not find_checkpoints(out) and (out / LEGACY_CHECKPOINT).is_file():
        load_checkpoint(out)  # the clear "old pickle format" refusal (nothing is unpickled)
    refused: Exception | None = None
    if ctx.is_main:  # one process claims (and with --overwrite clears) the folder; the others hear the verdict
        try:
            safe_io.claim_output_dir(out, command="probattn train", overwrite=config.overwrite,
                                     resume=config.resume, will_write=RUN_FILES)
        except (safe_io.OutputFolderError, OSError) as exc:
            refused = exc
    message = ctx.broadcast_object(None if refused is None else str(refused))
    if refused is not None:
        raise refused
    if message is not None:
        raise safe_io.OutputFolderError(message)
    ctx.barrier()
    return out


def write_run(out: Path, *, config: TrainConfig, metrics: dict[str, Any], history: list[dict[str, Any]],
              label_names: tuple[str, ...], state_dict: dict[str, torch.Tensor], tokenizer: dict[str, Any],
              run_id: str) -> dict[str, Any]:
    """Write the finished run, every file atomically: ``metrics.json`` is removed first and written last, with
    ``run`` = the run id and the sha256 of ``model.safetensors`` and ``model.json`` (so a model is finished,
    belongs to this run and is unchanged exactly when :func:`probattn.training.load_trained` finds them equal).
    Returns that ``run`` record."""
    safe_io.remove(out / METRICS)  # while the model is replaced the folder holds no finished run
    weights = tensors_to_bytes(state_dict)
    info = (json.dumps({"format": FORMAT, "run_id": run_id, "config": config.to_dict(),
                        "label_names": list(label_names), "tokenizer": tokenizer,
                        "sha256": {MODEL: safe_io.sha256_bytes(weights)}}, indent=2) + "\n").encode()
    safe_io.write_bytes(out / MODEL, weights)
    safe_io.write_bytes(out / MODEL_INFO, info)
    safe_io.write_json(out / "config.json", config.to_dict())
    safe_io.write_json(out / "history.json", history)
    record = {"id": run_id, "sha256": {MODEL: safe_io.sha256_bytes(weights), MODEL_INFO: safe_io.sha256_bytes(info)}}
    safe_io.write_json(out / METRICS, {**metrics, "run": record})
    return record
