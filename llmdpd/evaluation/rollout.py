"""Lock-step rollouts of many Meta-World episodes with one policy query per step for all of them.

`llmdpd.evaluation.plan` decides which (task, goal variation) pairs an evaluation runs (its names are
re-exported here for older imports); `evaluate_episodes` runs them: at every step one call
`act_fn(obs [n_live, 39] float32, live) -> actions [n_live, 4]`, where `live` lists the indices (into the
whole `episodes` list) of the environments still running, in increasing order.

Memory: one Meta-World environment holds about 20 MB, so at most `max_envs` (default 256) environments live
at once. A longer plan runs in consecutive waves of `max_envs` episodes (episodes 0..max_envs-1 first, and
so on), each wave in lock step with one batched act_fn call per step; `live` then lists episodes of the
current wave only. Results do not depend on `max_envs` as long as the act_fn's answer for an episode depends
only on that episode's observations (a stochastic act_fn consumes its random numbers in another order).

Environments are stepped in the calling process (`workers=1`) or in `workers` processes that each own a
contiguous block of every wave, started with `forkserver` so that they do not inherit the parent's threads
or CUDA state, and kept for all waves of one evaluation. As with any multiprocessing start method but fork,
a script that calls this with workers > 1 must guard its entry point with `if __name__ == "__main__":`.
Results do not depend on the worker count: Meta-World resets are deterministic per goal variation, and all
randomness belongs to the act_fn.

Building a Meta-World environment compiles its MuJoCo model (about 0.1 s), so the calling process keeps the
environments it built for later evaluations (`clear_env_cache` frees them): at most `max_envs` of them in
all, live ones included, dropping those of the least recently used (task, env_seed) first. Worker processes
keep theirs (at most their share, max_envs / workers) across the waves of one evaluation and build them
afresh at every evaluation.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from llmdpd.envs.metaworld import ACTION_DIM, OBS_DIM, MetaWorldTaskEnv
from llmdpd.evaluation.plan import EvalEpisode, _pick_goals, plan_episodes, plan_evaluation  # noqa: F401

ActFn = Callable[[np.ndarray, list[int]], np.ndarray]
# Meta-World refuses to step past 500; shorter horizons are enforced by the rollout loop.
_ENV_HORIZON = 500
# Environments alive at once (about 20 MB each): 256 is about 5 GB.
DEFAULT_MAX_ENVS = 256


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
    setup_seconds: float = 0.0  # building environments and worker processes (every wave)
    act_seconds: float = 0.0  # inside act_fn
    rollout_seconds: float = 0.0  # resets and the step loop, act_fn included
    waves: int = 0

    @property
    def steps_per_second(self) -> float:
        return self.env_steps / self.rollout_seconds if self.rollout_seconds else 0.0


# Environments built in this process and not in use, by (task, env_seed), least recently used first.
_ENV_CACHE: OrderedDict[tuple[str, int], list[MetaWorldTaskEnv]] = OrderedDict()


def cached_env_count() -> int:
    """How many idle environments this process keeps."""
    return sum(len(envs) for envs in _ENV_CACHE.values())


def clear_env_cache() -> None:
    """Close and forget the environments this process keeps between evaluations."""
    for envs in _ENV_CACHE.values():
        for env in envs:
            env.close()
    _ENV_CACHE.clear()


def _evict(keep: int) -> None:
    """Close cached environments, least recently used (task, env_seed) first, until at most `keep` remain."""
    while _ENV_CACHE and cached_env_count() > max(keep, 0):
        key, envs = next(iter(_ENV_CACHE.items()))
        envs.pop().close()
        if not envs:
            del _ENV_CACHE[key]


def _take_envs(episodes: Sequence[EvalEpisode], env_seed: int, capacity: int) -> list[MetaWorldTaskEnv]:
    """One environment per episode: cached ones first, then new ones, evicting idle ones beforehand so that
    this process holds at most `capacity` environments (these included)."""
    envs: list[MetaWorldTaskEnv | None] = [None] * len(episodes)
    for i, ep in enumerate(episodes):
        cached = _ENV_CACHE.get((ep.task, env_seed))
        if cached:
            envs[i] = cached.pop()
            if not cached:
                del _ENV_CACHE[(ep.task, env_seed)]
    _evict(capacity - len(episodes))
    try:
        for i, ep in enumerate(episodes):
            if envs[i] is None:
                envs[i] = MetaWorldTaskEnv(ep.task, env_seed, _ENV_HORIZON)
    except BaseException:
        _return_envs([ep for ep, env in zip(episodes, envs) if env is not None],
                     [env for env in envs if env is not None], env_seed, capacity)
        raise
    return envs  # type: ignore[return-value]


def _return_envs(
    episodes: Sequence[EvalEpisode], envs: Sequence[MetaWorldTaskEnv], env_seed: int, capacity: int
) -> None:
    """Put environments back in the cache (most recently used last), then evict down to `capacity`."""
    for ep, env in zip(episodes, envs):
        key = (ep.task, env_seed)
        _ENV_CACHE.setdefault(key, []).append(env)
        _ENV_CACHE.move_to_end(key)
    _evict(capacity)


class _Shard:
    """Some of a wave's episodes, each with its own environment, stepped in this process."""

    def __init__(self, episodes: Sequence[EvalEpisode], env_seed: int, capacity: int) -> None:
        self.episodes = list(episodes)
        self.env_seed = env_seed
        self.capacity = capacity
        self.envs = _take_envs(self.episodes, env_seed, capacity)
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
        """Give the environments back to this process's cache."""
        _return_envs(self.episodes, self.envs, self.env_seed, self.capacity)
        self.envs = []


class _LocalPool:
    """Steps every wave in this process, one shard per wave."""

    def __init__(self, env_seed: int, capacity: int) -> None:
        self.env_seed, self.capacity = env_seed, capacity
        self.shard: _Shard | None = None

    def load(self, blocks: list[list[EvalEpisode]]) -> list[_Shard]:
        (block,) = blocks
        self.close()  # first, so that the next wave can reuse these environments
        self.shard = _Shard(block, self.env_seed, self.capacity)
        return [self.shard]

    def close(self) -> None:
        if self.shard is not None:
            self.shard.close()
            self.shard = None


def _worker(conn, env_seed: int, capacity: int) -> None:
    """Serve shards over a pipe: ("load", episodes), ("reset", None), ("step", (local, actions)), ("close", None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes us
    shard: _Shard | None = None
    try:
        while True:
            command, payload = conn.recv()
            if command == "close":
                conn.send(("ok", None))
                return
            if command == "load":
                if shard is not None:
                    shard.close()
                    shard = None
                shard = _Shard(payload, env_seed, capacity)
                conn.send(("ok", None))
            elif command == "reset":
                conn.send(("ok", shard.reset()))
            else:
                conn.send(("ok", shard.step(*payload)))
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
    """A worker process serving one `_Shard` per wave."""

    def __init__(self, env_seed: int, capacity: int, ctx) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker, args=(child, env_seed, capacity), daemon=True)
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

    def load_async(self, episodes: list[EvalEpisode]) -> None:
        self.conn.send(("load", episodes))

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


class _RemotePool:
    """`workers` processes kept for all waves; a wave's blocks load in parallel."""

    def __init__(self, workers: int, env_seed: int, capacity: int) -> None:
        ctx = _context()
        self.shards: list[_RemoteShard] = []
        try:
            for _ in range(workers):
                self.shards.append(_RemoteShard(env_seed, capacity, ctx))
        except BaseException:
            self.close()
            raise

    def load(self, blocks: list[list[EvalEpisode]]) -> list[_RemoteShard]:
        used = self.shards[: len(blocks)]
        for shard, block in zip(used, blocks):
            shard.load_async(block)
        for shard in used:
            shard.ready()
        return used

    def close(self) -> None:
        for shard in self.shards:
            shard.close()


def evaluate_episodes(
    episodes: Sequence[EvalEpisode],
    act_fn: ActFn,
    max_episode_steps: int,
    workers: int = 1,
    env_seed: int = 0,
    progress: bool = False,
    timing: RolloutTiming | None = None,
    max_envs: int = DEFAULT_MAX_ENVS,
) -> list[EpisodeResult]:
    """Run all `episodes` in lock step, querying `act_fn` once per step for every live environment.

    `env_seed` seeds Meta-World's MT1 benchmark, which fixes where each goal variation puts the goal: it must
    be the seed the datasets were generated with, or "held-out" goals are not the ones held out. Episodes
    end after `max_episode_steps` (at most 500). At most `max_envs` environments live at once: longer plans
    run in consecutive waves (see the module docstring). Results are in the order of `episodes`.
    """
    if max_envs < 1:
        raise ValueError(f"max_envs must be at least 1, got {max_envs}")
    episodes = list(episodes)
    n = len(episodes)
    if n == 0:
        return []
    horizon = min(max_episode_steps, _ENV_HORIZON)
    timing = timing if timing is not None else RolloutTiming()
    waves = [np.arange(start, min(start + max_envs, n)) for start in range(0, n, max_envs)]
    workers = max(1, min(workers, len(waves[0])))
    capacity = -(-max_envs // workers)  # environments per process, idle ones included
    started = time.perf_counter()
    setup = 0.0
    bar = _progress_bar(horizon * len(waves), progress)
    pool = _LocalPool(env_seed, capacity) if workers == 1 else None
    try:
        if pool is None:
            pool = _RemotePool(workers, env_seed, capacity)
            setup += time.perf_counter() - started
        obs = np.empty((n, OBS_DIM), dtype=np.float32)
        alive = np.zeros(n, dtype=bool)
        returns = np.zeros(n)
        success = np.zeros(n, dtype=bool)
        final_success = np.zeros(n, dtype=bool)
        length = np.zeros(n, dtype=np.int64)
        row = np.empty(n, dtype=np.int64)  # position of each live episode in this step's action array
        for wave in waves:
            # Contiguous blocks (the plan lists a task's episodes together): each worker then builds the MT1
            # benchmarks (about 0.7 s each) of a few tasks rather than of all of them.
            indices = [idx for idx in np.array_split(wave, workers) if len(idx)]
            load_start = time.perf_counter()
            shards = pool.load([[episodes[i] for i in idx] for idx in indices])
            setup += time.perf_counter() - load_start
            for shard, idx in zip(shards, indices):
                obs[idx] = shard.reset()
            alive[wave] = True
            steps = 0
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
                steps += 1
                if bar is not None:
                    bar.update(1)
            if bar is not None and steps < horizon:
                bar.update(horizon - steps)
            timing.waves += 1
    finally:
        if bar is not None:
            bar.close()
        if pool is not None:
            pool.close()
    timing.setup_seconds += setup
    timing.rollout_seconds += time.perf_counter() - started - setup
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
    "EvalEpisode",
    "RolloutTiming",
    "cached_env_count",
    "clear_env_cache",
    "evaluate_episodes",
    "measure_steps_per_second",
    "plan_episodes",
    "plan_evaluation",
]
