"""Values in and out of the registry's columns: JSON text, tags, versions, aliases, states, and
results stored with their idempotency key (records tagged so the same type comes back)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from mlplat.errors import InvalidName, ValidationError
from mlplat.records import CatalogEntry, Deployment, Event, ModelInfo, ModelState, ModelVersion, Record, Run, Traffic

__all__ = ["dumps_json", "loads_json", "parse_tags", "int_version", "validate_alias", "model_state",
           "encode_result", "decode_result"]

_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}(\.[a-z][a-z0-9_-]{0,62})?$")
_RESULT_TYPES: dict[str, type[Record]] = {
    t.__name__: t for t in (ModelVersion, Event, ModelInfo, Run, CatalogEntry, Deployment, Traffic)
}


def dumps_json(value: object, what: str = "value") -> str:
    """Canonical JSON text for a column; a ValidationError naming ``what`` when it is not JSON."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} must be JSON-serializable (no NaN/Inf): {exc}") from None


def loads_json(text: str | None, default: Any = None) -> Any:
    return default if text is None or text == "" else json.loads(text)


def parse_tags(tags: Iterable[str] | str | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        tags = (tags,)
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag or len(tag) > 128:
            raise ValidationError(f"invalid tag {tag!r}: expected a non-empty string of at most 128 characters")
        if tag not in out:
            out.append(tag)
    return tuple(out)


def int_version(version: object) -> int:
    """``3``, ``"3"`` or ``"v3"`` as 3; a ValidationError for anything else or below 1."""
    if isinstance(version, bool) or not isinstance(version, int):
        try:
            version = int(str(version).removeprefix("v"))
        except ValueError:
            raise ValidationError(f"invalid version {version!r}: expected a positive integer") from None
    if version < 1:
        raise ValidationError(f"invalid version {version!r}: expected a positive integer")
    return version


def validate_alias(alias: object) -> str:
    """Aliases are names, optionally with one ``.<region>`` part: ``production.eu-west``."""
    if not isinstance(alias, str) or not _ALIAS.fullmatch(alias):
        raise InvalidName(
            f"invalid alias {alias!r}: expected a name like 'production', 'canary', 'previous' "
            "or 'production.<region>' (lowercase letters, digits, '_' or '-')"
        )
    return alias


def model_state(value: ModelState | str, what: str = "state") -> ModelState:
    try:
        return ModelState(str(value).upper())
    except ValueError:
        valid = ", ".join(s.value for s in ModelState)
        raise ValidationError(f"unknown {what} {value!r}; states are: {valid}") from None


def encode_result(value: Any) -> Any:
    """A call's result as JSON-able data; :func:`decode_result` rebuilds the same types."""
    if isinstance(value, Record):
        return {"__record__": type(value).__name__, "data": value.model_dump(mode="json")}
    if isinstance(value, list | tuple):
        return [encode_result(v) for v in value]
    if isinstance(value, dict):
        return {k: encode_result(v) for k, v in value.items()}
    return value


def decode_result(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__record__", "data"} and value["__record__"] in _RESULT_TYPES:
            return _RESULT_TYPES[value["__record__"]].model_validate(value["data"])
        return {k: decode_result(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode_result(v) for v in value]
    return value
