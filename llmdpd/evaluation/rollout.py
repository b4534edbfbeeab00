"""Lock-step rollouts of many episodes with one policy query per step for all of them.

`llmdpd.evaluation.plan` decides which (task, goal) episodes an evaluation runs; `llmdpd.evaluation.environments`
builds their torchrl environments; `evaluate_episodes` runs them: at every step one call
`act_fn(obs [n_live, obs_dim] float32, live) -> actions [n_live, action_dim]`, where `live` lists the indices
(into the whole `episodes` list) of the episodes still running, in increasing order. The act_fn acts through a
`TensorDictModule` reading `observation` and `episode` and writing `action` for the live environments only.

Memory: one Meta-World environment holds about 20 MB, so at most `max_envs` (default 256) environments live
at once. A longer plan runs in consecutive waves of `max_envs` episodes (episodes 0..max_envs-1 first, and
so on), each wave in lock step with one batched act_fn call per step; `live` then lists episodes of the
current wave only. Results do not depend on `max_envs` as long as the act_fn's answer for an episode depends
only on that episode's observations (a stochastic act_fn consumes its random numbers in another order).

Environments are stepped in this process (`workers=1`) or in `workers` processes (a torchrl `ParallelEnv`).
Results do not depend on the worker count: each episode's reset is fixed by its goal variation or reset seed,
and all other randomness belongs to the act_fn.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tensordict.nn import TensorDictModule

from llmdpd.evaluation.environments import EpisodeEnvironments, batched_env
from llmdpd.evaluation.plan import EvalEpisode

ActFn = Callable[[np.ndarray, list[int]], np.ndarray]
# Environments alive at once (about 20 MB each for Meta-World): 256 is about 5 GB.
DEFAULT_MAX_ENVS = 256


@dataclass
class EpisodeResult:
    """The outcome of one `EvalEpisode`: success at any step, success at the last step, return, length.

    `success` and `final_success` are None for an environment that does not report success;
    `normalized_return` is the return normalised by the dataset's reference scores, where it has them.
    """

    task: str
    split: str
    goal: int
    episode: int
    success: bool | None
    final_success: bool | None
    episode_return: float
    length: int
    normalized_return: float | None = None


@dataclass
class RolloutTiming:
    """Where an evaluation's time went (pass one to `evaluate_episodes` to fill it; used by benchmarks)."""

    env_steps: int = 0
    setup_seconds: float = 0.0  # building environments and worker processes, and the first reset (every wave)
    act_seconds: float = 0.0  # inside act_fn
    rollout_seconds: float = 0.0  # the step loop, act_fn included
    waves: int = 0

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / self.rollout_seconds if self.rollout_seconds else 0.0


class _NumpyActFn(torch.nn.Module):
    """An act_fn on numpy arrays as a torch module: (observation [n, D], episode [n]) -> action [n, A]."""

    def __init__(self, act_fn: ActFn, action_dim: int, timing: RolloutTiming) -> None:
        super().__init__()
        self.act_fn, self.action_dim, self.timing = act_fn, action_dim, timing

    def forward(self, observation: torch.Tensor, episode: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        actions = np.asarray(self.act_fn(observation.numpy(), episode.tolist()), dtype=np.float32)
        self.timing.act_seconds += time.perf_counter() - start
        expected = (len(observation), self.action_dim)
        if actions.shape != expected:
            raise ValueError(f"act_fn returned shape {actions.shape}, expected {expected}")
        return torch.from_numpy(actions)


def tensordict_actor(act_fn: ActFn, action_dim: int, timing: RolloutTiming | None = None) -> TensorDictModule:
    """`act_fn` as a TensorDictModule: reads `observation` and `episode`, writes `action`."""
    module = _NumpyActFn(act_fn, action_dim, timing if timing is not None else RolloutTiming())
    return TensorDictModule(module, in_keys=["observation", "episode"], out_keys=["action"])


def evaluate_episodes(
    episodes: Sequence[EvalEpisode],
    act_fn: ActFn,
    max_episode_steps: int,
    workers: int = 1,
    env_seed: int = 0,
    progress: bool = False,
    timing: RolloutTiming | None = None,
    max_envs: int = DEFAULT_MAX_ENVS,
    environments: EpisodeEnvironments | None = None,
) -> list[EpisodeResult]:
    """Run all `episodes` in lock step, querying `act_fn` once per step for every live environment.

    `environments` says how to build each episode's env (default: Meta-World with MT1 seeded by `env_seed`,
    which must be the seed the datasets were generated with, or "held-out" goals are not the ones held out).
    Episodes end when their env ends them or after `max_episode_steps` (at most the env's own limit). At most
    `max_envs` environments live at once: longer plans run in consecutive waves (see the module docstring).
    Results are in the order of `episodes`.
    """
    if max_envs < 1:
        raise ValueError(f"max_envs must be at least 1, got {max_envs}")
    episodes = list(episodes)
    if not episodes:
        return []
    environments = environments if environments is not None else EpisodeEnvironments(metaworld_seed=env_seed)
    environments.check(episodes)
    horizon = min(environments.horizon(task, max_episode_steps) for task in {ep.task for ep in episodes})
    timing = timing if timing is not None else RolloutTiming()
    n = len(episodes)
    returns = np.zeros(n)
    length = np.zeros(n, dtype=np.int64)
    success = np.zeros(n, dtype=bool)
    final_success = np.zeros(n, dtype=bool)
    reports_success = True
    bar = _progress_bar(horizon * -(-n // max_envs), progress)
    try:
        for start in range(0, n, max_envs):
            wave = range(start, min(start + max_envs, n))
            steps, wave_reports = _run_wave(
                [episodes[i] for i in wave], np.asarray(wave), act_fn, environments, horizon, workers, timing,
                returns, length, success, final_success, bar,
            )
            reports_success &= wave_reports
            if bar is not None and steps < horizon:
                bar.update(horizon - steps)
            timing.waves += 1
    finally:
        if bar is not None:
            bar.close()
    return [
        EpisodeResult(
            ep.task, ep.split, ep.goal, ep.episode,
            bool(success[i]) if reports_success else None,
            bool(final_success[i]) if reports_success else None,
            float(returns[i]), int(length[i]), _normalized(environments, ep.task, returns[i]),
        )
        for i, ep in enumerate(episodes)
    ]


def _run_wave(
    episodes: list[EvalEpisode],
    index: np.ndarray,
    act_fn: ActFn,
    environments: EpisodeEnvironments,
    horizon: int,
    workers: int,
    timing: RolloutTiming,
    returns: np.ndarray,
    length: np.ndarray,
    success: np.ndarray,
    final_success: np.ndarray,
    bar,
) -> tuple[int, bool]:
    """One wave in lock step; fills the result arrays at `index`. Returns (steps, whether success is reported)."""
    setup_start = time.perf_counter()
    env, slots = batched_env(episodes, environments, horizon, workers)
    try:
        td = env.reset().reshape(-1)
        timing.setup_seconds += time.perf_counter() - setup_start
        loop_start = time.perf_counter()
        slots_t = torch.as_tensor(slots)
        real = slots_t >= 0
        # Each slot's episode as an index into the whole plan (the act_fn's `live`); padding slots are never asked.
        plan_index = torch.full((len(slots),), -1, dtype=torch.long)
        plan_index[real] = torch.as_tensor(index)[slots_t[real]]
        actor = tensordict_actor(act_fn, env.full_action_spec["action"].shape[-1], timing)
        reports = "success" in td.keys()
        any_success = torch.zeros(len(slots), dtype=torch.bool)
        last_success = torch.zeros(len(slots), dtype=torch.bool)
        # Counted here: the batch's StepCounter also counts the skipped steps of episodes already over.
        steps_taken = torch.zeros(len(slots), dtype=torch.long)
        steps = 0
        while True:
            running = ~td.get("done").reshape(-1)
            asked = running & real
            if not running.any():
                break
            live = td.select("observation")[asked]
            live.set("episode", plan_index[asked])
            actions = torch.zeros(len(slots), *env.full_action_spec["action"].shape[env.batch_dims:])
            if asked.any():
                actions[asked] = actor(live).get("action")
            td.set("action", actions)
            td = env.step(td.reshape(env.batch_size)).reshape(-1)
            if reports:
                stepped = td.get(("next", "success")).reshape(-1)
                any_success |= stepped & running
                last_success = torch.where(running, stepped, last_success)
            td = env.step_mdp(td.reshape(env.batch_size)).reshape(-1)
            steps_taken += running
            timing.env_steps += int(asked.sum())
            steps += 1
            if bar is not None:
                bar.update(1)
        timing.rollout_seconds += time.perf_counter() - loop_start
        rows = slots_t[real].numpy()
        returns[index[rows]] = td.get("episode_reward").reshape(-1)[real].double().numpy()
        length[index[rows]] = steps_taken[real].numpy()
        success[index[rows]] = any_success[real].numpy()
        final_success[index[rows]] = last_success[real].numpy()
    finally:
        env.close()  # closing writes the recorded videos
    return steps, reports


def _normalized(environments: EpisodeEnvironments, task: str, episode_return: float) -> float | None:
    info = environments.minari_info(task)
    normalized = info.normalized(np.asarray(episode_return)) if info is not None else None
    return float(normalized) if normalized is not None else None


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluation", unit="step", leave=False)


def measure_steps_per_second(
    episodes: Sequence[EvalEpisode],
    act_fn: ActFn,
    max_episode_steps: int,
    workers: int = 1,
    env_seed: int = 0,
    max_envs: int = DEFAULT_MAX_ENVS,
) -> RolloutTiming:
    """Time one evaluation (env steps/s with `act_fn` in the loop); environment setup is timed apart."""
    timing = RolloutTiming()
    evaluate_episodes(
        episodes, act_fn, max_episode_steps, workers=workers, env_seed=env_seed, timing=timing, max_envs=max_envs
    )
    return timing


__all__ = [
    "ActFn",
    "DEFAULT_MAX_ENVS",
    "EpisodeResult",
    "RolloutTiming",
    "evaluate_episodes",
    "measure_steps_per_second",
    "tensordict_actor",
]
