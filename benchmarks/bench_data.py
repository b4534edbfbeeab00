"""Data collection: `llmdpd data` env steps/s against a bare scripted-expert rollout loop (target >= 0.8)."""

from __future__ import annotations

import tempfile

import numpy as np

from benchmarks.common import best_of, report
from llmdpd.config.load import load_config
from llmdpd.data.generate import generate
from llmdpd.envs.metaworld import MetaWorldTaskEnv, scripted_expert

TASKS = ["reach-v3", "push-v3", "pick-place-v3"]
EPISODES, STEPS = 3, 500


def bare_loop() -> None:
    """What any script would do: reset, expert, noise, step; nothing stored."""
    rng = np.random.default_rng(0)
    for task in TASKS:
        env = MetaWorldTaskEnv(task)
        expert = scripted_expert(task)
        for ep in range(EPISODES):
            obs = env.reset(ep)
            for _ in range(STEPS):
                obs, *_ = env.step(np.clip(expert(obs) + rng.normal(0, 0.3, 4), -1, 1))


def framework() -> None:
    with tempfile.TemporaryDirectory() as root:
        cfg = load_config(
            "smoke",
            [
                f"paths.data_dir={root}",
                f"data.train_tasks=[{','.join(TASKS)}]",
                "data.unseen_tasks=[]",
                f"data.episodes_per_task={EPISODES}",
                "data.prompt_episodes=0",
                f"data.max_episode_steps={STEPS}",
                "data.workers=1",
            ],
        )
        generate(cfg, progress=False)


def main() -> None:
    steps = len(TASKS) * EPISODES * STEPS
    bare = best_of(bare_loop, 2)
    ours = best_of(framework, 2)
    report("bare scripted-expert loop (1 process)", steps / bare, "steps/s")
    report("llmdpd data, Minari files written (1 process)", steps / ours, "steps/s")
    report("ratio llmdpd / bare", bare / ours, "x", "(target >= 0.8)")
