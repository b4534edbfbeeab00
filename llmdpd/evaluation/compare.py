"""Compare finished runs: a markdown table of a metric per method and split (mean ± std over seeds), a bar
chart, and paired bootstrap intervals of each method's difference to a baseline.

The metric (`choose_metric`) is one per comparison: `success` when any run reports success (Meta-World), else
`normalized_return` when any run has it (Minari datasets with D4RL reference scores, 0-100 scale), else the
environment's `return`. Success is shown in percent and its differences in points; returns as plain numbers
in their own units. A split's value is eval.json's `<metric>_mean` of that split where present, else the mean
over the split's tasks that have the metric. A run whose tasks lack the chosen metric shows '-'.

A run is a directory holding `config.yaml` and `eval.json` (or another evaluation file, e.g.
`eval_last_validation.json` from `llmdpd eval ... eval.split=validation`); directories given on the command
line are searched for runs below them, so `runs/*` or `runs/llmdpd` both work. Runs are grouped into methods
by the config's `name` (the experiment name; `group_by="parent"` groups by the run directory's parent folder
instead, for ablations launched from one experiment with overrides; `group_by="benchmark"` by the two folders
above the seed, `<benchmark>/<method>`, for one method's runs scored on two evaluation benchmarks). eval.json is the source of truth for
every number; the TensorBoard event files only add how many training steps each run logged. The std is the
sample standard deviation over seeds (ddof 1), left out with a single seed.

The tables show the splits that have values of the metric: seen and unseen for test evaluations, validation
for validation evaluations.

Paired bootstrap (`paired_differences`): for a method against the baseline, runs are paired by seed (seeds
both have), and both must have run the same episode plan (episodes per task, tasks and, where recorded, goal
variations), and every task of both must have the metric, or the pair is refused. Per split, the statistic is
the difference (method minus baseline) of the metric's mean over tasks and seeds; each resample draws seeds
with replacement and, within each drawn seed, tasks with replacement, the same draws for both methods; the
interval is the percentile interval, from a generator with a fixed seed so the output is reproducible.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import yaml

from llmdpd.config.load import ConfigError
from llmdpd.evaluation.results import SPLITS, read_eval_json, split_summaries
from llmdpd.runs import version_number

DEFAULT_BOOTSTRAP = 10_000
BOOTSTRAP_SEED = 0

# Task keys of eval.json that a comparison can be made on, in the order `choose_metric` prefers them.
METRICS = ("success", "normalized_return", "return")
# How a metric is named in table headers and the bar chart, how its differences are named, and the factor
# that scales it for display (success is stored as a fraction and shown in percent).
LABELS = {"success": "success (%)", "normalized_return": "normalised return", "return": "return"}
DIFFERENCE_UNITS = {"success": "points", "normalized_return": "normalised return", "return": "return"}
SCALES = {"success": 100.0, "normalized_return": 1.0, "return": 1.0}


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

    def split_values(self, split: str, metric: str = "success") -> list[float]:
        """The runs' values of `metric` on `split`, leaving out runs without one."""
        values = [split_value(run.summary, split, metric) for run in self.runs]
        return [v for v in values if v is not None]

    def task_values(self, task: str, metric: str = "success") -> list[float]:
        """The runs' values of `metric` on `task`, leaving out runs without the task or the metric."""
        entries = [run.summary["tasks"].get(task) or {} for run in self.runs]
        return [entry[metric] for entry in entries if entry.get(metric) is not None]


def split_value(summary: dict[str, Any], split: str, metric: str) -> float | None:
    """`metric` on `split` of one eval.json: its `<metric>_mean`, else the mean over the split's tasks that have
    the metric (eval.json has no `normalized_return_mean`); None when no task has it."""
    block = summary.get(split) or {}
    if block.get(f"{metric}_mean") is not None:
        return block[f"{metric}_mean"]
    values = [entry[metric] for entry in summary.get("tasks", {}).values()
              if entry["split"] == split and entry.get(metric) is not None]
    return float(np.mean(values)) if values else None


def has_metric(run: Run, metric: str) -> bool:
    """Whether any task of the run has a value of `metric` (success is null where the environment reports
    none)."""
    return any(entry.get(metric) is not None for entry in run.summary.get("tasks", {}).values())


def choose_metric(methods: Sequence[Method], requested: str = "auto") -> str:
    """The metric to compare on: `requested`, or with "auto" the first of METRICS that any run has.

    Raises ConfigError when no run has the requested metric.
    """
    runs = [run for method in methods for run in method.runs]
    available = [metric for metric in METRICS if any(has_metric(run, metric) for run in runs)]
    if requested == "auto":
        return available[0] if available else "success"  # runs without tasks: today's success table
    if requested not in METRICS:
        raise ConfigError(f"unknown metric '{requested}': choose auto or one of {', '.join(METRICS)}")
    if requested not in available:
        raise ConfigError(f"no run has a {requested} value (the runs have: {', '.join(available) or 'no metric'})")
    return requested


def find_runs(paths: Iterable[str | Path], group_by: str = "name", eval_file: str = "eval.json") -> list[Run]:
    """Every run directory at or below `paths` that holds config.yaml and `eval_file`, in path order.

    A run directory given by name is taken as it is. Found below a folder, the versions of one experiment
    and seed (`<name>/seed<s>/version_<n>`) count once: the newest that holds `eval_file`.
    """
    given: set[Path] = set()
    found: dict[Path, list[Path]] = {}  # versions' parent (or the run itself) -> run directories
    for path in map(Path, paths):
        if (path / "config.yaml").is_file():
            given.add(path)
        elif path.is_dir():
            for config in path.rglob("config.yaml"):
                run_dir = config.parent
                key = run_dir.parent if version_number(run_dir) is not None else run_dir
                found.setdefault(key, []).append(run_dir)
    run_dirs = set(given)
    for candidates in found.values():
        finished = [d for d in candidates if (d / eval_file).is_file()]
        newest = max(finished or candidates, key=lambda d: version_number(d) or -1)
        run_dirs.add(newest)
    runs = []
    for run_dir in sorted(run_dirs):
        if not (run_dir / eval_file).is_file():
            print(f"compare: skipping {run_dir} (no {eval_file} yet)", file=sys.stderr)
            continue
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        # The folder naming the run: a version's parent (`seed<s>`), or an unversioned run directory itself.
        named = run_dir.parent if version_number(run_dir) is not None else run_dir
        if group_by == "parent":
            method = named.parent.name
        elif group_by == "benchmark":  # results/<benchmark>/<method>/seed<k>: one method scored two ways differs
            method = f"{named.parent.parent.name}/{named.parent.name}"
        else:
            method = str(config.get("name", named.parent.name))
        runs.append(Run(run_dir, method, config.get("seed"), read_eval_json(run_dir / eval_file), last_step(run_dir)))
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


def pool_runs(runs: Sequence[Run]) -> list[Run]:
    """Runs of one method and seed that scored disjoint tasks (the folds of a benchmark, each trained without its
    own held-out tasks) merged into one run whose tasks are all of theirs; split means are recomputed over the
    pooled tasks, each task weighing the same. Other runs are returned as they are, in their order.

    Raises ValueError when runs to pool share a task or ran different episodes per task or evaluation splits.
    """
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.method, str(run.seed)), []).append(run)
    pooled = []
    for (method, seed), members in groups.items():
        if len(members) == 1:
            pooled.append(members[0])
            continue
        tasks: dict[str, dict[str, Any]] = {}
        for run in members:
            shared = sorted(set(tasks) & set(run.summary["tasks"]))
            if shared:
                raise ValueError(f"cannot pool {run.path} into method '{method}' seed {seed}: another of its runs "
                                 f"also scored {', '.join(shared)}")
            tasks.update(run.summary["tasks"])
        first = members[0]
        for run in members[1:]:
            for key in ("episodes_per_task", "eval_split"):
                if run.summary.get(key) != first.summary.get(key):
                    raise ValueError(f"cannot pool {run.path} with {first.path}: {key} {run.summary.get(key)} vs "
                                     f"{first.summary.get(key)}")
        # Only what a comparison reads: per-run extras (a retrieval rule's choices) belong to one fold.
        summary = {"tasks": tasks, **split_summaries(tasks),
                   **{key: first.summary.get(key) for key in ("eval_split", "seed", "episodes_per_task")}}
        steps = [run.steps for run in members if run.steps is not None]
        pooled.append(Run(first.path, method, first.seed, summary, max(steps) if steps else None))
    for method in {run.method for run in pooled}:  # a fold still missing leaves seeds over other tasks
        counts = {str(run.seed): len(run.summary["tasks"]) for run in pooled if run.method == method}
        if len(set(counts.values())) > 1:
            print(f"compare: --pool: method '{method}' covers different tasks by seed ("
                  + ", ".join(f"seed {seed}: {n} tasks" for seed, n in sorted(counts.items())) + ")", file=sys.stderr)
    return pooled


def group_methods(runs: Sequence[Run]) -> list[Method]:
    """Runs grouped by method, methods in order of first appearance, runs in seed order.

    Raises ValueError when two runs of one method have the same seed: counted twice, they would pass for two
    seeds (distinct `name`s in their config.yaml, or `--group-by parent`, tell them apart)."""
    methods: dict[str, Method] = {}
    for run in runs:
        method = methods.setdefault(run.method, Method(run.method))
        twin = next((other for other in method.runs if other.seed == run.seed), None)
        if twin is not None:
            raise ValueError(f"{twin.path} and {run.path} are both method '{run.method}' seed {run.seed} "
                             "(give their config.yaml distinct names, or use --group-by parent)")
        method.runs.append(run)
    for method in methods.values():
        method.runs.sort(key=lambda run: str(run.seed))
    return list(methods.values())


def shown_splits(methods: Sequence[Method], metric: str = "success") -> list[str]:
    """The splits any run has a `metric` value for, in SPLITS order; seen and unseen when none has any."""
    splits = [split for split in SPLITS if any(method.split_values(split, metric) for method in methods)]
    return splits or ["seen", "unseen"]


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample std (None for fewer than two values); (nan, None) for no values."""
    if not values:
        return math.nan, None
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else None)


def format_values(values: Sequence[float], metric: str = "success") -> str:
    """Mean ± std of `metric` values with one decimal, success in percent: '82.5 ± 3.5', '82.5' for one seed,
    '-' for none."""
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "-"
    scale = SCALES[metric]
    return f"{scale * mean:.1f}" + (f" ± {scale * std:.1f}" if std is not None else "")


def _episodes_per_task(method: Method) -> str:
    counts = sorted({run.summary.get("episodes_per_task") for run in method.runs}, key=str)
    return ",".join("-" if count is None else str(count) for count in counts)


def task_splits(methods: Sequence[Method]) -> dict[str, str]:
    """Every task any run scored -> its split, in SPLITS order and by name within a split."""
    tasks: dict[str, str] = {}
    for method in methods:
        for run in method.runs:
            for task, entry in run.summary["tasks"].items():
                tasks.setdefault(task, entry["split"])
    return {task: split for split in SPLITS for task in sorted(t for t, s in tasks.items() if s == split)}


def markdown_table(methods: Sequence[Method], per_task: bool = False, metric: str = "success") -> str:
    """`metric` per method and split (and per task with `per_task`), as a markdown table.

    Columns: seeds, the metric per shown split as mean ± std over seeds, episodes per split of one seed,
    episodes per task, and the training steps logged.
    """
    splits = shown_splits(methods, metric)
    lines = [
        "| method | seeds | " + " | ".join(f"{split} {LABELS[metric]}" for split in splits)
        + f" | episodes ({'/'.join(splits)} per seed) | episodes per task | steps |",
        "| --- | --- |" + " --- |" * len(splits) + " --- | --- | --- |",
    ]
    for method in methods:
        first = method.runs[0].summary
        steps = [run.steps for run in method.runs if run.steps is not None]
        rates = " | ".join(format_values(method.split_values(split, metric), metric) for split in splits)
        episodes = "/".join(str((first.get(split) or {}).get("episodes", 0)) for split in splits)
        lines.append(
            f"| {method.name} | {len(method.runs)} | {rates} | {episodes} | {_episodes_per_task(method)} "
            f"| {int(np.mean(steps)) if steps else '-'} |"
        )
    if per_task:
        names = [method.name for method in methods]
        lines += ["", "| task | split | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
        for task, split in task_splits(methods).items():
            cells = " | ".join(format_values(method.task_values(task, metric), metric) for method in methods)
            lines.append(f"| {task} | {split} | {cells} |")
    return "\n".join(lines)


def per_seed_table(methods: Sequence[Method], metric: str = "success") -> str:
    """`metric` per seed and task for every method, as a markdown table. Where a run's prompt was chosen by a
    retrieval rule (eval.json's `prompt_retrieval`), the chosen training task follows the value in parentheses,
    "own" where the rule kept the task's own prompt; '-' where a method has no run of that seed or task."""
    names = [method.name for method in methods]
    tasks = task_splits(methods)
    by_seed = [{str(run.seed): run for run in method.runs} for method in methods]  # one run per seed (group_methods)
    seeds = sorted({seed for runs in by_seed for seed in runs})
    lines = ["| seed | task | split | " + " | ".join(names) + " |", "| --- | --- | --- |" + " --- |" * len(names)]
    for seed in seeds:
        for task, split in tasks.items():
            cells = " | ".join(_seed_cell(runs.get(seed), task, metric) for runs in by_seed)
            lines.append(f"| {seed} | {task} | {split} | {cells} |")
    return "\n".join(lines)


def _seed_cell(run: Run | None, task: str, metric: str) -> str:
    """One run's `metric` on `task`, with the training task a retrieval rule chose for it; '-' without a value."""
    value = (run.summary["tasks"].get(task) or {}).get(metric) if run is not None else None
    if value is None:
        return "-"
    chosen = ((run.summary.get("prompt_retrieval") or {}).get(task) or {}).get("chosen")
    cell = format_values([value], metric)
    return cell if chosen is None else cell + (" (own)" if chosen == task else f" ({chosen})")


def paired_bootstrap_difference(
    a: Any, b: Any, n: int = DEFAULT_BOOTSTRAP, rng: np.random.Generator | None = None, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Mean difference a - b and its paired, stratified bootstrap percentile interval.

    `a` and `b` are [seeds, tasks] values of one metric (success rates, returns) of two methods, row s of both
    from the same seed and column t from the same task. Each of `n` resamples draws seeds with replacement
    and, within each drawn seed, tasks with replacement (the same draws for a and b), and takes the difference
    of the mean over the drawn (seed, task) cells. Returns (difference over all cells, low, high).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected two [seeds, tasks] arrays of one shape, got {a.shape} and {b.shape}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    rng = rng if rng is not None else np.random.default_rng(BOOTSTRAP_SEED)
    diff = a - b
    seeds, tasks = diff.shape
    stats = np.empty(n)
    chunk = max(1, 4_000_000 // diff.size)  # resamples per batch: bounded memory for the index arrays
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        seed_idx = rng.integers(seeds, size=(m, seeds))
        task_idx = rng.integers(tasks, size=(m, seeds, tasks))
        stats[start:start + m] = diff[seed_idx[:, :, None], task_idx].mean(axis=(1, 2))
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(diff.mean()), float(low), float(high)


def episodes_mismatch(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Why two eval.json summaries cannot share an episode plan on any task (episodes per task), or None."""
    if a.get("episodes_per_task") != b.get("episodes_per_task"):
        return f"episodes per task {a.get('episodes_per_task')} vs {b.get('episodes_per_task')}"
    return None


def plan_mismatch(a: dict[str, Any], b: dict[str, Any], split: str | None = None) -> str | None:
    """Why two eval.json summaries were not made with the same episode plan (on `split`'s tasks only, when
    given: an evaluation of the unseen tasks alone pairs with a whole one there), or None if they were."""
    if (counts := episodes_mismatch(a, b)) is not None:
        return counts
    tasks_a = {task: entry["split"] for task, entry in a["tasks"].items() if split in (None, entry["split"])}
    tasks_b = {task: entry["split"] for task, entry in b["tasks"].items() if split in (None, entry["split"])}
    if tasks_a != tasks_b:
        only_a, only_b = sorted(set(tasks_a) - set(tasks_b)), sorted(set(tasks_b) - set(tasks_a))
        moved = sorted(t for t in set(tasks_a) & set(tasks_b) if tasks_a[t] != tasks_b[t])
        parts = [f"only in the first: {', '.join(only_a)}" if only_a else "",
                 f"only in the second: {', '.join(only_b)}" if only_b else "",
                 f"in another split: {', '.join(moved)}" if moved else ""]
        return "different tasks (" + "; ".join(p for p in parts if p) + ")"
    for task in tasks_a:
        entry_a, entry_b = a["tasks"][task], b["tasks"][task]
        if entry_a.get("episodes") != entry_b.get("episodes"):
            return f"{task}: {entry_a.get('episodes')} vs {entry_b.get('episodes')} episodes"
        if "goals" in entry_a and "goals" in entry_b and entry_a["goals"] != entry_b["goals"]:
            return f"{task}: different goal variations (another eval seed or goal layout)"
    return None


@dataclass
class PairedDifference:
    """One row of the bootstrap table: `method` minus the baseline on `split`, in the metric's stored units
    (success as a fraction), with the difference of each paired seed's mean over the tasks (`by_seed`, in seed
    order): how far the seeds alone move it."""

    method: str
    split: str
    seeds: int
    tasks: int
    difference: float
    low: float
    high: float
    by_seed: tuple[float, ...] = ()


def paired_differences(
    methods: Sequence[Method],
    baseline: str,
    splits: Sequence[str] | None = None,
    n: int = DEFAULT_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
    metric: str = "success",
) -> tuple[list[PairedDifference], list[str]]:
    """Each other method against `baseline` on `metric`, per split: (rows, notes). Notes say which seeds were
    left out and which pairs were refused (several runs with one seed, no seed in common, different episode
    plans, tasks without the metric).
    Every (method, split) draws from its own generator seeded by `seed`, so rows do not depend on which other
    methods are compared."""
    by_name = {method.name: method for method in methods}
    if baseline not in by_name:
        raise ValueError(f"baseline '{baseline}' is not among the methods: {', '.join(by_name)}")
    splits = list(splits) if splits is not None else shown_splits(methods, metric)
    base = by_name[baseline]
    rows: list[PairedDifference] = []
    notes: list[str] = []
    base_runs = _runs_by_seed(base, notes)
    for method in methods:
        if method.name == baseline or base_runs is None:
            continue
        runs = _runs_by_seed(method, notes)
        if runs is None:
            continue
        common = sorted(set(runs) & set(base_runs), key=str)
        left_out = sorted(set(runs) ^ set(base_runs), key=str)
        if not common:
            notes.append(f"{method.name} vs {baseline}: refused, no seed in common")
            continue
        if left_out:
            notes.append(
                f"{method.name} vs {baseline}: {len(common)} paired seeds; seeds {', '.join(map(str, left_out))} "
                "left out (not in both)"
            )
        reference = base_runs[common[0]].summary
        pairs = [(s, run) for s in common for run in (base_runs[s], runs[s])]
        counts = next((f"{run.method} seed {s}: {why}" for s, run in pairs
                       if (why := episodes_mismatch(reference, run.summary)) is not None), None)
        if counts is not None:
            notes.append(f"{method.name} vs {baseline}: refused, the evaluations ran different episode plans ({counts})")
            continue
        # Pairs are made split by split: an evaluation of the unseen tasks alone pairs with a whole one there.
        paired: dict[str, list[str]] = {}
        for split in splits:
            tasks = sorted(task for task, entry in reference["tasks"].items() if entry["split"] == split)
            if not tasks:  # nothing of the baseline's to pair with on this split
                continue
            if not any(entry["split"] == split for entry in runs[common[0]].summary["tasks"].values()):
                notes.append(f"{method.name} vs {baseline}: not paired on {split} ({method.name} has no {split} tasks)")
                continue
            reason = next((f"{run.method} seed {s}: {why}" for s, run in pairs
                           if (why := plan_mismatch(reference, run.summary, split)) is not None), None)
            if reason is not None:
                notes.append(f"{method.name} vs {baseline}: refused on {split}, the evaluations ran different "
                             f"episode plans ({reason})")
            else:
                paired[split] = tasks
        # A cell without the metric would have to be dropped from one side only, which breaks the pairing.
        lacking = next(((run, s, task) for s, run in pairs for tasks in paired.values() for task in tasks
                        if run.summary["tasks"][task].get(metric) is None), None)
        if lacking is not None:
            run, s, task = lacking
            notes.append(f"{method.name} vs {baseline}: refused, {run.method} seed {s} has no {metric} for {task}")
            continue
        for split, tasks in paired.items():
            a = [[runs[s].summary["tasks"][t][metric] for t in tasks] for s in common]
            b = [[base_runs[s].summary["tasks"][t][metric] for t in tasks] for s in common]
            diff, low, high = paired_bootstrap_difference(a, b, n, np.random.default_rng(seed), confidence)
            by_seed = tuple(float(d) for d in (np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean(axis=1))
            rows.append(PairedDifference(method.name, split, len(common), len(tasks), diff, low, high, by_seed))
    return rows, notes


def _runs_by_seed(method: Method, notes: list[str]) -> dict[Any, Run] | None:
    runs: dict[Any, Run] = {}
    for run in method.runs:
        if run.seed in runs:
            notes.append(f"{method.name}: several runs with seed {run.seed} ({runs[run.seed].path}, {run.path}); "
                         "not paired")
            return None
        runs[run.seed] = run
    return runs


def _signed(value: float, metric: str) -> str:
    return f"{SCALES[metric] * value:+.1f}"


def bootstrap_table(
    methods: Sequence[Method],
    baseline: str,
    n: int = DEFAULT_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
    metric: str = "success",
) -> str:
    """Markdown: a caption, the table of paired differences to `baseline` on `metric`, and the notes below it."""
    rows, notes = paired_differences(methods, baseline, n=n, seed=seed, confidence=confidence, metric=metric)
    level = f"{100 * confidence:g} %"
    units = "success points" if metric == "success" else DIFFERENCE_UNITS[metric]
    lines = [
        f"Paired bootstrap against {baseline}: method minus {baseline} in {units}, {level} percentile "
        f"interval over {n} resamples of seeds and, within each, tasks (the same draws for both; rng seed {seed}); "
        "by seed: each paired seed's difference over the tasks, in seed order.",
        "",
        f"| method | split | paired seeds | tasks | difference ({DIFFERENCE_UNITS[metric]}) | {level} interval "
        "| by seed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.method} | {row.split} | {row.seeds} | {row.tasks} | {_signed(row.difference, metric)} "
            f"| [{_signed(row.low, metric)}, {_signed(row.high, metric)}] "
            f"| {' / '.join(_signed(value, metric) for value in row.by_seed)} |"
        )
    if notes:
        lines += [""] + notes
    return "\n".join(lines)


def bar_chart(methods: Sequence[Method], path: str | Path, metric: str = "success") -> None:
    """A PNG of `metric` per method and shown split, with error bars of one std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = shown_splits(methods, metric)
    scale = SCALES[metric]
    x = np.arange(len(methods))
    width = 0.76 / len(splits)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(methods) + 1.5), 3.6))
    for k, split in enumerate(splits):
        offset = (k - (len(splits) - 1) / 2) * width
        stats = [mean_std(method.split_values(split, metric)) for method in methods]
        means = [scale * m if not math.isnan(m) else 0.0 for m, _ in stats]
        errors = [scale * s if s is not None else 0.0 for _, s in stats]
        ax.bar(x + offset, means, width, yerr=errors, capsize=3, label=split)
    ax.set_xticks(x, [method.name for method in methods], rotation=20, ha="right")
    ax.set_ylabel(LABELS[metric])
    ax.set_title("mean ± std over seeds", fontsize=9)
    if metric == "success":  # a rate is bounded; returns (normalised ones too) may go below 0 or above 100
        ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
