"""Training glue for transformers' ``Trainer``: the alignment term in the loss, repulsive heads per step.

``probattn.hf.Trainer`` is a drop-in ``transformers.Trainer`` that, for a model converted with
``alignment=`` and / or ``repulsive=``:

* adds ``alignment_loss(model)`` (``weight`` times the mean term over layers) to each micro-batch's loss,
  scaled so that under gradient accumulation its weight is the same as without: when the Trainer treats
  the loss as already normalized over the accumulated batch (``num_items_in_batch``, see
  ``Trainer.training_step``) the term is divided by the number of accumulation steps, otherwise the
  Trainer divides it together with the task loss;
* rewrites the attention heads' gradients with SVGD / SPOS through :class:`RepulsiveCallback` in
  ``on_pre_optimizer_step``: after the Trainer's gradient clipping, once per optimizer step, on unscaled
  gradients (under fp16 the callback unscales them first when the Trainer did not clip, ``max_grad_norm=0``;
  only the Trainer's clipping unscales);
* logs the means since the last log as ``probattn/alignment``, ``probattn/alignment_term``,
  ``probattn/alignment_distance`` and ``probattn/repulsion_ratio``, ``probattn/repulsive_bandwidth``
  (``trainer.state.log_history``).

With the stock ``Trainer``, add :class:`RepulsiveCallback` yourself and add the alignment term in your own
``compute_loss`` (or use this class).

PEFT / LoRA (``peft.get_peft_model`` on a converted model): this Trainer makes the alignment networks and learned
hybrid weights trainable again (:func:`unfreeze_probattn`; peft froze them) and repels the LoRA-adapted heads on
their effective weights ``W0 + s·B·A``, rewriting the gradient of ``B`` (see
:class:`probattn.repulsive.particles.LoraHeadSlice`); frozen, non-adapted projections do not repel.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import torch
import transformers
from accelerate.optimizer import AcceleratedOptimizer
from torch.amp.grad_scaler import OptState
from transformers import TrainerCallback

from probattn.alignment import alignment_loss, attached_regularizers
from probattn.hf.convert import repulsive_heads
from probattn.repulsive import RepulsiveHeads

__all__ = ["RepulsiveCallback", "Trainer", "unfreeze_probattn"]

PROBATTN_MARK = ".probattn_"  # parameters of the modules convert attaches: probattn_alignment, probattn_hybrid


def unfreeze_probattn(model: torch.nn.Module) -> list[str]:
    """Make the modules :func:`probattn.hf.convert` attached trainable again; returns the names it unfroze.

    ``peft.get_peft_model`` freezes every parameter that is not a LoRA factor, including the alignment
    regularizers' auxiliary networks and learned hybrid weights, while the alignment term stays in the loss.
    Call this after wrapping (``probattn.hf.Trainer`` does it for a PEFT model). Those parameters are not part of
    a PEFT adapter: ``PeftModel.save_pretrained`` does not write them. To keep them, save the merged model
    (``model.merge_and_unload().save_pretrained(d)``, reloaded by :func:`probattn.hf.load`).
    """
    names = []
    for name, param in model.named_parameters():
        if PROBATTN_MARK in f".{name}" and not param.requires_grad:
            param.requires_grad_(True)
            names.append(name)
    return names


def _is_peft_model(model: torch.nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


class _Means:
    """Running means of named scalars between two log calls."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, value: float) -> None:
        self.sums[name] += float(value)
        self.counts[name] += 1

    def pop(self) -> dict[str, float]:
        out = {name: self.sums[name] / self.counts[name] for name in self.sums}
        self.sums.clear()
        self.counts.clear()
        return out


def unscale_gradients(optimizer: torch.optim.Optimizer | None) -> None:
    """Divide the gradients by the fp16 loss scale now, if they still carry it.

    ``optimizer`` is what the Trainer passes to its callbacks (accelerate's ``AcceleratedOptimizer``, whose
    ``scaler`` is the ``GradScaler`` under fp16). The Trainer unscales only inside its gradient clipping; this
    does it for the rest, once per step (``GradScaler.unscale_``: ``scaler.step`` then does not unscale again and
    still skips a step whose gradients overflowed). Without a scaler, or when already unscaled, nothing happens.
    """
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return
    inner = optimizer
    while isinstance(inner, AcceleratedOptimizer):
        inner = inner.optimizer
    if scaler._per_optimizer_states[id(inner)]["stage"] is not OptState.UNSCALED:  # GradScaler's own record
        scaler.unscale_(inner)


class RepulsiveCallback(TrainerCallback):
    """Run ``repulsive.step()`` in ``on_pre_optimizer_step`` (after clipping, once per optimizer step).

    ``repulsive`` must be built with ``clip="after"`` (as :func:`probattn.hf.repulsive_heads` does). The
    values of each step are kept in :attr:`means` for :class:`Trainer` to log.
    """

    def __init__(self, repulsive: RepulsiveHeads) -> None:
        if not isinstance(repulsive, RepulsiveHeads):
            raise TypeError(f"repulsive must be a probattn.repulsive.RepulsiveHeads, got {type(repulsive).__name__}")
        if repulsive.clip != "after" or repulsive.max_grad_norm is not None:
            raise ValueError("the Trainer clips gradients before on_pre_optimizer_step: build RepulsiveHeads with "
                             "clip='after' and max_grad_norm=None (probattn.hf.repulsive_heads does)")
        self.repulsive = repulsive
        self.means = _Means()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        unscale_gradients(kwargs.get("optimizer"))  # the rewrite must see true gradients (fp16 without clipping)
        stats = self.repulsive.step()
        for key in ("repulsion_ratio", "bandwidth"):
            value = stats.get(key)
            if value is not None and value == value:  # skip NaN (no particle set had a gradient)
                self.means.add(f"probattn/repulsive_{key}" if key == "bandwidth" else f"probattn/{key}", value)
        return control


class Trainer(transformers.Trainer):
    """``transformers.Trainer`` plus probattn's alignment term and repulsive head updates (module doc).

    Args:
        *args, **kwargs: as for ``transformers.Trainer``.
        repulsive: a :class:`~probattn.repulsive.RepulsiveHeads` (``clip="after"``) to use instead of the one
            described by the model's ``config.probattn["repulsive"]``; ``False`` turns repulsion off.
    """

    def __init__(self, *args: Any, repulsive: RepulsiveHeads | bool | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        self.unfrozen = unfreeze_probattn(model) if _is_peft_model(model) else []  # before the optimizer exists
        if repulsive is None:
            repulsive = repulsive_heads(model)
        if repulsive and not repulsive.particle_sets:
            warnings.warn("repulsion is configured but every attention projection it found is frozen (e.g. LoRA "
                          "targets no query/key/value projection): nothing repels", UserWarning, stacklevel=2)
        self.repulsive_callback = RepulsiveCallback(repulsive) if repulsive else None
        if self.repulsive_callback is not None:
            self.add_callback(self.repulsive_callback)
        self.has_alignment = bool(attached_regularizers(model))
        self._probattn_means = _Means()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.has_alignment and model.training and torch.is_grad_enabled():
            term, stats = alignment_loss(self.accelerator.unwrap_model(model))
            self._probattn_means.add("probattn/alignment", term.detach().item())
            for key, value in stats.as_dict("probattn/alignment").items():
                if key in ("probattn/alignment/term", "probattn/alignment/distance"):
                    self._probattn_means.add(key.replace("alignment/", "alignment_"), value)
            if self._loss_is_scaled_for_ga(num_items_in_batch):
                term = term / self.current_gradient_accumulation_steps
            loss = loss + term.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """``transformers.Trainer.save_model``; for a PEFT model with learned hybrid weights, a warning (once)
        that the adapter it writes does not hold them (see :func:`unfreeze_probattn`)."""
        super().save_model(output_dir, _internal_call)
        model = self.accelerator.unwrap_model(self.model)
        if getattr(self, "_warned_peft_save", False) or not _is_peft_model(model):
            return
        hybrid = [name for name, _ in model.named_parameters() if ".probattn_hybrid." in f".{name}"]
        if hybrid:
            self._warned_peft_save = True
            warnings.warn(
                f"the PEFT adapter saved in {output_dir or self.args.output_dir} does not hold the {len(hybrid)} "
                "learned hybrid weights (probattn_hybrid) this run trained: a model rebuilt from it runs other "
                "attention. Save the merged model to keep them: model.merge_and_unload().save_pretrained(d), "
                "reloaded with probattn.hf.load(d)", UserWarning, stacklevel=2,
            )

    def _loss_is_scaled_for_ga(self, num_items_in_batch: Any) -> bool:
        """The rule of ``transformers.Trainer.training_step`` for whether it divides the loss by the GA steps."""
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training logs: add the regularizer means since the last one
            logs.update(self._probattn_means.pop())
            if self.repulsive_callback is not None:
                logs.update(self.repulsive_callback.means.pop())
        super().log(logs, start_time)
