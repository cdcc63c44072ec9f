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

    def fake_read_parquet(paths, **kwargs):
        seen.append({k: os.environ.get(k) for k in (raydata.READ_UNIT_ENV, raydata.FOOTER_ACTORS_ENV)})
        return "dataset"

    import ray.data

    monkeypatch.setattr(ray.data, "read_parquet", fake_read_parquet)
    monkeypatch.delenv(raydata.READ_UNIT_ENV, raising=False)
    monkeypatch.delenv(raydata.FOOTER_ACTORS_ENV, raising=False)
    assert raydata.read_parquet(["a.parquet", "b.parquet"]) == "dataset"
    assert seen[-1] == {raydata.READ_UNIT_ENV: str(raydata.READ_UNIT_BYTES), raydata.FOOTER_ACTORS_ENV: "1"}
    assert raydata.READ_UNIT_ENV not in os.environ and raydata.FOOTER_ACTORS_ENV not in os.environ

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
