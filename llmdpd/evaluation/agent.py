"""Agents: act functions `act_fn(obs [n_live, obs_dim], live) -> actions [n_live, action_dim]` for
`evaluate_episodes`."""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import torch
from tensordict import TensorDict

from llmdpd.config.load import check_chunk_acting
from llmdpd.envs.metaworld import scripted_expert
from llmdpd.evaluation.plan import UNSEEN_SPLITS, EvalEpisode

# The name of the policy's unconditional behaviour where a task's prompt is named (`prompt_task`, a retrieval's
# candidates): the all-null condition, which prompt dropout trains.
UNCONDITIONAL = "unconditional"


class PromptSource(Protocol):
    """What an agent needs from the data side to condition on a task (the DataModule provides it)."""

    def text_embeddings(self, task: str) -> torch.Tensor | None:
        """[P, E]: the LM embeddings of the task's P descriptions; None when text prompts are off."""

    def prompt(self, task: str, episode: int, offset: int = 0) -> TensorDict:
        """A normalised trajectory prompt (batch_size []) from the task's prompt episode `episode`."""


class EpisodeActor:
    """Acts with a trained `PolicyDiffusionModule` in a fixed set of episodes, one batched `module.plan` call per
    step for all of them: `actor(obs [n_live, S], live) -> actions [n_live, A]`, `live` the indices (into
    `condition` [E, C]) of the episodes still running. Observations are raw; the module normalises them.
    `acting` overrides acting-time `policy.*` settings, passed to every `module.plan` call.

    What an episode carries from step to step lives here:
    - With action chunks it executes the first `policy.action_execute` actions of each plan before it asks again,
      per episode: an episode is planned for when its queue is empty, all such episodes in one call. With
      `policy.action_ensemble` it plans for every episode at every step and executes the weighted average of the
      current step's action over the plans still covering it (ACT's temporal ensembling).
    - With `policy.sample_noise: episode` the sampler's noise is drawn once per episode, here, and reused at every
      call, so that each episode follows one fixed function of the state; with `latent`, its initial latent only.
    """

    def __init__(self, module, condition: torch.Tensor, acting: Mapping[str, Any] | None = None) -> None:
        self.module = module
        # Acting-time settings (`policy.acting`, `num_candidates`, ...) that replace the trained config's.
        self.acting = dict(acting) if acting else None
        self.device = _module_device(module)
        setting = {**module.cfg.policy, **(self.acting or {})}
        self.execute = int(setting["action_execute"])
        self.ensemble = bool(setting["action_ensemble"])
        self.ensemble_decay = float(setting["action_ensemble_decay"])
        check_chunk_acting(int(module.cfg.policy.action_horizon), self.execute, self.ensemble)
        self.condition = condition
        # One draw of the sampler's noise per episode [E, M, J, A·T], or None (fresh noise at every call).
        self.noise = None
        if setting.get("sample_noise", "step") != "step":
            self.noise = module.sampler_noise(len(condition), self.acting)
        # Per episode (index into `condition`), the planned actions not yet executed [k, A]; with the ensemble, the
        # rest of every plan still covering the next step, oldest first.
        self.queue: dict[int, np.ndarray] = {}
        self.plans: dict[int, list[np.ndarray]] = {}

    def __call__(self, obs: np.ndarray, live: list[int]) -> np.ndarray:
        if self.ensemble:
            return self._ensemble_step(obs, live)
        due = [row for row, episode in enumerate(live) if len(self.queue.get(episode, ())) == 0]
        if due:
            plans = self._plan(obs[due], [live[row] for row in due])[:, : self.execute]
            for row, plan in zip(due, plans):
                self.queue[live[row]] = plan
        actions = np.stack([self.queue[episode][0] for episode in live])
        for episode in live:
            self.queue[episode] = self.queue[episode][1:]
        return actions

    def _plan(self, obs: np.ndarray, episodes: list[int]) -> np.ndarray:
        """Plans [n, T, A] for the given episodes' raw observations, in one module call."""
        with torch.no_grad():
            obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
            index = torch.as_tensor(episodes, dtype=torch.long, device=self.device)
            noise = None if self.noise is None else self.noise[index]
            plans = self.module.plan(obs_t, self.condition[index], acting=self.acting, noise=noise)
            return plans.float().cpu().numpy()

    def _ensemble_step(self, obs: np.ndarray, live: list[int]) -> np.ndarray:
        actions = []
        for episode, plan in zip(live, self._plan(obs, live)):
            plans = [rest for rest in self.plans.get(episode, []) if len(rest)] + [plan]
            weights = np.exp(-self.ensemble_decay * np.arange(len(plans)))
            actions.append(np.einsum("k,ka->a", weights / weights.sum(), np.stack([rest[0] for rest in plans])))
            self.plans[episode] = [rest[1:] for rest in plans]
        return np.stack(actions)


class PolicyAgent(EpisodeActor):
    """An `EpisodeActor` for an evaluation plan: the condition of every episode is computed once, up front.

    Episode e of a task is described by the task's paraphrase e % P, and shown trajectory prompt episode
    `prompt_episode` (offset 0) of that task, which is all an unseen task gives the agent; with `prompt_task`, that
    task's description and demonstration instead, whatever the episode's task (a mapping: per task, the task whose
    prompt it is shown; `UNCONDITIONAL`: the all-null condition). `unseen_parts` ("both", "text" or "trajectory"):
    the half of an unseen task's prompt read, the other replaced by its null vector.
    """

    def __init__(
        self,
        module,
        source: PromptSource,
        episodes: Sequence[EvalEpisode],
        prompt_episode: int = 0,
        acting: Mapping[str, Any] | None = None,
        prompt_task: str | Mapping[str, str] | None = None,
        unseen_parts: str = "both",
    ) -> None:
        self.module = module
        self.device = _module_device(module)
        with torch.no_grad():
            condition = self._conditions(source, list(episodes), prompt_episode, prompt_task, unseen_parts)
        super().__init__(module, condition, acting)

    def _conditions(self, source: PromptSource, episodes: list[EvalEpisode], prompt_episode: int,
                    prompt_task: str | Mapping[str, str] | None, unseen_parts: str) -> torch.Tensor:
        tasks = list(dict.fromkeys(ep.task for ep in episodes))
        shown = {task: prompt_task.get(task, task) if isinstance(prompt_task, Mapping) else prompt_task or task
                 for task in tasks}
        unconditional = [row for row, ep in enumerate(episodes) if shown[ep.task] == UNCONDITIONAL]
        shown = {task: task if other == UNCONDITIONAL else other for task, other in shown.items()}
        texts = {task: source.text_embeddings(shown[task]) for task in tasks}
        prompts = {task: source.prompt(shown[task], prompt_episode, 0) for task in tasks}
        text_emb = None
        if all(texts[ep.task] is not None for ep in episodes):
            text_emb = torch.stack(
                [texts[ep.task][ep.episode % len(texts[ep.task])] for ep in episodes]
            ).to(self.device)
        prompt = None
        if all(prompts[ep.task] is not None for ep in episodes):
            prompt = torch.stack([prompts[ep.task] for ep in episodes]).to(self.device)
        condition = self.module.prompt_condition(text_emb, prompt)
        unseen = [row for row, ep in enumerate(episodes) if ep.split in UNSEEN_SPLITS]
        if unseen_parts != "both" and unseen:
            text_part = text_emb[unseen] if unseen_parts == "text" and text_emb is not None else None
            trajectory_part = prompt[unseen] if unseen_parts == "trajectory" and prompt is not None else None
            part = self.module.prompt_condition(text_part, trajectory_part)
            condition[unseen] = part.expand(len(unseen), -1).to(condition.dtype)
        if unconditional:
            condition[unconditional] = self.module.prompt_condition(None, None).to(condition.dtype)
        return condition


class ExpertAgent:
    """Meta-World's scripted expert of each episode's task, optionally with Gaussian action noise."""

    def __init__(self, episodes: Sequence[EvalEpisode], noise: float = 0.0, seed: int = 0) -> None:
        self.tasks = [ep.task for ep in episodes]
        self.experts = {task: scripted_expert(task) for task in dict.fromkeys(self.tasks)}
        self.noise = noise
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: np.ndarray, live: list[int]) -> np.ndarray:
        actions = np.stack([self.experts[self.tasks[i]](o) for i, o in zip(live, obs)])
        if self.noise:
            actions = actions + self.rng.normal(0.0, self.noise, actions.shape).astype(np.float32)
        return np.clip(actions, -1.0, 1.0)


def _module_device(module) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    parameter = next(module.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
