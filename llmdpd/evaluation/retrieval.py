"""Prompt retrieval: does a task's demonstration pick out that task's description among others?

After the alignment stage this measures prompt quality where it matters: on unseen tasks, whose
demonstrations and texts the encoders never saw together, chance is 1 / number of tasks.
"""

from __future__ import annotations

from typing import Sequence

import lightning as L
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


class PromptRetrievalCallback(L.Callback):
    """At the end of the alignment stage, logs `align/retrieval/{seen,unseen}` (and the chance level)."""

    def __init__(self, source: PromptSource, seen: Sequence[str], unseen: Sequence[str], episodes: int) -> None:
        self.source, self.episodes = source, episodes
        self.splits = {"seen": list(seen), "unseen": list(unseen)}
        self.metrics: dict[str, float] = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        was_training = pl_module.training
        pl_module.eval()
        for split, tasks in self.splits.items():
            if len(tasks) > 1:
                accuracy = prompt_retrieval_accuracy(pl_module, self.source, tasks, self.episodes)
                self.metrics[f"align/retrieval/{split}"] = accuracy
                self.metrics[f"align/retrieval/{split}_chance"] = 1.0 / len(tasks)
        pl_module.train(was_training)
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics, step=trainer.global_step)
        print("prompt retrieval after alignment: " + ", ".join(f"{k.split('/')[-1]} {v:.2f}" for k, v in self.metrics.items()))
