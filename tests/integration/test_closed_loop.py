"""The closed loop end to end on a small model with real Ray, Serve, Train and Data (issue 14):
serve -> telemetry -> shifted traffic -> drift -> alarm webhook received by a loopback server ->
retrain (features rebuilt with the new partition, trained through the queue) -> validate ->
canary -> promote, all of it in the registry's event log and in the lineage graph."""

from __future__ import annotations

import csv
import http.server
import json
import threading
import time
import uuid
from pathlib import Path

import pytest

from mlplat.records import RunState

pytestmark = [pytest.mark.ray, pytest.mark.slow]

TOKEN = "loop-" + uuid.uuid4().hex
ADMIN = "loop-admin-" + uuid.uuid4().hex
FEATURES = ["age", "spend", "sessions", "country", "device", "plan", "score"]


class Hooks(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Hooks.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def webhook_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Hooks.received = []
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def _shifted_csv(path: Path, seed: int) -> list[dict]:
    """Click logs like the demo's, with older users and bigger spend (a real distribution shift)."""
    from mlplat.demo import _write_clicks_csv

    rows = _write_clicks_csv(path, rows=1500, seed=seed)
    for r in rows:
        r["age"], r["spend"], r["ts"] = min(99, r["age"] + 30), round(r["spend"] * 6, 2), r["ts"].replace("11-01", "11-02")
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_drift_alarm_retrain_validate_canary_promote(tmp_path, ray_session, serve_http_port, webhook_url):
    import ray
    from ray import serve

    from mlplat.api import connect
    from mlplat.demo import CONFIGS, MODEL, _write_clicks_csv
    from mlplat.lifecycle.controller import CONTROLLER_NAME
    from mlplat.monitoring.lineage import to_text
    from mlplat.training.queue import SCHEDULER_NAME

    ns = f"t-loop-{uuid.uuid4().hex[:6]}"
    p = connect(root=str(tmp_path / "root"), namespace=ns, api_token=TOKEN, admin_token=ADMIN,
                serve__port=serve_http_port, serve__app_name="mlplat-loop", serve__route_prefix="/loop",
                serve__telemetry_flush_s=0.5, serve__route_refresh_s=0.1, serve__canary_report_s=0.3,
                serve__ingress_num_cpus=0, serve__pool__num_cpus=0, serve__pool__max_replicas=1)
    try:
        # v1: data -> features -> train -> validate, served in the ingress
        base = _write_clicks_csv(tmp_path / "clicks.csv")
        p.register_dataset("clicks", str(tmp_path / "clicks.csv"), partition="date=2026-11-01")
        p.complete_partition("clicks", "date=2026-11-01")
        p.build_features(str(CONFIGS / "features-example.yaml"))
        run = p.train(str(CONFIGS / "train-example.yaml"), wait=True, timeout_s=600)
        assert run.state is RunState.SUCCEEDED, run
        v1 = run.version
        p.registry.update_model(MODEL, serving_policy={
            "placement": "ingress",
            "rollout": {"mode": "auto", "canary_percent": 50,
                        "canary": {"min_requests": 30, "p99_floor_ms": 1000, "max_prediction_shift": 10}},
            "retrain": {"mode": "auto", "triggers": ["drift"], "min_new_rows": 100, "cooldown_s": 0},
            "alarms": {"webhook_url": webhook_url, "backoff_s": 0.2},
            "monitoring": {"min_rows": 200, "window": "1h"},
            "validation": {"guardrails": ["auc >= 0.55"], "compare_to_production": False},
        })
        assert p.validate(MODEL, v1).decision.passed
        p.promote(MODEL, v1)
        p.serve_start()  # also starts the rollout controller (and its retrain loop)

        # shifted traffic, and the ETL lands a new (shifted) partition
        shifted = _shifted_csv(tmp_path / "clicks-2.csv", seed=7)
        for i in range(0, 300, 20):
            rows = [{k: r[k] for k in FEATURES} for r in shifted[i:i + 20]]
            assert p.predict(MODEL, rows, url=f"http://127.0.0.1:{serve_http_port}/loop")["model_version"] == str(v1)
        p.append_partition("clicks", "date=2026-11-02", str(tmp_path / "clicks-2.csv"))
        p.complete_partition("clicks", "date=2026-11-02")
        time.sleep(2.0)  # telemetry flushes every 0.5 s

        result = p.drift(MODEL, window="1h")
        assert result.verdict.drifted, result.verdict
        del base

        # the controller: alarm -> retrain (rebuild + train) -> validate -> canary -> promote
        url = f"http://127.0.0.1:{serve_http_port}/loop"
        deadline = time.monotonic() + 600
        promoted = None
        while time.monotonic() < deadline:
            production = p.registry.traffic(MODEL).production
            if production != v1:
                promoted = production
                break
            if p.registry.traffic(MODEL).canary is not None:  # the canary needs traffic to be judged
                for i in range(0, 60, 20):
                    p.predict(MODEL, [{k: r[k] for k in FEATURES} for r in shifted[i:i + 20]], url=url,
                              caller=f"c-{time.monotonic_ns()}")
            time.sleep(0.5)
        kinds = [e.kind for e in p.registry.events_since(0, subject=f"model:{MODEL}", limit=10_000)]
        assert promoted is not None, (kinds[-30:], ray.get(ray.get_actor(CONTROLLER_NAME, namespace=ns).status.remote()))
        for kind in ("drift_checked", "alarm_raised", "retrain_started", "canary_started", "promoted"):
            assert kind in kinds, (kind, kinds)
        assert kinds.index("drift_checked") < kinds.index("alarm_raised") < kinds.index("retrain_started") \
            < kinds.index("canary_started") < len(kinds) - 1 - kinds[::-1].index("promoted")
        assert p.registry.get_version(MODEL, promoted).state.value == "PRODUCTION"
        assert any(h.get("kind") == "drift" and h.get("model") == MODEL for h in Hooks.received), Hooks.received

        text = to_text(p.lineage(MODEL, v1))
        for stage in ("partition", "feature set", "run", "validation", "deployment", "drift", "retrain",
                      f"next version: {MODEL} v{promoted}"):
            assert stage in text, text
    finally:
        try:
            serve.delete("mlplat-loop")
        except Exception:
            pass
        for name in (CONTROLLER_NAME, SCHEDULER_NAME, "mlplat-registry"):
            try:
                ray.kill(ray.get_actor(name, namespace=ns), no_restart=True)
            except ValueError:
                pass
