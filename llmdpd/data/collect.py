"""Offline Meta-World data: scripted-expert episodes with per-episode Gaussian action noise.

For each task two Minari datasets are written under `data_dir`:
    metaworld/<task>/mixed-<version>   mixed-quality episodes (noise scale drawn per episode from a mixture)
    metaworld/<task>/prompt-<version>  a few low-noise episodes, kept apart as trajectory prompts

Every episode's randomness (goal variation, noise scale, noise) comes from a seed derived from
(seed, task, kind, episode), so a dataset is the same whatever the worker count or the order of tasks.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from llmdpd.envs.metaworld import MetaWorldTaskEnv, scripted_expert

KINDS = ("mixed", "prompt")


@dataclass(frozen=True)
class CollectionRecipe:
    """Everything that determines one dataset's contents; stored in its metadata."""

    task: str
    kind: str
    episodes: int
    max_episode_steps: int
    noise_scales: tuple[float, ...]
    noise_weights: tuple[float, ...]
    train_goals: int
    seed: int
    descriptions: tuple[str, ...] = field(default=(), compare=False)

    def fingerprint(self) -> str:
        """A short hash of the fields that change the data (not the descriptions)."""
        fields = {k: v for k, v in asdict(self).items() if k != "descriptions"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Episode:
    """One episode as arrays: T steps, T+1 observations."""

    observations: np.ndarray  # [T+1, 39] float32
    actions: np.ndarray  # [T, 4] float32
    rewards: np.ndarray  # [T] float32
    success: np.ndarray  # [T+1] bool, per observation (False at reset)
    goal: int
    noise_scale: float


def episode_rng(seed: int, task: str, kind: str, episode: int) -> np.random.Generator:
    """The generator for one episode, independent of every other episode."""
    task_key = int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")
    return np.random.default_rng([seed, task_key, KINDS.index(kind), episode])


def collect_episode(env: MetaWorldTaskEnv, expert, recipe: CollectionRecipe, episode: int) -> Episode:
    """Roll out the scripted expert with this episode's goal and noise."""
    rng = episode_rng(recipe.seed, recipe.task, recipe.kind, episode)
    goal = int(rng.integers(recipe.train_goals))
    weights = np.asarray(recipe.noise_weights, dtype=np.float64)
    scale = float(recipe.noise_scales[rng.choice(len(weights), p=weights / weights.sum())])
    steps = recipe.max_episode_steps
    noise = rng.normal(0.0, scale, size=(steps, 4)).astype(np.float32)

    observations = np.empty((steps + 1, 39), dtype=np.float32)
    actions = np.empty((steps, 4), dtype=np.float32)
    rewards = np.empty(steps, dtype=np.float32)
    success = np.zeros(steps + 1, dtype=bool)
    obs = env.reset(goal)
    observations[0] = obs
    for t in range(steps):
        action = np.clip(expert(obs) + noise[t], -1.0, 1.0)
        obs, reward, succeeded, _ = env.step(action)
        observations[t + 1], actions[t], rewards[t], success[t + 1] = obs, action, reward, succeeded
    return Episode(observations, actions, rewards, success, goal, scale)


def collect_episodes(recipe: CollectionRecipe, on_episode=None) -> list[Episode]:
    """All episodes of one dataset; `on_episode()` is called after each (progress reporting)."""
    env = MetaWorldTaskEnv(recipe.task, seed=recipe.seed, max_episode_steps=recipe.max_episode_steps)
    expert = scripted_expert(recipe.task)
    episodes = []
    for i in range(recipe.episodes):
        episodes.append(collect_episode(env, expert, recipe, i))
        if on_episode is not None:
            on_episode()
    env.close()
    return episodes
