"""Episode returns measured against the episodes that took the same path (`policy.awr_baseline: neighbours`).

The episode advantage ranks a task's episodes by their return. Where a task has several routes of different
length, that ranking is mostly the route's: the shorter route's episodes all outrank the longer one's, and the
weighting erases the longer route (docs/results.md, "Clean routes"). Subtracting from each episode's return the
mean return of its k nearest episodes of the same task, by the path they visit, ranks an episode only among those
that went its way: within a route the weights still prefer the better executions, and each route keeps its share.

An episode's path is its (normalised) observation at `PATH_POINTS` evenly spaced fractions of its length, so
episodes of different lengths compare point for point.
"""

from __future__ import annotations

import torch

from llmdpd.data import keys as K
from llmdpd.data.episode_store import EpisodeStore, episode_index, episode_returns

# Points along each episode at which its path is read.
PATH_POINTS = 16


def episode_paths(store: EpisodeStore, points: int = PATH_POINTS) -> torch.Tensor:
    """Each episode's observation at `points` evenly spaced fractions of its steps, flattened [E, points * S]."""
    obs = store.transitions[K.OBS]
    length = store.episode_length.to(obs.device)
    fraction = torch.linspace(0.0, 1.0, points, device=obs.device, dtype=torch.float64)
    steps = (fraction[None, :] * (length - 1)[:, None].double()).round().long()
    return obs[store.episode_start.to(obs.device)[:, None] + steps].flatten(1).float()


def neighbour_relative_returns(store: EpisodeStore, neighbours: int) -> torch.Tensor:
    """Per stored transition, its episode's return minus the mean return of the `neighbours` episodes of the same
    task whose paths are nearest to its own (Euclidean; itself excluded) [T, 1]. A task with fewer episodes uses
    all its others; an episode alone in its task gets 0."""
    if neighbours < 1:
        raise ValueError(f"policy.awr_neighbours must be at least 1 (got {neighbours})")
    totals = episode_returns(store)
    episode_of = episode_index(store, totals.device)
    returns = totals[store.episode_start.to(totals.device), 0].double()  # one per episode
    paths = episode_paths(store)
    relative = torch.zeros_like(returns)
    for first, count in zip(store.episode_offset.tolist(), store.episodes_per_task.tolist()):
        k = min(neighbours, count - 1)
        if k < 1:
            continue
        own = slice(first, first + count)
        distance = torch.cdist(paths[own], paths[own])
        distance.fill_diagonal_(float("inf"))
        nearest = distance.topk(k, dim=1, largest=False).indices
        relative[own] = returns[own] - returns[own][nearest].mean(1)
    return relative.to(totals.dtype)[episode_of][:, None]


def advantage_returns(store: EpisodeStore, baseline: str, neighbours: int) -> torch.Tensor:
    """The per-transition outcome the episode advantage standardises [T, 1]: the whole episode's return
    (`baseline` "task": ranked against the task's other episodes) or that return relative to its path's
    neighbours ("neighbours")."""
    if baseline == "task":
        return episode_returns(store)
    return neighbour_relative_returns(store, neighbours)
