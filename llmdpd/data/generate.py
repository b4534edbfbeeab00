"""`llmdpd data`: generate the Minari datasets an experiment needs, in parallel, resumably.

For every task two datasets: `mixed-<version>` and `prompt-<version>` (llmdpd/data/collect.py). With
`data.dataset_version: v1` (the default) the mixed datasets draw a behaviour per episode from
`data.behaviours` (noisy, wrong_goal, other_task, stall); with `v0`, or behaviours that are noise only,
they are the v0 noisy-expert data, byte for byte and with v0's recipe fingerprint. Prompt datasets are
low-noise expert episodes in every version. The metadata holds every episode's goal, behaviour, noise
scale, return and success.

Each (task, kind) dataset is one job. A job that finds its dataset complete (same recipe fingerprint in
its metadata) skips it, so an interrupted run resumes where it stopped. Jobs hold a file lock per dataset,
so concurrent `llmdpd data` calls on one folder (several DDP ranks, two terminals) write each dataset once.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import asdict
from pathlib import Path

from filelock import FileLock
from tqdm.auto import tqdm

import llmdpd
from llmdpd.config.load import ConfigError
from llmdpd.config.schema import ExperimentConfig
from llmdpd.data import tasks as task_registry
from llmdpd.data.collect import BEHAVIOUR_PARAMS, BEHAVIOURS, OTHER_TASKS, CollectionRecipe, collect_episodes
from llmdpd.data.minari_store import DatasetError, ensure_downloaded, read_metadata, write_episodes
from llmdpd.envs.expert_routes import route_names

_progress = None  # shared episode counter in worker processes


def dataset_id(cfg: ExperimentConfig, task: str, kind: str) -> str:
    """Minari id of a task's dataset, e.g. `metaworld/push-v3/mixed-v1`, `.../mixed-left-right-v1` for a task
    given routes, `.../mixed-left-right-dense-v1` with `data.dataset_tag: dense`, `.../mixed-relabelled-v1` for
    mixed data that store the expert's actions (`data.action_labels: expert`). A task of `data.minari_ids` has
    one dataset for both kinds: its trajectory prompts are episodes of its own data."""
    if task in cfg.data.minari_ids:
        return cfg.data.minari_ids[task]
    tag = cfg.data.dataset_tag
    if tag and not tag.isalnum():
        raise ConfigError(f"data.dataset_tag must be letters and digits, got '{tag}'")
    relabelled = ["relabelled"] if kind == "mixed" and cfg.data.action_labels == "expert" else []
    parts = [route for route, _ in expert_routes(cfg, task)] + relabelled + ([tag] if tag else [])
    return f"{cfg.data.benchmark}/{task}/{'-'.join([kind, *parts])}-{cfg.data.dataset_version}"


def expert_routes(cfg: ExperimentConfig, task: str) -> tuple[tuple[str, float], ...]:
    """(route, weight) pairs of a task's expert from `data.routes`, checked; empty for a task not given routes."""
    routes = cfg.data.routes
    train, unseen = task_registry.split_tasks(cfg.data)
    tasks = set(train) | set(unseen) | set(task_registry.validation_tasks(cfg.data))
    strangers = [t for t in routes if t not in tasks]
    if strangers:
        raise ConfigError(f"data.routes names {strangers}, not tasks of this experiment")
    if task not in routes:
        return ()
    known = route_names(task)
    pairs = _positive_weights(
        routes[task].items(), known,
        unknown=lambda route: f"data.routes.{task} names route '{route}'; the task's routes: {list(known)}",
        negative=lambda route, weight: f"data.routes.{task}.{route} has a negative weight ({weight})")
    if not pairs:
        raise ConfigError(f"data.routes.{task} gives no route a positive weight")
    return pairs


def behaviour_mixture(cfg: ExperimentConfig, task: str) -> tuple[tuple[tuple[str, float], ...], tuple[str, ...]]:
    """(behaviours, other tasks) of a task's mixed dataset; both empty for noise-only data (v0)."""
    data = cfg.data
    behaviours = _positive_weights(
        ((c.kind, c.weight) for c in data.behaviours), BEHAVIOURS,
        unknown=lambda kind: f"Unknown behaviour '{kind}' in data.behaviours; known: {list(BEHAVIOURS)}",
        negative=lambda kind, weight: f"Behaviour '{kind}' has a negative weight ({weight}) in data.behaviours")
    if data.dataset_version == "v0" or all(kind == "noisy" for kind, _ in behaviours):
        return (), ()
    kinds = {kind for kind, _ in behaviours}
    if "wrong_goal" in kinds and int(data.train_goals) < 2:
        raise ConfigError("Behaviour 'wrong_goal' needs data.train_goals >= 2 (another data goal to follow)")
    _, unseen = task_registry.split_tasks(data)
    held_out = set(unseen) | set(task_registry.validation_tasks(data))  # no held-out expert drives training data
    other_tasks = tuple(t for t in OTHER_TASKS if t != task and t not in held_out)
    if "other_task" in kinds and not other_tasks:
        raise ConfigError(f"Behaviour 'other_task' has no other task for '{task}' (all are unseen tasks)")
    return behaviours, other_tasks


def _positive_weights(pairs, known, unknown, negative) -> tuple[tuple[str, float], ...]:
    """(name, weight) pairs with a positive weight, in order, after checking that every name is `known` and no
    weight negative (else a ConfigError with `unknown(name)` or `negative(name, weight)`)."""
    checked = []
    for name, weight in pairs:
        name, weight = str(name), float(weight)
        if name not in known:
            raise ConfigError(unknown(name))
        if not weight >= 0:
            raise ConfigError(negative(name, weight))
        checked.append((name, weight))
    return tuple((name, weight) for name, weight in checked if weight > 0)


def recipe_for(cfg: ExperimentConfig, task: str, kind: str) -> CollectionRecipe:
    data = cfg.data
    behaviours: tuple = ()
    other_tasks: tuple = ()
    if kind == "mixed":
        scales = tuple(float(c.scale) for c in data.noise)
        weights = tuple(float(c.weight) for c in data.noise)
        episodes = data.episodes_per_task
        behaviours, other_tasks = behaviour_mixture(cfg, task)
    else:
        scales, weights, episodes = (float(data.prompt_noise),), (1.0,), data.prompt_episodes
    return CollectionRecipe(
        task=task,
        kind=kind,
        episodes=int(episodes),
        max_episode_steps=int(data.max_episode_steps),
        noise_scales=scales,
        noise_weights=weights,
        train_goals=int(data.train_goals),
        seed=int(data.seed),
        descriptions=tuple(task_registry.descriptions(task, dict(data.descriptions))),
        behaviours=behaviours,
        other_tasks=other_tasks,
        routes=expert_routes(cfg, task),
        action_labels=data.action_labels if kind == "mixed" else "executed",
    )


def is_complete(root: Path, ds_id: str, recipe: CollectionRecipe) -> bool:
    meta = read_metadata(root, ds_id)
    return meta is not None and meta.get("fingerprint") == recipe.fingerprint()


def _metadata(recipe: CollectionRecipe, episodes) -> dict:
    successes = [ep.succeeded for ep in episodes]
    if recipe.behaviours:
        summary = (
            f"Meta-World {recipe.task}: scripted expert with a behaviour per episode "
            f"({', '.join(kind for kind, _ in recipe.behaviours)}) ({recipe.kind})."
        )
        algorithm = "metaworld-scripted-expert+behaviour-mixture"
    else:
        summary = f"Meta-World {recipe.task}: scripted expert with Gaussian action noise ({recipe.kind})."
        algorithm = "metaworld-scripted-expert+gaussian-noise"
    meta = {
        "task": recipe.task,
        "kind": recipe.kind,
        "descriptions": list(recipe.descriptions),
        "noise": {"scales": list(recipe.noise_scales), "weights": list(recipe.noise_weights)},
        "seed": recipe.seed,
        "train_goals": recipe.train_goals,
        "max_episode_steps": recipe.max_episode_steps,
        "fingerprint": recipe.fingerprint(),
        "recipe": asdict(recipe),
        "episode_goals": [ep.goal for ep in episodes],
        "episode_noise_scales": [ep.noise_scale for ep in episodes],
        "episode_behaviours": [ep.behaviour for ep in episodes],
        "episode_returns": [ep.episode_return for ep in episodes],
        "episode_successes": successes,
        "episode_behaviour_details": [ep.detail for ep in episodes],
        **({"episode_routes": [ep.route for ep in episodes]} if recipe.routes else {}),
        "success_rate": sum(successes) / max(len(successes), 1),
        "llmdpd_version": llmdpd.__version__,
        "summary": summary,
        "algorithm_name": algorithm,
    }
    if recipe.behaviours:
        meta["behaviours"] = {
            "kinds": [kind for kind, _ in recipe.behaviours],
            "weights": [weight for _, weight in recipe.behaviours],
            "other_tasks": list(recipe.other_tasks),
            "params": BEHAVIOUR_PARAMS,
        }
    return meta


def _init_worker(counter) -> None:
    global _progress
    _progress = counter


def _tick() -> None:
    if _progress is not None:
        with _progress.get_lock():
            _progress.value += 1


def run_job(root: str, ds_id: str, recipe: CollectionRecipe, force: bool) -> tuple[str, str]:
    """Generate one dataset unless complete; returns (dataset id, "written" | "skipped")."""
    root_path = Path(root)
    lock_dir = root_path / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_dir / (ds_id.replace("/", "__") + ".lock"))):
        if not force and is_complete(root_path, ds_id, recipe):
            for _ in range(recipe.episodes):
                _tick()
            return ds_id, "skipped"
        if not force and read_metadata(root_path, ds_id) is not None:
            raise DatasetError(
                f"Dataset '{ds_id}' exists with a different recipe "
                "(seed, noise, behaviours or episode counts changed). "
                "Regenerate it with force=true, or set data.dataset_version to keep both."
            )
        episodes = collect_episodes(recipe, on_episode=_tick)
        write_episodes(root_path, ds_id, episodes, _metadata(recipe, episodes))
    return ds_id, "written"


def generate(cfg: ExperimentConfig, force: bool | None = None, progress: bool = True) -> dict[str, str]:
    """Generate every dataset the experiment needs (download the external ones that are missing); returns
    {dataset id: "written" | "skipped" | "present" | "downloaded"}."""
    force = bool(cfg.data.force if force is None else force)
    train, unseen = task_registry.split_tasks(cfg.data)
    train += task_registry.validation_tasks(cfg.data)  # their prompts are evaluated; their data kept as in the split
    root = Path(cfg.paths.data_dir)
    results: dict[str, str] = {}
    jobs = []
    for task in train + unseen:
        if task in cfg.data.minari_ids:  # an external dataset: nothing to generate, perhaps to download
            results[cfg.data.minari_ids[task]] = ensure_downloaded(root, cfg.data.minari_ids[task])
            continue
        for kind in ("mixed", "prompt"):
            jobs.append((str(root), dataset_id(cfg, task, kind), recipe_for(cfg, task, kind), force))
    jobs.sort(key=lambda job: -job[2].episodes)  # longest first keeps workers busy to the end
    total = sum(job[2].episodes for job in jobs)
    ctx = mp.get_context("spawn")  # MuJoCo and torch are not fork-safe
    counter = ctx.Value("l", 0)
    workers = max(1, min(int(cfg.data.workers), len(jobs)))
    start = time.perf_counter()
    with tqdm(total=total, desc="episodes", unit="ep", disable=not progress) as bar:
        if workers == 1:
            _init_worker(counter)
            for job in jobs:
                ds_id, status = run_job(*job)
                results[ds_id] = status
                bar.update(counter.value - bar.n)
        else:
            with ctx.Pool(workers, initializer=_init_worker, initargs=(counter,)) as pool:
                pending = [pool.apply_async(run_job, job) for job in jobs]
                while pending:
                    pending[0].wait(0.5)
                    bar.update(counter.value - bar.n)
                    for res in [r for r in pending if r.ready()]:
                        ds_id, status = res.get()  # re-raises a worker's error here
                        results[ds_id] = status
                        pending.remove(res)
                bar.update(counter.value - bar.n)
    written = sum(s == "written" for s in results.values())
    if progress:
        print(
            f"{written} dataset(s) written, {len(results) - written} already complete, under {root.resolve()} "
            f"({time.perf_counter() - start:.1f} s)"
        )
    return results
