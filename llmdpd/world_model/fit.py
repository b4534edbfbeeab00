"""Fitting the transition model on the training tasks' offline episodes, once per dataset and seed.

The fit takes a few minutes on one CPU core, so the fitted model is cached under
`<paths.cache_dir>/world_models/`, keyed by the datasets, the seed and `world_model.*`: every evaluation of the
same data shares it, whichever policy it evaluates. The cache file also keeps how well the model fits the
held-out episodes (`WorldModelFit`), which `llmdpd eval` prints.

`adapt_transition_model` fine-tunes a copy of a fitted model on one episode with the same loss: an unseen task's
demonstration is the agent's one record of how the task's objects move. With the training episodes replayed beside
it, the copy learns the new object without forgetting how the hand and the known objects move.

A model that reads a demonstration in context (`context="demonstration"`, llmdpd/world_model/context.py) is fitted
with one of its task's demonstrations beside every window (`TaskDemonstrations`), drawn afresh for each window, and
measured on each held-out episode with its task's first demonstration.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from filelock import FileLock
from tqdm.auto import tqdm

from llmdpd.checkpoints import atomic_save
from llmdpd.envs.metaworld import HAND, OBJECT
from llmdpd.world_model.context import (
    DemonstrationConditionedModel, TaskDemonstrations, demonstration_context, demonstration_index,
)
from llmdpd.world_model.model import MODELLED, TransitionModel, transition_features

Episode = dict[str, np.ndarray]
# Fit settings added after models were first cached, with their defaults (see `cached_transition_model`).
LATER_DEFAULTS = {"object_frame": "absolute", "context": "none", "context_match": "object_and_hand"}
# True states whose demonstration context estimates its standardisation statistics.
CONTEXT_SAMPLES = 4096
# Open-loop horizons (steps) at which the held-out hand error is reported.
HORIZONS = (10, 50, 200)


@dataclass
class WorldModelFit:
    """How well a fitted model predicts held-out episodes: the one-step error of obs[0:7] in units of each part's
    change std, against predicting no change; the hand's distance (m) from the truth after following the
    episode's own actions open loop for each of `HORIZONS` steps, against how far the hand travelled; the same for
    the object (absent from fits cached before it was measured); and how far the imagined object travelled from its
    start (an object error near the true travel with little imagined travel is an object the model left standing)."""

    one_step: float
    no_change: float
    hand_error: dict[str, float]
    hand_travel: dict[str, float]
    object_error: dict[str, float] = field(default_factory=dict)
    object_travel: dict[str, float] = field(default_factory=dict)
    imagined_object_travel: dict[str, float] = field(default_factory=dict)


def stack_episodes(episodes: Sequence[Episode]) -> tuple[torch.Tensor, torch.Tensor]:
    """observations [E, T + 1, 39] and actions [E, T, 4] of equally long episodes (the shortest length)."""
    steps = min(len(ep["actions"]) for ep in episodes)
    obs = np.stack([np.asarray(ep["observations"][: steps + 1], np.float32) for ep in episodes])
    actions = np.stack([np.asarray(ep["actions"][:steps], np.float32) for ep in episodes])
    return torch.from_numpy(obs), torch.from_numpy(actions)


@dataclass
class WindowDemonstrations:
    """The demonstrations a contextual fit draws from for its windows: every task's demonstrations indexed
    (`demonstration_index`: keys [D, T + 1, 6], changes [D, T + 1, 3]) and, per training episode, where its task's
    demonstrations begin among them and how many there are."""

    keys: torch.Tensor
    changes: torch.Tensor
    first: torch.Tensor
    count: torch.Tensor

    @classmethod
    def of(cls, demonstrations: TaskDemonstrations) -> WindowDemonstrations:
        keys, changes = demonstration_index(demonstrations.stacked())
        counts = torch.tensor([len(part) for part in demonstrations.observations])
        starts = torch.cumsum(counts, 0) - counts
        tasks = torch.tensor(demonstrations.train_tasks)
        return cls(keys, changes, starts[tasks], counts[tasks])

    def draw(self, episode: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, changes) of one demonstration of each of `episode`'s tasks, drawn at random."""
        pick = self.first[episode] + (torch.rand(len(episode), generator=generator) * self.count[episode]).long()
        return self.keys[pick], self.changes[pick]


def fit_transition_model(train: Sequence[Episode], held_out: Sequence[Episode], width: int = 256, layers: int = 3,
                         steps: int = 4000, unroll: int = 16, sequences: int = 256, lr: float = 1e-3,
                         weight_decay: float = 1e-4, seed: int = 0, progress: bool = True,
                         object_frame: str = "absolute", context: str = "none",
                         context_match: str = "object_and_hand", demonstrations: TaskDemonstrations | None = None
                         ) -> tuple[TransitionModel, WorldModelFit]:
    """A `TransitionModel` (seeing the object in `object_frame`, reading `context` matched on `context_match`)
    fitted on `train` with the loss unrolled through its own predictions for `unroll` steps (AdamW, cosine learning
    rate), and its `WorldModelFit` on `held_out`. A model reading a demonstration needs `demonstrations` of every
    episode's task."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    obs, actions = stack_episodes(train)
    if unroll >= actions.shape[1]:
        raise ValueError(f"world_model.unroll ({unroll}) must be shorter than the episodes ({actions.shape[1]} steps)")
    if context == "demonstration" and demonstrations is None:
        raise ValueError("world_model.context=demonstration needs demonstrations of the training tasks")
    windows = WindowDemonstrations.of(demonstrations) if context == "demonstration" else None
    model = TransitionModel(width, layers, object_frame, context, context_match)
    flat_obs, flat_actions = obs[:, :-1].reshape(-1, obs.shape[-1]), actions.reshape(-1, actions.shape[-1])
    features = transition_features(flat_obs, flat_actions)
    if windows is not None:  # the context's statistics on true states, each beside a demonstration of its task
        episode = torch.randint(len(obs), (CONTEXT_SAMPLES,), generator=generator)
        step = torch.randint(actions.shape[1], (CONTEXT_SAMPLES,), generator=generator)
        contexts = demonstration_context(obs[episode, step], obs[episode, 0], *windows.draw(episode, generator),
                                         context_match)
        mean, std = torch.cat([features.mean(0), contexts.mean(0)]), torch.cat([features.std(0), contexts.std(0)])
    else:
        mean, std = features.mean(0), features.std(0)
    model.feature_mean.copy_(mean)
    model.feature_std.copy_(std + 1e-6)
    model.change_std.copy_((obs[:, 1:, MODELLED] - obs[:, :-1, MODELLED]).reshape(-1, 7).std(0) + 1e-6)
    optimizer = torch.optim.AdamW(model.parameters(), lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in tqdm(range(steps), desc="world model", unit="step", leave=False, disable=not progress):
        _descend(optimizer, _unrolled_loss(model, obs, actions, unroll, sequences, generator, windows))
        schedule.step()
    model.eval()
    if windows is None:
        return model, measure_fit(model, held_out)
    readings = demonstrations.first_of(demonstrations.held_out_tasks)
    return model, measure_fit(DemonstrationConditionedModel(model, readings), held_out)


def _unrolled_loss(model: TransitionModel, obs: torch.Tensor, actions: torch.Tensor, unroll: int, sequences: int,
                   generator: torch.Generator, windows: WindowDemonstrations | None = None) -> torch.Tensor:
    """The loss of `sequences` windows of `unroll` steps drawn from episodes `obs` [E, T + 1, 39] / `actions`
    [E, T, 4], the model following its own predictions (step k weighted 1 / k), each window beside a demonstration
    of its episode's task drawn from `windows` where the model reads one."""
    weights = 1.0 / torch.arange(1, unroll + 1, dtype=torch.float32) / unroll
    episode = torch.randint(len(obs), (sequences,), generator=generator)
    start = torch.randint(actions.shape[1] - unroll + 1, (sequences,), generator=generator)
    state, origin, loss = obs[episode, start], obs[episode, 0], 0.0
    reading = windows.draw(episode, generator) if windows is not None else None
    for k in range(unroll):
        context = (demonstration_context(state, origin, *reading, model.context_match)
                   if reading is not None else None)
        state = model.step(state, actions[episode, start + k], context)
        error = (state[:, MODELLED] - obs[episode, start + k + 1, MODELLED]) / model.change_std
        loss = loss + weights[k] * error.pow(2).mean()
    return loss


def _descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One optimiser step on `loss`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def adapt_transition_model(model: TransitionModel, episode: Episode, steps: int, lr: float, unroll: int = 16,
                           sequences: int = 256, weight_decay: float = 1e-4, seed: int = 0,
                           replay: tuple[torch.Tensor, torch.Tensor] | None = None, replay_share: float = 0.0
                           ) -> TransitionModel:
    """A copy of `model` fine-tuned for `steps` steps on one episode with the fit's unrolled loss at the constant
    rate `lr` (`model` is left as it is); with `replay` (the episodes the model was fitted on, as `stack_episodes`
    stacks them) a share `replay_share` of each step's windows is drawn from those instead, each part's loss
    weighted by its share. Its standardisation statistics are kept: one episode is too few transitions to
    estimate them, and the fit's scale is the one its weights were learned in. A model reading a demonstration
    already reads this one in context: it is not adapted."""
    if model.context != "none":
        raise ValueError("world_model.adapt_steps adapts models with world_model.context=none, not "
                         f"'{model.context}' (it reads the demonstration in context)")
    generator = torch.Generator().manual_seed(seed)
    device = model.feature_mean.device
    obs, actions = (part.to(device) for part in stack_episodes([episode]))
    # At least one window from the demonstration, whatever the rounding of the share.
    replayed = min(round(sequences * replay_share), sequences - 1) if replay is not None else 0
    if replayed:
        replay = tuple(part.to(device) for part in replay)
    with torch.inference_mode(False), torch.enable_grad():  # evaluation may run under inference mode
        adapted = TransitionModel(**model.size)
        adapted.load_state_dict({name: value.detach().clone() for name, value in model.state_dict().items()})
        adapted.to(device).train()
        optimizer = torch.optim.AdamW(adapted.parameters(), lr, weight_decay=weight_decay)
        for _ in range(steps):
            loss = _unrolled_loss(adapted, obs, actions, min(unroll, actions.shape[1]), sequences - replayed,
                                  generator) * (1 - replayed / sequences)
            if replayed:
                loss = loss + _unrolled_loss(adapted, *replay, unroll, replayed, generator) * replayed / sequences
            _descend(optimizer, loss)
    return adapted.eval()


@torch.no_grad()
def imagine(model: TransitionModel, first: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Observations [..., T + 1, 39] from `first` [..., 39] under `actions` [..., T, 4], open loop."""
    model, states = model.starting_at(first), [first]
    for k in range(actions.shape[-2]):
        states.append(model.step(states[-1], actions[..., k, :]))
    return torch.stack(states, -2)


@torch.no_grad()
def measure_fit(model: TransitionModel | DemonstrationConditionedModel, episodes: Sequence[Episode]) -> WorldModelFit:
    """`WorldModelFit` of `model` on `episodes`."""
    obs, actions = stack_episodes(episodes)
    change = obs[:, 1:, MODELLED] - obs[:, :-1, MODELLED]
    predicted = model.starting_at(obs[:, :1]).change(obs[:, :-1], actions)
    one_step = ((predicted - change) / model.change_std).pow(2).mean().item()
    no_change = (change / model.change_std).pow(2).mean().item()
    horizon = min(max(HORIZONS), actions.shape[1])
    rollout = imagine(model, obs[:, 0], actions[:, :horizon])
    at = [h for h in HORIZONS if h <= horizon]

    def at_horizons(distance: torch.Tensor) -> dict[str, float]:
        return {str(h): distance[:, h].mean().item() for h in at}

    def error_and_travel(part: slice) -> tuple[dict[str, float], dict[str, float]]:
        error = (rollout[..., part] - obs[:, : horizon + 1, part]).norm(dim=-1)
        return at_horizons(error), at_horizons((obs[:, : horizon + 1, part] - obs[:, :1, part]).norm(dim=-1))

    imagined_travel = at_horizons((rollout[..., OBJECT] - rollout[:, :1, OBJECT]).norm(dim=-1))
    return WorldModelFit(one_step, no_change, *error_and_travel(HAND), *error_and_travel(OBJECT), imagined_travel)


def cached_transition_model(cache_dir: str | Path, key: dict, train: Sequence[Episode], held_out: Sequence[Episode],
                            progress: bool = True, demonstrations: TaskDemonstrations | None = None, **fit_args
                            ) -> tuple[TransitionModel, WorldModelFit]:
    """The model fitted with `fit_args` on these episodes (and `demonstrations`, which `key` must name), from
    `<cache_dir>/world_models/<hash of key>.pt` when another run has fitted it already, else fitted and cached
    (atomically, one process fitting at a time)."""
    # Settings added after the first caches enter the key only where they differ from their default, so that the
    # models fitted before them are still found.
    keyed = {name: value for name, value in fit_args.items() if LATER_DEFAULTS.get(name, object()) != value}
    digest = hashlib.sha256(json.dumps({**key, **keyed}, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "world_models" / f"{digest}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                model = TransitionModel(**saved["size"])
                model.load_state_dict(saved["state_dict"])
                return model.eval(), WorldModelFit(**saved["fit"])
            except Exception as error:  # a cache: an unreadable file is fitted again, and says so
                print(f"world model cache {path} is unreadable ({type(error).__name__}); fitting it again")
        model, fit = fit_transition_model(train, held_out, progress=progress, demonstrations=demonstrations,
                                          **fit_args)
        atomic_save({"state_dict": model.state_dict(), "size": model.size, "fit": asdict(fit), "key": key}, path)
    return model, fit
