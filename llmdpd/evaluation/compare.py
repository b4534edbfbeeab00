"""Compare finished runs: a markdown table of seen/unseen success per method (mean ± std over seeds) and a
bar chart.

A run is a directory holding `config.yaml` and `eval.json`; directories given on the command line are
searched for runs below them, so `runs/*` or `runs/llmdpd` both work. Runs are grouped into methods by the
config's `name` (the experiment name; `group_by="parent"` groups by the run directory's parent folder
instead, for ablations launched from one experiment with overrides). eval.json is the source of truth for
every number; the TensorBoard event files only add how many training steps each run logged. The std is the
sample standard deviation over seeds (ddof 1), left out with a single seed.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

from llmdpd.evaluation.results import SPLITS, read_eval_json


@dataclass
class Run:
    """One finished run: its method, seed, eval.json and the last step in its TensorBoard events."""

    path: Path
    method: str
    seed: Any
    summary: dict[str, Any]
    steps: int | None = None


@dataclass
class Method:
    """The runs of one method (one per seed)."""

    name: str
    runs: list[Run] = field(default_factory=list)

    def split_values(self, split: str) -> list[float]:
        values = [run.summary[split]["success_mean"] for run in self.runs]
        return [v for v in values if v is not None]

    def task_values(self, task: str) -> list[float]:
        return [run.summary["tasks"][task]["success"] for run in self.runs if task in run.summary["tasks"]]


def find_runs(paths: Iterable[str | Path], group_by: str = "name") -> list[Run]:
    """Every run directory at or below `paths` that holds config.yaml and eval.json, in path order."""
    run_dirs: set[Path] = set()
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            run_dirs.add(path)
        elif path.is_dir():
            run_dirs.update(config.parent for config in path.rglob("config.yaml"))
    runs = []
    for run_dir in sorted(run_dirs):
        if not (run_dir / "eval.json").is_file():
            print(f"compare: skipping {run_dir} (no eval.json yet)", file=sys.stderr)
            continue
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        method = run_dir.parent.name if group_by == "parent" else str(config.get("name", run_dir.parent.name))
        runs.append(Run(run_dir, method, config.get("seed"), read_eval_json(run_dir / "eval.json"), last_step(run_dir)))
    return runs


def last_step(run_dir: Path) -> int | None:
    """The largest step of any scalar in the run's TensorBoard event files (None without events)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    steps = []
    for folder in sorted({events.parent for events in run_dir.rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()[SCALARS]:
            steps.extend(event.step for event in accumulator.Scalars(tag))
    return max(steps) if steps else None


def group_methods(runs: Sequence[Run]) -> list[Method]:
    """Runs grouped by method, methods in order of first appearance, runs in seed order."""
    methods: dict[str, Method] = {}
    for run in runs:
        methods.setdefault(run.method, Method(run.method)).runs.append(run)
    for method in methods.values():
        method.runs.sort(key=lambda run: str(run.seed))
    return list(methods.values())


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (None for fewer than two values); (nan, None) for no values."""
    if not values:
        return math.nan, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def format_rate(values: Sequence[float]) -> str:
    """A success rate in percent: '82.5 ± 3.5', '82.5' for one seed, '-' for none."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def markdown_table(methods: Sequence[Method], per_task: bool = False) -> str:
    """Seen/unseen success per method (and per task with `per_task`), as a markdown table."""
    lines = [
        "| method | seeds | seen success (%) | unseen success (%) | episodes (seen/unseen per seed) | steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in methods:
        first = method.runs[0].summary
        steps = [run.steps for run in method.runs if run.steps is not None]
        lines.append(
            f"| {method.name} | {len(method.runs)} | {format_rate(method.split_values('seen'))} "
            f"| {format_rate(method.split_values('unseen'))} "
            f"| {first['seen']['episodes']}/{first['unseen']['episodes']} "
            f"| {int(np.mean(steps)) if steps else '-'} |"
        )
    if per_task:
        names = [method.name for method in methods]
        tasks = {}
        for method in methods:
            for run in method.runs:
                for task, entry in run.summary["tasks"].items():
                    tasks.setdefault(task, entry["split"])
        lines += ["", "| task | split | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
        for split in SPLITS:
            for task in sorted(t for t, s in tasks.items() if s == split):
                cells = " | ".join(format_rate(method.task_values(task)) for method in methods)
                lines.append(f"| {task} | {split} | {cells} |")
    return "\n".join(lines)


def bar_chart(methods: Sequence[Method], path: str | Path) -> None:
    """A PNG of seen and unseen success per method, with error bars of one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(methods))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(methods) + 1.5), 3.6))
    for offset, split in ((-width / 2, "seen"), (width / 2, "unseen")):
        stats = [mean_std(method.split_values(split)) for method in methods]
        means = [100 * m if not math.isnan(m) else 0.0 for m, _ in stats]
        errors = [100 * s if s is not None else 0.0 for _, s in stats]
        ax.bar(x + offset, means, width, yerr=errors, capsize=3, label=split)
    ax.set_xticks(x, [method.name for method in methods], rotation=20, ha="right")
    ax.set_ylabel("success (%)")
    ax.set_title("mean ± std over seeds", fontsize=9)
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
