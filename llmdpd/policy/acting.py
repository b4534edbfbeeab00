"""Acting rules: which of a state's M candidate actions to execute, given the critic's Q of each.

Measured on Meta-World: across one state's candidates the critic is almost linear in the action, so
`argmax` always takes the most extreme candidate along one direction, a steady drift that has nothing to do
with the expert. `softmax` (Diffusion-QL's own rule) draws from a Boltzmann distribution over Q
standardised across the state's candidates; its temperature interpolates between `argmax` (T -> 0) and a
uniform draw, i.e. one plain sample (T -> infinity). `sample` skips the critic altogether. `mean` (the
average of the candidates) selects no candidate, so the module's `act` applies it and it is not a rule here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from llmdpd.config.schema import ACTING_RULES


# The acting rules that choose one candidate (all of `policy.acting` but `mean`).
SELECTION_RULES = tuple(rule for rule in ACTING_RULES if rule != "mean")


def standardise(q: Tensor, eps: float = 1e-6) -> Tensor:
    """Q [n, M] standardised per state (row): zero mean, unit std (rows with equal Q become 0)."""
    centred = q - q.mean(1, keepdim=True)
    return centred / centred.pow(2).mean(1, keepdim=True).sqrt().clamp_min(eps)


def select_candidates(q: Tensor, rule: str, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """The index [n] of the chosen candidate per state under `rule`, from Q [n, M]."""
    n, m = q.shape
    if rule == "sample":
        return torch.zeros(n, dtype=torch.long, device=q.device)
    if rule == "argmax":
        return q.argmax(1)
    if rule == "softmax":
        if temperature <= 0:
            return q.argmax(1)
        probs = torch.softmax(standardise(q.float()) / temperature, 1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    raise ValueError(f"Unknown acting rule '{rule}' (expected one of {SELECTION_RULES})")
