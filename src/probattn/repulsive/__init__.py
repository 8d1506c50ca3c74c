"""Repulsive attention: SVGD / SPOS over attention heads (An et al., EMNLP 2020).

* :func:`svgd_direction`, :func:`spos_direction`: pure gradient rewrites over particles ``(M, P)`` / ``(B, M, P)``;
* head-major particle views (:mod:`probattn.repulsive.particles`) and the adapter registry that finds attention
  modules (:mod:`probattn.repulsive.adapters`);
* :class:`RepulsiveHeads`: the once-per-optimizer-step rewrite of a model's head gradients;
* :data:`PRESETS`: the released configurations and a recommended default.
"""

from probattn.repulsive.adapters import ADAPTERS, find_attention_modules, projections_of, register_adapter
from probattn.repulsive.directions import SVGDTerms, spos_direction, svgd_direction, svgd_terms
from probattn.repulsive.heads import RepulsiveHeads
from probattn.repulsive.particles import HeadSlice, ParticleSet, Projection, build_particle_sets
from probattn.repulsive.presets import PRESETS, Preset

__all__ = [
    "ADAPTERS",
    "PRESETS",
    "HeadSlice",
    "ParticleSet",
    "Preset",
    "Projection",
    "RepulsiveHeads",
    "SVGDTerms",
    "build_particle_sets",
    "find_attention_modules",
    "projections_of",
    "register_adapter",
    "spos_direction",
    "svgd_direction",
    "svgd_terms",
]
