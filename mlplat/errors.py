"""The mlplat error hierarchy: every failure a user can act on is one of these.

Callers catch what they mean (``except NotFound``) and every message names the offending
input, the expected form and what to do next.
"""

from __future__ import annotations

__all__ = [
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
    "DatabaseUnavailable",
    "ValidationError",
    "SchemaMismatch",
    "ResourceError",
]


class MlplatError(Exception):
    """Root of every error mlplat raises on purpose."""


class ConfigError(MlplatError, ValueError):
    """A config file or setting is malformed: unknown key, wrong type, missing value."""


class InvalidName(MlplatError, ValueError):
    """A model, dataset or feature-set name is not of the form ``^[a-z][a-z0-9_-]{0,62}$``."""


class UnsafePath(MlplatError, ValueError):
    """A path part would escape the storage root (traversal, absolute path, other scheme)."""


class NotFound(MlplatError, LookupError):
    """The named object (model, version, dataset, file) does not exist."""


class AlreadyExists(MlplatError):
    """An object with that name or version exists already."""


class InvalidTransition(MlplatError):
    """A model version was asked to move to a state the state machine forbids."""


class ConflictError(MlplatError):
    """An optimistic-concurrency check failed: somebody wrote first. Re-read and retry."""


class IntegrityError(MlplatError):
    """Stored bytes do not match their recorded checksum, or a manifest is incomplete."""


class WeightsFormatError(IntegrityError):
    """A weights file is not safetensors (for example a pickle); it was not executed."""


class StorageError(MlplatError, OSError):
    """The storage root is unreadable, unwritable or full; the message names the path."""


class DatabaseUnavailable(StorageError):
    """The registry's database server cannot be reached (down, restarting, network). A read can
    be retried; so can a write with the same idempotency key, which then applies once."""


class ValidationError(MlplatError, ValueError):
    """Input data is malformed: wrong columns, types, shapes or non-finite values."""


class SchemaMismatch(ValidationError):
    """A dataset partition's schema differs from the dataset's; the message names the columns."""


class ResourceError(MlplatError):
    """The cluster lacks a resource the request asks for (for example GPUs)."""
