"""The model zoo: torch modules built from a config, and user models by import path.

A model maps a float tensor ``(batch, input_dim)`` to raw outputs: one value per row for
regression and binary tasks (a logit for binary), ``num_classes`` logits for multiclass.
``predict_outputs`` turns raw outputs into what a user reads (value, probability, class).
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from pydantic import Field, model_validator

from mlplat.config import StrictModel
from mlplat.errors import ConfigError

__all__ = ["ModelSpec", "TASK_TYPES", "build_model", "loss_fn", "predict_outputs", "import_factory"]

TASK_TYPES = ("regression", "binary", "multiclass")
ARCHITECTURES = ("mlp", "linear", "custom")


class ModelSpec(StrictModel):
    """What to build. ``architecture: custom`` takes ``factory: package.module:callable``,
    called as ``factory(input_dim=..., output_dim=..., **params)`` and returning an nn.Module."""

    task: Literal["regression", "binary", "multiclass"]
    architecture: Literal["mlp", "linear", "custom"] = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [64, 32])
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    num_classes: int | None = Field(None, ge=2)
    factory: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.task == "multiclass" and self.num_classes is None:
            raise ValueError("task 'multiclass' needs num_classes (>= 2)")
        if self.architecture == "custom" and not self.factory:
            raise ValueError("architecture 'custom' needs factory: 'package.module:callable'")
        if self.architecture != "custom" and self.factory:
            raise ValueError(f"factory is only used with architecture 'custom', not {self.architecture!r}")
        if any(width < 1 for width in self.hidden):
            raise ValueError("hidden layer widths must be >= 1")
        return self

    @property
    def output_dim(self) -> int:
        if self.task != "multiclass":
            return 1
        if self.num_classes is None:
            raise ConfigError("task 'multiclass' needs num_classes (>= 2)")
        return self.num_classes


def import_factory(path: str) -> Any:
    """Import ``package.module:callable``; raise ConfigError naming the path if it fails."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"factory {path!r}: expected 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the user's module raising at import time
        raise ConfigError(f"factory {path!r}: module {module_name!r} does not import ({type(exc).__name__}: {exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"factory {path!r}: module {module_name!r} has no attribute {attr!r}") from None


def build_model(spec: ModelSpec, input_dim: int):
    """Build the torch module for ``spec`` with ``input_dim`` input features."""
    from torch import nn

    if input_dim < 1:
        raise ConfigError(f"model needs at least one input feature, got input_dim={input_dim}")
    if spec.architecture == "custom":
        factory = import_factory(spec.factory or "")
        module = factory(input_dim=input_dim, output_dim=spec.output_dim, **spec.params)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"factory {spec.factory!r} returned {type(module).__name__}, expected a torch.nn.Module")
        return module
    if spec.architecture == "linear":
        return nn.Linear(input_dim, spec.output_dim)
    layers: list[nn.Module] = []
    width = input_dim
    for hidden in spec.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = hidden
    layers.append(nn.Linear(width, spec.output_dim))
    return nn.Sequential(*layers)


def loss_fn(task: str):
    """The training loss for a task; targets: float for regression/binary, int class for multiclass."""
    from torch import nn

    if task == "regression":
        return nn.MSELoss()
    if task == "binary":
        return nn.BCEWithLogitsLoss()
    if task == "multiclass":
        return nn.CrossEntropyLoss()
    raise ConfigError(f"unknown task {task!r}; expected one of {TASK_TYPES}")


def predict_outputs(task: str, raw):
    """Raw model outputs -> user-facing predictions (a torch tensor).

    regression: ``(n,)`` values; binary: ``(n,)`` probabilities of class 1;
    multiclass: ``(n, classes)`` probabilities."""
    import torch

    if task == "regression":
        return raw.reshape(-1)
    if task == "binary":
        return torch.sigmoid(raw.reshape(-1))
    if task == "multiclass":
        return torch.softmax(raw, dim=-1)
    raise ConfigError(f"unknown task {task!r}; expected one of {TASK_TYPES}")
