"""A one-layer LightningModule for tests of callbacks and loggers, where what is learned does not matter."""

from __future__ import annotations

import lightning as L
import torch


class TinyModule(L.LightningModule):
    """Linear(2, 1) fitted to zero on `samples` random inputs; records the train/eval mode of each step."""

    def __init__(self, samples: int = 32):
        super().__init__()
        self.samples = samples
        self.layer = torch.nn.Linear(2, 1)
        self.modes_in_training_step: list[bool] = []

    def training_step(self, batch, batch_idx):
        self.modes_in_training_step.append(self.training)
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        inputs = torch.utils.data.TensorDataset(torch.randn(self.samples, 2))
        return torch.utils.data.DataLoader(inputs, batch_size=4)
