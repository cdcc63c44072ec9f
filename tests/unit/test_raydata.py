"""The platform's Ray Data read settings (pure parts; no Ray started)."""

from __future__ import annotations

import os

from mlplat import raydata


def test_footer_actors_follow_the_file_count_and_the_cluster():
    assert raydata.footer_actors([f"f{i}" for i in range(8)], cluster_cpus=2) == 1
    assert raydata.footer_actors([f"f{i}" for i in range(25)], cluster_cpus=16) == 3
    assert raydata.footer_actors([f"f{i}" for i in range(25)], cluster_cpus=2) == 2
    assert raydata.footer_actors([f"f{i}" for i in range(10_000)], cluster_cpus=128) == 32
    assert raydata.footer_actors([], cluster_cpus=4) == 1
    assert raydata.footer_actors("/data/dir", cluster_cpus=2) == 2
    assert raydata.footer_actors("/data/dir", cluster_cpus=64) == 32


def test_read_settings_live_only_for_the_call_and_the_operators_value_wins(monkeypatch, tmp_path):
    seen: list[dict] = []

    import ray.data

    context = ray.data.DataContext.get_current()

    def fake_read_parquet(paths, **kwargs):
        seen.append({**{k: os.environ.get(k) for k in (raydata.READ_UNIT_ENV, raydata.FOOTER_ACTORS_ENV)},
                     "v2": context.use_datasource_v2, "blocks": kwargs.get("override_num_blocks")})
        return "dataset"

    monkeypatch.setattr(ray.data, "read_parquet", fake_read_parquet)
    monkeypatch.delenv(raydata.READ_UNIT_ENV, raising=False)
    monkeypatch.delenv(raydata.FOOTER_ACTORS_ENV, raising=False)
    monkeypatch.delenv(raydata.READER_ENV, raising=False)
    before = (context.use_datasource_v2, context.read_op_min_num_blocks)
    import ray

    cpus = int(ray.cluster_resources()["CPU"]) if ray.is_initialized() else 1  # the suite may share a Ray
    assert raydata.read_parquet(["a.parquet", "b.parquet"]) == "dataset"
    assert seen[-1] == {raydata.READ_UNIT_ENV: str(raydata.READ_UNIT_BYTES), raydata.FOOTER_ACTORS_ENV: "1",
                        "v2": False, "blocks": raydata.MIN_BLOCKS_PER_CPU * cpus}
    assert raydata.READ_UNIT_ENV not in os.environ and raydata.FOOTER_ACTORS_ENV not in os.environ
    assert (context.use_datasource_v2, context.read_op_min_num_blocks) == before

    monkeypatch.setenv(raydata.READER_ENV, "1")  # the operator chose the V2 reader
    raydata.read_parquet(["a.parquet"])
    assert seen[-1]["v2"] == before[0] and seen[-1]["blocks"] is None

    monkeypatch.setenv(raydata.READ_UNIT_ENV, "1048576")
    raydata.read_parquet(["a.parquet"])
    assert seen[-1][raydata.READ_UNIT_ENV] == "1048576"
    assert os.environ[raydata.READ_UNIT_ENV] == "1048576"
    assert raydata.FOOTER_ACTORS_ENV not in os.environ


def test_approx_bytes_counts_fixed_widths_and_guesses_strings():
    import pyarrow as pa

    schema = pa.schema([("id", pa.int64()), ("x", pa.float32()), ("flag", pa.bool_()), ("name", pa.string())])
    assert raydata.approx_bytes(schema, 1000) == (8 + 4 + 1 + raydata.VARIABLE_WIDTH_VALUE_BYTES) * 1000
    assert raydata.approx_bytes(schema, 0) == 0


def test_row_ranges_cover_every_unit_once_in_order_and_balance_rows():
    import random

    assert raydata._row_ranges([], 4) == []
    assert raydata._row_ranges([5], 8) == [(0, 1)]
    assert raydata._row_ranges([65536] * 16, 8) == [(2 * i, 2 * i + 2) for i in range(8)]
    assert raydata._row_ranges([100, 1, 1, 1, 1], 3) == [(0, 1), (1, 2), (2, 5)]  # a big unit stands alone
    rng = random.Random(0)
    for _ in range(500):
        rows = [rng.choice([1, 7, 100, 5000]) for _ in range(rng.randint(1, 40))]
        tasks = rng.randint(1, 50)
        ranges = raydata._row_ranges(rows, tasks)
        assert len(ranges) == min(tasks, len(rows))
        assert ranges[0][0] == 0 and ranges[-1][1] == len(rows)
        assert all(lo < hi for lo, hi in ranges) and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def _files(tmp_path, groups_per_file=(3, 1, 2), rows_per_group=100):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths, start = [], 0
    for i, groups in enumerate(groups_per_file):
        n = groups * rows_per_group
        table = pa.table({"id": pa.array(range(start, start + n), pa.int64()), "x": pa.array([0.5] * n, pa.float32()),
                          "s": pa.array(["a"] * n)})
        path = str(tmp_path / f"part-{i}.parquet")
        pq.write_table(table, path, row_group_size=rows_per_group)
        paths.append(path)
        start += n
    return paths, start


def test_row_group_source_reads_every_row_once_in_order_with_the_asked_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.fs as pafs

    paths, total = _files(tmp_path)
    source = raydata.row_group_source(paths, pafs.LocalFileSystem(), columns=["id", "x"], batch_size=64)
    assert source.num_units == 6
    assert source.estimate_inmemory_data_size() > 0
    tasks = source.get_read_tasks(4)
    assert len(tasks) == 4
    assert sum(t.metadata.num_rows for t in tasks) == total
    tables = [table for t in tasks for table in t.read_fn()]
    got = pa.concat_tables(tables)
    assert got.schema.names == ["id", "x"] and got.column("id").to_pylist() == list(range(total))
    assert all(table.num_rows <= 64 for table in tables)  # batch_size bounds each yielded table
    assert all(t.schema.names == ["id", "x"] for t in tasks)


def test_row_group_source_names_a_missing_column_and_the_file(tmp_path):
    import pyarrow.fs as pafs
    import pytest

    from mlplat.errors import ValidationError

    paths, _ = _files(tmp_path)
    with pytest.raises(ValidationError, match=r"part-0\.parquet has no column\(s\) \['nope'\]"):
        raydata.row_group_source(paths, pafs.LocalFileSystem(), columns=["id", "nope"])


def test_row_group_source_tells_files_of_another_schema(tmp_path):
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    paths, _ = _files(tmp_path, groups_per_file=(2, 2))
    assert raydata.row_group_source(paths, pafs.LocalFileSystem()).uniform
    other = str(tmp_path / "other.parquet")
    pq.write_table(pa.table({"id": pa.array([1, 2], pa.int32()), "x": pa.array([0.5, 1.5], pa.float32()),
                             "s": pa.array(["a", "b"])}), other)
    assert not raydata.row_group_source([*paths, other], pafs.LocalFileSystem()).uniform
