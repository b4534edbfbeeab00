"""DataModule: time for one task-grouped batch of 256 transitions plus 10 prompts (target < 1 ms on CPU)."""

from __future__ import annotations

import tempfile
import time

from benchmarks.common import ml10_config, report
from llmdpd.data.datamodule import MetaWorldDataModule
from llmdpd.data.generate import generate


def main() -> None:
    with tempfile.TemporaryDirectory() as root:
        # 10 ML10 tasks x 26 transitions = 260 per batch, one 20-step prompt per task, no text (LM-free).
        cfg = ml10_config(root, "data.batch_size_per_task=26", "data.prompt_length=20", "text.enabled=false")
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
