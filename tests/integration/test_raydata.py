"""The platform's Parquet reads on a real Ray: which reader a file list gets, and that every
reader returns the same rows."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from mlplat import raydata


def _write(tmp_path, files: int, rows_per_file: int, rows_per_group: int) -> tuple[list[str], pa.Table]:
    paths, parts = [], []
    for i in range(files):
        ids = range(i * rows_per_file, (i + 1) * rows_per_file)
        table = pa.table({"id": pa.array(ids, pa.int64()), "x": pa.array([float(j) for j in ids], pa.float32()),
                          "split": pa.array(["validation" if j % 3 == 0 else "train" for j in ids])})
        path = str(tmp_path / f"part-{i:03d}.parquet")
        pq.write_table(table, path, row_group_size=rows_per_group)
        paths.append(path)
        parts.append(table)
    return paths, pa.concat_tables(parts)


def _run(paths: list[str]) -> tuple[pa.Table, str]:
    from ray.data.expressions import col

    ds = raydata.read_parquet(paths, batch_size=128).select_columns(["id", "x", "split"])
    ds = ds.filter(expr=col("split") == "validation").map_batches(lambda b: b, batch_format="pyarrow", batch_size=None)
    got = pa.concat_tables(ds.iter_batches(batch_size=None, batch_format="pyarrow")).sort_by("id")
    return got, ds.stats()


@pytest.mark.parametrize("files, rows_per_file, rows_per_group, reader", [
    (2, 1000, 250, "ReadParquetRowGroups->Filter"),  # few files, row groups enough for every CPU: fused
    (1, 1000, 1000, "ReadParquet->SplitBlocks"),  # one row group: Ray's reader splits its output
    (12, 100, 100, "ReadParquet->MapBatches"),  # as many files as wanted blocks: a task per file, fused
])
def test_each_reader_returns_the_same_rows(tmp_path, ray_session, files, rows_per_file, rows_per_group, reader):
    paths, table = _write(tmp_path, files, rows_per_file, rows_per_group)
    got, stats = _run(paths)
    want = table.filter(pc.equal(table.column("split"), "validation")).sort_by("id")
    assert reader in stats, stats
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("x").to_pylist() == want.column("x").to_pylist()


def test_row_group_read_from_the_storage_root(storage, ray_session):
    """The row-group read on the platform's filesystem, local disk and SeaweedFS S3 alike."""
    parts = []
    for i in range(2):
        ids = range(i * 600, (i + 1) * 600)
        table = pa.table({"id": pa.array(ids, pa.int64()), "x": pa.array([j / 7 for j in ids], pa.float64())})
        with storage.open_write("rg", f"part-{i}.parquet") as handle:
            pq.write_table(table, handle, row_group_size=200)
        parts.append(table)
    ds = raydata.read_parquet([storage.path("rg", f"part-{i}.parquet") for i in range(2)], filesystem=storage.fs)
    ds = ds.select_columns(["x"]).map_batches(lambda b: b, batch_format="pyarrow", batch_size=None)
    got = pa.concat_tables(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    assert "ReadParquetRowGroups" in ds.stats()
    assert got.schema.names == ["x"]
    assert sorted(got.column("x").to_pylist()) == sorted(pa.concat_tables(parts).column("x").to_pylist())
