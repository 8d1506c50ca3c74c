"""The one training loop: ``train(TrainConfig) -> RunResult``.

Per optimizer step: ``grad_accum`` micro-batches (forward, task loss + alignment term, backward; DDP syncs
on the last), a finiteness check of the losses and of the all-reduced gradients, gradient clipping (inside
the repulsive hook when ``repulsive`` is on, which rewrites the gradients first), ``optimizer.step()``,
the LR schedule (linear warm-up, linear decay to 0 at ``max_steps``). Every ``checkpoint_every`` steps and at
the end an atomic checkpoint; at the end validation / test / OOD metrics, a saved model and
``metrics.json``. See docs/training.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import resource
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from probattn.alignment import alignment_loss
from probattn.data import DataSplits, TextClassificationData
from probattn.repulsive import RepulsiveHeads
from probattn.training import distributed as D
from probattn.training.checkpoint import (
    capture_rng_state,
    checkpoint_dir,
    find_checkpoints,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from probattn.training.config import TrainConfig
from probattn.training.data import load_ood, load_splits
from probattn.training.evaluate import Predictions, predict
from probattn.training.modeling import (
    Encoder,
    adapt_converted,
    batch_inputs,
    build_model,
    forward_logits,
    inference_state_dict,
)
from probattn.training.outputs import has_checkpoint, prepare_output, write_run
from probattn.training.selection import BestCheckpoint, epoch_warning

__all__ = ["NonFiniteError", "RunResult", "train"]


class NonFiniteError(FloatingPointError):
    """A loss or gradient became NaN/inf; the message names the step and the component."""


@dataclass
class RunResult:
    """What :func:`train` returns. ``metrics`` is the content of ``metrics.json``; ``model`` is the trained
    (unwrapped, eval-mode) model and ``encode(texts, pairs=None)`` its tokenizer; ``history`` has one record
    per optimizer step run in this process."""

    metrics: dict[str, Any]
    output_dir: Path | None
    model: nn.Module
    encode: Encoder
    label_names: tuple[str, ...]
    history: list[dict[str, Any]]
    config: TrainConfig
    splits: DataSplits | None = None
    ood: TextClassificationData | None = field(default=None, repr=False)

    def predict(self, data: TextClassificationData, *, batch_size: int | None = None) -> Predictions:
        """Per-example probabilities ``(N, C)`` and labels of the trained model on ``data``."""
        return predict(self.model, self.encode, data, batch_size=batch_size or self.config.eval_batch_size)


def _print_message(message: str) -> None:
    print(f"probattn train: {message}", file=sys.stderr, flush=True)


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    warmup, total = config.warmup_steps, config.max_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB: process peak RSS


def _data_digest(data: TextClassificationData) -> str:
    """sha256 of the training texts, text pairs and labels (a resumed run must see the same data)."""
    digest = hashlib.sha256()
    for value in (data.texts, data.text_pairs or [], data.labels, list(data.label_names)):
        digest.update(json.dumps(value).encode())
    return digest.hexdigest()


def _check_same_data(saved: dict[str, Any], train: TextClassificationData, steps_per_epoch: int) -> None:
    """The documented "training data changed" error, before any saved tensor meets a model of another shape."""
    position, then = saved["data"], tuple(saved["label_names"])
    if then != tuple(train.label_names):
        change = f"labels {list(then)} then, {list(train.label_names)} now"
    elif position["num_examples"] != len(train) or position["steps_per_epoch"] != steps_per_epoch:
        change = f"{position['num_examples']} examples then, {len(train)} now"
    elif position.get("sha256") != _data_digest(train):
        change = "same size, different texts or labels"
    else:
        return
    raise ValueError(f"--resume: the training data changed since the checkpoint ({change}); resume on the same "
                     f"data or start a new run (--overwrite or another --output)")


def _check_resumable(saved: dict[str, Any], config: TrainConfig, path: Path) -> None:
    before = TrainConfig.from_dict(saved["config"], source=str(path))
    diff = before.differences(config)
    if diff:
        listed = "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())
        raise ValueError(f"--resume: {path} was written by a different configuration ({listed}); resume with "
                         f"the same options, or start a new run with another --output (or --overwrite)")
    if saved["step"] > config.max_steps:
        raise ValueError(f"--resume: {path} is at step {saved['step']}, beyond --max-steps {config.max_steps}")


class _Guard:
    """Raises :class:`NonFiniteError` naming the step and the component that went non-finite."""

    def __init__(self):
        self.step, self.last_checkpoint, self.last_path = 0, None, None

    def fail(self, component: str, value: str) -> None:
        kept = (f"the last good checkpoint ({self.last_path}, step {self.last_checkpoint}) is kept"
                if self.last_checkpoint is not None else "no checkpoint was written")
        raise NonFiniteError(f"step {self.step}: non-finite {component} ({value}); training stopped and {kept}. "
                             f"Lower --lr, check the data, or clip harder (--max-grad-norm)")

    def scalar(self, component: str, value: Tensor) -> None:
        if not torch.isfinite(value):
            self.fail(component, str(float(value)))

    def tensors(self, component: str, tensors: list[Tensor | None]) -> None:
        present = [t for t in tensors if t is not None]
        # one fused max-abs: NaN or inf anywhere makes it non-finite, finite values never do
        if present and not torch.isfinite(nn.utils.get_total_norm(present, norm_type=float("inf"))):
            self.fail(component, "NaN or inf values")

    def gradients(self, component: str, params: list[nn.Parameter]) -> None:
        self.tensors(component, [p.grad for p in params])


def train(config: TrainConfig, *, progress: bool = True,
          on_step: Callable[[dict[str, Any]], None] | None = None, log: Callable[[str], None] | None = None,
          evaluate: bool = True, desc: str | None = None, splits: DataSplits | None = None) -> RunResult:
    """Train one model as ``config`` says and evaluate it (see the module docstring and docs/training.md).

    Under ``torchrun`` every process calls this; rank 0 alone writes files. ``on_step(record)`` is called after
    every optimizer step with that step's history record. ``log(message)`` receives the run's notices (default:
    printed to stderr as ``probattn train: ...``); ``evaluate=False`` skips the final validation/test/OOD
    evaluation (timing passes); ``desc`` labels the progress bar; ``splits``: train/validation/test data to use
    instead of loading ``config.data`` (a study's fold).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    ctx = D.setup(config.device)
    say = log or _print_message
    try:
        return _train(config, ctx, progress, on_step, lambda _, message: ctx.is_main and say(message), evaluate,
                      desc, splits)
    finally:
        ctx.close()


def _train(config: TrainConfig, ctx: D.Distributed, progress: bool,
           on_step: Callable[[dict[str, Any]], None] | None, _say: Callable[[D.Distributed, str], Any],
           evaluate: bool, desc: str | None, splits: DataSplits | None = None) -> RunResult:
    out = prepare_output(config, ctx)
    saved = None
    if config.resume and out is not None and has_checkpoint(out):
        saved = load_checkpoint(out)
        _check_resumable(saved, config, out)
        _say(ctx, f"resuming from {out} at step {saved['step']}")
    elif config.resume:
        _say(ctx, "--resume: no checkpoint found, starting from step 0")

    splits = splits if splits is not None else load_splits(config)
    ood = load_ood(config, splits.label_names) if evaluate else None
    steps_per_epoch = len(splits.train) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"--batch-size {config.batch_size} is larger than the training set "
                         f"({len(splits.train)} examples); lower it")
    if saved is not None:
        _check_same_data(saved, splits.train, steps_per_epoch)
    warning = epoch_warning(config.max_steps, config.batch_size, len(splits.train))
    if warning is not None and not config.eval_every:
        _say(ctx, warning)
    elif warning is not None:
        _say(ctx, warning.split(":")[0] + f": the best validation checkpoint is kept (--eval-every "
                  f"{config.eval_every}, --patience {config.patience})")

    torch.manual_seed(config.seed)
    np.random.seed(config.seed % 2**32)
    model, encode = build_model(config, splits.train, tokenizer_state=saved["tokenizer"] if saved else None)
    model.to(ctx.device).train()
    adapted = None  # --adapt-steps: a fresh run distils first; a resumed one has it in its checkpoint
    if saved is None and config.adapt_steps:
        adapted = adapt_converted(model, encode, config, splits.train.texts)
        _say(ctx, f"adapted the converted encoder toward the original: {adapted['steps']} steps, distillation loss "
                  f"{adapted['first_loss']:.4f} -> {adapted['last_loss']:.4f}, {adapted['cpu_seconds']:.0f} s CPU")
    encoded = encode(splits.train.texts, splits.train.text_pairs)
    if encoded.truncated:
        _say(ctx, f"truncated {encoded.truncated} of {len(splits.train)} training texts to {config.max_length} "
                  f"tokens (--max-length)")
    labels = torch.tensor(splits.train.labels)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    guard = _Guard()
    repulsive = None
    if config.repulsive:
        if config.repulsive_preset:  # the released run's alpha, stepsize and layers
            repulsive = RepulsiveHeads.from_preset(model, config.repulsive_preset, method=config.repulsive,
                                                   seed=config.seed, max_grad_norm=config.max_grad_norm or None)
        else:
            repulsive = RepulsiveHeads(model, method=config.repulsive, alpha=config.repulsive_alpha,
                                       seed=config.seed, max_grad_norm=config.max_grad_norm or None)
        repulsive.attach(optimizer)
        optimizer.register_step_pre_hook(lambda *_: guard.gradients("repulsive update (rewritten gradients)",
                                                                     params))

    history: list[dict[str, Any]] = []
    start = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if repulsive is not None:
            repulsive.load_state_dict(saved["repulsive"])
        restore_rng_state(saved["rng"])
        history, start = list(saved["history"]), int(saved["step"])
        guard.last_checkpoint, guard.last_path = start, find_checkpoints(out)[-1][1]
    wrapped = model
    if ctx.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    data_digest = _data_digest(splits.train)
    # the run's identity: kept by --resume (in the checkpoint), new for every fresh run; recorded with the model
    run_id = str(saved.get("run_id") or uuid.uuid4().hex) if saved is not None else uuid.uuid4().hex

    def checkpoint(step: int, epoch: int, order: np.ndarray) -> None:
        if out is None:
            return
        D.assert_in_sync(ctx, model)
        if ctx.is_main:
            save_checkpoint(out, {
                "step": step, "config": config.to_dict(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "repulsive": repulsive.state_dict() if repulsive is not None else None,
                "rng": capture_rng_state(), "history": history, "tokenizer": encode.state,
                "label_names": splits.label_names, "run_id": run_id,
                "data": {"seed": config.seed, "epoch": epoch, "step_in_epoch": step - epoch * steps_per_epoch,
                         "steps_per_epoch": steps_per_epoch, "num_examples": len(splits.train),
                         "sha256": data_digest, "order": torch.from_numpy(order)},
            }, step=step)
        ctx.barrier()
        guard.last_checkpoint, guard.last_path = step, checkpoint_dir(out, step)

    grad_accum, order, order_epoch, seconds, cpu_seconds = config.grad_accum, None, -1, 0.0, 0.0
    if saved is not None:  # continue the saved epoch in the saved order
        order, order_epoch = saved["data"]["order"].numpy(), int(saved["data"]["epoch"])
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    selection = BestCheckpoint(config.patience) if config.eval_every else None
    last_step = start
    bar = tqdm(total=config.max_steps, initial=start, unit="step", disable=not (progress and ctx.is_main),
               dynamic_ncols=True, desc=desc, leave=desc is None)
    for step in range(start, config.max_steps):
        began, cpu_began = time.perf_counter(), time.process_time()
        guard.step = step + 1
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = D.epoch_order(len(splits.train), seed=config.seed, epoch=epoch), epoch
        sums = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # read back once per step, not per micro-batch
        for j, index in enumerate(D.micro_batches(order, in_epoch, batch_size=config.batch_size,
                                                  grad_accum=grad_accum, world_size=ctx.world_size,
                                                  rank=ctx.rank)):
            torch.manual_seed(D.seed_for(config.seed, step, ctx.rank * grad_accum + j))
            ids, mask = batch_inputs(encoded, index, ctx.device)
            sync = j == grad_accum - 1 or not ctx.enabled
            with contextlib.nullcontext() if sync else wrapped.no_sync():
                try:
                    logits = forward_logits(wrapped, ids, mask)
                except ValueError as exc:  # probattn's attention refuses NaN/inf inputs
                    if re.search(r"NaN|inf", str(exc)):
                        guard.fail("forward pass", str(exc))
                    raise
                task = F.cross_entropy(logits.float(), labels[index].to(ctx.device))
                try:  # a regularizer that makes NaN says so itself (FloatingPointError naming it and its layer)
                    align = alignment_loss(model, distance_batch=0)[0] if config.alignment else task.new_zeros(())
                except FloatingPointError as exc:
                    guard.fail("alignment term", str(exc))
                ((task + align) / grad_accum).backward()
            sums += torch.stack([task.detach(), align.detach()]).double() / grad_accum
        sums = ctx.all_reduce_mean(sums).cpu()
        guard.scalar("task loss", sums[0])
        guard.scalar("alignment term", sums[1])
        guard.gradients("gradient of the task loss" + (" + alignment term" if config.alignment else ""), params)
        if repulsive is None and config.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        torch.manual_seed(D.seed_for(config.seed, step, -1))
        lr = optimizer.param_groups[0]["lr"]
        try:
            optimizer.step()  # RepulsiveHeads rewrites the gradients inside it (and names itself if it makes NaN)
        except FloatingPointError as exc:
            guard.fail("repulsive update", str(exc))
        guard.tensors("parameters after the optimizer update", params)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - began
        cpu_seconds += time.process_time() - cpu_began
        record = {"step": step + 1, "loss": float(sums.sum()), "task_loss": float(sums[0]),
                  "alignment": float(sums[1]), "lr": lr}
        if repulsive is not None:
            record["repulsion_ratio"] = float(repulsive.last_stats.get("repulsion_ratio", float("nan")))
        history.append(record)
        bar.update(1)
        examples_per_second = config.batch_size * (step + 1 - start) / max(seconds, 1e-9)
        bar.set_postfix(loss=f"{record['loss']:.4f}", examples_per_s=f"{examples_per_second:.0f}")
        if on_step is not None:
            on_step(record)
        last_step = step + 1
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.max_steps:
            checkpoint(step + 1, epoch, order)
        if selection is not None and ((step + 1) % config.eval_every == 0 or step + 1 == config.max_steps):
            # validation accuracy, ties broken by the lower NLL
            measured = predict(model, encode, splits.validation, batch_size=config.eval_batch_size).metrics()
            record.update(val_accuracy=measured["accuracy"], val_nll=measured["nll"])
            if selection.update(step + 1, measured["accuracy"] - 1e-6 * min(measured["nll"], 1e5), model):
                break
    bar.close()
    steps_run = last_step - start
    if steps_run:  # (a resumed run that had already reached max_steps is only evaluated)
        checkpoint(last_step, order_epoch, order)
    if selection is not None:
        selection.restore(model)

    model.eval()
    metrics: dict[str, Any] | None = None
    if ctx.is_main:
        measure = lambda data: predict(model, encode, data, batch_size=config.eval_batch_size).metrics()  # noqa: E731
        metrics = {"validation": measure(splits.validation), "test": measure(splits.test)} if evaluate else {}
        if ood is not None and evaluate:
            metrics["ood"] = measure(ood)
        metrics["train"] = {
            "steps": config.max_steps, "steps_this_process": steps_run,
            "seconds_per_step": seconds / steps_run if steps_run else None,
            "cpu_seconds_per_step": cpu_seconds / steps_run if steps_run else None,
            "peak_memory_mb": _peak_memory_mb(ctx.device), "world_size": ctx.world_size,
            "final_loss": history[-1]["loss"] if history else None,
            "steps_trained": last_step, "epochs": last_step / steps_per_epoch,
            "adapt": adapted,  # --adapt-steps before fine-tuning (None: off, or resumed past it)
            "selection": {**selection.record(), "best_epoch": selection.best_step / steps_per_epoch}
            if selection is not None else None,
        }
        metrics["data"] = {"train": len(splits.train), "validation": len(splits.validation),
                           "test": len(splits.test), "ood": len(ood) if ood is not None else None,
                           "label_names": list(splits.label_names), "truncated_train": encoded.truncated}
        if out is not None:
            metrics["run"] = write_run(out, config=config, metrics=metrics, history=history,
                                       label_names=splits.label_names, state_dict=inference_state_dict(model),
                                       tokenizer=encode.state, run_id=run_id)
    metrics = ctx.broadcast_object(metrics)
    return RunResult(metrics=metrics, output_dir=out, model=model, encode=encode, label_names=splits.label_names,
                     history=history, config=config, splits=splits, ood=ood)
