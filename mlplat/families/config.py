"""The family training request: ``configs/family*.yaml``, strict like every other config."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import Field, field_validator

from mlplat.config import StrictModel, load_config, parse_config
from mlplat.errors import ConfigError
from mlplat.families.policy import validate_family_name
from mlplat.models import ModelSpec
from mlplat.training.config import FeatureSetSelector
from mlplat.validation.gate import ValidationPolicy

__all__ = ["FamilyFit", "FamilyConfig", "parse_family_config", "load_family_config", "family_config_hash"]


class FamilyFit(StrictModel):
    """How each member is fitted (a plain torch loop in one worker process per partition)."""

    epochs: int = Field(20, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-2, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    seed: int = 0
    #: Entities with fewer training rows get no member (the reason is recorded in the family).
    min_rows_per_member: int = Field(20, ge=1)
    #: Groups of entities fitted by one task each; None: 2 per CPU of the cluster.
    partitions: int | None = Field(None, ge=1, le=100_000)
    #: A pack shard takes members while its data stays within this size.
    shard_max_bytes: int = Field(64 << 20, ge=1 << 10)


class FamilyConfig(StrictModel):
    """One model per value of ``entity_column`` of a feature set, trained as one job.

    Members are models named ``<family>--<entity>``; their weights share one pack."""

    family: str
    feature_set: FeatureSetSelector
    entity_column: str = Field(min_length=1)
    label: str | None = None
    spec: ModelSpec
    fit: FamilyFit = Field(default_factory=FamilyFit)
    #: Guardrails every member is validated with (``mlplat family validate``), as for one model.
    validation: ValidationPolicy = Field(default_factory=ValidationPolicy)
    code_version: str | None = None

    @field_validator("family")
    @classmethod
    def _family_name(cls, value: str) -> str:
        try:
            return validate_family_name(value)
        except Exception as exc:
            raise ValueError(str(exc)) from None


def parse_family_config(data: FamilyConfig | Mapping[str, Any]) -> FamilyConfig:
    if isinstance(data, FamilyConfig):
        return data
    return parse_config(data, FamilyConfig, source="family config")


def load_family_config(path: str) -> FamilyConfig:
    return load_config(path, FamilyConfig)


def family_config_hash(config: FamilyConfig) -> str:
    """sha256 of the recipe (the config as JSON, keys sorted): members of one recipe share it."""
    if not isinstance(config, FamilyConfig):
        raise ConfigError(f"expected a FamilyConfig, got {type(config).__name__}")
    text = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
