"""Whether a policy's actions at a state form one mode or several (`llmdpd diagnose --modes N`).

A diffusion actor's premise is that the data's actions at one state can form separate modes whose average is a
worse action than either. Where the distribution has a single mode, a regressor to its mean is the right model
and a sampler only adds the spread. The diffusion actor learned that distribution from the (weighted) data, so
its draws estimate it: per training task, on the validation states, this draws N actions per state at sampler
temperature 1 and measures them along the direction of their largest variance (their first principal
component):

- `bimodality_coefficient`: Sarle's b = (g^2 + 1) / (k + 3 (N-1)^2 / ((N-2)(N-3))), with g the sample skewness and
  k the sample excess kurtosis of the projections; 1/3 for a Gaussian, 5/9 for a uniform distribution, towards 1
  for two separated modes. Averaged over states;
- `bimodal`: the share of states with b above 5/9 and the smaller of the two groups below holding at least
  `MIN_GROUP_SHARE` of the draws (Sarle's rule; the group condition drops a few outliers);
- `separation`: Ashman's D = sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2) of the best split of the projections into two
  groups (1-D two-means), median over states. A split single Gaussian gives about 2.6, two Gaussians 2d apart in
  units of their standard deviation about 2d: descriptive, read it with b;
- `principal_share`: the share of the draws' variance along that direction (1: they spread along one line).

A deterministic policy's draws are all equal; it gets 0 for every entry.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from llmdpd.evaluation.diagnostics import sampler_draws

MIN_GROUP_SHARE = 0.1
SARLE_THRESHOLD = 5.0 / 9.0
_DEGENERATE = 1e-10  # total variance below which a state's draws count as one point


def principal_projections(draws: Tensor) -> tuple[Tensor, Tensor]:
    """Draws [n, m, A] -> their projections on each state's first principal direction [n, m] (centred), and the
    share of the variance along it [n]."""
    centred = draws - draws.mean(1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred / max(draws.shape[1] - 1, 1)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)  # ascending
    projections = (centred @ eigenvectors[..., -1:]).squeeze(-1)
    total = eigenvalues.clamp_min(0).sum(-1)
    share = torch.where(total > _DEGENERATE, eigenvalues[..., -1].clamp_min(0) / total.clamp_min(_DEGENERATE),
                        torch.zeros_like(total))
    return projections, share


def bimodality_coefficient(x: Tensor) -> Tensor:
    """Sarle's b of each row of x [n, m] (m >= 4), with the bias-corrected sample skewness and excess kurtosis."""
    m = x.shape[1]
    centred = x - x.mean(1, keepdim=True)
    m2, m3, m4 = (centred.pow(p).mean(1) for p in (2, 3, 4))
    flat = m2 <= _DEGENERATE
    m2 = m2.clamp_min(_DEGENERATE)
    g1 = m3 / m2.pow(1.5)
    skew = g1 * math.sqrt(m * (m - 1)) / (m - 2)
    g2 = m4 / m2.pow(2) - 3.0
    kurtosis = (m - 1) / ((m - 2) * (m - 3)) * ((m + 1) * g2 + 6.0)
    b = (skew.pow(2) + 1.0) / (kurtosis + 3.0 * (m - 1) ** 2 / ((m - 2) * (m - 3)))
    return torch.where(flat, torch.zeros_like(b), b)


def two_group_split(x: Tensor) -> tuple[Tensor, Tensor]:
    """The split of each row of x [n, m] into a low and a high group with the least within-group sum of squares
    (optimal 1-D two-means): Ashman's D of the two groups [n] and the smaller group's share of the row [n]."""
    m = x.shape[1]
    xs = x.sort(1).values
    s1, s2 = xs.cumsum(1)[:, :-1], xs.pow(2).cumsum(1)[:, :-1]  # sums over the low group of sizes 1..m-1
    total1, total2 = xs.sum(1, keepdim=True), xs.pow(2).sum(1, keepdim=True)
    low = torch.arange(1, m, dtype=x.dtype, device=x.device)
    high = m - low
    ss_low, ss_high = s2 - s1.pow(2) / low, (total2 - s2) - (total1 - s1).pow(2) / high
    best = (ss_low + ss_high).argmin(1, keepdim=True)
    pick = lambda t: t.gather(1, best).squeeze(1)  # noqa: E731
    n_low, n_high = low[best.squeeze(1)], high[best.squeeze(1)]
    mean_low, mean_high = pick(s1) / n_low, pick(total1 - s1) / n_high
    var = pick(ss_low).clamp_min(0) / n_low + pick(ss_high).clamp_min(0) / n_high
    separation = math.sqrt(2.0) * (mean_high - mean_low).abs() / var.clamp_min(_DEGENERATE).sqrt()
    flat = (total2.squeeze(1) / m - (total1.squeeze(1) / m).pow(2)) <= _DEGENERATE
    separation = torch.where(flat, torch.zeros_like(separation), separation)
    return separation, torch.minimum(n_low, n_high) / m


def action_modes(draws: Tensor) -> dict[str, float]:
    """The module docstring's entries for draws [n states, m draws, A] (m >= 4)."""
    if draws.shape[1] < 4:
        raise ValueError(f"action_modes needs at least 4 draws per state, got {draws.shape[1]}")
    projections, share = principal_projections(draws.double())
    b = bimodality_coefficient(projections)
    separation, smaller = two_group_split(projections)
    bimodal = (b > SARLE_THRESHOLD) & (smaller >= MIN_GROUP_SHARE)
    return {
        "bimodality_coefficient": b.mean().item(),
        "bimodal": bimodal.double().mean().item(),
        "separation": separation.median().item(),
        "principal_share": share.mean().item(),
    }


@torch.no_grad()
def policy_action_modes(module, states: dict[str, tuple[Tensor, Tensor]], conditions: dict[str, Tensor],
                        draws: int = 64, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per task in `states` (task -> (obs, expert actions)), `action_modes` of `draws` actions per state
    (`sampler_draws`: the plain DDPM sampler, clipped to the action box)."""
    torch.manual_seed(seed)
    return {task: action_modes(sampler_draws(module, obs.to(module.obs_mean), conditions[task], draws).cpu())
            for task, (obs, _) in states.items()}


__all__ = ["MIN_GROUP_SHARE", "SARLE_THRESHOLD", "action_modes", "bimodality_coefficient", "policy_action_modes",
           "principal_projections", "two_group_split"]
