"""`llmdpd compare RUN_DIR ... [--per-task] [--out results.png]`: tabulate and plot finished runs."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `compare` subcommand to an argparse subparsers object."""
    parser = subparsers.add_parser(
        "compare",
        help="compare runs: success per method, mean ± std over seeds",
        description="Print a markdown table of seen/unseen success per method (runs grouped by config name, "
        "mean ± std over seeds) from each run's eval.json; optionally plot it.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders holding them")
    parser.add_argument("--per-task", action="store_true", help="also a table of success per task")
    parser.add_argument("--out", default=None, metavar="PNG", help="write a bar chart of success per method")
    parser.add_argument(
        "--group-by", choices=("name", "parent"), default="name",
        help="method = the config's name (default) or the run directory's parent folder",
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from llmdpd.evaluation.compare import bar_chart, find_runs, group_methods, markdown_table

    runs = find_runs(args.runs, group_by=args.group_by)
    if not runs:
        print(f"compare: no finished runs (config.yaml + eval.json) under {' '.join(args.runs)}", file=sys.stderr)
        return 1
    methods = group_methods(runs)
    print(markdown_table(methods, per_task=args.per_task))
    if args.out:
        bar_chart(methods, args.out)
        print(f"\nwrote {args.out}")
    return 0
