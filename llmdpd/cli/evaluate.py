"""`llmdpd eval EXP ckpt=PATH [key=value ...]`: re-evaluate a checkpoint (`ckpt=last`: the newest readable
policy checkpoint of the experiment's newest run).

`eval.split=test` (the default): the training tasks on their seen-test goals and the unseen tasks, written
to eval_<ckpt name>.json. `eval.split=validation`: the training tasks on their validation goals only, for
every tuning choice, written to eval_<ckpt name>_validation.json (never over a test evaluation).

Other wordings of a task: `--descriptions FILE` (YAML: task -> list of texts) or
`eval.descriptions='{drawer-open-v3: ["Pull the drawer open."]}'`. Another demonstration as the
trajectory prompt: `eval.prompt_episode=2`. Another task's prompt for every episode: `eval.prompt_task=push-v3`;
for each unseen task, the training task whose behaviour best imitates its demonstration:
`eval.prompt_retrieval=demonstration`. Acting-time settings apply too: `policy.acting=softmax`,
`policy.acting_temperature=0.5`, `policy.num_candidates=32`, `policy.guidance_weight=2` (classifier-free
guidance), `policy.sample_temperature=1.5`, `policy.sample_steps=1`, `policy.action_noise=0.6`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub) -> None:
    from llmdpd.cli.main import add_experiment_arguments

    parser = sub.add_parser("eval", help="evaluate a checkpoint", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_arguments(parser)
    parser.add_argument("--descriptions", type=Path, help="YAML file: task -> list of descriptions")
    parser.add_argument("--out", type=Path, help="where to write the results (default: eval_<ckpt name>.json, "
                        "or eval_<ckpt name>_validation.json with eval.split=validation, beside the run's eval.json)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import yaml
    from omegaconf import OmegaConf

    from llmdpd.config.load import ConfigError, load_config
    from llmdpd.evaluation.plan import check_has_tasks, check_split
    from llmdpd.evaluation.runner import evaluate_checkpoint
    from llmdpd.runs import checkpoint_for_evaluation

    cfg = load_config(args.exp, args.overrides)
    if args.descriptions is not None:
        texts = yaml.safe_load(args.descriptions.read_text())
        if not isinstance(texts, dict) or not all(isinstance(v, list) and v for v in texts.values()):
            raise ConfigError(f"{args.descriptions}: expected a mapping task -> non-empty list of descriptions")
        cfg.eval.descriptions = OmegaConf.merge(cfg.eval.descriptions, texts)
    try:
        check_split(cfg.eval.split, cfg.data)
        check_has_tasks(cfg.eval.split, bool(cfg.eval.seen), cfg.data.validation_tasks)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    ckpt = checkpoint_for_evaluation(cfg)
    summary = evaluate_checkpoint(cfg, ckpt)
    out = args.out or default_out_path(ckpt, cfg.eval.split)
    from llmdpd.evaluation.results import write_eval_json
    from llmdpd.evaluation.runner import format_summary

    write_eval_json(out, summary)
    print(format_summary(summary))
    print(f"written: {out}")
    return 0


def default_out_path(ckpt: str | Path, split: str) -> Path:
    """eval_<ckpt name>.json beside the run's eval.json (beside the checkpoint when it is in no run directory),
    with `_validation` before `.json` for a validation evaluation."""
    from llmdpd.runs import results_directory

    suffix = "_validation" if split == "validation" else ""
    return results_directory(ckpt) / f"eval_{Path(ckpt).stem}{suffix}.json"
