"""Feature sets on Ray Data: fit equals in-process fit, point-in-time join never leaks the
future, materialize + register + reload on local disk and S3, bad input is a clear error.

One Ray for the session (``ray_session``); small data so the file stays well under 90 s."""

from __future__ import annotations

import datetime as dt
import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlplat.data import append_partition, get_dataset, read_dataset, register_dataset
from mlplat.errors import ConfigError, NotFound, SchemaMismatch, ValidationError
from mlplat.features.build import (
    encoder_for_spec,
    fit_on_ray,
    fit_table,
    get_feature_set,
    load_encoder,
    load_stats,
    materialize,
    parse_spec,
    read_feature_set,
)
from mlplat.features.pit import FEATURE_TIME_COLUMN, pit_join, pit_join_tables
from mlplat.registry import RegistryStore

pytestmark = pytest.mark.usefixtures("ray_session")


def _table(n: int, seed: int, day: str = "2026-11-01") -> pa.Table:
    rng = random.Random(seed)
    base = dt.datetime.fromisoformat(day)
    return pa.table({
        "user_id": [f"u{rng.randint(0, 40)}" for _ in range(n)],
        "ts": pa.array([base + dt.timedelta(seconds=rng.randint(0, 86_399)) for _ in range(n)], pa.timestamp("us")),
        "age": [None if rng.random() < 0.05 else float(rng.randint(18, 90)) for _ in range(n)],
        "spend": [float(round(rng.expovariate(0.02))) for _ in range(n)],
        "country": [rng.choice(["de", "fr", "us", "jp", None]) for _ in range(n)],
        "device": [f"d{rng.randint(0, 500)}" for _ in range(n)],
        "clicked": [int(rng.random() < 0.3) for _ in range(n)],
    })


SPEC = {
    "name": "clicks-features",
    "source": {"dataset": "clicks"},
    "entity_key": "user_id",
    "event_time": "ts",
    "labels": ["clicked"],
    "features": [
        {"column": "age", "encoder": "standardize"},
        {"column": "age", "encoder": "bucketize", "output": "age_q", "params": {"num_buckets": 4}},
        {"column": "spend", "encoder": "log1p"},
        {"column": "spend", "encoder": "clip", "output": "spend_clip", "params": {"upper_quantile": 0.99}},
        {"column": "country", "encoder": "onehot"},
        {"column": "device", "encoder": "hash", "params": {"num_buckets": 32}},
    ],
    "split": {"method": "hash", "validation_fraction": 0.25, "salt": "t"},
}


def _close(a, b, path="") -> None:
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (path, a, b)
    else:
        assert a == b, path


def test_fit_on_ray_equals_fit_on_collected():
    import ray.data

    spec = parse_spec(SPEC)
    table = _table(3000, seed=1)
    ds = ray.data.from_arrow([table.slice(i, 500) for i in range(0, 3000, 500)])  # 6 blocks
    fe_ray, raw_ray = fit_on_ray(ds, encoder_for_spec(spec), ["age", "country", "clicked"])
    fe_one, raw_one = fit_table(table, encoder_for_spec(spec), ["age", "country", "clicked"])
    _close(fe_ray.to_json(), fe_one.to_json())
    _close(raw_ray, raw_one)


def _oracle(labels: list[dict], feats: list[dict]) -> dict[tuple, tuple]:
    out = {}
    for lab in labels:
        cands = [f for f in feats if f["e"] == lab["e"] and f["ft"] <= lab["t"]]
        best = max(cands, key=lambda f: f["ft"]) if cands else None
        out[(lab["id"])] = (best["v"], best["ft"]) if best else (None, None)
    return out


def _random_pit(seed: int):
    rng = random.Random(seed)
    base = dt.datetime(2026, 1, 1)
    feats, labels = [], []
    for e in range(12):
        times = rng.sample(range(0, 1000), rng.randint(0, 25))  # unique per entity
        feats += [{"e": e, "ft": base + dt.timedelta(minutes=t), "v": rng.random()} for t in times]
    for i in range(150):
        labels.append({"id": i, "e": rng.randint(0, 12), "t": base + dt.timedelta(minutes=rng.randint(-10, 1010)),
                       "y": rng.random() < 0.5})
    return labels, feats


def _check_pit(result: pa.Table, labels: list[dict], feats: list[dict]) -> None:
    assert result.num_rows == len(labels)
    expected = _oracle(labels, feats)
    by_id = {lab["id"]: lab for lab in labels}
    for row in result.to_pylist():
        v, ft = expected[row["id"]]
        assert row["v"] == v and row[FEATURE_TIME_COLUMN] == ft, row
        if row[FEATURE_TIME_COLUMN] is not None:
            assert row[FEATURE_TIME_COLUMN] <= by_id[row["id"]]["t"]  # never a future value


def test_point_in_time_join_never_leaks_the_future():
    ts = pa.timestamp("us")
    schema_l = pa.schema([("id", pa.int64()), ("e", pa.int64()), ("t", ts), ("y", pa.bool_())])
    schema_f = pa.schema([("e", pa.int64()), ("ft", ts), ("v", pa.float64())])
    for seed in range(25):  # property test, in process
        labels, feats = _random_pit(seed)
        out = pit_join_tables(pa.Table.from_pylist(labels, schema_l), pa.Table.from_pylist(feats, schema_f), "e", "t", "ft")
        _check_pit(out, labels, feats)

    import ray.data

    labels, feats = _random_pit(99)  # distributed: hash partitions + per-bucket asof merge
    lt, ft = pa.Table.from_pylist(labels, schema_l), pa.Table.from_pylist(feats, schema_f)
    lds = ray.data.from_arrow([lt.slice(0, 70), lt.slice(70)])
    fds = ray.data.from_arrow([ft.slice(0, 100), ft.slice(100)])
    out = pa.Table.from_pylist(pit_join(lds, fds, "e", "t", "ft", num_partitions=4).take_all())
    _check_pit(out, labels, feats)


def _register_source(storage, reg, tmp_path, days=("2026-11-01", "2026-11-02")):
    src = tmp_path / "src"
    for i, day in enumerate(days):
        (src / f"date={day}").mkdir(parents=True)
        pq.write_table(_table(400, seed=10 + i, day=day), src / f"date={day}" / "part.parquet")
    return register_dataset(storage, reg, "clicks", str(src), tags=["web"], description="click facts")


def test_materialize_register_reload(storage, tmp_path):
    reg = RegistryStore(str(tmp_path / "r.db"))
    dv = _register_source(storage, reg, tmp_path)
    assert dv.num_rows == 800 and dv.partition_keys == ("date",)
    spec = parse_spec(SPEC)
    fsv = materialize(storage, reg, spec, dv, read_dataset(storage, dv))
    assert fsv.version == 1 and fsv.num_rows == 800 and fsv.source == dv.ref
    assert "split" in fsv.output_columns and "country=__other__" in fsv.feature_columns
    assert sum(fsv.split["counts"].values()) == 800 and 0 < fsv.split["counts"]["validation"] < 400

    again = get_feature_set(reg, "clicks-features")
    assert again == fsv
    fe = load_encoder(storage, again)
    stats = load_stats(storage, again)
    assert set(stats["raw"]) >= {"age", "spend", "country", "clicked"}
    assert stats["outputs"]["age"]["type"] == "numeric" and stats["raw"]["country"]["type"] == "categorical"
    assert 0 < stats["raw"]["age"]["null_rate"] < 0.2

    rows = read_feature_set(storage, again).take_all()
    assert len(rows) == 800
    by_key: dict[tuple, list] = {}
    for r in read_dataset(storage, dv).take_all():
        by_key.setdefault((r["user_id"], r["ts"]), []).append(r)
    checked = 0
    for row in rows:  # the served single-row path reproduces the materialized features exactly
        raws = by_key[(row["user_id"], row["ts"])]
        if len(raws) == 1:
            enc = fe.transform(raws[0])
            assert {c: enc[c] for c in fe.feature_columns} == {c: row[c] for c in fe.feature_columns}
            checked += 1
    assert checked > 700
    # the split is a pure function of the entity: same user, same side
    sides: dict[str, set] = {}
    for row in rows:
        sides.setdefault(row["user_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in sides.values())

    if not storage.is_local:
        return  # versioning is storage-independent: checked once, on local disk (keeps the file fast)
    # a second build is version 2; the first stays readable
    fsv2 = materialize(storage, reg, spec, dv, read_dataset(storage, dv, start="2026-11-02"))
    assert fsv2.version == 2 and fsv2.num_rows == 400
    assert get_feature_set(reg, "clicks-features", 1).num_rows == 800


def test_append_wrong_schema_fails_and_leaves_dataset_unchanged(storage, tmp_path):
    reg = RegistryStore(str(tmp_path / "r.db"))
    dv = _register_source(storage, reg, tmp_path, days=("2026-11-01",))
    files_before = storage.list_dir("datasets", "clicks", "v1")
    bad = _table(10, seed=3).drop_columns(["spend"]).append_column("extra", pa.array(range(10)))
    bad = bad.set_column(bad.schema.get_field_index("age"), "age", pa.array([str(i) for i in range(10)]))
    pq.write_table(bad, tmp_path / "bad.parquet")
    with pytest.raises(SchemaMismatch) as err:
        append_partition(storage, reg, "clicks", "date=2026-11-02", str(tmp_path / "bad.parquet"))
    msg = str(err.value)
    assert "'spend'" in msg and "'extra'" in msg and "'age'" in msg
    assert get_dataset(reg, "clicks") == dv
    assert storage.list_dir("datasets", "clicks", "v1") == files_before

    good = tmp_path / "good.parquet"
    pq.write_table(_table(10, seed=4, day="2026-11-02"), good)
    after = append_partition(storage, reg, "clicks", "date=2026-11-02", str(good))
    assert after.num_rows == dv.num_rows + 10 and [p.key for p in after.partitions][-1] == "date=2026-11-02"
    assert read_dataset(storage, after, start="2026-11-02").count() == 10


def test_bad_specs_are_clear_errors(tmp_path):
    import ray.data

    reg = RegistryStore(str(tmp_path / "r.db"))
    table = _table(50, seed=5)
    ds = ray.data.from_arrow(table)
    from mlplat.storage import open_root

    storage = open_root(str(tmp_path / "root"))
    dv = register_dataset(storage, reg, "clicks", _write(tmp_path, table))
    with pytest.raises(ValidationError, match=r"\['nope'\]"):
        materialize(storage, reg, parse_spec({**SPEC, "labels": ["nope"]}), dv, ds)
    with pytest.raises(ConfigError, match="unknown encoder 'zscore'"):
        encoder_for_spec(parse_spec({**SPEC, "features": [{"column": "age", "encoder": "zscore"}]}))
    with pytest.raises(ConfigError, match="unknown key 'featurs'"):
        parse_spec({**SPEC, "featurs": []})
    null_label = table.set_column(table.schema.get_field_index("clicked"), "clicked", pa.nulls(50, pa.int64()))
    with pytest.raises(ValidationError, match="label column 'clicked' is all null"):
        materialize(storage, reg, parse_spec(SPEC), dv, ray.data.from_arrow(null_label))
    with pytest.raises(NotFound):
        get_dataset(reg, "clicks", 7)


def _write(tmp_path, table) -> str:
    path = tmp_path / "one.parquet"
    pq.write_table(table, path)
    return str(path)
