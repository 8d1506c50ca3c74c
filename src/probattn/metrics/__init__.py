"""Attention diagnostics as pure torch functions: explaining away, head diversity, key/query alignment,
entropy, calibration, uncertainty (predictive entropy, PAvPU), edge-level versions for graph attention, and streaming accumulators for running them over a data set."""

from probattn.metrics.alignment import mean_distance, mmd_rbf, qk_alignment
from probattn.metrics.calibration import CalibrationAccumulator, CalibrationResult, calibration
from probattn.metrics.diversity import (
    classical_mds,
    head_cka_from_covariance,
    head_clusters,
    head_js_divergence,
    lin_redundancy,
    linear_cka,
    parameter_cosine_similarity,
)
from probattn.metrics.entropy import attention_entropy
from probattn.metrics.explaining_away import (
    SINK_THRESHOLD,
    attention_sinks,
    explained_away_fraction,
    incoming_mass,
    min_incoming_mass,
)
from probattn.metrics.graph import (
    edge_explained_away_fraction,
    edge_fair_share,
    edge_head_js_divergence,
    source_explained_away_fraction,
)
from probattn.metrics.significance import (
    PairedComparison,
    bootstrap_interval,
    holm,
    mean_interval,
    paired_bootstrap,
    paired_t_test,
)
from probattn.metrics.streaming import AttentionStatistics, MomentAccumulator
from probattn.metrics.uncertainty import (
    PAVPU_THRESHOLD,
    PAvPUResult,
    certainty_matches,
    pavpu,
    predictive_entropy,
)

__all__ = [
    "PAVPU_THRESHOLD",
    "SINK_THRESHOLD",
    "AttentionStatistics",
    "CalibrationAccumulator",
    "CalibrationResult",
    "MomentAccumulator",
    "PAvPUResult",
    "PairedComparison",
    "attention_entropy",
    "attention_sinks",
    "bootstrap_interval",
    "calibration",
    "certainty_matches",
    "classical_mds",
    "edge_explained_away_fraction",
    "edge_fair_share",
    "edge_head_js_divergence",
    "explained_away_fraction",
    "head_cka_from_covariance",
    "head_clusters",
    "head_js_divergence",
    "holm",
    "incoming_mass",
    "lin_redundancy",
    "linear_cka",
    "mean_distance",
    "mean_interval",
    "min_incoming_mass",
    "mmd_rbf",
    "paired_bootstrap",
    "paired_t_test",
    "parameter_cosine_similarity",
    "pavpu",
    "predictive_entropy",
    "qk_alignment",
    "source_explained_away_fraction",
]
