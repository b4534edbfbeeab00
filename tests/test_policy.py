"""Policy stage: diffusion actor, critics, conditioning, the Lightning training step, acting, checkpoints."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from tensordict import TensorDict
from torch.utils.data import DataLoader

from llmdpd.config.schema import ExperimentConfig
from llmdpd.data.batch import random_batch
from llmdpd.policy.averaging import copy_parameters_, soft_update_
from llmdpd.policy.conditioning import PromptConditioning
from llmdpd.policy.critic import TwinCritic
from llmdpd.policy.diffusion import DiffusionActor, beta_schedule
from llmdpd.policy.loss import loss_total
from llmdpd.policy.mlp_bc import MLPActor
from llmdpd.policy.module import PolicyDiffusionModule
from llmdpd.prompts.alignment import PromptEncoderModule

OBS, ACT, TEXT, H, N, B = 7, 3, 12, 6, 2, 16


def small_cfg(**policy) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.structured(ExperimentConfig))
    small = dict(hidden_dim=32, layers=2, critic_hidden_dim=32, critic_layers=2, num_candidates=4)
    cfg["policy"].update({**small, **policy})
    cfg["trajectory"].update(width=16, layers=1, heads=2, max_position=64)
    cfg["text"].update(hidden_dim=16, out_dim=8)
    cfg["trainer"]["max_steps"] = 100
    return cfg


def make_module(cfg: dict | None = None) -> PolicyDiffusionModule:
    torch.manual_seed(0)
    return PolicyDiffusionModule(OBS, ACT, TEXT, cfg or small_cfg(), torch.randn(OBS), torch.rand(OBS) + 0.5)


def batches(count: int, text: bool = True, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    return [
        random_batch(N, B, H, OBS, ACT, TEXT if text else None, generator=g) for _ in range(count)
    ]


def loader(data: list) -> DataLoader:
    # Its own generator, so creating the iterator does not draw from the global RNG.
    return DataLoader(data, batch_size=None, collate_fn=lambda b: b, generator=torch.Generator())


# ----------------------------------------------------------------------------------------------- parts
def test_vp_schedule_matches_diffusion_ql():
    betas = beta_schedule("vp", 5)
    t = 3
    expected = 1 - math.exp(-0.1 / 5 - 0.5 * (10 - 0.1) * (2 * t - 1) / 25)
    assert betas.dtype == torch.float32 and betas.shape == (5,)
    assert betas[t - 1].item() == pytest.approx(expected, rel=1e-6)
    assert torch.all(betas[1:] > betas[:-1]) and torch.all((betas > 0) & (betas < 1))
    for name in ("linear", "cosine"):
        assert beta_schedule(name, 10).shape == (10,)
    with pytest.raises(ValueError):
        beta_schedule("nope", 5)


def test_module_part_shapes():
    cond = torch.randn(5, 10)
    obs, action = torch.randn(5, OBS), torch.rand(5, ACT) * 2 - 1
    actor = DiffusionActor(OBS, ACT, 10, hidden_dim=16, layers=2, time_dim=8, steps=5)
    assert actor.model(action, torch.arange(5), obs, cond).shape == (5, ACT)
    assert actor.loss(action, obs, cond).dim() == 0
    sample = actor.sample(obs * 100, cond)
    assert sample.shape == (5, ACT) and sample.abs().max() <= 1
    assert actor.sqrt_abar.dtype == torch.float32 and "sqrt_abar" not in actor.state_dict()
    q1, q2 = TwinCritic(OBS, ACT, 10, 16, 2)(obs, cond, action)
    assert q1.shape == q2.shape == (5, 1) and not torch.allclose(q1, q2)
    bc = MLPActor(OBS, ACT, 10, 16, 2)
    assert bc.sample(obs * 100, cond).shape == (5, ACT) and bc.sample(obs * 100, cond).abs().max() <= 1


def test_conditioning_null_vectors_and_dropout():
    z_text, z_traj = torch.randn(4, 3), torch.randn(4, 5)
    cond = PromptConditioning(3, 5, text_enabled=True, trajectory_enabled=True, dropout=1.0)
    assert cond.cond_dim == 8
    assert torch.equal(cond(z_text, z_traj, 4), torch.cat([z_text, z_traj], -1))
    assert torch.equal(cond(z_text, z_traj, 4, drop=True), cond.null(4))
    cond.dropout = 0.0
    assert torch.equal(cond(z_text, z_traj, 4, drop=True), torch.cat([z_text, z_traj], -1))
    text_only = PromptConditioning(3, 5, text_enabled=True, trajectory_enabled=False, dropout=0.0)
    out = text_only(z_text, z_traj, 4)
    assert torch.equal(out[:, :3], z_text) and torch.equal(out[:, 3:], text_only.null_trajectory.expand(4, -1))
    # Half dropout drops roughly half the rows, whole rows at a time.
    cond.dropout = 0.5
    torch.manual_seed(0)
    out = cond(torch.randn(2000, 3), torch.randn(2000, 5), 2000, drop=True)
    dropped = (out[:, :3] == cond.null_text).all(1).float().mean()
    assert 0.45 < dropped < 0.55


def test_classifier_free_guidance_combines_predictions():
    actor = DiffusionActor(OBS, ACT, 2, hidden_dim=8, layers=1, time_dim=4, steps=3)
    actor.model.forward = lambda x, k, s, c: c[:, :1].expand(-1, ACT) * 1.0  # eps = first condition entry
    x, step, obs = torch.zeros(3, ACT), torch.zeros(3, dtype=torch.long), torch.zeros(3, OBS)
    cond, null = torch.full((3, 2), 2.0), torch.full((3, 2), 0.5)
    eps = actor._predict(x, step, obs, cond, null, guidance_weight=3.0)
    assert torch.allclose(eps, torch.full((3, ACT), 0.5 + 3.0 * (2.0 - 0.5)))
    assert torch.allclose(actor._predict(x, step, obs, cond, null, 1.0), torch.full((3, ACT), 2.0))


def test_soft_update_and_copy_match_hand_computation():
    target, source = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        target.weight.copy_(torch.tensor([[1.0, 2.0]]))
        target.bias.fill_(0.0)
        source.weight.copy_(torch.tensor([[3.0, -2.0]]))
        source.bias.fill_(1.0)
    soft_update_(target, source, 0.25)
    assert torch.allclose(target.weight, torch.tensor([[1.5, 1.0]]))
    assert torch.allclose(target.bias, torch.tensor([0.25]))
    copy_parameters_(target, source)
    assert torch.equal(target.weight, source.weight)


def test_ema_and_target_updates_follow_the_schedule():
    module = make_module(small_cfg(ema_start=10, ema_every=5, ema_decay=0.9, tau=0.1))
    with torch.no_grad():
        for p in module.actor.parameters():
            p.add_(1.0)
        for p in module.critic.parameters():
            p.add_(1.0)
    actor, ema = module.actor.model.net[0].weight, module.ema_actor.model.net[0].weight
    before = ema.clone()
    module.update_ema(12)  # after ema_start, not a multiple of ema_every: unchanged
    assert torch.equal(ema, before)
    module.update_ema(15)
    assert torch.allclose(ema, 0.9 * before + 0.1 * actor)
    module.update_ema(3)  # before ema_start: a copy
    assert torch.equal(ema, actor)
    critic = module.loss.critic_params["q1", "0", "weight"]
    target = module.loss.target_critic_params["q1", "0", "weight"]
    expected = 0.9 * target + 0.1 * critic
    module.update_targets()
    assert torch.allclose(target, expected)
    assert not torch.equal(target, critic)


def test_td_target_matches_hand_computation():
    module = make_module(small_cfg(gamma=0.9, critic="td"))
    # The target critics (min 3 and 1) and V are replaced by known values.
    module.loss.target_q_min = lambda s, c, a: torch.tensor([[3.0], [1.0]])
    td = TensorDict({"reward": torch.tensor([[1.0], [2.0]]), "discount": torch.tensor([[0.9], [0.0]]),
                     "next_obs": torch.zeros(2, OBS)}, batch_size=[2])
    y = module.loss.critic_target(td, torch.zeros(2, 24))
    assert torch.allclose(y, torch.tensor([[1.0 + 0.9 * 3.0], [2.0]]))


# --------------------------------------------------------------------------------------------- training
def test_trainer_steps_and_logs(cpu_trainer):
    module = make_module()
    t = cpu_trainer(3)
    t.fit(module, loader(batches(5)))
    assert t.global_step == 3
    expected = {
        "train/loss_bc", "train/loss_q", "train/loss_critic", "train/q_mean", "train/q_std",
        "train/target_mean", "train/actor_grad_norm", "train/critic_grad_norm", "train/eta",
        "lr/actor", "lr/critic", "lr/prompt",
    }  # fmt: skip
    assert expected <= set(t.callback_metrics)
    assert all(torch.isfinite(t.callback_metrics[k]) for k in expected)
    # Cosine schedule over cfg trainer.max_steps (100): after 3 steps the factor is cos-shaped.
    factor = 0.5 * (1 + math.cos(math.pi * 2 / 100))
    assert t.callback_metrics["lr/actor"].item() == pytest.approx(3e-4 * factor, rel=1e-5)
    assert t.callback_metrics["lr/critic"].item() == pytest.approx(3e-4)  # the critic's own constant schedule
    # Before ema_start the EMA actor is a copy of the actor.
    for p, q in zip(module.actor.parameters(), module.ema_actor.parameters()):
        assert torch.equal(p, q)


class GroupGradNorms(L.Callback):
    """Records each optimizer group's gradient norm as the optimizer sees it (after clipping)."""

    def __init__(self) -> None:
        self.norms: dict[str, float] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for group in optimizer.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            self.norms[group["name"]] = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()


def test_gradient_clipping_per_group(cpu_trainer):
    module = make_module(small_cfg(actor_grad_clip=1e-3, critic_grad_clip=2e-3))
    record = GroupGradNorms()
    t = cpu_trainer(1, callbacks=[record])
    t.fit(module, loader(batches(1)))
    # Logged norms are the pre-clip totals; the optimizer saw each group clipped to its own limit.
    assert t.callback_metrics["train/actor_grad_norm"] > 1e-3
    assert t.callback_metrics["train/critic_grad_norm"] > 2e-3
    assert record.norms["actor"] == pytest.approx(1e-3, rel=1e-3)
    assert record.norms["critic"] == pytest.approx(2e-3, rel=1e-3)
    assert record.norms["prompt"] <= 1e-3 * (1 + 1e-3)


def test_actor_q_loss_sends_no_gradient_to_critic():
    module = make_module()
    batch = batches(1)[0]
    # Isolate the actor's Q term: with eta large, the critic's gradient must match eta = 0.
    critic_params = list(module.loss.critic_params.values(True, True))
    grads = {}
    for eta in (0.0, 100.0):
        torch.manual_seed(1)
        module.loss.eta = eta
        losses = module.loss(module.loss_input(batch))
        assert (losses["loss_q"] != 0) == (eta > 0)
        grads[eta] = torch.autograd.grad(loss_total(losses), critic_params)
    for g0, g100 in zip(grads[0.0], grads[100.0]):
        assert torch.allclose(g0, g100, atol=1e-6)


def test_bc_loss_falls_and_samples_stay_in_box(cpu_trainer):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    fixed = random_batch(N, 64, H, OBS, ACT, TEXT, generator=g)
    fixed["action"] = torch.tanh(fixed["obs"][..., :ACT] * 2)  # a deterministic function of the state
    module = make_module(small_cfg(eta=0.0, actor_lr=3e-3, lr_schedule="constant", prompt_dropout=0.0))

    def bc_loss() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            cond = module._encode(fixed["text_emb"], fixed, N, drop=False).repeat_interleave(64, 0)
            obs, act = fixed["obs"].reshape(-1, OBS), fixed["action"].reshape(-1, ACT)
            return sum(module.actor.loss(act, obs, cond).item() for _ in range(20)) / 20

    before = bc_loss()
    cpu_trainer(250).fit(module, loader([fixed] * 250))
    after = bc_loss()
    assert after < 0.5 * before, (before, after)
    cond = module.prompt_condition(fixed["text_emb"], fixed)
    actions = module.act(fixed["obs"][:, 0] * 50, cond)  # far outside the data: still in the box
    assert actions.shape == (N, ACT) and actions.abs().max() <= 1


@pytest.mark.parametrize("denoiser", ["mlp", "film"])
def test_bf16_mixed_step_runs(cpu_trainer, denoiser):
    module = make_module(small_cfg(denoiser=denoiser))
    t = cpu_trainer(2, precision="bf16-mixed")
    t.fit(module, loader(batches(2)))
    assert t.global_step == 2
    assert torch.isfinite(t.callback_metrics["train/loss_critic"])
    assert module.actor.sqrt_abar.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cond = module.prompt_condition(torch.randn(3, TEXT), None)
        assert module.act(torch.randn(3, OBS), cond).shape == (3, ACT)


def test_text_disabled_and_mlp_bc(cpu_trainer):
    cfg = small_cfg()
    cfg["text"]["enabled"] = False
    module = make_module(cfg)
    assert module.text_encoder is None
    t = cpu_trainer(2)
    t.fit(module, loader(batches(2, text=False)))
    assert t.global_step == 2
    cond = module.prompt_condition(torch.randn(2, TEXT), None)
    assert torch.equal(cond, module.conditioning.null(2))  # both prompts missing or disabled: null

    bc = make_module(small_cfg(kind="mlp_bc"))
    assert bc.critic is None
    t = cpu_trainer(2)
    t.fit(bc, loader(batches(2)))
    assert t.global_step == 2 and "train/loss_critic" not in t.callback_metrics
    obs = torch.randn(4, OBS)
    cond = bc.prompt_condition(None, batches(1)[0][:1])
    action = bc.act(obs, cond)
    assert torch.equal(action, bc.act(obs, cond))  # deterministic: no candidates, no noise
    assert torch.allclose(action, bc.ema_actor(bc.normalize_obs(obs), cond.expand(4, -1)))


@pytest.mark.parametrize("kind", ["diffusion", "mlp_bc"])
def test_action_chunks_train_and_plan(cpu_trainer, kind):
    horizon = 3
    module = make_module(small_cfg(kind=kind, action_horizon=horizon, critic="none", eta=0.0, awr_beta=0.0))
    assert module.actor.action_dim == ACT * horizon and module.trajectory_encoder.token.in_features == OBS + ACT + 1
    g = torch.Generator().manual_seed(0)
    data = [random_batch(N, B, H, OBS, ACT, TEXT, generator=g, action_horizon=horizon) for _ in range(2)]
    t = cpu_trainer(2)
    t.fit(module, loader(data))
    assert t.global_step == 2 and math.isfinite(float(t.callback_metrics["train/loss_bc"]))
    obs, cond = torch.randn(5, OBS), module.prompt_condition(None, data[0][:1])
    torch.manual_seed(1)
    plan = module.plan(obs, cond)
    assert plan.shape == (5, horizon, ACT) and plan.abs().max() <= 1
    torch.manual_seed(1)
    torch.testing.assert_close(module.act(obs, cond), plan[:, 0])  # act executes the plan's first action
    if kind == "mlp_bc":  # the chunk is the actor's output, split into steps in order
        flat = module.ema_actor(module.normalize_obs(obs), cond.expand(5, -1))
        torch.testing.assert_close(plan, flat.reshape(5, horizon, ACT))
    with pytest.raises(ValueError, match="has shape"):  # one action per state where the module expects chunks
        from llmdpd.data.keys import check_batch

        check_batch(random_batch(N, B, H, OBS, ACT, TEXT), {"A": ACT, "T": horizon})


# ----------------------------------------------------------------------------------------------- acting
def test_argmax_acting_picks_the_best_candidate_by_target_min_q():
    module = make_module(small_cfg(num_candidates=5, acting="argmax"))
    n, m = 3, 5
    candidates = torch.rand(n * m, ACT) * 2 - 1
    seen = {}

    def fake_sample(obs, cond, guidance_weight=1.0, null_cond=None, temperature=1.0, calls=0, noise=None):
        seen["obs"], seen["cond"] = obs, cond
        return candidates

    module.ema_actor.sample = fake_sample
    module.loss.target_q_min = lambda s, c, a: a[:, 1:2] - a[:, 0:1]  # "value" = a_1 - a_0
    obs = torch.randn(n, OBS, dtype=torch.float64)  # raw, float64 like Meta-World
    cond = module.prompt_condition(torch.randn(n, TEXT), batches(1, seed=3)[0][:1])
    action = module.act(obs, cond)
    grid = candidates.reshape(n, m, ACT)
    best = (grid[..., 1] - grid[..., 0]).argmax(1)
    assert action.shape == (n, ACT) and action.dtype == torch.float32
    assert torch.equal(action, grid[torch.arange(n), best])
    # Candidates were drawn in one batch of n*M normalised states.
    normalised = ((obs.float() - module.obs_mean) / module.obs_std).repeat_interleave(m, 0)
    assert torch.allclose(seen["obs"], normalised) and seen["cond"].shape == (n * m, cond.shape[1])


def test_prompt_condition_shapes_and_raw_prompts():
    module = make_module()
    batch = batches(1)[0]
    cond = module.prompt_condition(batch["text_emb"], batch)
    assert cond.shape == (N, 8 + 16)
    single = module.prompt_condition(batch["text_emb"][0], batch[0])
    assert torch.allclose(single, cond[:1], atol=1e-5)
    raw = {k: batch[k].clone() for k in ("prompt_obs", "prompt_action", "prompt_reward", "prompt_position")}
    raw["prompt_obs"] = raw["prompt_obs"] * module.obs_std + module.obs_mean
    raw["prompt_reward"] = raw["prompt_reward"] / module.reward_scale
    assert torch.allclose(module.prompt_condition(batch["text_emb"], raw, normalized=False), cond, atol=1e-4)
    assert module.training  # restored after evaluating the encoders in eval mode


# ------------------------------------------------------------------------------------- prompts / stages
def test_load_prompt_encoders_and_freeze():
    cfg = small_cfg()
    cfg["alignment"]["freeze_in_policy_stage"] = True
    align = PromptEncoderModule(OBS, ACT, TEXT, cfg)
    module = make_module(cfg)
    module.load_prompt_encoders(align)
    for name in ("text_encoder", "trajectory_encoder"):
        for p, q in zip(getattr(module, name).parameters(), getattr(align, name).parameters()):
            assert torch.equal(p, q) and not p.requires_grad
    optimizer = module.configure_optimizers()["optimizer"]
    names = [g["name"] for g in optimizer.param_groups]
    prompt_params = optimizer.param_groups[names.index("prompt")]["params"]
    assert len(prompt_params) == 2  # only the two null vectors remain trainable


# ----------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path, cpu_trainer):
    module = make_module(small_cfg(ema_start=1, ema_every=1))
    t = cpu_trainer(3)
    t.fit(module, loader(batches(3)))
    path = tmp_path / "policy.ckpt"
    t.save_checkpoint(path)
    loaded = PolicyDiffusionModule.load_from_checkpoint(path)
    assert torch.equal(loaded.obs_mean, module.obs_mean) and torch.equal(loaded.obs_std, module.obs_std)
    assert loaded.reward_scale.item() == pytest.approx(0.1)
    for p, q in zip(module.ema_actor.parameters(), loaded.ema_actor.parameters()):
        assert torch.equal(p, q)
    # EMA was running (ema_start=1), so it differs from the actor and still round-trips.
    assert any(not torch.equal(p, q) for p, q in zip(module.actor.parameters(), module.ema_actor.parameters()))
    obs = torch.randn(2, OBS)
    cond = module.prompt_condition(torch.randn(2, TEXT), None)
    torch.manual_seed(5)
    a = module.act(obs, cond)
    torch.manual_seed(5)
    assert torch.equal(a, loaded.act(obs, cond))


def test_resumed_run_matches_uninterrupted(tmp_path, cpu_trainer):
    data = batches(1) * 8  # one fixed batch: where the loader restarts after resuming cannot matter
    cfg = small_cfg(ema_start=1, ema_every=1, prompt_dropout=0.3)
    full = make_module(cfg)
    cpu_trainer(4).fit(full, loader(data))

    first = make_module(cfg)
    t = cpu_trainer(2)
    t.fit(first, loader(data))
    t.save_checkpoint(tmp_path / "half.ckpt")
    resumed = make_module(cfg)
    torch.manual_seed(999)  # a different RNG state: the checkpoint must restore it
    cpu_trainer(4).fit(resumed, loader(data), ckpt_path=tmp_path / "half.ckpt")
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name
