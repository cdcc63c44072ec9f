"""Config loading: strict keys, dotted error paths, precedence."""

from __future__ import annotations

import pytest

from mlplat.config import PlatformConfig, StrictModel, load_config, parse_config, platform_config
from mlplat.errors import ConfigError


class Inner(StrictModel):
    epochs: int = 1
    lr: float = 0.1


class Outer(StrictModel):
    name: str
    training: Inner = Inner()


def test_unknown_key_is_named_by_dotted_path(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: a\ntraining:\n  epochs: 2\n  learning_rate: 0.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, Outer)
    assert "unknown key 'training.learning_rate'" in str(info.value)
    assert str(path) in str(info.value)


def test_wrong_type_is_named_with_value(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("name: a\ntraining:\n  epochs: ten\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, Outer)
    message = str(info.value)
    assert "'training.epochs'" in message and "'ten'" in message


def test_missing_required_key():
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        parse_config({}, Outer)


def test_top_level_not_a_mapping(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path, Outer)


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, Outer)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", Outer)


def test_precedence_defaults_file_env_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("root: /from/file\nnamespace: file-ns\nserve:\n  port: 9000\n")
    config = platform_config(path, env={"MLPLAT_ROOT": "/from/env", "MLPLAT_SERVE_PORT": "9100"}, namespace="kw-ns")
    assert config.root == "/from/env"
    assert config.namespace == "kw-ns"
    assert config.serve.port == 9100
    assert platform_config(env={}).root == "./.mlplat"


def test_env_type_errors_are_reported():
    with pytest.raises(ConfigError, match="serve.port"):
        platform_config(env={"MLPLAT_SERVE_PORT": "not-a-port"})


def test_secrets_are_hidden_in_dumps():
    config = platform_config(env={"MLPLAT_API_TOKEN": "s3cret", "AWS_SECRET_ACCESS_KEY": "k3y"})
    dumped = str(config.model_dump(mode="json"))
    assert "s3cret" not in dumped and "k3y" not in dumped
    assert config.api_token.get_secret_value() == "s3cret"


def test_registry_db_path_defaults_under_local_root(tmp_path):
    assert PlatformConfig(root=str(tmp_path)).registry_db_path() == str(tmp_path / "registry.db")
    with pytest.raises(ConfigError, match="MLPLAT_REGISTRY_DB"):
        PlatformConfig(root="s3://bucket/x").registry_db_path()
    assert PlatformConfig(root="s3://b/x", registry_db="/tmp/r.db").registry_db_path() == "/tmp/r.db"


def test_example_config_loads():
    config = load_config("configs/platform.yaml", PlatformConfig)
    assert config.serve.port == 8000
