"""Prompt retrieval accuracy after alignment."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict

from llmdpd.evaluation.retrieval import prompt_retrieval_accuracy


class CodedTasks:
    """Task t's texts are its one-hot code (twice, scaled); its prompts carry the same code in obs."""

    def text_embeddings(self, task: str) -> torch.Tensor:
        code = torch.eye(3)[int(task[-1])]
        return torch.stack([code, code * 2])

    def prompt(self, task: str, episode: int, offset: int = 0) -> TensorDict:
        code = torch.eye(3)[int(task[-1])]
        return TensorDict({"prompt_obs": code.expand(4, 3).clone()}, batch_size=[])


class CodeMatcher:
    """Scores prompt i against text j by the dot product of their codes; `swap` mislabels task t1 as t2."""

    def __init__(self, swap: bool = False) -> None:
        self.swap = swap

    def task_scores(self, prompts: TensorDict, texts: torch.Tensor) -> torch.Tensor:
        codes = prompts["prompt_obs"][:, 0]
        if self.swap:
            codes = codes[:, [0, 2, 1]]
        return codes @ torch.nn.functional.normalize(texts, dim=-1).T


def test_retrieval_counts_own_task_first():
    source, tasks = CodedTasks(), ["t0", "t1", "t2"]
    assert prompt_retrieval_accuracy(CodeMatcher(), source, tasks, episodes=2) == 1.0
    # t1 and t2 swapped: only t0's two prompts retrieve their own text.
    assert prompt_retrieval_accuracy(CodeMatcher(swap=True), source, tasks, episodes=2) == pytest.approx(2 / 6)
