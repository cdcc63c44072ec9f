"""`make demo`: the platform's lifecycle end to end on an embedded local Ray.

data (register a CSV as a dataset) → features (configs/features-example.yaml on Ray Data) →
training (configs/train-example.yaml on Ray Train, a line per epoch) → validation (batch
inference + gate + report) → promotion → serving (Ray Serve, HTTP) → predictions → telemetry →
shifted traffic and a new, shifted partition → drift report → the closed loop: the rollout
controller's retrain follower sees the drift and retrains (features rebuilt with the new
partition, trained through the queue, validated) → the retrained version rolled out as a 50%
canary, promoted, and rolled back.

Everything lands under a fresh storage root ``./.mlplat-demo`` (override: MLPLAT_ROOT). The demo
prints its own lines, not Ray's INFO logs (``--verbose`` or ``MLPLAT_VERBOSE=1`` shows them), and
ends with a summary table (stage, result, seconds) and where to look.
"""

from __future__ import annotations

import csv
import math
import os
import random
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlplat.api import Platform, connect
from mlplat.console import EpochLines, follow_run, quiet_ray, verbose_requested
from mlplat.records import RunState

MODEL = "clicks-ctr"
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
ROWS = 4000
SHIFTED_ROWS = 1500
FEATURES = ["age", "spend", "sessions", "country", "device", "plan", "score"]
#: The closed loop's settings for the demo's model: drift of production retrains at once (no
#: cooldown, a few hundred new rows suffice), nothing deploys by itself (the demo rolls out).
LOOP_POLICY: dict[str, Any] = {
    "retrain": {"mode": "auto", "triggers": ["drift"], "min_new_rows": 500, "cooldown_s": 0},
    "monitoring": {"min_rows": 200, "window": "1h"},
    "validation": {"guardrails": ["auc >= 0.65"], "compare_to_production": False},
}
RETRAIN_TIMEOUT_S = 300.0


def _write_clicks_csv(path: Path, rows: int = ROWS, seed: int = 0) -> list[dict[str, Any]]:
    """Synthetic click logs whose label really depends on the features (so a model can learn)."""
    rng = random.Random(seed)
    out = []
    for i in range(rows):
        age, spend, sessions = rng.randint(18, 80), round(rng.expovariate(0.02), 2), rng.randint(0, 30)
        country, plan = rng.choice(["de", "fr", "us"]), rng.choice(["free", "pro"])
        logit = -2.0 + 0.15 * sessions - 0.06 * (age - 40) + (1.8 if plan == "pro" else 0) + (0.8 if country == "us" else 0)
        clicked = int(rng.random() < 1 / (1 + math.exp(-logit)))
        out.append({"user_id": f"u{i % 500}", "ts": f"2026-11-01T{rng.randint(0, 23):02d}:00:00", "age": age,
                    "spend": spend, "sessions": sessions, "country": country, "device": f"d{rng.randint(0, 999)}",
                    "plan": plan, "score": None if rng.random() < 0.05 else rng.random(), "clicked": clicked})
    _write_csv(path, out)
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_shifted_csv(path: Path, rows: int = SHIFTED_ROWS, seed: int = 7) -> list[dict[str, Any]]:
    """The next day's click logs with older users who spend more: a real distribution shift."""
    out = _write_clicks_csv(path, rows=rows, seed=seed)
    for r in out:
        r["age"], r["spend"], r["ts"] = min(99, r["age"] + 30), round(r["spend"] * 6, 2), r["ts"].replace("11-01", "11-02")
    _write_csv(path, out)
    return out


def _metrics_text(metrics: dict[str, Any]) -> str:
    """The few numbers a reader looks at first (every metric: `mlplat runs show RUN_ID`)."""
    shown = {"epochs_run": "epochs", "val_loss": "val_loss", "val_accuracy": "val_accuracy"}
    return ", ".join(f"{label} {metrics[k]:.4f}" if isinstance(metrics[k], float) else f"{label} {metrics[k]}"
                     for k, label in shown.items() if k in metrics)


class Demo:
    def __init__(self, p: Platform, workdir: Path):
        self.p, self.workdir = p, workdir
        self.rows: list[dict[str, Any]] = []
        self.version = 0  # set by the training stage
        self.retrained = 0  # set by the retrain stage
        self.reports: list[tuple[str, str]] = []  # (what, path)
        self.url = ""
        self._drift_seq = 0

    def _report(self, what: str, uri: str | None) -> None:
        if uri:
            self.reports.append((what, f"{uri.removeprefix('file://')}/index.html"))

    def storage_check(self) -> str:
        import torch

        from mlplat.storage import load_weights, save_weights

        tensors = {"weight": torch.randn(8, 4), "bias": torch.zeros(4)}
        ref = save_weights(self.p.storage, tensors, "demo", "storage-check.safetensors")
        loaded = load_weights(self.p.storage, "demo", "storage-check.safetensors", expected_sha256=ref.sha256)
        assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
        return f"safetensors round trip, sha256 {ref.sha256[:12]}... verified"

    def data(self) -> str:
        source = self.workdir / "clicks.csv"
        self.rows = _write_clicks_csv(source)
        dataset = self.p.register_dataset("clicks", str(source), partition="date=2026-11-01", tags=["web", "demo"])
        self.p.complete_partition("clicks", "date=2026-11-01")
        return f"dataset clicks v{dataset.version}: {dataset.num_rows} rows, partition date=2026-11-01 complete"

    def features(self) -> str:
        fs = self.p.build_features(str(CONFIGS / "features-example.yaml"))
        return f"feature set {fs.name} v{fs.version}: {fs.num_rows} rows, {len(fs.feature_columns)} encoded columns"

    def _train(self) -> Any:
        """One training run through the queue, a line per epoch as it reports them."""
        queued = self.p.train(str(CONFIGS / "train-example.yaml"))
        run = follow_run(self.p.run_status, queued.run_id, _Epochs(), timeout_s=900)
        if run.state != RunState.SUCCEEDED or run.version is None:
            raise RuntimeError(f"training run {run.run_id} ended {run.state.value}: {run.error}")
        if not run.metrics:
            raise RuntimeError(f"training run {run.run_id} succeeded but recorded no metrics")
        return run

    def train(self) -> str:
        run = self._train()
        self.version = run.version
        return f"{MODEL} v{self.version} TRAINED ({_metrics_text(run.metrics)})"

    def validate(self) -> str:
        outcome = self.p.validate(MODEL, self.version, policy={"guardrails": ["auc >= 0.65", "auc >= champion - 0.005"]})
        _, uri = self.p.report(MODEL, self.version)
        self._report(f"validation of v{self.version}", uri)
        state = self.p.registry.get_version(MODEL, self.version).state.value
        if state != "VALIDATED":
            raise RuntimeError(f"{MODEL} v{self.version} ended {state}: {outcome.decision.reasons}")
        return f"{MODEL} v{self.version} VALIDATED (auc {outcome.metrics['auc']:.3f}, report written)"

    def promote(self) -> str:
        self.p.promote(MODEL, self.version)
        return f"{MODEL} v{self.version} is PRODUCTION (alias production -> v{self.version})"

    def serve(self) -> str:
        self.url = self.p.serve_start()  # also starts the rollout controller and its retrain follower
        return f"Ray Serve app up at {self.url} (ingress + model pool)"

    def _predict(self, rows: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        return self.p.predict(MODEL, [{k: r[k] for k in FEATURES} for r in rows], **kwargs)

    def predict(self) -> str:
        answer = self._predict(self.rows[:3])
        probabilities = ", ".join(f"{v:.3f}" for v in answer["predictions"])
        deadline = time.monotonic() + 4 * self.p.config.serve.telemetry_flush_s
        while not self.p.storage.list_dir("telemetry", MODEL) and time.monotonic() < deadline:
            time.sleep(0.5)  # the ingress flushes telemetry every telemetry_flush_s
        landed = "telemetry written" if self.p.storage.list_dir("telemetry", MODEL) else "telemetry not flushed yet"
        return f"POST /v1/models/{MODEL}:predict -> v{answer['model_version']}: [{probabilities}]; {landed}"

    def drift(self) -> str:
        """The next day's traffic is shifted, and so is the day's partition the ETL lands."""
        self.p.registry.update_model(MODEL, serving_policy=LOOP_POLICY)
        shifted = _write_shifted_csv(self.workdir / "clicks-2026-11-02.csv")
        self.p.append_partition("clicks", "date=2026-11-02", str(self.workdir / "clicks-2026-11-02.csv"))
        self.p.complete_partition("clicks", "date=2026-11-02")
        served = 300
        for i in range(0, served, 25):
            self._predict(shifted[i:i + 25])
        time.sleep(2 * self.p.config.serve.telemetry_flush_s + 0.5)  # let the ingress flush the window
        self._drift_seq = self.p.registry.last_seq()
        result = self.p.drift(MODEL, window="1h")
        self._report(f"drift of v{result.version}", result.report)
        if not result.verdict.drifted:
            raise RuntimeError(f"no drift found in {result.rows} shifted rows: {result.verdict.reasons}")
        return (f"{served} shifted rows served; drift report over {result.rows} rows: "
                f"{result.verdict.status.value}, drifted {', '.join(result.verdict.drifted_features)}")

    def retrain(self) -> str:
        """Nothing is called here: the retrain follower (in the rollout controller) sees the drift
        check, raises the drift alarm, rebuilds the features with the new partition, queues the
        run and validates its version. The demo watches the registry's events."""
        from mlplat.monitoring.retrain_requests import EVENT_FAILED, EVENT_SKIPPED, EVENT_STARTED, EVENT_VALIDATED

        started = self._await_event((EVENT_STARTED, EVENT_SKIPPED, EVENT_FAILED))
        if started.kind != EVENT_STARTED:
            raise RuntimeError(f"the drift did not start a retrain: {started.kind} {started.payload}")
        run_id = started.payload["run_id"]
        run = follow_run(self.p.run_status, run_id, _Epochs(), timeout_s=RETRAIN_TIMEOUT_S)
        if run.state != RunState.SUCCEEDED or run.version is None:
            raise RuntimeError(f"retrain run {run_id} ended {run.state.value}: {run.error}")
        judged = self._await_event((EVENT_VALIDATED, EVENT_FAILED))
        self.retrained = run.version
        _, uri = self.p.report(MODEL, run.version)
        self._report(f"validation of v{run.version}", uri)
        state = judged.payload.get("state")
        if judged.kind != EVENT_VALIDATED or state != "VALIDATED":
            raise RuntimeError(f"retrained v{run.version} not validated: {judged.kind} {judged.payload}")
        rows = started.payload.get("new_rows")
        rebuilt = "features rebuilt" if started.payload.get("rebuilt_features") else "same features"
        return f"drift alarm -> retrain run ({rebuilt}, {rows} new rows) -> {MODEL} v{run.version} {state}"

    def _await_event(self, kinds: tuple[str, ...]) -> Any:
        deadline = time.monotonic() + RETRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            events = self.p.registry.events_since(self._drift_seq, subject=f"model:{MODEL}", kinds=list(kinds), limit=10)
            if events:
                self._drift_seq = events[0].seq
                return events[0]
            time.sleep(0.5)
        status = self.p.controller_status().get("retrain")
        raise RuntimeError(f"no {' / '.join(kinds)} event within {RETRAIN_TIMEOUT_S:g} s; retrain follower: {status}")

    def rollout(self) -> str:
        """The retrained version: pre-warmed as a 50% canary, promoted, rolled back."""
        v2 = self.retrained
        canary = self.p.deploy(MODEL, v2, canary_percent=50, by="demo")
        if canary.state.value != "CANARY":
            raise RuntimeError(f"deploying {MODEL} v{v2} ended {canary.state.value}: {canary.reason}")
        seen = sorted({self._predict(self.rows[:1], caller=f"user-{i}")["model_version"] for i in range(12)})
        live = self.p.deploy(MODEL, v2, canary_percent=100, by="demo")
        back = self.p.rollback(MODEL, by="demo")
        return (f"v{v2} canary 50% (answered by v{' and v'.join(seen)}) -> {live.state.value} -> "
                f"rolled back: v{back.version} serves again")


class _Epochs(EpochLines):
    """The demo's epoch lines, indented under their stage."""

    def __init__(self) -> None:
        super().__init__(lambda line: print(line, flush=True), indent="    ")


def _table(rows: list[tuple[str, str, str]]) -> str:
    headers = ("stage", "result", "time s")
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(3)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}" for a, b, c in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _dashboard_url() -> str:
    """The dashboard of the Ray this process is connected to. Ray's public way is the context
    ``ray.init`` returned (Platform.ensure_ray keeps none); a second ``ray.init`` would reconnect
    and reconfigure logging, so this reads the node object that context is built from."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    url = getattr(node, "webui_url", None)
    if not url:
        return "(none: Ray runs without its dashboard)"
    return url if "://" in url else f"http://{url}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    quiet_ray(verbose_requested("--verbose" in args or "-v" in args))  # before Ray starts
    # Ray Train's controller polls its workers every 2 s by default, and each epoch's report of
    # the demo's small model waits for a poll: 0.5 s takes ~8 s off each of its two trainings.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    root = Path(os.environ.get("MLPLAT_ROOT") or ".mlplat-demo").resolve()
    if not os.environ.get("MLPLAT_ROOT") and root.exists():
        shutil.rmtree(root)  # the default demo root is scratch: start clean every run
    token = os.environ.get("MLPLAT_API_TOKEN") or secrets.token_urlsafe(24)
    p = connect(root=str(root), api_token=token, serve__telemetry_flush_s=1.0)
    workdir = root / "incoming"
    workdir.mkdir(parents=True, exist_ok=True)
    demo = Demo(p, workdir)
    stages: list[tuple[str, Callable[[], str]]] = [
        ("storage", demo.storage_check), ("data", demo.data), ("features", demo.features), ("training", demo.train),
        ("validation", demo.validate), ("registry", demo.promote), ("serving", demo.serve), ("inference", demo.predict),
        ("drift", demo.drift), ("retrain", demo.retrain), ("rollout", demo.rollout),
    ]
    print(f"mlplat demo — storage root {p.storage.uri}; starting an embedded Ray ...", flush=True)
    started = time.perf_counter()
    p.ensure_ray()
    ray_text = f"connected to {p.config.ray_address}" if p.config.ray_address else "embedded Ray started"
    done: list[tuple[str, str, str]] = [("ray", ray_text, f"{time.perf_counter() - started:.1f}")]
    for name, stage in stages:
        t0 = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        try:
            result = stage()
        except Exception as exc:
            done.append((name, f"FAILED: {type(exc).__name__}: {exc}"[:200], f"{time.perf_counter() - t0:.1f}"))
            print("\n" + _table(done), flush=True)
            raise
        elapsed = time.perf_counter() - t0
        done.append((name, result, f"{elapsed:.1f}"))
        print(f"[{name}] {result} ({elapsed:.1f} s)", flush=True)
    total = time.perf_counter() - started
    done.append(("total", "", f"{total:.1f}"))
    print("\n" + _table(done))
    print("\nWhere to look:")
    for what, path in demo.reports:
        print(f"  {path}   {what} report")
    print(f"  {root}/datasets/clicks/            the dataset (Parquet, partitions date=2026-11-01 and -02)")
    print(f"  {root}/features/clicks-features/   encoded features, encoder.json, stats.json (v1, and v2 rebuilt)")
    print(f"  {root}/models/{MODEL}/              bundle.json per version (small weights inline)")
    print(f"  {root}/telemetry/{MODEL}/          every served prediction (Parquet)")
    print(f"  Ray dashboard: {_dashboard_url()}   serving: {demo.url}   (both stop with this process)")
    print(f"  MLPLAT_ROOT={root} MLPLAT_REGISTRY_MODE=local mlplat models lineage {MODEL} {demo.version}")
    print("`mlplat serve start` keeps serving up; `make demo` again starts from scratch.")
    (root / "demo-wall-time.txt").write_text(f"{total:.1f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
