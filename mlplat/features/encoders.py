"""Fitted feature encoders: JSON in, JSON out, no pickle.

The feature set's encoder (:class:`mlplat.features.feature_encoder.FeatureEncoder`) applies
these column encoders in training, validation and serving. Each column encoder has a
vectorized path (a pyarrow array, for Ray Data batches) and a scalar path (one value, for a
serving request) that perform the same floating-point operations in the same order, so a row
encodes identically either way (tested).

Fitting is split so it can be distributed: an encoder declares the column statistics it needs
(``requires`` ⊆ {moments, sketch, counts}, see :mod:`mlplat.features.stats`), the fitter
computes and merges them per block, then :meth:`Encoder.fit` turns them into parameters.

User encoders subclass :class:`Encoder` and are named in a spec by import path
``package.module:Class``.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mlplat.errors import ConfigError, ValidationError
from mlplat.features import stats as st

__all__ = [
    "Encoder",
    "NumericEncoder",
    "Standardize",
    "MinMax",
    "Log1p",
    "Clip",
    "Impute",
    "OneHot",
    "HashBuckets",
    "Ordinal",
    "QuantileBucketize",
    "Passthrough",
    "BUILTIN_ENCODERS",
    "register_encoder",
    "encoder_class",
    "build_encoder",
    "stable_hash",
    "FORMAT",
    "OTHER",
]

FORMAT = "mlplat.feature-encoder/1"
OTHER = "__other__"


def stable_hash(value: str, salt: str = "") -> int:
    """A 64-bit hash that is the same in every process and Python version (blake2b)."""
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8, person=salt.encode("utf-8")[:16])
    return int.from_bytes(digest.digest(), "little")


class Encoder:
    """Base of every column encoder.

    Subclasses set ``kind`` (the name used in specs), ``requires`` (column statistics for
    fit), ``param_names`` (allowed ``params``) and implement :meth:`fit`,
    :meth:`transform_array` and :meth:`transform_value`. Fitted state lives in
    ``self.fitted`` (a JSON-serializable dict).
    """

    kind: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()
    param_names: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, column: str, output: str | None = None, params: Mapping[str, Any] | None = None,
                 fitted: Mapping[str, Any] | None = None):
        self.column = column
        self.output = output or column
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.param_names))
        if unknown:
            allowed = ", ".join(sorted(self.param_names)) or "none"
            raise ConfigError(
                f"encoder {self.type_name()!r} on column {column!r}: unknown params {unknown}; allowed: {allowed}"
            )
        self.params = params
        self.fitted: dict[str, Any] = dict(fitted) if fitted is not None else {}
        self.unseen = 0  # values not seen at fit time (mapped to the other/default bucket)
        self.validate_params()

    # -- identity --------------------------------------------------------------------------
    @classmethod
    def type_name(cls) -> str:
        return cls.kind or f"{cls.__module__}:{cls.__qualname__}"

    def validate_params(self) -> None:
        """Check ``self.params``; raise :class:`ConfigError` naming the bad one."""

    def output_columns(self) -> list[str]:
        return [self.output]

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted) or not self.requires

    # -- fit -------------------------------------------------------------------------------
    def fit(self, stats: dict[str, Any]) -> None:
        """Set ``self.fitted`` from merged column statistics."""

    # -- apply -----------------------------------------------------------------------------
    def transform_array(self, array: pa.Array) -> dict[str, pa.Array]:
        raise NotImplementedError

    def transform_value(self, value: Any) -> dict[str, Any]:
        raise NotImplementedError

    def output_types(self) -> dict[str, pa.DataType]:
        return {name: pa.float64() for name in self.output_columns()}

    # -- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"type": self.type_name(), "column": self.column, "output": self.output,
                "params": self.params, "fitted": self.fitted}

    def _param(self, name: str, default: Any) -> Any:
        return self.params.get(name, default)

    def _fail(self, msg: str) -> ConfigError:
        return ConfigError(f"encoder {self.type_name()!r} on column {self.column!r}: {msg}")


# -- numeric -------------------------------------------------------------------------------


class NumericEncoder(Encoder):
    """Numeric input, float64 output. Nulls and NaN are first replaced by ``fill``:
    ``mean``, ``median`` or a number (default :attr:`default_fill`)."""

    default_fill: ClassVar[str | float] = "mean"
    param_names = frozenset({"fill"})

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        fill = self._param("fill", self.default_fill)
        need = set(type(self).base_requires)
        need.add("moments")  # always: min/max/mean are cheap and help stats
        if fill == "median":
            need.add("sketch")
        return frozenset(need)

    base_requires: ClassVar[frozenset[str]] = frozenset()

    def validate_params(self) -> None:
        fill = self._param("fill", self.default_fill)
        if not (fill in ("mean", "median") or (isinstance(fill, int | float) and not isinstance(fill, bool))):
            raise self._fail(f"fill must be 'mean', 'median' or a number, got {fill!r}")

    def fit(self, stats: dict[str, Any]) -> None:
        if stats["moments"]["n"] == 0:
            raise ValidationError(f"column {self.column!r} has no non-null numeric values to fit {self.type_name()!r} on")
        fill = self._param("fill", self.default_fill)
        if fill == "mean":
            value = st.mean(stats)
        elif fill == "median":
            median = st.quantile(stats, 0.5)
            if median is None:
                raise ValidationError(f"column {self.column!r} has no sketched values to take the median of for {self.type_name()!r}")
            value = median
        else:
            value = float(fill)
        self.fitted = {"fill": float(value)}
        self.fit_numeric(stats)

    def fit_numeric(self, stats: dict[str, Any]) -> None:
        pass

    # Vectorized and scalar twins; ``x`` has no nulls/NaN.
    def apply_array(self, x: pa.Array) -> pa.Array:
        return x

    def apply_value(self, x: float) -> float:
        return x

    def _filled_array(self, array: pa.Array) -> pa.Array:
        if not st.is_numeric_type(array.type):
            raise ValidationError(f"column {self.column!r} must be numeric for {self.type_name()!r}, got {array.type}")
        x = pc.cast(array, pa.float64())
        fill = pa.scalar(self.fitted["fill"], pa.float64())
        x = pc.fill_null(x, fill)
        if x.null_count == 0:
            x = pc.if_else(pc.is_nan(x), fill, x)
        return x

    def transform_array(self, array: pa.Array) -> dict[str, pa.Array]:
        return {self.output: self.apply_array(self._filled_array(array))}

    def transform_value(self, value: Any) -> dict[str, Any]:
        if value is None:
            x = self.fitted["fill"]
        else:
            try:
                x = float(value)
            except (TypeError, ValueError):
                raise ValidationError(f"column {self.column!r} must be numeric, got {value!r}") from None
            if math.isnan(x):
                x = self.fitted["fill"]
        return {self.output: self.apply_value(x)}


class Impute(NumericEncoder):
    """Replace nulls/NaN: ``strategy`` mean | median | constant (with ``value``)."""

    kind = "impute"
    param_names = frozenset({"strategy", "value"})

    def validate_params(self) -> None:
        strategy = self._param("strategy", "mean")
        if strategy not in ("mean", "median", "constant"):
            raise self._fail(f"strategy must be mean, median or constant, got {strategy!r}")
        if strategy == "constant" and not isinstance(self._param("value", None), int | float):
            raise self._fail("strategy 'constant' needs a numeric 'value'")

    def _param(self, name: str, default: Any) -> Any:
        if name == "fill":
            strategy = self.params.get("strategy", "mean")
            return self.params.get("value") if strategy == "constant" else strategy
        return self.params.get(name, default)


class Standardize(NumericEncoder):
    """(x - mean) / std (population std; a constant column gives 0)."""

    kind = "standardize"

    def fit_numeric(self, stats: dict[str, Any]) -> None:
        sd = st.std(stats)
        self.fitted.update(mean=st.mean(stats), std=sd if sd > 0 else 1.0)

    def apply_array(self, x: pa.Array) -> pa.Array:
        return pc.divide(pc.subtract(x, self.fitted["mean"]), self.fitted["std"])

    def apply_value(self, x: float) -> float:
        return (x - self.fitted["mean"]) / self.fitted["std"]


class MinMax(NumericEncoder):
    """(x - min) / (max - min); ``clip: true`` bounds the result to [0, 1]."""

    kind = "minmax"
    param_names = frozenset({"fill", "clip"})

    def fit_numeric(self, stats: dict[str, Any]) -> None:
        lo, hi = stats["moments"]["min"], stats["moments"]["max"]
        self.fitted.update(min=lo, scale=(hi - lo) if hi > lo else 1.0)

    def apply_array(self, x: pa.Array) -> pa.Array:
        y = pc.divide(pc.subtract(x, self.fitted["min"]), self.fitted["scale"])
        if self.params.get("clip"):
            y = pc.min_element_wise(pc.max_element_wise(y, 0.0), 1.0)
        return y

    def apply_value(self, x: float) -> float:
        y = (x - self.fitted["min"]) / self.fitted["scale"]
        if self.params.get("clip"):
            y = min(max(y, 0.0), 1.0)
        return y


class Log1p(NumericEncoder):
    """log(1 + max(x, 0)): values below 0 are clamped to 0 first."""

    kind = "log1p"

    def apply_array(self, x: pa.Array) -> pa.Array:
        return pc.log1p(pc.max_element_wise(x, 0.0))

    def apply_value(self, x: float) -> float:
        return math.log1p(max(x, 0.0))


class Clip(NumericEncoder):
    """Bound x to [lower, upper]: constants, or quantiles fitted from the data
    (``lower_quantile``/``upper_quantile``, e.g. 0.01 and 0.99)."""

    kind = "clip"
    param_names = frozenset({"fill", "lower", "upper", "lower_quantile", "upper_quantile"})
    base_requires = frozenset()

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        need = set(super().requires)
        if "lower_quantile" in self.params or "upper_quantile" in self.params:
            need.add("sketch")
        return frozenset(need)

    def validate_params(self) -> None:
        super().validate_params()
        if not any(k in self.params for k in ("lower", "upper", "lower_quantile", "upper_quantile")):
            raise self._fail("give at least one of lower, upper, lower_quantile, upper_quantile")
        for k in ("lower_quantile", "upper_quantile"):
            if k in self.params and not 0.0 <= float(self.params[k]) <= 1.0:
                raise self._fail(f"{k} must be within [0, 1], got {self.params[k]!r}")

    def fit_numeric(self, stats: dict[str, Any]) -> None:
        lo = self.params.get("lower")
        hi = self.params.get("upper")
        if "lower_quantile" in self.params:
            lo = st.quantile(stats, float(self.params["lower_quantile"]))
        if "upper_quantile" in self.params:
            hi = st.quantile(stats, float(self.params["upper_quantile"]))
        self.fitted.update(lower=None if lo is None else float(lo), upper=None if hi is None else float(hi))

    def apply_array(self, x: pa.Array) -> pa.Array:
        if self.fitted["lower"] is not None:
            x = pc.max_element_wise(x, self.fitted["lower"])
        if self.fitted["upper"] is not None:
            x = pc.min_element_wise(x, self.fitted["upper"])
        return x

    def apply_value(self, x: float) -> float:
        if self.fitted["lower"] is not None:
            x = max(x, self.fitted["lower"])
        if self.fitted["upper"] is not None:
            x = min(x, self.fitted["upper"])
        return x


class QuantileBucketize(NumericEncoder):
    """Bucket index (int64) by fitted quantile boundaries: ``num_buckets`` (default 10)
    buckets, 0 .. len(boundaries). Nulls are filled (default: the median) first."""

    kind = "bucketize"
    default_fill = "median"
    param_names = frozenset({"fill", "num_buckets"})
    base_requires = frozenset({"sketch"})

    def validate_params(self) -> None:
        super().validate_params()
        n = self.params.get("num_buckets", 10)
        if not isinstance(n, int) or n < 2:
            raise self._fail(f"num_buckets must be an integer >= 2, got {n!r}")

    def fit_numeric(self, stats: dict[str, Any]) -> None:
        n = self.params.get("num_buckets", 10)
        qs = [st.quantile(stats, i / n) for i in range(1, n)]
        self.fitted["boundaries"] = sorted({float(q) for q in qs if q is not None})

    def output_types(self) -> dict[str, pa.DataType]:
        return {self.output: pa.int64()}

    def apply_array(self, x: pa.Array) -> pa.Array:
        values = x.to_numpy(zero_copy_only=False)
        return pa.array(np.searchsorted(np.asarray(self.fitted["boundaries"], dtype=np.float64), values, side="right"),
                        type=pa.int64())

    def apply_value(self, x: float) -> int:  # type: ignore[override]
        return bisect.bisect_right(self.fitted["boundaries"], x)


# -- categorical ---------------------------------------------------------------------------


class _Categorical(Encoder):
    def _keys(self, array: pa.Array) -> pa.Array:
        try:
            return st.category_keys(array)
        except TypeError as exc:
            raise ValidationError(f"column {self.column!r}: {exc}") from None


class OneHot(_Categorical):
    """One float column per category kept at fit (``<col>=<value>``) plus ``<col>=__other__``
    for values unseen at fit time, rare values and nulls. Keeps the ``max_categories`` (default
    20) most frequent with at least ``min_frequency`` (default 1) rows."""

    kind = "onehot"
    param_names = frozenset({"max_categories", "min_frequency", "categories"})

    def validate_params(self) -> None:
        n = self.params.get("max_categories", 20)
        if not isinstance(n, int) or n < 1:
            raise self._fail(f"max_categories must be an integer >= 1, got {n!r}")
        if "categories" in self.params:
            if not isinstance(self.params["categories"], list) or not self.params["categories"]:
                raise self._fail("categories must be a non-empty list")
            self.fitted = self.fitted or {"categories": [st.category_key(c) for c in self.params["categories"]]}

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset() if "categories" in self.params else frozenset({"counts"})

    def fit(self, stats: dict[str, Any]) -> None:
        if "categories" in self.params:
            return
        min_freq = self.params.get("min_frequency", 1)
        top = sorted(((k, c) for k, c in stats["counts"].items() if c >= min_freq), key=lambda kv: (-kv[1], kv[0]))
        self.fitted = {"categories": sorted(k for k, _ in top[: self.params.get("max_categories", 20)])}

    def output_columns(self) -> list[str]:
        return [f"{self.output}={c}" for c in self.fitted["categories"]] + [f"{self.output}={OTHER}"]

    def transform_array(self, array: pa.Array) -> dict[str, pa.Array]:
        keys = self._keys(array)
        cats = self.fitted["categories"]
        idx = pc.index_in(keys, value_set=pa.array(cats, pa.string()))
        self.unseen += int(pc.sum(pc.and_(pc.is_null(idx), pc.is_valid(keys))).as_py() or 0)
        idx_np = idx.fill_null(-1).to_numpy(zero_copy_only=False)
        names = self.output_columns()
        out = {}
        for i, name in enumerate(names[:-1]):
            out[name] = pa.array((idx_np == i).astype(np.float64))
        out[names[-1]] = pa.array((idx_np < 0).astype(np.float64))
        return out

    def transform_value(self, value: Any) -> dict[str, Any]:
        key = st.category_key(value)
        names = self.output_columns()
        out = dict.fromkeys(names, 0.0)
        lookup = self._lookup()
        i = lookup.get(key) if key is not None else None
        if i is None:
            if key is not None:
                self.unseen += 1
            out[names[-1]] = 1.0
        else:
            out[names[i]] = 1.0
        return out

    def _lookup(self) -> dict[str, int]:
        cache = getattr(self, "_lookup_cache", None)
        if cache is None:
            cache = {c: i for i, c in enumerate(self.fitted["categories"])}
            self._lookup_cache = cache
        return cache


class Ordinal(_Categorical):
    """Category index (int64): known categories 0..K-1 in sorted order (or the given
    ``categories`` order); unseen values and nulls get K (the "other" index)."""

    kind = "ordinal"
    param_names = frozenset({"categories", "max_categories"})

    @property
    def requires(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset() if "categories" in self.params else frozenset({"counts"})

    def validate_params(self) -> None:
        if "categories" in self.params:
            cats = self.params["categories"]
            if not isinstance(cats, list) or not cats:
                raise self._fail("categories must be a non-empty list")
            self.fitted = self.fitted or {"categories": [st.category_key(c) for c in cats]}

    def fit(self, stats: dict[str, Any]) -> None:
        if "categories" in self.params:
            return
        limit = self.params.get("max_categories", 10_000)
        top = sorted(stats["counts"].items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        self.fitted = {"categories": sorted(k for k, _ in top)}

    def output_types(self) -> dict[str, pa.DataType]:
        return {self.output: pa.int64()}

    def transform_array(self, array: pa.Array) -> dict[str, pa.Array]:
        keys = self._keys(array)
        cats = self.fitted["categories"]
        idx = pc.index_in(keys, value_set=pa.array(cats, pa.string()))
        self.unseen += int(pc.sum(pc.and_(pc.is_null(idx), pc.is_valid(keys))).as_py() or 0)
        return {self.output: pc.cast(idx.fill_null(len(cats)), pa.int64())}

    def transform_value(self, value: Any) -> dict[str, Any]:
        key = st.category_key(value)
        cats = self.fitted["categories"]
        lookup = getattr(self, "_lookup_cache", None)
        if lookup is None:
            lookup = self._lookup_cache = {c: i for i, c in enumerate(cats)}
        i = lookup.get(key) if key is not None else None
        if i is None:
            if key is not None:
                self.unseen += 1
            i = len(cats)
        return {self.output: i}


class HashBuckets(_Categorical):
    """Stable hashed bucket (int64, 0..num_buckets-1) for high-cardinality strings; no fit.
    Nulls go to bucket 0."""

    kind = "hash"
    param_names = frozenset({"num_buckets", "salt"})

    def validate_params(self) -> None:
        n = self.params.get("num_buckets", 1024)
        if not isinstance(n, int) or n < 1:
            raise self._fail(f"num_buckets must be an integer >= 1, got {n!r}")

    def output_types(self) -> dict[str, pa.DataType]:
        return {self.output: pa.int64()}

    def _bucket(self, key: str) -> int:
        return stable_hash(key, self.params.get("salt", "")) % self.params.get("num_buckets", 1024)

    def transform_array(self, array: pa.Array) -> dict[str, pa.Array]:
        keys = self._keys(array)
        encoded = keys.dictionary_encode()
        buckets = pa.array([self._bucket(k) for k in encoded.dictionary.to_pylist()], type=pa.int64())
        out = pc.take(buckets, encoded.indices) if len(buckets) else pa.nulls(len(keys), pa.int64())
        return {self.output: out.fill_null(0)}

    def transform_value(self, value: Any) -> dict[str, Any]:
        key = st.category_key(value)
        return {self.output: 0 if key is None else self._bucket(key)}


class Passthrough(Encoder):
    """The column unchanged (any type)."""

    kind = "passthrough"

    def output_types(self) -> dict[str, pa.DataType]:
        return {}

    def transform_array(self, array: pa.Array) -> dict[str, pa.Array]:
        return {self.output: array}

    def transform_value(self, value: Any) -> dict[str, Any]:
        return {self.output: value}


BUILTIN_ENCODERS: dict[str, type[Encoder]] = {
    cls.kind: cls
    for cls in (Standardize, MinMax, Log1p, Clip, Impute, OneHot, HashBuckets, Ordinal, QuantileBucketize, Passthrough)
}
_ALIASES = {"min-max": "minmax", "min_max": "minmax", "one-hot": "onehot", "one_hot": "onehot",
            "hashed": "hash", "hash_buckets": "hash", "quantile": "bucketize", "identity": "passthrough"}
_REGISTERED: dict[str, type[Encoder]] = {}


def register_encoder(cls: type[Encoder], name: str | None = None) -> type[Encoder]:
    """Register a user encoder under a short name (usable as a class decorator)."""
    _REGISTERED[name or cls.type_name()] = cls
    return cls


def encoder_class(name: str) -> type[Encoder]:
    """Resolve a built-in name, a registered name or an import path ``package.module:Class``."""
    key = _ALIASES.get(name, name)
    if key in BUILTIN_ENCODERS:
        return BUILTIN_ENCODERS[key]
    if key in _REGISTERED:
        return _REGISTERED[key]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"encoder {name!r}: cannot import module {module_name!r}: {exc}") from None
        cls: object = module
        for part in attr.split("."):
            cls = getattr(cls, part, None)
            if cls is None:
                raise ConfigError(f"encoder {name!r}: module {module_name!r} has no attribute {attr!r}")
        if not (isinstance(cls, type) and issubclass(cls, Encoder)):
            raise ConfigError(f"encoder {name!r} is not a subclass of mlplat.features.Encoder")
        return cls
    known = ", ".join(sorted(BUILTIN_ENCODERS))
    raise ConfigError(f"unknown encoder {name!r}; built-in encoders: {known}; or give 'package.module:Class'")


def build_encoder(spec: Mapping[str, Any]) -> Encoder:
    """An encoder from its JSON form (``type``/``encoder``, ``column``, ``output``, ``params``,
    ``fitted``)."""
    if not isinstance(spec, Mapping):
        raise ConfigError(f"an encoder entry must be a mapping with 'type' and 'column', got {spec!r}")
    name = spec.get("type") or spec.get("encoder")
    if not isinstance(name, str):
        raise ConfigError(f"encoder entry {dict(spec)!r} names no encoder type")
    cls = encoder_class(name)
    column, output, params, fitted = spec.get("column"), spec.get("output"), spec.get("params") or {}, spec.get("fitted")
    if not isinstance(column, str) or not column:
        raise ConfigError(f"encoder {name!r}: 'column' must name the input column (a non-empty string), got {column!r}")
    if output is not None and (not isinstance(output, str) or not output):
        raise ConfigError(f"encoder {name!r} on column {column!r}: 'output' must be a non-empty string, got {output!r}")
    if not isinstance(params, Mapping) or (fitted is not None and not isinstance(fitted, Mapping)):
        raise ConfigError(f"encoder {name!r} on column {column!r}: 'params' and 'fitted' must be mappings")
    return cls(column, output, params, fitted)
