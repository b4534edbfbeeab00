"""Prompt encoders: a trained projection of frozen-LM text embeddings, and a transformer over a demonstration.

Both accept any number of leading dimensions, so the same module encodes the N prompts of a policy batch
([N, ...]) and the N x K prompts of an alignment batch ([N, K, ...]).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from llmdpd.config.load import config_section  # noqa: F401  (also imported from here by the policy module)
from llmdpd.config.schema import TextPromptConfig, TrajectoryPromptConfig
from llmdpd.data.keys import PROMPT_POSITION, PROMPT_STEP_KEYS


class TextPromptEncoder(nn.Module):
    """z_text = MLP(e): LayerNorm -> Linear -> Mish -> Linear over a frozen language model's pooled embedding.

    The input LayerNorm (no affine) puts embeddings from different language models and poolings on one
    scale; pooled decoder states can be large and dominated by a few dimensions.
    """

    def __init__(self, text_dim: int, cfg: TextPromptConfig) -> None:
        super().__init__()
        cfg = config_section(TextPromptConfig, cfg)
        self.text_dim = text_dim
        self.out_dim = cfg.out_dim
        self.net = nn.Sequential(
            nn.LayerNorm(text_dim, elementwise_affine=False),
            nn.Linear(text_dim, cfg.hidden_dim),
            nn.Mish(),
            nn.Linear(cfg.hidden_dim, cfg.out_dim),
        )

    def forward(self, text_emb: Tensor) -> Tensor:
        """[..., E] -> [..., out_dim]."""
        return self.net(text_emb)


class TrajectoryPromptEncoder(nn.Module):
    """z_traj from H steps of (s, a, r): linear tokens plus learned episode-position embeddings, a [CLS]
    token, a pre-LN transformer encoder, and LayerNorm of the [CLS] output."""

    def __init__(self, obs_dim: int, action_dim: int, cfg: TrajectoryPromptConfig) -> None:
        super().__init__()
        cfg = config_section(TrajectoryPromptConfig, cfg)
        self.width = cfg.width
        self.max_position = cfg.max_position
        self.token = nn.Linear(obs_dim + action_dim + 1, cfg.width)
        self.position = nn.Embedding(cfg.max_position, cfg.width)
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.width))
        layer = nn.TransformerEncoderLayer(
            d_model=cfg.width,
            nhead=cfg.heads,
            dim_feedforward=4 * cfg.width,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors only help with padding masks, which prompts never have.
        self.encoder = nn.TransformerEncoder(layer, num_layers=cfg.layers, enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(cfg.width)
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(
        self, prompt_obs: Tensor, prompt_action: Tensor, prompt_reward: Tensor, prompt_position: Tensor
    ) -> Tensor:
        """[..., H, S], [..., H, A], [..., H, 1], [..., H] (long) -> [..., width]."""
        return self.out_norm(self.hidden(prompt_obs, prompt_action, prompt_reward, prompt_position)[..., 0, :])

    def hidden(
        self, prompt_obs: Tensor, prompt_action: Tensor, prompt_reward: Tensor, prompt_position: Tensor
    ) -> Tensor:
        """The transformer's outputs at the [CLS] token and the H steps, [..., 1 + H, width], before `out_norm`
        (applied only to the outputs a caller uses: the pooled read needs the [CLS] token alone)."""
        lead = prompt_obs.shape[:-2]
        steps = torch.cat([prompt_obs, prompt_action.to(prompt_obs.dtype), prompt_reward.to(prompt_obs.dtype)], -1)
        steps = steps.reshape(-1, *steps.shape[-2:])
        positions = prompt_position.reshape(-1, prompt_position.shape[-1]).long().clamp(0, self.max_position - 1)
        tokens = self.token(steps) + self.position(positions)
        cls = self.cls.expand(tokens.shape[0], -1, -1).to(tokens.dtype)
        hidden = self.encoder(torch.cat([cls, tokens], 1))
        return hidden.reshape(*lead, *hidden.shape[-2:])

    def _inputs(self, prompt: Any) -> list[Tensor]:
        weight = self.token.weight
        floats = [prompt[k].to(weight.device, weight.dtype) for k in PROMPT_STEP_KEYS]
        return [*floats, prompt[PROMPT_POSITION].to(weight.device)]

    def encode(self, prompt: Any) -> Tensor:
        """Encode a TensorDict or dict holding the four prompt keys of `llmdpd.data.keys` (moved to this module's
        device)."""
        return self(*self._inputs(prompt))

    def encode_steps(self, prompt: Any) -> tuple[Tensor, Tensor]:
        """As `encode`, and the H step tokens: ([..., width], [..., H, width])."""
        hidden = self.out_norm(self.hidden(*self._inputs(prompt)))
        return hidden[..., 0, :], hidden[..., 1:, :]
