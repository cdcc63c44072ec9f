"""Config loading: strict keys, dotted error paths, precedence."""

from __future__ import annotations

import json

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


# -- empty environment variables count as unset --------------------------------------------


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_blank_environment_variables_count_as_unset(blank, tmp_path):
    from mlplat.config import ENV_VARS

    env = {var: blank for var in ENV_VARS}
    config = platform_config(env={**env, "MLPLAT_CONFIG": blank})
    assert config == PlatformConfig()  # every setting at its default: nothing came from the blanks
    assert config.root == "./.mlplat" and config.registry_url() == PlatformConfig().registry_url()
    # A blank variable does not hide the config file's value either.
    path = tmp_path / "p.yaml"
    path.write_text("root: /from/file\n")
    assert platform_config(path, env={"MLPLAT_ROOT": blank}).root == "/from/file"


def test_environment_values_are_stripped():
    from mlplat.config import env_setting

    assert platform_config(env={"MLPLAT_ROOT": " /data/mlplat \n"}).root == "/data/mlplat"
    assert env_setting("MLPLAT_USER", {"MLPLAT_USER": " "}) is None


# -- settings that live with the cluster (mlplat.cluster_settings) --------------------------

def _published(**settings):
    from mlplat.cluster_settings import cluster_settings

    return cluster_settings(PlatformConfig(**settings))


def test_published_settings_hold_no_secrets(tmp_path):
    from mlplat.cluster_settings import SECRET_SETTINGS

    doc = _published(root=str(tmp_path / "root"), api_token="tok-123", admin_token="adm-456",
                     registry={"url": "postgresql://u:pw-789@db/mlplat"},
                     s3={"endpoint_url": "http://s3:8333", "access_key": "AKIA-1", "secret_key": "sk-2"})
    text = json.dumps(doc)
    for secret in ("tok-123", "adm-456", "pw-789", "AKIA-1", "sk-2"):
        assert secret not in text
    assert doc["settings"]["root"] == f"file://{tmp_path / 'root'}"
    assert doc["settings"]["registry"] == {"url": "postgresql://u:***@db/mlplat"}
    assert doc["settings"]["s3"]["endpoint_url"] == "http://s3:8333"
    assert sorted(doc["secrets_set"]) == sorted(SECRET_SETTINGS)  # names only, never values


def test_a_process_without_settings_adopts_the_cluster_settings():
    from mlplat.cluster_settings import adopt_cluster_settings

    doc = _published(root="/srv/mlplat", serve={"port": 9100}, regions=["eu"])
    adopted = adopt_cluster_settings(platform_config(env={}), doc)
    assert adopted.root == "file:///srv/mlplat"
    assert adopted.registry_url() == "sqlite:////srv/mlplat/registry.db"
    assert adopted.serve.port == 9100 and adopted.regions == ["eu"]


def test_explicit_settings_that_agree_are_kept_and_the_rest_adopted():
    from mlplat.cluster_settings import adopt_cluster_settings

    doc = _published(root="/srv/mlplat", serve={"port": 9100, "telemetry_flush_s": 5.0})
    mine = platform_config(env={"MLPLAT_ROOT": "file:///srv/mlplat/", "MLPLAT_API_TOKEN": "t"},
                           serve__telemetry_flush_s=1.0)
    adopted = adopt_cluster_settings(mine, doc)
    assert adopted.root == "file:///srv/mlplat/"  # its own spelling of the same root
    assert adopted.serve.telemetry_flush_s == 1.0  # explicit: this process's own
    assert adopted.serve.port == 9100  # not given: the cluster's
    assert adopted.api_token.get_secret_value() == "t"  # secrets stay this process's own


def test_explicit_settings_that_disagree_are_an_error_naming_both():
    from mlplat.cluster_settings import adopt_cluster_settings

    doc = _published(root="/srv/mlplat")
    with pytest.raises(ConfigError) as info:
        adopt_cluster_settings(platform_config(env={"MLPLAT_ROOT": "/elsewhere"}), doc)
    message = str(info.value)
    assert "'file:///elsewhere'" in message and "'file:///srv/mlplat'" in message
    assert "MLPLAT_ROOT" in message and "another namespace" in message
    with pytest.raises(ConfigError, match="MLPLAT_REGISTRY_URL"):
        adopt_cluster_settings(platform_config(env={"MLPLAT_REGISTRY_URL": "postgresql://u@db/x"}), doc)
    with pytest.raises(ConfigError, match="MLPLAT_S3_ENDPOINT"):
        adopt_cluster_settings(platform_config(env={"MLPLAT_S3_ENDPOINT": "http://other:9000"}), doc)


def test_registry_with_password_adopts_and_matches_its_own_spelling():
    from mlplat.cluster_settings import adopt_cluster_settings

    doc = _published(root="s3://b/p", registry={"url": "postgresql://u:pw@db/mlplat"})
    # Same database, with the password (which the document lacks): kept as given.
    mine = adopt_cluster_settings(platform_config(env={"MLPLAT_REGISTRY_URL": "postgres://u:pw@db/mlplat"}), doc)
    assert mine.registry_url() == "postgresql://u:pw@db/mlplat" and mine.root == "s3://b/p"
    # Not given: the URL without password (the running registry actor holds the real one).
    assert adopt_cluster_settings(platform_config(env={}), doc).registry_url() == "postgresql://u:***@db/mlplat"


def test_missing_s3_keys_are_reported_only_for_an_s3_root():
    from mlplat.cluster_settings import adopt_cluster_settings, unshared_secrets

    s3 = {"access_key": "a", "secret_key": "b"}
    doc = _published(root="s3://b/p", registry_db="/r.db", s3=s3, api_token="t")
    assert unshared_secrets(adopt_cluster_settings(platform_config(env={}), doc), doc) == ["s3.access_key", "s3.secret_key"]
    keyed = platform_config(env={"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    assert unshared_secrets(adopt_cluster_settings(keyed, doc), doc) == []
    local = _published(root="/srv", s3=s3)
    assert unshared_secrets(adopt_cluster_settings(platform_config(env={}), local), local) == []


def test_a_document_of_another_format_is_refused():
    from mlplat.cluster_settings import adopt_cluster_settings

    with pytest.raises(ConfigError, match="same mlplat version"):
        adopt_cluster_settings(PlatformConfig(), {"format": 99, "settings": {}})


def test_runtime_env_inside_a_job_never_sets_what_the_job_sets():
    from mlplat.cluster_settings import JOB_CONFIG_ENV, job_env_vars, runtime_env_vars

    assert job_env_vars({}) is None  # not a job: everything is passed
    assert runtime_env_vars({"MLPLAT_ROOT": "/r"}, None) == {"MLPLAT_ROOT": "/r"}
    no_env = {JOB_CONFIG_ENV: json.dumps({"runtime_env": {"working_dir": "gcs://x.zip"}, "metadata": {}})}
    assert job_env_vars(no_env) == {}
    assert runtime_env_vars({"MLPLAT_ROOT": "/r"}, job_env_vars(no_env)) == {"MLPLAT_ROOT": "/r"}
    with_env = {JOB_CONFIG_ENV: json.dumps({"runtime_env": {"env_vars": {"MLPLAT_ROOT": "/r", "X": "1"}}})}
    assert runtime_env_vars({"MLPLAT_ROOT": "/r", "AWS_REGION": "eu"}, job_env_vars(with_env)) == {"AWS_REGION": "eu"}


def test_settings_with_ingress_autoscaling_round_trip_through_the_cluster():
    """A platform published with serve.ingress_autoscaling is adopted by a bare process and by
    a process with the same settings (model_dump marks every field set: ingress_replicas None)."""
    from mlplat.cluster_settings import adopt_cluster_settings, cluster_settings

    platform = PlatformConfig(root="/srv/mlplat", serve={"ingress_autoscaling": {"min_replicas": 1, "max_replicas": 3}})
    published = cluster_settings(platform)
    for local in (PlatformConfig(), platform):
        adopted = adopt_cluster_settings(local, published)
        assert adopted.serve.ingress_autoscaling is not None and adopted.serve.ingress_autoscaling.max_replicas == 3
        assert adopted.serve.ingress_replicas is None


def test_health_headroom_must_leave_room_for_inference():
    from mlplat.config import parse_config

    with pytest.raises(ConfigError, match=r"ingress_health_headroom \(16\) must be below .*ingress_max_ongoing_requests \(16\)"):
        parse_config({"serve": {"ingress_max_ongoing_requests": 16}}, PlatformConfig)
    assert parse_config({"serve": {"ingress_max_ongoing_requests": 16, "ingress_health_headroom": 4}},
                        PlatformConfig).serve.ingress_health_headroom == 4
