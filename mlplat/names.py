"""Name rules shared by every entry point (CLI, Python API, HTTP)."""

from __future__ import annotations

import re

from mlplat.errors import InvalidName

__all__ = ["NAME_PATTERN", "validate_name", "parse_serving_id", "serving_id"]

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_SERVING_ID = re.compile(r"^(?P<name>[a-z][a-z0-9_-]{0,62})@v(?P<version>[1-9][0-9]{0,8})$")


def validate_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is a valid mlplat name, else raise :class:`InvalidName`.

    >>> validate_name("churn-model")
    'churn-model'
    """
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidName(
            f"invalid {what} {name!r}: expected 1-63 characters matching {NAME_PATTERN.pattern} "
            "(lowercase letter first, then lowercase letters, digits, '_' or '-')"
        )
    return name


def serving_id(name: str, version: int) -> str:
    """The serving id of a model version, ``name@vN``."""
    return f"{validate_name(name, 'model name')}@v{int(version)}"


def parse_serving_id(value: str) -> tuple[str, int]:
    """Split ``name@vN`` into ``(name, N)``; raise :class:`InvalidName` otherwise."""
    match = _SERVING_ID.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise InvalidName(f"invalid serving id {value!r}: expected '<model-name>@v<version>', e.g. 'churn@v3'")
    return match["name"], int(match["version"])
