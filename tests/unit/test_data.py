"""Data catalog without Ray: registration from Parquet/CSV/JSON, partitions, schema checks,
search, the partition_completed event, and the `mlplat data` CLI."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from mlplat.data import (
    append_partition,
    complete_partition,
    dataset_files,
    get_dataset,
    list_datasets,
    parse_partition,
    register_dataset,
    schema_diff,
    search_datasets,
)
from mlplat.errors import AlreadyExists, NotFound, SchemaMismatch, ValidationError
from mlplat.records import EVENT_PARTITION_COMPLETED, FeatureSetSpec
from mlplat.registry import RegistryStore
from mlplat.storage import open_root


@pytest.fixture
def env(tmp_path):
    return open_root(str(tmp_path / "root")), RegistryStore(str(tmp_path / "r.db"))


def test_parse_partition_and_schema_diff():
    assert parse_partition("date=2026-11-27") == {"date": "2026-11-27"}
    assert parse_partition("region=eu/date=2026-11-27") == {"region": "eu", "date": "2026-11-27"}
    for bad in ("2026-11-27", "date=", "date=../x", "da te=1", "date=%2e"):
        with pytest.raises(ValidationError):
            parse_partition(bad)
    assert schema_diff({"a": "int64", "b": "string"}, {"a": "double", "c": "string"}) == [
        "missing column 'b' (string)", "unexpected column 'c' (string)", "column 'a' has type double, expected int64"]


def test_register_csv_json_and_partitions(env, tmp_path):
    storage, reg = env
    (tmp_path / "a.csv").write_text("uid,x\n1,1.5\n2,2.5\n")
    (tmp_path / "b.jsonl").write_text('{"uid": 3, "x": 3.5}\n')
    dv = register_dataset(storage, reg, "clicks", str(tmp_path / "a.csv"), partition="date=2026-11-01",
                          tags=["web"], description="clicks")
    assert (dv.version, dv.num_rows, dv.partition_keys, dv.schema_dict()) == (1, 2, ("date",), {"uid": "int64", "x": "double"})
    assert storage.exists("datasets", "clicks", "v1", "date=2026-11-01")
    dv = append_partition(storage, reg, "clicks", "date=2026-11-02", str(tmp_path / "b.jsonl"))
    assert dv.num_rows == 3 and [p.key for p in dv.partitions] == ["date=2026-11-01", "date=2026-11-02"]
    assert dataset_files(dv, start="2026-11-02") == [f"datasets/clicks/v1/{dv.partitions[1].files[0]}"]
    with pytest.raises(AlreadyExists):
        append_partition(storage, reg, "clicks", "date=2026-11-02", str(tmp_path / "b.jsonl"))
    with pytest.raises(ValidationError, match="partition keys"):
        append_partition(storage, reg, "clicks", "day=2026-11-03", str(tmp_path / "b.jsonl"))

    complete_partition(reg, "clicks", "date=2026-11-01")
    complete_partition(reg, "clicks", "date=2026-11-01")  # idempotent: one event
    events = reg.events_since(0, kinds=[EVENT_PARTITION_COMPLETED])
    assert len(events) == 1 and events[0].subject == "dataset:clicks" and events[0].payload["partition"] == "date=2026-11-01"
    assert get_dataset(reg, "clicks").partitions[0].complete
    with pytest.raises(NotFound, match="no partition"):
        complete_partition(reg, "clicks", "date=2030-01-01")

    pq.write_table(pa.table({"item": ["a"], "price": [1.0]}), tmp_path / "p.parquet")
    register_dataset(storage, reg, "items", str(tmp_path / "p.parquet"), kind="inference", tags=["shop"])
    assert [d.name for d in list_datasets(reg)] == ["clicks", "items"]
    assert [d.name for d in list_datasets(reg, column="price")] == ["items"]
    assert [d.name for d in list_datasets(reg, tag="web")] == ["clicks"]
    assert [d.name for d in list_datasets(reg, kind="inference")] == ["items"]
    assert [d.name for d in search_datasets(reg, "pric")] == ["items"]
    with pytest.raises(ValidationError, match="without partitions"):
        append_partition(storage, reg, "items", "date=2026-11-01", str(tmp_path / "p.parquet"))


def test_append_schema_mismatch_names_columns_and_changes_nothing(env, tmp_path):
    storage, reg = env
    pq.write_table(pa.table({"uid": [1], "x": [1.0]}), tmp_path / "a.parquet")
    before = register_dataset(storage, reg, "clicks", str(tmp_path / "a.parquet"), partition="date=2026-11-01")
    pq.write_table(pa.table({"uid": ["1"], "y": [1.0]}), tmp_path / "bad.parquet")
    with pytest.raises(SchemaMismatch, match=r"'x'.*'y'.*'uid' has type string"):
        append_partition(storage, reg, "clicks", "date=2026-11-02", str(tmp_path / "bad.parquet"))
    assert get_dataset(reg, "clicks") == before
    assert storage.list_dir("datasets", "clicks", "v1") == ["date=2026-11-01"]


def test_missing_source_and_version_are_not_found(env, tmp_path):
    storage, reg = env
    with pytest.raises(NotFound):
        register_dataset(storage, reg, "clicks", str(tmp_path / "nope.parquet"))
    with pytest.raises(NotFound):
        get_dataset(reg, "clicks")
    with pytest.raises(ValidationError):
        register_dataset(storage, reg, "clicks", str(tmp_path), kind="facts")  # empty dir


def test_spec_example_parses():
    from mlplat.config import load_config
    from mlplat.features.build import encoder_for_spec

    spec = load_config("configs/features-example.yaml", FeatureSetSpec)
    assert spec.source.dataset == "clicks" and spec.split.method == "hash"
    assert len(encoder_for_spec(spec).encoders) == len(spec.features)


def test_cli_register_show_list_complete(tmp_path, monkeypatch):
    from mlplat.cli import cli

    monkeypatch.setenv("MLPLAT_REGISTRY_MODE", "local")
    monkeypatch.setenv("MLPLAT_ROOT", str(tmp_path / "root"))
    (tmp_path / "a.csv").write_text("uid,x\n1,1.5\n2,2.5\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["data", "register", "clicks", str(tmp_path / "a.csv"), "--partition", "date=2026-11-01",
                              "--tag", "web"])
    assert res.exit_code == 0, res.output
    assert "clicks" in res.output and "facts" in res.output
    res = runner.invoke(cli, ["data", "show", "clicks"])
    assert res.exit_code == 0 and "date=2026-11-01" in res.output and "double" in res.output
    res = runner.invoke(cli, ["data", "complete", "clicks", "date=2026-11-01"])
    assert res.exit_code == 0 and "complete" in res.output
    res = runner.invoke(cli, ["data", "list", "--json"])
    assert json.loads(res.output)[0]["partitions"][0]["complete"] is True
    res = runner.invoke(cli, ["data", "search", "zzz"])
    assert res.exit_code == 0 and "clicks" not in res.output
