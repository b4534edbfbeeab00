"""Episodes of several tasks in flat tensors, and index arithmetic over them (no Python loop per sample)."""

from __future__ import annotations

import numpy as np
import torch
from tensordict import TensorDict

from llmdpd.data import keys as K


class EpisodeStore:
    """Episodes of several tasks concatenated into flat tensors, with per-task and per-episode offsets."""

    def __init__(self, per_task_episodes: list[list[dict[str, np.ndarray]]]) -> None:
        obs, act, rew, nxt, done, positions = [], [], [], [], [], []
        task_start, task_count, ep_start, ep_len, ep_task = [], [], [], [], []
        cursor = 0
        for t, episodes in enumerate(per_task_episodes):
            task_start.append(cursor)
            for ep in episodes:
                steps = len(ep["actions"])
                obs.append(ep["observations"][:-1])
                nxt.append(ep["observations"][1:])
                act.append(ep["actions"])
                rew.append(ep["rewards"])
                done.append(ep["terminations"])
                positions.append(np.arange(steps))
                ep_start.append(cursor)
                ep_len.append(steps)
                ep_task.append(t)
                cursor += steps
            task_count.append(cursor - task_start[-1])
        self.transitions = TensorDict(
            {
                K.OBS: torch.from_numpy(np.concatenate(obs)),
                K.ACTION: torch.from_numpy(np.concatenate(act)),
                K.REWARD: torch.from_numpy(np.concatenate(rew))[:, None],
                K.NEXT_OBS: torch.from_numpy(np.concatenate(nxt)),
                K.DONE: torch.from_numpy(np.concatenate(done)).float()[:, None],
                K.POSITION: torch.from_numpy(np.concatenate(positions)),
            },
            batch_size=[cursor],
        )
        self.task_start = torch.tensor(task_start)
        self.task_count = torch.tensor(task_count)
        self.episode_start = torch.tensor(ep_start)
        self.episode_length = torch.tensor(ep_len)
        # Episodes of task t are episode_offset[t] .. episode_offset[t] + episodes_per_task[t] - 1.
        counts = torch.bincount(torch.tensor(ep_task), minlength=len(per_task_episodes))
        self.episodes_per_task = counts
        self.episode_offset = torch.cumsum(counts, 0) - counts

    def to(self, device: torch.device) -> "EpisodeStore":
        for name, value in vars(self).items():
            setattr(self, name, value.to(device))
        return self


def prompt_indices(
    store: EpisodeStore, episode: torch.Tensor, length: int, offset_frac: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices [n, H] of H steps spaced evenly across each episode from a random offset.

    The stride is episode_length // H (at least 1); the offset is offset_frac * stride. Steps past the
    episode's end (episodes shorter than H) repeat its last step.
    """
    ep_len = store.episode_length[episode]
    stride = torch.clamp(ep_len // length, min=1)
    offset = (offset_frac * stride).long()
    steps = offset[:, None] + stride[:, None] * torch.arange(length, device=ep_len.device)
    steps = torch.minimum(steps, (ep_len - 1)[:, None])
    return store.episode_start[episode][:, None] + steps, steps


def stack_prompt_stores(stores: list[EpisodeStore], normalizer) -> EpisodeStore:
    """One store over several tasks' prompt episodes, normalised like the transitions (`normalizer`: a
    `llmdpd.data.normalizer.Normalizer`)."""
    merged = EpisodeStore.__new__(EpisodeStore)
    tds = [s.transitions for s in stores]
    merged.transitions = torch.cat(tds)
    merged.transitions.update(normalizer.transitions(merged.transitions))
    sizes = torch.tensor([len(t) for t in tds], device=tds[0].device)
    step_offset = torch.cumsum(sizes, 0) - sizes
    merged.episode_start = torch.cat([s.episode_start + o for s, o in zip(stores, step_offset)])
    merged.episode_length = torch.cat([s.episode_length for s in stores])
    merged.episodes_per_task = torch.cat([s.episodes_per_task for s in stores])
    merged.episode_offset = torch.cumsum(merged.episodes_per_task, 0) - merged.episodes_per_task
    merged.task_start = step_offset
    merged.task_count = sizes
    return merged


def episode_index(store: EpisodeStore, device: torch.device) -> torch.Tensor:
    """Per stored transition, the index of its episode [T], on `device`."""
    episodes = torch.arange(len(store.episode_length), device=device)
    return torch.repeat_interleave(episodes, store.episode_length.to(device))


def episode_returns(store: EpisodeStore) -> torch.Tensor:
    """Per stored transition, the undiscounted sum of its whole episode's rewards [T, 1] (the episode's outcome,
    which episode-weighted BC ranks within each task)."""
    reward = store.transitions[K.REWARD]
    episode_of = episode_index(store, reward.device)
    totals = torch.zeros(len(store.episode_length), 1, dtype=reward.dtype, device=reward.device)
    return totals.index_add(0, episode_of, reward)[episode_of]


def returns_to_go(store: EpisodeStore, gamma: float) -> torch.Tensor:
    """Per stored transition, sum_{k >= t} gamma^(k - t) r_k over the rest of its episode [T, 1] (the Monte-Carlo
    return the outcome value regresses on).

    Vectorised: with w_k = gamma^k r_k (k the step within the episode), G_t = gamma^-t sum_{t <= k < end} w_k,
    a difference of prefix sums, in float64 so that gamma^-t (about 150 at t = 500, gamma 0.99) costs no
    precision.
    """
    reward = store.transitions[K.REWARD].double()
    position = store.transitions[K.POSITION].double()[:, None]
    weighted = gamma**position * reward
    prefix = torch.cumsum(weighted, 0)  # inclusive, over the whole store
    episode_of = episode_index(store, reward.device)
    last = (store.episode_start + store.episode_length - 1).to(reward.device)[episode_of]
    suffix = prefix[last] - prefix + weighted
    return (suffix / gamma**position).to(store.transitions[K.REWARD].dtype)


def n_step_returns(store: EpisodeStore, n: int, gamma: float) -> dict[str, torch.Tensor]:
    """n-step targets of every stored transition, never crossing an episode's end.

    For step i of an episode, with m = min(n, steps left in the episode):
        reward   = sum_{k<m} gamma^k r_{i+k}                      [T, 1]
        discount = gamma^m (1 - done_{i+m-1})                     [T, 1]
        next_obs = next_obs_{i+m-1}                               [T, S]
    so y = reward + discount * V(next_obs) is the n-step TD target (n = 1: the one-step target).
    """
    if n < 1:
        raise ValueError(f"policy.n_step must be at least 1 (got {n})")
    td = store.transitions
    total = td[K.REWARD].shape[0]
    episode_of = episode_index(store, torch.device("cpu"))
    end = (store.episode_start + store.episode_length).cpu()[episode_of]  # exclusive, per transition
    index = torch.arange(total)
    reward = torch.zeros_like(td[K.REWARD])
    last = index.clone()
    for k in range(n):
        step = index + k
        inside = step < end
        reward[inside] += (gamma**k) * td[K.REWARD][step[inside]]
        last[inside] = step[inside]
    steps = (last - index + 1).to(td[K.REWARD].dtype)[:, None]
    discount = gamma**steps * (1.0 - td[K.DONE][last])
    return {K.REWARD: reward, K.DISCOUNT: discount, K.NEXT_OBS: td[K.NEXT_OBS][last]}


def action_chunks(store: EpisodeStore, horizon: int) -> torch.Tensor:
    """Per stored transition, the actions of its step and the `horizon` - 1 steps after it within its episode,
    concatenated [T, horizon * A]; steps past the episode's end repeat its last action (Diffusion Policy's
    padding), so a chunk never crosses into the next episode."""
    action = store.transitions[K.ACTION]
    if horizon == 1:
        return action
    device = action.device
    episode_of = episode_index(store, device)
    last = (store.episode_start + store.episode_length - 1).to(device)[episode_of]
    index = torch.arange(action.shape[0], device=device)[:, None] + torch.arange(horizon, device=device)
    return action[torch.minimum(index, last[:, None])].flatten(1)
