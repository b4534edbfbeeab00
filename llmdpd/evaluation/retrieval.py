"""Prompt retrieval: does a task's demonstration pick out that task's description among others?

After the alignment stage this measures prompt quality where it matters: on unseen tasks, whose
demonstrations and texts the encoders never saw together, chance is 1 / number of tasks.
"""

from __future__ import annotations

from typing import Sequence

import torch

from llmdpd.evaluation.agent import PromptSource


@torch.no_grad()
def prompt_retrieval_accuracy(align_module, source: PromptSource, tasks: Sequence[str], episodes: int) -> float:
    """Fraction of (task, prompt episode) pairs whose nearest description (mean over paraphrases) is their own."""
    texts = torch.stack([source.text_embeddings(task).mean(0) for task in tasks])
    prompts = [source.prompt(task, ep) for task in tasks for ep in range(episodes)]
    own = torch.arange(len(tasks)).repeat_interleave(episodes)
    scores = align_module.task_scores(torch.stack(prompts), texts)
    return float((scores.argmax(1).cpu() == own).float().mean())
