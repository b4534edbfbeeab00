"""`llmdpd data EXP [key=value ...] [--report]`: generate the datasets an experiment needs.

With `--report`, then print per task a markdown table of its data by behaviour (episodes, success rate,
mean return) next to the noiseless expert on the validation goal variations.
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from llmdpd.cli.main import add_experiment_arguments

    parser = sub.add_parser("data", help="generate the Minari datasets of an experiment", description=__doc__)
    add_experiment_arguments(parser)
    parser.add_argument(
        "--report",
        action="store_true",
        help="after generating, print per task the data's success rate and return by behaviour, and the expert's",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llmdpd.config.load import load_config
    from llmdpd.data.generate import generate

    cfg = load_config(args.exp, args.overrides)
    generate(cfg)
    if getattr(args, "report", False):
        from llmdpd.data.report import report

        print(report(cfg), flush=True)
    return 0
