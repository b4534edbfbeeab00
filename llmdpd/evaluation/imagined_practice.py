"""Imagined practice: reward-free practice (llmdpd/evaluation/practice.py) in a learned model of the training
data's dynamics instead of the task's own environment, so the task is never touched before it is evaluated.

From the demonstration's first observation the policy acts under each candidate's condition for `MOTION_STEPS`
steps, each step's observation predicted by a `TransitionModel` fitted on the training tasks' offline episodes
(llmdpd/world_model/), and the candidate whose imagined motion lies nearest the demonstration's is chosen
(`nearest_motion`, as for practice). What the agent reads: its training data and the task's one demonstration;
no reward, no interaction. Zero-shot, like the other prompt-only rules.

With an ensemble (`world_model.members` > 1, each member fitted from its own seed) every candidate is imagined in
every member and its distance is the members' mean, so that one fit's errors weigh less in the choice; with
`world_model.max_spread` the comparison stops where the members' imagined hand and object positions spread more
than that (`trusted_steps`), so that the choice is made on the part of the motion the models agree on.

With `world_model.adapt_steps` every member is first fine-tuned on the task's demonstration (a copy per task,
`adapt_transition_model`), with `world_model.adapt_replay` of each step's windows drawn from the training episodes
it was fitted on: still zero-shot, since the demonstration is what the agent is given.

With `world_model.object_path=demonstration` each member holds the imagined object on the path the
demonstration's object took (llmdpd/world_model/path.py), placed where the object stands at the rollout's start.

With `world_model.context=demonstration` the members read the task's demonstration in context
(llmdpd/world_model/context.py): fitted with each training task's prompt episodes beside its windows, they imagine a
new task reading its demonstration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from llmdpd.config.load import ConfigError
from llmdpd.data.generate import dataset_id
from llmdpd.envs.metaworld import HAND, OBJECT, is_metaworld_task
from llmdpd.evaluation.behaviour_retrieval import MOTION_POINTS, demonstration_observations, nearest_motion
from llmdpd.evaluation.diagnostics import task_conditions
from llmdpd.world_model.context import DemonstrationConditionedModel, TaskDemonstrations
from llmdpd.world_model.fit import (
    Episode, adapt_transition_model, cached_transition_model, imagine, measure_fit, stack_episodes,
)
from llmdpd.world_model.model import TransitionModel
from llmdpd.world_model.path import PathConstrainedModel, object_track

# What an ensemble imagines a task in: a fitted model, or one bound to the task's demonstration.
Member = TransitionModel | DemonstrationConditionedModel | PathConstrainedModel

# Member k of an ensemble is fitted from the experiment's seed + `world_model.seed_offset` + k * MEMBER_SEED_STRIDE,
# so member 1 of offset 0 is the fit of offset 100 (the `_refit` comparison's).
MEMBER_SEED_STRIDE = 100


@dataclass
class WorldModelEnsemble:
    """The transition models imagined practice rolls every candidate out in (`world_model.members`), the spread
    of their imagined positions beyond which the comparison stops (`world_model.max_spread`, m; 0: never), how
    each is adapted to a task's demonstration first (`adapt_transition_model`'s settings; steps 0: not) and whether
    the imagined object is then held on the demonstration's object path (`world_model.object_path`)."""

    models: list[Member]
    max_spread: float = 0.0
    adaptation: dict[str, Any] = field(default_factory=lambda: {"steps": 0})
    seed: int = 0
    object_path: str = "free"

    def for_demonstration(self, episode: Episode) -> list[Member]:
        """The members to imagine a task in: as fitted, or copies adapted to its demonstration `episode` (member k
        drawing its windows from seed + k * `MEMBER_SEED_STRIDE`), those fitted to read a demonstration reading this
        one, each holding the object on the demonstration's object path where `object_path` is "demonstration"."""
        models = self.models
        if self.adaptation["steps"]:
            models = [adapt_transition_model(model, episode, seed=self.seed + k * MEMBER_SEED_STRIDE,
                                             **self.adaptation) for k, model in enumerate(models)]
        models = [DemonstrationConditionedModel(model, episode["observations"])
                  if isinstance(model, TransitionModel) and model.context == "demonstration" else model
                  for model in models]
        if self.object_path == "demonstration":
            path = object_track(episode["observations"])
            models = [PathConstrainedModel(model, path) for model in models]
        return models


def training_world_models(source: Any, progress: bool = True) -> WorldModelEnsemble:
    """The `world_model.members` transition models of `source`'s training tasks' datasets (`source.cfg.world_model`,
    member k seeded by the experiment's seed + `world_model.seed_offset` + k * `MEMBER_SEED_STRIDE`), fitted or
    read from the cache, with each one's fit on held-out episodes printed."""
    cfg = source.cfg
    settings = dict(cfg.world_model)
    holdout = int(settings.pop("holdout_episodes"))
    seed = int(cfg.seed) + int(settings.pop("seed_offset"))
    members = int(settings.pop("members"))
    settings.pop("max_spread")
    object_path = str(settings.pop("object_path"))
    adaptation = {"steps": int(settings.pop("adapt_steps")), "lr": float(settings.pop("adapt_lr")),
                  "replay_share": float(settings.pop("adapt_replay")),
                  **{key: settings[key] for key in ("unroll", "sequences", "weight_decay")}}
    others = [task for task in source.train_tasks if not is_metaworld_task(task)]
    if others:
        raise ConfigError(f"eval.prompt_retrieval=imagined models Meta-World observations; '{others[0]}' is not a "
                          "Meta-World task")
    train, held_out, train_tasks, held_out_tasks = [], [], [], []
    for index, task in enumerate(source.train_tasks):
        episodes = source.data_episodes(task)
        if holdout >= len(episodes):
            raise ConfigError(f"world_model.holdout_episodes ({holdout}) leaves no episode of '{task}' to fit on")
        train += episodes[: len(episodes) - holdout]
        held_out += episodes[len(episodes) - holdout:]
        train_tasks += [index] * (len(episodes) - holdout)
        held_out_tasks += [index] * holdout
    key = {"datasets": [dataset_id(cfg, task, "mixed") for task in source.train_tasks],
           "data_dir": str(source.root.resolve()), "holdout_episodes": holdout}
    demonstrations = None
    if settings["context"] == "none" and settings["context_match"] != "object_and_hand":
        raise ConfigError("world_model.context_match applies to a model that reads a demonstration "
                          "(world_model.context=demonstration); this one reads none")
    if settings["context"] == "demonstration":
        if adaptation["steps"]:
            raise ConfigError("world_model.adapt_steps adapts models with world_model.context=none; with context "
                              "demonstration the model reads the demonstration instead")
        demonstrations = TaskDemonstrations(training_demonstrations(source), train_tasks, held_out_tasks)
        key["demonstrations"] = [dataset_id(cfg, task, "prompt") for task in source.train_tasks]
    if adaptation["steps"] and adaptation["replay_share"]:  # the episodes the fit learned from, replayed beside it
        adaptation["replay"] = stack_episodes(train)
    models = []
    for member in range(members):
        try:
            model, fit = cached_transition_model(cfg.paths.cache_dir, key, train, held_out,
                                                 seed=seed + member * MEMBER_SEED_STRIDE, progress=progress,
                                                 demonstrations=demonstrations, **settings)
        except ValueError as err:  # the fit's refusal of these settings for these episodes
            raise ConfigError(str(err)) from None
        print(f"world model {member + 1}/{members} on {len(held_out)} held-out episodes: one-step error "
              f"{fit.one_step:.3f} (no change {fit.no_change:.3f}); hand off by " + ", ".join(
                  f"{fit.hand_error[h] * 100:.1f} cm after {h} steps (travelled {fit.hand_travel[h] * 100:.1f})"
                  for h in fit.hand_error))
        models.append(model)
    return WorldModelEnsemble(models, float(cfg.world_model.max_spread), adaptation, seed, object_path)


def training_demonstrations(source: Any) -> list[torch.Tensor]:
    """Each training task's prompt episodes' observations [K, T + 1, 39]: the demonstrations a model that reads one
    is fitted beside."""
    observations = []
    for task in source.train_tasks:
        prompts = source.prompt_episodes(task)
        if not prompts:
            raise ConfigError(f"world_model.context=demonstration needs prompt episodes of '{task}'; it has none")
        observations.append(stack_episodes(prompts)[0])
    return observations


@torch.no_grad()
def imagined_rollouts(module, world_models: Sequence[Member], conditions: torch.Tensor,
                      first: np.ndarray, steps: int, acting: Mapping[str, Any] | None = None) -> np.ndarray:
    """Observations [members, n, steps + 1, 39] of one imagined episode per member and condition ([n, C]) from
    observation `first`, the policy acting for all of them in one call per step; every step acts on the first
    action of a fresh plan, as in the environment."""
    device, acting = module.obs_mean.device, dict(acting) if acting else None
    n = len(conditions)
    obs = torch.as_tensor(np.asarray(first, np.float32), device=device).expand(len(world_models) * n, -1).clone()
    world_models = [model.to(device).starting_at(obs[:n]) for model in world_models]
    conditions = conditions.repeat(len(world_models), *([1] * (conditions.dim() - 1)))
    observations = [obs]
    for _ in range(steps):
        action = module.act(obs, conditions, acting=acting).float()
        obs = torch.cat([model.step(o, a) for model, o, a in zip(world_models, obs.split(n), action.split(n))])
        observations.append(obs)
    return torch.stack(observations, 1).reshape(len(world_models), n, steps + 1, -1).cpu().numpy()


def imagined_episodes(module, ensemble: WorldModelEnsemble, source: Any, task: str,
                      candidates: Sequence[str], prompt_episode: int, acting: Mapping[str, Any] | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(demonstration [T + 1, 39], imagined episodes [members, len(candidates), T + 1, 39]): one imagined episode
    per member and candidate's condition from the demonstration's first observation, in the members as the
    ensemble adapts them to the demonstration."""
    demonstration = demonstration_observations(source, task, prompt_episode)
    conditions = task_conditions(module, source, candidates, prompt_episode)
    models = ensemble.for_demonstration(source.prompt_episodes(task)[prompt_episode])
    rollouts = imagined_rollouts(module, models, torch.cat([conditions[c] for c in candidates]),
                                 demonstration[0], len(demonstration) - 1, acting)
    return demonstration, rollouts


def member_spread(imagined: np.ndarray) -> np.ndarray:
    """Per step [T + 1], how far the members of imagined episodes [members, n, T + 1, 39] disagree: the length of
    the std across members of the hand's and of the object's position (m), averaged over the two and the n
    episodes."""
    parts = [np.linalg.norm(imagined[..., part].std(0), axis=-1) for part in (HAND, OBJECT)]
    return np.mean(parts, axis=0).mean(0)


def trusted_steps(imagined: np.ndarray, max_spread: float) -> int:
    """How many steps of imagined episodes [members, n, T + 1, 39] the comparison reads: all T with one member or
    `max_spread` 0, else those before the members' spread (`member_spread`) first exceeds `max_spread`, and never
    fewer than `MOTION_POINTS` (the motion is read at that many times)."""
    steps = imagined.shape[2] - 1
    if max_spread <= 0 or len(imagined) == 1:
        return steps
    beyond = np.flatnonzero(member_spread(imagined) > max_spread)
    return min(steps, max(MOTION_POINTS, int(beyond[0]) - 1 if len(beyond) else steps))


def imagined_choice(demonstration: np.ndarray, imagined: np.ndarray, candidates: Sequence[str], max_spread: float
                    ) -> tuple[dict[str, float], int]:
    """(each candidate's motion distance to the demonstration, the members' mean of `nearest_motion` over the
    trusted steps; the number of trusted steps) for imagined episodes [members, len(candidates), T + 1, 39]."""
    steps = trusted_steps(imagined, max_spread)
    per_member = [nearest_motion(demonstration[: steps + 1], dict(zip(candidates, member[:, : steps + 1])),
                                 scale_with_query=True) for member in imagined]
    return {c: float(np.mean([distances[c] for distances in per_member])) for c in candidates}, steps


def imagined_distances(module, ensemble: WorldModelEnsemble, source: Any, task: str,
                       candidates: Sequence[str], prompt_episode: int, acting: Mapping[str, Any] | None = None
                       ) -> dict[str, float]:
    """Each candidate's motion distance (`imagined_choice`) between its imagined episodes (`imagined_episodes`)
    and `task`'s demonstration (prompt episode `prompt_episode`)."""
    demonstration, rollouts = imagined_episodes(module, ensemble, source, task, candidates, prompt_episode, acting)
    return imagined_choice(demonstration, rollouts, candidates, ensemble.max_spread)[0]


def imagination_fidelity(module, ensemble: WorldModelEnsemble, source: Any, tasks: Sequence[str],
                         training_tasks: Sequence[str], prompt_episode: int, acting: Mapping[str, Any] | None = None,
                         env_seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per task, how far imagined practice episodes lie from the real ones (the same candidates' conditions, the
    same start; `llmdpd diagnose --imagination`): the hand's distance (m) after 50 steps and at the end
    (`MOTION_STEPS`) and the object's at the end, averaged over candidates and members, the same distances when the
    members replay the real episodes' actions open loop (`open_loop_...`, `open_loop_replay`: what of the gap is the
    model's error on those motions rather than the policy reacting to it), with how far the real episodes moved the
    object; the steps the comparison trusts (`trusted_steps`); the candidate each rule chooses (`practice_choice`,
    `imagined_choice`) and whether they agree; and how well the members (adapted to the
    demonstration where the ensemble adapts) predict the task's other prompt episodes open loop: the hand's and
    the object's distance (m) from the truth after 50 steps (`other_demonstrations_hand_50`, `..._object_50`)."""
    from llmdpd.evaluation.practice import practice_episodes

    out = {}
    for task in tasks:
        candidates = [other for other in training_tasks if other != task]
        demonstration, trajectories = practice_episodes(module, source, task, candidates, prompt_episode, acting,
                                                        env_seed)
        real = trajectories.observations
        prompts = source.prompt_episodes(task)
        models = ensemble.for_demonstration(prompts[prompt_episode])
        _, imagined = imagined_episodes(module, WorldModelEnsemble(models, ensemble.max_spread), source, task,
                                        candidates, prompt_episode, acting)
        replayed = open_loop_replay(models, real, trajectories.actions)
        last = len(demonstration) - 1

        def error(episodes: np.ndarray, step: int, part: slice) -> float:
            return float(np.linalg.norm(episodes[:, :, step, part] - real[None, :, step, part], axis=-1).mean())

        entry: dict[str, Any] = {}
        for prefix, episodes in (("", imagined), ("open_loop_", replayed)):
            entry.update({f"{prefix}hand_error_50": error(episodes, min(50, last), HAND),
                          f"{prefix}hand_error_end": error(episodes, last, HAND),
                          f"{prefix}object_error": error(episodes, last, OBJECT)})
        entry["object_moved"] = float(np.linalg.norm(real[:, last, OBJECT] - real[:, 0, OBJECT], axis=-1).mean())
        practice = nearest_motion(demonstration, dict(zip(candidates, real)), scale_with_query=True)
        imagined_scores, entry["trusted_steps"] = imagined_choice(demonstration, imagined, candidates,
                                                                  ensemble.max_spread)
        choices = {rule: min(distances, key=distances.__getitem__)
                   for rule, distances in (("practice", practice), ("imagined", imagined_scores))}
        entry.update(practice_choice=choices["practice"], imagined_choice=choices["imagined"],
                     agree=float(choices["practice"] == choices["imagined"]))
        entry.update(other_demonstrations_fit(models, prompts, prompt_episode))
        out[task] = entry
    return out


def open_loop_replay(models: Sequence[Member], observations: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """Observations [members, n, T + 1, 39] that each member predicts, open loop, for real episodes (observations
    [n, T + 1, 39], actions [n, T, 4]) from their first observations under their own actions: the model's error on
    the episodes themselves, without the policy reacting to it as in imagined practice."""
    first = torch.as_tensor(np.asarray(observations[:, 0], np.float32))
    replay = torch.as_tensor(np.asarray(actions, np.float32))

    def replayed(model: Member) -> np.ndarray:
        device = next(model.parameters()).device  # where imagined practice left it
        return imagine(model, first.to(device), replay.to(device)).cpu().numpy()

    return np.stack([replayed(model) for model in models])


def other_demonstrations_fit(models: Sequence[Member], prompts: Sequence[Episode],
                             prompt_episode: int) -> dict[str, float]:
    """How well `models` predict a task's prompt episodes other than `prompt_episode` (the one they may have been
    adapted to) open loop: the hand's and the object's distance (m) from the truth after 50 steps, averaged over
    episodes and models (`other_demonstrations_hand_50`, `other_demonstrations_object_50`), and how far the object
    truly moved in those steps (`other_demonstrations_object_travel_50`: an object error near it is an object the
    model left standing or sent elsewhere) and how far the imagined one did
    (`other_demonstrations_imagined_object_travel_50`, which tells the two apart); empty with no other episode."""
    others = [episode for k, episode in enumerate(prompts) if k != prompt_episode]
    if not others:
        return {}
    fits = [measure_fit(model, others) for model in models]
    return {f"other_demonstrations_{name}_50": float(np.mean([getattr(fit, part)["50"] for fit in fits]))
            for part, name in (("hand_error", "hand"), ("object_error", "object"), ("object_travel", "object_travel"),
                               ("imagined_object_travel", "imagined_object_travel"))}


def demonstration_fit(ensemble: WorldModelEnsemble, source: Any, tasks: Sequence[str], prompt_episode: int
                      ) -> dict[str, dict[str, float]]:
    """Per task, `other_demonstrations_fit` of the members as imagined practice would use them (adapted to the
    task's demonstration where the ensemble adapts): no policy, no environment."""
    out = {}
    for task in tasks:
        prompts = source.prompt_episodes(task)
        out[task] = other_demonstrations_fit(ensemble.for_demonstration(prompts[prompt_episode]), prompts,
                                             prompt_episode)
    return out
