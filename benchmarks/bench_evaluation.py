"""Evaluation: env steps/s with the policy in the loop against a scripted-expert rollout of the same tasks
and episodes (ratio), milliseconds per batched policy call, at the `metaworld` config's sizes, and the
scripted expert again with at most half the environments alive at once (memory-bounded waves)."""

from __future__ import annotations

import torch
from omegaconf import OmegaConf

from benchmarks.common import report
from llmdpd.config.load import load_config
from llmdpd.data.batch import random_batch
from llmdpd.data.keys import TEXT_EMB
from llmdpd.evaluation.agent import ExpertAgent
from llmdpd.evaluation.plan import plan_episodes
from llmdpd.evaluation.rollout import RolloutTiming, evaluate_episodes
from llmdpd.policy.module import PolicyDiffusionModule

STEPS = 100


def main() -> None:
    cfg = load_config("metaworld")
    episodes = plan_episodes(["reach-v3", "push-v3", "drawer-close-v3", "window-open-v3", "sweep-v3"],
                             ["door-close-v3", "lever-pull-v3"], 4, cfg.data.train_goals, seed=0,
                             validation_goals=cfg.data.validation_goals)
    text_dim = 576  # SmolLM2's width; the condition is computed once per episode, outside the loop
    module = PolicyDiffusionModule(39, 4, text_dim, OmegaConf.to_container(cfg)).eval()
    prompts = random_batch(len(episodes), 1, cfg.data.prompt_length, text_dim=text_dim)
    cond = module.prompt_condition(prompts[TEXT_EMB], prompts)

    def policy(obs, live):
        with torch.no_grad():
            return module.act(torch.as_tensor(obs), cond[live]).numpy()

    timings = {}
    for name, act_fn in (("scripted expert", ExpertAgent(episodes)), ("llmdpd policy", policy)):
        timing = RolloutTiming()
        evaluate_episodes(episodes, act_fn, STEPS, workers=1, timing=timing)
        timings[name] = timing
        report(f"{name}: {len(episodes)} envs in lock step", timing.steps_per_second, "env steps/s")
    ours, expert = timings["llmdpd policy"], timings["scripted expert"]
    report("ratio policy-in-the-loop / scripted expert", ours.steps_per_second / expert.steps_per_second, "x")
    calls = STEPS
    report(f"batched policy call ({len(episodes)} envs x {cfg.policy.num_candidates} candidates)",
           ours.act_seconds / calls * 1e3, "ms/call")

    bounded = RolloutTiming()
    half = max(1, len(episodes) // 2)
    evaluate_episodes(episodes, ExpertAgent(episodes), STEPS, workers=1, timing=bounded, max_envs=half)
    report(f"scripted expert, max_envs={half} ({bounded.waves} waves)", bounded.steps_per_second, "env steps/s")
