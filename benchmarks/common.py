"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from typing import Callable

from llmdpd.config.load import load_config
from llmdpd.config.schema import ExperimentConfig
from llmdpd.data.tasks import split_tasks


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    """Fastest wall time of `repeats` calls: the least disturbed by other load on a shared machine."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name: str, value: float, unit: str, target: str = "") -> None:
    print(f"{name:<58} {value:>12.3f} {unit:<10} {target}", flush=True)


def ml10_config(root: str, *overrides: str) -> ExperimentConfig:
    """The `metaworld` (ML10) config over a small dataset of its training tasks under `root`."""
    tasks, _ = split_tasks(load_config("metaworld").data)
    base = [
        f"paths.data_dir={root}",
        f"data.train_tasks=[{','.join(tasks)}]",
        "data.unseen_tasks=[]",
        "data.episodes_per_task=2",
        "data.prompt_episodes=1",
        "data.max_episode_steps=200",
        "data.workers=2",
    ]
    return load_config("metaworld", base + list(overrides))
