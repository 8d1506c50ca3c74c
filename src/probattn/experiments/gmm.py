"""The explaining-away toy (doubly-normalized attention paper, research notes §1.3).

Three 2-D Gaussian clusters of 300, 60 and 15 points are the keys and values; three queries start near the
big cluster and are moved ``T`` times by one attention step ``mu <- A X`` with Gaussian scores

    S_ij = -|mu_i - x_j|^2 / (2 sigma^2)

(written for :func:`probattn.functional.attention` with ``scale = 1/sigma^2`` and the squared norms carried
inside the head dimension, ``q_i = [mu_i, -|mu_i|^2 / 2, 1]`` and ``k_j = [x_j, 1, -|x_j|^2 / 2]``: an
additive ``attn_mask`` would not do, since entries at or below ``-1e4`` mean "masked").

* softmax attention is a mean-shift step: every query drifts to the big cluster and the points of the small
  clusters receive almost no attention (they are "explained away": normalized incoming mass < 0.01);
* doubly-normalized attention is exactly one EM step of a GMM with equal weights and covariance
  ``sigma^2 I`` (queries = component means). We check this against :func:`em_step`, a plain EM update written
  from Gaussian densities, at every step of the trajectory.

Run it with ``probattn experiment gmm``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from probattn.functional import attention
from probattn.io import claim_output_dir, save_figure, write_json, write_text
from probattn.metrics import incoming_mass

__all__ = ["GmmResult", "add_arguments", "attention_step", "em_step", "make_clusters", "run", "run_gmm"]

CENTERS = ((0.0, 0.0), (4.0, 0.0), (0.0, 4.0))
NORMALIZATIONS = ("softmax", "doubly", "hybrid")


def make_clusters(
    sizes: Sequence[int] = (300, 60, 15), *, spread: float = 0.5, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Points ``X (N, 2)`` float64 from isotropic Gaussians at :data:`CENTERS` and their cluster ids ``(N,)``."""
    if len(sizes) != len(CENTERS) or any(int(n) < 1 for n in sizes):
        raise ValueError(f"sizes: need {len(CENTERS)} positive cluster sizes, got {list(sizes)}")
    gen = torch.Generator().manual_seed(seed)
    centers = torch.tensor(CENTERS, dtype=torch.float64)
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    points = centers[labels] + spread * torch.randn(len(labels), 2, dtype=torch.float64, generator=gen)
    return points, labels


def attention_step(
    means: Tensor, points: Tensor, *, sigma2: float, normalization: str
) -> tuple[Tensor, Tensor]:
    """One step ``mu <- A X`` with Gaussian scores; returns new means ``(M, 2)`` and weights ``A (M, N)``."""
    def lift(x: Tensor, norm_first: bool) -> Tensor:  # (n, 2) -> (n, 4): the distance's norms ride in q·k
        half_norm, ones = -0.5 * x.pow(2).sum(-1, keepdim=True), torch.ones_like(x[:, :1])
        return torch.cat([x, half_norm, ones] if norm_first else [x, ones, half_norm], dim=-1)

    q, k, v = lift(means, True)[None, None], lift(points, False)[None, None], points[None, None]
    out, weights = attention(q, k, v, normalization=normalization, scale=1.0 / sigma2, return_weights=True)
    return out[0, 0], weights[0, 0]


def em_step(means: Tensor, points: Tensor, *, sigma2: float) -> Tensor:
    """One plain EM step for a GMM with equal weights and covariance ``sigma2 * I``: new means ``(M, 2)``.

    E-step: ``gamma_ij = N(x_j; mu_i) / sum_i' N(x_j; mu_i')``; M-step: ``mu_i = sum_j gamma_ij x_j / sum_j gamma_ij``.
    """
    components = torch.distributions.MultivariateNormal(
        means, covariance_matrix=sigma2 * torch.eye(means.shape[-1], dtype=means.dtype)
    )
    log_density = components.log_prob(points[:, None, :]).T  # (M, N)
    responsibility = torch.softmax(log_density, dim=0)  # each point distributes one unit over the components
    return responsibility @ points / responsibility.sum(dim=1, keepdim=True)


@dataclass
class GmmResult:
    """What :func:`run_gmm` measured. ``per_normalization[name]`` holds, after the last step:

    ``explained_away`` ``{cluster: {tau: fraction of its points with normalized mass < tau}}``, ``min_mass``,
    ``means`` (final), ``clusters_reached`` (clusters with a mean within 1.0 of their center).
    ``em_max_abs_error``: max over steps of ``|attention_step(doubly) - em_step|`` on the doubly trajectory.
    """

    sizes: list[int]
    iterations: int
    sigma2: float
    em_max_abs_error: float
    per_normalization: dict[str, dict] = field(default_factory=dict)
    trajectories: dict[str, Tensor] = field(default_factory=dict, repr=False)
    masses: dict[str, Tensor] = field(default_factory=dict, repr=False)


def run_gmm(
    sizes: Sequence[int] = (300, 60, 15),
    *,
    iterations: int = 30,
    sigma2: float = 1.0,
    seed: int = 0,
    taus: Sequence[float] = (0.1, 0.01),
) -> GmmResult:
    """Run the toy for softmax, doubly and hybrid (alpha=0.5) attention from the same start (float64)."""
    if iterations < 1:
        raise ValueError(f"iterations: must be >= 1, got {iterations}")
    if not sigma2 > 0:
        raise ValueError(f"sigma2: must be > 0, got {sigma2}")
    points, labels = make_clusters(sizes, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    start = torch.tensor(CENTERS[0], dtype=torch.float64) + 0.5 * torch.randn(3, 2, dtype=torch.float64, generator=gen)
    result = GmmResult(list(map(int, sizes)), iterations, sigma2, em_max_abs_error=0.0)
    centers = torch.tensor(CENTERS, dtype=torch.float64)
    for name in NORMALIZATIONS:
        means, path = start.clone(), [start.clone()]
        for _ in range(iterations):
            new_means, weights = attention_step(means, points, sigma2=sigma2, normalization=name)
            if name == "doubly":
                err = (new_means - em_step(means, points, sigma2=sigma2)).abs().max().item()
                result.em_max_abs_error = max(result.em_max_abs_error, err)
            means = new_means
            path.append(means.clone())
        _, weights = attention_step(means, points, sigma2=sigma2, normalization=name)
        mass = incoming_mass(weights[None, None])[0, 0]  # (N,): 1 is a point's fair share
        reached = (torch.cdist(centers, means).min(dim=1).values < 1.0).tolist()
        result.trajectories[name], result.masses[name] = torch.stack(path), mass
        result.per_normalization[name] = {
            "explained_away": {
                str(c): {str(t): float((mass[labels == c] < t).double().mean()) for t in taus}
                for c in range(len(sizes))
            },
            "min_mass": float(mass.min()),
            "means": means.tolist(),
            "clusters_reached": [c for c, hit in enumerate(reached) if hit],
        }
    return result


def plot(result: GmmResult, points: Tensor, path: Path) -> Path:
    """Points coloured by log10 normalized incoming mass, and each query's path, one panel per scheme."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.trajectories)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), sharex=True, sharey=True)
    for ax, name in zip(axes, names):
        shade = ax.scatter(*points.T, c=result.masses[name].clamp_min(1e-6).log10(), s=6, cmap="viridis",
                           vmin=-4, vmax=1)
        for m in range(result.trajectories[name].shape[1]):
            ax.plot(*result.trajectories[name][:, m].T, color="red", lw=1)
            ax.plot(*result.trajectories[name][-1, m], "r*", ms=12)
        ax.set_title(f"{name}: min mass {result.per_normalization[name]['min_mass']:.1e}")
        ax.set_aspect("equal")
    fig.colorbar(shade, ax=list(axes), label="log10 normalized incoming mass")
    save_figure(fig, path, dpi=80)
    plt.close(fig)
    return path


def to_markdown(result: GmmResult) -> str:
    """Table: per scheme, explained-away fraction per cluster (tau = 0.01), min mass, clusters reached."""
    sizes = result.sizes
    head = ["scheme", *[f"EA<0.01 cluster {c} (n={n})" for c, n in enumerate(sizes)], "min mass", "clusters reached"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in result.per_normalization.items():
        ea = [f"{r['explained_away'][str(c)]['0.01']:.2f}" for c in range(len(sizes))]
        lines.append(f"| {name} | " + " | ".join(ea) + f" | {r['min_mass']:.2e} | {r['clusters_reached']} |")
    lines.append("")
    lines.append(f"doubly-normalized step vs plain EM step: max abs error {result.em_max_abs_error:.2e} "
                 f"over {result.iterations} steps (float64)")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=int, nargs=3, default=[300, 60, 15], help="cluster sizes (default 300 60 15)")
    parser.add_argument("--iterations", type=int, default=30, help="attention / EM steps (default 30)")
    parser.add_argument("--sigma2", type=float, default=1.0, help="kernel variance sigma^2 (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("probattn-experiments/gmm"), help="output folder")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files probattn wrote in --output (never other files)")


def run(args: argparse.Namespace) -> int:
    out = claim_output_dir(args.output, command="probattn experiment gmm", overwrite=args.overwrite,
                           will_write=("results.md", "results.json", "gmm.png"))
    result = run_gmm(args.sizes, iterations=args.iterations, sigma2=args.sigma2, seed=args.seed)
    table = to_markdown(result)
    write_text(out / "results.md", f"# GMM explaining-away toy\n\n{table}\n\n![gmm](gmm.png)\n")
    write_json(out / "results.json", {k: v for k, v in vars(result).items() if k not in ("trajectories", "masses")})
    plot(result, make_clusters(args.sizes, seed=args.seed)[0], out / "gmm.png")
    print(table)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}, {out / 'gmm.png'}")
    if not result.em_max_abs_error < 1e-6:
        print(f"FAILED: doubly-normalized attention differs from EM by {result.em_max_abs_error:.2e} (>= 1e-6)")
        return 1
    return 0
