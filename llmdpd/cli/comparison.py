"""`llmdpd comparison BENCHMARK --seeds 0 1 2 [--jobs 2] [--commit] [METHOD ...]`: run a published comparison.

Every (method, seed) run is `llmdpd train <experiment> seed=<seed> ckpt=last` in its own process (so an
interrupted run resumes where it stopped, in its own run directory: the newest `version_<n>` of that
experiment and seed, which `ckpt=last` continues or creates), followed by a copy of its `config.yaml` and `eval.json` into
`results/<benchmark>/<method>/seed<seed>/` (with `--commit`, a git commit of that folder at once, together with the
tables of the repository's README.md and docs/results.md regenerated from its results, so that a committed
document never disagrees with the committed results; see `llmdpd tables`). A run whose
results are already there is skipped, so the command can be started again after any interruption and only
does what is missing. Several invocations may share the queue: each run is claimed with a file lock.
`--results` may lie in another checkout: a comparison can run from a frozen copy of the code (a git
worktree of the commit whose configuration was chosen) while its results land in the working repository.
Runs go seed-major (every method's seed 0 first), so a partial comparison is balanced across methods.

An evaluation benchmark (`EVALUATIONS`, e.g. `ml10_unseen37`) scores the runs of another benchmark's methods on
another task set: a finished run is evaluated as it is (`llmdpd eval` with the benchmark's overrides, written to
eval_<benchmark>.json in the run directory, never over its eval.json), a missing or unfinished one is trained
(or resumed) first; the results folder holds that eval and the run's configuration with the overrides applied.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from llmdpd.config.schema import CHOICES
from llmdpd.provenance import PROVENANCE, read_provenance, record_provenance

# ML45's folds: five ML45 training tasks each, held out of training and scored as unseen tasks (the splits
# ml45_fold<k> in llmdpd/tasks/metaworld.yaml).
FOLDS = tuple(f"fold{k}" for k in range(1, 7))
# Each fold's benchmark -> (the benchmark whose trained runs it evaluates, the evaluation's overrides): itself, as
# it was trained (its experiments already leave the seen test out).
FOLD_EVALUATIONS = {f"ml45_{fold}": (f"ml45_{fold}", []) for fold in FOLDS}
# The push-wall data with two routes of the expert (100 episodes; 1,000: dense; 1,000 with little noise: clean; 1,000
# driven with noise and stored with the expert's actions: relabelled), and their one-route control.
ROUTE_DATA = ("two_routes", "one_route", "two_routes_dense", "two_routes_clean", "two_routes_relabelled")
# The actors trained on each: the frozen configuration, the 512 x 4 weighted MLP and the generative diffusion actor,
# and variants of the last two (`{actor}_{variant}`) where they were asked for.
ROUTE_ACTORS = ("llmdpd_x0_rwr_t0_top08_wide_long", "mlp_bc_prompts_rwr_wide_long", "llmdpd_x0_rwr_t15_wide_long")
ROUTE_VARIANTS = {"two_routes_dense": ("chunks",), "two_routes_clean": ("unweighted", "neighbours"),
                  "two_routes_relabelled": ("unweighted",)}
# Sampler temperatures of the diffusion actors scored on push-wall (the frozen configuration acts at 0, the
# generative one at 1.5).
ROUTE_TEMPERATURES = ("0.0", "0.5", "1.0", "1.5")
# The methods trained on the v1 data relabelled with the experts' actions (`base/relabelled`): the two prompted
# actors, and the prompt-free MLP.
RELABELLED_PROMPTED = ("llmdpd_x0_rwr_t0_top08_wide_long_unweighted_relabelled",
                       "mlp_bc_prompts_rwr_wide_long_unweighted_relabelled")
RELABELLED_METHODS = (*RELABELLED_PROMPTED, "mlp_bc_wide_long_relabelled")
# The frozen configuration's prompt ablations on the same data (ML10 only). Its diffusion BC counterpart is the frozen
# configuration itself: it trains no critic (`policy.critic: none`), so eta = 0 changes nothing.
RELABELLED_ABLATIONS = tuple(f"{prompts}_x0_rwr_t0_top08_wide_long_unweighted_relabelled"
                             for prompts in ("no_prompts", "text_only", "trajectory_only"))
# Benchmark -> method -> experiment (a name in experiments/ or a path).
COMPARISONS: dict[str, dict[str, str]] = {
    "ml10": {
        "llmdpd": "llmdpd",
        "mlp_bc_prompts": "mlp_bc_prompts",
        "mlp_bc": "mlp_bc",
        "no_prompts": "no_prompts",
        "diffusion_bc": "diffusion_bc",
        "text_only": "text_only",
        "trajectory_only": "trajectory_only",
        "llmdpd_x0": "llmdpd_x0",
        "llmdpd_x0_bc": "llmdpd_x0_bc",
        "no_prompts_x0_bc": "no_prompts_x0_bc",
        "text_only_x0_bc": "text_only_x0_bc",
        "trajectory_only_x0_bc": "trajectory_only_x0_bc",
        "llmdpd_x0_rwr": "llmdpd_x0_rwr",
        "mlp_bc_prompts_rwr": "mlp_bc_prompts_rwr",
        "llmdpd_x0_rwr_t15": "llmdpd_x0_rwr_t15",
        "mlp_bc_prompts_rwr_noise06": "mlp_bc_prompts_rwr_noise06",
        "llmdpd_x0_rwr_t15_long": "llmdpd_x0_rwr_t15_long",
        "mlp_bc_prompts_rwr_long": "mlp_bc_prompts_rwr_long",
        "no_prompts_x0_rwr_t15_long": "no_prompts_x0_rwr_t15_long",
        "mlp_bc_prompts_long": "mlp_bc_prompts_long",
        "llmdpd_x0_rwr_t0_long": "llmdpd_x0_rwr_t0_long",
        "mlp_bc_long": "mlp_bc_long",
        "llmdpd_x0_bc_t15_long": "llmdpd_x0_bc_t15_long",
        "llmdpd_x0_rwr_t15_top08_long": "llmdpd_x0_rwr_t15_top08_long",
        "llmdpd_x0_rwr_t0_top08_wide_long": "llmdpd_x0_rwr_t0_top08_wide_long",
        "mlp_bc_prompts_rwr_wide_long": "mlp_bc_prompts_rwr_wide_long",
    },
    "ml45": {
        "llmdpd": "ml45/llmdpd",
        "mlp_bc_prompts": "ml45/mlp_bc_prompts",
        "mlp_bc": "ml45/mlp_bc",
        "no_prompts": "ml45/no_prompts",
        "llmdpd_x0": "ml45/llmdpd_x0",
        "llmdpd_x0_bc": "ml45/llmdpd_x0_bc",
        "llmdpd_x0_rwr": "ml45/llmdpd_x0_rwr",
        "mlp_bc_prompts_rwr": "ml45/mlp_bc_prompts_rwr",
        "llmdpd_x0_rwr_t15": "ml45/llmdpd_x0_rwr_t15",
        "mlp_bc_prompts_rwr_noise06": "ml45/mlp_bc_prompts_rwr_noise06",
        "llmdpd_x0_rwr_t15_long": "ml45/llmdpd_x0_rwr_t15_long",
        "mlp_bc_prompts_rwr_long": "ml45/mlp_bc_prompts_rwr_long",
        "no_prompts_x0_rwr_t15_long": "ml45/no_prompts_x0_rwr_t15_long",
        "mlp_bc_prompts_long": "ml45/mlp_bc_prompts_long",
        "llmdpd_x0_rwr_t0_long": "ml45/llmdpd_x0_rwr_t0_long",
        "mlp_bc_long": "ml45/mlp_bc_long",
        "llmdpd_x0_bc_t15_long": "ml45/llmdpd_x0_bc_t15_long",
        "llmdpd_x0_rwr_t15_top08_long": "ml45/llmdpd_x0_rwr_t15_top08_long",
        "llmdpd_x0_rwr_t0_top08_wide_long": "ml45/llmdpd_x0_rwr_t0_top08_wide_long",
        "mlp_bc_prompts_rwr_wide_long": "ml45/mlp_bc_prompts_rwr_wide_long",
    },
    # ML10's v1 data relabelled with each task's expert actions (`base/relabelled`): the frozen configuration and the
    # 512 x 4 MLP with prompts, both unweighted (the returns are those of the executed episodes), and the prompt-free
    # 512 x 4 MLP; the data recipe chosen on validation goals (docs/results.md). The same on ML45. On ML10 also the
    # frozen configuration's prompt ablations.
    **{f"{bench}_relabelled": {method: prefix + method for method in RELABELLED_METHODS + ablations}
       for bench, prefix, ablations in (("ml10", "", RELABELLED_ABLATIONS), ("ml45", "ml45/", ()))},
    # The ninth configuration on ML45 without its five validation tasks (base/ml45_validation_tasks.yaml): the
    # policies on which rules meant for unseen tasks are chosen (`ml45_heldout_*` below).
    "ml45_heldout": {"llmdpd_x0_rwr_t0_top08_wide_long": "ml45/llmdpd_x0_rwr_t0_top08_wide_long_heldout"},
    # The frozen configuration and both weighted MLPs trained again without five ML45 training tasks and scored on
    # them (the splits ml45_fold1-6): five more unseen tasks for ML45 per fold.
    **{f"ml45_{fold}": {method: f"ml45/{method}_{fold}" for method in (
        "llmdpd_x0_rwr_t0_top08_wide_long", "mlp_bc_prompts_rwr_wide_long", "mlp_bc_prompts_rwr_long")}
       for fold in FOLDS},
    # The same folds on the relabelled data: the frozen configuration and the 512 x 4 MLP with prompts, unweighted.
    **{f"ml45_{fold}_relabelled": {method: f"ml45/{method}_{fold}" for method in RELABELLED_PROMPTED}
       for fold in FOLDS},
    # Push-wall alone, its expert taking two routes round the wall (or one, the control): data whose states need one
    # of two opposite actions (experiments/base/push_wall_two_routes.yaml).
    # The third method is the diffusion actor as a generative model (uniform denoising steps, temperature 1.5); on the
    # dense data it and the MLP also act in chunks of 16 actions, 8 executed per call; on the clean data they are also
    # trained without the return weighting (`_unweighted`), which there tells the routes apart, and with each
    # episode's return ranked only among the episodes nearest it by path (`_neighbours`); on the relabelled data,
    # whose returns are not those of the stored actions, only unweighted.
    **{f"push_wall_{routes}": {method: f"two_routes/{method}_{routes}" for method in (
        *(ROUTE_ACTORS if routes != "two_routes_relabelled" else ()),
        *(f"{actor}_{variant}" for actor in ("llmdpd_x0_rwr_t15_wide_long", "mlp_bc_prompts_rwr_wide_long")
          for variant in ROUTE_VARIANTS.get(routes, ())))}
       for routes in ROUTE_DATA},
}
# Rules for unseen tasks, validated on ML45's held-out validation tasks: the task's own prompt, the policy's
# unconditional behaviour, and each retrieval rule, imagined practice also with an ensemble of three transition
# models compared over the steps they agree on, and the rules that consult the policy also offered the
# unconditional behaviour.
HELDOUT_RULES: dict[str, list[str]] = {
    "own": [],
    "unconditional": ["eval.prompt_task=unconditional"],
    **{f"retrieval_{rule}": [f"eval.prompt_retrieval={rule}"] for rule in ("demonstration", "practice", "imagined")},
    "retrieval_imagined_members3": ["eval.prompt_retrieval=imagined", "world_model.members=3"],
    **{f"retrieval_imagined_members3_spread{spread}": ["eval.prompt_retrieval=imagined", "world_model.members=3",
                                                      f"world_model.max_spread={spread}"]
       for spread in ("0.02", "0.05", "0.1")},
    **{f"retrieval_{rule}_unconditional": [f"eval.prompt_retrieval={rule}", "eval.prompt_retrieval_unconditional=true"]
       for rule in ("demonstration", "practice", "imagined")},
    # The chosen rule below with the transition model first adapted to each task's demonstration, at the rate that
    # best predicted the held-out tasks' other prompt episodes (`llmdpd diagnose --demonstration-fit`).
    **{f"retrieval_imagined_unconditional_adapt{steps}": [
        "eval.prompt_retrieval=imagined", "eval.prompt_retrieval_unconditional=true",
        f"world_model.adapt_steps={steps}", "world_model.adapt_lr=0.0003"] for steps in (50, 200)},
    # The chosen rule in a transition model that reads the task's demonstration in context, matched on the object's
    # displacement (the variant nearest the policy-free gate of `llmdpd diagnose --demonstration-fit`; README).
    "retrieval_imagined_unconditional_context": ["eval.prompt_retrieval=imagined",
                                                 "eval.prompt_retrieval_unconditional=true",
                                                 "world_model.context=demonstration", "world_model.context_match=object"],
    # The chosen rule, and real practice, also offered the task's own prompt.
    "retrieval_imagined_unconditional_own": ["eval.prompt_retrieval=imagined", "eval.prompt_retrieval_unconditional=true",
                                             "eval.prompt_retrieval_own=true"],
    "retrieval_practice_own": ["eval.prompt_retrieval=practice", "eval.prompt_retrieval_own=true"],
    # Imagined practice's choices on the training tasks, learned as a ranking of prompt-only signals.
    "retrieval_distilled": ["eval.prompt_retrieval=distilled"],
    # The task's own prompt read by one half only (its description, or its demonstration).
    **{f"prompt_{parts}": [f"eval.prompt_parts={parts}"] for parts in ("text", "trajectory")},
}
# Chosen by the decision rule fixed before the held-out figures (README): imagined practice with one transition
# model (the ensembles scored lower), offered the unconditional behaviour too (it scored the same: never chosen).
CHOSEN_HELDOUT_RULE = "retrieval_imagined_unconditional"
# ML10's policies on the 37 Meta-World tasks they never saw, 128 environments at a time (about 2.5 GB) instead of
# 256: results do not depend on it (evaluation/rollout.py).
UNSEEN37 = ["data.split=ml10_unseen37", "eval.seen=false", "eval.max_envs=128"]
# Benchmark -> (the benchmark whose trained runs it evaluates, the evaluation's overrides): the same policies
# scored on another task set, without training them again. ML10's policies on the 37 Meta-World tasks they
# never saw (llmdpd/tasks/metaworld.yaml), where ML10's five unseen tasks are too few to rank methods.
EVALUATIONS: dict[str, tuple[str, list[str]]] = {
    "ml10_unseen37": ("ml10", UNSEEN37),
    # The relabelled comparison's policies on the same 37 tasks.
    "ml10_relabelled_unseen37": ("ml10_relabelled", UNSEEN37),
    # The same, each unseen task shown the training task whose behaviour best imitates its demonstration.
    "ml10_unseen37_retrieval": ("ml10", [*UNSEEN37, "eval.prompt_retrieval=demonstration"]),
    # The same, each unseen task shown the training task whose behaviour, tried once from its demonstration's start
    # without reward, moves most like the demonstration: in the task's environment (`practice`, one reward-free
    # episode per training task) or in a transition model learned from the training data (`imagined`, zero-shot).
    **{f"ml10_unseen37_retrieval_{rule}": ("ml10", [*UNSEEN37, f"eval.prompt_retrieval={rule}"])
       for rule in ("practice", "imagined")},
    # ML10's and ML45's own unseen tasks (the seen ones are not affected), each shown the training behaviour that
    # best imitates its demonstration: the rule chosen on the validation below.
    **{f"{bench}_retrieval": (bench, ["eval.seen=false", "eval.prompt_retrieval=demonstration"])
       for bench in ("ml10", "ml45")},
    # The same imagined practice with the transition model fitted again from another seed (the run's seed + 100):
    # whether its gains depend on one fit.
    "ml10_unseen37_retrieval_imagined_refit": ("ml10", [*UNSEEN37, "eval.prompt_retrieval=imagined",
                                                        "world_model.seed_offset=100"]),
    # ML10's and ML45's own unseen tasks under the practice rules (on ML10, the same episodes as their share of
    # ml10_unseen37_*).
    **{f"{bench}_retrieval_{rule}": (bench, ["eval.seen=false", f"eval.prompt_retrieval={rule}"])
       for bench in ("ml10", "ml45") for rule in ("practice", "imagined")},
    # The rule chosen on ML45's held-out validation tasks (`ml45_heldout_*`, README), scored once on the test's
    # unseen tasks.
    **{f"{bench}_{CHOSEN_HELDOUT_RULE}": (trained, [*overrides, *HELDOUT_RULES[CHOSEN_HELDOUT_RULE]])
       for bench, (trained, overrides) in {
           "ml10_unseen37": ("ml10", UNSEEN37),
           "ml10": ("ml10", ["eval.seen=false"]), "ml45": ("ml45", ["eval.seen=false"]),
           **FOLD_EVALUATIONS}.items()},
    # ML45 fold 1's unseen tasks under real practice (few-shot), for reference; and ML45's five and the folds' under
    # practice offered the own prompt too (the best few-shot rule on the held-out tasks).
    "ml45_fold1_retrieval_practice": ("ml45_fold1", ["eval.prompt_retrieval=practice"]),
    **{f"{bench}_retrieval_practice_own": (trained, [*overrides, *HELDOUT_RULES["retrieval_practice_own"]])
       for bench, (trained, overrides) in {"ml45": ("ml45", ["eval.seen=false"]),
                                           **FOLD_EVALUATIONS}.items()},
    # The validation of a retrieval rule: each ML10 training task on its validation goals, shown the training
    # task the rule chooses among the nine others (never itself), as if it were unseen (`distilled` learns from
    # the training tasks, so it has no such validation).
    **{f"ml10_validation_retrieval_{rule}": ("ml10", ["eval.split=validation", f"eval.prompt_retrieval={rule}",
                                                      "eval.prompt_retrieval_leave_one_out=true"])
       for rule in CHOICES["eval.prompt_retrieval"] if rule not in ("none", "distilled")},
    # The push-wall actors trained on two routes (or one) acting at other sampler temperatures: on the validation
    # goals (where the temperature is chosen), and on the seen-test goals; `_episode`: with the sampler's noise
    # drawn once per episode (`policy.sample_noise=episode`), `_latent`: its initial latent only.
    **{f"push_wall_{routes}{split}_t{temperature}{noise}": (
        f"push_wall_{routes}", [*overrides, f"policy.sample_temperature={temperature}", *noise_overrides])
       for routes in ROUTE_DATA for temperature in ROUTE_TEMPERATURES
       for split, overrides in (("_validation", ["eval.split=validation"]), ("", []))
       for noise, noise_overrides in (("", []), *((f"_{when}", [f"policy.sample_noise={when}"])
                                                   for when in ("episode", "latent")))},
    # The same actors on the validation goals as trained (temperature 0 for the diffusion actor).
    **{f"push_wall_{routes}_validation": (f"push_wall_{routes}", ["eval.split=validation"]) for routes in ROUTE_DATA},
    # The held-out validation tasks on their validation goals (16 episodes each), under each rule above.
    **{f"ml45_heldout_{name}": ("ml45_heldout", ["eval.seen=false", "eval.episodes_per_task=16", *overrides])
       for name, overrides in HELDOUT_RULES.items()},
}
COMPARISONS.update({name: COMPARISONS[trained] for name, (trained, _) in EVALUATIONS.items()})


def register(sub) -> None:
    parser = sub.add_parser("comparison", help="run (or resume) a published comparison into results/",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=sorted(COMPARISONS))
    parser.add_argument("methods", nargs="*", help="methods to run (default: all of the benchmark's)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--commit", action="store_true", help="git-commit each finished run's results folder")
    parser.add_argument("--dry-run", action="store_true", help="list the runs still to do and stop")
    parser.set_defaults(run=run)


# The documents whose `llmdpd compare` tables (see llmdpd.cli.tables) a results commit regenerates.
DOCUMENTS = ("README.md", "docs/results.md")


def _refresh_documents(root: Path, render_block: Callable[[str], str]) -> None:
    """Regenerate the tables of `root`'s documents (in the working copy) from its results."""
    from llmdpd.cli.tables import refresh_file

    with contextlib.chdir(root):  # table commands name paths relative to the repository root
        for name in DOCUMENTS:
            if not Path(name).is_file():
                continue
            try:
                refresh_file(Path(name), render_block=render_block)
            except ValueError as err:
                print(f"comparison: {name}: tables not regenerated ({err}); run `llmdpd tables {name}`", file=sys.stderr)


def _commit(folder: Path, message: str, locks: Path) -> None:
    """Commit `folder`, and the documents' tables regenerated, in the repository that holds it (which need not
    be the one running the code). The commit holds the committed documents with new tables only: other edits in
    the working copy's documents (prose being written) stay uncommitted, their tables refreshed too."""
    from filelock import FileLock

    from llmdpd.cli.tables import render

    folder = folder.resolve()
    top = subprocess.run(["git", "-C", str(folder), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        print(f"comparison: {folder} is not in a git repository; nothing committed", file=sys.stderr)
        return
    root = Path(top.stdout.strip()).resolve()
    with FileLock(str(locks / "documents.lock")):  # one invocation at a time rewrites the documents
        # Each table once: the working copy's documents and the committed ones mostly share their commands.
        render_block = functools.cache(render)
        _refresh_documents(root, render_block)
        for attempt in range(10):  # another commit may move HEAD, or hold git's index lock, for a moment
            if _commit_with_tables(root, folder.relative_to(root), message, render_block):
                return
            time.sleep(2 + attempt)
    print(f"comparison: could not commit {folder}; commit it by hand", file=sys.stderr)


def _commit_with_tables(root: Path, folder: Path, message: str, render_block: Callable[[str], str]) -> bool:
    """One try at committing `folder` on HEAD together with HEAD's documents whose tables, regenerated from the
    working tree's results, changed; built in a scratch index so that nothing else staged or edited is swept in.
    False if it failed or HEAD moved meanwhile."""
    import tempfile

    from llmdpd.cli.tables import refresh

    git = ["git", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "--verify", "HEAD"], capture_output=True, text=True).stdout.strip()
    if not head:
        return False
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(scratch) / "index")}

        def call(*argv: str, **kw: Any) -> subprocess.CompletedProcess:
            return subprocess.run([*git, *argv], capture_output=True, text=True, env=env, **kw)

        if call("read-tree", head).returncode or call("add", "--", str(folder)).returncode:
            return False
        paths = [str(folder)]
        for name in DOCUMENTS:
            committed = call("show", f"{head}:{name}")
            if committed.returncode:
                continue  # not a committed document of this repository
            try:
                with contextlib.chdir(root):  # table commands name paths relative to the repository root
                    text, stale = refresh(committed.stdout, render_block)
            except ValueError:
                continue  # reported by the working copy's refresh
            if stale:
                blob = call("hash-object", "-w", "--stdin", input=text).stdout.strip()
                if call("update-index", "--cacheinfo", f"100644,{blob},{name}").returncode:
                    return False
                paths.append(name)
        tree = call("write-tree").stdout.strip()
        if tree and tree == call("rev-parse", f"{head}^{{tree}}").stdout.strip():
            return True  # already committed
        commit = call("commit-tree", tree, "-p", head, "-m", message).stdout.strip()
        if not tree or not commit or call("update-ref", "-m", f"commit: {message}", "HEAD", commit, head).returncode:
            return False
    # The real index takes the committed entries of these paths; the working copy keeps its other edits.
    subprocess.run([*git, "reset", "-q", "--", *paths], capture_output=True, text=True)
    return True


def _llmdpd(*argv: str) -> int:
    """Run one `llmdpd` command in its own process (its exit code)."""
    return subprocess.call([sys.executable, "-m", "llmdpd", *argv], env=os.environ.copy())


def _evaluate(benchmark: str, experiment: str, overrides: list[str], run: Path, target: Path) -> bool:
    """Score `run`'s final policy under `benchmark`'s evaluation overrides: eval_<benchmark>.json in the run
    directory (never over its own eval.json), copied to `target` beside the run's configuration with those
    overrides applied, so that `target` says what was evaluated how."""
    from omegaconf import OmegaConf

    from llmdpd.files import write_text_atomic

    evaluation = EVALUATIONS[benchmark][1]
    out = run / f"eval_{benchmark}.json"
    command = ["eval", experiment, *overrides, *evaluation, "--out", str(out)]
    evaluated_now = not out.is_file()
    if evaluated_now and _llmdpd(*command) != 0:
        return False
    config = OmegaConf.merge(OmegaConf.load(run / "config.yaml"), OmegaConf.from_dotlist(evaluation))
    target.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target / "config.yaml", OmegaConf.to_yaml(config))
    # The training invocations' entries, and this evaluation's when it ran here (same process environment).
    if evaluated_now:
        record_provenance(target, "llmdpd " + " ".join(command), read_provenance(run))
    else:
        _copy_provenance(run, target)
    shutil.copy2(out, target / "eval.json")
    return True


def _copy_provenance(run: Path, target: Path) -> None:
    if (run / PROVENANCE).is_file():
        shutil.copy2(run / PROVENANCE, target / PROVENANCE)


def run(args: argparse.Namespace) -> int:
    from filelock import FileLock, Timeout

    from llmdpd.config.load import ConfigError, load_config
    from llmdpd.runs import newest_run, run_base

    table = COMPARISONS[args.benchmark]
    unknown = [m for m in args.methods if m not in table]
    if unknown:
        raise ConfigError(f"Unknown method(s) {unknown} for {args.benchmark}; known: {sorted(table)}")
    methods = args.methods or list(table)
    todo = [(seed, m) for seed in args.seeds for m in methods
            if not (args.results / args.benchmark / m / f"seed{seed}" / "eval.json").is_file()]
    print(f"comparison {args.benchmark}: {len(todo)} run(s) to do: " + ", ".join(f"{m}/seed{s}" for s, m in todo))
    if args.dry_run:
        return 0
    locks = args.results / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    for seed, method in todo:
        target = args.results / args.benchmark / method / f"seed{seed}"
        lock = FileLock(str(locks / f"{args.benchmark}-{method}-seed{seed}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # another invocation is running it
        try:
            if (target / "eval.json").is_file():
                continue
            experiment = table[method]
            overrides = [f"seed={seed}", "ckpt=last"]
            base = run_base(load_config(experiment, overrides))
            start = time.perf_counter()
            print(f"comparison: {method} seed {seed} -> {base}", flush=True)
            directory = newest_run(base)
            code = 0
            if args.benchmark not in EVALUATIONS or directory is None or not (directory / "eval.json").is_file():
                code = _llmdpd("train", experiment, *overrides)
                # `ckpt=last` continued the newest run under `base` or created it; the lock keeps others out.
                directory = newest_run(base)
            if code != 0 or directory is None or not (directory / "eval.json").is_file():
                print(f"comparison: {method} seed {seed} failed (exit {code}); rerun to resume it", file=sys.stderr)
                continue
            if args.benchmark in EVALUATIONS:
                done = _evaluate(args.benchmark, experiment, overrides, directory, target)
            else:
                target.mkdir(parents=True, exist_ok=True)
                for name in ("config.yaml", "eval.json"):
                    shutil.copy2(directory / name, target / name)
                _copy_provenance(directory, target)
                done = True
            if not done:
                print(f"comparison: {method} seed {seed}: evaluation failed; rerun to resume it", file=sys.stderr)
                continue
            minutes = (time.perf_counter() - start) / 60
            (target / "wall_time.txt").write_text(f"{minutes:.1f} min (this invocation)\n")
            print(f"comparison: {method} seed {seed} done in {minutes:.1f} min -> {target}", flush=True)
            if args.commit:
                _commit(target, f"results: {args.benchmark} {method} seed {seed}", locks)
        finally:
            lock.release()
    return 0
