"""`llmdpd diagnose EXP ckpt=PATH [key=value ...]`: how far a checkpoint's actions lie from the scripted
expert's, per training task, on states the noisy expert visits on the validation goals.

Per task: the squared distance of one sample, of the deterministic chain (sampler temperature 0), of one network
call from the zero latent (the actor's regression to the mean action) and of the mean of `--samples` samples to the
expert's action, and the samples' spread around their mean (see `llmdpd.evaluation.diagnostics.action_errors`).
With `--rollouts N`, also N episodes of the policy itself on each validation goal: how many reached the object,
moved it and succeeded, the object's progress to the goal, and the action error on the policy's own states (see
`llmdpd.evaluation.rollout_diagnostics`). Also whether the policy acts on its own task's prompt (its mean action on
each task's states under every training task's condition, `prompt_identification`), and the condition spread (how
far apart the tasks' conditions lie, `condition_spread`) of the checkpoint and, where the run kept it, of the
prompt encoders its alignment stage ended with (`checkpoints/align/final.ckpt`). With `--unseen`, also which
training task's behaviour each unseen task's prompt calls up, on the unseen task's own expert states
(`prompt_transfer`); under `eval.split=validation` the held-out validation tasks (`data.validation_tasks`) take
the unseen tasks' place, so that settings for unseen tasks are diagnosed without touching the test's. With `--awr BETA`, what advantage weights exp(A / BETA), with the checkpoint's
`policy.awr_advantage` (the critic's Q - V, raw or standardised per task; the episode's return; or the return to go
minus the outcome value), do to each task's data: each behaviour's share of the weight against its share of the
transitions, the effective sample size and the tilt of the mean action (`advantage_weights`). With `--modes N`,
whether the policy's N draws per validation state form one mode or two (`action_modes`: Sarle's bimodality
coefficient and Ashman's separation along the draws' first principal direction). With `--retrieval N`, each
unseen task's success under its own prompt and under every training task's prompt (`retrieval_oracle`: the best a
policy that only calls up training behaviours could score there, chosen on one episode plan and scored on another),
and each retrieval rule's choices scored on that table (`rules`); run again on the same output file, it reads the
rollouts back and scores the rules only. With `--imagination`, how far imagined practice episodes (in the transition
model learned from the training data) lie from the real practice episodes of the same conditions on the unseen
tasks, and how often the two rules choose the same training task (`imagination_fidelity`). With
`--demonstration-fit`, only how well the transition models, adapted to each unseen task's demonstration where
`world_model.adapt_steps` says so, predict the task's other prompt episodes (`demonstration_fit`): no policy, so
no checkpoint is needed (`--out FILE`), and the adaptation's or the fit's settings are checked in minutes.

Written to diagnose_<ckpt name>.json beside the run's eval.json. Meta-World tasks only (the scripted expert
gives the reference actions).
"""

from __future__ import annotations

import argparse
from pathlib import Path

ERRORS = ("sample", "temperature0", "one_call", "sample_mean", "spread")
IDENTIFICATION = ("own_error", "other_error", "identified")
TRANSFER = ("own_error", "null_error", "best_training_error", "behaviour_gap")
TRANSFER_TASKS = ("best_training_task", "behaves_like", "nearest_text", "nearest_trajectory")
MODES = ("bimodality_coefficient", "bimodal", "separation", "principal_share")
RETRIEVAL = ("own", "best", "oracle", "best_task")
DEMONSTRATION_FIT = ("other_demonstrations_hand_50", "other_demonstrations_object_50",
                     "other_demonstrations_object_travel_50", "other_demonstrations_imagined_object_travel_50")
IMAGINATION = ("hand_error_50", "hand_error_end", "object_error", "open_loop_hand_error_50", "open_loop_hand_error_end",
               "open_loop_object_error", "object_moved", "trusted_steps", "agree",
               *DEMONSTRATION_FIT)
ROLLOUT_COLUMNS = ("reached_object", "moved_object", "success", "goal_progress", "on_policy_error_early",
                   "on_policy_error", "closing_offset", "closing_offset_failed", "lost_object")


def register(sub) -> None:
    from llmdpd.cli.main import add_experiment_arguments

    parser = sub.add_parser("diagnose", help="action error per task against the scripted expert",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_arguments(parser)
    parser.add_argument("--samples", type=int, default=16, help="samples per state for the mean and spread")
    parser.add_argument("--rollouts", type=int, default=0, help="episodes of the policy per validation goal "
                        "for its stages (object reached, moved, success) and on-policy action error (default 0: none)")
    parser.add_argument("--unseen", action="store_true", help="also the unseen tasks: which training task's "
                        "behaviour each one's prompt calls up (states from the same goal indices)")
    parser.add_argument("--awr", type=float, metavar="BETA", help="also the advantage weights exp(A / BETA) by "
                        "data behaviour (expectile critic; policy.awr_advantage=task standardises A per task)")
    parser.add_argument("--modes", type=int, default=0, metavar="N", help="also whether the policy's N draws per "
                        "state form one mode or two (default 0: not measured; at least 4)")
    parser.add_argument("--retrieval", type=int, default=0, metavar="N", help="also each unseen task's success "
                        "under its own prompt and under every training task's prompt, N episodes on each of two "
                        "episode plans (default 0: not measured)")
    parser.add_argument("--imagination", action="store_true", help="also, on the unseen tasks (the held-out "
                        "validation tasks under eval.split=validation), how far imagined practice episodes lie from "
                        "the real ones and whether the two rules choose alike")
    parser.add_argument("--demonstration-fit", action="store_true", help="only how well the transition models "
                        "(adapted to each unseen task's demonstration under world_model.adapt_steps) predict the "
                        "task's other prompt episodes; nothing else is measured")
    parser.add_argument("--out", type=Path, help="where to write the results (default: diagnose_<ckpt name>.json "
                        "beside the run's eval.json)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from llmdpd.config.load import ConfigError, load_config
    from llmdpd.config.schema import OUTCOME_ADVANTAGES
    from llmdpd.data.datamodule import MetaWorldDataModule
    from llmdpd.evaluation.diagnostics import (action_errors, condition_spread, prompt_identification, task_conditions,
                                               validation_state_sets)
    from llmdpd.evaluation.plan import goal_layout
    from llmdpd.evaluation.runner import load_policy
    from llmdpd.prompts.text_embeddings import make_text_embedder
    from llmdpd.runs import checkpoint_for_evaluation, results_directory

    cfg = load_config(args.exp, args.overrides)
    if args.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {args.samples}")
    if args.awr is not None and not args.awr > 0:
        raise ConfigError(f"--awr must be a positive temperature, got {args.awr}")
    if args.awr is not None and cfg.policy.action_horizon > 1 and cfg.policy.awr_advantage not in OUTCOME_ADVANTAGES:
        raise ConfigError("--awr with a critic's advantage scores one action per state; policy.action_horizon is "
                          f"{cfg.policy.action_horizon}")
    if args.modes and args.modes < 4:
        raise ConfigError(f"--modes needs at least 4 draws per state, got {args.modes}")
    if args.retrieval < 0:
        raise ConfigError(f"--retrieval must be at least 0, got {args.retrieval}")
    if args.rollouts < 0:
        raise ConfigError(f"--rollouts must be at least 0, got {args.rollouts}")
    goals = goal_layout(cfg.data).validation
    if not len(goals):
        raise ConfigError("llmdpd diagnose uses the validation goals, but data.validation_goals is 0")
    if args.demonstration_fit:  # the transition models only: a checkpoint just names where to write
        return run_demonstration_fit(cfg, MetaWorldDataModule(cfg), args.out)
    ckpt = checkpoint_for_evaluation(cfg)
    module = load_policy(cfg, ckpt).eval()
    dm = MetaWorldDataModule(cfg, make_text_embedder(cfg))
    dm.setup_for_evaluation(module.normalizer)
    states = validation_state_sets(dm.train_tasks, goals, seed=cfg.data.seed)
    if not states:
        raise ConfigError("llmdpd diagnose needs Meta-World training tasks (their scripted experts give the reference)")
    conditions = task_conditions(module, dm, list(states))
    errors = action_errors(module, states, conditions, samples=args.samples, seed=cfg.seed)
    summary = {"checkpoint": str(Path(ckpt).resolve()), "validation_goals": list(goals), "samples": args.samples,
               "tasks": errors, "mean": _mean(errors, ERRORS),
               "condition_spread": condition_spread(module, conditions)}
    if len(conditions) > 1:
        identification = prompt_identification(module, states, conditions, seed=cfg.seed)
        summary["prompt_identification"] = {"tasks": identification, "mean": _mean(identification, IDENTIFICATION)}
    aligned = Path(ckpt).parent / "align" / "final.ckpt"
    if aligned.is_file() and len(conditions) > 1:
        at_alignment = with_aligned_prompt_encoders(module, aligned)
        summary["condition_spread_aligned"] = condition_spread(at_alignment, task_conditions(at_alignment, dm, list(states)))
    if args.unseen:
        from llmdpd.evaluation.prompt_transfer import prompt_transfer

        held_out = dm.validation_tasks if cfg.eval.split == "validation" else dm.unseen_tasks
        unseen_states = validation_state_sets(held_out, goals, seed=cfg.data.seed)
        transfer = prompt_transfer(module, unseen_states, task_conditions(module, dm, list(unseen_states)), conditions,
                                   seed=cfg.seed)
        if transfer:
            summary["prompt_transfer"] = {"tasks": transfer, "mean": _mean(transfer, TRANSFER)}
    if args.awr is not None:
        summary["advantage_weights"] = weights_by_behaviour(module, dm, conditions, args.awr, cfg)
    if args.modes:
        from llmdpd.evaluation.action_modes import policy_action_modes

        modes = policy_action_modes(module, states, conditions, draws=args.modes, seed=cfg.seed)
        summary["action_modes"] = {"draws": args.modes, "tasks": modes, "mean": _mean(modes, MODES)}
        parting = routes_parting_states(states)
        if parting:  # the states where a task's expert routes act differently, alone
            summary["action_modes"]["where_routes_part"] = {
                "states": {task: len(obs) for task, (obs, _) in parting.items()},
                "tasks": policy_action_modes(module, parting, conditions, draws=args.modes, seed=cfg.seed)}
    if args.rollouts:
        rollouts = policy_rollouts(module, conditions, goals, args.rollouts, cfg)
        summary["rollouts"] = {"episodes_per_goal": args.rollouts, "tasks": rollouts,
                               "mean": _mean(rollouts, ROLLOUT_COLUMNS)}
    if args.imagination:
        from llmdpd.evaluation.imagined_practice import imagination_fidelity, training_world_models
        from llmdpd.evaluation.runner import ACTING_KEYS

        held_out = dm.validation_tasks if cfg.eval.split == "validation" else dm.unseen_tasks
        acting = {key: cfg.policy[key] for key in ACTING_KEYS if key in cfg.policy}
        fidelity = imagination_fidelity(module, training_world_models(dm), dm, held_out, dm.train_tasks,
                                        cfg.eval.prompt_episode, acting, env_seed=cfg.data.seed)
        summary["imagination"] = {"tasks": fidelity, "mean": _mean(fidelity, IMAGINATION)}
    out = args.out or results_directory(ckpt) / f"diagnose_{Path(ckpt).stem}.json"
    if args.retrieval:
        summary["retrieval"] = retrieval_diagnosis(cfg, ckpt, module, dm, args.retrieval, out)
    from llmdpd.evaluation.results import write_eval_json

    write_eval_json(out, summary)
    print(format_table(summary["tasks"], summary["mean"], ERRORS))
    if "prompt_identification" in summary:
        print(format_table(summary["prompt_identification"]["tasks"], summary["prompt_identification"]["mean"],
                           IDENTIFICATION))
    for key in ("condition_spread_aligned", "condition_spread"):
        if key in summary:
            print(f"{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in summary[key].items()))
    if "prompt_transfer" in summary:
        print(format_table(summary["prompt_transfer"]["tasks"], summary["prompt_transfer"]["mean"],
                           TRANSFER + TRANSFER_TASKS))
    if "advantage_weights" in summary:
        tasks = summary["advantage_weights"]["tasks"]
        columns = ("ess", "tilt_norm", *sorted({k for e in tasks.values() for k in e if "_share/" in k}))
        print(format_table(tasks, summary["advantage_weights"]["mean"], columns))
    if "action_modes" in summary:
        print(format_table(summary["action_modes"]["tasks"], summary["action_modes"]["mean"], MODES))
        if "where_routes_part" in summary["action_modes"]:
            parting = summary["action_modes"]["where_routes_part"]
            print(f"where the expert's routes part ({parting['states']} states):")
            print(format_table(parting["tasks"], _mean(parting["tasks"], MODES), MODES))
    if "rollouts" in summary:
        tasks = summary["rollouts"]["tasks"]
        routes = tuple(sorted({k for entry in tasks.values() for k in entry if k.startswith("route_")}))
        print(format_table(tasks, summary["rollouts"]["mean"], ROLLOUT_COLUMNS + routes))
    if "imagination" in summary:
        print(format_table(summary["imagination"]["tasks"], summary["imagination"]["mean"],
                           IMAGINATION + ("practice_choice", "imagined_choice")))
    if "retrieval" in summary:
        print(format_table(summary["retrieval"]["tasks"], summary["retrieval"]["mean"], RETRIEVAL))
        rules = summary["retrieval"]["rules"]
        print(format_table(rules, {"success": summary["retrieval"]["mean"]["oracle"]}, ("success", "best_task_picks"))
              .replace("**mean**", "**oracle**"))
    print(f"written: {out}")
    return 0


def run_demonstration_fit(cfg, dm, out: Path | None) -> int:
    """`--demonstration-fit`: written and printed like the other parts, under "demonstration_fit". It needs no
    policy: without `--out`, `ckpt=` names the run beside whose eval.json it is written."""
    from llmdpd.config.load import ConfigError
    from llmdpd.evaluation.imagined_practice import demonstration_fit, training_world_models
    from llmdpd.evaluation.results import write_eval_json
    from llmdpd.runs import checkpoint_for_evaluation, results_directory

    if out is None and cfg.ckpt is None:
        raise ConfigError("--demonstration-fit needs --out FILE, or ckpt=... to write beside that run's eval.json")
    ckpt = checkpoint_for_evaluation(cfg) if cfg.ckpt is not None else None
    held_out = dm.validation_tasks if cfg.eval.split == "validation" else dm.unseen_tasks
    fits = demonstration_fit(training_world_models(dm), dm, held_out, cfg.eval.prompt_episode)
    summary = {"checkpoint": str(Path(ckpt).resolve()) if ckpt else None, "world_model": dict(cfg.world_model),
               "demonstration_fit": {"tasks": fits, "mean": _mean(fits, DEMONSTRATION_FIT)}}
    out = out or results_directory(ckpt) / f"diagnose_demonstration_fit_{Path(ckpt).stem}.json"
    write_eval_json(out, summary)
    print(format_table(fits, summary["demonstration_fit"]["mean"], DEMONSTRATION_FIT))
    print(f"written: {out}")
    return 0


def retrieval_diagnosis(cfg, ckpt: str, module, dm, episodes_per_task: int, out: Path) -> dict:
    """The retrieval oracle of `ckpt` with every retrieval rule's choices scored on it. The oracle's rollouts
    (22 evaluations) are read back from `out` when it already holds them for this checkpoint, plan and episode
    count, so that scoring a new rule costs no rollouts."""
    from llmdpd.evaluation.behaviour_retrieval import MODEL_RULES, RULES, retrieve_behaviours
    from llmdpd.evaluation.imagined_practice import training_world_models
    from llmdpd.evaluation.results import read_eval_json
    from llmdpd.evaluation.retrieval_oracle import checkpoint_evaluator, retrieval_oracle, score_rules
    from llmdpd.evaluation.runner import ACTING_KEYS

    previous = read_eval_json(out) if out.is_file() else {}
    done = previous.get("retrieval", {})
    if (previous.get("checkpoint") == str(Path(ckpt).resolve()) and done.get("episodes_per_task") == episodes_per_task
            and done.get("plans", [None])[0] == cfg.eval.seed and set(done.get("tasks", {})) == set(dm.unseen_tasks)):
        oracle = {key: done[key] for key in ("plans", "tasks", "mean")}
    else:
        oracle = retrieval_oracle(checkpoint_evaluator(cfg, ckpt, episodes_per_task), dm.train_tasks, cfg.eval.seed)
    acting = {key: cfg.policy[key] for key in ACTING_KEYS if key in cfg.policy}
    rules = [rule for rule in RULES if rule != "text" or cfg.text.enabled]
    # One set of transition models for every rule that reads them, read once.
    ensemble = training_world_models(dm) if set(rules) & set(MODEL_RULES) else None
    choices = {rule: {task: chosen for task, (chosen, _) in retrieve_behaviours(
        rule, module, dm, list(oracle["tasks"]), dm.train_tasks, cfg.eval.prompt_episode, acting,
        env_seed=cfg.data.seed, ensemble=ensemble).items()}
        for rule in rules}
    return {"episodes_per_task": episodes_per_task, **oracle, "rules": score_rules(oracle, choices)}


def with_aligned_prompt_encoders(module, align_ckpt: Path):
    """A copy of `module` whose prompt encoders are those its alignment stage ended with."""
    import copy

    from llmdpd.checkpoints import read_checkpoint

    state = read_checkpoint(align_ckpt)["state_dict"]
    out = copy.deepcopy(module)
    for name in ("text_encoder", "trajectory_encoder"):
        encoder = getattr(out, name)
        if encoder is not None:
            encoder.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")})
    return out


def weights_by_behaviour(module, dm, conditions: dict, beta: float, cfg) -> dict:
    """`advantage_weights` of every training task's mixed data, with each episode's behaviour (and route)."""
    from llmdpd.config.load import ConfigError
    from llmdpd.data.generate import dataset_id
    from llmdpd.data.report import episode_outcomes
    from llmdpd.evaluation.advantage_weights import advantage_weights

    def labels(task: str) -> list[str]:  # each episode's behaviour, and its expert's route where the data have routes
        outcomes = episode_outcomes(dm.root, dataset_id(cfg, task, "mixed"))
        return [f"{b}@{r}" if r else b for b, r in zip(outcomes["behaviours"], outcomes["routes"])]

    episodes = {task: (dm.data_episodes(task), labels(task)) for task in conditions}
    try:
        tasks = advantage_weights(module, episodes, conditions, beta, cfg.policy.awr_advantage)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    keys = sorted({k for entry in tasks.values() for k in entry})
    mean = {k: sum(e[k] for e in tasks.values() if k in e) / sum(k in e for e in tasks.values()) for k in keys}
    return {"beta": beta, "advantage": cfg.policy.awr_advantage, "tasks": tasks, "mean": mean}


def policy_rollouts(module, conditions: dict, goals, episodes_per_goal: int, cfg) -> dict[str, dict]:
    """`rollout_diagnostics` of every task in `conditions`, the policy acting as it does in evaluation (an
    `EpisodeActor`: chunks executed, the sampler's noise per episode where set, with this command's acting-time
    `policy.*` settings, e.g. `policy.sample_temperature=1.5`)."""
    from llmdpd.evaluation.agent import EpisodeActor
    from llmdpd.evaluation.rollout_diagnostics import rollout_diagnostics
    from llmdpd.evaluation.runner import ACTING_KEYS

    acting = {key: cfg.policy[key] for key in ACTING_KEYS if key in cfg.policy}
    n = len(goals) * episodes_per_goal

    def act_for(cond):
        actor = EpisodeActor(module, cond.expand(n, -1), acting)
        return lambda obs: actor(obs, list(range(n)))

    return {task: rollout_diagnostics(task, act_for(cond), goals, episodes_per_goal, cfg.eval.max_episode_steps,
                                      env_seed=cfg.data.seed)
            for task, cond in conditions.items()}


def _mean(per_task: dict[str, dict], keys) -> dict[str, float]:
    """Each key's mean over the tasks that report it (keys no task reports, or reports as None, are left out)."""
    values = {k: [e[k] for e in per_task.values() if e.get(k) is not None] for k in keys}
    return {k: sum(v) / len(v) for k, v in values.items() if v}


def format_table(per_task: dict[str, dict], mean: dict[str, float], columns) -> str:
    """A markdown table: per task, the given columns, then their mean over tasks."""
    lines = ["| task | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for task, entry in list(per_task.items()) + [("**mean**", mean)]:
        cells = (_cell(entry.get(k, "")) for k in columns)
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    """A table cell: a number to three places, "-" for None (nothing to average), text as it is."""
    return value if isinstance(value, str) else "-" if value is None else f"{value:.3f}"


def routes_parting_states(states: dict) -> dict:
    """Of each task whose expert has routes, its validation states where the routes act differently."""
    import torch

    from llmdpd.envs.expert_routes import ROUTES, where_routes_part

    parting = {}
    for task, (obs, actions) in states.items():
        if task in ROUTES:
            mask = torch.as_tensor(where_routes_part(task, obs.numpy()))
            if mask.any():
                parting[task] = (obs[mask], actions[mask])
    return parting
