"""The Parquet of a telemetry flush: a dictionary only for the few-valued columns. No Ray."""

from __future__ import annotations

import io

import pyarrow.parquet as pq

from mlplat.serving.telemetry import TelemetryWriter
from mlplat.storage import open_root
from tests.unit.test_telemetry_context import KINDS, _rows


def test_only_few_valued_columns_get_a_parquet_dictionary(tmp_path) -> None:
    storage = open_root(str(tmp_path / "root"))
    w = TelemetryWriter(storage, writer_id="w")
    for i in range(6):
        w.record("churn", 2, _rows(1 + i % 3), [0.1 * i] * (1 + i % 3), request_id=f"r{i}", caller="svc",
                 endpoint="v1", latency_ms=1.0 + i, kinds=KINDS, context={"tenant": f"t{i % 2}"}, user_agent="ua")
    (file,) = w.flush()
    meta = pq.ParquetFile(io.BytesIO(storage.read_bytes("telemetry", "churn", file.partition, file.name))).metadata
    group = meta.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    for column in ("model", "version", "endpoint", "caller", "user_agent", "feature.country", "context.tenant"):
        assert "RLE_DICTIONARY" in encodings[column], (column, encodings[column])
    for column in ("ts", "request_id", "latency_ms", "prediction", "feature.amount"):
        assert "RLE_DICTIONARY" not in encodings[column], (column, encodings[column])
    assert pq.read_table(io.BytesIO(storage.read_bytes("telemetry", "churn", file.partition, file.name))).num_rows == 12
