"""The multimodality measures of `llmdpd diagnose --modes` on draws whose modes are known."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from llmdpd.evaluation.action_modes import action_modes, bimodality_coefficient, principal_projections, two_group_split


def test_bimodality_coefficient_matches_sarles_formula_with_scipys_unbiased_moments():
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64) ** 3
    skew = stats.skew(x.numpy(), axis=1, bias=False)
    kurt = stats.kurtosis(x.numpy(), axis=1, bias=False)
    expected = (skew**2 + 1) / (kurt + 3 * 39**2 / (38 * 37))
    assert bimodality_coefficient(x).numpy() == pytest.approx(expected, rel=1e-9)


def test_two_group_split_by_hand():
    # Best split of [0, 1, 10, 12]: {0, 1} and {10, 12}, means 0.5 and 11, variances 0.25 and 1.
    separation, smaller = two_group_split(torch.tensor([[10.0, 0.0, 12.0, 1.0]], dtype=torch.float64))
    assert separation.item() == pytest.approx(2**0.5 * 10.5 / 1.25**0.5)
    assert smaller.item() == 0.5


def test_principal_direction_is_the_axis_of_largest_spread():
    g = torch.Generator().manual_seed(1)
    draws = torch.randn(2, 256, 3, generator=g, dtype=torch.float64) * torch.tensor([0.1, 1.0, 0.1], dtype=torch.float64)
    projections, share = principal_projections(draws)
    centred = draws - draws.mean(1, keepdim=True)
    # The projection is (up to sign) the second coordinate, which holds about 98 % of the variance.
    assert torch.corrcoef(torch.stack([projections[0], centred[0, :, 1]]))[0, 1].abs() > 0.99
    assert (share > 0.95).all() and (share <= 1).all()


def test_action_modes_tells_one_mode_from_two_and_a_point():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.3, 0.1, 0.1, 0.05])
    one = action_modes(torch.randn(300, 64, 4, generator=g) * scale)
    side = torch.where(torch.rand(300, 64, 1, generator=g) < 0.5, -1.0, 1.0)
    two = action_modes(torch.randn(300, 64, 4, generator=g) * 0.1 + side * torch.tensor([0.5, 0.0, 0.0, 0.0]))
    point = action_modes(torch.full((5, 16, 4), 0.3))
    assert one["bimodality_coefficient"] == pytest.approx(1 / 3, abs=0.05) and one["bimodal"] < 0.02
    assert two["bimodality_coefficient"] > 0.75 and two["bimodal"] > 0.98 and two["separation"] > 8
    assert point == {"bimodality_coefficient": 0.0, "bimodal": 0.0, "separation": 0.0, "principal_share": 0.0}
    with pytest.raises(ValueError, match="at least 4 draws"):
        action_modes(torch.zeros(2, 3, 4))
