"""docs/configuration.md is generated from the settings models and must match them (no Ray)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel, Field

from mlplat import config
from mlplat.config_reference import FALLBACK_DOCS, OTHER_ENV_VARS, field_docs, render

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration.md"
REGENERATE = "python -m mlplat.config_reference > docs/configuration.md"


def _leaf_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        nested = next((a for a in (info.annotation, *getattr(info.annotation, "__args__", ()))
                       if isinstance(a, type) and issubclass(a, BaseModel)), None)
        keys += _leaf_keys(nested, f"{prefix}{name}.") if nested else [f"{prefix}{name}"]
    return keys


def _row(text: str, key: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith(f"| `{key}` |"))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


def test_the_committed_reference_is_up_to_date() -> None:
    assert DOC.read_text() == render(), f"docs/configuration.md is stale: regenerate it with `{REGENERATE}`"


def test_the_module_prints_the_reference() -> None:
    out = subprocess.run([sys.executable, "-m", "mlplat.config_reference"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out == render()


def test_every_field_has_a_row_with_type_default_env_and_doc() -> None:
    text = render()
    keys = _leaf_keys(config.PlatformConfig)
    assert len(keys) > 50 and "serve.pool.max_replicas" in keys and "serve.ingress_autoscaling.min_replicas" in keys
    for key in keys:
        _, kind, default, _, doc = _row(text, key)
        assert kind and default, key
        assert doc, f"{key} has no documentation: give it Field(description=...) in mlplat/config/"
    for var, key in config.ENV_VARS.items():
        assert f"`{var}`" in _row(text, key)[3], (var, key)


def test_rows_carry_the_real_values() -> None:
    text = render()
    assert _row(text, "serve.port")[1:4] == ["int (>= 1, <= 65535)", "`8000`", "`MLPLAT_SERVE_PORT`"]
    assert _row(text, "s3.endpoint_url")[3] == "`MLPLAT_S3_ENDPOINT`, `AWS_ENDPOINT_URL`"
    assert _row(text, "api_token")[1:3] == ["secret or null", "`null`"]
    # a `#:` comment, a comment inherited from the base class, a trailing comment
    assert _row(text, "serve.allow_anonymous")[4].startswith("Without a token every route but health answers 401")
    assert _row(text, "serve.pool.upscale_delay_s")[4].startswith("The load must stay above (below) the target")
    assert _row(text, "registry_db")[4] == "a SQLite file path; registry.url is the general form"
    assert "matching `^[a-z0-9][a-z0-9_-]{0,63}$`" in _row(text, "serve.telemetry_context_keys")[1]


def test_a_description_wins_over_comments() -> None:
    class Example(BaseModel):
        #: from the comment
        a: int = Field(1, description="from the description")
        #: first line
        #: second line
        b: int = 2
        c: int = 3  # trailing
        d: int = 4

    assert field_docs(Example) == {"a": "from the description", "b": "first line second line", "c": "trailing"}


def test_fallback_docs_name_real_undocumented_fields() -> None:
    """FALLBACK_DOCS is a stopgap: each entry names a field mlplat/config/ declares and does not document."""
    models = {cls.__name__: cls for cls in vars(config).values() if isinstance(cls, type) and issubclass(cls, BaseModel)}
    for (cls_name, field), _ in FALLBACK_DOCS.items():
        assert cls_name in models and field in models[cls_name].model_fields, (cls_name, field)
        assert field not in field_docs(models[cls_name], fallback=False), (
            f"mlplat/config/ now documents {cls_name}.{field}: remove it from FALLBACK_DOCS and run `{REGENERATE}`")


def test_every_environment_variable_mlplat_reads_is_documented() -> None:
    names = set()
    for path in (REPO / "mlplat").rglob("*.py"):
        names |= set(re.findall(r"[\"'](MLPLAT_[A-Z0-9_]+)[\"']", path.read_text()))
    missing = sorted(names - set(config.ENV_VARS) - set(OTHER_ENV_VARS))
    assert not missing, f"{missing}: add them to ENV_VARS (mlplat/config/) or OTHER_ENV_VARS (mlplat/config_reference.py)"
