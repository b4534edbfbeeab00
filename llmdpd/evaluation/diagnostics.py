"""Critic and acting diagnostics on the training tasks, logged to TensorBoard at every evaluation.

What they answer (each a question the method's Q half depends on):
- `diag/ranking_accuracy/sigma<s>`: on validation states, does the critic rank the scripted expert's action
  above the same action with data-like Gaussian noise of std s? (0.5 is chance.)
- `diag/selection_bias/<rule>/<task>`: the length of the mean of (chosen candidate - one plain sample) over a
  task's states: how far Q-based selection pushes actions in one direction.
- `diag/q_linear_r2`: the median over states of the share of Q's variance across a state's M candidates
  that a linear fit in the action explains. Near 1, argmax takes the most extreme candidate.
- `diag/calibration/{q_mean,mc_mean,corr}`: Q(s, c, a) against discounted Monte-Carlo returns on the
  training tasks' prompt episodes, which the policy stage never trains on. Steps within `horizon_margin`
  of an episode's (truncated) end are left out, where a Monte-Carlo sum misses most of the tail.
- `diag/condition_spread/{text,trajectory}`: how far apart the tasks' conditions lie: the std across the
  training tasks of each dimension of that half of c, averaged over dimensions. A fall during the policy
  stage means the prompt encoders' fine-tuning is erasing what tells the tasks apart.
- `action_errors` (`llmdpd diagnose`): per task, how far the policy's actions lie from the expert's on
  validation states, split into the error of the policy's mean action (bias) and its sampling spread.
- `prompt_identification` (`llmdpd diagnose`): does the policy act on its own task's prompt? Its mean action
  on one task's states under every training task's condition, against that task's expert.

Validation states come from the scripted expert with data-like noise on the validation goals (never data
goals, never seen-test goals), collected once when the callback starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from torch import Tensor

from llmdpd.envs.metaworld import MetaWorldTaskEnv, is_metaworld_task, scripted_expert
from llmdpd.evaluation.agent import UNCONDITIONAL
from llmdpd.policy.acting import select_candidates


# The plain DDPM sampler (temperature 1, the whole reverse chain), whatever the checkpoint acts with, so that the
# diagnostics' draws mean the same for every run.
DDPM_SAMPLER = {"sample_temperature": 1.0, "sample_steps": 0}


def validation_states(
    task: str, goals: Sequence[int], steps: int = 250, every: int = 10, noise: float = 0.3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Raw observations [n, 39] visited by the noisy scripted expert on `goals`, and its clean actions there."""
    env = MetaWorldTaskEnv(task, seed=seed)
    expert = scripted_expert(task)
    rng = np.random.default_rng([seed, len(task)])
    states, actions = [], []
    for goal in goals:
        obs = env.reset(int(goal))
        for t in range(steps):
            action = expert(obs)
            if t % every == 0:
                states.append(obs)
                actions.append(action)
            obs, _, _, _ = env.step(np.clip(action + rng.normal(0, noise, action.shape), -1, 1))
    env.close()
    return np.stack(states).astype(np.float32), np.clip(np.stack(actions), -1, 1).astype(np.float32)


def validation_state_sets(tasks: Sequence[str], goals: Sequence[int], seed: int = 0) -> dict[str, tuple[Tensor, Tensor]]:
    """`validation_states` of every Meta-World task among `tasks`, as tensors: task -> (obs, expert actions)."""
    out = {}
    for task in filter(is_metaworld_task, tasks):
        obs, act = validation_states(task, goals, seed=seed)
        out[task] = (torch.as_tensor(obs), torch.as_tensor(act))
    return out


@torch.no_grad()
def task_conditions(module, source: Any, tasks: Sequence[str], prompt_episode: int = 0) -> dict[str, Tensor]:
    """Each task's condition [1, C]: its first description and demonstration episode `prompt_episode` (from
    offset 0); `UNCONDITIONAL`'s is the all-null condition."""
    out = {}
    for task in tasks:
        if task == UNCONDITIONAL:
            out[task] = module.prompt_condition(None, None)
            continue
        text = source.text_embeddings(task)
        text = None if text is None else text[:1].to(module.obs_mean.device)
        out[task] = module.prompt_condition(text, source.prompt(task, prompt_episode, 0))
    return out


def condition_spread(module, conditions: dict[str, Tensor]) -> dict[str, float]:
    """Per half of c (text, trajectory): the std across tasks of each dimension, averaged over dimensions."""
    c = torch.cat(list(conditions.values())).float()
    text_dim, pooled_dim = module.conditioning.null_text.numel(), module.conditioning.pooled_dim
    halves = {"text": c[:, :text_dim], "trajectory": c[:, text_dim:pooled_dim]}
    return {name: half.std(0).mean().item() if len(c) > 1 else 0.0 for name, half in halves.items()}


def linear_r2(actions: Tensor, q: Tensor) -> Tensor:
    """Per state, R^2 of the least-squares fit q ~ w.a + b over its candidates: actions [n, M, A], q [n, M]."""
    design = torch.cat([actions, torch.ones_like(actions[..., :1])], -1).double()
    target = q.double()[..., None]
    solution = torch.linalg.lstsq(design, target).solution
    residual = (target - design @ solution).squeeze(-1)
    total = (q.double() - q.double().mean(1, keepdim=True)).pow(2).sum(1)
    return (1 - residual.pow(2).sum(1) / total.clamp_min(1e-12)).float()


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted return-to-go of every step of one episode."""
    out = np.zeros_like(rewards, dtype=np.float64)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + gamma * running
        out[t] = running
    return out


@torch.no_grad()
def critic_diagnostics(
    module, states: dict[str, tuple[Tensor, Tensor]], conditions: dict[str, Tensor], sigmas=(0.3, 1.0), seed: int = 0
) -> dict[str, float]:
    """Ranking accuracy, selection bias and Q linearity on validation states (see the module docstring)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    metrics: dict[str, float] = {}
    correct = {s: [] for s in sigmas}
    r2_all, bias = [], {"argmax": [], "softmax": []}
    for task, (obs, expert) in states.items():
        cond = conditions[task].expand(obs.shape[0], -1)
        state = module.normalize_obs(obs.to(module.obs_mean))
        expert = expert.to(state)
        q_expert = module.loss.target_q_min(state, cond, expert)
        for s in sigmas:
            noisy = (expert + s * torch.randn(expert.shape, generator=g).to(expert)).clamp(-1, 1)
            correct[s].append((q_expert > module.loss.target_q_min(state, cond, noisy)).float())
        actions, q = module.candidates(obs, cond)
        r2_all.append(linear_r2(actions, q))
        for rule in bias:
            temperature = module.cfg.policy.acting_temperature
            chosen = actions[torch.arange(len(q)), select_candidates(q, rule, temperature, generator=g)]
            shift = (chosen - actions[:, 0]).mean(0).norm().item()
            metrics[f"diag/selection_bias/{rule}/{task}"] = shift
            bias[rule].append(shift)
    for s in sigmas:
        metrics[f"diag/ranking_accuracy/sigma{s:g}"] = torch.cat(correct[s]).mean().item()
    metrics["diag/q_linear_r2"] = torch.cat(r2_all).median().item()
    for rule, values in bias.items():
        metrics[f"diag/selection_bias/{rule}_mean"] = float(np.mean(values))
    return metrics


@torch.no_grad()
def action_errors(
    module, states: dict[str, tuple[Tensor, Tensor]], conditions: dict[str, Tensor], samples: int = 16, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Per task, squared distances (summed over action dimensions, averaged over states) to the expert's action.

    - `sample`: one action as the policy acts by default (`policy.acting=sample`, sampler temperature 1);
    - `temperature0`: the deterministic reverse chain from the zero latent;
    - `one_call`: one network call from the zero latent (`policy.sample_steps=1`), the actor's own regression
      to the mean action;
    - `sample_mean`: the mean of `samples` actions, close to the policy's mean action (its bias);
    - `spread`: the samples' variance around their mean, summed over dimensions (the sampling noise).
    For one state, E||a - a*||^2 = ||mean - a*||^2 + spread: the split says whether a policy misses the
    expert because its actions are noisy or because they are centred in the wrong place. A deterministic
    policy (the MLP baseline) has spread 0 and all three errors equal.
    """
    torch.manual_seed(seed)
    out: dict[str, dict[str, float]] = {}
    for task, (obs, expert) in states.items():
        expert = expert.to(module.obs_mean)
        cond = conditions[task]
        draws = sampler_draws(module, obs, cond, samples)
        mode = module.act(obs, cond, acting={"acting": "sample", "sample_temperature": 0.0, "sample_steps": 0})
        one_call = module.act(obs, cond, acting={"acting": "sample", "sample_temperature": 0.0, "sample_steps": 1})
        mean = draws.mean(1)
        out[task] = {
            "sample": (draws[:, 0] - expert).pow(2).sum(-1).mean().item(),
            "temperature0": (mode - expert).pow(2).sum(-1).mean().item(),
            "one_call": (one_call - expert).pow(2).sum(-1).mean().item(),
            "sample_mean": (mean - expert).pow(2).sum(-1).mean().item(),
            "spread": (draws - mean[:, None]).pow(2).sum(-1).mean().item(),
            "states": int(obs.shape[0]),
        }
    return out


@torch.no_grad()
def sampler_draws(module, obs: Tensor, cond: Tensor, samples: int) -> Tensor:
    """`samples` actions per state [n, samples, A] from the plain DDPM sampler (`DDPM_SAMPLER`), clipped to the
    action box as the policy acts; with action chunks, their first actions."""
    draws, _ = module.candidates(obs, cond, count=samples, score=False, acting=DDPM_SAMPLER)
    return draws[..., : module.action_dim].clamp(-1.0, 1.0)


@torch.no_grad()
def mean_action(module, obs: Tensor, cond: Tensor, samples: int) -> Tensor:
    """The mean of `samples` actions per state [n, A] (`sampler_draws`)."""
    return sampler_draws(module, obs, cond, samples).mean(1)


def squared_error(actions: Tensor, reference: Tensor) -> float:
    """Squared distance summed over action dimensions, averaged over states."""
    return (actions - reference).pow(2).sum(-1).mean().item()


@torch.no_grad()
def prompt_identification(
    module, states: dict[str, tuple[Tensor, Tensor]], conditions: dict[str, Tensor], samples: int = 8, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per task X, the error (as in `action_errors`' `sample_mean`) of the policy's mean action on X's states
    under each training task's condition, to X's expert action:

    - `own_error`: under X's own condition;
    - `other_error`: the mean under the other tasks' conditions;
    - `best_condition`: the task whose condition brings the actions nearest X's expert;
    - `identified`: 1 when that is X itself.

    A policy that reads its prompt is identified on every task, with `other_error` well above `own_error`; one
    that ignores the prompt has the two equal and is identified by chance.
    """
    torch.manual_seed(seed)
    out: dict[str, dict[str, Any]] = {}
    for task, (obs, expert) in states.items():
        expert = expert.to(module.obs_mean)
        errors = {}
        for other, cond in conditions.items():
            errors[other] = squared_error(mean_action(module, obs, cond, samples), expert)
        best = min(errors, key=errors.get)
        others = [error for other, error in errors.items() if other != task]
        out[task] = {"own_error": errors[task], "other_error": float(np.mean(others)) if others else float("nan"),
                     "identified": float(best == task), "best_condition": best}
    return out


@torch.no_grad()
def critic_calibration(
    module, episodes: dict[str, list[dict[str, np.ndarray]]], conditions: dict[str, Tensor], horizon_margin: int = 200
) -> dict[str, float]:
    """Q(s, c, a) (online critics' min) against discounted Monte-Carlo returns of held-out episodes."""
    gamma = float(module.cfg.policy.gamma)
    scale = float(module.reward_scale)
    q_all, mc_all = [], []
    for task, task_episodes in episodes.items():
        for ep in task_episodes:
            keep = max(len(ep["actions"]) - horizon_margin, 1)
            mc = discounted_returns(ep["rewards"].astype(np.float64) * scale, gamma)[:keep]
            obs = torch.as_tensor(ep["observations"][:keep]).to(module.obs_mean)
            action = torch.as_tensor(ep["actions"][:keep]).to(module.obs_mean)
            q1, q2 = module.loss.q(module.normalize_obs(obs), conditions[task].expand(keep, -1), action)
            q_all.append(torch.minimum(q1, q2).float().squeeze(-1).cpu().numpy())
            mc_all.append(mc)
    q, mc = np.concatenate(q_all), np.concatenate(mc_all)
    corr = float(np.corrcoef(q, mc)[0, 1]) if q.std() > 0 and mc.std() > 0 else float("nan")
    return {"diag/calibration/q_mean": float(q.mean()), "diag/calibration/mc_mean": float(mc.mean()),
            "diag/calibration/corr": corr}


class CriticDiagnosticsCallback(L.Callback):
    """Logs `critic_diagnostics` and `critic_calibration` every `every_n_steps` steps and at the end (rank 0).

    `source` gives each task's condition inputs (`text_embeddings`, `prompt`) and held-out episodes
    (`prompt_episodes`), as the DataModule does; `validation_goals` are the goal variations states come from.
    Ranking accuracy and selection bias need a scripted expert, so they cover the Meta-World tasks only; the
    calibration covers every task. `final_marker` is the file the run writes after its final evaluation
    (eval.json): a run continued from its final checkpoint without it was stopped in its final diagnostics
    or evaluation, and logs the diagnostics at fit end (Lightning skips on_train_end at max_steps).
    """

    def __init__(self, source: Any, tasks: Sequence[str], validation_goals: Sequence[int], every_n_steps: int,
                 seed: int = 0, final_marker: Path | None = None) -> None:
        self.final_marker = final_marker
        self._train_started = False
        self.source = source
        self.tasks = list(tasks)
        self.goals = list(validation_goals)
        self.every = int(every_n_steps)
        self.seed = seed
        self.states: dict[str, tuple[Tensor, Tensor]] | None = None
        self._done = 0
        self._last_step: int | None = None
        self.last: dict[str, float] = {}

    def run(self, trainer: L.Trainer, module) -> dict[str, float]:
        if module.critic is None or not trainer.is_global_zero or self._last_step == trainer.global_step:
            return self.last
        if self.states is None:
            self.states = validation_state_sets(self.tasks, self.goals, seed=self.seed)
        was_training = module.training
        module.eval()
        try:
            conditions = task_conditions(module, self.source, self.tasks)
            # The expert and the stored episodes give one action per state; a critic of action chunks scores
            # chunks, so its ranking and calibration are not measured.
            one_action = int(module.cfg.policy.action_horizon) == 1
            metrics = critic_diagnostics(module, self.states, conditions, seed=self.seed) if self.states and one_action else {}
            metrics.update({f"diag/condition_spread/{k}": v for k, v in condition_spread(module, conditions).items()})
            if one_action:
                episodes = {task: self.source.prompt_episodes(task) for task in self.tasks}
                metrics.update(critic_calibration(module, episodes, conditions))
        finally:
            module.train(was_training)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self.last, self._last_step = metrics, trainer.global_step
        return metrics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every > 0 and trainer.global_step // self.every > self._done:
            self._done = trainer.global_step // self.every
            self.run(trainer, pl_module)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._train_started = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._train_started = True
        self._done = trainer.global_step // self.every if self.every > 0 else 0

    def on_train_end(self, trainer, pl_module) -> None:
        self.run(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        finished = 0 < trainer.max_steps <= trainer.global_step
        if finished and not self._train_started and self.final_marker is not None and not self.final_marker.is_file():
            self.run(trainer, pl_module)
