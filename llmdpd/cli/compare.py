"""`llmdpd compare RUN_DIR ... [--per-task] [--per-seed] [--out results.png] [--baseline METHOD [--bootstrap N]] [--metric M]
[--pool]`:
tabulate and plot finished runs on one metric (success, or normalised return or return for environments that
report no success), and bound each method's difference to a baseline by a paired bootstrap."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `compare` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "compare",
        help="compare runs: success (or return) per method, mean ± std over seeds",
        description="Print a markdown table of a metric per method and split (runs grouped by config name, "
        "mean ± std over seeds) from each run's eval.json: success, or where no run reports success, the "
        "normalised return or else the return (--metric chooses); seen/unseen for test evaluations, validation "
        "for validation evaluations. With --baseline, a second table: each other method minus the baseline per "
        "split, with a paired bootstrap interval (runs paired by seed; seeds and, within, tasks resampled). "
        "Optionally plot the first table.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    parser.add_argument("--per-task", action="store_true", help="also a table of the metric per task")
    parser.add_argument("--per-seed", action="store_true",
                        help="also a table of the metric per seed and task, with the training task whose prompt "
                        "a retrieval rule chose")
    parser.add_argument("--out", default=None, metavar="PNG", help="write a bar chart of the metric per method")
    # The names of llmdpd.evaluation.compare.METRICS, spelled out so that registering imports nothing heavy.
    parser.add_argument(
        "--metric", choices=("auto", "success", "normalized_return", "return"), default="auto",
        help="what to compare: auto (default) takes success when any run reports it, else normalized_return "
        "(D4RL-style, 0-100) when runs have it, else return",
    )
    parser.add_argument(
        "--group-by", choices=("name", "parent", "benchmark"), default="name",
        help="method = the config's name (default), the run directory's parent folder, or its two folders "
        "<benchmark>/<method> (results/<benchmark>/<method>/seed<k>)",
    )
    parser.add_argument(
        "--eval-file", default="eval.json", metavar="NAME",
        help="the evaluation file of each run (default eval.json; e.g. eval_last_validation.json from "
        "`llmdpd eval EXP ckpt=last eval.split=validation`)",
    )
    parser.add_argument(
        "--pool", action="store_true",
        help="merge the runs of one method and seed that scored disjoint tasks (e.g. the folds of a benchmark, "
        "with --group-by parent) into one run over all of their tasks",
    )
    parser.add_argument("--baseline", default=None, metavar="METHOD",
                        help="add paired differences of every other method to this one")
    parser.add_argument("--bootstrap", type=int, default=None, metavar="N",
                        help="bootstrap resamples for --baseline (default 10000)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from llmdpd.evaluation.compare import (
        DEFAULT_BOOTSTRAP,
        bar_chart,
        bootstrap_table,
        choose_metric,
        find_runs,
        group_methods,
        markdown_table,
        per_seed_table,
        pool_runs,
    )

    if args.bootstrap is not None and (args.baseline is None or args.bootstrap < 1):
        print("compare: --bootstrap N needs --baseline METHOD and N >= 1", file=sys.stderr)
        return 2
    runs = find_runs(args.runs, group_by=args.group_by, eval_file=args.eval_file)
    if not runs:
        print(f"compare: no finished runs (config.yaml + {args.eval_file}) under {' '.join(args.runs)}",
              file=sys.stderr)
        return 1
    try:
        methods = group_methods(pool_runs(runs) if args.pool else runs)
    except ValueError as err:
        print(f"compare: {err}", file=sys.stderr)
        return 2
    if args.baseline is not None and args.baseline not in {method.name for method in methods}:
        print(f"compare: baseline '{args.baseline}' is not among the methods: "
              f"{', '.join(method.name for method in methods)}", file=sys.stderr)
        return 2
    metric = choose_metric(methods, args.metric)  # a ConfigError (exit 2, one line) when no run has it
    print(markdown_table(methods, per_task=args.per_task, metric=metric))
    if args.per_seed:
        print()
        print(per_seed_table(methods, metric=metric))
    if args.baseline is not None:
        n = args.bootstrap if args.bootstrap is not None else DEFAULT_BOOTSTRAP
        print()
        print(bootstrap_table(methods, args.baseline, n=n, metric=metric))
    if args.out:
        bar_chart(methods, args.out, metric=metric)
        print(f"\nwrote {args.out}")
    return 0
