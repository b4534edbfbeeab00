"""The transition model of imagined practice: its structure, its fit on real Meta-World episodes, its cache,
and the `imagined` retrieval rule that rolls policies out in it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmdpd.envs.metaworld import scripted_expert
from llmdpd.evaluation.lockstep import lockstep_episodes
from llmdpd.world_model.fit import cached_transition_model, fit_transition_model, imagine
from llmdpd.evaluation.imagined_practice import WorldModelEnsemble, imagined_choice, trusted_steps
from llmdpd.world_model.model import TransitionModel
from tests.expert_candidates import EXPERT_CANDIDATE, SIGNS, DemonstrationSource, SignedExpertPolicy

STEPS = 150
FIT = dict(width=64, layers=2, steps=400, unroll=8, sequences=64, lr=3e-3)


def noisy_expert_episodes(task: str, goals: list[int], noise: float, seed: int) -> list[dict]:
    """Real Meta-World episodes of the scripted expert with Gaussian action noise (one per goal)."""
    expert, rng = scripted_expert(task), np.random.default_rng(seed)

    def act(obs):
        actions = np.stack([expert(o) for o in obs])
        return np.clip(actions + noise * rng.standard_normal(actions.shape), -1, 1)

    run = lockstep_episodes(task, goals, act, steps=STEPS)
    return [{"observations": run.observations[i], "actions": run.actions[i]} for i in range(len(goals))]


@pytest.fixture(scope="module")
def push_episodes():
    train = noisy_expert_episodes("push-v3", list(range(10, 22)), noise=0.3, seed=0)
    held_out = noisy_expert_episodes("push-v3", [40, 41], noise=0.3, seed=1)
    return train, held_out


@pytest.fixture(scope="module")
def fitted(push_episodes):
    train, held_out = push_episodes
    return fit_transition_model(train, held_out, seed=0, progress=False, **FIT)


def test_a_step_predicts_hand_gripper_and_object_shifts_the_frame_and_holds_the_rest():
    model = TransitionModel(width=16, layers=1)
    obs, action = torch.randn(5, 39), torch.randn(5, 4)
    following = model.step(obs, action)
    assert following.shape == (5, 39)
    assert torch.equal(following[:, 18:36], obs[:, 0:18])  # the previous frame is the current one
    assert torch.equal(following[:, 7:18], obs[:, 7:18]) and torch.equal(following[:, 36:], obs[:, 36:])
    assert torch.allclose(following[:, 0:7], obs[:, 0:7] + model.change(obs, action))
    # Actions beyond the environment's [-1, 1] act as if clipped.
    assert torch.equal(model.change(obs, torch.full((5, 4), 3.0)), model.change(obs, torch.ones(5, 4)))
    with pytest.raises(ValueError, match="39"):
        model.step(torch.randn(2, 17), torch.randn(2, 4))


def test_the_fitted_model_predicts_held_out_push_episodes(fitted, push_episodes):
    model, fit = fitted
    _, held_out = push_episodes
    # One step: far better than predicting no change; open loop: the hand stays nearer the truth than it moved.
    assert fit.one_step < 0.3 * fit.no_change
    assert fit.hand_error["10"] < 0.5 * fit.hand_travel["10"]
    assert fit.hand_error["50"] < 0.5 * fit.hand_travel["50"]
    obs = torch.as_tensor(held_out[0]["observations"][:21])
    rollout = imagine(model, obs[0], torch.as_tensor(held_out[0]["actions"][:20]))
    assert rollout.shape == (21, 39) and torch.equal(rollout[0], obs[0])
    assert (rollout[20, :3] - obs[20, :3]).norm() < (obs[20, :3] - obs[0, :3]).norm()


def test_the_model_is_fitted_once_and_read_back_and_a_corrupt_cache_is_fitted_again(push_episodes, tmp_path,
                                                                                   monkeypatch, capsys):
    import llmdpd.world_model.fit as fit_module

    train, held_out = push_episodes
    settings = dict(FIT, steps=20)
    model, fit = cached_transition_model(tmp_path, {"data": "push"}, train, held_out, progress=False, **settings)
    [cached] = (tmp_path / "world_models").glob("*.pt")

    def no_fitting(*args, **kwargs):
        raise AssertionError("fitted again")

    monkeypatch.setattr(fit_module, "fit_transition_model", no_fitting)
    again, fit_again = cached_transition_model(tmp_path, {"data": "push"}, train, held_out, progress=False, **settings)
    assert fit_again == fit
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    # Another key is another model; a corrupt file is fitted again, with a line that says so.
    with pytest.raises(AssertionError, match="fitted again"):
        cached_transition_model(tmp_path, {"data": "reach"}, train, held_out, progress=False, **settings)
    monkeypatch.undo()
    cached.write_bytes(b"not a model")
    cached_transition_model(tmp_path, {"data": "push"}, train, held_out, progress=False, **settings)
    assert "unreadable" in capsys.readouterr().out
    assert set(torch.load(cached, weights_only=True)) == {"state_dict", "size", "fit", "key"}
    assert model.size == again.size == {"width": FIT["width"], "layers": FIT["layers"]}
    assert torch.load(cached, weights_only=True)["size"] == {"width": FIT["width"], "layers": FIT["layers"]}


def test_in_the_hand_frame_the_object_moves_the_same_wherever_hand_and_object_stand(push_episodes, tmp_path):
    """object_frame=hand: the object's predicted change is unchanged when hand and object (and the previous frame)
    are moved together, while the hand's may change; the fit still predicts held-out push episodes; its cache is
    its own, and the default frame keeps the cache key and state dict that models fitted before it had."""
    torch.manual_seed(0)
    hand_frame, absolute = TransitionModel(16, 1, "hand"), TransitionModel(16, 1)
    for model in (hand_frame, absolute):  # non-trivial standardisation, as after a fit
        model.feature_mean.normal_()
        model.feature_std.uniform_(0.5, 2.0)
    obs, action = torch.randn(6, 39), torch.randn(6, 4)
    moved = obs.clone()
    shift = torch.tensor([0.3, -0.2, 0.1])
    for part in (slice(0, 3), slice(4, 7), slice(18, 21), slice(22, 25)):
        moved[:, part] += shift
    assert torch.allclose(hand_frame.change(moved, action)[:, 4:7], hand_frame.change(obs, action)[:, 4:7], atol=1e-6)
    assert not torch.allclose(absolute.change(moved, action)[:, 4:7], absolute.change(obs, action)[:, 4:7])
    assert not torch.allclose(hand_frame.change(moved, action)[:, 0:3], hand_frame.change(obs, action)[:, 0:3])
    with pytest.raises(ValueError, match="object_frame"):
        TransitionModel(16, 1, "sideways")

    train, held_out = push_episodes
    model, fit = fit_transition_model(train, held_out, seed=0, progress=False, object_frame="hand", **FIT)
    assert model.size == {"width": FIT["width"], "layers": FIT["layers"], "object_frame": "hand"}
    assert fit.one_step < 0.3 * fit.no_change and fit.hand_error["50"] < 0.5 * fit.hand_travel["50"]
    settings = dict(FIT, steps=5)
    cached_transition_model(tmp_path, {"data": "push"}, train, held_out, progress=False, **settings)
    cached_transition_model(tmp_path, {"data": "push"}, train, held_out, progress=False, object_frame="absolute",
                            **settings)  # the default frame named: the same file
    assert len(list((tmp_path / "world_models").glob("*.pt"))) == 1
    hand_model, _ = cached_transition_model(tmp_path, {"data": "push"}, train, held_out, progress=False,
                                      object_frame="hand", **settings)
    assert len(list((tmp_path / "world_models").glob("*.pt"))) == 2 and hand_model.object_frame == "hand"
    assert {name.split(".")[0] for name in absolute.state_dict()} == {"net", "feature_mean", "feature_std",
                                                                     "change_std"}


def test_imagined_retrieval_chooses_the_behaviour_whose_imagined_rollout_moves_like_the_demonstration(fitted):
    """As practice's test, without the environment: candidates are push-v3's expert, its actions reversed, and
    standing still, rolled out in a model fitted on other goals; the demonstration is the expert on goal 3."""
    from llmdpd.evaluation.behaviour_retrieval import MOTION_STEPS, retrieve_behaviours

    model, _ = fitted
    demonstration = noisy_expert_episodes("push-v3", [3], noise=0.0, seed=0)[0]["observations"]
    policy, source = SignedExpertPolicy("push-v3"), DemonstrationSource(demonstration)
    assert MOTION_STEPS >= STEPS
    chosen, distances = retrieve_behaviours("imagined", policy, source, ["push-v3"], list(SIGNS), 0,
                                            ensemble=WorldModelEnsemble([model]))["push-v3"]
    assert chosen == EXPERT_CANDIDATE and set(distances) == set(SIGNS)
    assert distances[EXPERT_CANDIDATE] < 0.5 * min(distances["reach-v3"], distances["door-open-v3"])
    # With the puck held on the demonstration's path the expert still retraces the demonstration best.
    held, held_distances = retrieve_behaviours("imagined", policy, source, ["push-v3"], list(SIGNS), 0,
                                               ensemble=WorldModelEnsemble([model], object_path="demonstration")
                                               )["push-v3"]
    assert held == EXPERT_CANDIDATE and held_distances != distances


def test_the_training_world_model_refuses_what_it_cannot_fit_in_one_line(push_episodes, tmp_path):
    from llmdpd.config.load import ConfigError, load_config
    from llmdpd.evaluation.imagined_practice import training_world_models

    train, _ = push_episodes

    class Source:
        cfg = load_config("smoke", [f"paths.cache_dir={tmp_path}", "world_model.holdout_episodes=12"])
        root = tmp_path
        train_tasks = ["push-v3"]

        def data_episodes(self, task):
            return train

        def prompt_episodes(self, task):
            return []

    with pytest.raises(ConfigError, match=r"world_model.holdout_episodes \(12\) leaves no episode of 'push-v3'"):
        training_world_models(Source())
    Source.train_tasks = ["hopper-medium-v2"]
    with pytest.raises(ConfigError, match="'hopper-medium-v2' is not a Meta-World task"):
        training_world_models(Source())
    Source.cfg.world_model.holdout_episodes = 2
    Source.train_tasks = ["push-v3"]
    Source.cfg.world_model.unroll = STEPS
    with pytest.raises(ConfigError, match=rf"world_model.unroll \({STEPS}\) must be shorter than the episodes"):
        training_world_models(Source(), progress=False)
    Source.cfg.world_model.unroll = 4
    Source.cfg.world_model.steps = 5
    [single] = training_world_models(Source(), progress=False).models
    assert len(list((tmp_path / "world_models").glob("*.pt"))) == 1
    # An ensemble's first member is that same fit (read back); the second is fitted from its own seed.
    Source.cfg.world_model.members, Source.cfg.world_model.max_spread = 2, 0.05
    ensemble = training_world_models(Source(), progress=False)
    assert len(list((tmp_path / "world_models").glob("*.pt"))) == 2 and ensemble.max_spread == 0.05
    first, second = ensemble.models
    state = single.state_dict()
    assert all(torch.equal(first.state_dict()[k], state[k]) for k in state)
    assert not all(torch.equal(second.state_dict()[k], state[k]) for k in state)
    # A model reading the demonstration needs the training tasks' demonstrations, and is not adapted.
    Source.cfg.world_model.members, Source.cfg.world_model.context = 1, "demonstration"
    with pytest.raises(ConfigError, match="needs prompt episodes of 'push-v3'; it has none"):
        training_world_models(Source(), progress=False)
    Source.cfg.world_model.adapt_steps = 5
    with pytest.raises(ConfigError, match="world_model.adapt_steps adapts models with world_model.context=none"):
        training_world_models(Source(), progress=False)
    Source.cfg.world_model.adapt_steps, Source.cfg.world_model.context = 0, "none"
    Source.cfg.world_model.context_match = "object"
    with pytest.raises(ConfigError, match="world_model.context_match applies to a model that reads a demonstration"):
        training_world_models(Source(), progress=False)


def test_the_comparison_trusts_the_steps_before_the_members_disagree():
    """Members that agree are read to the end; members whose hands drift apart 1 mm per step are read until their
    spread passes `max_spread`, never fewer than MOTION_POINTS steps; one member is always read to the end."""
    from llmdpd.evaluation.behaviour_retrieval import MOTION_POINTS

    imagined = np.zeros((2, 3, 201, 39), np.float32)
    assert trusted_steps(imagined, max_spread=0.01) == 200
    drift = 0.001 * np.arange(201, dtype=np.float32)
    imagined[0, :, :, 0], imagined[1, :, :, 0] = drift, -drift  # std across members = drift; object still
    # spread = (hand std + object std) / 2 = drift / 2, which first passes 0.0302 at step 61
    assert trusted_steps(imagined, max_spread=0.0302) == 60
    assert trusted_steps(imagined, max_spread=0.001) == MOTION_POINTS
    assert trusted_steps(imagined, max_spread=0.0) == 200 and trusted_steps(imagined[:1], 0.001) == 200


def test_an_ensemble_averages_its_members_distances_over_the_trusted_steps(fitted):
    """Two identical members choose exactly as one; a member that imagines nothing happening lowers the
    still candidate's mean distance; with a spread limit the distances are those of the shorter window."""
    from llmdpd.evaluation.behaviour_retrieval import nearest_motion

    demonstration = noisy_expert_episodes("push-v3", [3], noise=0.0, seed=0)[0]["observations"]
    moving = np.stack([demonstration + 0.01 * k for k in range(3)])  # three candidates' imagined episodes
    candidates = ["a", "b", "c"]
    one, steps = imagined_choice(demonstration, moving[None], candidates, max_spread=0.0)
    assert steps == len(demonstration) - 1
    assert one == nearest_motion(demonstration, dict(zip(candidates, moving)), scale_with_query=True)
    assert imagined_choice(demonstration, np.stack([moving, moving]), candidates, 0.0)[0] == pytest.approx(one)
    still = np.repeat(demonstration[None, :1], len(demonstration), 1).repeat(3, 0)
    mixed, _ = imagined_choice(demonstration, np.stack([moving, still]), candidates, 0.0)
    alone = nearest_motion(demonstration, dict(zip(candidates, still)), scale_with_query=True)
    assert mixed == pytest.approx({c: (one[c] + alone[c]) / 2 for c in candidates})
    gated, window = imagined_choice(demonstration, np.stack([moving, still]), candidates, max_spread=0.02)
    assert window < len(demonstration) - 1
    head = [nearest_motion(demonstration[: window + 1], dict(zip(candidates, m[:, : window + 1])),
                           scale_with_query=True) for m in (moving, still)]
    assert gated == pytest.approx({c: (head[0][c] + head[1][c]) / 2 for c in candidates})


def test_adapting_to_one_demonstration_predicts_the_new_tasks_other_goals_better(fitted):
    """A model fitted on push-v3 alone meets drawer-close-v3's drawer: adapted on one demonstration (goal 0), it
    predicts the drawer on two other goals at least twice as well; the fitted model is left as it was, and the
    adaptation runs under inference mode (as evaluation does) and is seeded."""
    from llmdpd.world_model.fit import adapt_transition_model, measure_fit

    model, _ = fitted
    before = {name: value.clone() for name, value in model.state_dict().items()}
    demonstration = noisy_expert_episodes("drawer-close-v3", [0], noise=0.0, seed=0)[0]
    others = noisy_expert_episodes("drawer-close-v3", [5, 6], noise=0.0, seed=0)
    fitted_fit = measure_fit(model, others)
    with torch.inference_mode():
        adapted = adapt_transition_model(model, demonstration, steps=200, lr=1e-3, unroll=8, sequences=64, seed=0)
    adapted_fit = measure_fit(adapted, others)
    assert adapted_fit.one_step < 0.5 * fitted_fit.one_step
    assert adapted_fit.object_error["50"] < 0.5 * fitted_fit.object_error["50"]
    assert all(torch.equal(model.state_dict()[k], before[k]) for k in before)
    again = adapt_transition_model(model, demonstration, steps=200, lr=1e-3, unroll=8, sequences=64, seed=0)
    assert all(torch.equal(again.state_dict()[k], adapted.state_dict()[k]) for k in before)


def test_adapting_with_the_training_episodes_replayed_forgets_less_of_them(fitted, push_episodes):
    """Adapted hard to drawer-close's demonstration, the push model forgets push; with half of each step's windows
    drawn from the push episodes it was fitted on, it predicts held-out push episodes better than without, and
    still predicts the drawer on other goals better than before adapting. A share of 0 is the plain adaptation."""
    from llmdpd.world_model.fit import adapt_transition_model, measure_fit, stack_episodes

    model, _ = fitted
    train, held_out = push_episodes
    demonstration = noisy_expert_episodes("drawer-close-v3", [0], noise=0.0, seed=0)[0]
    others = noisy_expert_episodes("drawer-close-v3", [5, 6], noise=0.0, seed=0)
    adapt = dict(steps=200, lr=3e-3, unroll=8, sequences=64, seed=0)
    plain = adapt_transition_model(model, demonstration, **adapt)
    replayed = adapt_transition_model(model, demonstration, replay=stack_episodes(train), replay_share=0.5, **adapt)
    assert measure_fit(replayed, held_out).one_step < measure_fit(plain, held_out).one_step
    assert measure_fit(replayed, others).object_error["50"] < measure_fit(model, others).object_error["50"]
    none = adapt_transition_model(model, demonstration, replay=stack_episodes(train), replay_share=0.0, **adapt)
    assert all(torch.equal(none.state_dict()[k], plain.state_dict()[k]) for k in plain.state_dict())


def test_an_adapting_ensemble_imagines_each_task_in_copies_adapted_to_its_demonstration(fitted):
    """With adaptation steps 0 the members are the fitted models themselves; with steps, one adapted copy per member,
    each its own (member k seeded apart), and the demonstration-fit diagnosis reports both parts for the task."""
    from llmdpd.evaluation.imagined_practice import demonstration_fit
    from llmdpd.world_model.fit import stack_episodes

    model, _ = fitted
    episodes = noisy_expert_episodes("drawer-close-v3", [0, 5], noise=0.0, seed=0)
    assert WorldModelEnsemble([model, model]).for_demonstration(episodes[0]) == [model, model]
    adapting = WorldModelEnsemble([model, model], adaptation={"steps": 20, "lr": 1e-3, "unroll": 8, "sequences": 64})
    first, second = adapting.for_demonstration(episodes[0])
    assert first is not model and not torch.equal(first.net[0].weight, model.net[0].weight)
    assert not torch.equal(first.net[0].weight, second.net[0].weight)

    class Source:
        def prompt_episodes(self, task):
            return episodes

    fits = demonstration_fit(adapting, Source(), ["drawer-close-v3"], prompt_episode=0)
    assert set(fits["drawer-close-v3"]) == {"other_demonstrations_hand_50", "other_demonstrations_object_50",
                                            "other_demonstrations_object_travel_50",
                                            "other_demonstrations_imagined_object_travel_50"}
    # How far the drawer truly moved in the other episode's first 50 steps, and how far the members imagined it.
    moved = np.linalg.norm(episodes[1]["observations"][50, 4:7] - episodes[1]["observations"][0, 4:7])
    assert fits["drawer-close-v3"]["other_demonstrations_object_travel_50"] == pytest.approx(moved, rel=1e-5)
    obs, actions = stack_episodes(episodes[1:])
    imagined = [imagine(member, obs[:, 0], actions[:, :50]) for member in (first, second)]
    travel = np.mean([(rollout[0, 50, 4:7] - rollout[0, 0, 4:7]).norm().item() for rollout in imagined])
    assert fits["drawer-close-v3"]["other_demonstrations_imagined_object_travel_50"] == pytest.approx(travel, rel=1e-4)
    assert demonstration_fit(adapting, type("One", (), {"prompt_episodes": lambda self, t: episodes[:1]})(),
                             ["drawer-close-v3"], 0) == {"drawer-close-v3": {}}


def test_the_nearest_point_of_a_path_is_on_its_segments_and_never_beyond_its_ends():
    from llmdpd.world_model.path import nearest_on_path

    path = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]])
    points = torch.tensor([[[0.5, 0.3, 0.2], [2.0, 0.5, 0.0], [-1.0, 0.0, 0.0]]] * 2)
    expected = torch.tensor([[0.5, 0, 0], [1, 0.5, 0], [0, 0, 0]]).expand(2, 3, 3)
    assert torch.allclose(nearest_on_path(points, path), expected)
    assert torch.allclose(nearest_on_path(path, path), path)  # points on the path stay where they are
    assert torch.equal(nearest_on_path(points, path[:1]), torch.zeros(2, 3, 3))


def test_a_path_constrained_model_keeps_the_imagined_drawer_on_the_demonstrations_path(fitted):
    """The push model meets drawer-close's drawer: held on the path the drawer took in a demonstration on goal 0,
    the drawer imagined on two other goals stays on that path placed at its own start, and lies nearer the truth
    after 50 steps than where the free model sends it; the hand is the model's. An imagining ensemble wraps its
    members so where `world_model.object_path` says, and a rollout must say where it starts."""
    from llmdpd.world_model.fit import measure_fit, stack_episodes
    from llmdpd.world_model.path import PathConstrainedModel, nearest_on_path, object_track

    model, _ = fitted
    demonstration = noisy_expert_episodes("drawer-close-v3", [0], noise=0.0, seed=0)[0]
    others = noisy_expert_episodes("drawer-close-v3", [5, 6], noise=0.0, seed=0)
    path = object_track(demonstration["observations"])
    held = PathConstrainedModel(model, path)
    obs, actions = stack_episodes(others)
    imagined = imagine(held, obs[:, 0], actions[:, :50])
    relative = imagined[..., 4:7] - obs[:, :1, 4:7]
    assert torch.allclose(nearest_on_path(relative, path), relative, atol=1e-6)
    free = imagine(model, obs[:, 0], actions[:, :50])
    free_relative = free[..., 4:7] - obs[:, :1, 4:7]
    assert not torch.allclose(nearest_on_path(free_relative, path), free_relative, atol=1e-4)
    assert measure_fit(held, others).object_error["50"] < measure_fit(model, others).object_error["50"]
    assert torch.allclose(imagined[:, 1, 0:4], free[:, 1, 0:4])  # one step in, the hand is the model's

    members = WorldModelEnsemble([model, model], object_path="demonstration").for_demonstration(demonstration)
    assert all(isinstance(m, PathConstrainedModel) and m.model is model for m in members)
    assert torch.equal(members[0].path, path)
    with pytest.raises(RuntimeError, match="starting_at"):
        held.step(obs[:, 0], actions[:, 0])


def test_the_demonstration_context_is_the_matching_steps_object_change_and_the_residual():
    """By hand: a demonstration whose object moves 1 cm along x per step with the hand 10 cm behind it. A state
    whose object has moved 2 cm from the rollout's start with the hand as far behind reads step 2's change and no
    residual; one 0.4 cm short of step 2 still reads step 2, with the shortfall as residual; past the last step
    it reads the last step, which has no change."""
    from llmdpd.world_model.context import demonstration_context, demonstration_index

    demonstration = torch.zeros(4, 39)
    demonstration[:, 4] = torch.tensor([0.0, 0.01, 0.02, 0.03])  # object x
    demonstration[:, 0] = demonstration[:, 4] - 0.1  # hand 10 cm behind it
    keys, changes = demonstration_index(demonstration[None])
    assert keys.shape == (1, 4, 6) and changes.shape == (1, 4, 3)
    assert torch.allclose(changes[0, :, 0], torch.tensor([0.01, 0.01, 0.01, 0.0]))
    origin = torch.zeros(3, 39)
    origin[:, 4] = 0.5  # this rollout's object started elsewhere: only its displacement is matched
    states = origin.clone()
    states[:, 4] += torch.tensor([0.02, 0.016, 0.09])
    states[:, 0] = states[:, 4] - 0.1
    context = demonstration_context(states, origin, keys, changes)
    assert context.shape == (3, 9)
    assert torch.allclose(context[:, 0], torch.tensor([0.01, 0.01, 0.0]))
    assert torch.allclose(context[:, 3], torch.tensor([0.0, -0.004, 0.06]), atol=1e-6)
    assert torch.allclose(context[:, 4:], torch.zeros(3, 5), atol=1e-6)
    # One demonstration per rollout reads the same as one for all when they are the same demonstration.
    assert torch.allclose(demonstration_context(states, origin, keys.expand(3, -1, -1), changes.expand(3, -1, -1)),
                          context)


def test_matched_on_the_object_alone_a_state_reads_the_step_whose_displacement_it_shares():
    """The hand nears the object along the demonstration (10, 8, 6, 4 cm behind it) while the object moves 1 cm a
    step. A state whose object has moved 1 cm with the hand 4 cm behind matches step 3 on object and hand (no
    change there) and step 1 on the object alone (1 cm), the hand's 4 cm shortfall then in the residual."""
    from llmdpd.world_model.context import demonstration_context, demonstration_index

    demonstration = torch.zeros(4, 39)
    demonstration[:, 4] = torch.tensor([0.0, 0.01, 0.02, 0.03])
    demonstration[:, 0] = demonstration[:, 4] - torch.tensor([0.10, 0.08, 0.06, 0.04])
    keys, changes = demonstration_index(demonstration[None])
    origin, state = torch.zeros(1, 39), torch.zeros(1, 39)
    state[:, 4], state[:, 0] = 0.01, 0.01 - 0.04
    both = demonstration_context(state, origin, keys, changes)
    alone = demonstration_context(state, origin, keys, changes, match="object")
    assert torch.allclose(both[0, :3], torch.zeros(3)) and torch.allclose(both[0, 3], torch.tensor(-0.02))
    assert torch.allclose(alone[0, :3], torch.tensor([0.01, 0.0, 0.0]))
    assert torch.allclose(alone[0, 3:], torch.tensor([0.0, 0, 0, -0.04, 0, 0]), atol=1e-6)


@pytest.fixture(scope="module")
def drawer_episodes():
    train = noisy_expert_episodes("drawer-close-v3", list(range(10, 22)), noise=0.3, seed=2)
    held_out = noisy_expert_episodes("drawer-close-v3", [40, 41], noise=0.3, seed=3)
    demonstrations = noisy_expert_episodes("drawer-close-v3", [0, 1], noise=0.0, seed=4)
    return train, held_out, demonstrations


def test_a_model_reading_the_demonstration_predicts_a_task_better_beside_its_own(push_episodes, drawer_episodes):
    """Fitted on push and drawer-close with a demonstration of the same task beside every window, the model
    predicts drawer-close's held-out goals better reading a drawer-close demonstration than reading a push one:
    it reads the demonstration. Unbound, or bound without the rollout's start, it refuses to step; it is not
    adapted (it reads the demonstration instead)."""
    from llmdpd.world_model.context import DemonstrationConditionedModel, TaskDemonstrations
    from llmdpd.world_model.fit import adapt_transition_model, measure_fit, stack_episodes

    push, push_held_out = push_episodes
    drawer, drawer_held_out, drawer_demonstrations = drawer_episodes
    push_demonstrations = noisy_expert_episodes("push-v3", [0, 1], noise=0.0, seed=4)
    observations = [stack_episodes(episodes)[0] for episodes in (push_demonstrations, drawer_demonstrations)]
    demonstrations = TaskDemonstrations(observations, [0] * len(push) + [1] * len(drawer), [0] * 2 + [1] * 2)
    model, fit = fit_transition_model(push + drawer, push_held_out + drawer_held_out, seed=0, progress=False,
                                      context="demonstration", demonstrations=demonstrations,
                                      **{**FIT, "steps": 600})
    assert model.size["context"] == "demonstration" and fit.object_error["50"] > 0
    own = measure_fit(DemonstrationConditionedModel(model, drawer_demonstrations[0]["observations"]), drawer_held_out)
    other = measure_fit(DemonstrationConditionedModel(model, push_demonstrations[0]["observations"]), drawer_held_out)
    assert own.object_error["50"] < 0.8 * other.object_error["50"]

    obs, actions = stack_episodes(drawer_held_out)
    with pytest.raises(RuntimeError, match="DemonstrationConditionedModel"):
        model.step(obs[:, 0], actions[:, 0])
    with pytest.raises(RuntimeError, match="starting_at"):
        DemonstrationConditionedModel(model, drawer_demonstrations[0]["observations"]).step(obs[:, 0], actions[:, 0])
    with pytest.raises(ValueError, match="context=none"):
        adapt_transition_model(model, drawer_demonstrations[0], steps=1, lr=1e-4)
    # An ensemble binds each member fitted to read a demonstration to the task's; a free one stays as it is.
    free, _ = fit_transition_model(push, push_held_out, seed=0, progress=False, **{**FIT, "steps": 5})
    members = WorldModelEnsemble([model, free]).for_demonstration(drawer_demonstrations[0])
    assert isinstance(members[0], DemonstrationConditionedModel) and members[0].model is model and members[1] is free


def test_replaying_real_episodes_open_loop_gives_the_models_error_on_those_episodes(fitted, push_episodes):
    from llmdpd.evaluation.imagined_practice import open_loop_replay

    model, fit = fitted
    _, held_out = push_episodes
    obs = np.stack([episode["observations"] for episode in held_out])
    actions = np.stack([episode["actions"] for episode in held_out])
    replayed = open_loop_replay([model, model], obs, actions)
    assert replayed.shape == (2, len(held_out), STEPS + 1, 39)
    assert np.array_equal(replayed[0], replayed[1]) and np.array_equal(replayed[0, :, 0], obs[:, 0])

    def hand_error(episodes: np.ndarray, step: int) -> float:
        return float(np.linalg.norm(episodes[0, :, step, :3] - obs[:, step, :3], axis=-1).mean())

    # The held-out fit measured at fitting time is the same open-loop error.
    assert hand_error(replayed, 50) == pytest.approx(fit.hand_error["50"], rel=1e-4)
    # Each episode is replayed under its own actions: the other episode's actions from the same start land farther.
    swapped = open_loop_replay([model], obs, actions[::-1].copy())
    assert hand_error(swapped, STEPS) > 2 * hand_error(replayed, STEPS)
