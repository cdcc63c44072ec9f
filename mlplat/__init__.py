"""mlplat: a centralized machine-learning platform on Ray.

>>> import mlplat
>>> p = mlplat.connect()          # local embedded Ray, ./.mlplat storage  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from mlplat.config import PlatformConfig, load_config, platform_config
from mlplat.errors import (
    AlreadyExists,
    ConfigError,
    ConflictError,
    IntegrityError,
    InvalidName,
    InvalidTransition,
    MlplatError,
    NotFound,
    ResourceError,
    SchemaMismatch,
    StorageError,
    UnsafePath,
    ValidationError,
    WeightsFormatError,
)
from mlplat.records import ModelState

__version__ = "0.1.0"

__all__ = [
    "connect",
    "PlatformConfig",
    "load_config",
    "platform_config",
    "ModelState",
    "MlplatError",
    "ConfigError",
    "InvalidName",
    "UnsafePath",
    "NotFound",
    "AlreadyExists",
    "InvalidTransition",
    "ConflictError",
    "IntegrityError",
    "WeightsFormatError",
    "StorageError",
    "ValidationError",
    "SchemaMismatch",
    "ResourceError",
]


def connect(*args: Any, **kwargs: Any):
    """Connect to the platform (see :func:`mlplat.api.connect`). Imported lazily so that
    ``import mlplat`` stays cheap and does not start Ray."""
    from mlplat.api import connect as _connect

    return _connect(*args, **kwargs)
