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
