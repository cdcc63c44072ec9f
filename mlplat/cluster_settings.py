"""Settings that live with the cluster (docs/operations.md, "Jobs on a cluster").

The first mlplat process that starts on a Ray cluster publishes its settings there (every
setting but the secrets); a process that connects later without settings of its own -- a job
started with ``ray job submit`` and no ``MLPLAT_*`` variables -- adopts them. Pure functions:
where the document is kept is ``mlplat.api``'s business.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from mlplat.config import PlatformConfig, _set_dotted, parse_config, redact_url
from mlplat.errors import ConfigError

__all__ = ["normalize_root", "explicit_settings", "cluster_settings", "adopt_cluster_settings", "unshared_secrets",
           "job_env_vars", "runtime_env_vars", "CLUSTER_SETTINGS_FORMAT", "SECRET_SETTINGS", "JOB_CONFIG_ENV"]


#: The version of the document :func:`cluster_settings` builds.
CLUSTER_SETTINGS_FORMAT = 1
#: Dotted settings that are never published to the cluster: whoever can read the cluster's
#: key-value store would read them. Jobs that need one get it from their own environment.
SECRET_SETTINGS = ("api_token", "admin_token", "s3.access_key", "s3.secret_key")
#: The settings that say where the platform's state lives, and the variables that set them:
#: a process that sets one explicitly to another value than the cluster's platform is refused.
_IDENTITY_SETTINGS = {"root": "MLPLAT_ROOT", "registry": "MLPLAT_REGISTRY_URL / MLPLAT_REGISTRY_DB",
                      "s3.endpoint_url": "MLPLAT_S3_ENDPOINT"}


def normalize_root(root: str) -> str:
    """The storage root as the URI every process agrees on (``Storage.uri``): local paths
    absolute under ``file://``, ``s3://bucket/prefix`` without trailing slash.

    >>> normalize_root("s3://bucket/prefix/")
    's3://bucket/prefix'
    >>> normalize_root("file:///data/mlplat")
    'file:///data/mlplat'
    """
    text = root.strip()
    if text.startswith("s3://"):
        return "s3://" + text.removeprefix("s3://").strip("/")
    if "://" in text and not text.startswith("file://"):
        return text  # open_root names the unsupported scheme
    return "file://" + os.path.abspath(os.path.expanduser(text.removeprefix("file://")))


def explicit_settings(config: BaseModel, prefix: str = "") -> set[str]:
    """The dotted names of the settings ``config`` was given (file, environment, keyword),
    as opposed to those left at their defaults.

    >>> sorted(explicit_settings(PlatformConfig(root="/r", serve={"port": 9000})))
    ['root', 'serve.port']
    """
    names: set[str] = set()
    for field in config.model_fields_set:
        value = getattr(config, field)
        if isinstance(value, BaseModel):
            names |= explicit_settings(value, f"{prefix}{field}.")
        else:
            names.add(prefix + field)
    return names


def cluster_settings(config: PlatformConfig) -> dict[str, Any]:
    """The document a platform publishes to its Ray cluster: every setting but the secrets
    (:data:`SECRET_SETTINGS`, only whether each is set) and ``ray_address``; the root as an
    absolute URI and the registry as its URL without password."""
    settings = config.model_dump(mode="json", exclude={"api_token": True, "admin_token": True, "ray_address": True,
                                                       "s3": {"access_key", "secret_key"}})
    settings["root"] = normalize_root(config.root)
    settings["registry"] = {"url": redact_url(config.registry_url())}
    settings["registry_db"] = None
    secrets = [name for name in SECRET_SETTINGS if _get_dotted(config, name) is not None]
    return {"format": CLUSTER_SETTINGS_FORMAT, "settings": settings, "secrets_set": secrets}


def adopt_cluster_settings(local: PlatformConfig, published: Mapping[str, Any],
                           where: str = "this Ray cluster") -> PlatformConfig:
    """``local`` with every setting it was not given taken from the platform's ``published``
    settings (:func:`cluster_settings`); its own explicit settings win. An explicit setting
    that says where the state lives (root, registry, S3 endpoint) and disagrees with the
    published one is a ConfigError naming both values and what to do."""
    if published.get("format") != CLUSTER_SETTINGS_FORMAT:
        raise ConfigError(f"the mlplat settings published on {where} have format {published.get('format')!r}, "
                          f"this mlplat reads format {CLUSTER_SETTINGS_FORMAT}: use the same mlplat version as the cluster")
    theirs: dict[str, Any] = dict(published["settings"])
    explicit = explicit_settings(local)
    ours = {"root": normalize_root(local.root), "s3.endpoint_url": local.s3.endpoint_url,
            "registry": redact_url(local.registry_url()) if explicit & {"registry.url", "registry_db"} else None}
    cluster = {"root": theirs.get("root"), "s3.endpoint_url": (theirs.get("s3") or {}).get("endpoint_url"),
               "registry": (theirs.get("registry") or {}).get("url")}
    given = {"root": "root" in explicit, "s3.endpoint_url": "s3.endpoint_url" in explicit,
             "registry": ours["registry"] is not None}
    conflicts = [f"{name}: this process has {ours[name]!r} ({_IDENTITY_SETTINGS[name]}), the platform on {where} "
                 f"has {cluster[name]!r}" for name in _IDENTITY_SETTINGS if given[name] and ours[name] != cluster[name]]
    if conflicts:
        raise ConfigError(
            f"these settings disagree with the mlplat platform already running on {where} (namespace "
            f"{local.namespace!r}):\n  " + "\n  ".join(conflicts) + "\nUnset them to use the cluster's settings (a job "
            "needs no MLPLAT_* variables), set them to the cluster's values, or use another namespace (MLPLAT_NAMESPACE)")
    data = local.model_dump()  # python mode: secrets stay SecretStr
    for name in _leaves(theirs):
        if name not in explicit and name.split(".", 1)[0] not in ("ray_address", "namespace"):
            _set_dotted(data, name, _get_dotted(theirs, name))
    if given["registry"]:  # keep this process's own form of the same database (with its password)
        data["registry"], data["registry_db"] = local.registry.model_dump(), local.registry_db
    return parse_config(data, PlatformConfig, source=f"the mlplat settings published on {where}")


def unshared_secrets(local: PlatformConfig, published: Mapping[str, Any]) -> list[str]:
    """The S3 keys the cluster's platform was given and this process lacks, when the root is on
    S3: never published, so storage falls back to the default credentials of the node (an
    instance role). A job that needs them gets them from its environment (``--runtime-env-json``)."""
    if not normalize_root(local.root).startswith("s3://"):
        return []
    return [name for name in published.get("secrets_set", [])
            if name.startswith("s3.") and _get_dotted(local, name) is None]


#: Set by Ray in the environment of a job's driver (``ray job submit``): the job's config, with
#: the runtime env that ``ray.init`` in that driver merges its own ``runtime_env`` into.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def job_env_vars(environ: Mapping[str, str]) -> dict[str, str] | None:
    """The ``env_vars`` of the runtime env of the Ray job this process is the driver of
    (``{}`` when it has none), or None when it is not a job's driver.

    >>> job_env_vars({JOB_CONFIG_ENV: '{"runtime_env": {"env_vars": {"MLPLAT_ROOT": "/r"}}}'})
    {'MLPLAT_ROOT': '/r'}
    >>> job_env_vars({}) is None
    True
    """
    raw = environ.get(JOB_CONFIG_ENV)
    if raw is None:
        return None
    try:
        runtime_env = (json.loads(raw) or {}).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}


def runtime_env_vars(wanted: Mapping[str, str], job_vars: Mapping[str, str] | None) -> dict[str, str]:
    """The env vars to pass in ``ray.init(runtime_env=...)`` so workers see this driver's
    settings: inside a job (``job_vars`` not None) only those the job's runtime env does not
    set already -- Ray refuses to merge two runtime envs that both set a variable, and the
    job's workers inherit the job's own.

    >>> runtime_env_vars({"MLPLAT_ROOT": "/r", "AWS_REGION": "eu"}, {"MLPLAT_ROOT": "/r"})
    {'AWS_REGION': 'eu'}
    """
    if job_vars is None:
        return dict(wanted)
    return {k: v for k, v in wanted.items() if k not in job_vars}


def _leaves(data: Mapping[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append(prefix + key)
    return out


def _get_dotted(source: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        source = source.get(part) if isinstance(source, Mapping) else getattr(source, part, None)
        if source is None:
            return None
    return source
