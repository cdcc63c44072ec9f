"""Batch inference with Ray Data, loading each bundle once per worker process.

``predict_dataset`` adds one prediction column per bundle to a ``ray.data.Dataset``. Two
executors, the same predictions:

- ``actors``: on a cluster with GPUs (the default there), the long-lived inference services of
  :mod:`mlplat.validation.gpu_service`, one per GPU, started once per namespace and reused by
  every validation and scoring call; plain tasks read the rows and build the feature matrices,
  the services predict on the device in :data:`~mlplat.validation.gpu_service.DEVICE_BATCH_ROWS`-row
  batches. On a CPU-only cluster, a Ray Data actor pool, one actor per CPU, each loading the
  bundles in its constructor.
- ``tasks``: plain Ray Data tasks over whole blocks; each worker process keeps the last
  :data:`PROCESS_CACHE_BUNDLES` bundles it loaded (keyed by the registry's sha256 and the
  bundle files' size and mtime), so a warm cluster predicts without starting anything. The default on CPU-only clusters: on the 2-core box an
  actor pool paid ~2.5 s per run to start its actor (process, ``import torch``, bundle load)
  against ~2 s for the whole bare-torch run (docs/validation.md).

Both verify the bundle chain (registry sha256 -> bundle.json -> weights) when they load, so a
bundle changed after registration fails here as it would in serving.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np
import pyarrow as pa

from mlplat.errors import NotFound, ValidationError
from mlplat.features.encoders import FORMAT as ENCODER_FORMAT
from mlplat.features.feature_encoder import FeatureEncoder
from mlplat.features.splits import SPLIT_COLUMN, VALIDATION
from mlplat.models import BUNDLE_FILE, WEIGHTS_FILE, load_bundle, predict_outputs
from mlplat.models.bundle import bundle_dir
from mlplat.raydata import drop_reservation, read_parquet
from mlplat.records import CATALOG_FEATURE_SET, STATUS_READY, FeatureSetRef, FeatureSetVersion
from mlplat.registry import Registry
from mlplat.storage import MANIFEST_NAME, Storage
from mlplat.validation.gate import Executor

__all__ = ["BundleRef", "SplitSource", "BundlePredictor", "resolve_validation_split", "predict_dataset", "plan_pool",
           "features_matrix", "EXECUTORS", "choose_executor", "inference_plan", "PLAN_REPORT_KEYS",
           "PROCESS_CACHE_BUNDLES"]

EXECUTORS: tuple[str, ...] = get_args(Executor)  # the policy's choices, in one place
#: Rows per Parquet read batch of a validation split: prediction starts on the first batch
#: instead of after a whole file (Ray's V1 reader sized one batch per 128 MiB block; on the
#: 1M-row benchmark file 1.83 -> 1.51 s, hand run, medians of 4).
SPLIT_READ_BATCH_ROWS = 131_072
PROCESS_CACHE_BUNDLES = 4  # bundles a task worker process keeps loaded (least recently used go)
_LOADED: OrderedDict[tuple, tuple] = OrderedDict()  # per worker process, see _load


@dataclass(frozen=True)
class BundleRef:
    """Which bundle to load in the actors, under which output column prefix."""

    name: str
    version: int
    sha256: str | None
    prefix: str = "pred"
    input_columns: tuple[str, ...] = ()  # for column pruning; empty: read every column


@dataclass(frozen=True)
class SplitSource:
    """The validation split of a materialized feature set, as Ray Data will read it."""

    feature_set: FeatureSetRef
    data_dir: str  # relative to the storage root
    label_columns: tuple[str, ...]
    key_columns: tuple[str, ...]
    columns: tuple[str, ...]
    rows: int
    files: tuple[str, ...] = ()  # relative to the root; empty: every Parquet file under data_dir
    split_column: str = SPLIT_COLUMN
    split_value: str = VALIDATION
    extra: dict[str, Any] = field(default_factory=dict)

    def read(self, storage: Storage, columns: Sequence[str] | None = None):
        """The split as a lazy ``ray.data.Dataset`` (Ray Data pushes the column selection and the
        row filter down into the Parquet scan where it can)."""
        from ray.data.expressions import col

        paths = [storage.path(f) for f in self.files] if self.files else storage.path(self.data_dir)
        ds = read_parquet(paths, filesystem=storage.fs, batch_size=SPLIT_READ_BATCH_ROWS)
        if columns:
            ds = ds.select_columns(list(dict.fromkeys([*columns, self.split_column])))
        return ds.filter(expr=col(self.split_column) == self.split_value)


def _count_rows(storage: Storage, data_dir: str, files: Sequence[str], expr) -> tuple[int, tuple[str, ...]]:
    import pyarrow.dataset as pads

    source = [storage.path(f) for f in files] if files else storage.path(data_dir)
    try:
        dataset = pads.dataset(source, filesystem=storage.fs, format="parquet", partitioning="hive")
    except (FileNotFoundError, OSError) as exc:
        raise NotFound(f"feature-set data {storage.uri_of(data_dir)} cannot be read: {exc}") from None
    names = tuple(dataset.schema.names)
    if SPLIT_COLUMN not in names:
        raise ValidationError(f"feature-set data {storage.uri_of(data_dir)} has no {SPLIT_COLUMN!r} column; "
                              "re-materialize the feature set with a split")
    return int(dataset.count_rows(filter=expr)), names


def resolve_validation_split(registry: Registry, storage: Storage, ref: FeatureSetRef) -> SplitSource:
    """Find the validation rows of feature set ``ref``: its catalog entry (must be ready), its
    Parquet under ``features/<name>/v<N>/data/`` and the rows whose ``split`` is ``validation``.

    This is the one place that knows how mlplat.features lays out a split."""
    fsv = FeatureSetVersion.from_catalog(registry.catalog_get(CATALOG_FEATURE_SET, ref.name, ref.version))
    if fsv.status != STATUS_READY:
        raise NotFound(f"feature set {ref.name} v{ref.version} is {fsv.status}, not ready")
    data_dir = fsv.data_path or f"features/{ref.name}/v{ref.version}/data"
    files: tuple[str, ...] = ()
    if fsv.path and storage.exists(*fsv.path.split("/"), MANIFEST_NAME):
        # Only files the manifest lists are complete (mlplat.features writes it last).
        manifest = storage.verify_manifest(*fsv.path.split("/"))
        files = tuple(f"{data_dir}/{f}" for f in sorted(manifest.get("data_files") or {}))
        if not files:
            raise NotFound(f"feature set {ref.name} v{ref.version} lists no data files in its manifest")
    import pyarrow.compute as pc

    rows, names = _count_rows(storage, data_dir, files, pc.field(SPLIT_COLUMN) == VALIDATION)
    keys = tuple(k for k in (fsv.entity_key, fsv.event_time) if k)
    return SplitSource(feature_set=fsv.ref, data_dir=data_dir, label_columns=tuple(fsv.label_columns),
                       key_columns=keys, columns=names, rows=rows, files=files)


def _encoder_of(meta: dict[str, Any]) -> FeatureEncoder | None:
    enc = meta.get("encoder")
    if isinstance(enc, dict) and enc.get("format") == ENCODER_FORMAT:
        return FeatureEncoder.from_json(enc)
    return None


def features_matrix(batch: pa.Table, input_columns: Sequence[str], encoder: FeatureEncoder | None) -> np.ndarray:
    """The model input ``(rows, features)`` float32: the encoded columns when the batch has them
    (a feature set), else the bundle's fitted encoder applied to raw columns (a dataset)."""
    names = set(batch.schema.names)
    missing = [c for c in input_columns if c not in names]
    if missing and encoder is not None:
        batch = encoder.transform_table(batch)
        names = set(batch.schema.names)
        missing = [c for c in input_columns if c not in names]
    if missing:
        raise ValidationError(f"input columns {missing} are missing; the model reads {list(input_columns)}")
    if batch.num_rows == 0:
        return np.zeros((0, len(input_columns)), dtype=np.float32)
    cols = [batch.column(c).to_numpy(zero_copy_only=False) for c in input_columns]
    return np.column_stack(cols).astype(np.float32, copy=False)


def _load(storage: Storage, ref: BundleRef, device: Any, cache: bool) -> tuple:
    """(model, task, input columns, encoder) of a bundle; with ``cache``, from this process's
    LRU of loaded bundles. The key holds the registry's sha256 and the size and modification
    time of both bundle files, so a bundle changed on storage after it was cached is loaded
    (and verified) again."""
    key: tuple = (ref.name, ref.version, ref.sha256, str(device))
    if cache and ref.sha256:
        parts = bundle_dir(ref.name, ref.version)
        infos = storage.fs.get_file_info([storage.path(*parts, BUNDLE_FILE), storage.path(*parts, WEIGHTS_FILE)])
        key += tuple((i.size, i.mtime_ns) for i in infos)
    if cache and ref.sha256 and key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    loaded = load_bundle(storage, ref.name, ref.version, expected_sha256=ref.sha256)
    entry = (loaded.model.to(device), loaded.spec.task, loaded.input_columns, _encoder_of(loaded.meta))
    if cache and ref.sha256:
        _LOADED[key] = entry
        while len(_LOADED) > PROCESS_CACHE_BUNDLES:
            _LOADED.popitem(last=False)
    return entry


class BundlePredictor:
    """A Ray Data actor class: loads every bundle once in ``__init__``, then predicts batches.

    Output: the ``keep`` columns unchanged plus one column per bundle (``prefix``): values for
    regression, probability of class 1 for binary, a ``(rows, classes)`` tensor for multiclass.
    """

    def __init__(self, storage: Storage, bundles: Sequence[BundleRef], keep: Sequence[str], device: str = "cpu",
                 constants: dict[str, Any] | None = None, class_ids: bool = False, cache: bool = False):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.keep = list(keep)
        self.constants = dict(constants or {})
        self.class_ids = class_ids  # multiclass: also emit ``<prefix>_class`` (argmax)
        self.models = [(ref.prefix, *_load(storage, ref, self.device, cache)) for ref in bundles]

    def __call__(self, batch: pa.Table) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name in self.keep:
            if name in batch.schema.names:
                out[name] = batch.column(name).to_numpy(zero_copy_only=False)
        with self.torch.inference_mode():
            for prefix, model, task, input_columns, encoder in self.models:
                X = features_matrix(batch, input_columns, encoder)
                raw = model(self.torch.from_numpy(X).to(self.device))
                pred = predict_outputs(task, raw).float().cpu().numpy()
                out[prefix] = pred
                if self.class_ids and task == "multiclass":
                    out[f"{prefix}_class"] = pred.argmax(axis=1).astype(np.int64)
        n = batch.num_rows
        for name, value in self.constants.items():
            out[name] = np.full(n, value, dtype=object if isinstance(value, str) else None)
        return out


def plan_pool(max_actors: int | None = None) -> dict[str, Any]:
    """Actor-pool size and resources: one actor per GPU when the cluster has GPUs, else one per
    CPU (capped by ``max_actors``)."""
    import ray

    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus:
        size = min(gpus, max_actors or gpus)
        return {"size": size, "num_gpus": 1, "num_cpus": 1, "device": "cuda", "service": True}
    cpus = max(1, int(resources.get("CPU", 1)))
    size = min(cpus, max_actors or cpus)
    return {"size": size, "num_gpus": 0, "num_cpus": 1, "device": "cpu"}


def choose_executor(executor: str, cluster_gpus: int) -> str:
    """``actors`` or ``tasks`` for a requested executor (``auto``: actors where there are GPUs)."""
    if executor not in EXECUTORS:
        raise ValidationError(f"executor {executor!r} is not one of {', '.join(EXECUTORS)}")
    if executor == "auto":
        return "actors" if cluster_gpus > 0 else "tasks"
    return executor


#: The keys of an inference plan a validation report records.
PLAN_REPORT_KEYS = ("executor", "device", "actors")


def inference_plan(executor: str = "auto", max_actors: int | None = None) -> dict[str, Any]:
    """Where :func:`predict_dataset` runs on this cluster: ``executor`` (tasks or actors),
    ``device`` (cpu or cuda), ``actors`` (the pool's largest size; None for tasks) and, for an
    actor pool, each actor's ``num_cpus`` and ``num_gpus``."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
    if choose_executor(executor, gpus) == "tasks":
        return {"executor": "tasks", "device": "cpu", "actors": None}
    pool = plan_pool(max_actors)
    return {"executor": "actors", "device": pool["device"], "actors": pool["size"], "num_cpus": pool["num_cpus"],
            "num_gpus": pool["num_gpus"], "service": bool(pool.get("service"))}


def _predict_blocks(batch: pa.Table, storage: Storage, bundles: Sequence[BundleRef], keep: Sequence[str],
                    constants: dict[str, Any] | None, class_ids: bool, batch_size: int) -> dict[str, np.ndarray]:
    """The ``tasks`` executor: one whole block, predicted ``batch_size`` rows at a time by the
    bundles this worker process has cached."""
    predictor = BundlePredictor(storage, bundles, keep, "cpu", constants, class_ids, cache=True)
    parts = [predictor(batch.slice(lo, batch_size)) for lo in range(0, max(batch.num_rows, 1), batch_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def predict_dataset(ds: Any, storage: Storage, bundles: Sequence[BundleRef], keep: Sequence[str], *,
                    batch_size: int = 4096, max_actors: int | None = None, constants: dict[str, Any] | None = None,
                    class_ids: bool = False, executor: str = "auto", plan: dict[str, Any] | None = None) -> Any:
    """``ds`` with the prediction columns: lazy; iterate or write it. ``executor``: see the
    module doc (``auto``: an actor pool on GPU clusters, cached-bundle tasks on CPU ones);
    ``plan``: an :func:`inference_plan` already made (then ``executor`` and ``max_actors`` are
    not looked at), so a caller records what actually ran.

    With tasks the pipeline has no actor pool, so it runs without Ray Data's per-operator
    reservation (``drop_reservation``: ``ds`` must be a dataset built for this call)."""
    import ray.data

    where = plan or inference_plan(executor, max_actors)
    if where["executor"] == "actors" and where.get("service"):
        return _predict_on_services(ds, storage, bundles, keep, constants, class_ids, where)
    if where["executor"] == "tasks":
        preds = ds.map_batches(_predict_blocks, batch_size=None, batch_format="pyarrow",
                               fn_args=(storage, list(bundles), list(keep), constants, class_ids, batch_size))
        return drop_reservation(preds)
    return ds.map_batches(
        BundlePredictor,
        fn_constructor_kwargs={"storage": storage, "bundles": list(bundles), "keep": list(keep), "device": where["device"],
                               "constants": constants, "class_ids": class_ids},
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=where["actors"]),
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=where["num_cpus"],
        num_gpus=where["num_gpus"] or None,
    )


def _bundle_inputs(storage: Storage, ref: BundleRef) -> tuple[list[str], FeatureEncoder | None]:
    """A bundle's input columns and fitted encoder, from its ``bundle.json`` checked against the
    registry's sha256 (the service verifies the whole chain when it loads the weights). Cached
    per worker process by the same key as :func:`_load`."""
    import json

    from mlplat.errors import IntegrityError
    from mlplat.storage import sha256_bytes

    key = ("inputs", ref.name, ref.version, ref.sha256)
    if key in _INPUTS:
        return _INPUTS[key]
    raw = storage.read_bytes(*bundle_dir(ref.name, ref.version), BUNDLE_FILE)
    if ref.sha256 is not None and sha256_bytes(raw) != ref.sha256:
        raise IntegrityError(f"bundle {ref.name} v{ref.version}: bundle.json does not match the registry's sha256 "
                             f"{ref.sha256[:12]}...: the bundle was changed after registration")
    meta = json.loads(raw)
    entry = (list(meta["input_columns"]), _encoder_of(meta))
    _INPUTS[key] = entry
    if len(_INPUTS) > 4 * PROCESS_CACHE_BUNDLES:
        _INPUTS.pop(next(iter(_INPUTS)))
    return entry


_INPUTS: dict[tuple, tuple[list[str], FeatureEncoder | None]] = {}


def _predict_via_service(batch: pa.Table, storage: Storage, bundles: Sequence[BundleRef], keep: Sequence[str],
                         constants: dict[str, Any] | None, class_ids: bool, services: Sequence[Any]) -> dict[str, np.ndarray]:
    """A Ray Data task: this batch's feature matrices, predicted by one of the device services."""
    import ray

    from mlplat.validation.gpu_service import batch_key, pick_service

    out: dict[str, np.ndarray] = {}
    for name in keep:
        if name in batch.schema.names:
            out[name] = batch.column(name).to_numpy(zero_copy_only=False)
    matrices = [features_matrix(batch, *_bundle_inputs(storage, ref)) for ref in bundles]
    service = services[pick_service(batch_key(matrices[0]) if matrices else 0, len(services))]
    predictions = ray.get(service.predict.remote(storage, list(bundles), matrices))
    for ref, pred in zip(bundles, predictions, strict=True):
        out[ref.prefix] = pred
        if class_ids and pred.ndim == 2:
            out[f"{ref.prefix}_class"] = pred.argmax(axis=1).astype(np.int64)
    for name, value in (constants or {}).items():
        out[name] = np.full(batch.num_rows, value, dtype=object if isinstance(value, str) else None)
    return out


def _predict_on_services(ds: Any, storage: Storage, bundles: Sequence[BundleRef], keep: Sequence[str],
                         constants: dict[str, Any] | None, class_ids: bool, where: dict[str, Any]) -> Any:
    """The ``actors`` executor on a GPU cluster (see the module doc): started (or found) here,
    before the dataset runs, so a missing GPU fails now rather than in a task."""
    from mlplat.validation.gpu_service import DEVICE_BATCH_ROWS, get_services

    services = get_services(where["device"], int(where["actors"] or 1))
    preds = ds.map_batches(_predict_via_service, batch_size=DEVICE_BATCH_ROWS, batch_format="pyarrow",
                           fn_args=(storage, list(bundles), list(keep), constants, class_ids, services))
    return drop_reservation(preds)
