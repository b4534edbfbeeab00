"""The acting sampler's noise drawn once per episode (`policy.sample_noise: episode`, or its latent alone: `latent`):
the given noise is exactly the sampler's own draws, each episode keeps its draw, and on bimodal actions an episode
keeps its mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from llmdpd.config.load import load_config
from llmdpd.evaluation.agent import EpisodeActor
from llmdpd.policy.diffusion import DiffusionActor
from llmdpd.policy.module import PolicyDiffusionModule


def _module(*overrides: str) -> PolicyDiffusionModule:
    cfg = load_config("smoke", list(overrides))
    torch.manual_seed(0)
    return PolicyDiffusionModule(39, 4, 16, OmegaConf.to_container(cfg)).eval()


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_given_noise_is_the_samplers_own_draws(temperature):
    module = _module()
    steps = module.ema_actor.steps
    obs, cond = torch.randn(6, 39), module.prompt_condition(torch.randn(6, 16), None)
    acting = {"sample_temperature": temperature}
    torch.manual_seed(3)
    drawn, _ = module.candidates(obs, cond, count=1, score=False, acting=acting)
    torch.manual_seed(3)  # the same draws, in the order the chain makes them: the latent, then each reverse step
    noise = torch.stack([torch.randn(6, 4) for _ in range(steps)], 1)[:, None]
    given, _ = module.candidates(obs, cond, count=1, score=False, acting=acting, noise=noise)
    assert torch.equal(drawn, given)
    other, _ = module.candidates(obs, cond, count=1, score=False, acting=acting, noise=torch.randn_like(noise))
    assert (other - given).abs().amax() > 1e-3
    torch.manual_seed(3)  # the latent alone given: the reverse steps draw the rest, as they would have
    latent = torch.randn(6, 4)[:, None, None]
    given_latent, _ = module.candidates(obs, cond, count=1, score=False, acting=acting, noise=latent)
    assert torch.equal(drawn, given_latent)


def test_sampler_noise_has_one_row_per_candidate_drawn():
    module = _module()
    steps = module.ema_actor.steps
    assert module.sampler_noise(3).shape == (3, 1, steps, 4)
    assert module.sampler_noise(3, {"acting": "argmax", "num_candidates": 7}).shape == (3, 7, steps, 4)
    assert module.sampler_noise(3, {"acting": "mean", "num_candidates": 5}).shape == (3, 5, steps, 4)
    assert module.sampler_noise(3, {"sample_noise": "latent"}).shape == (3, 1, 1, 4)
    obs, cond = torch.randn(3, 39), module.prompt_condition(torch.randn(3, 16), None)
    acting = {"acting": "argmax", "num_candidates": 7}
    assert module.plan(obs, cond, acting, noise=module.sampler_noise(3, acting)).shape == (3, 1, 4)
    with pytest.raises(ValueError, match="noise must have shape"):
        state = module.normalize_obs(obs)
        module.ema_actor.sample(state, module.condition_at(state, cond), noise=torch.randn(3, steps + 1, 4))
    assert _module("policy.kind=mlp_bc").sampler_noise(3) is None  # the MLP draws no noise


def test_episode_actor_keeps_one_draw_per_episode():
    module = _module()
    condition = module.prompt_condition(torch.randn(1, 16), None).expand(3, -1)
    obs = np.repeat(np.random.default_rng(0).normal(size=(1, 39)).astype(np.float32), 3, 0)
    torch.manual_seed(0)
    actor = EpisodeActor(module, condition, {"sample_noise": "episode"})
    first, again = actor(obs, [0, 1, 2]), actor(obs, [0, 1, 2])
    np.testing.assert_array_equal(first, again)  # the same state gives an episode the same action
    assert np.abs(first[0] - first[1]).max() > 1e-3  # episodes draw apart
    np.testing.assert_array_equal(actor(obs[[2]], [2]), first[[2]])  # whoever else is still live
    stepwise = EpisodeActor(module, condition, {"sample_noise": "step"})
    assert np.abs(stepwise(obs, [0, 1, 2]) - stepwise(obs, [0, 1, 2])).max() > 1e-3


def _bimodal_actor(steps: int = 400) -> DiffusionActor:
    """A 1-D diffusion actor trained on a = +-0.7 with equal weight at every state s in [-1, 1]."""
    torch.manual_seed(0)
    actor = DiffusionActor(1, 1, 1, hidden_dim=64, layers=2, steps=5)
    optimizer = torch.optim.Adam(actor.parameters(), lr=3e-3)
    for _ in range(steps):
        obs = torch.rand(256, 1) * 2 - 1
        action = torch.where(torch.rand(256, 1) < 0.5, -0.7, 0.7)
        loss = actor.loss(action, obs, torch.zeros(256, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return actor.eval()


def test_an_episodes_draw_keeps_it_in_one_mode_of_a_bimodal_policy():
    actor = _bimodal_actor()
    episodes, states = 64, torch.linspace(-1, 1, 20)
    torch.manual_seed(1)
    noise = torch.randn(episodes, actor.steps, 1)

    def draws(noise):  # [episodes, states]: each episode's action at every state
        with torch.no_grad():
            return torch.stack([actor.sample(s.expand(episodes, 1), torch.zeros(episodes, 1), noise=noise)
                                for s in states], 1)[..., 0]

    kept, fresh, latent_only = draws(noise), draws(None), draws(noise[:, :1])
    assert (fresh > 0).float().mean().sub(0.5).abs() < 0.2  # both modes are drawn
    one_mode = lambda a: ((a > 0).all(1) | (a < 0).all(1)).float().mean()  # noqa: E731
    assert one_mode(kept) > 0.9  # an episode's draw stays in its mode from state to state
    assert one_mode(fresh) < 0.1  # fresh noise at every step switches between them
    # The latent alone does not choose the mode: at K = 5 (VP) the noisiest step keeps sqrt(abar_K) = 0.08 of the
    # action, so the reverse steps' noise decides it.
    assert one_mode(latent_only) < 0.1
