"""The data catalog: datasets, versions, partitions; resolve to ``ray.data.Dataset``."""

from mlplat.data.catalog import (
    add_files,
    append_partition,
    complete_partition,
    dataset_files,
    get_dataset,
    list_datasets,
    parse_partition,
    read_dataset,
    register_dataset,
    schema_diff,
    search_datasets,
)

__all__ = [
    "add_files",
    "append_partition",
    "complete_partition",
    "dataset_files",
    "get_dataset",
    "list_datasets",
    "parse_partition",
    "read_dataset",
    "register_dataset",
    "schema_diff",
    "search_datasets",
]
