"""Small pieces shared by the registry's SQLite store and its mixins (runs, catalog)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from mlplat.errors import ValidationError

__all__ = ["store_method", "dumps_json", "parse_tags", "int_version", "name_and_tag_filters"]


def store_method(kind: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a mixin method as ``"write"`` or ``"read"``; store.py wraps it in its transaction
    (``_mutation``) or read lock (``_read``)."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.store_kind = kind  # type: ignore[attr-defined]
        return fn

    return mark


def dumps_json(value: Any, what: str = "value") -> str:
    """Canonical JSON text for a column; a ValidationError naming ``what`` when it is not JSON."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{what} must be JSON-serializable: {exc}") from None


def parse_tags(tags: Iterable[str] | str | None) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        tags = (tags,)
    out = []
    for tag in tags:
        if not isinstance(tag, str) or not tag or len(tag) > 128:
            raise ValidationError(f"invalid tag {tag!r}: expected a non-empty string of at most 128 characters")
        if tag not in out:
            out.append(tag)
    return tuple(out)


def int_version(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        try:
            version = int(str(version).removeprefix("v"))
        except ValueError:
            raise ValidationError(f"invalid version {version!r}: expected a positive integer") from None
    if version < 1:
        raise ValidationError(f"invalid version {version!r}: expected a positive integer")
    return version


def name_and_tag_filters(table: str, prefix: str | None, tag: str | None) -> tuple[list[str], list[Any]]:
    """SQL conditions for "name starts with prefix" and "tags contain tag" on ``table``."""
    where: list[str] = []
    params: list[Any] = []
    if prefix:
        where.append(f"substr({table}.name, 1, ?) = ?")
        params += [len(prefix), prefix]
    if tag:
        where.append(f"EXISTS (SELECT 1 FROM json_each({table}.tags) t WHERE t.value = ?)")
        params.append(tag)
    return where, params
