"""Which batch-inference executor validation and scoring use (pure)."""

from __future__ import annotations

import pytest

from mlplat.errors import ValidationError
from mlplat.validation.gate import ValidationPolicy
from mlplat.validation.inference import choose_executor


def test_auto_is_actors_with_gpus_and_tasks_without():
    assert choose_executor("auto", cluster_gpus=0) == "tasks"
    assert choose_executor("auto", cluster_gpus=2) == "actors"
    assert choose_executor("actors", cluster_gpus=0) == "actors"
    assert choose_executor("tasks", cluster_gpus=4) == "tasks"


def test_unknown_executor_is_a_clear_error():
    with pytest.raises(ValidationError, match="'threads' is not one of auto, actors, tasks"):
        choose_executor("threads", cluster_gpus=0)
    with pytest.raises(ValueError, match="executor"):
        ValidationPolicy(executor="threads")


def test_the_validate_example_config_parses():
    from pathlib import Path

    import yaml

    doc = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "validate-example.yaml").read_text())
    assert ValidationPolicy(**doc["policy"]).executor == "auto"
