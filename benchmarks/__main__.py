"""Run every benchmark (or those named: `python -m benchmarks data datamodule training evaluation`)."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks import bench_data, bench_datamodule  # noqa: E402
from llmdpd.cli.main import quiet_known_noise  # noqa: E402

quiet_known_noise()

SUITES = {"data": bench_data.main, "datamodule": bench_datamodule.main}
for optional in ("bench_training", "bench_evaluation"):
    try:
        module = __import__(f"benchmarks.{optional}", fromlist=["main"])
        SUITES[optional.removeprefix("bench_")] = module.main
    except ModuleNotFoundError:
        pass

if __name__ == "__main__":
    names = sys.argv[1:] or list(SUITES)
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        sys.exit(f"benchmarks: unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    for name in names:
        print(f"\n== {name} ==", flush=True)
        SUITES[name]()
