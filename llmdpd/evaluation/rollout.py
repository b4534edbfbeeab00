"""Lock-step rollouts of many Meta-World episodes with one policy query per step for all of them.

`plan_episodes` decides which (task, goal variation) pairs an evaluation runs; `evaluate_episodes` runs them
all at once: at every step one call `act_fn(obs [n_live, 39] float32, live) -> actions [n_live, 4]`, where
`live` lists the indices (into `episodes`) of the environments still running, in increasing order.

Environments are stepped in the calling process (`workers=1`) or in `workers` processes that each own an
contiguous block of the episodes, started with `forkserver` so that they do not inherit the parent's threads
or CUDA state. As with any multiprocessing start method but fork, a script that calls this with workers > 1
must guard its entry point with `if __name__ == "__main__":`. Results do not depend on the worker count:
Meta-World resets are deterministic per goal variation, and all randomness belongs to the act_fn.

Building a Meta-World environment compiles its MuJoCo model (about 0.1 s) and one holds about 20 MB, so
the calling process keeps the environments it built for later evaluations (`clear_env_cache` frees them);
worker processes build theirs afresh at every evaluation.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from llmdpd.config.schema import EvalConfig
from llmdpd.envs.metaworld import ACTION_DIM, NUM_GOALS, OBS_DIM, MetaWorldTaskEnv

ActFn = Callable[[np.ndarray, list[int]], np.ndarray]
# Meta-World refuses to step past 500; shorter horizons are enforced by the rollout loop.
_ENV_HORIZON = 500


@dataclass(frozen=True)
class EvalEpisode:
    """One evaluation episode: goal variation `goal` of `task`; `episode` numbers the task's episodes 0, 1, ..."""

    task: str
    split: str  # "seen" or "unseen"
    goal: int
    episode: int


@dataclass
class EpisodeResult:
    """The outcome of one `EvalEpisode`: success at any step, success at the last step, return, length."""

    task: str
    split: str
    goal: int
    episode: int
    success: bool
    final_success: bool
    episode_return: float
    length: int


@dataclass
class RolloutTiming:
    """Where an evaluation's time went (pass one to `evaluate_episodes` to fill it; used by benchmarks)."""

    env_steps: int = 0
    setup_seconds: float = 0.0  # building environments and worker processes
    act_seconds: float = 0.0  # inside act_fn
    rollout_seconds: float = 0.0  # resets and the step loop, act_fn included

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / self.rollout_seconds if self.rollout_seconds else 0.0


def _task_key(task: str) -> int:
    return int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")


def _pick_goals(task: str, pool: range, count: int, seed: int) -> list[int]:
    """`count` goals from `pool`, each used once before any repeats, in an order fixed by (seed, task)."""
    rng = np.random.default_rng([seed, _task_key(task)])
    goals: list[int] = []
    while len(goals) < count:
        goals.extend(int(pool[i]) for i in rng.permutation(len(pool)))
    return goals[:count]


def plan_episodes(
    seen_tasks: Sequence[str],
    unseen_tasks: Sequence[str],
    episodes_per_task: int,
    train_goals: int,
    seed: int,
) -> list[EvalEpisode]:
    """The episodes of one evaluation, seen tasks first.

    Seen tasks use goal variations in [train_goals, 50), which the datasets never used; unseen tasks use any
    of the 50. Goals are drawn without replacement (repeating only once a task's pool is exhausted), from a
    generator seeded by (seed, task), so a task's goals do not depend on the other tasks.
    """
    if seen_tasks and not 0 <= train_goals < NUM_GOALS:
        raise ValueError(f"train_goals={train_goals} leaves no held-out goal variations for seen tasks")
    plan = []
    for split, tasks, pool in (
        ("seen", seen_tasks, range(train_goals, NUM_GOALS)),
        ("unseen", unseen_tasks, range(NUM_GOALS)),
    ):
        for task in tasks:
            for episode, goal in enumerate(_pick_goals(task, pool, episodes_per_task, seed)):
                plan.append(EvalEpisode(task, split, goal, episode))
    return plan


# Environments built in this process, by (task, env_seed), kept for later evaluations.
_ENV_CACHE: dict[tuple[str, int], list[MetaWorldTaskEnv]] = {}


def plan_evaluation(
    cfg: EvalConfig, seen_tasks: Sequence[str], unseen_tasks: Sequence[str], train_goals: int
) -> list[EvalEpisode]:
    """`plan_episodes` for an experiment's `eval` section (its seen/unseen switches, episode count and seed)."""
    seen = list(seen_tasks) if cfg.seen else []
    unseen = list(unseen_tasks) if cfg.unseen else []
    return plan_episodes(seen, unseen, cfg.episodes_per_task, train_goals, cfg.seed)


def clear_env_cache() -> None:
    """Close and forget the environments this process keeps between evaluations."""
    for envs in _ENV_CACHE.values():
        for env in envs:
            env.close()
    _ENV_CACHE.clear()


class _Shard:
    """Some of an evaluation's episodes, each with its own environment, stepped in this process."""

    def __init__(self, episodes: Sequence[EvalEpisode], env_seed: int) -> None:
        self.episodes = list(episodes)
        self.env_seed = env_seed
        self.envs = []
        for ep in self.episodes:
            cached = _ENV_CACHE.get((ep.task, env_seed))
            self.envs.append(cached.pop() if cached else MetaWorldTaskEnv(ep.task, env_seed, _ENV_HORIZON))
        self._pending = None

    def reset(self) -> np.ndarray:
        return np.stack([env.reset(ep.goal) for env, ep in zip(self.envs, self.episodes)])

    def step(self, local: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, ...]:
        """Step the environments at positions `local`; (obs, reward, success, truncated), one row each."""
        out = [self.envs[i].step(a) for i, a in zip(local, actions)]
        obs, reward, success, truncated = zip(*out)
        return np.stack(obs), np.asarray(reward), np.asarray(success), np.asarray(truncated)

    def step_async(self, local: np.ndarray, actions: np.ndarray) -> None:
        self._pending = self.step(local, actions)

    def step_wait(self) -> tuple[np.ndarray, ...]:
        pending, self._pending = self._pending, None
        return pending

    def close(self) -> None:
        for env, ep in zip(self.envs, self.episodes):
            _ENV_CACHE.setdefault((ep.task, self.env_seed), []).append(env)
        self.envs = []


def _worker(conn, episodes: list[EvalEpisode], env_seed: int) -> None:
    """Serve one shard over a pipe: ("reset", None), ("step", (local, actions)), ("close", None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes us
    try:
        shard = _Shard(episodes, env_seed)
        conn.send(("ok", None))
        while True:
            command, payload = conn.recv()
            if command == "close":
                conn.send(("ok", None))
                return
            conn.send(("ok", shard.reset() if command == "reset" else shard.step(*payload)))
    except (EOFError, KeyboardInterrupt):
        return
    except Exception:
        conn.send(("error", traceback.format_exc()))


def _context():
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        # Imported once by the fork server instead of by every worker (the main module too: see the docstring).
        ctx.set_forkserver_preload(["__main__", "llmdpd.evaluation.rollout", "metaworld"])
        return ctx
    return mp.get_context("spawn")


class _RemoteShard:
    """A `_Shard` living in a worker process."""

    def __init__(self, episodes: Sequence[EvalEpisode], env_seed: int, ctx) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, list(episodes), env_seed), daemon=True)
        self.process.start()
        child.close()

    def _receive(self):
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"Evaluation worker {self.process.pid} died (exit code {self.process.exitcode})")
        if status == "error":
            raise RuntimeError(f"Evaluation worker failed:\n{payload}")
        return payload

    def ready(self) -> None:
        self._receive()

    def reset(self) -> np.ndarray:
        self.conn.send(("reset", None))
        return self._receive()

    def step_async(self, local: np.ndarray, actions: np.ndarray) -> None:
        self.conn.send(("step", (local, actions)))

    def step_wait(self) -> tuple[np.ndarray, ...]:
        return self._receive()

    def close(self) -> None:
        try:
            if self.process.is_alive():
                self.conn.send(("close", None))
                self.conn.recv()
        except (OSError, EOFError, BrokenPipeError):
            pass
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join()
        self.conn.close()


def _open_shards(episodes: list[EvalEpisode], workers: int, env_seed: int) -> tuple[list, list[np.ndarray]]:
    workers = max(1, min(workers, len(episodes)))
    # Contiguous blocks of the plan (which lists a task's episodes together): each worker then builds the
    # MT1 benchmarks (about 0.7 s each) of a few tasks rather than of all of them.
    indices = np.array_split(np.arange(len(episodes)), workers)
    if workers == 1:
        return [_Shard(episodes, env_seed)], indices
    ctx = _context()
    shards: list[_RemoteShard] = []
    try:
        for idx in indices:
            shards.append(_RemoteShard([episodes[i] for i in idx], env_seed, ctx))
        for shard in shards:
            shard.ready()
    except BaseException:
        for shard in shards:
            shard.close()
        raise
    return shards, indices


def evaluate_episodes(
    episodes: Sequence[EvalEpisode],
    act_fn: ActFn,
    max_episode_steps: int,
    workers: int = 1,
    env_seed: int = 0,
    progress: bool = False,
    timing: RolloutTiming | None = None,
) -> list[EpisodeResult]:
    """Run all `episodes` in lock step, querying `act_fn` once per step for every live environment.

    `env_seed` seeds Meta-World's MT1 benchmark, which fixes where each goal variation puts the goal: it must
    be the seed the datasets were generated with, or "held-out" goals are not the ones held out. Episodes
    end after `max_episode_steps` (at most 500). Results are in the order of `episodes`.
    """
    episodes = list(episodes)
    n = len(episodes)
    if n == 0:
        return []
    horizon = min(max_episode_steps, _ENV_HORIZON)
    timing = timing if timing is not None else RolloutTiming()
    start = time.perf_counter()
    shards, indices = _open_shards(episodes, workers, env_seed)
    timing.setup_seconds += time.perf_counter() - start
    start = time.perf_counter()
    bar = _progress_bar(horizon, progress)
    try:
        obs = np.empty((n, OBS_DIM), dtype=np.float32)
        for shard, idx in zip(shards, indices):
            obs[idx] = shard.reset()
        alive = np.ones(n, dtype=bool)
        returns = np.zeros(n)
        success = np.zeros(n, dtype=bool)
        final_success = np.zeros(n, dtype=bool)
        length = np.zeros(n, dtype=np.int64)
        row = np.empty(n, dtype=np.int64)  # position of each live episode in this step's action array
        while alive.any():
            live = np.flatnonzero(alive)
            act_start = time.perf_counter()
            actions = np.asarray(act_fn(obs[live], live.tolist()), dtype=np.float32)
            timing.act_seconds += time.perf_counter() - act_start
            if actions.shape != (len(live), ACTION_DIM):
                raise ValueError(f"act_fn returned shape {actions.shape}, expected {(len(live), ACTION_DIM)}")
            row[live] = np.arange(len(live))
            stepped = []
            for shard, idx in zip(shards, indices):
                local = np.flatnonzero(alive[idx])
                if len(local):
                    shard.step_async(local, actions[row[idx[local]]])
                    stepped.append((shard, idx[local]))
            for shard, sel in stepped:
                next_obs, reward, succeeded, truncated = shard.step_wait()
                obs[sel] = next_obs
                returns[sel] += reward
                success[sel] |= succeeded
                final_success[sel] = succeeded
                length[sel] += 1
                alive[sel[truncated | (length[sel] >= horizon)]] = False
            timing.env_steps += len(live)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        for shard in shards:
            shard.close()
    timing.rollout_seconds += time.perf_counter() - start
    return [
        EpisodeResult(
            ep.task, ep.split, ep.goal, ep.episode,
            bool(success[i]), bool(final_success[i]), float(returns[i]), int(length[i]),
        )
        for i, ep in enumerate(episodes)
    ]


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="evaluation", unit="step", leave=False)


def measure_steps_per_second(
    episodes: Sequence[EvalEpisode], act_fn: ActFn, max_episode_steps: int, workers: int = 1, env_seed: int = 0
) -> RolloutTiming:
    """Time one evaluation (env steps/s with `act_fn` in the loop); environment setup is timed apart."""
    timing = RolloutTiming()
    evaluate_episodes(episodes, act_fn, max_episode_steps, workers=workers, env_seed=env_seed, timing=timing)
    return timing


__all__ = [
    "ActFn",
    "EpisodeResult",
    "EvalEpisode",
    "RolloutTiming",
    "clear_env_cache",
    "evaluate_episodes",
    "measure_steps_per_second",
    "plan_episodes",
]
