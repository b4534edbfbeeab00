"""`llmdpd` command line: `data`, `train`, `eval`, `diagnose`, `compare`, `comparison`, `tables`, `launch` (also `python -m llmdpd`)."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

# Subcommand name -> module in llmdpd.cli exposing register(subparsers) and run(args) -> int.
COMMANDS = {
    "data": "llmdpd.cli.data",
    "train": "llmdpd.cli.train",
    "eval": "llmdpd.cli.evaluate",
    "diagnose": "llmdpd.cli.diagnose",
    "compare": "llmdpd.cli.compare",
    "comparison": "llmdpd.cli.comparison",
    "tables": "llmdpd.cli.tables",
    "launch": "llmdpd.cli.launch",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmdpd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        try:
            importlib.import_module(module).register(sub)
        except ModuleNotFoundError as err:  # a subcommand not present in this build
            if err.name != module:
                raise
    return parser


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """EXP plus OmegaConf dot-list overrides, shared by data/train/eval."""
    parser.add_argument("exp", help="experiment name in experiments/ or a path to a YAML file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.max_steps=1000")


def quiet_known_noise() -> None:
    """Drop library messages that say nothing about this run (advertising, deprecations inside libraries)."""
    import logging
    import warnings

    for message in (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning
        r"Using ModelCheckpoint with manual optimization",  # we save after the step on purpose
        r"Checkpoint directory .* exists and is not empty",  # the alignment stage writes there first
    ):
        warnings.filterwarnings("ignore", message=message)

    class _NoAdverts(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "litlogger" not in record.getMessage()

    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NoAdverts())


def main(argv: Sequence[str] | None = None) -> int:
    quiet_known_noise()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    # Options may follow the key=value overrides; argparse leaves those overrides unparsed then.
    args, rest = parser.parse_known_args(argv)
    stray = [item for item in rest if item.startswith("-") or "=" not in item]
    if stray or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or rest)}")
    if rest:
        args.overrides = list(args.overrides) + rest
    from llmdpd.errors import no_space
    from llmdpd.errors import TrainingError, user_errors

    try:
        code = args.run(args)
    except BrokenPipeError:
        # The reader went away (`llmdpd compare ... | head`): stop quietly, as Unix tools do, and keep Python's
        # exit-time flush of stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except KeyboardInterrupt:
        # Ctrl-C: every file already written is whole (datasets, checkpoints and results land atomically), so the
        # same command continues from them.
        print(f"llmdpd {args.command}: interrupted; what was written is kept, run the same command again to "
              "continue", file=sys.stderr)
        code = 130
    except user_errors() as err:
        print(f"llmdpd {args.command}: error: {one_line(err)}", file=sys.stderr)
        code = 2
    except TrainingError as err:
        print(f"llmdpd {args.command}: error: {one_line(err)}", file=sys.stderr)
        code = 1
    except OSError as err:
        if not no_space(err):
            raise
        where = f" writing {err.filename}" if getattr(err, "filename", None) else ""
        print(f"llmdpd {args.command}: error: no space left on device{where}", file=sys.stderr)
        code = 2
    sys.exit(code)


def one_line(err: BaseException) -> str:
    """An error's message on one line."""
    return " ".join(str(err).split())
