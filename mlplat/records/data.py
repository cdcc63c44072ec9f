"""Records of the data catalog and feature sets.

``mlplat.data`` and ``mlplat.features`` are the same layer and never import each other: they
meet through these records and the registry (kinds ``dataset`` and ``feature_set``).
"""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mlplat.config import StrictModel
from mlplat.names import NAME_PATTERN
from mlplat.records.model import ArtifactRef, DatasetRef, FeatureSetRef, Record
from mlplat.records.run import CatalogEntry

__all__ = [
    "DatasetKind",
    "ColumnInfo",
    "PartitionInfo",
    "DatasetVersion",
    "SourceSpec",
    "EncoderSpec",
    "SplitSpec",
    "PartitionRange",
    "FeatureSetSpec",
    "FeatureSetVersion",
    "CATALOG_DATASET",
    "CATALOG_FEATURE_SET",
    "EVENT_PARTITION_COMPLETED",
    "STATUS_PENDING",
    "STATUS_READY",
]

#: Registry catalog kinds.
CATALOG_DATASET = "dataset"
CATALOG_FEATURE_SET = "feature_set"
#: Registry event kind written when an ETL marks a partition finished.
EVENT_PARTITION_COMPLETED = "partition_completed"
#: A version is registered ``pending`` before its files are written and flipped to
#: ``ready`` once they are all in place; readers ignore anything not ``ready``.
STATUS_PENDING = "pending"
STATUS_READY = "ready"


class DatasetKind(str, enum.Enum):
    """What a dataset holds: ETL facts (training data), inference logs, the serving ingress's
    telemetry (``telemetry-<model>``) or delayed labels joined to predictions (``outcomes-<model>``)."""

    FACTS = "facts"
    INFERENCE = "inference"
    TELEMETRY = "telemetry"
    OUTCOMES = "outcomes"

    def __str__(self) -> str:
        return self.value


class ColumnInfo(Record):
    """One column of a dataset: name and Arrow type as text (``int64``, ``string``...)."""

    name: str
    type: str


class PartitionInfo(Record):
    """One hive partition (``date=2026-11-27``) of a dataset version.

    ``files`` are relative to the version directory; only listed files are ever read, so a
    half-written partition is invisible.
    """

    key: str
    values: dict[str, str]
    files: tuple[str, ...]
    num_rows: int = Field(ge=0)
    complete: bool = False
    completed_at: float | None = None
    added_at: float | None = None


class DatasetVersion(Record):
    """A dataset version as the catalog holds it."""

    name: str
    version: int = Field(ge=1)
    kind: DatasetKind = DatasetKind.FACTS
    status: str = STATUS_READY
    path: str  # relative to the storage root: datasets/<name>/v<N>
    files: tuple[str, ...] = ()  # unpartitioned files, relative to ``path``
    columns: tuple[ColumnInfo, ...] = ()  # data columns (partition keys excluded)
    partition_keys: tuple[str, ...] = ()
    partitions: tuple[PartitionInfo, ...] = ()
    num_rows: int = Field(0, ge=0)
    tags: tuple[str, ...] = ()
    description: str = ""
    source: str = ""
    created_at: float | None = None
    updated_at: float | None = None

    @property
    def ref(self) -> DatasetRef:
        return DatasetRef(name=self.name, version=self.version)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def schema_dict(self) -> dict[str, str]:
        return {c.name: c.type for c in self.columns}

    def partition(self, key: str) -> PartitionInfo | None:
        return next((p for p in self.partitions if p.key == key), None)

    def payload(self) -> dict[str, Any]:
        """What goes into the registry's catalog payload (name/version/timestamps live there)."""
        return self.model_dump(mode="json", exclude={"name", "version", "created_at", "updated_at"})

    @classmethod
    def from_catalog(cls, entry: CatalogEntry) -> DatasetVersion:
        payload = dict(entry.payload)
        payload.setdefault("tags", entry.tags)
        return cls(name=entry.name, version=entry.version, created_at=entry.created_at,
                   updated_at=entry.updated_at, **payload)


# -- feature-set spec (YAML) -----------------------------------------------------------------


class SourceSpec(StrictModel):
    """The dataset a feature set is built from; latest ready version when ``version`` is unset."""

    dataset: str = Field(pattern=NAME_PATTERN.pattern)
    version: int | None = Field(None, ge=1)


class EncoderSpec(StrictModel):
    """One encoder applied to one input column.

    ``encoder`` is a built-in name (``standardize``, ``onehot``...) or an import path
    ``package.module:Class`` of a user encoder. ``params`` are checked by the encoder.
    """

    column: str = Field(min_length=1)
    encoder: str = Field(min_length=1)
    output: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class SplitSpec(StrictModel):
    """Reproducible train/validation split, written as a ``split`` column.

    ``hash``: a stable hash (blake2b) of ``salt`` + entity key; an entity is always on one side.
    ``time``: rows with event time ``< cutoff`` train, the rest validate.
    """

    method: Literal["hash", "time", "none"] = "hash"
    validation_fraction: float = Field(0.2, ge=0.0, le=1.0)
    salt: str = ""
    cutoff: str | None = None

    @model_validator(mode="after")
    def _cutoff_for_time(self) -> SplitSpec:
        if self.method == "time" and not self.cutoff:
            raise ValueError("split.method 'time' needs split.cutoff (an ISO date or datetime)")
        return self


class PartitionRange(StrictModel):
    """Inclusive range of partition values (``date``), e.g. ``2026-11-01``..``2026-11-30``."""

    key: str = "date"
    start: str | None = None
    end: str | None = None


class FeatureSetSpec(StrictModel):
    """A feature set in YAML: source dataset, keys, labels and per-column encoders."""

    name: str = Field(pattern=NAME_PATTERN.pattern)
    source: SourceSpec
    entity_key: str = Field(min_length=1)
    event_time: str | None = None
    labels: list[str] = Field(default_factory=list)
    features: list[EncoderSpec] = Field(min_length=1)
    split: SplitSpec = Field(default_factory=SplitSpec)
    partitions: PartitionRange | None = None
    tags: list[str] = Field(default_factory=list)
    description: str = ""

    @field_validator("labels", mode="before")
    @classmethod
    def _one_label(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def input_columns(self) -> list[str]:
        cols = [self.entity_key, *([self.event_time] if self.event_time else []), *self.labels]
        cols += [f.column for f in self.features]
        return list(dict.fromkeys(cols))


class FeatureSetVersion(Record):
    """A materialized feature-set version as the catalog holds it."""

    name: str
    version: int = Field(ge=1)
    status: str = STATUS_READY
    spec: dict[str, Any]
    source: DatasetRef
    path: str  # features/<name>/v<N>
    data_path: str  # features/<name>/v<N>/data
    encoder: ArtifactRef | None = None
    stats: ArtifactRef | None = None
    num_rows: int = Field(0, ge=0)
    output_columns: tuple[str, ...] = ()
    feature_columns: tuple[str, ...] = ()
    label_columns: tuple[str, ...] = ()
    entity_key: str = ""
    event_time: str | None = None
    split: dict[str, Any] = Field(default_factory=dict)
    tags: tuple[str, ...] = ()
    created_at: float | None = None
    updated_at: float | None = None

    @property
    def ref(self) -> FeatureSetRef:
        return FeatureSetRef(name=self.name, version=self.version)

    def payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"name", "version", "created_at", "updated_at"})

    @classmethod
    def from_catalog(cls, entry: CatalogEntry) -> FeatureSetVersion:
        payload = dict(entry.payload)
        payload.setdefault("tags", entry.tags)
        return cls(name=entry.name, version=entry.version, created_at=entry.created_at,
                   updated_at=entry.updated_at, **payload)
