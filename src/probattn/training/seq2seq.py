"""Training loop for :class:`probattn.models.Seq2SeqTransformer` (translation): ``train_seq2seq(config, data)``.

fairseq's recipe at small scale: batches of up to ``max_tokens`` padded tokens (pairs sorted by length, batches
shuffled per epoch; a function of ``(seed, epoch)`` only), label-smoothed cross entropy normalized by the
target tokens of the step, Adam (0.9, 0.98) with decoupled weight decay, linear warm-up then inverse-sqrt
decay. Options that make the attention variants: ``normalization`` (encoder self-attention), ``repulsive``
(``"svgd" | "spos"`` on Q/K/V of every attention: :func:`attach_repulsive`) and ``alignment`` (CT on the
encoder self-attention: :func:`attach_encoder_alignment`).

Every ``eval_every`` steps the validation set is decoded greedily and its BLEU/chrF are added to the history;
every ``checkpoint_every`` steps (and at the end) the state is saved with
:func:`probattn.training.checkpoint.save_checkpoint`, and ``resume=True`` continues from the newest one. Under
``torchrun`` each process takes an equal share of every batch (DDP); rank 0 alone writes and evaluates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from probattn.models.seq2seq import (
    Seq2SeqConfig,
    Seq2SeqTransformer,
    attention_modules,
    collate,
    dataclass_from_dict,
    label_smoothed_loss,
    paper_particle_sets,
)
from probattn.training import distributed as D
from probattn.training.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["Seq2SeqData", "Seq2SeqRun", "Seq2SeqTrainConfig", "attach_encoder_alignment", "attach_repulsive",
           "corpus_scores", "token_batches", "train_seq2seq", "translate"]


@dataclass(frozen=True)
class Seq2SeqTrainConfig:
    """One translation training run: model sizes, attention variant and optimization."""

    # model
    embed_dim: int = 256
    num_heads: int = 4
    ffn_dim: int = 1024
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1
    normalize_before: bool = True
    max_positions: int = 256
    # attention variant
    normalization: str = "softmax"
    repulsive: str | None = None
    repulsive_preset: str = "fairseq_iwslt"
    spos_beta: float = 1.0
    alignment: str | None = None
    alignment_weight: float = 0.01
    # optimization
    seed: int = 0
    max_steps: int = 500
    max_tokens: int = 2048
    lr: float = 1e-3
    warmup_steps: int = 150
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    max_grad_norm: float = 0.0
    # evaluation and files
    eval_every: int = 100
    checkpoint_every: int = 100
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.repulsive not in (None, "svgd", "spos"):
            raise ValueError(f"repulsive must be None, 'svgd' or 'spos', got {self.repulsive!r}")
        if self.alignment not in (None, "ct", "gan", "mmd", "sinkhorn"):
            raise ValueError(f"alignment must be None or one of ct, gan, mmd, sinkhorn, got {self.alignment!r}")
        for name in ("max_steps", "max_tokens", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name != "checkpoint_every" else 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (self.lr > 0 and self.warmup_steps >= 0 and 0 <= self.label_smoothing < 1):
            raise ValueError(f"need lr > 0, warmup_steps >= 0 and label_smoothing in [0, 1); got lr={self.lr}, "
                             f"warmup_steps={self.warmup_steps}, label_smoothing={self.label_smoothing}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Seq2SeqTrainConfig:
        return dataclass_from_dict(cls, values)

    def model_config(self, vocab_size: int, *, pad_id: int, bos_id: int, eos_id: int) -> Seq2SeqConfig:
        # every model option this run config also has (sizes, dropout, norm placement, normalization), by name
        shared = {f.name for f in fields(Seq2SeqConfig)} & {f.name for f in fields(self)}
        return Seq2SeqConfig(vocab_size=vocab_size, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id,
                             **{name: getattr(self, name) for name in sorted(shared)})


@dataclass(frozen=True)
class Seq2SeqData:
    """Tokenized training pairs and the validation texts; ``decode(ids) -> texts`` turns ids back into text."""

    train_sources: list[list[int]]
    train_targets: list[list[int]]
    validation_sources: list[list[int]]
    validation_references: list[str]
    decode: Callable[[list[list[int]]], list[str]]
    vocab_size: int
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3


@dataclass
class Seq2SeqRun:
    """What :func:`train_seq2seq` returns: the trained model (eval mode), the history (one record per step,
    validation records carry ``val_bleu`` / ``val_chrf`` / ``val_seconds``) and ``timing``: wall and CPU seconds
    spent in training steps (not evaluating; on CUDA after a synchronize, so the wall covers the GPU's work) and
    how many steps they cover (all processes that resumed the run)."""

    model: Seq2SeqTransformer
    history: list[dict[str, Any]]
    timing: dict[str, float]
    steps_this_process: int
    repulsive_sets: list[str]


# -- attention variants -----------------------------------------------------------------------------------------
def attach_repulsive(model: Seq2SeqTransformer, optimizer: torch.optim.Optimizer, *, method: str = "svgd",
                     preset: str = "fairseq_iwslt", **overrides: Any):
    """:class:`~probattn.repulsive.RepulsiveHeads` on Q, K and V of every attention of ``model`` (the repulsive
    paper's placement, once per optimizer step) with ``PRESETS[preset]``, attached to ``optimizer``.

    Raises RuntimeError if the particle sets found are not exactly :func:`paper_particle_sets`.
    """
    from probattn.repulsive import RepulsiveHeads

    heads = RepulsiveHeads.from_preset(model, preset, method=method, **overrides)
    found, expected = [s.name for s in heads.particle_sets], paper_particle_sets(model)
    if found != expected:
        raise RuntimeError(f"RepulsiveHeads found the particle sets {found}, not the paper's layout {expected}")
    return heads.attach(optimizer)


def attach_encoder_alignment(model: Seq2SeqTransformer, variant: str = "ct", *, weight: float = 0.01) -> list:
    """Alignment regularizers on the encoder self-attention layers only (decoder attentions are left alone)."""
    from probattn.alignment import attach_alignment

    encoder = {id(m) for _, m in attention_modules(model)["encoder_self"]}
    return attach_alignment(model, variant, predicate=lambda m: id(m) in encoder, weight=weight)


# -- batches ----------------------------------------------------------------------------------------------------
def token_batches(lengths: Sequence[int], *, max_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: pairs in a seeded random order, stably sorted by ``lengths`` (the longer side, with
    ``</s>``), cut greedily so that ``rows × longest row ≤ max_tokens``, and the batches shuffled."""
    sizes = np.asarray(lengths)
    if sizes.size == 0:
        raise ValueError("no training pairs")
    if int(sizes.max()) > max_tokens:
        raise ValueError(f"max_tokens={max_tokens} is smaller than the longest training pair ({int(sizes.max())} "
                         "tokens); raise --max-tokens or lower --max-length")
    order = D.epoch_order(len(sizes), seed=seed, epoch=epoch)
    order = order[np.argsort(sizes[order], kind="stable")]
    batches, current, longest = [], [], 0
    for i in order.tolist():
        size = int(sizes[i])
        if current and (len(current) + 1) * max(longest, size) > max_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    batches.append(current)
    np.random.default_rng([seed, epoch, 1]).shuffle(batches)
    return batches


def _lr(config: Seq2SeqTrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then ``lr * sqrt(warmup / step)`` (fairseq inverse_sqrt)."""
    warmup = max(1, config.warmup_steps)
    return config.lr * min((step + 1) / warmup, math.sqrt(warmup / (step + 1)))


# -- decoding and scores ----------------------------------------------------------------------------------------
@torch.no_grad()
def translate(model: Seq2SeqTransformer, sources: Sequence[Sequence[int]], *, beam: int = 1, lenpen: float = 1.0,
              batch_size: int | None = None, max_source_length: int | None = None) -> list[list[int]]:
    """Generated ids for every tokenized source (greedy for ``beam=1``), in batches of similar length
    (``batch_size`` sentences; default 64 on CPU, 256 on CUDA, where a decoding step costs about the same for
    any batch: kernel launches and synchronizations dominate)."""
    model.eval()
    c, device = model.config, next(model.parameters()).device
    batch_size = batch_size or (256 if device.type == "cuda" else 64)
    limit = max_source_length or c.max_positions - 1
    cut = [list(s)[: limit - 1] for s in sources]
    order = sorted(range(len(cut)), key=lambda i: len(cut[i]))
    out: list[list[int]] = [[] for _ in cut]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        src = collate([cut[i] for i in rows], pad_id=c.pad_id, bos_id=c.bos_id, eos_id=c.eos_id, device=device)["src"]
        hyps = model.greedy(src) if beam == 1 else model.beam_search(src, beam=beam, lenpen=lenpen)
        for i, h in zip(rows, hyps):
            out[i] = h
    return out


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """sacreBLEU corpus BLEU and chrF (defaults: 13a tokenization; chrF with character 6-grams, β = 2)."""
    import sacrebleu

    return {"bleu": sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score,
            "chrf": sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score}


# -- checkpoints ------------------------------------------------------------------------------------------------
def _save(run_dir: Path, state: dict[str, Any], step: int) -> None:
    save_checkpoint(run_dir, state, step=step)  # safetensors + JSON directories checkpoint-<step>, digests checked


def _synchronize(device: torch.device) -> None:
    """Wait for the queued GPU work, so that a wall-clock time covers it (CUDA runs kernels asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load(run_dir: Path) -> dict[str, Any] | None:
    try:
        return load_checkpoint(run_dir)
    except FileNotFoundError:
        return None


# -- training ---------------------------------------------------------------------------------------------------
def _data_signature(data: Seq2SeqData) -> dict[str, int]:
    """What a resumed run must find unchanged: the pair count, the token count and the vocabulary size."""
    return {"train_pairs": len(data.train_sources), "vocab_size": data.vocab_size,
            "train_tokens": sum(map(len, data.train_sources)) + sum(map(len, data.train_targets))}


def train_seq2seq(config: Seq2SeqTrainConfig, data: Seq2SeqData, *, output: str | Path | None = None,
                  resume: bool = False, progress: bool = True, validation_limit: int | None = None,
                  on_eval: Callable[[dict[str, Any]], None] | None = None,
                  on_step: Callable[[dict[str, Any]], None] | None = None) -> Seq2SeqRun:
    """Train one model (module doc). ``output``: checkpoint folder (None: no files); ``resume``: continue from
    its newest checkpoint (the configuration must match); ``validation_limit``: decode only the first that many
    validation pairs for the history's BLEU. ``on_step(record)`` / ``on_eval(record)`` are called after every
    optimizer step / validation with its history record."""
    if not isinstance(config, Seq2SeqTrainConfig):
        raise TypeError(f"config must be a Seq2SeqTrainConfig, got {type(config).__name__}")
    ctx = D.setup(config.device)
    try:
        return _train(config, data, ctx, None if output is None else Path(output), resume, progress,
                      validation_limit, on_eval, on_step)
    finally:
        ctx.close()


def _train(config: Seq2SeqTrainConfig, data: Seq2SeqData, ctx: D.Distributed, out: Path | None, resume: bool,
           progress: bool, validation_limit: int | None, on_eval, on_step) -> Seq2SeqRun:
    saved = _load(out) if resume and out is not None else None
    if saved is not None:
        before = saved["config"]
        diff = {k: (before.get(k), v) for k, v in config.to_dict().items() if before.get(k) != v and k != "device"}
        # a larger max_steps continues the run: the learning-rate schedule and the batch order do not depend on it
        if "max_steps" in diff and config.max_steps >= int(saved["step"]):
            del diff["max_steps"]
        if diff:
            raise ValueError(f"--resume: {out} was written with other options {diff}; resume with the same options "
                             "or use another --output")
    torch.manual_seed(config.seed)
    model = Seq2SeqTransformer(config.model_config(data.vocab_size, pad_id=data.pad_id, bos_id=data.bos_id,
                                                   eos_id=data.eos_id)).to(ctx.device)
    if config.alignment:
        attach_encoder_alignment(model, config.alignment, weight=config.alignment_weight)
    from probattn.alignment import alignment_loss, alignment_parameter_groups

    groups = alignment_parameter_groups(model) if config.alignment else [{"params": list(model.parameters())}]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-8, weight_decay=config.weight_decay)
    repulsive, repulsive_sets = None, []
    if config.repulsive:
        extra = {"beta": config.spos_beta} if config.repulsive == "spos" else {}
        repulsive = attach_repulsive(model, optimizer, method=config.repulsive, preset=config.repulsive_preset,
                                     seed=config.seed, max_grad_norm=config.max_grad_norm or None, **extra)
        repulsive_sets = [s.name for s in repulsive.particle_sets]
    history: list[dict[str, Any]] = []
    start = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if repulsive is not None:
            repulsive.load_state_dict(saved["repulsive"])
        history, start = list(saved["history"]), int(saved["step"])
        if saved["data"] != _data_signature(data):
            raise ValueError(f"--resume: the training data changed since the checkpoint ({saved['data']} then, "
                             f"{_data_signature(data)} now); resume on the same data or start a new run")
    wrapped: nn.Module = model
    if ctx.enabled:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    lengths = [max(len(s), len(t)) + 1 for s, t in zip(data.train_sources, data.train_targets)]

    def epoch_batches(epoch: int) -> list[list[int]]:
        return token_batches(lengths, max_tokens=config.max_tokens, seed=config.seed, epoch=epoch)

    # the epoch and position of the first step (a resumed run continues the saved epoch where it stopped)
    epoch, position, batches = 0, start, epoch_batches(0)
    while position >= len(batches):
        epoch, position = epoch + 1, position - len(batches)
        batches = epoch_batches(epoch)
    timing = dict(saved["timing"]) if saved is not None else {"seconds": 0.0, "cpu_seconds": 0.0, "steps": 0}
    bar = tqdm(total=config.max_steps, initial=start, unit="step", disable=not (progress and ctx.is_main),
               dynamic_ncols=True, leave=False)

    def checkpoint(step: int) -> None:
        if out is not None:
            D.assert_in_sync(ctx, model)
            if ctx.is_main:
                _save(out, {"step": step, "config": config.to_dict(), "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "repulsive": repulsive.state_dict() if repulsive is not None else None,
                            "history": history, "timing": timing, "data": _data_signature(data)}, step)
            ctx.barrier()

    def evaluate(step: int) -> None:
        if ctx.is_main:
            began = time.perf_counter()
            sources = data.validation_sources[:validation_limit]
            hyps = data.decode(translate(model, sources, beam=1))
            scores = corpus_scores(hyps, data.validation_references[: len(sources)])
            record = {"step": step, "val_bleu": scores["bleu"], "val_chrf": scores["chrf"],
                      "val_seconds": time.perf_counter() - began}
            history.append(record)
            if on_eval is not None:
                on_eval(record)
        ctx.barrier()
        model.train()

    model.train()
    for step in range(start, config.max_steps):
        if position >= len(batches):
            epoch, position = epoch + 1, 0
            batches = epoch_batches(epoch)
        _synchronize(ctx.device)
        began, cpu_began = time.perf_counter(), time.process_time()
        batch = batches[position]
        position += 1
        # this process's share; a process left without a pair (a batch smaller than the world) runs the first
        # pair with weight 0, so that every process takes part in DDP's gradient all-reduce
        mine = batch[ctx.rank::ctx.world_size]
        share = 1.0 if mine else 0.0
        mine = mine or batch[:1]
        tokens = sum(len(data.train_targets[i]) + 1 for i in batch)
        for group in optimizer.param_groups:
            group["lr"] = _lr(config, step)
        torch.manual_seed(D.seed_for(config.seed, step, ctx.rank))
        b = collate([data.train_sources[i] for i in mine], [data.train_targets[i] for i in mine],
                    pad_id=data.pad_id, bos_id=data.bos_id, eos_id=data.eos_id, device=ctx.device)
        logits = wrapped(b["src"], b["tgt_in"]).logits
        loss_sum, nll_sum, _ = label_smoothed_loss(logits, b["tgt_out"], pad_id=data.pad_id,
                                                   label_smoothing=config.label_smoothing)
        loss_sum, nll_sum = loss_sum * share, nll_sum * share
        loss = loss_sum * ctx.world_size / tokens  # DDP averages over processes: the mean over the step's tokens
        align = alignment_loss(model, distance_batch=0)[0] if config.alignment else loss.new_zeros(())
        (loss + align).backward()
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(f"step {step + 1}: the training loss is {float(loss)}; lower --lr")
        if repulsive is None and config.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _synchronize(ctx.device)  # the step's kernels (optimizer included) inside its wall time
        timing["seconds"] += time.perf_counter() - began
        timing["cpu_seconds"] += time.process_time() - cpu_began
        timing["steps"] += 1
        sums = ctx.all_reduce_mean(torch.stack([loss_sum.detach(), nll_sum]).double().cpu() * ctx.world_size)
        record = {"step": step + 1, "loss": float(sums[0]) / tokens, "nll": float(sums[1]) / tokens,
                  "tokens": tokens, "sentences": len(batch), "lr": _lr(config, step), "wall_time": time.time()}
        if config.alignment:
            record["alignment"] = float(align.detach())
        if repulsive is not None:
            record["repulsion_ratio"] = float(repulsive.last_stats.get("repulsion_ratio", math.nan))
        history.append(record)
        if on_step is not None:
            on_step(record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", s_per_step=f"{timing['seconds'] / timing['steps']:.2f}")
        if (step + 1) % config.eval_every == 0 or step + 1 == config.max_steps:
            evaluate(step + 1)
        if (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0) or step + 1 == config.max_steps:
            checkpoint(step + 1)
    bar.close()
    model.eval()
    return Seq2SeqRun(model=model, history=history, timing=timing, steps_this_process=config.max_steps - start,
                      repulsive_sets=repulsive_sets)
