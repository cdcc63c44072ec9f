"""Alarms (no Ray): the policy, the webhook sender against a real loopback HTTP server (200,
500-then-200, 4xx, redirect, slow, full queue, dead endpoints), alarm events in an in-process
registry, and URL secrets kept out of events, logs and stats."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from mlplat.errors import ConfigError
from mlplat.monitoring.alarms import (
    EVENT_ALARM_RAISED,
    AlarmPolicy,
    WebhookSender,
    raise_alarm,
    redact_url,
)
from mlplat.registry import RegistryStore

SECRET = "s3cr3t-T0KEN"


class _Hook(http.server.BaseHTTPRequestHandler):
    """Answers each POST with the next scripted action: a status code, ("sleep", s, status) or
    "block" (waits until the test releases it, then 200)."""

    server: _HookServer

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        srv = self.server
        with srv.lock:
            srv.received.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": json.loads(body or b"null")})
            action = srv.script.pop(0) if srv.script else 200
        srv.arrived.set()
        if action == "block":
            srv.release.wait(10)
            action = 200
        if isinstance(action, tuple):
            time.sleep(action[1])
            action = action[2]
        try:
            self.send_response(int(action))
            if 300 <= int(action) < 400:
                self.send_header("location", "http://127.0.0.1:9/elsewhere")
            self.send_header("content-length", "0")
            self.end_headers()
        except OSError:  # the client gave up (timed out) first
            pass

    def log_message(self, *args: object) -> None:
        pass


class _HookServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Hook)
        self.lock = threading.Lock()
        self.received: list[dict] = []
        self.script: list[object] = []
        self.arrived = threading.Event()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/mlplat"


@pytest.fixture
def hook() -> Iterator[_HookServer]:
    server = _HookServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()


@pytest.fixture
def reg(tmp_path) -> RegistryStore:
    return RegistryStore(f"sqlite:///{tmp_path / 'registry.db'}")


def _until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _policy(url: str, **kw: object) -> AlarmPolicy:
    return AlarmPolicy(webhook_url=url, **{"backoff_s": 0.02, "timeout_s": 2.0, **kw})


# -- the policy -------------------------------------------------------------------------------


def test_policy_defaults_shorthand_and_errors_name_the_field():
    assert AlarmPolicy.from_serving_policy(None) == AlarmPolicy()
    assert AlarmPolicy().url() is None and AlarmPolicy().target() is None
    assert AlarmPolicy.from_serving_policy({"alarms": "https://h.example/x"}).webhook_url == "https://h.example/x"
    cases = {
        "webhook_url": {"webhook_url": f"ftp://bot:{SECRET}@h/x?token={SECRET}"},
        "timeout_s": {"timeout_s": 0},
        "max_attempts": {"max_attempts": 0},
        "backoff_s": {"backoff_s": -1},
        "on": {"on": ["drift", "sunrise"]},
        "bogus": {"bogus": 1},
        "webhook_url_env": {"webhook_url_env": "not a name"},
    }
    for field, raw in cases.items():
        with pytest.raises(ConfigError) as info:
            AlarmPolicy.from_serving_policy({"alarms": raw})
        assert f"serving_policy.alarms.{field}" in str(info.value), (field, str(info.value))
        assert SECRET not in str(info.value)
    with pytest.raises(ConfigError, match="not both"):
        AlarmPolicy.from_serving_policy({"alarms": {"webhook_url": "http://a/x", "webhook_url_env": "HOOK"}})
    with pytest.raises(ConfigError, match="serving_policy.alarms: got list"):
        AlarmPolicy.from_serving_policy({"alarms": ["http://a/x"]})


def test_policy_url_from_the_environment(monkeypatch):
    policy = AlarmPolicy(webhook_url_env="MLPLAT_TEST_HOOK")
    monkeypatch.delenv("MLPLAT_TEST_HOOK", raising=False)
    assert policy.url() is None and policy.target() == "$MLPLAT_TEST_HOOK"
    monkeypatch.setenv("MLPLAT_TEST_HOOK", f"https://h.example/hook?token={SECRET}")
    assert policy.url() == f"https://h.example/hook?token={SECRET}"
    monkeypatch.setenv("MLPLAT_TEST_HOOK", f"gopher://{SECRET}")
    with pytest.raises(ConfigError, match="webhook_url_env") as info:
        policy.url()
    assert SECRET not in str(info.value)


def test_redact_url_hides_userinfo_every_path_segment_query_and_fragment():
    assert redact_url(f"https://bot:{SECRET}@hooks.slack.com/services/T1/B2/{SECRET}?token={SECRET}#f") == \
        "https://***@hooks.slack.com/***?***#***"
    assert redact_url(f"https://hooks.example.com/{SECRET}/alarms") == "https://hooks.example.com/***"  # first segment too
    assert redact_url(f"https://hooks.example.com/{SECRET}") == "https://hooks.example.com/***"
    assert redact_url("http://127.0.0.1:8080/alarm") == "http://127.0.0.1:8080/***"
    assert redact_url("http://[::1]:8080/x") == "http://[::1]:8080/***"
    assert redact_url("http://h") == "http://h" and redact_url("http://h/") == "http://h/"
    assert redact_url(f"http://h{SECRET} x/") == "***"
    assert redact_url("http://h:notaport/x") == "***"
    assert redact_url(None) is None


# -- the sender against a real server --------------------------------------------------------


def test_200_is_delivered_once_as_json(hook):
    sender = WebhookSender(_policy(hook.url))
    assert sender.send({"model": "churn", "kind": "drift", "n": 1})
    assert _until(lambda: sender.sent == 1)
    assert sender.close(2.0)
    (got,) = hook.received
    assert got["path"] == "/hooks/mlplat"
    assert got["body"] == {"model": "churn", "kind": "drift", "n": 1}
    assert got["headers"]["content-type"] == "application/json"
    assert sender.stats() | {"closed": True} == {"sent": 1, "failed": 0, "dropped": 0, "retried": 0, "queued": 0,
                                                   "last_error": None, "closed": True}


def test_500_then_200_is_retried_with_backoff(hook):
    hook.script = [500, 503, 200]
    sender = WebhookSender(_policy(hook.url, max_attempts=3, backoff_s=0.05))
    started = time.monotonic()
    assert sender.send({"n": 1})
    assert _until(lambda: sender.sent == 1)
    elapsed = time.monotonic() - started
    assert len(hook.received) == 3 and sender.retried == 2 and sender.failed == 0
    assert elapsed >= 0.05 + 0.1 * 0.9  # backoff 0.05 then 0.1 (doubled)
    sender.close(1.0)


def test_5xx_until_the_last_attempt_fails_and_4xx_or_redirect_is_not_retried(hook):
    hook.script = [500, 500, 404, 302]
    sender = WebhookSender(_policy(hook.url, max_attempts=2), workers=1)  # one worker: the script's order holds
    for n in range(3):
        assert sender.send({"n": n})
    assert _until(lambda: sender.failed == 3)
    assert len(hook.received) == 4  # 2 attempts, then 1 (404), then 1 (302, not followed)
    assert sender.sent == 0 and sender.retried == 1
    assert "redirect" in sender.stats()["last_error"]
    sender.close(1.0)


def test_a_slow_endpoint_times_out_with_bounded_attempts(hook):
    hook.script = [("sleep", 1.5, 200)] * 5
    sender = WebhookSender(_policy(hook.url, timeout_s=0.2, max_attempts=2, backoff_s=0.01))
    started = time.monotonic()
    assert sender.send({"n": 1})
    assert _until(lambda: sender.failed == 1, timeout_s=5)
    assert time.monotonic() - started < 1.4  # two 0.2 s timeouts, not the server's 1.5 s answers
    assert len(hook.received) == 2 and sender.sent == 0
    assert "timed out" in sender.stats()["last_error"]
    sender.close(0.5)


def test_a_full_queue_drops_and_counts_without_blocking(hook):
    hook.script = ["block"]
    sender = WebhookSender(_policy(hook.url), maxsize=1, workers=1)
    assert sender.send({"n": 1})
    assert hook.arrived.wait(5)  # the worker is stuck in the first POST
    assert sender.send({"n": 2})  # fills the queue
    started = time.monotonic()
    assert not sender.send({"n": 3})
    assert not sender.send({"n": 4})
    assert time.monotonic() - started < 1.0
    assert sender.dropped == 2 and "queue is full" in sender.stats()["last_error"]
    hook.release.set()
    assert _until(lambda: sender.sent == 2)
    assert sender.close(2.0)
    assert [r["body"]["n"] for r in hook.received] == [1, 2]


def test_send_never_blocks_on_dead_endpoints():
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    dead_port = refused.getsockname()[1]
    refused.close()  # nothing listens there: connection refused
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(1)  # accepts the connection in the kernel, never answers
    try:
        for url in (f"http://127.0.0.1:{dead_port}/x", f"http://127.0.0.1:{blackhole.getsockname()[1]}/x"):
            sender = WebhookSender(_policy(url, timeout_s=0.5, max_attempts=3, backoff_s=0.2), maxsize=5)
            worst = 0.0
            results = []
            for n in range(50):
                t = time.monotonic()
                results.append(sender.send({"n": n}))
                worst = max(worst, time.monotonic() - t)
            assert worst < 1.0, worst  # typically well under a millisecond
            assert results.count(False) >= 40 and sender.dropped == results.count(False)
            t = time.monotonic()
            sender.close(0.2)
            assert time.monotonic() - t < 3.0  # the deadline, plus at most one attempt's own timeout
            assert not sender.send({"late": True}) and sender.sent == 0
    finally:
        blackhole.close()


def test_a_url_urllib_refuses_is_a_redacted_give_up(hook, caplog):
    caplog.set_level(logging.INFO, logger="mlplat.monitoring.alarms")
    bad = f"http://127.0.0.1:{hook.server_address[1]}/hooks/{SECRET} x?token={SECRET}"
    with pytest.raises(ConfigError) as info:  # refused where the policy is read
        AlarmPolicy.from_serving_policy({"alarms": {"webhook_url": bad}})
    assert "space or a control character" in str(info.value) and SECRET not in str(info.value)
    # one that got past the policy anyway (built without validation): http.client's InvalidURL, not retried
    policy = AlarmPolicy.model_construct(webhook_url=bad, webhook_url_env=None, timeout_s=1.0, max_attempts=3,
                                         backoff_s=0.01, on=("drift",))
    sender = WebhookSender(policy)
    assert sender.send({"n": 1})
    assert _until(lambda: sender.failed == 1)
    assert sender.retried == 0 and sender.sent == 0 and hook.received == []
    last = sender.stats()["last_error"]
    assert "InvalidURL" in last and last.startswith(f"http://127.0.0.1:{hook.server_address[1]}/***?***")
    for text in (caplog.text, json.dumps(sender.stats())):
        assert SECRET not in text and " x" not in text
    assert sender.send({"n": 2}) and _until(lambda: sender.failed == 2)  # the workers are still alive
    sender.close(1.0)


def test_a_hanging_endpoint_does_not_hold_up_the_others(hook):
    other = _HookServer()
    threading.Thread(target=other.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        hook.script = ["block"]
        sender = WebhookSender(_policy(hook.url, timeout_s=10.0))
        assert sender.send({"to": "hanging"})
        assert hook.arrived.wait(5)  # one worker is stuck there
        started = time.monotonic()
        assert sender.send({"to": "other"}, policy=_policy(other.url))
        assert _until(lambda: sender.sent == 1, timeout_s=5)
        assert time.monotonic() - started < 2.0 and [r["body"] for r in other.received] == [{"to": "other"}]
        hook.release.set()
        assert _until(lambda: sender.sent == 2)
        sender.close(2.0)
    finally:
        other.shutdown()
        other.server_close()


def test_one_delivery_is_capped_in_total_time(hook):
    hook.script = [("sleep", 1.5, 200)] * 10
    sender = WebhookSender(_policy(hook.url, timeout_s=0.5, max_attempts=10, backoff_s=0.01), max_delivery_s=1.2)
    started = time.monotonic()
    assert sender.send({"n": 1})
    assert _until(lambda: sender.failed == 1, timeout_s=10)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, elapsed  # not 10 attempts x 0.5 s
    assert 2 <= len(hook.received) <= 3 and sender.sent == 0
    assert "1.2 s" in sender.stats()["last_error"]
    sender.close(0.5)
    with pytest.raises(ValueError, match="max_delivery_s"):
        WebhookSender(max_delivery_s=0)


def test_close_drains_what_is_queued(hook):
    sender = WebhookSender(_policy(hook.url), maxsize=100)
    for n in range(10):
        assert sender.send({"n": n})
    assert sender.close(5.0)
    assert sender.sent == 10 and len(hook.received) == 10


def test_unserializable_payload_and_no_url_return_false():
    sender = WebhookSender(AlarmPolicy())
    assert not sender.send({"n": 1})  # no webhook configured: nothing to do
    circular: dict = {}
    circular["self"] = circular
    assert not sender.send(circular, policy=_policy("http://127.0.0.1:9/x"))
    assert sender.failed == 1
    sender.close(0.5)


# -- raising alarms ---------------------------------------------------------------------------


def test_raise_alarm_records_the_event_then_posts_it(hook, reg):
    reg.create_model("churn", serving_policy={"alarms": {"webhook_url": f"{hook.url}?token={SECRET}", "backoff_s": 0.01}})
    sender = WebhookSender()
    event = raise_alarm(reg, sender, "churn", "drift", {"drifted_features": ["age"], "rows": 500})
    assert event.kind == EVENT_ALARM_RAISED and event.subject == "model:churn"
    assert event.payload["alarm"] == "drift" and event.payload["details"]["drifted_features"] == ["age"]
    assert event.payload["webhook"] == f"http://127.0.0.1:{hook.server_address[1]}/***?***"
    assert SECRET not in json.dumps(event.payload)
    assert _until(lambda: sender.sent == 1)
    body = hook.received[0]["body"]
    assert hook.received[0]["path"] == f"/hooks/mlplat?token={SECRET}"  # the real URL is used, only shown redacted
    assert body["model"] == "churn" and body["kind"] == "drift" and body["event_seq"] == event.seq
    assert body["details"] == {"drifted_features": ["age"], "rows": 500} and body["time"].endswith("Z")
    assert reg.events_since(0, kinds=[EVENT_ALARM_RAISED]) == [event]
    sender.close(1.0)


def test_raise_alarm_respects_on_and_survives_a_bad_policy(hook, reg):
    reg.create_model("quiet", serving_policy={"alarms": {"webhook_url": hook.url, "on": ["retrain_failed"]}})
    reg.create_model("broken", serving_policy={"alarms": {"webhook_url": f"ftp://{SECRET}@x/"}})
    reg.create_model("plain")
    sender = WebhookSender()
    e1 = raise_alarm(reg, sender, "quiet", "drift", {"x": 1})
    e2 = raise_alarm(reg, sender, "broken", "drift", {"x": 2})
    e3 = raise_alarm(reg, sender, "plain", "drift", {"x": 3})
    e4 = raise_alarm(reg, None, "quiet", "retrain_failed", {"x": 4})  # no sender: the event alone
    assert [e.payload["webhook"] for e in (e1, e2, e3, e4)] == [None, None, None,
                                                                f"http://127.0.0.1:{hook.server_address[1]}/***"]
    assert "serving_policy.alarms.webhook_url" in e2.payload["webhook_error"]
    assert SECRET not in json.dumps(e2.payload)
    sender.close(0.5)
    assert hook.received == [] and sender.sent == 0
    with pytest.raises(ConfigError, match="unknown alarm kind"):
        raise_alarm(reg, sender, "plain", "sunrise", {})


def test_a_failing_webhook_never_fails_the_alarm_and_logs_no_secret(hook, reg, caplog):
    caplog.set_level(logging.INFO, logger="mlplat.monitoring.alarms")
    url = f"http://bot:{SECRET}@127.0.0.1:{hook.server_address[1]}/hooks/{SECRET}?token={SECRET}"
    reg.create_model("churn", serving_policy={"alarms": {"webhook_url": url, "max_attempts": 2, "backoff_s": 0.01}})
    hook.script = [500, 500]
    sender = WebhookSender()
    started = time.monotonic()
    event = raise_alarm(reg, sender, "churn", "drift", {"rows": 1})
    assert time.monotonic() - started < 1.0
    assert _until(lambda: sender.failed == 1)
    sender.close(1.0)
    assert len(hook.received) == 2
    assert hook.received[0]["path"] == f"/hooks/{SECRET}?token={SECRET}"
    assert hook.received[0]["headers"]["authorization"].startswith("Basic ")  # user info: HTTP Basic auth
    assert "HTTP 500" in caplog.text and "giving up after 2 attempt(s)" in caplog.text
    assert "***" in caplog.text
    for text in (caplog.text, json.dumps(sender.stats()), json.dumps(event.payload),
                 json.dumps([e.payload for e in reg.events_since(0)])):
        assert SECRET not in text
    # and the sender is closed: a later alarm is still recorded, its webhook dropped
    later = raise_alarm(reg, sender, "churn", "drift", {"rows": 2})
    assert later.seq > event.seq and sender.dropped == 1
    assert SECRET not in caplog.text


def test_doctests():
    import doctest

    from mlplat.monitoring import alarms

    result = doctest.testmod(alarms)
    assert result.failed == 0 and result.attempted >= 5
