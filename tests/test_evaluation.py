"""Evaluation: lock-step rollouts (memory-bounded waves), episode plans (validation and test protocols),
summaries, eval.json, agents and the training callback."""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict

from llmdpd.config.load import ConfigError
from llmdpd.config.schema import DataConfig, EvalConfig, ExperimentConfig
from llmdpd.evaluation.agent import ExpertAgent, PolicyAgent
from llmdpd.evaluation.callback import EvaluationCallback
from llmdpd.evaluation.plan import EvalEpisode, GoalLayout, plan_episodes, plan_evaluation
from llmdpd.evaluation.results import read_eval_json, scalar_metrics, summarise, write_eval_json
from llmdpd.evaluation.rollout import EpisodeResult, RolloutTiming, evaluate_episodes
from llmdpd.evaluation.rollout_diagnostics import rollout_diagnostics
from tests.expert_candidates import EXPERT_CANDIDATE, SIGNS, DemonstrationSource, SignedExpertPolicy
from tests.tiny_lightning import TinyModule

SEEN = ["reach-v3", "push-v3", "button-press-topdown-v3"]
# The scripted experts succeed within about 75 steps on the held-out goals of these tasks.
HORIZON = 120
# The default goal layout: data goals [0, 32), validation goals [32, 40), seen-test goals [40, 50).
GOALS = {"train_goals": 32, "validation_goals": 8}


def test_expert_succeeds_on_seen_tasks():
    episodes = plan_episodes(SEEN, [], episodes_per_task=3, **GOALS, seed=0)
    timing = RolloutTiming()
    results = evaluate_episodes(episodes, ExpertAgent(episodes), HORIZON, timing=timing)
    summary = summarise(results, seed=0)
    assert [r.length for r in results] == [HORIZON] * len(episodes)
    assert timing.env_steps == HORIZON * len(episodes)
    for task in SEEN:
        assert summary["tasks"][task]["success"] >= 0.8
        assert summary["tasks"][task]["return"] > 0
    assert summary["seen"]["success_mean"] >= 0.8
    assert summary["seen"]["episodes"] == 9 and summary["unseen"]["tasks"] == 0


def test_zero_policy_fails_and_rollouts_run_in_lock_step():
    episodes = plan_episodes(["reach-v3"], ["drawer-open-v3"], episodes_per_task=2, **GOALS, seed=0)
    calls = []

    def zeros(obs, live):
        calls.append((obs.shape, obs.dtype, list(live)))
        return np.zeros((len(live), 4), dtype=np.float32)

    results = evaluate_episodes(episodes, zeros, max_episode_steps=50)
    assert len(calls) == 50
    assert all(call == ((4, 39), np.float32, [0, 1, 2, 3]) for call in calls)
    reach = [r for r in results if r.task == "reach-v3"]
    assert not any(r.success or r.final_success for r in reach)
    assert [(r.task, r.split, r.goal, r.episode) for r in results] == [
        (e.task, e.split, e.goal, e.episode) for e in episodes
    ]


def test_rollout_diagnostics_tell_the_expert_from_a_policy_that_never_reaches_the_object():
    from llmdpd.envs.metaworld import scripted_expert

    expert = scripted_expert("pick-place-v3")
    ok = rollout_diagnostics("pick-place-v3", lambda obs: np.stack([expert(o) for o in obs]), [40, 41], max_steps=150)
    assert ok["episodes"] == 2 and ok["on_policy_error"] == 0.0 and ok["on_policy_error_early"] == 0.0
    assert ok["reached_object"] == ok["moved_object"] == ok["success"] == 1.0
    assert ok["goal_progress"] > 0.8 and 0 < ok["first_success_step"] < 150
    # Lifting the open hand: never near the puck, which stays where it was.
    lift = rollout_diagnostics("pick-place-v3", lambda obs: np.tile([0, 0, 1, -1], (len(obs), 1)), [40, 41],
                               episodes_per_goal=2, max_steps=60)
    assert lift["episodes"] == 4 and lift["reached_object"] == lift["moved_object"] == lift["success"] == 0.0
    assert abs(lift["goal_progress"]) < 0.05 and lift["first_success_step"] is None
    assert lift["on_policy_error"] > 0.5


def test_lockstep_episodes_keep_every_state_action_and_success_flag():
    from llmdpd.envs.metaworld import MetaWorldTaskEnv, scripted_expert
    from llmdpd.evaluation.lockstep import lockstep_episodes

    expert = scripted_expert("push-v3")
    run = lockstep_episodes("push-v3", [3, 3, 7], lambda obs: np.stack([expert(o) for o in obs]), steps=150)
    assert run.observations.shape == (3, 151, 39) and run.actions.shape == (3, 150, 4)
    assert run.success.shape == (3, 150) and run.success.dtype == bool
    env = MetaWorldTaskEnv("push-v3", seed=0)
    try:
        assert np.array_equal(run.observations[:, 0], np.stack([env.initial_observation(g) for g in (3, 3, 7)]))
    finally:
        env.close()
    # Resets and physics are deterministic: the two goal-3 episodes coincide, and goal 7's differs.
    assert np.array_equal(run.observations[0], run.observations[1])
    assert not np.array_equal(run.observations[0], run.observations[2])
    # Each action is the act function's answer to the observation before it; the expert pushes to success.
    assert np.allclose(run.actions[2, 40], expert(run.observations[2, 40]))
    assert run.success.any(1).all() and not run.success[:, 0].any()
    assert lockstep_episodes("push-v3", [3], lambda obs: obs[:, :4], steps=0).observations.shape == (1, 1, 39)


class _PromptedPolicy:
    """Two tasks whose experts push +0.5 (task a) or -0.5 (task b) on both action dimensions; the policy
    samples around +0.5 * (c_a - c_b), i.e. it reads its one-hot prompt, or around 0 when it ignores it."""

    obs_mean = torch.zeros(3)
    action_dim = 2

    def __init__(self, reads_prompt: bool) -> None:
        self.reads_prompt = reads_prompt

    def candidates(self, obs, cond, count, score, acting):
        centre = 0.5 * (cond[:, :1] - cond[:, 1:]) * float(self.reads_prompt)
        return centre.expand(len(obs), 2)[:, None, :] + 0.1 * torch.randn(len(obs), count, 2), None


def test_prompt_identification_tells_a_policy_that_reads_its_prompt_from_one_that_ignores_it():
    from llmdpd.evaluation.diagnostics import prompt_identification

    obs = torch.zeros(200, 3)
    states = {"a": (obs, torch.full((200, 2), 0.5)), "b": (obs, torch.full((200, 2), -0.5))}
    conditions = {"a": torch.tensor([[1.0, 0.0]]), "b": torch.tensor([[0.0, 1.0]])}
    reads = prompt_identification(_PromptedPolicy(True), states, conditions, samples=16)
    for task in ("a", "b"):
        assert reads[task]["identified"] == 1.0 and reads[task]["best_condition"] == task
        assert reads[task]["own_error"] < 0.01  # 16 draws of std 0.1 average out
        assert reads[task]["other_error"] == pytest.approx(2.0, abs=0.05)  # 1.0 apart on each of 2 dimensions
    ignores = prompt_identification(_PromptedPolicy(False), states, conditions, samples=16)
    for entry in ignores.values():
        assert entry["own_error"] == pytest.approx(0.5, abs=0.02) == entry["other_error"]


class _TextReadingPolicy:
    """c = [text (2) | trajectory (2)]; the policy's action is the text half, exactly; the null condition is 0."""

    obs_mean = torch.zeros(3)
    action_dim = 2

    class conditioning:
        null_text = torch.zeros(2)
        pooled_dim = 4

        @staticmethod
        def null(n: int = 1) -> torch.Tensor:
            return torch.zeros(n, 4)

    def candidates(self, obs, cond, count, score, acting):
        return cond[:, :2].expand(len(obs), 2)[:, None, :].expand(-1, count, -1), None


def test_prompt_transfer_names_the_behaviour_an_unseen_prompt_calls_up():
    from llmdpd.evaluation.prompt_transfer import prompt_transfer

    training = {"a": torch.tensor([[1.0, 0.0, 0.0, 1.0]]), "b": torch.tensor([[0.0, 1.0, 1.0, 0.0]])}
    # The unseen task's expert wants b's action, but its text lies near a's and its demonstration near b's.
    unseen = {"u": torch.tensor([[0.9, 0.1, 0.8, 0.2]])}
    states = {"u": (torch.zeros(5, 3), torch.tensor([[0.0, 1.0]]).expand(5, 2))}
    out = prompt_transfer(_TextReadingPolicy(), states, unseen, training)["u"]
    assert out["behaves_like"] == "a" and out["behaviour_gap"] == pytest.approx(0.02)
    assert out["best_training_task"] == "b" and out["best_training_error"] == 0.0
    assert out["own_error"] == pytest.approx(0.81 + 0.81) and out["null_error"] == pytest.approx(1.0)
    assert out["nearest_text"] == "a" and out["nearest_trajectory"] == "b"


class _ScoredBehaviours:
    """A critic whose advantage is the first action dimension (V = 0); identity normaliser."""

    obs_mean = torch.zeros(2)

    class normalizer:
        @staticmethod
        def obs(obs):
            return obs

    @staticmethod
    def condition_at(state, cond):
        return cond

    class loss:
        @staticmethod
        def target_q_min(obs, cond, action):
            return action[:, :1]

        @staticmethod
        def value(obs, cond):
            return torch.zeros(len(obs), 1)


def test_advantage_weights_by_behaviour_by_hand():
    from llmdpd.evaluation.advantage_weights import advantage_weights

    def episode(first_action: float, steps: int) -> dict:
        return {"observations": np.zeros((steps + 1, 2), np.float32),
                "actions": np.tile(np.float32([first_action, 0.5]), (steps, 1))}

    # Three steps of a "good" behaviour (advantage +1) and one of a "bad" one (advantage -1).
    episodes = {"t": ([episode(1.0, 3), episode(-1.0, 1)], ["good", "bad"])}
    out = advantage_weights(_ScoredBehaviours(), episodes, {"t": torch.zeros(1, 3)}, beta=1.0, advantage="raw")["t"]
    e = math.e
    assert out["weight_share/good"] == pytest.approx(3 * e / (3 * e + 1 / e))
    assert out["data_share/good"] == 0.75 and out["data_share/bad"] == 0.25
    assert out["ess"] == pytest.approx((3 * e + 1 / e) ** 2 / (4 * (3 * e**2 + e**-2)))
    weighted_first = (3 * e - 1 / e) / (3 * e + 1 / e)
    assert out["tilt/0"] == pytest.approx(weighted_first - 0.5) and out["tilt/1"] == pytest.approx(0.0, abs=1e-6)
    assert out["tilt_norm"] == pytest.approx(abs(weighted_first - 0.5))
    # The good episode's 3 steps fall in quarters 0, 1, 2; the bad episode's single step in quarter 0.
    assert out["time_share/3"] == 0.0 and out["time_share/1"] == pytest.approx(e / (3 * e + 1 / e))
    # Advantages of +-0.1 weigh the behaviours nearly evenly; standardised within the task (mean 0.05, std 0.1)
    # they become +0.5 and -1.5, as far apart as +-1.
    small = {"t": ([episode(0.1, 3), episode(-0.1, 1)], ["good", "bad"])}
    raw = advantage_weights(_ScoredBehaviours(), small, {"t": torch.zeros(1, 3)}, beta=1.0, advantage="raw")["t"]
    task = advantage_weights(_ScoredBehaviours(), small, {"t": torch.zeros(1, 3)}, beta=1.0, advantage="task")["t"]
    assert raw["weight_share/good"] == pytest.approx(3 * math.exp(0.1) / (3 * math.exp(0.1) + math.exp(-0.1)))
    assert task["weight_share/good"] == pytest.approx(out["weight_share/good"])


def test_outcome_advantages_by_behaviour_by_hand():
    from types import SimpleNamespace

    from llmdpd.evaluation.advantage_weights import advantage_weights

    def episode(rewards: list[float]) -> dict:
        steps = len(rewards)
        return {"observations": np.zeros((steps + 1, 2), np.float32), "actions": np.zeros((steps, 2), np.float32),
                "rewards": np.float32(rewards), "terminations": np.zeros(steps, bool)}

    module = _ScoredBehaviours()
    module.reward_scale, module.cfg = torch.tensor(2.0), SimpleNamespace(
        policy=SimpleNamespace(gamma=1.0, awr_baseline="task", awr_neighbours=50))
    module.loss = SimpleNamespace(outcome_value=lambda obs, cond: torch.zeros(len(obs), 1))
    # A good episode (return 2 over two steps) and a bad one (return 0 over two steps).
    episodes = {"t": ([episode([1.0, 1.0]), episode([0.0, 0.0])], ["good", "bad"])}
    by_episode = advantage_weights(module, episodes, {"t": torch.zeros(1, 3)}, beta=1.0, advantage="episode")["t"]
    # Returns 4, 4, 0, 0 after scaling: standardised +-0.866 (mean 2, unbiased std 2.31).
    z = 2.0 / math.sqrt(16 / 3)
    assert by_episode["weight_share/good"] == pytest.approx(math.exp(z) / (math.exp(z) + math.exp(-z)))
    # Returns to go 4, 2, 0, 0: the good episode's second step weighs less than its first.
    to_go = advantage_weights(module, episodes, {"t": torch.zeros(1, 3)}, beta=1.0, advantage="return_to_go")["t"]
    g = torch.tensor([4.0, 2, 0, 0])
    w = torch.exp((g - g.mean()) / g.std())
    assert to_go["weight_share/good"] == pytest.approx(float(w[:2].sum() / w.sum()))
    assert to_go["time_share/0"] == pytest.approx(float((w[0] + w[2]) / w.sum()))
    module.loss.outcome_value = None
    with pytest.raises(ValueError, match="outcome value"):
        advantage_weights(module, episodes, {"t": torch.zeros(1, 3)}, beta=1.0, advantage="return_to_go")


def test_act_fn_of_wrong_shape_is_an_error():
    episodes = [EvalEpisode("reach-v3", "seen", 45, 0)]
    with pytest.raises(ValueError, match="shape"):
        evaluate_episodes(episodes, lambda obs, live: np.zeros((len(live), 3)), max_episode_steps=5)


def test_unknown_tasks_fail_before_any_worker_starts():
    episodes = [EvalEpisode("reach-v3", "seen", 45, 0), EvalEpisode("no-such-task-v3", "seen", 45, 0)]
    zeros = lambda obs, live: np.zeros((len(live), 4))  # noqa: E731
    with pytest.raises(ValueError, match="Unknown Meta-World task 'no-such-task-v3'"):
        evaluate_episodes(episodes, zeros, max_episode_steps=5, workers=2)


def test_workers_give_the_same_results_as_one_process():
    episodes = plan_episodes(["reach-v3"], ["drawer-open-v3"], episodes_per_task=2, **GOALS, seed=3)
    one = evaluate_episodes(episodes, ExpertAgent(episodes, noise=0.3, seed=1), 40, workers=1)
    two = evaluate_episodes(episodes, ExpertAgent(episodes, noise=0.3, seed=1), 40, workers=2)
    assert one == two
    assert len({r.episode_return for r in one}) == 4  # the episodes differ from each other


def test_plan_episodes_holds_out_training_goals_and_is_deterministic():
    plan = plan_episodes(SEEN, ["drawer-open-v3", "door-close-v3"], 12, **GOALS, seed=7)
    assert plan == plan_episodes(SEEN, ["drawer-open-v3", "door-close-v3"], 12, **GOALS, seed=7)
    assert plan != plan_episodes(SEEN, ["drawer-open-v3", "door-close-v3"], 12, **GOALS, seed=8)
    assert len(plan) == 5 * 12
    for task in SEEN:
        goals = [e.goal for e in plan if e.task == task]
        assert all(e.split == "seen" for e in plan if e.task == task)
        assert [e.episode for e in plan if e.task == task] == list(range(12))
        assert all(40 <= g < 50 for g in goals)
        assert sorted(goals[:10]) == list(range(40, 50))  # every held-out goal before any repeat
    unseen = [e.goal for e in plan if e.split == "unseen"]
    assert all(0 <= g < 50 for g in unseen) and len(set(unseen)) > 12
    # A task's goals do not depend on which other tasks are planned.
    alone = plan_episodes(["push-v3"], [], 12, **GOALS, seed=7)
    assert [e.goal for e in alone] == [e.goal for e in plan if e.task == "push-v3"]
    # Without validation goals (the layout before them), seen-test goals are [train_goals, 50).
    assert plan == plan_episodes(SEEN, ["drawer-open-v3", "door-close-v3"], 12, train_goals=40, seed=7)
    with pytest.raises(ValueError):
        plan_episodes(["reach-v3"], [], 1, train_goals=50, seed=0)


@pytest.mark.parametrize("train_goals, validation_goals", [(32, 8), (20, 15), (0, 5), (45, 0)])
def test_goal_pools_are_disjoint_and_cover_all_goals(train_goals, validation_goals):
    layout = GoalLayout(train_goals, validation_goals)
    data, validation, seen_test = set(layout.data), set(layout.validation), set(layout.seen_test)
    assert data == set(range(train_goals))
    assert validation == set(range(train_goals, train_goals + validation_goals))
    assert seen_test == set(range(train_goals + validation_goals, 50)) and seen_test
    assert not data & validation and not data & seen_test and not validation & seen_test
    assert data | validation | seen_test == set(range(50)) == set(layout.unseen)
    if validation_goals == 0:
        return
    tasks = SEEN + ["drawer-close-v3"]
    eval_cfg = EvalConfig(split="validation", episodes_per_task=2 * validation_goals + 1, seed=5)
    val_plan = plan_evaluation(eval_cfg, tasks, ["drawer-open-v3"], (train_goals, validation_goals))
    test_plan = plan_evaluation(EvalConfig(split="test", episodes_per_task=12, seed=5), tasks, ["drawer-open-v3"],
                                (train_goals, validation_goals))
    for task in tasks:
        goals = [e.goal for e in val_plan if e.task == task]
        assert set(goals) == validation  # every validation goal, each before any repeat
        assert sorted(goals[:validation_goals]) == sorted(validation)
        assert set(e.goal for e in test_plan if e.task == task) <= seen_test
    assert {e.split for e in val_plan} == {"validation"}
    assert {e.split for e in test_plan} == {"seen", "unseen"}


def test_default_data_config_layout_and_validation_plans_have_no_unseen_tasks():
    data = DataConfig()
    assert (data.train_goals, data.validation_goals) == (32, 8)
    cfg = EvalConfig(split="validation", episodes_per_task=10)
    plan = plan_evaluation(cfg, SEEN, ["drawer-open-v3", "door-close-v3"], data)
    assert len(plan) == 3 * 10 and [e.task for e in plan[::10]] == SEEN
    assert all(e.split == "validation" and 32 <= e.goal < 40 for e in plan)
    assert plan == plan_evaluation(cfg, SEEN, ["drawer-open-v3", "door-close-v3"], data)  # same seed, same plan
    assert plan != plan_evaluation(EvalConfig(split="validation", episodes_per_task=10, seed=1), SEEN, [], data)
    # The plan_episodes spelling, and the pair spelling of the goal layout, give the same plan.
    assert plan == plan_episodes(SEEN, ["drawer-open-v3"], 10, 32, cfg.seed, validation_goals=8, split="validation")
    assert plan == plan_evaluation(cfg, SEEN, [], (32, 8))
    test = plan_evaluation(EvalConfig(episodes_per_task=10), SEEN, ["drawer-open-v3"], data)
    assert [e.split for e in test] == ["seen"] * 30 + ["unseen"] * 10
    assert all(40 <= e.goal < 50 for e in test if e.split == "seen")
    # The test plan of the default layout is the plan of the layout before validation goals (train_goals 40).
    assert test == plan_evaluation(EvalConfig(episodes_per_task=10), SEEN, ["drawer-open-v3"], 40)


def test_validation_tasks_join_validation_plans_only_on_their_validation_goals():
    data = DataConfig()
    held_out = ["drawer-open-v3", "door-close-v3"]
    cfg = EvalConfig(split="validation", episodes_per_task=10)
    plan = plan_evaluation(cfg, SEEN, ["bin-picking-v3"], data, held_out_tasks=held_out)
    assert [e.split for e in plan] == ["validation"] * 30 + ["validation_unseen"] * 20
    assert [e.task for e in plan[30::10]] == held_out and all(32 <= e.goal < 40 for e in plan)
    assert plan[:30] == plan_evaluation(cfg, SEEN, [], data)  # the training tasks' episodes are unchanged
    # Without the training tasks (eval.seen false) the validation tasks alone; a test plan never has them.
    alone = plan_evaluation(EvalConfig(split="validation", episodes_per_task=10, seen=False), SEEN, [], data,
                            held_out_tasks=held_out)
    assert alone == plan[30:]
    test = plan_evaluation(EvalConfig(episodes_per_task=10), SEEN, ["bin-picking-v3"], data, held_out_tasks=held_out)
    assert {e.task for e in test} == set(SEEN) | {"bin-picking-v3"}
    with pytest.raises(ValueError, match="eval.seen is false"):
        plan_evaluation(EvalConfig(split="validation", seen=False), SEEN, [], data)
    results = [EpisodeResult(e.task, e.split, e.goal, e.episode, e.task == "door-close-v3", True, 1.0, 5)
               for e in plan]
    summary = summarise(results, seed=0)
    assert summary["eval_split"] == "validation" and summary["validation"]["tasks"] == 3
    assert summary["validation_unseen"]["tasks"] == 2 and summary["validation_unseen"]["success_mean"] == 0.5
    assert scalar_metrics(summary)["eval/validation_unseen/success_mean"] == 0.5


def test_bad_goal_settings_are_clear_errors():
    for train_goals, validation_goals in ((40, 10), (42, 8), (32, 30), (50, 0)):
        with pytest.raises(ValueError, match="leaves no seen-test goal variations"):
            plan_episodes(SEEN, [], 2, train_goals, 0, validation_goals=validation_goals)
        with pytest.raises(ValueError, match="must be below 50"):
            plan_evaluation(EvalConfig(split="validation"), SEEN, [],
                            DataConfig(train_goals=train_goals, validation_goals=validation_goals))
    with pytest.raises(ValueError, match="must not be negative"):
        GoalLayout(32, -1)
    with pytest.raises(ValueError, match="data.validation_goals is 0"):
        plan_evaluation(EvalConfig(split="validation"), SEEN, [], DataConfig(train_goals=40, validation_goals=0))
    with pytest.raises(ValueError, match="eval.seen is false"):
        plan_evaluation(EvalConfig(split="validation", seen=False), SEEN, ["drawer-open-v3"], DataConfig())
    with pytest.raises(ValueError, match="eval.split must be one of"):
        plan_evaluation(EvalConfig(split="seen"), SEEN, [], DataConfig())


def _fixed_act(obs, live):
    """Deterministic, and different per episode index: wrong `live` indices would change the results."""
    return np.sin(3.0 * obs[:, :4] + 0.1 * np.asarray(live, dtype=np.float64)[:, None])


def test_bounded_waves_give_the_results_of_one_unbounded_run():
    episodes = plan_episodes(SEEN, ["drawer-open-v3"], 3, **GOALS, seed=2)  # 12 episodes
    unbounded = evaluate_episodes(episodes, _fixed_act, 25, max_envs=256)
    calls = []

    def recording(obs, live):
        calls.append(list(live))
        return _fixed_act(obs, live)

    timing = RolloutTiming()
    bounded = evaluate_episodes(episodes, recording, 25, max_envs=5, timing=timing)
    assert bounded == unbounded
    # Waves of 5, 5 and 2 consecutive episodes, one batched call per step, `live` indexing the whole plan.
    assert calls == [[0, 1, 2, 3, 4]] * 25 + [[5, 6, 7, 8, 9]] * 25 + [[10, 11]] * 25
    assert timing.waves == 3 and timing.env_steps == 12 * 25
    expert = evaluate_episodes(episodes, ExpertAgent(episodes), 30, max_envs=4)
    assert expert == evaluate_episodes(episodes, ExpertAgent(episodes), 30)
    assert len({r.episode_return for r in expert}) == 12
    with pytest.raises(ValueError, match="max_envs"):
        evaluate_episodes(episodes, _fixed_act, 5, max_envs=0)


def test_bounded_waves_with_workers_give_the_same_results():
    episodes = plan_episodes(["reach-v3"], ["drawer-open-v3"], 3, **GOALS, seed=4)  # 6 episodes
    one = evaluate_episodes(episodes, _fixed_act, 20)
    assert evaluate_episodes(episodes, _fixed_act, 20, workers=2, max_envs=4) == one  # waves of 4 and 2


def _result(task, split, success, final, ret, episode=0):
    return EpisodeResult(task, split, 0, episode, success, final, ret, 10)


def test_summary_means_and_eval_json(tmp_path):
    results = [
        _result("a", "seen", True, True, 10.0, 0),
        _result("a", "seen", True, False, 20.0, 1),
        _result("a", "seen", False, False, 0.0, 2),
        _result("a", "seen", True, True, 30.0, 3),
        _result("b", "seen", False, False, 4.0, 0),
        _result("b", "seen", True, True, 8.0, 1),
        _result("c", "unseen", True, False, 1.0, 0),
        _result("c", "unseen", True, True, 3.0, 1),
    ]
    summary = summarise(results, seed=3, episodes_per_task=4)
    assert summary["tasks"]["a"] == {
        "split": "seen", "success": 0.75, "final_success": 0.5, "return": 15.0, "episodes": 4, "goals": [0] * 4
    }
    assert summary["tasks"]["b"]["success"] == 0.5
    # Split means weigh each task equally.
    assert summary["seen"] == {
        "success_mean": 0.625, "final_success_mean": 0.5, "return_mean": 10.5, "tasks": 2, "episodes": 6
    }
    assert summary["unseen"] == {
        "success_mean": 1.0, "final_success_mean": 0.5, "return_mean": 2.0, "tasks": 1, "episodes": 2
    }
    assert summary["validation"]["success_mean"] is None and summary["validation"]["tasks"] == 0
    assert summary["seed"] == 3 and summary["episodes_per_task"] == 4 and summary["eval_split"] == "test"
    assert set(summary) == {"tasks", "seen", "unseen", "validation", "validation_unseen", "eval_split", "seed",
                            "episodes_per_task"}

    path = tmp_path / "run" / "eval.json"
    write_eval_json(path, summary)
    assert read_eval_json(path) == summary
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]
    empty = summarise([_result("a", "seen", True, True, 1.0)], seed=0)
    assert empty["unseen"]["success_mean"] is None
    json.dumps(empty)


class _FakeSource:
    """Two paraphrases per task; prompts whose observations encode the task and prompt episode."""

    tasks = {"reach-v3": 0.0, "drawer-open-v3": 1.0}

    def __init__(self):
        self.prompt_calls = []

    def text_embeddings(self, task):
        base = self.tasks[task]
        return torch.tensor([[base, 0.0], [base, 1.0]])

    def prompt(self, task, episode, offset=0):
        self.prompt_calls.append((task, episode, offset))
        h = 3
        return TensorDict(
            {
                "prompt_obs": torch.full((h, 39), 10.0 * episode),
                "prompt_action": torch.zeros(h, 4),
                "prompt_reward": torch.zeros(h, 1),
                "prompt_position": torch.arange(h),
            },
            batch_size=[],
        )


class _FakePolicy(torch.nn.Module):
    """condition = [text_emb, mean prompt obs]; action = the condition's first entries plus obs[:, :1] * 0."""

    def __init__(self, horizon: int = 1, execute: int = 1):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.act_calls = 0
        self.horizon = horizon
        self.cfg = OmegaConf.structured(ExperimentConfig)
        self.cfg.policy.action_horizon, self.cfg.policy.action_execute = horizon, execute

    def prompt_condition(self, text_emb, prompt):
        if text_emb is None and prompt is None:  # the all-null condition
            return torch.full((1, 4), -1.0)
        n = len(text_emb) if text_emb is not None else len(prompt["prompt_obs"])
        text = text_emb if text_emb is not None else torch.full((n, 2), -2.0)  # a missing half: its null vector
        trajectory = prompt["prompt_obs"].mean(dim=(1, 2))[:, None] if prompt is not None else torch.full((n, 1), -3.0)
        return torch.cat([text, trajectory, torch.zeros(n, 1)], 1)

    def plan(self, obs_raw, cond, acting=None, noise=None):
        """Chunks whose action k is the first action plus k (so the executed position is visible)."""
        self.act_calls += 1
        assert obs_raw.dtype == torch.float32 and obs_raw.shape == (len(cond), 39)
        first = cond * 0.01 * self.scale
        return first[:, None] + torch.arange(self.horizon, dtype=first.dtype)[None, :, None]


def test_policy_agent_conditions_each_episode_once():
    episodes = plan_episodes(["reach-v3"], ["drawer-open-v3"], 3, **GOALS, seed=0)
    source, module = _FakeSource(), _FakePolicy()
    agent = PolicyAgent(module, source, episodes, prompt_episode=2)
    assert sorted(source.prompt_calls) == [("drawer-open-v3", 2, 0), ("reach-v3", 2, 0)]
    expected = torch.tensor(
        [[0, e % 2, 20, 0] for e in range(3)] + [[1, e % 2, 20, 0] for e in range(3)], dtype=torch.float32
    )
    torch.testing.assert_close(agent.condition, expected)
    actions = agent(np.zeros((2, 39), np.float32), [1, 4])
    np.testing.assert_allclose(actions, 0.01 * expected[[1, 4]].numpy(), rtol=1e-6)
    results = evaluate_episodes(episodes, agent, max_episode_steps=5)
    assert module.act_calls == 1 + 5 and len(results) == 6


def test_policy_agent_with_a_prompt_task_conditions_every_episode_on_that_task():
    episodes = plan_episodes(["reach-v3"], ["drawer-open-v3"], 3, **GOALS, seed=0)
    source = _FakeSource()
    agent = PolicyAgent(_FakePolicy(), source, episodes, prompt_episode=2, prompt_task="reach-v3")
    assert {task for task, _, _ in source.prompt_calls} == {"reach-v3"}
    own = PolicyAgent(_FakePolicy(), _FakeSource(), episodes, prompt_episode=2).condition
    torch.testing.assert_close(agent.condition, torch.cat([own[:3], own[:3]]))  # drawer-open's episodes as reach's


def test_policy_agent_shown_the_unconditional_behaviour_acts_on_the_all_null_condition():
    from llmdpd.evaluation.agent import UNCONDITIONAL

    episodes = plan_episodes(["reach-v3"], ["drawer-open-v3"], 3, **GOALS, seed=0)
    agent = PolicyAgent(_FakePolicy(), _FakeSource(), episodes, prompt_episode=2,
                        prompt_task={"drawer-open-v3": UNCONDITIONAL})
    own = PolicyAgent(_FakePolicy(), _FakeSource(), episodes, prompt_episode=2).condition
    torch.testing.assert_close(agent.condition, torch.cat([own[:3], torch.full((3, 4), -1.0)]))


@pytest.mark.parametrize("parts", ["text", "trajectory"])
def test_policy_agent_reads_one_half_of_an_unseen_tasks_prompt(parts):
    episodes = plan_episodes(["reach-v3"], ["drawer-open-v3"], 3, **GOALS, seed=0)
    agent = PolicyAgent(_FakePolicy(), _FakeSource(), episodes, prompt_episode=2, unseen_parts=parts)
    own = PolicyAgent(_FakePolicy(), _FakeSource(), episodes, prompt_episode=2).condition
    torch.testing.assert_close(agent.condition[:3], own[:3])  # training tasks read both halves
    unseen = own[3:].clone()
    if parts == "text":
        unseen[:, 2] = -3.0  # the demonstration's half is its null vector; each episode keeps its paraphrase
    else:
        unseen[:, :2] = -2.0
    torch.testing.assert_close(agent.condition[3:], unseen)


def test_behaviour_retrieval_shows_the_training_task_whose_actions_imitate_the_demonstration():
    from llmdpd.evaluation.behaviour_retrieval import retrieve_behaviours

    class Source(_FakeSource):
        tasks = {"reach-v3": 0.0, "push-v3": 0.5, "drawer-open-v3": 1.0}

        def prompt_episodes(self, task):  # the demonstration: 6 states, every action 0.4 in each dimension
            return [{"observations": np.zeros((7, 39), np.float32), "actions": np.full((6, 4), 0.4, np.float32)}]

    class Policy(torch.nn.Module):  # acts with its condition's text entry in every action dimension
        obs_mean = torch.zeros(39)

        def prompt_condition(self, text_emb, prompt):
            return text_emb

        def act(self, obs, cond, acting=None):
            return cond[:, :1].expand(len(obs), 4)

    chosen = retrieve_behaviours("demonstration", Policy(), Source(), ["drawer-open-v3", "push-v3"],
                                 ["reach-v3", "push-v3"], 0)
    assert chosen["drawer-open-v3"][0] == "push-v3"
    assert chosen["drawer-open-v3"][1] == pytest.approx({"reach-v3": 4 * 0.4**2, "push-v3": 4 * 0.1**2})
    assert chosen["push-v3"] == ("reach-v3", pytest.approx({"reach-v3": 4 * 0.4**2}))  # never itself
    # Offered too, the unconditional behaviour (here acting 0.4, the demonstration's action) is chosen.
    Policy.prompt_condition = lambda self, text_emb, prompt: torch.tensor([[0.4]]) if text_emb is None else text_emb
    chosen = retrieve_behaviours("demonstration", Policy(), Source(), ["drawer-open-v3"], ["reach-v3", "push-v3"], 0,
                                 unconditional=True)
    assert chosen["drawer-open-v3"][0] == "unconditional"
    assert chosen["drawer-open-v3"][1] == pytest.approx({"reach-v3": 4 * 0.4**2, "push-v3": 4 * 0.1**2,
                                                         "unconditional": 0.0})
    with pytest.raises(ValueError, match="'motion' does not consult the policy"):
        retrieve_behaviours("motion", Policy(), Source(), ["drawer-open-v3"], ["reach-v3"], 0, unconditional=True)
    # Offered too, a task's own prompt is kept where its behaviour imitates the demonstration best, and passed over
    # where a training task's does.
    Source.tasks["door-close-v3"] = 0.4
    Policy.prompt_condition = lambda self, text_emb, prompt: text_emb
    chosen = retrieve_behaviours("demonstration", Policy(), Source(), ["door-close-v3", "drawer-open-v3"],
                                 ["reach-v3", "push-v3"], 0, own=True)
    assert chosen["door-close-v3"][0] == "door-close-v3" and chosen["door-close-v3"][1]["door-close-v3"] == 0.0
    assert chosen["drawer-open-v3"] == ("push-v3", pytest.approx({"reach-v3": 4 * 0.4**2, "push-v3": 4 * 0.1**2,
                                                                  "drawer-open-v3": 4 * 0.6**2}))
    with pytest.raises(ValueError, match="'text' does not consult the policy"):
        retrieve_behaviours("text", Policy(), Source(), ["drawer-open-v3"], ["reach-v3"], 0, own=True)


def _moving_demonstration(hand_step, object_step, gripper=1.0, steps=250):
    """Observations of a demonstration whose hand and object move by a constant step per time step."""
    obs = np.zeros((steps + 1, 39), np.float32)
    t = np.arange(steps + 1, dtype=np.float32)[:, None]
    obs[:, 0:3] = np.array([0.0, 0.6, 0.2]) + t * np.asarray(hand_step, np.float32)
    obs[:, 3] = gripper
    obs[:, 4:7] = np.array([0.0, 0.7, 0.02]) + t * np.asarray(object_step, np.float32)
    return obs


def test_motion_descriptor_samples_the_first_steps_of_hand_object_and_gripper():
    from llmdpd.evaluation.behaviour_retrieval import MOTION_POINTS, MOTION_STEPS, motion_descriptor

    hand, obj, grip, hand_from_object = motion_descriptor(_moving_demonstration([0, 1e-3, 0], [0, 0, 2e-3], 0.5))
    last = MOTION_STEPS * 1e-3
    assert hand.shape == obj.shape == hand_from_object.shape == (3 * MOTION_POINTS,) and grip.shape == (MOTION_POINTS,)
    np.testing.assert_allclose(hand.reshape(-1, 3)[-1], [0, last, 0], atol=1e-5)  # steps past MOTION_STEPS unread
    np.testing.assert_allclose(obj.reshape(-1, 3)[-1], [0, 0, 2 * last], atol=1e-5)
    np.testing.assert_allclose(hand_from_object.reshape(-1, 3)[-1], [0, -0.1 + last, 0.18], atol=1e-5)
    np.testing.assert_allclose(grip, 0.5)


def test_motion_retrieval_chooses_the_training_demonstration_that_moves_alike():
    from llmdpd.evaluation.behaviour_retrieval import retrieve_behaviours

    motions = {  # push forward; lift; push forward harder (the unseen task); push sideways
        "push-v3": ([0, 1e-3, 0], [0, 1e-3, 0]), "pick-place-v3": ([0, 0, 1e-3], [0, 0, 1e-3]),
        "drawer-open-v3": ([0, 1.2e-3, 0], [0, 1.1e-3, 0]), "sweep-v3": ([1e-3, 0, 0], [1e-3, 0, 0]),
    }

    class Source:
        def prompt_episodes(self, task):
            return [{"observations": _moving_demonstration(*motions[task])}]

    training = ["push-v3", "pick-place-v3", "sweep-v3"]
    chosen = retrieve_behaviours("motion", None, Source(), ["drawer-open-v3", "sweep-v3"], training, 0)
    assert chosen["drawer-open-v3"][0] == "push-v3"
    distances = chosen["drawer-open-v3"][1]
    assert set(distances) == set(training) and distances["push-v3"] < min(distances["pick-place-v3"], distances["sweep-v3"])
    assert chosen["sweep-v3"][0] != "sweep-v3" and "sweep-v3" not in chosen["sweep-v3"][1]


def test_text_retrieval_chooses_the_nearest_description():
    from llmdpd.evaluation.behaviour_retrieval import retrieve_behaviours

    embeddings = {"reach-v3": [[1.0, 0.0, 0.0]], "push-v3": [[0.0, 1.0, 0.0], [0.0, 0.8, 0.2]],
                  "drawer-open-v3": [[0.1, 0.9, 0.0]]}

    class Source:
        def text_embeddings(self, task):
            return torch.tensor(embeddings[task])

    chosen, distances = retrieve_behaviours("text", None, Source(), ["drawer-open-v3"], ["reach-v3", "push-v3"],
                                            0)["drawer-open-v3"]
    query = torch.nn.functional.normalize(torch.tensor([0.1, 0.9, 0.0]), dim=0)
    push = torch.nn.functional.normalize(torch.tensor([0.0, 0.9, 0.1]), dim=0)
    assert chosen == "push-v3"
    assert distances == pytest.approx({"reach-v3": 1 - query[0].item(), "push-v3": 1 - (query @ push).item()})


def test_demonstration_goal_finds_the_variation_a_demonstration_started_from():
    from llmdpd.config.load import ConfigError
    from llmdpd.envs.metaworld import MetaWorldTaskEnv
    from llmdpd.evaluation.practice import demonstration_goal

    env = MetaWorldTaskEnv("push-v3", seed=0)
    try:
        first = env.reset(17).copy()
        assert demonstration_goal(env, first) == 17
        first[4] += 0.01  # the object a centimetre away from where any variation puts it
        with pytest.raises(ConfigError, match="starts at none of its 50 goal variations"):
            demonstration_goal(env, first)
    finally:
        env.close()


@pytest.mark.parametrize("named_goals", [[3], None, [4]], ids=["goal-named", "goal-found", "goal-misnamed"])
def test_practice_retrieval_chooses_the_behaviour_whose_own_rollout_moves_like_the_demonstration(named_goals):
    """Three candidate behaviours in push-v3's own environment: its scripted expert, the expert's actions
    reversed, and standing still; the demonstration is the expert's episode on goal 3, so practice must pick
    the expert, whose rollout from the same start retraces the demonstration exactly. The goal is the one the
    dataset names, found from the first observation where it names none, and a misnamed one is refused."""
    from llmdpd.config.load import ConfigError
    from llmdpd.envs.metaworld import MetaWorldTaskEnv, scripted_expert
    from llmdpd.evaluation.behaviour_retrieval import MOTION_STEPS, retrieve_behaviours

    expert = scripted_expert("push-v3")
    env = MetaWorldTaskEnv("push-v3", seed=0)
    demonstration = [env.reset(3)]
    for _ in range(MOTION_STEPS + 20):
        demonstration.append(env.step(expert(demonstration[-1]))[0])
    env.close()
    policy, source = SignedExpertPolicy("push-v3"), DemonstrationSource(np.stack(demonstration), named_goals)
    if named_goals == [4]:
        with pytest.raises(ConfigError, match="does not start where goal variation 4"):
            retrieve_behaviours("practice", policy, source, ["push-v3"], list(SIGNS), 0)
        return
    chosen, distances = retrieve_behaviours("practice", policy, source, ["push-v3"], list(SIGNS), 0)["push-v3"]
    assert chosen == EXPERT_CANDIDATE and set(distances) == set(SIGNS)
    assert distances[EXPERT_CANDIDATE] == pytest.approx(0.0, abs=1e-6)
    assert min(distances["reach-v3"], distances["door-open-v3"]) > 0.1


def test_the_retrieval_oracle_chooses_on_one_plan_and_scores_on_the_other():
    from llmdpd.evaluation.retrieval_oracle import retrieval_oracle

    # (prompt, seed) -> success on the one unseen task U: prompt A looks best on plan 0, B on plan 1.
    table = {("", 0): 0.1, ("A", 0): 0.8, ("B", 0): 0.2, ("", 1): 0.3, ("A", 1): 0.4, ("B", 1): 0.6}
    calls = []

    def evaluate(prompt, seed):
        calls.append((prompt, seed))
        return {"U": table[(prompt, seed - 100)]}

    result = retrieval_oracle(evaluate, ["A", "B"], seed=100)
    assert sorted(calls) == sorted((p, s + 100) for p, s in table)
    u = result["tasks"]["U"]
    assert u["own"] == pytest.approx(0.2) and u["best_task"] == "A" and u["best"] == pytest.approx(0.6)
    assert u["oracle"] == pytest.approx((0.4 + 0.2) / 2)  # A chosen on plan 0 scores 0.4 on plan 1, B 0.2 on plan 0
    assert u["by_prompt"] == pytest.approx({"A": 0.6, "B": 0.4})
    assert result["mean"] == pytest.approx({"own": 0.2, "best": 0.6, "oracle": 0.3}) and result["plans"] == [100, 101]


def test_policy_agent_executes_chunks_before_planning_again():
    episodes = plan_episodes(["reach-v3"], ["drawer-open-v3"], 2, **GOALS, seed=0)
    module = _FakePolicy(horizon=4, execute=3)
    agent = PolicyAgent(module, _FakeSource(), episodes, prompt_episode=2)
    first = 0.01 * agent.condition.numpy()
    obs = np.zeros((4, 39), np.float32)
    offsets = []
    for step in range(7):
        actions = agent(obs, [0, 1, 2, 3])
        offsets.append(np.round(actions - first, 4)[:, 0].tolist())
    # Actions 0, 1, 2 of a plan, then a new plan (action 3 is never executed); one call per plan for all episodes.
    assert [row[0] for row in offsets] == [0, 1, 2, 0, 1, 2, 0] and module.act_calls == 3
    # An episode that joins later (or whose queue runs out alone) is planned for on its own.
    agent.queue.clear()
    agent(obs[:1], [2])
    actions = agent(obs[:2], [2, 3])
    np.testing.assert_allclose(actions - first[[2, 3]], [[1] * 4, [0] * 4], atol=1e-6)
    assert module.act_calls == 5
    # `acting` overrides the trained config's execution length.
    agent = PolicyAgent(_FakePolicy(horizon=4, execute=3), _FakeSource(), episodes, 2, acting={"action_execute": 1})
    assert [float(agent(obs, [0, 1, 2, 3])[0, 0] - first[0, 0]) for _ in range(3)] == pytest.approx([0, 0, 0], abs=1e-6)
    with pytest.raises(ConfigError, match=r"'policy.action_execute': 5; expected 1 to policy.action_horizon \(4\)"):
        PolicyAgent(_FakePolicy(horizon=4), _FakeSource(), episodes, 2, acting={"action_execute": 5})


class _DriftingPolicy(_FakePolicy):
    """Plan number c (from 0) holds c * 10 + k at its action k, for every episode."""

    def plan(self, obs_raw, cond, acting=None, noise=None):
        self.act_calls += 1
        base = 10.0 * (self.act_calls - 1) + torch.arange(self.horizon, dtype=torch.float32)
        return base[None, :, None].expand(len(cond), self.horizon, 4).clone()


def test_policy_agent_averages_overlapping_chunks_with_the_ensemble():
    episodes = plan_episodes(["reach-v3"], ["drawer-open-v3"], 1, **GOALS, seed=0)
    obs = np.zeros((2, 39), np.float32)
    decay = 0.5
    agent = PolicyAgent(_DriftingPolicy(horizon=3), _FakeSource(), episodes, 0,
                        acting={"action_ensemble": True, "action_ensemble_decay": decay})
    got = [float(agent(obs, [0, 1])[1, 0]) for _ in range(5)]
    # At step t the plans made at steps t-2..t cover it (plan c gives 10 c + (t - c) there), the oldest weighted 1,
    # the next exp(-decay), the newest exp(-2 decay); a plan older than the horizon no longer counts.
    w = np.exp(-decay * np.arange(3))
    expected = [0.0, (w[0] * 1 + w[1] * 10) / w[:2].sum()]
    expected += [(w[0] * (10 * (t - 2) + 2) + w[1] * (10 * (t - 1) + 1) + w[2] * 10 * t) / w.sum() for t in (2, 3, 4)]
    assert got == pytest.approx(expected, rel=1e-6)
    # Decay 0: the plain mean of the covering plans.
    agent = PolicyAgent(_DriftingPolicy(horizon=3), _FakeSource(), episodes, 0,
                        acting={"action_ensemble": True, "action_ensemble_decay": 0.0})
    assert [float(agent(obs[:1], [0])[0, 0]) for _ in range(3)] == pytest.approx([0.0, 5.5, (2 + 11 + 20) / 3])
    with pytest.raises(ConfigError, match="'policy.action_ensemble' plans at every step; 'policy.action_execute' is 2, expected 1"):
        PolicyAgent(_DriftingPolicy(horizon=3), _FakeSource(), episodes, 0,
                    acting={"action_ensemble": True, "action_execute": 2})


def test_callback_logs_curves_and_writes_eval_json(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.custom_scalar import layout_pb2

    modes_in_rollout = []

    def make_agent(module, episodes):
        rng = np.random.default_rng(0)

        def act(obs, live):
            modes_in_rollout.append(module.training)
            return rng.uniform(-1, 1, (len(live), 4))

        return act

    cfg = EvalConfig(every_n_steps=2, episodes_per_task=2, max_episode_steps=10)
    callback = EvaluationCallback(
        make_agent, cfg, ["reach-v3"], ["drawer-open-v3"], out_path=tmp_path / "eval.json", data_cfg=DataConfig()
    )
    module = TinyModule()
    trainer = L.Trainer(
        max_steps=5, accelerator="cpu", logger=TensorBoardLogger(tmp_path, name="tb"), callbacks=[callback],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module)

    assert modes_in_rollout and not any(modes_in_rollout)
    assert all(module.modes_in_training_step) and len(module.modes_in_training_step) == 5
    (events,) = glob.glob(str(tmp_path / "tb" / "*"))
    acc = EventAccumulator(events)
    acc.Reload()
    # Periodic evaluations at steps 2 and 4, and the final one at step 5.
    for tag in ("eval/seen/reach-v3/success", "eval/unseen/drawer-open-v3/return", "eval/seen/success_mean",
                "eval/unseen/success_mean", "eval/unseen/final_success_mean", "eval/seen/return_mean"):
        assert [event.step for event in acc.Scalars(tag)] == [2, 4, 5]
    layout = layout_pb2.Layout()
    layout.ParseFromString(acc.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    assert [category.title for category in layout.category] == ["eval/seen", "eval/unseen"]

    summary = read_eval_json(tmp_path / "eval.json")
    assert summary["tasks"]["reach-v3"]["episodes"] == 2 and summary["seen"]["success_mean"] == 0.0
    returns = [event.value for event in acc.Scalars("eval/seen/return_mean")]
    assert returns[-1] == pytest.approx(summary["seen"]["return_mean"])


def test_callback_plans_validation_and_takes_the_goal_layout():
    make_agent = lambda module, episodes: None  # noqa: E731
    cfg = EvalConfig(split="validation", episodes_per_task=2)
    callback = EvaluationCallback(make_agent, cfg, ["reach-v3", "push-v3"], ["drawer-open-v3"], data_cfg=DataConfig())
    assert [(e.task, e.split) for e in callback.episodes] == [("reach-v3", "validation")] * 2 + [
        ("push-v3", "validation")] * 2
    assert all(32 <= e.goal < 40 for e in callback.episodes)
    assert list(callback.layout()) == ["eval/validation"] and callback.seen_tasks == ["reach-v3", "push-v3"]
    assert callback.unseen_tasks == [] and callback.out_path is None and callback.max_envs == 256
    same = EvaluationCallback(make_agent, cfg, ["reach-v3", "push-v3"], [], train_goals=32, validation_goals=8)
    assert same.episodes == callback.episodes
    held = EvaluationCallback(make_agent, cfg, ["reach-v3"], ["drawer-open-v3"], data_cfg=DataConfig(),
                              held_out_tasks=["push-v3"])
    assert [(e.task, e.split) for e in held.episodes] == [("reach-v3", "validation")] * 2 + [
        ("push-v3", "validation_unseen")] * 2
    assert list(held.layout()) == ["eval/validation", "eval/validation_unseen"] and held.unseen_tasks == ["push-v3"]
    # train_goals alone: the layout before validation goals, with a warning.
    with pytest.warns(UserWarning, match="pass data_cfg"):
        legacy = EvaluationCallback(make_agent, EvalConfig(), ["reach-v3"], [], 40, "eval.json")
    assert legacy.out_path.name == "eval.json" and all(40 <= e.goal < 50 for e in legacy.episodes)
    with pytest.raises(ValueError, match="contradict"):
        EvaluationCallback(make_agent, cfg, ["reach-v3"], [], train_goals=40, data_cfg=DataConfig())
    with pytest.raises(TypeError, match="data_cfg"):
        EvaluationCallback(make_agent, cfg, ["reach-v3"], [])
    with pytest.raises(ValueError, match="data.validation_goals is 0"):
        EvaluationCallback(make_agent, cfg, ["reach-v3"], [], data_cfg=DataConfig(train_goals=40, validation_goals=0))

    results = [EpisodeResult("reach-v3", "validation", 33, 0, True, True, 5.0, 10),
               EpisodeResult("push-v3", "validation", 35, 0, False, False, 1.0, 10)]
    summary = summarise(results, seed=0)
    assert summary["eval_split"] == "validation" and summary["validation"]["success_mean"] == 0.5
    assert summary["seen"]["success_mean"] is None and summary["unseen"]["success_mean"] is None
    metrics = scalar_metrics(summary)
    assert metrics["eval/validation/success_mean"] == 0.5 and metrics["eval/validation/reach-v3/success"] == 1.0
    assert not any(key.startswith(("eval/seen", "eval/unseen")) for key in metrics)


_DDP_SCRIPT = '''
import sys, json, torch, lightning as L
from llmdpd.config.schema import DataConfig, EvalConfig
from llmdpd.evaluation.agent import ExpertAgent
from llmdpd.evaluation.callback import EvaluationCallback


from tests.tiny_lightning import TinyModule as Tiny


def make_agent(module, episodes):
    with open(f"{sys.argv[1]}/rank{torch.distributed.get_rank()}.json", "w") as f:
        json.dump([[e.task, e.episode] for e in episodes], f)
    return ExpertAgent(episodes)


if __name__ == "__main__":
    cfg = EvalConfig(episodes_per_task=3, max_episode_steps=30)
    callback = EvaluationCallback(make_agent, cfg, ["reach-v3"], ["drawer-open-v3"],
                                  out_path=sys.argv[1] + "/eval.json", data_cfg=DataConfig())
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=2, strategy="ddp", logger=False, callbacks=[callback],
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Tiny())
    with open(f"{sys.argv[1]}/summary{trainer.global_rank}.json", "w") as f:
        json.dump(callback.last_summary, f)
'''


@pytest.mark.slow
def test_callback_splits_episodes_across_ddp_ranks(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "ddp_eval.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # the script imports tests.*
    subprocess.run([sys.executable, str(script), str(tmp_path)], check=True, timeout=300, capture_output=True, env=env)
    shares = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert shares == [[["reach-v3", 0], ["reach-v3", 2], ["drawer-open-v3", 1]],
                      [["reach-v3", 1], ["drawer-open-v3", 0], ["drawer-open-v3", 2]]]
    gathered = [json.loads((tmp_path / f"summary{r}.json").read_text()) for r in (0, 1)]
    assert gathered[0] == gathered[1] == read_eval_json(tmp_path / "eval.json")
    episodes = plan_episodes(["reach-v3"], ["drawer-open-v3"], 3, **GOALS, seed=EvalConfig().seed)
    alone = summarise(evaluate_episodes(episodes, ExpertAgent(episodes), 30), seed=0, episodes_per_task=3)
    assert gathered[0] == alone


def test_llmdpd_eval_names_validation_results_apart_and_rejects_bad_splits(tmp_path, capsys):
    from llmdpd.cli.evaluate import default_out_path
    from llmdpd.cli.main import main

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert default_out_path(ckpt, "test") == (tmp_path / "run" / "eval_last.json").resolve()
    assert default_out_path(ckpt, "validation") == (tmp_path / "run" / "eval_last_validation.json").resolve()
    for overrides, message in (
        (["eval.split=validation", "data.validation_goals=0"], "data.validation_goals is 0"),
        (["data.train_goals=45", "data.validation_goals=5"], "leaves no seen-test goal variations"),
        (["eval.split=everything"], "Invalid value for 'eval.split'"),
        (["eval.split=validation", "eval.seen=false"], "eval.seen is false"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["eval", "smoke", f"ckpt={ckpt}", f"paths.runs_dir={tmp_path}", *overrides])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_retrieval_rules_are_scored_on_the_oracle_table():
    from llmdpd.evaluation.retrieval_oracle import score_rules

    oracle = {"tasks": {"U": {"best_task": "A", "by_prompt": {"A": 0.8, "B": 0.2}},
                        "V": {"best_task": "B", "by_prompt": {"A": 0.0, "B": 0.4}}}}
    scored = score_rules(oracle, {"right": {"U": "A", "V": "B"}, "wrong": {"U": "B", "V": "A"}})
    assert scored["right"]["success"] == pytest.approx(0.6) and scored["right"]["best_task_picks"] == 2
    assert scored["wrong"]["success"] == pytest.approx(0.1) and scored["wrong"]["best_task_picks"] == 0
    assert scored["wrong"]["choices"] == {"U": "B", "V": "A"}


def test_distilled_practice_ranker_learns_which_signal_predicts_practice():
    """Twelve tasks whose practice distance follows their object-motion signal (and nothing else) up to noise: the
    ranker puts its weight there, and on a new task it picks the candidate that signal names."""
    from llmdpd.evaluation.distilled_practice import SIGNALS, fit_ranker, standardised

    rng = np.random.default_rng(0)
    signals = [rng.uniform(0.1, 2.0, (9, len(SIGNALS))) for _ in range(12)]
    targets = [s[:, 1] ** 2 * rng.uniform(0.9, 1.1, len(s)) for s in signals]
    ranker = fit_ranker(signals, targets)
    assert np.argmax(np.abs(ranker.weights)) == 1 and ranker.weights[1] > 0.9
    assert np.abs(np.delete(ranker.weights, 1)).max() < 0.1
    assert ranker.held_out_regret < -1.3  # the chosen candidates are near each task's best
    new = rng.uniform(0.1, 2.0, (9, len(SIGNALS)))
    assert int(np.argmin(ranker.scores(new))) == int(np.argmin(new[:, 1]))
    z = standardised(np.array([[1.0, 3.0], [np.e, 3.0], [np.e**2, 3.0]]))
    np.testing.assert_allclose(z[:, 0], [-1.2247449, 0.0, 1.2247449], atol=1e-6)  # log, then z-scored
    np.testing.assert_allclose(z[:, 1], 0.0)  # a constant signal carries nothing
    with pytest.raises(ValueError, match="at least two training tasks"):
        fit_ranker(signals[:1], targets[:1])
