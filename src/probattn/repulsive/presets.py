"""Hyper-parameters of the released Repulsive Attention runs and a recommended default (repulsive.md §8).

Every preset is SVGD on the attention heads' parameters with α, stepsize s, the 1/M normalisation, the median
kind and the divisor of the repulsion as in the authors' code; only ``electra_small`` fixes the code's
head-grouping bug (§7.1). SPOS is an add-on to any preset: ``from_preset(model, name, method="spos", beta=1.0)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

__all__ = ["PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    """Keyword arguments of :class:`~probattn.repulsive.RepulsiveHeads` for one configuration."""

    description: str
    alpha: float
    stepsize: float
    median: str = "true"
    kernel_grad_div: str = "h2"
    layers: tuple[int, ...] | None = None
    method: str = "svgd"
    grouping: str = "separate"
    normalize_by_M: bool = True

    def kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "description"}


PRESETS: MappingProxyType[str, Preset] = MappingProxyType(
    {
        "recommended": Preset(
            "α=0.01 of the Transformer runs, s=1 so Adam's eps and clipping see normal-sized gradients; "
            "true median with floor; all attention modules, Q/K/V separate",
            alpha=0.01,
            stepsize=1.0,
        ),
        "fairseq_iwslt": Preset("IWSLT14 De-En Transformer (fairseq 0.6)", 0.01, 0.01, median="lower"),
        "fairseq_wmt": Preset("WMT14 En-De Transformer-base (fairseq 0.6)", 0.01, 0.1, median="lower"),
        "electra_small": Preset(
            "ELECTRA-small pre-training: discriminator layer 0 Q/K/V only (grouped by head, unlike the code)",
            0.1,
            0.01,
            layers=(0,),
        ),
        "lin2017_yelp": Preset(
            "self-attentive embedding, Yelp (SGD 0.06): W_s2 hops", 1.0, 1.0, "lower", "h"
        ),
        "lin2017_age": Preset(
            "self-attentive embedding, Age (Adam 5e-4): W_s2 hops", 0.01, 1.0, "lower", "h"
        ),
        "lin2017_snli": Preset(
            "self-attentive embedding, SNLI (Adam 5e-4): W_s2 hops", 0.005, 1.0, "lower", "h"
        ),
    }
)
