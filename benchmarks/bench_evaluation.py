"""Evaluation: env steps/s of lock-step rollouts on torchrl environments against a bare loop over the same
Meta-World environments (the framework's cost), in 1 and 2 processes; with the policy in the loop against the
scripted expert (ratio) for 1 and 16 candidates per state, milliseconds per batched policy call, at the
`metaworld` config's sizes; and the scripted expert with at most half the environments alive at once."""

from __future__ import annotations

import time

import numpy as np
import torch
from omegaconf import OmegaConf

from benchmarks.common import report
from llmdpd.config.load import load_config
from llmdpd.data.batch import random_batch
from llmdpd.data.keys import TEXT_EMB
from llmdpd.envs.metaworld import make_goal_env, scripted_expert
from llmdpd.evaluation.agent import ExpertAgent
from llmdpd.evaluation.plan import plan_episodes
from llmdpd.evaluation.rollout import RolloutTiming, evaluate_episodes
from llmdpd.policy.module import PolicyDiffusionModule

STEPS = 100


def bare_expert_loop(episodes, steps: int, seed: int) -> float:
    """Env steps/s of the scripted experts stepping raw Meta-World envs in a plain Python loop."""
    envs = [make_goal_env(ep.task, ep.goal, seed) for ep in episodes]
    experts = {task: scripted_expert(task) for task in {ep.task for ep in episodes}}
    obs = [env.reset()[0].astype(np.float32) for env in envs]
    start = time.perf_counter()
    for _ in range(steps):
        for i, (env, ep) in enumerate(zip(envs, episodes)):
            obs[i] = env.step(np.clip(experts[ep.task](obs[i]), -1, 1))[0].astype(np.float32)
    elapsed = time.perf_counter() - start
    for env in envs:
        env.close()
    return steps * len(envs) / elapsed


def main() -> None:
    cfg = load_config("metaworld")
    episodes = plan_episodes(["reach-v3", "push-v3", "drawer-close-v3", "window-open-v3", "sweep-v3"],
                             ["door-close-v3", "lever-pull-v3"], 4, cfg.data.train_goals, seed=0,
                             validation_goals=cfg.data.validation_goals)
    n = len(episodes)
    bare = bare_expert_loop(episodes, STEPS, cfg.data.seed)
    report(f"bare loop: scripted expert, {n} raw Meta-World envs", bare, "env steps/s")
    experts = {}
    for workers in (1, 2):
        timing = RolloutTiming()
        evaluate_episodes(episodes, ExpertAgent(episodes), STEPS, workers=workers, timing=timing)
        experts[workers] = timing
        report(f"scripted expert, {n} torchrl envs in lock step, workers={workers}", timing.steps_per_second,
               "env steps/s")
        processes = ", start processes" if workers > 1 else ""
        report(f"  setup (build {n} envs{processes}, reset)", timing.setup_seconds, "s")
    expert = experts[1]
    report("ratio torchrl envs (workers=1) / bare loop", expert.steps_per_second / bare, "x")
    report("ratio workers=2 / workers=1", experts[2].steps_per_second / expert.steps_per_second, "x")

    text_dim = 576  # SmolLM2's width; the condition is computed once per episode, outside the loop
    for candidates in (1, int(cfg.policy.num_candidates)):
        plain = OmegaConf.to_container(cfg, resolve=True)
        plain["policy"]["num_candidates"] = candidates
        module = PolicyDiffusionModule(39, 4, text_dim, plain).eval()
        prompts = random_batch(n, 1, cfg.data.prompt_length, text_dim=text_dim)
        cond = module.prompt_condition(prompts[TEXT_EMB], prompts)

        def policy(obs, live, module=module, cond=cond):
            with torch.no_grad():
                return module.act(torch.as_tensor(obs), cond[live]).numpy()

        timing = RolloutTiming()
        evaluate_episodes(episodes, policy, STEPS, workers=1, timing=timing)
        report(f"llmdpd policy in the loop, {candidates} candidate(s)", timing.steps_per_second, "env steps/s")
        report(f"  ratio policy-in-the-loop / scripted expert, {candidates} candidate(s)",
               timing.steps_per_second / expert.steps_per_second, "x", ">= 0.8" if candidates == 1 else "")
        report(f"  batched policy call ({n} envs x {candidates} candidate(s), {cfg.policy.diffusion_steps} steps)",
               timing.act_seconds / STEPS * 1e3, "ms/call")

    bounded = RolloutTiming()
    half = max(1, n // 2)
    evaluate_episodes(episodes, ExpertAgent(episodes), STEPS, workers=1, timing=bounded, max_envs=half)
    report(f"scripted expert, max_envs={half} ({bounded.waves} waves)", bounded.steps_per_second, "env steps/s")
