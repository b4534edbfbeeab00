"""The torchrl environments of an evaluation: one per planned episode, batched for lock-step rollouts.

Each episode gets its own environment, reset once: a Meta-World task set to the episode's goal variation
(`MetaWorldGoalEnv`), or the environment a Minari dataset recovers (`make_minari_env`), seeded with the
episode's reset seed. A batch of episodes is a torchrl `SerialEnv` stepped in this process (`workers=1`) or a
`ParallelEnv` of `workers` processes, each stepping a `SerialEnv` over a contiguous block of the episodes
(blocks are padded to equal sizes, as `ParallelEnv` needs, with copies of their last episode whose results
nobody reads). Around each `SerialEnv`:

- `StepCounter(horizon)` truncates episodes at the evaluation's horizon and counts their steps,
- `RewardSum` keeps each episode's return,
- `ConditionalSkip` leaves environments whose episode is over alone (torchrl's partial steps): an
  environment is never stepped past its end, which Meta-World refuses after 500 steps.

Observations are float32 from each env already (`DoubleToFloat` around a Minari env), as partial steps need.

Worker processes start with `forkserver`, so that they inherit neither the parent's threads nor its CUDA
state; as with any start method but fork, a script that evaluates with workers > 1 must guard its entry point
with `if __name__ == "__main__":`.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from torchrl.envs import (
    Compose,
    ConditionalSkip,
    EnvBase,
    ParallelEnv,
    RewardSum,
    SerialEnv,
    StepCounter,
    TransformedEnv,
)

from llmdpd.envs.metaworld import check_task
from llmdpd.envs.minari_env import MinariEnvInfo, make_minari_env, minari_env_info
from llmdpd.evaluation.plan import EvalEpisode

# Meta-World refuses to step past 500.
METAWORLD_HORIZON = 500


@dataclass(frozen=True)
class EpisodeEnvironments:
    """How to build the environment of any planned episode (picklable: worker processes build their own).

    `metaworld_seed` seeds Meta-World's MT1 benchmark, which fixes where each goal variation puts the goal: it
    must be the seed the datasets were generated with. Tasks in `minari_ids` (task -> dataset id, datasets
    under `data_dir`) evaluate on their dataset's own environment. Episodes listed in `video_paths`
    (episode -> mp4 path) are rendered at `video_size` pixels and written there when their env closes.
    """

    metaworld_seed: int = 0
    minari_ids: Mapping[str, str] = field(default_factory=dict)
    data_dir: str = "data"
    video_paths: Mapping[EvalEpisode, str] = field(default_factory=dict)
    video_size: int = 224

    def minari_info(self, task: str) -> MinariEnvInfo | None:
        """What the task's Minari env reports (None for a Meta-World task); a DatasetError names a dataset
        whose env cannot be built."""
        if task not in self.minari_ids:
            return None
        return minari_env_info(str(Path(self.data_dir).resolve()), self.minari_ids[task])

    def check(self, episodes: Sequence[EvalEpisode]) -> None:
        """Fail here, in one line, on a task that is neither Meta-World's nor a buildable Minari dataset's."""
        for task in dict.fromkeys(ep.task for ep in episodes):
            if task in self.minari_ids:
                self.minari_info(task)
            else:
                check_task(task)

    def horizon(self, task: str, max_episode_steps: int) -> int:
        """Steps an episode of `task` runs at most: `max_episode_steps`, capped by the env's own limit."""
        info = self.minari_info(task)
        limit = METAWORLD_HORIZON if info is None else info.max_episode_steps
        return min(max_episode_steps, limit) if limit else max_episode_steps

    def env_kwargs(self, episode: EvalEpisode, record: bool = True) -> dict[str, Any]:
        """Keyword arguments of `make_episode_env` for `episode` (`record=False`: never rendered)."""
        video = self.video_paths.get(episode) if record else None
        if episode.task in self.minari_ids:
            return dict(minari=(str(Path(self.data_dir).resolve()), self.minari_ids[episode.task]),
                        goal=episode.goal, video_path=video, video_size=self.video_size)
        return dict(task=episode.task, goal=episode.goal, seed=self.metaworld_seed, video_path=video,
                    video_size=self.video_size)


def make_episode_env(
    goal: int,
    task: str | None = None,
    seed: int = 0,
    minari: tuple[str, str] | None = None,
    video_path: str | None = None,
    video_size: int = 224,
) -> EnvBase:
    """One episode's environment: Meta-World `task` at goal variation `goal`, or Minari dataset `minari`
    (data_dir, dataset id) reset with seed `goal`."""
    if minari is not None:
        return make_minari_env(*minari, reset_seed=goal, video_path=video_path, video_size=video_size)
    from llmdpd.envs.metaworld_torchrl import MetaWorldGoalEnv

    return MetaWorldGoalEnv(task, goal, seed, video_path=video_path, video_size=video_size)


def episode_over(tensordict) -> Any:
    """ConditionalSkip's condition: the environments whose episode has ended."""
    return tensordict.get("done").reshape(tensordict.batch_size)


def serial_env(kwargs: Sequence[dict[str, Any]], horizon: int) -> TransformedEnv:
    """A SerialEnv over one environment per entry of `kwargs`, with the evaluation's transforms."""
    # One creator for all (with per-env kwargs): torchrl then reads the specs of one env, not of each.
    base = SerialEnv(len(kwargs), make_episode_env, create_env_kwargs=list(kwargs))
    return TransformedEnv(
        base,
        Compose(
            StepCounter(max_steps=horizon),
            RewardSum(),
            ConditionalSkip(episode_over),
        ),
    )


def batched_env(
    episodes: Sequence[EvalEpisode], environments: EpisodeEnvironments, horizon: int, workers: int = 1
) -> tuple[EnvBase, list[int]]:
    """The environments of `episodes` as one batched torchrl env, and for each of its (flattened) slots the
    index into `episodes` it runs, or -1 for a padding slot.

    `workers=1`: a SerialEnv in this process. Otherwise a ParallelEnv of `workers` processes (fewer when
    there are fewer episodes), each a SerialEnv over a contiguous block (a task's episodes are planned
    together, so each process builds the MT1 benchmarks of few tasks).
    """
    n = len(episodes)
    workers = max(1, min(workers, n))
    if workers == 1:
        return serial_env([environments.env_kwargs(ep) for ep in episodes], horizon), list(range(n))
    size = -(-n // workers)
    workers = -(-n // size)  # no process of padding alone
    slots, blocks = [], []
    for w in range(workers):
        block = list(range(w * size, min((w + 1) * size, n)))
        kwargs = [environments.env_kwargs(episodes[i]) for i in block]
        pad = size - len(block)
        kwargs += [environments.env_kwargs(episodes[block[-1]], record=False)] * pad
        slots += block + [-1] * pad
        blocks.append(functools.partial(serial_env, kwargs, horizon))
    _preload_forkserver()
    # Without shared buffers the parent blocks on the workers' pipes; with them it spin-waits on a core the
    # workers need (on a 2-core machine that halves their speed). Observations are small either way.
    env = ParallelEnv(workers, blocks, mp_start_method=_start_method(), use_buffers=False)
    return env, slots


def _start_method() -> str:
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


def _preload_forkserver() -> None:
    # Imported once by the fork server instead of by every worker.
    if _start_method() == "forkserver":
        mp.set_forkserver_preload(["llmdpd.evaluation.environments", "metaworld"])


def video_file_name(episode: EvalEpisode) -> str:
    """`<task>_<split>_ep<k>.mp4`, with characters other than letters, digits, '-', '_' and '.' as '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{episode.task}_{episode.split}_ep{episode.episode}") + ".mp4"
