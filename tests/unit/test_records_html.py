"""Records, runs and reports as HTML tables in Jupyter (``_repr_html_``): pure, no Ray."""

from __future__ import annotations

import doctest
import re
from html.parser import HTMLParser

from mlplat.monitoring.drift import DriftStats, DriftStatus, DriftVerdict, FeatureStats
from mlplat.monitoring.job import DriftResult
from mlplat.records import (
    ColumnInfo,
    DatasetVersion,
    Deployment,
    Event,
    ModelVersion,
    PartitionInfo,
    Run,
    RunState,
    _html,
)
from mlplat.validation.gate import Check, Decision
from mlplat.validation.runner import ValidationOutcome

T = 1_764_494_000.0  # 2025-11-30 09:13:20 UTC


def _cells(html_text: str) -> list[str]:
    """The text of every <td> without a table inside, in order (nested tables' cells included)."""
    return re.findall(r"<td[^>]*>([^<]*)</td>", html_text)


class _Outer(HTMLParser):
    """The rows of the outermost table: a nested table's text joins the cell that holds it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.depth, self.rows, self.cell = 0, [], None

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self.depth += tag == "table"
        if self.depth == 1 and tag == "tr":
            self.rows.append([])
        if self.depth == 1 and tag == "td":
            self.cell = ""

    def handle_endtag(self, tag: str) -> None:
        if self.depth == 1 and tag == "td":
            self.rows[-1].append(self.cell)
            self.cell = None
        self.depth -= tag == "table"

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell += data

    def handle_entityref(self, name: str) -> None:
        self.handle_data(f"&{name};")

    def handle_charref(self, name: str) -> None:
        self.handle_data(f"&#{name};")


def _rows(html_text: str) -> dict[str, str]:
    """field -> value text (still escaped) of a record's table."""
    parser = _Outer()
    parser.feed(html_text)
    return {row[0]: row[1] for row in parser.rows if len(row) == 2}


def test_doctests() -> None:
    result = doctest.testmod(_html)
    assert result.attempted >= 4 and result.failed == 0


def test_model_version_metrics_flattened_and_values_escaped() -> None:
    v = ModelVersion(name="churn", version=3, state="PRODUCTION", created_at=T, updated_at=T,
                     metrics={"val_loss": 0.4123456, "epochs_run": 5, "validation": {"auc": 0.912345, "slices": {"de": 0.5}}},
                     error="<script>alert('x')</script> & more", run_id="run-1")
    out = v._repr_html_()
    assert "<script>" not in out and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in out
    rows = _rows(out)
    assert rows["metrics.val_loss"] == "0.4123" and rows["metrics.epochs_run"] == "5"
    assert rows["metrics.validation.auc"] == "0.9123" and rows["metrics.validation.slices.de"] == "0.5"
    assert rows["created_at"] == "2025-11-30 09:13:20 UTC"
    assert rows["approval.state"] == "NOT_REQUIRED"
    assert "config_hash" not in rows  # empty fields are left out
    assert "ModelVersion churn v3 · PRODUCTION</caption>" in out


def test_dataset_columns_and_partitions_are_tables_in_their_cell() -> None:
    dv = DatasetVersion(name="clicks", version=1, path="datasets/clicks/v1", num_rows=10,
                        columns=(ColumnInfo(name="age", type="int64"), ColumnInfo(name="<b>", type="string")),
                        partition_keys=("date",),
                        partitions=(PartitionInfo(key="date=2026-11-01", values={"date": "2026-11-01"}, files=("a.parquet",),
                                                  num_rows=10, complete=True),),
                        tags=("web", "demo"))
    out = dv._repr_html_()
    assert out.count("<table") == 3  # the record, its columns, its partitions
    assert "<th style=\"text-align:left;vertical-align:top;padding:2px 8px\">type</th>" in out
    cells = _cells(out)
    assert "&lt;b&gt;" in cells and "int64" in cells and "web, demo" in cells and '{"date": "2026-11-01"}' in [
        c.replace("&quot;", '"') for c in cells]


def test_long_values_and_long_lists_are_cut() -> None:
    history = [{"epoch": i, "val_loss": 1.0 / (i + 1)} for i in range(_html.MAX_NESTED_ROWS + 7)]
    run = Run(run_id="r1", kind="train", model="churn", state=RunState.FAILED, error="x" * 5000,
              result={"history": history}, created_at=T, updated_at=T)
    out = run._repr_html_()
    rows = _rows(out)
    assert len(rows["error"]) == _html.MAX_CELL_CHARS and rows["error"].endswith("...")
    assert "... 7 more" in out and "Run churn · FAILED</caption>" in out


def test_every_record_type_renders() -> None:
    dep = Deployment(id="d-1", name="churn", version=2, state="CANARY", canary_percent=10, deadline_at=T,
                     created_at=T, updated_at=T, targets={"mlplat/pool": 2})
    ev = Event(seq=7, ts=T, kind="promoted", subject="model:churn", version=2, payload={"by": "alice"})
    for record, expect in ((dep, "canary_percent"), (ev, "payload.by")):
        out = record._repr_html_()
        assert out.startswith("<table") and out.endswith("</table>") and expect in out
    assert _rows(ev._repr_html_())["ts"] == "2025-11-30 09:13:20 UTC"


def test_validation_outcome_renders_decision_and_checks() -> None:
    check = Check(guardrail="auc >= 0.7", metric="auc", value=0.65, threshold=0.7, passed=False)
    out = ValidationOutcome(name="churn", version=2, state="REJECTED",  # type: ignore[arg-type]
                            decision=Decision(passed=False, reasons=("auc 0.65 < 0.7",), checks=(check,)),
                            metrics={"auc": 0.6512345, "accuracy": 0.7}, report_path="file:///r/churn/v2")
    html_text = out._repr_html_()
    rows = _rows(html_text)
    assert rows["metrics.auc"] == "0.6512" and rows["decision.passed"] == "false"
    assert rows["decision.reasons"] == "auc 0.65 &lt; 0.7"
    assert "<th style=\"text-align:left;vertical-align:top;padding:2px 8px\">guardrail</th>" in html_text
    assert "ValidationOutcome churn v2 · REJECTED</caption>" in html_text


def test_drift_result_renders_a_row_per_feature() -> None:
    stats = DriftStats(rows=100, features=(FeatureStats(name="age", kind="numeric", rows=100, values=100, psi=0.3123),
                                           FeatureStats(name="country", kind="categorical", rows=100, values=90)))
    verdict = DriftVerdict(status=DriftStatus.DRIFT, drifted=True, drifted_features=("age",), reasons=("age: PSI 0.31 > 0.2",))
    result = DriftResult(model="churn", version=1, feature_set={"name": "f", "version": 1}, window="1h", start_s=T - 3600,
                         end_s=T, rows=100, files=2, stats=stats, verdict=verdict, policy={"psi_max": 0.2})
    out = result._repr_html_()
    assert "drift of churn v1 over 1h: drift</caption>" in out
    assert "0.3123" in _cells(out) and "country" in _cells(out)
    assert _rows(out)["verdict.reasons"] == "age: PSI 0.31 &gt; 0.2"
