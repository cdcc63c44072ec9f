"""A user model for the overload tests, imported by path (``architecture: custom``) in Serve replicas."""

from __future__ import annotations

import time

from torch import nn


class SleepyMLP(nn.Module):
    """An MLP whose every forward pass takes at least ``delay_s``: a model slower than its traffic."""

    def __init__(self, input_dim: int, output_dim: int, delay_s: float = 0.5):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(input_dim, 8), nn.ReLU(), nn.Linear(8, output_dim))
        self.delay_s = delay_s

    def forward(self, x):
        time.sleep(self.delay_s)
        return self.net(x)


def sleepy_mlp(input_dim: int, output_dim: int, delay_s: float = 0.5) -> nn.Module:
    return SleepyMLP(input_dim, output_dim, delay_s)
