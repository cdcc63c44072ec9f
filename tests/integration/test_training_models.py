"""User models for the training tests, imported by path (``architecture: custom``) in Ray workers."""

from __future__ import annotations

import time

from torch import nn


class SlowMLP(nn.Module):
    """An MLP that sleeps a little per batch, so an epoch lasts long enough to be interrupted."""

    def __init__(self, input_dim: int, output_dim: int, delay_s: float = 0.02):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, 16), nn.ReLU(), nn.Linear(16, output_dim))
        self.delay_s = delay_s

    def forward(self, x):
        if self.training:
            time.sleep(self.delay_s)
        return self.net(x)


def slow_mlp(input_dim: int, output_dim: int, delay_s: float = 0.02) -> nn.Module:
    return SlowMLP(input_dim, output_dim, delay_s)


def not_a_module(input_dim: int, output_dim: int) -> object:
    return object()
