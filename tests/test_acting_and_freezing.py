"""Acting-time settings are arguments of `act` (the module's config is never rewritten), and one rule decides
whether the policy stage freezes the prompt encoders."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from llmdpd.config.load import load_config
from llmdpd.policy.module import PolicyDiffusionModule
from llmdpd.prompts.alignment import freezes_prompt_encoders, uses_alignment


def _module(*overrides: str) -> PolicyDiffusionModule:
    cfg = load_config("smoke", list(overrides))
    torch.manual_seed(0)
    return PolicyDiffusionModule(39, 4, 16, OmegaConf.to_container(cfg)).eval()


def test_acting_overrides_are_arguments_and_leave_the_config_alone():
    module = _module()
    before = OmegaConf.to_container(module.cfg)
    obs, cond = torch.randn(5, 39), module.prompt_condition(torch.randn(5, 16), None)
    acting = {"acting": "argmax", "num_candidates": 7, "guidance_weight": 2.0}
    torch.manual_seed(1)
    got = module.act(obs, cond, acting=acting)
    assert OmegaConf.to_container(module.cfg) == before  # nothing written into the module's config

    reference = copy.deepcopy(module)  # the old way: the same settings written into a copy's config
    for key, value in acting.items():
        reference.cfg.policy[key] = value
    torch.manual_seed(1)
    assert torch.equal(got, reference.act(obs, cond))
    torch.manual_seed(1)
    actions, q = module.candidates(obs, cond, acting=acting)
    assert actions.shape == (5, 7, 4) and q.shape == (5, 7)


@pytest.mark.parametrize(
    "overrides, frozen",
    [
        (["alignment.freeze_in_policy_stage=true"], True),
        # Text prompts off: no alignment stage, so the trajectory encoder is random and must train.
        (["alignment.freeze_in_policy_stage=true", "text.enabled=false"], False),
        (["alignment.freeze_in_policy_stage=true", "alignment.enabled=false"], False),
        (["alignment.freeze_in_policy_stage=false"], False),
    ],
)
def test_one_rule_freezes_the_prompt_encoders(overrides, frozen):
    cfg = load_config("smoke", overrides)
    assert freezes_prompt_encoders(cfg) == frozen
    assert not frozen or uses_alignment(cfg)  # only aligned encoders are ever frozen
    module = PolicyDiffusionModule(39, 4, 16 if cfg.text.enabled else 0, OmegaConf.to_container(cfg))
    trainable = any(p.requires_grad for p in module.trajectory_encoder.parameters())
    assert trainable == (not frozen)
