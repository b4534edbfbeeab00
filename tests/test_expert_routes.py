"""Data whose states need two actions: push-wall's expert round either end of the wall (`data.routes`)."""

from __future__ import annotations

import numpy as np
import pytest

from llmdpd.cli.main import main as cli_main
from llmdpd.config.load import ConfigError, load_config
from llmdpd.data.collect import collect_episodes, rollout
from llmdpd.data.generate import dataset_id, generate, recipe_for
from llmdpd.data.minari_store import read_metadata
from llmdpd.envs.expert_routes import route_expert, route_names, route_taken, where_routes_part
from llmdpd.envs.metaworld import OBJECT, MetaWorldTaskEnv

TASK = "push-wall-v3"
TWO = "data.routes={push-wall-v3: {left: 0.5, right: 0.5}}"


def _push_wall(*overrides: str):
    return load_config("smoke", [f"data.train_tasks=[{TASK}]", "data.unseen_tasks=[]", *overrides])


def test_each_route_passes_its_end_of_the_wall_and_their_mean_stays_in_front_of_it():
    env = MetaWorldTaskEnv(TASK, seed=0, max_episode_steps=200)
    left, right = route_expert(TASK, "left"), route_expert(TASK, "right")
    outcomes = {}
    for name, act in (("left", left), ("right", right), ("mean", lambda obs: 0.5 * (left(obs) + right(obs)))):
        observations, _, _, success = rollout(env, 33, 200, lambda t, obs: act(obs))
        puck_x = observations[:, OBJECT][:, 0]
        outcomes[name] = (bool(success.any()), float(puck_x.min()), float(puck_x.max()))
        assert route_taken(TASK, observations) == {"mean": "none"}.get(name, name)
        parting = where_routes_part(TASK, observations)
        if name != "mean":  # held in front of the wall for a while, then past it; never at the start
            assert 3 <= parting.sum() <= 60 and not parting[:10].any() and not parting[-50:].any()
        else:  # the mean holds the puck there
            assert parting[-50:].all()
    env.close()
    # The wall spans x in [-0.02, 0.22]; the puck starts at x -0.04 in front of it.
    assert outcomes["left"][0] and outcomes["left"][1] < -0.1 and outcomes["left"][2] < 0.1
    assert outcomes["right"][0] and outcomes["right"][2] > 0.3
    assert not outcomes["mean"][0] and -0.1 < outcomes["mean"][1] and outcomes["mean"][2] < 0.1
    assert route_names(TASK) == ("left", "right") and route_names("reach-v3") == ("own",)
    with pytest.raises(ValueError, match="Task 'push-wall-v3' has no route 'up'; its routes: \\['left', 'right'\\]"):
        route_expert(TASK, "up")


def test_routes_are_drawn_per_episode_beside_the_other_draws():
    steps = "data.max_episode_steps=80"  # the routes part at the wall, some 40 steps in
    plain = collect_episodes(recipe_for(_push_wall(steps, "data.episodes_per_task=12"), TASK, "mixed"))
    routed = collect_episodes(recipe_for(_push_wall(steps, "data.episodes_per_task=12", TWO), TASK, "mixed"))
    assert {ep.route for ep in plain} == {""} and {ep.route for ep in routed} == {"left", "right"}
    for a, b in zip(plain, routed, strict=True):
        # The route has its own stream: goal, behaviour and noise are those of the same episode without routes.
        assert (a.goal, a.behaviour, a.noise_scale) == (b.goal, b.behaviour, b.noise_scale)
        np.testing.assert_array_equal(a.observations[0], b.observations[0])
        if b.route == "left":  # Meta-World's own expert: the same episode
            np.testing.assert_array_equal(a.actions, b.actions)
    assert any(not np.array_equal(a.actions, b.actions) for a, b in zip(plain, routed) if b.route == "right")


def test_routes_name_the_datasets_and_change_the_fingerprint_only_where_given(tmp_path):
    plain, routed = _push_wall(), _push_wall(TWO)
    assert dataset_id(plain, TASK, "mixed") == "metaworld/push-wall-v3/mixed-v1"
    assert dataset_id(routed, TASK, "mixed") == "metaworld/push-wall-v3/mixed-left-right-v1"
    assert dataset_id(routed, TASK, "prompt") == "metaworld/push-wall-v3/prompt-left-right-v1"
    assert dataset_id(_push_wall(TWO, "data.dataset_tag=dense"), TASK, "mixed") == (
        "metaworld/push-wall-v3/mixed-left-right-dense-v1")
    assert dataset_id(_push_wall("data.dataset_tag=dense"), TASK, "prompt") == "metaworld/push-wall-v3/prompt-dense-v1"
    with pytest.raises(ConfigError, match="data.dataset_tag must be letters and digits, got 'a-b'"):
        dataset_id(_push_wall("data.dataset_tag=a-b"), TASK, "mixed")
    one = _push_wall("data.routes={push-wall-v3: {left: 1.0, right: 0.0}}")
    assert dataset_id(one, TASK, "mixed") == "metaworld/push-wall-v3/mixed-left-v1"
    assert recipe_for(one, TASK, "mixed").routes == (("left", 1.0),)
    fingerprints = {recipe_for(c, TASK, "mixed").fingerprint() for c in (plain, routed, one)}
    assert len(fingerprints) == 3

    cfg = _push_wall(TWO, f"paths.data_dir={tmp_path}", "data.max_episode_steps=30", "data.episodes_per_task=8",
                     "data.prompt_episodes=2")
    generate(cfg, progress=False)
    meta = read_metadata(tmp_path, dataset_id(cfg, TASK, "mixed"))
    assert len(meta["episode_routes"]) == 8 and set(meta["episode_routes"]) == {"left", "right"}
    assert len(meta["episode_goals"]) == 8
    assert read_metadata(tmp_path, dataset_id(cfg, TASK, "prompt"))["recipe"]["routes"] == [["left", 0.5],
                                                                                            ["right", 0.5]]


def test_diagnose_keeps_the_states_where_the_routes_part():
    import torch

    from llmdpd.cli.diagnose import routes_parting_states
    from llmdpd.evaluation.diagnostics import validation_states

    obs, actions = validation_states(TASK, [32, 33], steps=120, every=2)
    states = {TASK: (torch.as_tensor(obs), torch.as_tensor(actions)),
              "reach-v3": (torch.zeros(3, 39), torch.zeros(3, 4))}
    parting = routes_parting_states(states)
    assert list(parting) == [TASK]
    kept, kept_actions = parting[TASK]
    assert 2 <= len(kept) < len(obs) and kept_actions.shape == (len(kept), 4)
    # There the expert carries the puck sideways (Meta-World's own route: toward -x).
    assert (kept_actions[:, 0] < -0.5).float().mean() > 0.5


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ("{push-wall-v3: {up: 1.0}}",
         "data.routes.push-wall-v3 names route 'up'; the task's routes: \\['left', 'right'\\]"),
        ("{push-v3: {left: 1.0}}", "data.routes names \\['push-v3'\\], not tasks of this experiment"),
        ("{push-wall-v3: {left: 0.0}}", "data.routes.push-wall-v3 gives no route a positive weight"),
        ("{push-wall-v3: {left: -1.0}}", "data.routes.push-wall-v3.left has a negative weight"),
    ],
)
def test_bad_routes_are_config_errors(routes, message):
    with pytest.raises(ConfigError, match=message):
        recipe_for(_push_wall(f"data.routes={routes}"), TASK, "mixed")


def test_report_gives_each_route_a_row(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["data", "two_routes/mlp_bc_prompts_rwr_wide_long_two_routes", "--report",
                  f"paths.data_dir={tmp_path}", "data.max_episode_steps=30", "data.episodes_per_task=8",
                  "data.prompt_episodes=1", "data.validation_goals=1", "data.workers=1"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "### push-wall-v3 (training task): metaworld/push-wall-v3/mixed-left-right-v1" in out
    rows = {line.split("|")[1].strip(): int(line.split("|")[2]) for line in out.splitlines()
            if line.startswith("| expert's route")}
    assert set(rows) == {"expert's route: left", "expert's route: right"} and sum(rows.values()) == 8


def test_rollout_diagnostics_tell_a_stall_at_the_wall_from_a_missed_grasp_and_a_dropped_puck():
    from llmdpd.evaluation.rollout_diagnostics import LOST_DISTANCE, rollout_diagnostics

    left, right = route_expert(TASK, "left"), route_expert(TASK, "right")
    batch = lambda act: lambda obs: np.stack([act(o) for o in obs])  # noqa: E731
    run = lambda act: rollout_diagnostics(TASK, act, [33], max_steps=150)  # noqa: E731

    expert = run(batch(left))
    assert expert["success"] == expert["route_left"] == 1.0 and expert["route_none"] == 0.0
    assert expert["closing_offset"] < 0.015 and expert["closing_offset_failed"] is None
    assert expert["lost_object"] == expert["route_none_at_wall"] == 0.0
    # The routes' mean carries the puck to the wall and holds it there: the stall of a policy that averages them.
    mean = run(batch(lambda o: 0.5 * (left(o) + right(o))))
    assert mean["route_none"] == mean["route_none_at_wall"] == 1.0 and mean["lost_object"] == 0.0
    # Closing 3 cm beside the puck's centre (the expert's approach, its target moved along x): no grasp, no route.
    beside = lambda o: left(np.concatenate([o[:4], o[4:5] + 0.03, o[5:]]))  # noqa: E731
    missed = run(batch(beside))
    assert missed["route_none"] == 1.0 and missed["route_none_at_wall"] == 0.0 and missed["success"] == 0.0
    assert missed["closing_offset"] == missed["closing_offset_failed"] and missed["closing_offset"] > 0.025
    # The expert that lets go once it has carried the puck sideways, and lifts the open hand away for good.
    gone = []

    def let_go(o):
        gone.extend([True] if o[4] < -0.06 else [])
        return np.array([0.0, -1.0, 1.0, -1.0]) if gone else left(o)

    dropped = run(batch(let_go))
    assert dropped["lost_object"] == 1.0 and dropped["route_none"] == 1.0 and dropped["route_none_at_wall"] == 0.0
    assert LOST_DISTANCE == 0.1


def test_expert_labels_keep_the_noisy_states_and_store_the_routes_expert_actions():
    steps = ("data.max_episode_steps=60", "data.episodes_per_task=4", "data.noise=[{scale: 1.0, weight: 1.0}]",
             "data.behaviours=[{kind: noisy, weight: 1.0}]")
    executed_cfg, labelled_cfg = _push_wall(TWO, *steps), _push_wall(TWO, *steps, "data.action_labels=expert")
    executed = collect_episodes(recipe_for(executed_cfg, TASK, "mixed"))
    labelled = collect_episodes(recipe_for(labelled_cfg, TASK, "mixed"))
    experts = {route: route_expert(TASK, route) for route in ("left", "right")}
    for a, b in zip(executed, labelled, strict=True):
        # The same noisy execution: states, rewards and success are the executed episode's.
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.rewards, b.rewards)
        assert a.route == b.route and (a.goal, a.noise_scale) == (b.goal, b.noise_scale)
        expert = np.clip(np.stack([experts[b.route](o) for o in b.observations[:-1]]), -1.0, 1.0)
        np.testing.assert_allclose(b.actions, expert, atol=1e-6)
        assert np.abs(a.actions - b.actions).mean() > 0.3  # noise of scale 1 was executed, not stored
    assert dataset_id(labelled_cfg, TASK, "mixed") == "metaworld/push-wall-v3/mixed-left-right-relabelled-v1"
    assert dataset_id(labelled_cfg, TASK, "prompt") == "metaworld/push-wall-v3/prompt-left-right-v1"
    assert recipe_for(labelled_cfg, TASK, "prompt").action_labels == "executed"
    assert (recipe_for(labelled_cfg, TASK, "prompt").fingerprint()
            == recipe_for(executed_cfg, TASK, "prompt").fingerprint())
    assert recipe_for(labelled_cfg, TASK, "mixed").fingerprint() != recipe_for(executed_cfg, TASK, "mixed").fingerprint()
    with pytest.raises(ConfigError, match="Invalid value for 'data.action_labels': 'teacher'"):
        _push_wall("data.action_labels=teacher")
    with pytest.raises(ConfigError, match="'data.action_labels: expert' relabels the data this project generates"):
        _push_wall("data.action_labels=expert", "data.minari_ids={push-wall-v3: mujoco/hopper/expert-v0}")
