"""Diffusion actor (the method's item 4 in the README): a DDPM over actions, conditioned on the state and the prompt condition.

Follows Diffusion-QL (Wang et al., 2023): few denoising steps, a variance-preserving beta schedule, an MLP
noise network with a sinusoidal step embedding, the predicted clean action clipped to the action box at every
reverse step, and the final sample clipped too. The network predicts the noise (`prediction="epsilon"`) or,
like Diffusion-QL's `predict_epsilon=False`, the clean action itself (`prediction="sample"`): then its loss is
the clean action's error, whose optimum at the noisiest step is the regression mean E[a | s, c]. Schedule buffers stay fp32 (derived from the config, so
not saved); under autocast the network runs in bf16 while the chain arithmetic promotes back to fp32.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def beta_schedule(name: str, steps: int) -> Tensor:
    """Betas [steps] (fp32): "vp" (Diffusion-QL's variance preserving), "linear" or "cosine"."""
    if name == "vp":
        t = torch.arange(1, steps + 1, dtype=torch.float64)
        b_min, b_max = 0.1, 10.0
        alpha = torch.exp(-b_min / steps - 0.5 * (b_max - b_min) * (2 * t - 1) / steps**2)
        betas = 1 - alpha
    elif name == "linear":
        betas = torch.linspace(1e-4, 2e-2, steps, dtype=torch.float64)
    elif name == "cosine":
        s = 0.008
        x = torch.linspace(0, steps, steps + 1, dtype=torch.float64)
        abar = torch.cos(((x / steps) + s) / (1 + s) * math.pi * 0.5) ** 2
        abar = abar / abar[0]
        betas = (1 - abar[1:] / abar[:-1]).clamp(0, 0.999)
    else:
        raise ValueError(f"Unknown beta schedule '{name}' (expected 'vp', 'linear' or 'cosine')")
    return betas.float()


class SinusoidalStepEmbedding(nn.Module):
    """Transformer-style sin/cos embedding of the integer denoising step."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, step: Tensor) -> Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=step.device) * (-math.log(10000.0) / max(half - 1, 1)))
        angle = step.float()[:, None] * freq[None, :]
        return torch.cat([angle.sin(), angle.cos()], -1)


def mlp(in_dim: int, hidden_dim: int, layers: int, out_dim: int) -> nn.Sequential:
    """`layers` hidden Linear+Mish layers of width `hidden_dim`, then a linear output."""
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, hidden_dim), nn.Mish()]
        width = hidden_dim
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


def step_embedding(time_dim: int) -> nn.Sequential:
    """The denoising step's sinusoidal embedding followed by a small MLP, [n] -> [n, time_dim]."""
    return nn.Sequential(
        SinusoidalStepEmbedding(time_dim), nn.Linear(time_dim, 2 * time_dim), nn.Mish(), nn.Linear(2 * time_dim, time_dim)
    )


class NoiseNetwork(nn.Module):
    """eps(a_k, k, s, c) (or the clean action, see `DiffusionActor`): an MLP over [a_k; step embedding; s; c]."""

    def __init__(
        self, obs_dim: int, action_dim: int, cond_dim: int, hidden_dim: int, layers: int, time_dim: int
    ) -> None:
        super().__init__()
        self.step_embedding = step_embedding(time_dim)
        self.net = mlp(action_dim + time_dim + obs_dim + cond_dim, hidden_dim, layers, action_dim)

    def forward(self, noisy_action: Tensor, step: Tensor, obs: Tensor, cond: Tensor) -> Tensor:
        emb = self.step_embedding(step)
        dtype = emb.dtype
        return self.net(torch.cat([noisy_action.to(dtype), emb, obs.to(dtype), cond.to(dtype)], -1))


class FiLMNoiseNetwork(nn.Module):
    """eps(a_k, k, s, c) with the context (k, s, c) encoded once and modulating every hidden layer (FiLM, as
    Diffusion Policy's conditional residual blocks), instead of entering only at the input.

    The concatenating `NoiseNetwork` learns to use c only from the high-noise part of the loss: at low noise
    the answer follows from a_k alone. Here each residual block computes h + Mish(W h * (1 + gamma(ctx)) +
    beta(ctx)), so the state and the prompt scale and shift every layer's features of the noisy action.
    """

    def __init__(
        self, obs_dim: int, action_dim: int, cond_dim: int, hidden_dim: int, layers: int, time_dim: int
    ) -> None:
        super().__init__()
        self.step_embedding = step_embedding(time_dim)
        self.context = mlp(time_dim + obs_dim + cond_dim, hidden_dim, 1, hidden_dim)
        self.inp = nn.Linear(action_dim, hidden_dim)
        self.blocks = nn.ModuleList(nn.Linear(hidden_dim, hidden_dim) for _ in range(layers))
        self.films = nn.ModuleList(nn.Linear(hidden_dim, 2 * hidden_dim) for _ in range(layers))
        for film in self.films:  # start as the identity modulation
            nn.init.zeros_(film.weight)
            nn.init.zeros_(film.bias)
        self.out = nn.Linear(hidden_dim, action_dim)

    def forward(self, noisy_action: Tensor, step: Tensor, obs: Tensor, cond: Tensor) -> Tensor:
        emb = self.step_embedding(step)
        dtype = emb.dtype
        context = F.mish(self.context(torch.cat([emb, obs.to(dtype), cond.to(dtype)], -1)))
        h = F.mish(self.inp(noisy_action.to(dtype)) + context)
        for block, film in zip(self.blocks, self.films):
            scale, shift = film(context).chunk(2, -1)
            h = h + F.mish(block(h) * (1 + scale) + shift)
        return self.out(h)


DENOISERS = {"mlp": NoiseNetwork, "film": FiLMNoiseNetwork}


class DiffusionActor(nn.Module):
    """A DDPM policy pi(a | s, c) with K steps; `loss` is the BC loss (on the noise or on the clean action,
    per `prediction`), `sample` the reverse chain (differentiable when gradients are enabled, as
    Diffusion-QL's policy improvement needs)."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        cond_dim: int,
        hidden_dim: int = 256,
        layers: int = 3,
        time_dim: int = 16,
        steps: int = 5,
        schedule: str = "vp",
        prediction: str = "epsilon",
        denoiser: str = "mlp",
        top_step_share: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= top_step_share <= 1.0:
            raise ValueError(f"top_step_share must lie in [0, 1], got {top_step_share}")
        if prediction not in ("epsilon", "sample"):
            raise ValueError(f"Unknown diffusion prediction '{prediction}' (expected 'epsilon' or 'sample')")
        if denoiser not in DENOISERS:
            raise ValueError(f"Unknown denoiser '{denoiser}' (expected one of {sorted(DENOISERS)})")
        self.prediction = prediction
        self.top_step_share = top_step_share
        self.action_dim = action_dim
        self.steps = steps
        self.model = DENOISERS[denoiser](obs_dim, action_dim, cond_dim, hidden_dim, layers, time_dim)
        betas = beta_schedule(schedule, steps)
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1), abar[:-1]])
        posterior_variance = betas * (1 - abar_prev) / (1 - abar)
        buffers = {
            "betas": betas,
            "sqrt_abar": abar.sqrt(),
            "sqrt_one_minus_abar": (1 - abar).sqrt(),
            "sqrt_recip_abar": (1 / abar).sqrt(),
            "sqrt_recipm1_abar": (1 / abar - 1).sqrt(),
            "posterior_std": posterior_variance.clamp(min=1e-20).sqrt(),
            "posterior_coef_x0": betas * abar_prev.sqrt() / (1 - abar),
            "posterior_coef_xt": (1 - abar_prev) * alphas.sqrt() / (1 - abar),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    def loss(self, action: Tensor, obs: Tensor, cond: Tensor) -> Tensor:
        """L_bc = E_k,eps ||eps - eps_theta(sqrt(abar_k) a + sqrt(1 - abar_k) eps, k, s, c)||^2
        (with `prediction="sample"`: E_k,eps ||a - a_theta(...)||^2)."""
        per_sample, _ = self.loss_and_prediction(action, obs, cond)
        return per_sample.mean()

    def loss_and_prediction(self, action: Tensor, obs: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """The BC loss per sample [n, 1] and, from the same network call, the clean action it implies [n, A].

        The prediction a_hat = (a_k - sqrt(1 - abar_k) eps_theta) / sqrt(abar_k) (the network's output itself
        with `prediction="sample"`), clipped to the action box, is EDP's one-step action approximation:
        differentiable, and K times cheaper than the reverse chain.
        """
        step = self.training_steps(action.shape[0], action.device)
        noise = torch.randn_like(action, dtype=self.sqrt_abar.dtype)
        noisy = self.sqrt_abar[step, None] * action + self.sqrt_one_minus_abar[step, None] * noise
        out = self.model(noisy, step, obs, cond).float()
        if self.prediction == "sample":
            return (out - action.float()).pow(2).mean(-1, keepdim=True), out.clamp(-1.0, 1.0)
        per_sample = (out - noise.float()).pow(2).mean(-1, keepdim=True)
        predicted = (noisy - self.sqrt_one_minus_abar[step, None] * out) / self.sqrt_abar[step, None]
        return per_sample, predicted.clamp(-1.0, 1.0)

    def training_steps(self, n: int, device: torch.device) -> Tensor:
        """The denoising step of each of `n` BC samples: uniform over the K steps, except that a share
        `top_step_share` of the samples is moved to the noisiest step, where the clean-action loss is the
        regression to E[a | s, c] that one-call acting reads (uniform draws give it only 1/K of the batch)."""
        step = torch.randint(0, self.steps, (n,), device=device)
        if self.top_step_share > 0:  # no extra draw at 0, so the default's random stream is unchanged
            top = torch.rand(n, device=device) < self.top_step_share
            step = torch.where(top, torch.full_like(step, self.steps - 1), step)
        return step

    def _predict(
        self, x: Tensor, step: Tensor, obs: Tensor, cond: Tensor, null_cond: Optional[Tensor], guidance_weight: float
    ) -> Tensor:
        if null_cond is None or guidance_weight == 1.0:
            return self.model(x, step, obs, cond)
        # Classifier-free guidance: conditional and unconditional predictions in one batched call (for a
        # fixed a_k the clean action is affine in the noise, so guiding either prediction is the same).
        both = self.model(
            torch.cat([x, x]), torch.cat([step, step]), torch.cat([obs, obs]), torch.cat([cond, null_cond])
        )
        eps_cond, eps_null = both.chunk(2)
        return eps_null + guidance_weight * (eps_cond - eps_null)

    def sample(
        self,
        obs: Tensor,
        cond: Tensor,
        guidance_weight: float = 1.0,
        null_cond: Optional[Tensor] = None,
        temperature: float = 1.0,
        calls: int = 0,
        noise: Optional[Tensor] = None,
    ) -> Tensor:
        """Draw one action per row of `obs` [n, S] / `cond` [n, C]; returns [n, A] in [-1, 1].

        `temperature` scales the initial latent and every reverse step's noise: 1 is the DDPM sampler, 0 the
        deterministic chain from the zero latent (close to the mode of a unimodal action distribution),
        values between sample more narrowly (Diffuser's low-temperature sampling).

        `calls` (1 to K; 0 = K) stops the chain after that many network calls and returns the last call's
        clean-action estimate. With one call from the zero latent the input carries almost nothing of the
        action (sqrt(abar_K) is 0.08 for the VP schedule at K = 5), so the estimate is the actor's regression
        to E[a | s, c]: what a deterministic behaviour cloner predicts, from the same network.

        `noise` [n, J, A] (standard normal, 1 <= J <= K) replaces the chain's first J random draws: [:, 0] is the
        initial latent, [:, j] the noise of the j-th reverse step; later steps draw afresh. Reusing all K draws at
        every step of an episode makes the sampler a fixed function of the state for that episode
        (`policy.sample_noise: episode`); reusing the latent alone (J = 1) fixes where the chain starts and leaves
        its step noise fresh (`latent`).
        """
        if not 0 <= calls <= self.steps:
            raise ValueError(f"calls must lie in [0, {self.steps}] (0: all {self.steps} steps), got {calls}")
        n = obs.shape[0]
        dtype = self.sqrt_abar.dtype
        given = 0 if noise is None else noise.shape[1]
        if noise is not None:
            shaped = noise.dim() == 3 and (noise.shape[0], noise.shape[2]) == (n, self.action_dim)
            if not shaped or not 1 <= given <= self.steps:
                raise ValueError(f"noise must have shape ({n}, J, {self.action_dim}) with 1 <= J <= {self.steps}, "
                                 f"got {tuple(noise.shape)}")
            noise = noise.to(obs.device, dtype)

        def draw(j: int) -> Tensor:
            return noise[:, j] if j < given else torch.randn(n, self.action_dim, device=obs.device, dtype=dtype)

        x = temperature * draw(0)
        if null_cond is not None:
            null_cond = null_cond.expand(n, -1)
        last = self.steps - calls if 0 < calls < self.steps else -1  # -1: the whole chain, as it always ran
        for k in reversed(range(self.steps)):
            step = torch.full((n,), k, device=obs.device, dtype=torch.long)
            out = self._predict(x, step, obs, cond, null_cond, guidance_weight).to(dtype)
            x0 = out if self.prediction == "sample" else self.sqrt_recip_abar[k] * x - self.sqrt_recipm1_abar[k] * out
            x0 = x0.clamp(-1.0, 1.0)
            if k == last:
                return x0
            x = self.posterior_coef_x0[k] * x0 + self.posterior_coef_xt[k] * x
            if k > 0 and temperature > 0:
                x = x + temperature * self.posterior_std[k] * draw(self.steps - k)
        return x.clamp(-1.0, 1.0)
