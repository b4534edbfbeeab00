"""`llmdpd diagnose EXP ckpt=PATH [key=value ...]`: how far a checkpoint's actions lie from the scripted
expert's, per training task, on states the noisy expert visits on the validation goals.

Per task: the squared distance of one sample, of the deterministic chain (sampler temperature 0) and of the
mean of `--samples` samples to the expert's action, and the samples' spread around their mean (see
`llmdpd.evaluation.diagnostics.action_errors`). Written to diagnose_<ckpt name>.json beside the run's
eval.json. Meta-World tasks only (the scripted expert gives the reference actions).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ERRORS = ("sample", "temperature0", "sample_mean", "spread")


def register(sub) -> None:
    from llmdpd.cli.main import add_experiment_arguments

    parser = sub.add_parser("diagnose", help="action error per task against the scripted expert",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_arguments(parser)
    parser.add_argument("--samples", type=int, default=16, help="samples per state for the mean and spread")
    parser.add_argument("--out", type=Path, help="where to write the results (default: diagnose_<ckpt name>.json "
                        "beside the run's eval.json)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llmdpd.config.load import ConfigError, load_config
    from llmdpd.data.datamodule import MetaWorldDataModule
    from llmdpd.evaluation.diagnostics import action_errors, task_conditions, validation_state_sets
    from llmdpd.evaluation.plan import goal_layout
    from llmdpd.evaluation.runner import load_policy
    from llmdpd.prompts.text_embeddings import make_text_embedder
    from llmdpd.runs import checkpoint_for_evaluation, results_directory

    cfg = load_config(args.exp, args.overrides)
    if args.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {args.samples}")
    goals = goal_layout(cfg.data).validation
    if not len(goals):
        raise ConfigError("llmdpd diagnose uses the validation goals, but data.validation_goals is 0")
    ckpt = checkpoint_for_evaluation(cfg)
    module = load_policy(cfg, ckpt).eval()
    dm = MetaWorldDataModule(cfg, make_text_embedder(cfg))
    dm.setup_for_evaluation(module.normalizer)
    states = validation_state_sets(dm.train_tasks, goals, seed=cfg.data.seed)
    if not states:
        raise ConfigError("llmdpd diagnose needs Meta-World training tasks (their scripted experts give the reference)")
    errors = action_errors(module, states, task_conditions(module, dm, list(states)), samples=args.samples,
                           seed=cfg.seed)
    summary = {"checkpoint": str(Path(ckpt).resolve()), "validation_goals": list(goals), "samples": args.samples,
               "tasks": errors, "mean": {k: sum(e[k] for e in errors.values()) / len(errors) for k in ERRORS}}
    out = args.out or results_directory(ckpt) / f"diagnose_{Path(ckpt).stem}.json"
    from llmdpd.evaluation.results import write_eval_json

    write_eval_json(out, summary)
    print(format_errors(summary))
    print(f"written: {out}")
    return 0


def format_errors(summary: dict) -> str:
    """A markdown table: per task, the four squared distances, then their mean."""
    lines = ["| task | " + " | ".join(ERRORS) + " |", "|---" * (len(ERRORS) + 1) + "|"]
    rows = list(summary["tasks"].items()) + [("**mean**", summary["mean"])]
    for task, entry in rows:
        lines.append(f"| {task} | " + " | ".join(f"{entry[k]:.3f}" for k in ERRORS) + " |")
    return "\n".join(lines)
