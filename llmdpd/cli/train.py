"""`llmdpd train EXP [key=value ...]`: both stages and the evaluation, into a run directory."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    from llmdpd.cli.main import add_experiment_arguments

    parser = sub.add_parser("train", help="train (alignment + policy stage) and evaluate", description=__doc__)
    add_experiment_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llmdpd.config.load import load_config
    from llmdpd.training.pipeline import train

    train(load_config(args.exp, args.overrides))
    return 0
