"""cluster.yaml passes Ray's own cluster-config validation (what `ray up` runs before it touches
AWS: ``prepare_config`` then ``validate_config``) and keeps mlplat's invariants: the same
environment on every node's ``ray start``, GPU workers that advertise GPUs, a head that takes
no training. No Ray cluster, no AWS: ~1 s."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlplat.config import PlatformConfig, ServeSettings, platform_config
from mlplat.serving import serve_env

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


def load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_validated(config: dict[str, Any]) -> dict[str, Any]:
    """The config as `ray up` validates it (ray.autoscaler._private.commands._bootstrap_config,
    without the provider's AWS calls)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def start_env(commands: list[str]) -> dict[str, str]:
    """The variables exported in front of the `ray start` command."""
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 1, f"expected one `ray start` command, got {commands}"
    prefix = starts[0].split("ray start")[0]
    env: dict[str, str] = {}
    for statement in prefix.split(";"):
        words = shlex.split(statement)
        if words and words[0] == "export":
            env.update(word.split("=", 1) for word in words[1:])
    return env


#: What every node must have in its environment when Ray starts (serve.haproxy: true).
def required_env() -> dict[str, str]:
    env = serve_env(PlatformConfig(serve=ServeSettings(haproxy=True, throughput_optimized=True)))
    env.pop("RAY_SERVE_HAPROXY_NBTHREAD")  # sized from the cores of the machine that computes it
    return {**env, "RAY_AUTH_MODE": "token", "MLPLAT_SERVE_HAPROXY": "1"}


def problems(config: dict[str, Any]) -> list[str]:
    """mlplat's invariants over a validated config; empty when all hold."""
    found = []
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    if head["resources"].get("CPU", 1) != 0 or head["resources"].get("GPU", 0) != 0:
        found.append(f"head advertises {head['resources']}: it must advertise CPU: 0 and GPU: 0 (no training there)")
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    if not gpu_types:
        found.append("no worker type advertises a GPU")
    for name, t in gpu_types.items():
        if not 0 <= t["min_workers"] <= t["max_workers"] or t["max_workers"] < 1:
            found.append(f"{name}: min_workers/max_workers {t['min_workers']}/{t['max_workers']}")
        if any("download.pytorch.org/whl/cpu" in c for c in t.get("worker_setup_commands", config["setup_commands"])):
            found.append(f"{name}: installs the CPU build of torch")
    cpu_types = [name for name, t in types.items() if name != config["head_node_type"] and not t["resources"].get("GPU")]
    if not any(types[n]["min_workers"] >= 1 and types[n]["max_workers"] > types[n]["min_workers"] for n in cpu_types):
        found.append("no autoscaling CPU worker type with min_workers >= 1 (the Serve replicas need one)")
    if not any("download.pytorch.org/whl/cpu" in c for c in config["setup_commands"]):
        found.append("setup_commands do not install the CPU build of torch")
    for where, commands in [("head", config["setup_commands"] + config["head_setup_commands"]),
                            *[(n, types[n].get("worker_setup_commands", config["setup_commands"])) for n in types
                              if n != config["head_node_type"]]]:
        if not any("mlplat" in c and "pip install" in c for c in commands):
            found.append(f"{where}: no setup command installs mlplat")
    head_env = start_env(config["head_start_ray_commands"])
    worker_env = start_env(config["worker_start_ray_commands"])
    for where, env in (("head_start_ray_commands", head_env), ("worker_start_ray_commands", worker_env)):
        missing = {k: v for k, v in required_env().items() if env.get(k) != v}
        if missing:
            found.append(f"{where}: lacks {missing}")
        if not env.get("MLPLAT_ROOT", "").startswith("s3://"):
            found.append(f"{where}: MLPLAT_ROOT is {env.get('MLPLAT_ROOT')!r}, expected s3://...")
    if head_env != worker_env:
        found.append(f"head and workers start Ray with different environments: {head_env} vs {worker_env}")
    if "~/.ray/auth_token" not in config["file_mounts"]:
        found.append("file_mounts does not copy ~/.ray/auth_token to the nodes")
    for where, commands in setup_by_node_type(config).items():
        folders = [m.group(1) for c in commands if "loopback_env" in c for m in [LOOPBACK_DIR.search(c)] if m]
        wrapper = head_env.get("RAY_SERVE_HAPROXY_BINARY_PATH")
        if not folders or wrapper != f"{folders[-1]}/haproxy":
            found.append(f"{where}: RAY_SERVE_HAPROXY_BINARY_PATH {wrapper!r} is not the loopback wrapper its "
                         f"setup commands install ({folders})")
    return found


LOOPBACK_DIR = re.compile(r"loopback_env\(\{\}, directory='([^']+)'\)")


def setup_by_node_type(config: dict[str, Any]) -> dict[str, list[str]]:
    """The setup commands each node type runs (after prepare_config merged setup_commands in)."""
    head = config["head_node_type"]
    return {name: (config["head_setup_commands"] if name == head
                   else t.get("worker_setup_commands", config["worker_setup_commands"]))
            for name, t in config["available_node_types"].items()}


def test_ray_accepts_cluster_yaml():
    config = ray_validated(load())
    assert config["provider"]["type"] == "aws"
    assert set(config["available_node_types"]) == {"head", "cpu-worker", "gpu-worker"}


def test_mlplat_invariants_hold():
    assert problems(ray_validated(load())) == []


def test_gpu_workers_scale_from_zero_with_a_gpu_each():
    gpu = ray_validated(load())["available_node_types"]["gpu-worker"]
    assert gpu["resources"]["GPU"] == 1 and gpu["resources"]["CPU"] >= 1
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1


def test_start_environment_is_a_valid_platform_config():
    """The environment every node starts with loads as mlplat settings: S3 root, a registry
    database on local disk, Serve in HAProxy mode (whose env matches what Ray was started with)."""
    env = start_env(load()["head_start_ray_commands"])
    config = platform_config(env=env)
    assert config.root.startswith("s3://CHANGE-ME-") and config.serve.haproxy is True
    assert config.registry_url() == "sqlite:///" + env["MLPLAT_REGISTRY_DB"]
    assert {k: v for k, v in serve_env(config).items() if k != "RAY_SERVE_HAPROXY_NBTHREAD"}.items() <= env.items()
    assert int(env["RAY_SERVE_HAPROXY_NBTHREAD"]) >= 1


def test_loopback_wrapper_setup_command_installs_the_wrapper(tmp_path):
    """The setup command that puts HAProxy's stats/metrics on loopback, run here with this
    Python and a temporary directory: it writes ``<directory>/haproxy``."""
    command = next(c for c in load()["setup_commands"] if "loopback_env" in c)
    code = shlex.split(command)[2].replace("/home/ubuntu/.cache/mlplat", str(tmp_path / "wrapper"))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    wrapper = tmp_path / "wrapper" / "haproxy"
    assert wrapper.is_file() and "haproxy-loopback.py" in wrapper.read_text()
    assert "127.0.0.1" in (tmp_path / "wrapper" / "haproxy-loopback.py").read_text()


@pytest.mark.parametrize("mutate, needle", [
    (lambda c: c["available_node_types"]["head"]["resources"].update(CPU=4), "head advertises"),
    (lambda c: c["available_node_types"]["gpu-worker"]["resources"].pop("GPU"), "no worker type advertises a GPU"),
    (lambda c: c["worker_start_ray_commands"].__setitem__(1, c["worker_start_ray_commands"][1].replace(
        "RAY_SERVE_ENABLE_HA_PROXY=1 ", "")), "worker_start_ray_commands: lacks {'RAY_SERVE_ENABLE_HA_PROXY': '1'}"),
    (lambda c: c["head_start_ray_commands"].__setitem__(1, c["head_start_ray_commands"][1].replace(
        "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled")), "head_start_ray_commands: lacks {'RAY_AUTH_MODE': 'token'}"),
    (lambda c: c["available_node_types"]["gpu-worker"]["worker_setup_commands"].__setitem__(
        1, c["setup_commands"][1]), "gpu-worker: installs the CPU build of torch"),
    (lambda c: c["available_node_types"]["cpu-worker"].update(min_workers=0), "no autoscaling CPU worker type"),
    (lambda c: c["file_mounts"].pop("~/.ray/auth_token"), "auth_token"),
    (lambda c: c["available_node_types"]["gpu-worker"]["worker_setup_commands"].pop(), "gpu-worker: RAY_SERVE_HAPROXY_BINARY_PATH"),
])
def test_invariant_checks_can_fail(mutate, needle):
    config = load()
    mutate(config)
    found = problems(ray_validated(config))
    assert any(needle in p for p in found), found


@pytest.mark.parametrize("mutate", [
    lambda c: c["available_node_types"]["head"].pop("resources"),
    lambda c: c["available_node_types"]["cpu-worker"].update(min_worker=1),
    lambda c: c.update(max_workers=0),
    lambda c: c.update(head_node_type="nope"),
])
def test_ray_validation_can_fail(mutate):
    config = load()
    mutate(config)
    with pytest.raises(Exception):  # noqa: B017 - jsonschema.ValidationError or ValueError, as `ray up` raises them
        ray_validated(config)
