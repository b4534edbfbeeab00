"""`llmdpd data EXP [key=value ...]`: generate the datasets an experiment needs."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from llmdpd.cli.main import add_experiment_arguments

    parser = sub.add_parser("data", help="generate the Minari datasets of an experiment", description=__doc__)
    add_experiment_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llmdpd.config.load import load_config
    from llmdpd.data.generate import generate

    cfg = load_config(args.exp, args.overrides)
    generate(cfg)
    return 0
