"""The configuration reference (docs/configuration.md), generated from the settings models.

    python -m mlplat.config_reference > docs/configuration.md

Every field of :class:`~mlplat.config.PlatformConfig` and of the models nested in it: its
dotted key, type and constraints, default, environment variable (from ``ENV_VARS``) and its
documentation: the field's ``description`` when it has one, else the ``#:`` comment lines
above it in the class (or in the base class that declares it), else its trailing comment.
tests/unit/test_config_reference.py fails when the committed file differs from the output.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from functools import cache
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mlplat.config import ENV_VARS, PlatformConfig

__all__ = ["render", "field_docs", "OTHER_ENV_VARS", "FALLBACK_DOCS", "main"]

#: Environment variables that are not settings of PlatformConfig but change what mlplat does.
#: tests/unit/test_config_reference.py checks that every ``MLPLAT_*`` name in the package is
#: here or in ``ENV_VARS``.
OTHER_ENV_VARS: dict[str, str] = {
    "MLPLAT_CONFIG": "The settings YAML file (the CLI's `--config`); read before the environment variables.",
    "MLPLAT_REGISTRY_MODE": "`local`: open the registry database in this process instead of going through the "
                            "registry actor (single-user scripts, CLI tests; no Ray).",
    "MLPLAT_USER": "Who runs a control action (deploy, rollback, approve), recorded with its event; default: the "
                   "login name.",
    "MLPLAT_SERVE_URL": "Base URL of the serving app for `mlplat rollback`'s admin call; default: from `serve.host`, "
                        "`serve.port` and `serve.route_prefix`.",
    "MLPLAT_VERBOSE": "`1` (or true, yes, on): as the CLI's `--verbose`: the CLI and `make demo` show Ray's own logs "
                      "(INFO lines, worker output, Ray Data progress bars).",
    "MLPLAT_TRAIN_DEBUG": "Any value: training workers print a line when they finish.",
    "MLPLAT_INFERENCE_IDLE_S": "GPU batch inference (validation, `mlplat score`): a per-GPU inference service "
                               "exits after this many seconds without a call (default 120).",
    "MLPLAT_INFERENCE_DEVICE_BATCH_ROWS": "GPU batch inference: rows per forward pass on the device (default 65536).",
    "MLPLAT_INFERENCE_GPUS_PER_SERVICE": "GPU batch inference: GPUs each inference service reserves (default 1).",
}

#: Documentation of fields that mlplat/config/ does not document yet, by (declaring class, field).
#: A stopgap: the place for these is ``Field(description=...)`` in mlplat/config/; the test fails
#: once mlplat/config/ documents a field that is still listed here.
FALLBACK_DOCS: dict[tuple[str, str], str] = {
    ("PlatformConfig", "root"): "The storage root: a local path or `s3://bucket/prefix`; every dataset, feature set, "
                                "model, run, report and telemetry file lives under it.",
    ("PlatformConfig", "ray_address"): "The Ray cluster to connect to (passed to `ray.init(address=...)`); "
                                       "null: start an embedded local Ray.",
    ("PlatformConfig", "namespace"): "The Ray namespace of the platform's actors (registry, training scheduler, "
                                     "rollout controller).",
    ("PlatformConfig", "api_token"): "The bearer token every HTTP route but health requires; null: those routes answer "
                                     "401 unless `serve.allow_anonymous`.",
    ("RegistrySettings", "url"): "The registry database: `sqlite:///PATH` or `postgresql://USER@HOST/DB`; null: "
                                 "`registry_db`, else `<root>/registry.db` for a local root.",
    ("S3Settings", "endpoint_url"): "The S3 endpoint (SeaweedFS, MinIO...); null: AWS.",
    ("S3Settings", "access_key"): "The S3 access key id.",
    ("S3Settings", "secret_key"): "The S3 secret access key.",
    ("S3Settings", "region"): "The S3 region.",
    ("ServeSettings", "host"): "The address Serve's HTTP proxy binds to.",
    ("ServeSettings", "port"): "The port of Serve's HTTP proxy.",
    ("ServeSettings", "app_name"): "The name of the Serve application.",
    ("ServeSettings", "route_prefix"): "The HTTP path prefix of the application's routes.",
    ("ServeSettings", "max_request_bytes"): "Largest request body; a longer one is answered 413.",
    ("ServeSettings", "max_json_depth"): "Deepest JSON nesting of a request body; a deeper one is answered 413.",
    ("ServeSettings", "max_instances"): "Most rows in one inference request; more are answered 413.",
    ("ServeSettings", "ingress_max_ongoing_requests"): "Serve's `max_ongoing_requests` of each ingress replica.",
    ("ServeSettings", "ingress_num_cpus"): "CPUs Ray reserves for each ingress replica.",
    ("ServeSettings", "telemetry"): "Record every inference as Parquet under `telemetry/<model>/` (the ingress "
                                    "buffers and flushes it off the request path).",
    ("ServeSettings", "metrics_interval_s"): "How often the ingress hands its counts to Ray's metrics.",
    ("ServeSettings", "haproxy"): "Serve's HAProxy ingress (see `throughput_optimized`).",
    ("ScalingSettings", "min_replicas"): "Fewest replicas.",
    ("ScalingSettings", "max_replicas"): "Most replicas.",
    ("ScalingSettings", "target_ongoing_requests"): "Ongoing requests per replica that autoscaling aims at.",
    ("ScalingSettings", "downscale_delay_s"): "See `upscale_delay_s`.",
    ("ScalingSettings", "look_back_period_s"): "The window over which the load is averaged.",
    ("PoolSettings", "max_ongoing_requests"): "Serve's `max_ongoing_requests` of each pool replica.",
    ("PoolSettings", "model_memory_mb"): "Memory one cached model is assumed to take (see `memory_budget_mb`).",
    ("PoolSettings", "num_cpus"): "CPUs Ray reserves for each pool replica.",
    ("DedicatedSettings", "max_ongoing_requests"): "Serve's `max_ongoing_requests` of each replica.",
    ("DedicatedSettings", "max_batch_size"): "Most requests a replica runs through the model in one batch.",
    ("DedicatedSettings", "batch_wait_timeout_s"): "How long a replica waits to fill a batch.",
    ("DedicatedSettings", "num_cpus"): "CPUs Ray reserves for each replica.",
}

_HEADER = """\
# Configuration reference

<!-- Generated from the settings models in mlplat/config/ by
     `python -m mlplat.config_reference > docs/configuration.md`; do not edit by hand:
     tests/unit/test_config_reference.py fails when this file is stale. -->

Settings come from, lowest to highest precedence: the defaults below, a YAML file
(`--config` / `MLPLAT_CONFIG`, e.g. `configs/platform.yaml`, nested keys as nested mappings),
environment variables, then keyword arguments of `mlplat.connect(...)` (`__` for a dot:
`mlplat.connect(serve__port=8001)` sets `serve.port`). Unknown keys and wrong types fail with
the dotted key named. An environment variable set to an empty or blank value counts as unset.
"""


@cache
def _class_comments(cls: type) -> dict[str, str]:
    """field name -> its documentation comment in ``cls``'s own source: the ``#:`` lines right
    above the field, else the comment at the end of its line."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    tree = ast.parse(source)
    found: dict[str, str] = {}
    class_def = next(node for node in tree.body if isinstance(node, ast.ClassDef))
    for stmt in class_def.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        above: list[str] = []
        i = stmt.lineno - 2
        while i >= 0 and lines[i].strip().startswith("#:"):
            above.insert(0, lines[i].strip().removeprefix("#:").strip())
            i -= 1
        trailing = ""
        first = lines[stmt.lineno - 1]
        if "#" in first and not above:
            code, _, comment = first.partition("  #")
            trailing = comment.strip() if code.strip() and comment else ""
        text = " ".join(above) or trailing
        if text:
            found[stmt.target.id] = text
    return found


def field_docs(model: type[BaseModel], *, fallback: bool = True) -> dict[str, str]:
    """field name -> documentation of every field of ``model`` (inherited ones included): the
    ``description``, else the comment where the nearest class in the MRO that has one declares
    it, else (``fallback``) :data:`FALLBACK_DOCS`."""
    docs: dict[str, str] = {}
    for name, info in model.model_fields.items():
        if info.description:
            docs[name] = info.description
            continue
        classes = [c for c in model.__mro__ if isinstance(c, type) and issubclass(c, BaseModel) and c is not BaseModel]
        text = next((t for c in classes if (t := _class_comments(c).get(name))), None)
        if text is None and fallback:
            text = next((t for c in classes if (t := FALLBACK_DOCS.get((c.__name__, name)))), None)
        if text:
            docs[name] = text
    return docs


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds (``X`` or ``X | None``), else None."""
    args = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
    return models[0] if len(models) == 1 else None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _type_name(annotation: Any) -> str:
    """``int``, ``str or null``, ``list of str``, ``secret``."""
    if annotation is type(None):
        return "null"
    if annotation is SecretStr:
        return "secret"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0]) + _constraints(args[1:])
    if _is_union(annotation):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple, set, frozenset):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}" if args else "mapping"
    if origin is typing.Literal:
        return " or ".join(json.dumps(a) for a in args)
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"), (annotated_types.Le, "le", "<="),
           (annotated_types.Lt, "lt", "<"), (annotated_types.MinLen, "min_length", "length >="),
           (annotated_types.MaxLen, "max_length", "length <="))


def _constraints(metadata: Any) -> str:
    """`` (>= 1)``, `` (matching ^[a-z]+$)``: the bounds and patterns pydantic checks."""
    parts: list[str] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            parts.extend(_constraint_parts(item.metadata))
        else:
            parts.extend(_constraint_parts([item]))
    return f" ({', '.join(parts)})" if parts else ""


def _constraint_parts(metadata: Any) -> Iterator[str]:
    for item in metadata:
        for cls, attr, sign in _BOUNDS:
            if isinstance(item, cls):
                yield f"{sign} {_value(getattr(item, attr))}"
        pattern = getattr(item, "pattern", None)
        if isinstance(pattern, str):
            yield f"matching `{pattern}`"


def _value(value: Any) -> str:
    """A default as it would be written in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value) if isinstance(value, list | dict) else str(value)


def _default(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return PydanticUndefined


def _cell(text: str) -> str:
    """One Markdown table cell: one line, pipes escaped, Sphinx roles as code (``:class:`X``` -> ```X```)."""
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", " ".join(text.split())).replace("|", "\\|")


def _sections(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """``(dotted prefix, model)`` for the model and every model nested in it, depth first."""
    yield prefix, model
    for name, info in model.model_fields.items():
        nested = _model_of(info.annotation)
        if nested is not None:
            yield from _sections(nested, f"{prefix}{name}.")


def render() -> str:
    """The whole reference as Markdown."""
    env_of: dict[str, list[str]] = {}
    for var, dotted in ENV_VARS.items():
        env_of.setdefault(dotted, []).append(var)
    out = [_HEADER]
    sections = list(_sections(PlatformConfig))
    out.append("Sections: " + ", ".join(f"[`{p.rstrip('.') or 'top level'}`](#{_anchor(p, m)})" for p, m in sections) + ".\n")
    for prefix, model in sections:
        out.append(f"## {_title(prefix, model)}\n")
        doc = inspect.getdoc(model)
        if doc:
            out.append(_cell(doc) + "\n")
        docs = field_docs(model)
        rows = ["| key | type | default | env var | description |", "|---|---|---|---|---|"]
        for name, info in model.model_fields.items():
            key = f"{prefix}{name}"
            nested = _model_of(info.annotation)
            default = _default(info)
            if nested is not None:
                kind = f"{nested.__name__} ([`{key}`](#{_anchor(key + '.', nested)}))"
                if default is None:
                    kind += " or null"
                shown = "null" if default is None else "see its section"
                docs.setdefault(name, (inspect.getdoc(nested) or "").split("\n\n")[0])
            else:
                kind = _type_name(info.annotation) + _constraints(info.metadata)
                shown = "required" if default is PydanticUndefined else f"`{_value(default)}`"
            env = ", ".join(f"`{v}`" for v in env_of.get(key, []))
            rows.append(f"| `{key}` | {_cell(kind)} | {_cell(shown)} | {env} | {_cell(docs.get(name, ''))} |")
        out.append("\n".join(rows) + "\n")
    out.append("## Environment variables\n")
    out.append("Settings (when two set the same key, the later one in this table wins):\n")
    rows = ["| variable | setting |", "|---|---|"]
    rows += [f"| `{var}` | `{dotted}` |" for var, dotted in ENV_VARS.items()]
    out.append("\n".join(rows) + "\n")
    out.append("Other variables mlplat reads:\n")
    rows = ["| variable | effect |", "|---|---|"]
    rows += [f"| `{var}` | {_cell(text)} |" for var, text in OTHER_ENV_VARS.items()]
    out.append("\n".join(rows) + "\n")
    return "\n".join(out)


def _title(prefix: str, model: type[BaseModel]) -> str:
    return f"`{prefix.rstrip('.')}` ({model.__name__})" if prefix else f"Top level ({model.__name__})"


def _anchor(prefix: str, model: type[BaseModel]) -> str:
    """GitHub's heading anchor for :func:`_title` (lower case, punctuation dropped, spaces to -)."""
    title = _title(prefix, model).lower()
    return "".join(c for c in title if c.isalnum() or c in " -_").replace(" ", "-")


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
