"""DataModule: time for one task-grouped batch of 256 transitions plus 10 prompts (target < 1 ms on CPU)."""

from __future__ import annotations

import tempfile
import time

from benchmarks.common import report
from llmdpd.config.load import load_config
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.data.generate import generate


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        tasks = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3",
                 "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "sweep-v3", "basketball-v3"]
        cfg = load_config(
            "smoke",
            [
                f"paths.data_dir={root}",
                f"data.train_tasks=[{','.join(tasks)}]",
                "data.unseen_tasks=[]",
                "data.episodes_per_task=2",
                "data.prompt_episodes=1",
                "data.max_episode_steps=200",
                "data.workers=2",
                "data.batch_size_per_task=26",  # 10 tasks x 26 = 260 transitions
                "data.prompt_length=20",
            ],
        )
        generate(cfg, progress=False)
        dm = MetaWorldDataModule(cfg)
        dm.setup()
        for i in range(50):
            dm.sample_batch(i)
        n = 2000
        start = time.perf_counter()
        for i in range(n):
            dm.sample_batch(i)
        per_batch = (time.perf_counter() - start) / n
    report("DataModule batch: 10 tasks x 26 transitions + 10 prompts", per_batch * 1e3, "ms", "(target < 1 ms)")
    report("DataModule batches/s", 1 / per_batch, "batches/s")
