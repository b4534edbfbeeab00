"""Per-state reading of the demonstration (`trajectory.read: per_state`): the condition's step tokens, the
reader, and that it copies a new demonstration's action where the pooled prompt cannot."""

from __future__ import annotations

import pytest
import torch

from llmdpd.config.load import ConfigError, load_config
from llmdpd.policy.conditioning import PromptConditioning
from llmdpd.policy.demonstration_reader import DemonstrationReader
from llmdpd.policy.module import PolicyDiffusionModule
from tests.test_policy import ACT, OBS, TEXT, batches, loader, small_cfg

H = 6  # the prompt length of `batches`


def reading_cfg(**policy) -> dict:
    cfg = small_cfg(**policy)
    cfg["trajectory"]["read"] = "per_state"
    cfg["data"]["prompt_length"] = H
    return cfg


def test_condition_carries_step_tokens_and_keeps_the_dropout_draws():
    z_text, z_traj, steps = torch.randn(4, 3), torch.randn(4, 5), torch.randn(4, 2, 5)
    cond = PromptConditioning(3, 5, True, True, dropout=1.0, step_tokens=2)
    assert (cond.pooled_dim, cond.cond_dim) == (8, 18)
    out = cond(z_text, z_traj, 4, trajectory_steps=steps)
    assert torch.equal(out, torch.cat([z_text, z_traj, steps.reshape(4, 10)], -1))
    dropped = cond(z_text, z_traj, 4, drop=True, trajectory_steps=steps)
    assert torch.equal(dropped, cond.null(4)) and torch.equal(dropped[:, 8:], torch.zeros(4, 10))
    # One draw per prompt, text first, with the tokens following the trajectory prompt's draw.
    cond.dropout = 0.5
    torch.manual_seed(0)
    out = cond(z_text.repeat(50, 1), z_traj.repeat(50, 1), 200, drop=True, trajectory_steps=steps.repeat(50, 1, 1))
    torch.manual_seed(0)
    keep_text, keep_traj = torch.rand(200, 1) >= 0.5, torch.rand(200, 1) >= 0.5
    assert torch.equal(out[:, :3] == z_text.repeat(50, 1), keep_text.expand(-1, 3))
    assert torch.equal(out[:, 3:8] == z_traj.repeat(50, 1), keep_traj.expand(-1, 5))
    assert torch.equal(out[:, 8:].abs().sum(1, keepdim=True) > 0, keep_traj)


def test_reader_reads_per_state_and_a_null_demonstration_reads_the_same_everywhere():
    torch.manual_seed(0)
    reader = DemonstrationReader(OBS, pooled_dim=8, width=16, steps=H, heads=2)
    state = torch.randn(5, OBS)
    cond = torch.cat([torch.randn(1, 8).expand(5, -1), torch.randn(1, H * 16).expand(5, -1)], -1)
    out = reader(state, cond)
    assert out.shape == (5, reader.out_dim) == (5, 24)
    assert torch.equal(out[:, :8], cond[:, :8])  # the pooled part passes through
    assert (out[:, 8:] - out[:1, 8:]).abs().amax(1)[1:].min() > 1e-3  # one demonstration, different reads per state
    null = torch.cat([cond[:, :8], torch.zeros(5, H * 16)], -1)
    read = reader(state, null)[:, 8:]
    assert torch.allclose(read, read[:1].expand(5, -1))


def test_per_state_module_trains_acts_and_guides(cpu_trainer):
    torch.manual_seed(0)
    module = PolicyDiffusionModule(OBS, ACT, TEXT, reading_cfg(critic="none", eta=0.0, awr_beta=0.0))
    assert module.reader is not None and module.critic is None
    t = cpu_trainer(3)
    t.fit(module, loader(batches(3)))
    assert t.global_step == 3
    batch = batches(1)[0]
    cond = module.prompt_condition(batch["text_emb"], batch)
    assert cond.shape == (2, module.conditioning.pooled_dim + H * 16)
    obs = torch.randn(2, OBS)
    assert module.act(obs, cond).shape == (2, ACT)
    guided = module.act(obs, cond, acting={"guidance_weight": 2.0, "sample_temperature": 0.0})
    assert guided.shape == (2, ACT) and guided.abs().max() <= 1


def test_per_state_read_refuses_a_critic():
    with pytest.raises(ConfigError, match="trajectory.read: per_state.*policy.critic 'expectile'"):
        load_config("smoke", ["trajectory.read=per_state"])
    assert load_config("smoke", ["trajectory.read=per_state", "policy.kind=mlp_bc"]).trajectory.read == "per_state"


def _demonstration_batch(g: torch.Generator, n: int = 8, b: int = 32) -> dict:
    """New random demonstrations of H steps per task; each state is a demonstration step's state (plus noise) and
    its action that step's action: only reading the demonstration at the state gives the action."""
    s, a = torch.randn(n, H, OBS, generator=g), torch.rand(n, H, ACT, generator=g) * 2 - 1
    h = torch.randint(0, H, (n, b), generator=g)[..., None]
    obs = torch.gather(s, 1, h.expand(-1, -1, OBS)) + 0.05 * torch.randn(n, b, OBS, generator=g)
    return {"obs": obs, "action": torch.gather(a, 1, h.expand(-1, -1, ACT)), "prompt_obs": s, "prompt_action": a,
            "prompt_reward": torch.zeros(n, H, 1), "prompt_position": torch.arange(H).repeat(n, 1),
            "done": torch.zeros(n, b, 1), "reward": torch.zeros(n, b, 1), "next_obs": obs}


def test_per_state_reading_copies_a_new_demonstration():
    """Trained on a stream of random demonstrations and tested on new ones, the MLP with the per-state read
    predicts the demonstration's action at the matching state; the pooled prompt stays near the mean."""
    errors = {}
    for read in ("pooled", "per_state"):
        cfg = small_cfg(kind="mlp_bc", awr_beta=0.0, prompt_dropout=0.0, lr_schedule="constant", actor_lr=3e-3,
                        prompt_lr=3e-3)
        cfg["text"]["enabled"] = False
        cfg["trajectory"]["read"], cfg["data"]["prompt_length"] = read, H
        torch.manual_seed(0)
        module = PolicyDiffusionModule(OBS, ACT, TEXT, cfg)
        optimizer = module.configure_optimizers()["optimizer"]
        g = torch.Generator().manual_seed(0)
        for _ in range(300):
            loss = module.compute_losses(_demonstration_batch(g))["loss_bc"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        test = _demonstration_batch(torch.Generator().manual_seed(1000), n=32)
        with torch.no_grad():
            obs = test["obs"].reshape(-1, OBS)
            cond = module.prompt_condition(None, test).repeat_interleave(32, 0)
            predicted = module.actor(obs, module.condition_at(obs, cond))
        errors[read] = (predicted - test["action"].reshape(-1, ACT)).pow(2).mean().item()
    # Uniform actions in [-1, 1] have variance 1/3 per dimension: the pooled prompt stays near it.
    assert errors["per_state"] < 0.1 < 0.2 < errors["pooled"], errors
