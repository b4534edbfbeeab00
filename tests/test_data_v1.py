"""Data v1: per-episode behaviours, their determinism and outcomes, v0 unchanged, metadata, `--report`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmdpd.cli.main import main as cli_main
from llmdpd.config.load import ConfigError, load_config
from llmdpd.data.collect import OTHER_TASKS, collect_episode, collect_episodes, episode_rng
from llmdpd.data.generate import dataset_id, generate, recipe_for
from llmdpd.data.minari_store import load_dataset, read_episodes, read_metadata
from llmdpd.data.report import episode_outcomes
from llmdpd.envs.metaworld import MetaWorldTaskEnv, scripted_expert

V0 = ["data.dataset_version=v0", "data.train_goals=40"]


def _only(kind: str, *overrides: str):
    """The smoke config with a single behaviour."""
    return load_config("smoke", [f"data.behaviours=[{{kind: {kind}, weight: 1}}]", *overrides])


def _v0_reference(recipe) -> list[dict]:
    """The v0 collection loop as it was before v1 (frozen copy), to check that v0 data is unchanged."""
    steps = recipe.max_episode_steps
    env = MetaWorldTaskEnv(recipe.task, seed=recipe.seed, max_episode_steps=steps)
    expert = scripted_expert(recipe.task)
    episodes = []
    for episode in range(recipe.episodes):
        rng = episode_rng(recipe.seed, recipe.task, recipe.kind, episode)
        goal = int(rng.integers(recipe.train_goals))
        weights = np.asarray(recipe.noise_weights, dtype=np.float64)
        scale = float(recipe.noise_scales[rng.choice(len(weights), p=weights / weights.sum())])
        noise = rng.normal(0.0, scale, size=(steps, 4)).astype(np.float32)
        obs = env.reset(goal)
        observations, actions, rewards, success = [obs], [], [], [False]
        for t in range(steps):
            action = np.clip(expert(obs) + noise[t], -1.0, 1.0)
            obs, reward, succeeded, _ = env.step(action)
            observations.append(obs), actions.append(action), rewards.append(reward), success.append(succeeded)
        episodes.append(dict(
            observations=np.asarray(observations, np.float32), actions=np.asarray(actions, np.float32),
            rewards=np.asarray(rewards, np.float32), success=np.asarray(success), goal=goal, scale=scale,
        ))
    env.close()
    return episodes


def test_v0_recipe_fingerprint_and_episodes_are_unchanged():
    cfg = load_config("smoke", V0)
    # Fingerprints computed with the code before v1: v0 datasets on disk stay complete and loadable.
    assert recipe_for(cfg, "reach-v3", "mixed").fingerprint() == "c83d05edc53e5417"
    assert recipe_for(cfg, "reach-v3", "prompt").fingerprint() == "508b2ace6bc289ec"
    assert recipe_for(cfg, "button-press-topdown-v3", "mixed").fingerprint() == "b73730fc26ebdc2f"
    assert recipe_for(cfg, "drawer-close-v3", "mixed").fingerprint() == "5fb1efcc83c41c64"
    # Behaviours that are noise only are v0 data too (under whatever version name).
    noise_only = load_config("smoke", ["data.train_goals=40", "data.behaviours=[{kind: noisy, weight: 1}]"])
    assert recipe_for(noise_only, "reach-v3", "mixed").fingerprint() == "c83d05edc53e5417"
    # v1 changes the mixed datasets only.
    v1 = load_config("smoke", ["data.train_goals=40"])
    assert recipe_for(v1, "reach-v3", "mixed").fingerprint() != "c83d05edc53e5417"
    assert recipe_for(v1, "reach-v3", "prompt").fingerprint() == "508b2ace6bc289ec"

    small = load_config("smoke", [*V0, "data.max_episode_steps=30", "data.episodes_per_task=6"])
    recipe = recipe_for(small, "reach-v3", "mixed")
    episodes = collect_episodes(recipe)
    assert [ep.goal for ep in episodes] == [29, 9, 23, 12, 30, 16]  # drawn by the code before v1
    assert [ep.noise_scale for ep in episodes] == [0.3, 1.0, 0.1, 0.3, 1.0, 0.1]
    assert {ep.behaviour for ep in episodes} == {"noisy"}
    for ep, ref in zip(episodes, _v0_reference(recipe), strict=True):
        assert ep.goal == ref["goal"] and ep.noise_scale == ref["scale"]
        for key in ("observations", "actions", "rewards", "success"):
            np.testing.assert_array_equal(getattr(ep, key), ref[key])


@pytest.mark.parametrize("kind", ["noisy", "wrong_goal", "other_task", "stall"])
def test_each_behaviour_is_deterministic_per_episode(kind):
    cfg = _only(kind, "data.max_episode_steps=60", "data.episodes_per_task=3")
    recipe = recipe_for(cfg, "reach-v3", "mixed")
    first = collect_episodes(recipe)
    # Episode 2 alone, in a fresh environment, is the same episode: it depends on its own seed only.
    env = MetaWorldTaskEnv("reach-v3", seed=recipe.seed, max_episode_steps=recipe.max_episode_steps)
    alone = collect_episode(env, {"": scripted_expert("reach-v3")}, recipe, 2)
    for x, y in zip(first[2:], [alone], strict=True):
        for key in ("observations", "actions", "rewards", "success"):
            np.testing.assert_array_equal(getattr(x, key), getattr(y, key))
        assert (x.goal, x.behaviour, x.detail) == (y.goal, y.behaviour, y.detail)
    assert {ep.behaviour for ep in first} == {kind}
    assert all(0 <= ep.goal < cfg.data.train_goals for ep in first)
    other_seed = collect_episodes(recipe_for(_only(kind, "data.max_episode_steps=60", "data.episodes_per_task=3",
                                                   "data.seed=1"), "reach-v3", "mixed"))
    assert not np.array_equal(first[0].actions, other_seed[0].actions)


def test_behaviours_do_what_they_say():
    steps = 60
    cfg = _only("wrong_goal", f"data.max_episode_steps={steps}", "data.episodes_per_task=3")
    wrong = collect_episodes(recipe_for(cfg, "reach-v3", "mixed"))
    for ep in wrong:
        assert ep.detail["followed_goal"] != ep.goal and 0 <= ep.detail["followed_goal"] < 32
        assert ep.noise_scale == 0.1

    cfg = _only("other_task", f"data.max_episode_steps={steps}", "data.episodes_per_task=3")
    recipe = recipe_for(cfg, "reach-v3", "mixed")
    assert "reach-v3" not in recipe.other_tasks and "drawer-close-v3" not in recipe.other_tasks  # self, unseen
    assert set(recipe.other_tasks) <= set(OTHER_TASKS)
    for ep in collect_episodes(recipe):
        assert 2 <= len(ep.detail["windows"]) <= 4
        for start, end, task in ep.detail["windows"]:
            assert task in recipe.other_tasks and 6 <= end - start <= 18 and 0 <= start < end <= steps

    stalls = collect_episodes(recipe_for(_only("stall", f"data.max_episode_steps={steps}", "data.episodes_per_task=3"),
                                         "reach-v3", "mixed"))
    for ep in stalls:
        mode = np.full(steps, "expert", dtype=object)
        for start, end, what in ep.detail["windows"]:
            assert what in ("still", "retreat")
            mode[start:end] = what  # a later window overrides an earlier one
        assert np.all(ep.actions[mode == "still"] == 0.0)
        assert (mode == "expert").sum() == 0 or np.any(ep.actions[mode == "expert"] != 0.0)


def test_wrong_goal_succeeds_less_than_low_noise_expert():
    """reach-v3, full 150-step episodes: the expert with noise 0.1 reaches; led to another goal it does not."""
    outcomes = {}
    for kind in ("noisy", "wrong_goal"):
        noise = "data.noise=[{scale: 0.1, weight: 1}]"
        cfg = _only(kind, "data.max_episode_steps=150", "data.episodes_per_task=8", noise)
        episodes = collect_episodes(recipe_for(cfg, "reach-v3", "mixed"))
        outcomes[kind] = (np.mean([ep.succeeded for ep in episodes]), np.mean([ep.episode_return for ep in episodes]))
    assert outcomes["noisy"][0] >= 7 / 8
    assert outcomes["wrong_goal"][0] <= 3 / 8
    assert outcomes["wrong_goal"][1] < outcomes["noisy"][1]


def test_unknown_behaviour_is_a_config_error():
    with pytest.raises(ConfigError, match="Unknown behaviour 'dance'"):
        recipe_for(_only("dance"), "reach-v3", "mixed")


def _one_task(root, *overrides: str):
    return load_config("smoke", [f"paths.data_dir={root}", "data.train_tasks=[reach-v3]", "data.unseen_tasks=[]",
                                 "data.max_episode_steps=50", "data.episodes_per_task=8", "data.prompt_episodes=1",
                                 *overrides])


def test_v1_metadata_holds_behaviours_returns_and_successes(tmp_path):
    cfg = _one_task(tmp_path)
    generate(cfg, progress=False)
    ds_id = dataset_id(cfg, "reach-v3", "mixed")
    assert ds_id == "metaworld/reach-v3/mixed-v1"
    meta = read_metadata(tmp_path, ds_id)
    n = cfg.data.episodes_per_task
    for key in ("episode_goals", "episode_noise_scales", "episode_behaviours", "episode_returns",
                "episode_successes", "episode_behaviour_details"):
        assert len(meta[key]) == n, key
    assert set(meta["episode_behaviours"]) <= {"noisy", "wrong_goal", "other_task", "stall"}
    assert all(0 <= g < cfg.data.train_goals for g in meta["episode_goals"])
    assert meta["behaviours"]["kinds"] == ["noisy", "wrong_goal", "other_task", "stall"]
    dataset = load_dataset(tmp_path, ds_id)
    episodes = read_episodes(dataset)
    np.testing.assert_allclose(meta["episode_returns"], [ep["rewards"].sum(dtype=np.float64) for ep in episodes])
    assert meta["episode_successes"] == [bool(ep.infos["success"].any()) for ep in dataset.iterate_episodes()]
    assert meta["success_rate"] == pytest.approx(np.mean(meta["episode_successes"]))
    prompt = read_metadata(tmp_path, dataset_id(cfg, "reach-v3", "prompt"))
    assert prompt["episode_behaviours"] == ["noisy"] and prompt["episode_noise_scales"] == [cfg.data.prompt_noise]

    # Datasets without per-episode outcomes in their metadata (written before v1) are read back for the report.
    path = tmp_path / ds_id / "data" / "metadata.json"
    stored = json.loads(path.read_text())
    for key in ("episode_behaviours", "episode_returns", "episode_successes"):
        del stored["llmdpd"][key]
    path.write_text(json.dumps(stored))
    outcomes = episode_outcomes(tmp_path, ds_id)
    np.testing.assert_allclose(outcomes["returns"], meta["episode_returns"], rtol=1e-6)
    assert outcomes["successes"] == meta["episode_successes"]


def test_report_prints_a_table_per_task_naming_each_behaviour(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["data", "smoke", "--report", f"paths.data_dir={tmp_path}", "data.max_episode_steps=50",
                  "data.episodes_per_task=4", "data.prompt_episodes=1", "data.validation_goals=2"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.count("| data | episodes | success rate | mean return |") == 3
    for task in ("reach-v3", "button-press-topdown-v3", "drawer-close-v3"):
        assert f"### {task} (" in out
    for label in ("| noisy |", "| wrong_goal |", "| other_task |", "| stall |", "| **all mixed** | 4 |",
                  "| prompt (expert, σ=0.05) | 1 |", "| expert, no noise, validation goals 32-33 | 2 |"):
        assert label in out, label
