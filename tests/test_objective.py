"""The policy stage's objective: expectile and one-step parts by hand, acting rules, n-step targets, eta ramp."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tensordict import TensorDict

from llmdpd.config.load import ConfigError, load_config
from llmdpd.data.batch import random_batch
from llmdpd.data.episode_store import EpisodeStore, episode_returns, n_step_returns, returns_to_go
from llmdpd.policy.acting import select_candidates, standardise
from llmdpd.policy.diffusion import DiffusionActor
from llmdpd.policy.loss import expectile_loss, loss_total, return_to_go_advantage, standardise_per_task
from tests.test_policy import ACT, OBS, TEXT, batches, loader, make_module, small_cfg


def test_expectile_loss_by_hand():
    diff = torch.tensor([2.0, -1.0, 0.5, -3.0])
    # tau = 0.7: positive differences weigh 0.7, negative ones 0.3.
    expected = torch.tensor([0.7 * 4.0, 0.3 * 1.0, 0.7 * 0.25, 0.3 * 9.0])
    assert torch.allclose(expectile_loss(diff, 0.7), expected)
    # tau = 0.5 is half the squared error.
    assert torch.allclose(expectile_loss(diff, 0.5), 0.5 * diff**2)


def test_expectile_value_loss_on_a_tiny_example():
    module = make_module(small_cfg(critic="expectile", expectile=0.9))
    td = module.loss_input(batches(1)[0])
    module.loss.target_q_min = lambda s, c, a: torch.full((s.shape[0], 1), 2.0)
    with torch.no_grad():
        value = module.value(td["obs"], td["cond"].detach()).float()
    losses = module.loss(td)
    expected = torch.where(2.0 - value > 0, 0.9, 0.1) * (2.0 - value) ** 2
    assert losses["loss_value"].item() == pytest.approx(expected.mean().item(), rel=1e-5)
    # The Q target is R + discount * V(s'): no actor sample is drawn.
    module.ema_actor.sample = lambda *a, **k: pytest.fail("the expectile critic must not sample actions")
    with torch.no_grad():
        y = module.loss.critic_target(td, td["cond"])
        v_next = module.value(td["next_obs"], td["cond"]).float()
    assert torch.allclose(y, td["reward"] + td["discount"] * v_next)


def test_one_step_action_matches_the_formula():
    torch.manual_seed(0)
    actor = DiffusionActor(OBS, ACT, 5, hidden_dim=16, layers=1, steps=5)
    action, obs, cond = torch.rand(6, ACT) * 2 - 1, torch.randn(6, OBS), torch.randn(6, 5)
    torch.manual_seed(1)
    per_sample, predicted = actor.loss_and_prediction(action, obs, cond)
    # Redraw the same step and noise, then apply a_hat = (a_k - sqrt(1 - abar_k) eps_theta) / sqrt(abar_k).
    torch.manual_seed(1)
    step = torch.randint(0, 5, (6,))
    noise = torch.randn_like(action)
    noisy = actor.sqrt_abar[step, None] * action + actor.sqrt_one_minus_abar[step, None] * noise
    eps = actor.model(noisy, step, obs, cond)
    abar = actor.sqrt_abar[step, None] ** 2
    expected = ((noisy - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)).clamp(-1, 1)
    assert torch.allclose(predicted, expected, atol=1e-6)
    assert torch.allclose(per_sample, ((eps - noise) ** 2).mean(-1, keepdim=True), atol=1e-6)
    # With a perfect noise prediction the approximation recovers the data action exactly.
    exact = (noisy - actor.sqrt_one_minus_abar[step, None] * noise) / actor.sqrt_abar[step, None]
    assert torch.allclose(exact, action, atol=1e-5)


def test_sample_prediction_regresses_the_clean_action_and_the_chain_uses_it():
    torch.manual_seed(0)
    actor = DiffusionActor(OBS, ACT, 5, hidden_dim=16, layers=1, steps=5, prediction="sample")
    action, obs, cond = torch.rand(6, ACT) * 2 - 1, torch.randn(6, OBS), torch.randn(6, 5)
    torch.manual_seed(1)
    per_sample, predicted = actor.loss_and_prediction(action, obs, cond)
    torch.manual_seed(1)
    step = torch.randint(0, 5, (6,))
    noisy = actor.sqrt_abar[step, None] * action + actor.sqrt_one_minus_abar[step, None] * torch.randn_like(action)
    out = actor.model(noisy, step, obs, cond)
    assert torch.allclose(predicted, out.clamp(-1, 1), atol=1e-6)
    assert torch.allclose(per_sample, ((out - action) ** 2).mean(-1, keepdim=True), atol=1e-6)
    # A network that always predicts the clean action a*: the last reverse step (posterior mean at k = 0, no
    # noise) returns the prediction itself, so the chain ends exactly at a*, deterministic or sampled.
    target = torch.tensor([0.5, -0.25, 0.75])

    class Constant(torch.nn.Module):
        def forward(self, x, step, obs, cond):
            return target.expand(x.shape[0], -1)

    actor.model = Constant()
    for temperature in (0.0, 1.0):
        assert torch.allclose(actor.sample(obs, cond, temperature=temperature), target.expand(6, -1), atol=1e-5)
    with pytest.raises(ValueError, match="prediction"):
        DiffusionActor(OBS, ACT, 5, prediction="velocity")


@pytest.mark.parametrize("prediction", ["epsilon", "sample"])
def test_film_denoiser_learns_an_action_that_only_the_prompt_tells(prediction):
    """One state, two prompts: the data action is +0.6 under the first and -0.6 under the second. The FiLM
    denoiser starts as an unmodulated residual network and learns to act on the prompt alone."""
    torch.manual_seed(0)
    actor = DiffusionActor(OBS, ACT, 2, hidden_dim=32, layers=2, steps=5, prediction=prediction, denoiser="film")
    assert all(not film.weight.detach().any() and not film.bias.detach().any() for film in actor.model.films)
    obs = torch.zeros(64, OBS)
    cond = torch.eye(2).repeat(32, 1)
    action = 0.6 * (cond[:, :1] - cond[:, 1:]).expand(64, ACT)
    optimiser = torch.optim.Adam(actor.parameters(), lr=3e-3)
    first = actor.loss(action, obs, cond).item()
    for _ in range(400):
        loss = actor.loss(action, obs, cond)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.5 * first
    with torch.no_grad():
        drawn = actor.sample(obs, cond, temperature=0.0)
    assert (drawn - action).abs().max() < 0.2
    with pytest.raises(ValueError, match="denoiser"):
        DiffusionActor(OBS, ACT, 2, denoiser="unet")


def test_one_step_q_term_trains_the_actor_only(cpu_trainer):
    module = make_module(small_cfg(q_action="one_step", critic="expectile", eta=1.0))
    module.loss.eta = 1.0
    losses = module.loss(module.loss_input(batches(1)[0]))
    assert set(losses.keys()) >= {"loss_bc", "loss_critic", "loss_value", "loss_q"}
    actor_grads = torch.autograd.grad(losses["loss_q"], list(module.actor.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in actor_grads)
    t = cpu_trainer(3)
    t.fit(module, loader(batches(4)))
    assert t.global_step == 3 and torch.isfinite(t.callback_metrics["train/loss_value"])


def test_softmax_limits_are_argmax_and_uniform():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(500, 6, generator=g)
    # T -> 0: the argmax.
    assert torch.equal(select_candidates(q, "softmax", 1e-4, generator=g), q.argmax(1))
    assert torch.equal(select_candidates(q, "softmax", 0.0), q.argmax(1))
    # T -> infinity: a uniform draw over the candidates.
    picks = torch.stack([select_candidates(q, "softmax", 1e6, generator=g) for _ in range(20)]).flatten()
    counts = torch.bincount(picks, minlength=6).float() / picks.numel()
    assert torch.allclose(counts, torch.full((6,), 1 / 6), atol=0.02)
    # A moderate temperature prefers higher Q without always taking the best.
    picks = select_candidates(q, "softmax", 1.0, generator=g)
    ranks = standardise(q).gather(1, picks[:, None]).mean()
    assert 0.3 < ranks < standardise(q).max(1).values.mean()
    assert torch.equal(select_candidates(q, "sample"), torch.zeros(500, dtype=torch.long))
    with pytest.raises(ValueError, match="Unknown acting rule"):
        select_candidates(q, "best")


def test_sample_acting_draws_one_candidate_without_the_critic():
    module = make_module(small_cfg(num_candidates=8, acting="sample"))
    calls = []
    module.loss.target_q_min = lambda *a: calls.append(1)
    cond = module.prompt_condition(torch.randn(3, TEXT), batches(1)[0][:1])
    assert module.act(torch.randn(3, OBS), cond).shape == (3, ACT) and not calls


def test_mean_acting_averages_the_candidates_without_the_critic():
    module = make_module(small_cfg(num_candidates=64, acting="mean"))
    calls = []
    module.loss.target_q_min = lambda *a: calls.append(1)
    cond = module.prompt_condition(torch.randn(3, TEXT), batches(1)[0][:1])
    obs = torch.randn(3, OBS)
    torch.manual_seed(0)
    acted = module.act(obs, cond)
    torch.manual_seed(0)
    draws, _ = module.candidates(obs, cond, count=64, score=False)
    assert not calls and acted.shape == (3, ACT)
    assert torch.allclose(acted, draws.clamp(-1, 1).mean(1), atol=1e-6)
    # The average of 64 draws varies far less between calls than one draw does.
    means = torch.stack([module.act(obs, cond) for _ in range(8)])
    singles = torch.stack([module.act(obs, cond, acting={"acting": "sample"}) for _ in range(8)])
    assert means.std(0).mean() < 0.5 * singles.std(0).mean()


def test_n_step_returns_stop_at_episode_ends():
    def episode(rewards, terminal=False):
        t = len(rewards)
        return {
            "observations": np.arange(t + 1, dtype=np.float32)[:, None].repeat(2, 1),
            "actions": np.zeros((t, 1), np.float32),
            "rewards": np.asarray(rewards, np.float32),
            "terminations": np.asarray([False] * (t - 1) + [terminal]),
        }

    store = EpisodeStore([[episode([1, 2, 3, 4]), episode([10, 20], terminal=True)]])
    out = n_step_returns(store, 3, 0.5)
    assert torch.allclose(out["reward"][:, 0], torch.tensor([1 + 1 + 0.75, 2 + 1.5 + 1, 3 + 2, 4, 10 + 10, 20]))
    expected_discount = torch.tensor([0.125, 0.125, 0.25, 0.5, 0.0, 0.0])  # the terminal episode never bootstraps
    assert torch.allclose(out["discount"][:, 0], expected_discount)
    assert torch.equal(out["next_obs"][:, 0], torch.tensor([3.0, 4, 4, 4, 2, 2]))
    one = n_step_returns(store, 1, 0.5)
    assert torch.equal(one["reward"], store.transitions["reward"])
    assert torch.equal(one["next_obs"], store.transitions["next_obs"])


def _episode(rewards):
    t = len(rewards)
    return {"observations": np.zeros((t + 1, 2), np.float32), "actions": np.zeros((t, 1), np.float32),
            "rewards": np.asarray(rewards, np.float32), "terminations": np.zeros(t, bool)}


def test_episode_returns_by_hand():
    store = EpisodeStore([[_episode([1, 2, 3]), _episode([10])], [_episode([0.5, 0.5])]])
    assert torch.equal(episode_returns(store)[:, 0], torch.tensor([6.0, 6, 6, 10, 1, 1]))


def test_returns_to_go_by_hand():
    store = EpisodeStore([[_episode([1, 2, 3]), _episode([10])], [_episode([0.5, 0.5])]])
    # gamma 0.5: 1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3 | 10 | 0.5 + 0.25, 0.5 (never across an episode's end)
    expected = torch.tensor([2.75, 3.5, 3.0, 10.0, 0.75, 0.5])
    torch.testing.assert_close(returns_to_go(store, 0.5)[:, 0], expected)
    # gamma 1 is the undiscounted rest of the episode; its first step carries the episode's return.
    to_go = returns_to_go(store, 1.0)[:, 0]
    torch.testing.assert_close(to_go, torch.tensor([6.0, 5, 3, 10, 1, 0.5]))
    assert torch.equal(to_go[[0, 3, 4]], episode_returns(store)[[0, 3, 4], 0])


def test_return_to_go_advantage_by_hand():
    class FixedValue(torch.nn.Module):
        def __init__(self, values):
            super().__init__()
            self.values = torch.nn.Parameter(values)

        def forward(self, obs, cond):
            return self.values

    # Two tasks of four transitions; G - V is (3, 1, 0, 0) in task 0 and (10, 10, 20, 20) in task 1.
    td = TensorDict({"obs": torch.zeros(8, 2), "cond": torch.zeros(8, 3, requires_grad=True),
                     "return_to_go": torch.tensor([4.0, 2, 1, 1, 10, 10, 20, 20])[:, None],
                     "task": torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])}, batch_size=[8])
    value = FixedValue(torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0])[:, None])
    advantage, loss = return_to_go_advantage(td, value)
    diff = torch.tensor([3.0, 1, 0, 0, 10, 10, 20, 20])
    expected = torch.cat([(d - d.mean()) / d.std() for d in diff.split(4)])
    torch.testing.assert_close(advantage[:, 0], expected)
    assert loss.item() == pytest.approx(((torch.tensor([4.0, 2, 1, 1, 10, 10, 20, 20]) - value.values[:, 0]) ** 2).mean().item())
    # The value learns from its own MSE only: the weights carry no gradient into it.
    assert not advantage.requires_grad
    loss.backward()
    assert value.values.grad is not None and td["cond"].grad is None


@pytest.mark.parametrize("kind", ["diffusion", "mlp_bc"])
def test_outcome_value_learns_returns_to_go(kind):
    torch.manual_seed(0)
    module = make_module(small_cfg(kind=kind, critic="expectile", awr_beta=1.0, awr_advantage="return_to_go"))
    optimizer = module.configure_optimizers()["optimizer"]
    names = {group["name"]: {id(p) for p in group["params"]} for group in optimizer.param_groups}
    assert {id(p) for p in module.loss.outcome_value.parameters()} <= names["critic"]
    batch = random_batch(2, 16, 6, OBS, ACT, TEXT, generator=torch.Generator().manual_seed(0))
    # Returns to go that depend on the state, so a value network can fit them.
    batch["return_to_go"] = batch["obs"][..., :1] * 3.0
    first = last = None
    for _ in range(300):
        losses = module.loss(module.loss_input(batch))
        optimizer.zero_grad()
        loss_total(losses).backward()
        optimizer.step()
        first = losses["loss_outcome_value"].item() if first is None else first
        last = losses["loss_outcome_value"].item()
    assert last < 0.25 * first
    assert 0.0 < losses["awr_ess"].item() <= 1.0


def test_episode_advantages_rank_whole_episodes_within_each_task():
    module = make_module(small_cfg(critic="td", awr_beta=1.0, awr_advantage="episode"))
    batch = random_batch(2, 8, 6, OBS, ACT, TEXT)
    # Task 0: half its transitions from an episode of return 1, half from one of return 0; task 1: 100 and 50.
    batch["episode_return"] = torch.tensor([1.0, 0.0, 100.0, 50.0]).repeat_interleave(4).view(2, 8, 1)
    td = module.loss_input(batch)
    in_task_0 = (td["task"] == 0).float()
    module.actor.loss_and_prediction = lambda action, obs, cond: (in_task_0[:, None], action)
    losses = module.loss(td)
    z = 0.5 / math.sqrt(8 * 0.25 / 7)  # +-0.5 around the task's mean, over the unbiased std of its 8 values
    weights = torch.tensor([math.exp(z), math.exp(-z)]).repeat_interleave(4).repeat(2)
    assert torch.isclose(losses["awr_weight_mean"], weights.mean())
    assert torch.isclose(losses["loss_bc"] / losses["awr_weight_mean"], torch.tensor(0.5))  # tasks weigh alike


def test_mlp_baseline_weighs_by_episode_returns_only():
    batch = random_batch(2, 8, 6, OBS, ACT, TEXT)
    batch["episode_return"] = torch.tensor([1.0, 0.0, 100.0, 50.0]).repeat_interleave(4).view(2, 8, 1)
    module = make_module(small_cfg(kind="mlp_bc", awr_beta=1.0, awr_advantage="episode"))
    td = module.loss_input(batch)
    per_sample, _ = module.actor.loss_and_prediction(td["action"], td["obs"], td["cond"])
    z = 0.5 / math.sqrt(8 * 0.25 / 7)
    weights = torch.tensor([math.exp(z), math.exp(-z)]).repeat_interleave(4).repeat(2)[:, None]
    losses = module.loss(td)
    assert torch.isclose(losses["loss_bc"], (per_sample * weights).mean())
    assert torch.isclose(losses["awr_weight_mean"], weights.mean())
    # The critic-based advantages need a critic: the baseline stays unweighted.
    unweighted = make_module(small_cfg(kind="mlp_bc", awr_beta=1.0, awr_advantage="raw"))
    td = unweighted.loss_input(batch)
    per_sample, _ = unweighted.actor.loss_and_prediction(td["action"], td["obs"], td["cond"])
    assert torch.isclose(unweighted.loss(td)["loss_bc"], per_sample.mean()) and "awr_ess" not in unweighted.loss(td).keys()


def test_diffusion_actor_without_a_critic_trains_on_its_weighted_denoising_loss(cpu_trainer):
    module = make_module(small_cfg(prediction="sample", critic="none", eta=0.0, awr_beta=1.0, awr_advantage="episode"))
    assert module.critic is None and module.target_updater is None and list(module.loss.parameters()) == []
    optimizer = module.configure_optimizers()["optimizer"]
    assert [group["name"] for group in optimizer.param_groups] == ["actor", "prompt"]
    batch = random_batch(2, 8, 6, OBS, ACT, TEXT)
    batch["episode_return"] = torch.tensor([1.0, 0.0, 100.0, 50.0]).repeat_interleave(4).view(2, 8, 1)
    td = module.loss_input(batch)
    torch.manual_seed(1)
    per_sample, _ = module.actor.loss_and_prediction(td["action"], td["obs"], td["cond"])
    torch.manual_seed(1)
    losses = module.loss(td)
    z = 0.5 / math.sqrt(8 * 0.25 / 7)
    weights = torch.tensor([math.exp(z), math.exp(-z)]).repeat_interleave(4).repeat(2)[:, None]
    assert set(k for k in losses.keys() if k.startswith("loss_")) == {"loss_bc"}
    assert torch.isclose(losses["loss_bc"], (per_sample * weights).mean())
    # Acting draws from the EMA actor; training runs and the denoising loss falls on a fixed batch.
    cond = module.prompt_condition(torch.randn(3, TEXT), batches(1)[0][:1])
    assert module.act(torch.randn(3, OBS), cond).shape == (3, ACT)
    fixed = batches(1)[0]

    def fixed_loss() -> float:  # the same diffusion steps, noise and prompt dropout before and after
        torch.manual_seed(2)
        return module.loss(module.loss_input(fixed))["loss_bc"].item()

    before = fixed_loss()
    t = cpu_trainer(60)
    t.fit(module, loader([fixed] * 60))
    assert t.global_step == 60 and fixed_loss() < 0.85 * before


def test_eta_ramps_in_after_the_critic_warm_up():
    module = make_module(small_cfg(eta=2.0, critic_warmup_steps=10, eta_ramp_steps=4))
    assert [module.eta_at(s) for s in (0, 9, 10, 11, 13, 50)] == [0.0, 0.0, 0.5, 1.0, 2.0, 2.0]
    module.cfg.policy.eta_ramp_steps = 0
    assert module.eta_at(10) == 2.0 and module.eta_at(9) == 0.0


def test_loss_parts_sum_to_the_trained_loss():
    module = make_module(small_cfg(critic="expectile", awr_beta=1.0))
    module.loss.eta = 0.5
    torch.manual_seed(0)
    losses = module.loss(module.loss_input(random_batch(2, 8, 6, OBS, ACT, TEXT)))
    parts = sum(losses[k] for k in ("loss_bc", "loss_critic", "loss_value", "loss_q"))
    assert torch.allclose(loss_total(losses), parts)
    assert 0 < losses["awr_weight_mean"] <= 100
    assert 1 / 16 <= losses["awr_ess"] <= 1


def test_awr_effective_sample_size_by_hand():
    module = make_module(small_cfg(critic="expectile", awr_beta=1.0))
    td = module.loss_input(random_batch(2, 8, 6, OBS, ACT, TEXT))
    advantage = torch.zeros(16, 1)
    advantage[0] = math.log(4.0)  # one transition weighs 4, the other 15 weigh 1
    module.loss.target_q_min = lambda obs, cond, action: advantage
    module.loss.value.forward = lambda obs, cond: torch.zeros(len(obs), 1, requires_grad=True)
    losses = module.loss(td)
    assert torch.isclose(losses["awr_ess"], torch.tensor((4 + 15) ** 2 / (16 + 15) / 16))
    assert torch.isclose(losses["awr_weight_mean"], torch.tensor(19 / 16))


def test_standardise_per_task_by_hand():
    values = torch.tensor([[1.0], [3.0], [10.0], [20.0], [30.0], [7.0]])
    task = torch.tensor([0, 0, 1, 1, 1, 2])
    out = standardise_per_task(values, task)
    # task 0: mean 2, std sqrt(2); task 1: mean 20, std 10; task 2 has one entry
    expected = torch.tensor([[-1 / math.sqrt(2)], [1 / math.sqrt(2)], [-1.0], [0.0], [1.0], [0.0]])
    assert torch.allclose(out, expected)


def test_task_advantages_rank_within_each_task():
    module = make_module(small_cfg(critic="expectile", awr_beta=1.0, awr_advantage="task"))
    td = module.loss_input(random_batch(2, 8, 6, OBS, ACT, TEXT))
    assert torch.equal(td["task"], torch.arange(2).repeat_interleave(8))
    # Task 1's advantages are task 0's shifted by 50: raw weights would hand task 1 the whole batch.
    advantage = torch.linspace(-1.0, 1.0, 8).repeat(2)[:, None]
    advantage[8:] += 50.0
    module.loss.target_q_min = lambda obs, cond, action: advantage
    module.loss.value.forward = lambda obs, cond: torch.zeros(len(obs), 1, requires_grad=True)
    # BC loss 1 on task 0's transitions and 0 on task 1's: loss_bc / awr_weight_mean is task 0's weight share.
    in_task_0 = (td["task"] == 0).float()
    module.actor.loss_and_prediction = lambda action, obs, cond: (in_task_0[:, None], action)
    weights = torch.exp(standardise_per_task(advantage, td["task"]))
    assert torch.allclose(weights[:8], weights[8:])
    losses = module.loss(td)
    assert torch.isclose(losses["awr_weight_mean"], weights.mean())
    assert torch.isclose(losses["awr_ess"], weights.sum().square() / weights.square().sum() / 16)
    assert torch.isclose(losses["loss_bc"] / losses["awr_weight_mean"], torch.tensor(0.5))
    module.loss.awr_advantage = "raw"
    raw = module.loss(td)
    assert raw["loss_bc"] / raw["awr_weight_mean"] < 0.02  # raw weights hand the batch to the shifted task


def test_zero_sample_temperature_is_deterministic_and_narrower():
    torch.manual_seed(0)
    actor = DiffusionActor(OBS, ACT, 5, hidden_dim=16, layers=1, steps=5)
    obs, cond = torch.randn(1, OBS).expand(200, -1), torch.randn(1, 5).expand(200, -1)
    cold = actor.sample(obs, cond, temperature=0.0)
    assert torch.equal(cold, actor.sample(obs, cond, temperature=0.0))
    assert torch.allclose(cold, cold[:1].expand_as(cold))  # one state, one action
    warm, hot = actor.sample(obs, cond, temperature=0.5), actor.sample(obs, cond, temperature=1.0)
    assert 0 < warm.std(0).mean() < hot.std(0).mean()


@pytest.mark.parametrize("prediction", ["sample", "epsilon"])
def test_sample_steps_stop_the_chain_at_that_calls_clean_action_estimate(prediction):
    torch.manual_seed(0)
    actor = DiffusionActor(OBS, ACT, 5, hidden_dim=16, layers=1, steps=5, prediction=prediction)
    obs, cond = torch.randn(64, OBS), torch.randn(64, 5)
    zero, top = torch.zeros(64, ACT), torch.full((64,), 4, dtype=torch.long)
    out = actor.model(zero, top, obs, cond)
    # From the zero latent x_K = 0 the clean action implied by one call is the output itself (sample) or,
    # for epsilon, (0 - sqrt(1 - abar_K) eps) / sqrt(abar_K).
    expected = out if prediction == "sample" else -actor.sqrt_recipm1_abar[4] * out
    one = actor.sample(obs, cond, temperature=0.0, calls=1)
    assert torch.allclose(one, expected.clamp(-1, 1), atol=1e-6)
    full = actor.sample(obs, cond, temperature=0.0)
    assert torch.equal(full, actor.sample(obs, cond, temperature=0.0, calls=5))  # K calls: the whole chain
    assert not torch.allclose(one, full)
    with pytest.raises(ValueError, match="calls must lie in"):
        actor.sample(obs, cond, calls=6)


def test_sample_steps_beyond_the_chain_is_a_config_error():
    with pytest.raises(ConfigError, match="policy.sample_steps"):
        load_config("smoke", ["policy.sample_steps=9"])


def test_top_step_share_moves_that_share_of_the_bc_samples_to_the_noisiest_step():
    uniform = DiffusionActor(OBS, ACT, 5, hidden_dim=16, layers=1, steps=5)
    torch.manual_seed(0)
    before = torch.randint(0, 5, (20000,))
    torch.manual_seed(0)
    assert torch.equal(uniform.training_steps(20000, torch.device("cpu")), before)  # share 0: the same draws
    half = DiffusionActor(OBS, ACT, 5, hidden_dim=16, layers=1, steps=5, top_step_share=0.5)
    steps = half.training_steps(20000, torch.device("cpu"))
    assert abs((steps == 4).float().mean().item() - 0.6) < 0.02  # 0.5 + 0.5 / K at the top
    counts = torch.bincount(steps, minlength=5)[:4].float() / 20000
    assert torch.allclose(counts, torch.full((4,), 0.1), atol=0.02)  # the rest stays uniform
    everything = DiffusionActor(OBS, ACT, 5, hidden_dim=16, layers=1, steps=5, top_step_share=1.0)
    assert (everything.training_steps(100, torch.device("cpu")) == 4).all()
    with pytest.raises(ConfigError, match="policy.top_step_share"):
        load_config("smoke", ["policy.top_step_share=1.5"])



@pytest.mark.parametrize(
    "overrides, message",
    [
        (["policy.action_horizon=0"], "'policy.action_horizon': 0; expected at least 1"),
        (["policy.action_horizon=4", "policy.action_execute=5"], r"'policy.action_execute': 5; expected 1 to policy.action_horizon \(4\)"),
        (["policy.action_execute=0"], "'policy.action_execute': 0"),
        (["policy.action_horizon=4", "policy.action_execute=2", "policy.action_ensemble=true"],
         "'policy.action_ensemble' plans at every step; 'policy.action_execute' is 2, expected 1"),
    ],
)
def test_action_chunk_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("smoke", overrides)
    assert load_config("smoke", ["policy.action_horizon=4", "policy.action_execute=4"]).policy.action_execute == 4


def test_action_noise_perturbs_the_chosen_action_within_the_box():
    module = make_module(small_cfg(kind="mlp_bc"))
    obs, cond = torch.randn(1, OBS).expand(4000, -1), module.prompt_condition(None, None)
    clean = module.act(obs, cond)
    assert torch.equal(clean, module.act(obs, cond))  # the MLP alone is deterministic
    torch.manual_seed(0)
    noisy = module.act(obs, cond, acting={"action_noise": 0.3})
    assert noisy.abs().max() <= 1.0
    inside = (noisy.abs() < 1.0).all(1)  # unclipped draws: clean + N(0, 0.3^2)
    assert (noisy[inside] - clean[inside]).mean(0).abs().max() < 0.03
    assert (noisy[inside] - clean[inside]).std(0).sub(0.3).abs().max() < 0.05
