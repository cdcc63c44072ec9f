"""Platform settings and strict config loading.

Settings come from (lowest to highest precedence): defaults, an optional YAML file, the
environment (``MLPLAT_*``), then explicit keyword overrides. Every config model forbids
unknown keys, and :func:`load_config` reports problems by dotted path.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pydantic
import yaml
from pydantic import BaseModel, Field, SecretStr, model_validator

from mlplat.config.base import StrictModel
from mlplat.config.serve import DedicatedSettings, PoolSettings, ScalingSettings, ServeSettings
from mlplat.errors import ConfigError

__all__ = [
    "StrictModel",
    "S3Settings",
    "ScalingSettings",
    "PoolSettings",
    "DedicatedSettings",
    "ServeSettings",
    "PlatformConfig",
    "RegistrySettings",
    "WeightStorageSettings",
    "normalize_registry_url",
    "redact_url",
    "REGISTRY_URL_SETTING",
    "load_config",
    "parse_config",
    "platform_config",
    "ENV_VARS",
    "env_setting",
]

M = TypeVar("M", bound=BaseModel)


#: How messages name the registry URL setting.
REGISTRY_URL_SETTING = "registry.url (env MLPLAT_REGISTRY_URL)"


def normalize_registry_url(url_or_path: str | Path) -> str:
    """``registry.url`` in canonical form; a one-line ConfigError naming the setting otherwise.

    SQLite paths become absolute (relative ones to this process's directory): the registry actor
    opens the file from another working directory.

    >>> normalize_registry_url("/var/lib/mlplat/registry.db")
    'sqlite:////var/lib/mlplat/registry.db'
    >>> normalize_registry_url("postgres://u@db/mlplat")
    'postgresql://u@db/mlplat'
    """
    text = str(url_or_path).strip()
    if not text:
        raise ConfigError(f"{REGISTRY_URL_SETTING} is empty: expected sqlite:///PATH or postgresql://USER@HOST/DB")
    if "://" not in text:
        if re.match(r"^(host|dbname|user|port|password)\s*=", text):
            raise ConfigError(f"{REGISTRY_URL_SETTING}: a libpq keyword string is not supported; write it as a URL: "
                              "postgresql://USER:PASSWORD@HOST:PORT/DB")
        return _sqlite_url(text)  # a plain file path
    scheme, _, rest = text.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(f"{REGISTRY_URL_SETTING} {text!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
        return _sqlite_url(rest[1:])
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        parts = urlsplit("postgresql://" + rest)
        if not parts.netloc and "host=" not in parts.query:
            raise ConfigError(f"{REGISTRY_URL_SETTING} {redact_url(text)!r}: expected postgresql://USER@HOST[:PORT]/DB "
                              "or postgresql://USER@/DB?host=/socket/dir")
        return urlunsplit(parts)
    raise ConfigError(f"{REGISTRY_URL_SETTING} {redact_url(text)!r} is not supported: expected sqlite:///PATH or "
                      "postgresql://USER@HOST/DB")


def _sqlite_url(path: str) -> str:
    if path == ":memory:":
        return "sqlite:///:memory:"
    return "sqlite:///" + str(Path(path).expanduser().resolve())


def redact_url(url: str) -> str:
    """The URL without its password, in the user part or in ``?password=`` (for messages)."""
    parts = urlsplit(url)
    if not parts.password and "password=" not in parts.query:
        return url  # untouched: urlunsplit would also rewrite sqlite:////abs as sqlite://abs
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if "password=" in parts.query:
        parts = parts._replace(query=re.sub(r"(^|&)password=[^&]*", r"\1password=***", parts.query))
    return urlunsplit(parts)



class S3Settings(StrictModel):
    """Credentials and endpoint for an S3-compatible store (AWS, SeaweedFS, MinIO...)."""

    endpoint_url: str | None = None
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    region: str = "us-east-1"


class RegistrySettings(StrictModel):
    """Where the registry's database is: ``url`` is ``sqlite:///PATH`` (embedded, the default:
    ``<root>/registry.db`` for a local root) or ``postgresql://USER@HOST/DB`` (shared by clusters)."""

    url: str | None = None


class WeightStorageSettings(StrictModel):
    """How a model version's weights are laid out on storage, chosen by their size in bytes
    (mlplat/models/placement.py, docs/weights.md): small ones packed, medium ones in one
    ``model.safetensors``, very large ones in several safetensors shards."""

    #: Weights of at most this many bytes are packed: a lone version's weights travel inside its
    #: bundle.json (one read on a cold load); model families pack many members into shared files.
    #: 0: never pack.
    packed_max_bytes: int = Field(1024 * 1024, ge=0)
    #: Weights above ``packed_max_bytes`` and up to this many bytes go into one ``model.safetensors``;
    #: larger ones are sharded (``model-00001-of-0000N.safetensors`` + an index), loaded and verified
    #: shard by shard, so a load holds one shard's bytes in memory at a time.
    file_max_bytes: int = Field(2 * 1024**3, ge=0)
    #: The most bytes of tensor data one shard file holds (sharded weights and packs). A single tensor
    #: (sharded) or a single member (packs) larger than this gets a shard of its own; neither is split.
    shard_max_bytes: int = Field(1024**3, ge=1)

    @model_validator(mode="after")
    def _check_thresholds(self) -> WeightStorageSettings:
        if self.packed_max_bytes > self.file_max_bytes:
            raise ValueError(f"weights.packed_max_bytes ({self.packed_max_bytes}) must be <= weights.file_max_bytes "
                             f"({self.file_max_bytes}): weights up to packed_max_bytes are packed, up to "
                             "file_max_bytes go in one file, the rest are sharded")
        return self


class PlatformConfig(StrictModel):
    """Where mlplat keeps its state and how it reaches Ray."""

    root: str = "./.mlplat"
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    registry_db: str | None = None  # a SQLite file path; registry.url is the general form
    ray_address: str | None = None
    namespace: str = "mlplat"
    api_token: SecretStr | None = None
    #: The token of the serving app's /admin routes (rollback without a Ray driver). A separate
    #: secret from api_token; without it the admin routes answer 401.
    admin_token: SecretStr | None = None
    #: The regional cells this platform serves; ``--region`` must name one of them.
    regions: list[str] = Field(default_factory=list)
    s3: S3Settings = Field(default_factory=S3Settings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    #: Where each model version's weights go by size: packed, one file or sharded.
    weights: WeightStorageSettings = Field(default_factory=WeightStorageSettings)

    @model_validator(mode="after")
    def _check_cells_and_tokens(self) -> PlatformConfig:
        for region in self.regions:
            if not _REGION.fullmatch(region):
                raise ValueError(f"regions: {region!r} is not a region name (lowercase letters, digits, '_' or '-', "
                                 "starting with a letter, e.g. 'eu' or 'us-east')")
        cell = self.serve.region
        if cell is not None and (not _REGION.fullmatch(cell) or (self.regions and cell not in self.regions)):
            known = ", ".join(self.regions) or "none listed"
            raise ValueError(f"serve.region {cell!r} must be a region name and one of `regions` ({known})")
        if self.admin_token is not None and self.api_token is not None and \
                self.admin_token.get_secret_value() == self.api_token.get_secret_value():
            raise ValueError("admin_token (MLPLAT_ADMIN_TOKEN) must differ from api_token (MLPLAT_API_TOKEN): "
                             "an inference client must not be able to roll models back")
        return self

    def check_region(self, region: str | None) -> str | None:
        """``region`` if it names one of the configured ``regions`` (None/"" = all regions), else ConfigError.

        >>> PlatformConfig(regions=["eu", "us"]).check_region("eu")
        'eu'
        """
        if region is None or region == "":
            return None
        if region not in self.regions:
            known = ", ".join(self.regions) if self.regions else "none are configured (set `regions: [eu, us]` in the config)"
            raise ConfigError(f"unknown region {region!r}: the platform's regions are {known}")
        return region

    def registry_url(self) -> str:
        """The registry database as a URL: ``registry.url``, else ``registry_db`` (a SQLite path),
        else ``sqlite:///<root>/registry.db`` for a local root. Both set and different: ConfigError."""
        if self.registry.url and self.registry_db:
            url, path = normalize_registry_url(self.registry.url), normalize_registry_url(self.registry_db)
            if url != path:
                raise ConfigError(f"registry.url {self.registry.url!r} (MLPLAT_REGISTRY_URL) and registry_db "
                                  f"{self.registry_db!r} (MLPLAT_REGISTRY_DB) name different databases; set one of them")
        if self.registry.url:
            return normalize_registry_url(self.registry.url)
        return normalize_registry_url(self.registry_db_path())

    def registry_db_path(self) -> str:
        """The SQLite file of the registry: explicit, else ``<root>/registry.db`` for a local root."""
        if self.registry.url:
            url = normalize_registry_url(self.registry.url)
            if not url.startswith("sqlite:///"):
                raise ConfigError(f"the registry is not a SQLite file: registry.url is {redact_url(url)!r}")
            return url.removeprefix("sqlite:///")
        if self.registry_db:
            return self.registry_db
        if "://" in self.root and not self.root.startswith("file://"):
            raise ConfigError(
                f"root {self.root!r} is remote, so the registry database needs a local path: "
                "set MLPLAT_REGISTRY_DB (or registry_db in the config file)"
            )
        local_root = self.root.removeprefix("file://")
        return str(Path(local_root).expanduser().resolve() / "registry.db")


#: Environment variable -> dotted config key.
ENV_VARS: dict[str, str] = {
    "MLPLAT_ROOT": "root",
    "MLPLAT_REGISTRY_DB": "registry_db",
    "MLPLAT_REGISTRY_URL": "registry.url",
    "MLPLAT_RAY_ADDRESS": "ray_address",
    "MLPLAT_NAMESPACE": "namespace",
    "MLPLAT_API_TOKEN": "api_token",
    "MLPLAT_ADMIN_TOKEN": "admin_token",
    "MLPLAT_SERVE_REGION": "serve.region",
    "MLPLAT_S3_ENDPOINT": "s3.endpoint_url",
    "AWS_ENDPOINT_URL": "s3.endpoint_url",
    "AWS_ACCESS_KEY_ID": "s3.access_key",
    "AWS_SECRET_ACCESS_KEY": "s3.secret_key",
    "AWS_REGION": "s3.region",
    "MLPLAT_SERVE_HOST": "serve.host",
    "MLPLAT_SERVE_PORT": "serve.port",
    "MLPLAT_SERVE_GRPC_PORT": "serve.grpc_port",
    "MLPLAT_SERVE_DIRECT_PORT": "serve.direct_port",
    "MLPLAT_SERVE_HAPROXY": "serve.haproxy",
}


_REGION = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


def env_setting(var: str, env: Mapping[str, str] | None = None) -> str | None:
    """The value of environment variable ``var``, stripped; None when it is unset, empty or blank.

    ``MLPLAT_ROOT=`` (set but empty) means "not set", never "the current directory".

    >>> env_setting("MLPLAT_ROOT", {"MLPLAT_ROOT": "  "}) is None
    True
    >>> env_setting("MLPLAT_ROOT", {"MLPLAT_ROOT": " /data/mlplat "})
    '/data/mlplat'
    """
    value = (os.environ if env is None else env).get(var)
    if value is None or not value.strip():
        return None
    return value.strip()


def acting_user() -> str:
    """Who runs a control action (deploy, rollback, approve), for its event: ``MLPLAT_USER``,
    else the login name."""
    import getpass

    try:
        return env_setting("MLPLAT_USER") or getpass.getuser()
    except Exception:
        return "unknown"


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        if not isinstance(target.get(part), dict):  # absent, or None (an optional section such as ingress_autoscaling)
            target[part] = {}
        target = target[part]
    target[leaf] = value


def _format_errors(exc: pydantic.ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<top level>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key '{where}' (remove it or check its spelling)")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing required key '{where}'")
        elif not err["loc"]:  # a check across keys: its message names them; the input may hold secrets
            lines.append(f"{source}: {err['msg'].removeprefix('Value error, ')}")
        else:
            secret = any(word in where for word in ("token", "secret", "password", "access_key"))
            lines.append(f"{source}: '{where}': {err['msg']} (got {'***' if secret else repr(err.get('input'))})")
    return "\n".join(lines)


def parse_config(data: Mapping[str, Any] | None, model: type[M], source: str = "config") -> M:
    """Validate a mapping against ``model``; raise :class:`ConfigError` naming each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys to values at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(dict(data))
    except pydantic.ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def _read_yaml(path: str | os.PathLike[str]) -> Any:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None


def load_config(path: str | os.PathLike[str], model: type[M]) -> M:
    """Load a YAML file into ``model``.

    >>> load_config("configs/platform.yaml", PlatformConfig)  # doctest: +SKIP
    """
    return parse_config(_read_yaml(path), model, source=str(path))


def platform_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> PlatformConfig:
    """Build the platform settings from defaults < YAML file < environment < overrides.

    ``path`` defaults to ``$MLPLAT_CONFIG`` when that is set.
    """
    env = os.environ if env is None else env
    path = path or env_setting("MLPLAT_CONFIG", env)
    data: dict[str, Any] = {}
    source = "settings"
    if path:
        loaded = _read_yaml(path)
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        data = dict(loaded or {})
        source = str(path)
    for var, dotted in ENV_VARS.items():
        value = env_setting(var, env)
        if value is not None:
            _set_dotted(data, dotted, value)
    for key, value in overrides.items():
        if value is not None:
            _set_dotted(data, key.replace("__", "."), value)
    return parse_config(data, PlatformConfig, source=source)

