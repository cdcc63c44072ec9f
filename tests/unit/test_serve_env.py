"""The environment mlplat exports before Ray starts, per Serve setting (pure, no Ray)."""

from __future__ import annotations

from mlplat.config import PlatformConfig
from mlplat.serving.app import serve_env


def _env(**serve) -> dict[str, str]:
    return serve_env(PlatformConfig(serve=serve))


def test_defaults_are_throughput_mode_without_haproxy():
    assert _env() == {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_worker_niceness": "0",
                      "RAY_prestart_worker_first_driver": "0"}
    assert _env(throughput_optimized=False, worker_niceness=None, prestart_workers=True) == {}


def test_idle_workers_are_not_prestarted_unless_asked():
    assert _env()["RAY_prestart_worker_first_driver"] == "0"
    assert "RAY_prestart_worker_first_driver" not in _env(prestart_workers=True)


def test_worker_niceness_is_passed_to_the_raylet_unless_none():
    assert _env(worker_niceness=5)["RAY_worker_niceness"] == "5"
    assert "RAY_worker_niceness" not in _env(worker_niceness=None)


def test_haproxy_gets_threads_for_the_machine_and_no_per_request_metrics(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    env = _env(haproxy=True)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == "1"
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "0"
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert _env(haproxy=True)["RAY_SERVE_HAPROXY_NBTHREAD"] == "4"


def test_explicit_haproxy_settings_win():
    env = _env(haproxy=True, haproxy_threads=3, haproxy_metrics=True)
    assert env["RAY_SERVE_HAPROXY_NBTHREAD"] == "3"
    assert env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] == "1"


def test_tune_gc_sets_only_generation_0():
    import gc

    from mlplat.serving.runtime import tune_gc

    before = gc.get_threshold()
    try:
        tune_gc(None)
        assert gc.get_threshold() == before
        tune_gc(20_000)
        assert gc.get_threshold() == (20_000, before[1], before[2])
    finally:
        gc.set_threshold(*before)
