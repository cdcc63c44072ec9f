"""Metrics on Ray's metrics endpoint, from a real Serve app on the shared Ray instance: requests
by model/version/code, the latency histogram, the canary split, telemetry drops and drift scores
appear in a Prometheus scrape of the node's metrics export port with their tags; every series
the Grafana dashboard (dashboards/mlplat.json) queries is in that scrape; the canary split counts
answered requests only; and the telemetry of the same requests carries their call context (the
allowed keys) and the request id the client got back, and is registered in the catalog."""

from __future__ import annotations

import io
import json
import re
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from mlplat.config import DedicatedSettings, PlatformConfig, PoolSettings, ServeSettings
from mlplat.metrics import DRIFT_ACTOR_NAME, SERIES, prometheus_name, record_drift_scores
from mlplat.registry import ActorRegistry
from mlplat.serving import start_serving
from mlplat.storage import open_root
from tests.integration.serving_support import RAW_ROW, register_servable

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOKEN = "metrics-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APP, PREFIX, MODEL = "mlplat-metrics", "/mlplat-metrics", "scored"
MAX_ROWS = 16  # the telemetry buffer: one request of MAX_ROWS + 1 rows is dropped (the 5 rows before stay
# under MAX_ROWS / 2, where the ingress would flush early)
DASHBOARD = Path(__file__).resolve().parents[2] / "dashboards" / "mlplat.json"
SCRAPE_TIMEOUT_S = 90.0  # Ray exports user metrics every few seconds (metrics_report_interval_ms)


def _predict(client: httpx.Client, name: str = MODEL, rows: list | None = None, **headers: str) -> httpx.Response:
    return client.post(f"/v1/models/{name}:predict", json={"instances": rows or [RAW_ROW]}, headers=headers)


@pytest.fixture(scope="module")
def served(ray_session, serve_http_port, tmp_path_factory):
    """A small app (its own name and prefix, num_cpus 0) with one ingress-placed model, a canary
    of it running at 50%, and traffic of every kind: 200s, 422, 404, 401, a dropped request."""
    from ray import serve

    from mlplat.lifecycle.deploy import deploy

    root = tmp_path_factory.mktemp("metrics-root")
    config = PlatformConfig(
        root=str(root), namespace="mlplat-test", api_token=TOKEN,
        serve=ServeSettings(port=serve_http_port, app_name=APP, route_prefix=PREFIX, telemetry_flush_s=3600,
                            telemetry_max_rows=MAX_ROWS, route_refresh_s=0.1, canary_report_s=0.3, metrics_interval_s=0.5,
                            telemetry_context_keys=["tenant", "session"],
                            ingress_num_cpus=0, pool=PoolSettings(min_replicas=1, max_replicas=1, num_cpus=0),
                            dedicated=DedicatedSettings(min_replicas=1, max_replicas=1, num_cpus=0)))
    actor = f"registry-metrics-{uuid.uuid4().hex[:6]}"
    registry = ActorRegistry.connect(config, actor_name=actor, url=str(root / "registry.db"))
    storage = open_root(config.root)
    production = register_servable(registry, storage, MODEL, seed=1, placement="ingress")
    url = start_serving(config, registry_actor=actor)
    sent: dict[str, Any] = {"ids": [], "codes": [], "canary_answered": 0}
    try:
        with httpx.Client(base_url=url, timeout=60, headers=AUTH) as client:
            for i in range(3):
                r = _predict(client, **{"x-mlplat-caller": f"svc-{i}", "x-mlplat-context-tenant": "acme",
                                        "x-mlplat-context-session": f"s-{i}", "x-mlplat-context-other": "not allowed",
                                        "user-agent": "metrics-test/1"})
                assert r.status_code == 200, r.text
                assert len(r.headers.get_list("x-request-id")) == 1
                sent["ids"].append(r.headers["x-request-id"])
            r = _predict(client, **{"x-request-id": "client-chosen-1"})
            assert r.status_code == 200 and r.headers["x-request-id"] == "client-chosen-1"
            sent["ids"].append("client-chosen-1")
            oip = client.post(f"/v2/models/{MODEL}/infer", json={"id": "oip-7", "inputs": [
                {"name": k, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "FP32", "data": [v]}
                for k, v in RAW_ROW.items()]})
            assert oip.status_code == 200 and oip.json()["id"] == "oip-7"  # the OIP id names the request
            assert oip.headers.get_list("x-request-id") == [oip.headers["x-request-id"]]  # Serve's, once
            sent["ids"].append("oip-7")
            bad = _predict(client, rows=[{**RAW_ROW, "amount": "lots"}])
            assert bad.status_code == 422
            assert _predict(client, "no-such-model").status_code == 404
            assert client.post(f"/v1/models/{MODEL}:predict", json={"instances": [RAW_ROW]},
                               headers={"Authorization": "Bearer wrong"}).status_code == 401
            ingress = serve.get_deployment_handle("ingress", APP)
            sent["flushed_rows"] = ingress.flush_telemetry.remote().result()
            assert _predict(client, rows=[RAW_ROW] * (MAX_ROWS + 1)).status_code == 200  # too many rows: dropped
            # A canary at 50%, sticky per caller: both arms get requests.
            candidate = register_servable(registry, storage, MODEL, seed=5, promote=False, placement="ingress")
            d = deploy(registry, config, MODEL, candidate, canary_percent=50, replica_counts={APP: {"ingress": 1}})
            assert d.state.value == "CANARY", d
            versions = set()
            deadline = time.monotonic() + 20
            while versions != {production, candidate} and time.monotonic() < deadline:
                for i in range(20):
                    r = _predict(client, **{"x-mlplat-caller": f"user-{i}-{time.monotonic_ns()}"})
                    assert r.status_code == 200, r.text
                    sent["canary_answered"] += 1
                    versions.add(int(r.headers["x-mlplat-model-version"]))
            assert versions == {production, candidate}
            for i in range(4):  # split, then refused (bad input): not in the canary split
                assert _predict(client, rows=[{**RAW_ROW, "amount": "lots"}],
                                **{"x-mlplat-caller": f"bad-{i}"}).status_code == 422
        assert record_drift_scores(MODEL, {"amount": {"psi": 0.125, "ks": 0.05}}, namespace=config.namespace) == 2
        ingress.export_metrics.remote().result()
        yield {"config": config, "registry": registry, "storage": storage, "sent": sent, "production": production,
               "candidate": candidate}
    finally:
        serve.delete(APP)
        for name in (actor, DRIFT_ACTOR_NAME):
            try:
                ray.kill(ray.get_actor(name, namespace=config.namespace))
            except ValueError:
                pass


# -- scraping -----------------------------------------------------------------------------------------

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape() -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of every alive node's metrics export port: name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for node in ray.nodes():
        if not node.get("Alive") or not node.get("MetricsExportPort"):
            continue
        host = node.get("NodeManagerAddress") or "127.0.0.1"
        with urllib.request.urlopen(f"http://{host}:{node['MetricsExportPort']}/metrics", timeout=10) as response:
            text = response.read().decode()
        for line in text.splitlines():
            m = _LINE.match(line)
            if m and not line.startswith("#"):
                out.setdefault(m[1], []).append((dict(_LABEL.findall(m[2] or "")), float(m[3])))
    return out


def _has(samples, name: str, **labels: str) -> bool:
    return any(all(got.get(k) == v for k, v in labels.items()) for got, _ in samples.get(name, []))


@pytest.fixture(scope="module")
def metrics(served):
    """The scrape once every expected series has arrived (Ray exports every few seconds)."""
    prod, cand = str(served["production"]), str(served["candidate"])
    expected = [
        ("ray_mlplat_requests_total", {"model": MODEL, "version": prod, "code": "200"}),
        ("ray_mlplat_requests_total", {"model": MODEL, "version": prod, "code": "422"}),
        ("ray_mlplat_requests_total", {"model": "_unknown", "version": "", "code": "404"}),
        ("ray_mlplat_requests_total", {"model": "_unknown", "code": "401"}),
        ("ray_mlplat_request_latency_ms_bucket", {"model": MODEL, "le": "+Inf"}),
        ("ray_mlplat_request_latency_ms_count", {"model": MODEL}),
        ("ray_mlplat_canary_requests_total", {"model": MODEL, "version": cand, "arm": "canary"}),
        ("ray_mlplat_canary_requests_total", {"model": MODEL, "version": prod, "arm": "production"}),
        ("ray_mlplat_telemetry_rows_dropped_total", {"model": MODEL}),
        ("ray_mlplat_telemetry_pending_rows", {}),
        ("ray_mlplat_drift_score", {"model": MODEL, "feature": "amount", "statistic": "psi"}),
    ]
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    while True:
        samples = scrape()
        missing = [(n, labels) for n, labels in expected if not _has(samples, n, **labels)]
        if not missing:
            return samples
        if time.monotonic() > deadline:
            mlplat = {n: s for n, s in samples.items() if "mlplat" in n}
            raise AssertionError(f"not in the scrape after {SCRAPE_TIMEOUT_S} s: {missing}; mlplat series: {mlplat}")
        time.sleep(1.0)


def test_counters_carry_model_version_and_code(served, metrics):
    prod = str(served["production"])
    ok = [v for labels, v in metrics["ray_mlplat_requests_total"]
          if labels.get("model") == MODEL and labels.get("code") == "200" and labels.get("version") == prod]
    assert sum(ok) >= 5  # 3 with context, 1 with x-request-id, 1 OIP, then the dropped one and the canary traffic
    for name in ("ray_mlplat_requests_total", "ray_mlplat_canary_requests_total"):
        for labels, _ in metrics[name]:
            tags = SERIES[name.removeprefix("ray_").removesuffix("_total")].tag_keys
            assert set(tags) <= set(labels), (name, labels)
    assert {labels["arm"] for labels, _ in metrics["ray_mlplat_canary_requests_total"]
            if labels.get("model") == MODEL} == {"canary", "production"}
    dropped = sum(v for labels, v in metrics["ray_mlplat_telemetry_rows_dropped_total"] if labels.get("model") == MODEL)
    assert dropped >= MAX_ROWS + 1
    drift = {labels["statistic"]: v for labels, v in metrics["ray_mlplat_drift_score"] if labels.get("model") == MODEL}
    assert drift == {"psi": 0.125, "ks": 0.05}
    count = sum(v for labels, v in metrics["ray_mlplat_request_latency_ms_count"] if labels.get("model") == MODEL)
    assert count >= sum(ok)
    buckets = {labels["le"] for labels, _ in metrics["ray_mlplat_request_latency_ms_bucket"] if labels.get("model") == MODEL}
    assert {"1.0", "100.0", "30000.0", "+Inf"} <= buckets


def test_the_canary_split_counts_answered_requests_only(served, metrics):
    """The 4 refused requests after the split are not in it: the split's total is the answered
    canary-phase requests (Ray reports every few seconds: wait for the final count)."""
    want = served["sent"]["canary_answered"]
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    samples = metrics
    while True:
        split = sum(v for labels, v in samples.get("ray_mlplat_canary_requests_total", []) if labels.get("model") == MODEL)
        assert split <= want, (split, want)
        if split == want or time.monotonic() > deadline:
            break
        time.sleep(1.0)
        samples = scrape()
    assert split == want


# -- the dashboard ------------------------------------------------------------------------------------

_PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
                    "unless", "inf", "nan"}


def series_in_promql(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, or
    labels (label matchers, range selectors and grouping clauses are cut first)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", expr):
        if not m[2] and m[1] not in _PROMQL_KEYWORDS:
            names.add(m[1])
    return names


def _panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out += panel.get("panels", [])  # collapsed rows
    return out


def test_promql_parser():
    assert series_in_promql('histogram_quantile(0.99, sum by (le, model) (rate(x_bucket{model=~"$m"}[5m])))') == {"x_bucket"}
    assert series_in_promql("a / ignoring (arm) group_left sum by (model) (rate(b[$__rate_interval])) > bool 0.5") == {"a", "b"}
    assert series_in_promql('sum(up{job="by (x)"}) or vector(0)') == {"up"}


def test_every_dashboard_query_names_a_series_in_the_scrape(metrics):
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["panels"]
    used: dict[str, set[str]] = {}
    for panel in _panels(dashboard):
        if panel.get("type") == "row":
            continue
        exprs = [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
        assert exprs, f"panel {panel.get('title')!r} has no query"
        for expr in exprs:
            names = series_in_promql(expr)
            assert names, f"panel {panel['title']!r}: no series in {expr!r}"
            used.setdefault(panel["title"], set()).update(names)
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else ""
        for m in re.finditer(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", text):
            used.setdefault(f"variable {variable['name']}", set()).add(m[1])
    missing = {title: sorted(n for n in names if n not in metrics) for title, names in used.items()}
    assert not any(missing.values()), f"series queried but not in the scrape: {missing}"
    exported = {prometheus_name(n) for n in SERIES}
    for names in used.values():  # every queried series is one mlplat declares
        assert all(n in exported or n.removesuffix("_bucket") in exported for n in names), names
    titles = " ".join(p["title"].lower() for p in _panels(dashboard))
    for topic in ("requests/s", "error ratio", "p50", "p99", "canary", "dropped", "drift"):
        assert topic in titles, topic


# -- telemetry of the same requests ------------------------------------------------------------------------


def test_telemetry_rows_carry_the_call_context_and_the_returned_request_id(served):
    storage, sent = served["storage"], served["sent"]
    assert sent["flushed_rows"] == len(sent["ids"])
    tables = [pq.read_table(io.BytesIO(storage.read_bytes("telemetry", MODEL, day, f)))
              for day in storage.list_dir("telemetry", MODEL) for f in storage.list_dir("telemetry", MODEL, day)]
    rows = pa.concat_tables(tables, promote_options="permissive").to_pylist()
    by_id = {r["request_id"]: r for r in rows}
    assert set(sent["ids"]) <= set(by_id)
    first = by_id[sent["ids"][0]]
    assert (first["caller"], first["context.tenant"], first["context.session"], first["user_agent"]) == (
        "svc-0", "acme", "s-0", "metrics-test/1")
    assert first["region"] is None and first["request_row"] == 0 and first["endpoint"] == "v1"
    assert by_id["oip-7"]["endpoint"] == "v2" and by_id["client-chosen-1"]["context.tenant"] is None
    assert "context.other" not in first  # not in serve.telemetry_context_keys
    assert all(r["raw_features"] for r in rows)  # every request sent raw feature rows
    import mlplat.data.catalog as catalog

    if hasattr(catalog, "add_files"):  # the flush also registered the files in the catalog
        dv = catalog.get_dataset(served["registry"], f"telemetry-{MODEL}")
        assert dv.kind.value == "telemetry" and dv.num_rows >= len(sent["ids"])
