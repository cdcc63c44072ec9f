"""Alarms: a threshold crossed becomes a registry event and a webhook POST.

- :class:`AlarmPolicy` is a model's ``serving_policy["alarms"]``: where to POST
  (``webhook_url``, or ``webhook_url_env`` naming an environment variable that holds it, so
  the secret stays out of the registry), how long to wait, how often to retry, and which
  alarm kinds (``on``) notify at all.
- :func:`raise_alarm` appends one ``alarm_raised`` event (subject ``model:<name>``) and then
  queues the webhook. The event is the record; the webhook is a best-effort notification.
- :class:`WebhookSender` delivers from a bounded queue shared by a few daemon worker threads
  (default 4: one endpoint that hangs holds up one worker, not every alarm behind it).
  :meth:`~WebhookSender.send` never blocks the caller: a full (or closed) queue drops the
  payload, returns False and counts it. Timeouts, connection errors, HTTP 5xx, 408 and 429 are
  retried with exponential backoff up to ``max_attempts``, all attempts of one delivery within
  ``max_delivery_s`` (default 60 s) together; other 4xx answers, redirects and a URL urllib
  refuses are not retried. Counters: ``sent``, ``failed``, ``dropped``, ``retried``
  (:meth:`~WebhookSender.stats`).
- Secrets: a URL is only ever shown as :func:`redact_url` gives it (scheme, host and port; user
  info, the whole path, the query and the fragment are ``***``), in events, log lines, errors
  and stats.

Delivery is at least once: a receiver deduplicates by ``event_seq``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mlplat.errors import ConfigError
from mlplat.records import Event
from mlplat.registry import Registry

__all__ = [
    "ALARM_KINDS",
    "EVENT_ALARM_RAISED",
    "AlarmPolicy",
    "WebhookSender",
    "raise_alarm",
    "redact_url",
    "webhook_payload",
]

log = logging.getLogger("mlplat.monitoring.alarms")

#: Registry event kind of an alarm (subject ``model:<name>``).
EVENT_ALARM_RAISED = "alarm_raised"

AlarmKind = Literal["drift", "retrain_requested", "retrain_started", "retrain_failed", "retrain_rejected"]
#: What can raise an alarm: a drift verdict, a retrain waiting for a person, a retrain started,
#: failed (training or preparation) or whose new version validation REJECTED.
ALARM_KINDS: tuple[str, ...] = ("drift", "retrain_requested", "retrain_started", "retrain_failed", "retrain_rejected")

_EXPECTED = ("expected a webhook URL or a mapping with keys webhook_url, webhook_url_env, timeout_s, max_attempts, "
             "backoff_s, on")


def redact_url(url: str | None) -> str | None:
    """The URL as it may be shown: scheme, host and port only; user info, every path segment
    (webhooks keep their secret anywhere in the path: Slack's in the last segments, others in
    the first), the query and the fragment become ``***``.

    >>> redact_url("https://bot:s3cret@hooks.example.com/services/T0/B0/XYZ?token=abc#x")
    'https://***@hooks.example.com/***?***#***'
    >>> redact_url("http://127.0.0.1:8080/alarm")
    'http://127.0.0.1:8080/***'
    >>> redact_url("http://127.0.0.1:8080/"), redact_url("http://h")
    ('http://127.0.0.1:8080/', 'http://h')
    >>> redact_url("not a url")
    '***'
    """
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "***"
    if not parts.scheme or not host or _UNSAFE.search(parts.scheme + host):
        return "***"
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    netloc = ("***@" if parts.username is not None or parts.password is not None else "") + host
    netloc += f":{port}" if port is not None else ""
    path = "/***" if parts.path.strip("/") else parts.path[:1]
    return (f"{parts.scheme}://{netloc}{path}" + ("?***" if parts.query else "")
            + ("#***" if parts.fragment else ""))


#: Characters no URL we send may hold (http.client refuses them: ``InvalidURL``).
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ValueError("has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    if _UNSAFE.search(url):
        raise ValueError("contains a space or a control character (percent-encode it, e.g. %20)")
    return url


class AlarmPolicy(BaseModel):
    """Where and how a model's alarms are sent (``serving_policy.alarms``).

    ``webhook_url`` / ``webhook_url_env``: at most one; neither means events only.
    ``timeout_s``: per attempt. ``max_attempts``: 1 = no retry. ``backoff_s``: the wait before
    the second attempt, doubled before each next one. ``on``: the alarm kinds that notify.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    webhook_url: str | None = None
    webhook_url_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_s: float = Field(5.0, gt=0, le=120)
    max_attempts: int = Field(3, ge=1, le=20)
    backoff_s: float = Field(1.0, ge=0, le=300)
    on: tuple[AlarmKind, ...] = ("drift", "retrain_requested", "retrain_failed", "retrain_rejected")

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @pydantic.model_validator(mode="after")
    def _one_target(self) -> AlarmPolicy:
        if self.webhook_url and self.webhook_url_env:
            raise ValueError("give webhook_url or webhook_url_env, not both")
        return self

    def notifies(self, kind: str) -> bool:
        """Whether an alarm of ``kind`` sends a webhook under this policy."""
        return kind in self.on

    def url(self) -> str | None:
        """The webhook URL: ``webhook_url``, else the value of ``webhook_url_env`` (None when
        unset or empty; a malformed value is a :class:`ConfigError` that shows it redacted)."""
        if self.webhook_url:
            return self.webhook_url
        if not self.webhook_url_env:
            return None
        value = os.environ.get(self.webhook_url_env, "").strip()
        if not value:
            return None
        try:
            return _check_url(value)
        except ValueError as exc:
            raise ConfigError(f"serving_policy.alarms.webhook_url_env: ${self.webhook_url_env} holds "
                              f"{redact_url(value)!r}, which {exc}") from None

    def target(self) -> str | None:
        """Where alarms go, as it may be shown (redacted), or None."""
        if self.webhook_url:
            return redact_url(self.webhook_url)
        return f"${self.webhook_url_env}" if self.webhook_url_env else None

    @classmethod
    def from_serving_policy(cls, serving_policy: Mapping[str, Any] | None) -> AlarmPolicy:
        """The policy in ``serving_policy["alarms"]``: missing -> defaults (events only, no
        webhook), a string -> that ``webhook_url``, a mapping -> those fields; anything else is a
        :class:`ConfigError` naming ``serving_policy.alarms.<field>`` (URLs shown redacted).

        >>> AlarmPolicy.from_serving_policy({}).url() is None
        True
        >>> AlarmPolicy.from_serving_policy({"alarms": {"webhook_url": "ftp://x"}})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        mlplat.errors.ConfigError: serving_policy.alarms.webhook_url: expected an http:// or https:// URL ...
        """
        raw = (serving_policy or {}).get("alarms")
        if raw is None:
            return cls()
        if isinstance(raw, str):
            raw = {"webhook_url": raw}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"serving_policy.alarms: got {type(raw).__name__}; {_EXPECTED}")
        try:
            return cls.model_validate(dict(raw))
        except pydantic.ValidationError as exc:
            raise ConfigError(policy_errors("alarms", exc, _EXPECTED)) from None


def policy_errors(section: str, exc: pydantic.ValidationError, expected: str) -> str:
    """One line naming each bad ``serving_policy.<section>.<field>``; URL inputs redacted."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in ("serving_policy", section, *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        if isinstance(value, str) and "url" in where:
            value = redact_url(value)
        if err["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key (remove it or check its spelling)")
        elif not err["loc"]:  # a check across fields: its message names them
            problems.append(f"{where}: {msg}")
        else:
            problems.append(f"{where}: {msg} (got {value!r})")
    return f"{'; '.join(problems)}; {expected}"


# -- delivery ---------------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook answers where it was configured: a redirect is a failure, never followed
    (urllib would turn the POST into a GET and could carry it to another host)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class _Item:
    url: str
    body: bytes
    timeout_s: float
    max_attempts: int
    backoff_s: float


class _Retry(Exception):
    """A delivery attempt failed in a way worth retrying (its message is already redacted)."""


class _GiveUp(Exception):
    """A delivery attempt failed in a way a retry will not fix (4xx, redirect)."""


class WebhookSender:
    """Posts JSON payloads to webhooks from a bounded queue, on ``workers`` daemon threads that
    share it (a slow endpoint holds up one worker; the others go on with the queue).

    ``policy`` is the default target and retry settings; :meth:`send` may pass another one
    (one sender serves every model). ``max_backoff_s`` caps the doubled waits;
    ``max_delivery_s`` caps one payload's attempts, backoffs included (each attempt's timeout
    is cut to what is left): ``max_attempts x timeout_s`` of a policy may ask for more. The
    payload is serialized in :meth:`send` (``default=str``), so the caller keeps no reference to it.
    """

    def __init__(self, policy: AlarmPolicy | None = None, *, maxsize: int = 1000, workers: int = 4,
                 max_backoff_s: float = 60.0, max_delivery_s: float = 60.0, user_agent: str = "mlplat-alarms/1"):
        if maxsize < 1 or workers < 1 or max_delivery_s <= 0:
            raise ValueError("WebhookSender needs maxsize >= 1, workers >= 1 and max_delivery_s > 0")
        self.policy = policy or AlarmPolicy()
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=maxsize)
        self._max_backoff_s = max_backoff_s
        self._max_delivery_s = max_delivery_s
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._counts = {"sent": 0, "failed": 0, "dropped": 0, "retried": 0}
        self._last_error: str | None = None
        self._closed = False
        self._abort = threading.Event()
        self._threads = [threading.Thread(target=self._work, name=f"mlplat-webhook-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # -- counters ---------------------------------------------------------------------------
    @property
    def sent(self) -> int:
        return self._counts["sent"]

    @property
    def failed(self) -> int:
        return self._counts["failed"]

    @property
    def dropped(self) -> int:
        return self._counts["dropped"]

    @property
    def retried(self) -> int:
        return self._counts["retried"]

    def stats(self) -> dict[str, Any]:
        """Counters, the queue length and the last error (redacted)."""
        with self._lock:
            return {**self._counts, "queued": self._queue.qsize(), "last_error": self._last_error,
                    "closed": self._closed}

    def _count(self, key: str, error: str | None = None) -> int:
        with self._lock:
            self._counts[key] += 1
            if error is not None:
                self._last_error = error
            return self._counts[key]

    # -- the caller's side ------------------------------------------------------------------
    def send(self, payload: Mapping[str, Any], *, policy: AlarmPolicy | None = None) -> bool:
        """Queue ``payload`` for the policy's webhook; never blocks and never raises.

        Returns True when queued; False when there is no webhook to send to, when the payload
        cannot be serialized (counted ``failed``), or when the queue is full or the sender
        closed (counted ``dropped``)."""
        pol = policy or self.policy
        try:
            url = pol.url()
        except ConfigError as exc:
            self._count("failed", str(exc))
            log.warning("alarm webhook not sent: %s", exc)
            return False
        if url is None:
            return False
        try:
            body = json.dumps(dict(payload), default=str, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            self._count("failed", f"payload is not JSON: {exc}")
            log.warning("alarm webhook %s: payload is not JSON (%s); not sent", redact_url(url), exc)
            return False
        if self._closed:
            self._drop(url, "the sender is closed")
            return False
        try:
            self._queue.put_nowait(_Item(url, body, pol.timeout_s, pol.max_attempts, pol.backoff_s))
        except queue.Full:
            self._drop(url, f"the queue is full ({self._queue.maxsize} waiting)")
            return False
        return True

    def _drop(self, url: str, why: str) -> None:
        n = self._count("dropped", f"dropped: {why}")
        if n == 1 or n % 100 == 0:  # a flood of drops logs a line per hundred, not one each
            log.warning("alarm webhook %s: payload dropped, %s (%d dropped so far)", redact_url(url), why, n)

    def close(self, timeout_s: float = 5.0) -> bool:
        """Stop accepting payloads and give the queue up to ``timeout_s`` to drain. What is
        still queued after that is dropped (counted) and retries waiting on a backoff give up;
        a request already on the wire ends within its own timeout. True when all was delivered
        or given up on before the deadline."""
        self._closed = True
        deadline = time.monotonic() + max(0.0, timeout_s)
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        drained = not any(t.is_alive() for t in self._threads)
        if not drained:
            self._abort.set()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            self._drop(item.url, "the sender closed before it was sent")
            self._queue.task_done()
        return drained

    # -- the worker's side ------------------------------------------------------------------
    def _work(self) -> None:
        while not self._abort.is_set():
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._closed:
                    return
                continue
            try:
                self._deliver(item)
            except Exception as exc:  # never let a bug kill the worker; its text may hold the URL: not shown
                shown = redact_url(item.url)
                self._count("failed", f"{shown}: delivery crashed ({type(exc).__name__})")
                log.error("alarm webhook %s: delivery crashed (%s)", shown, type(exc).__name__)
            finally:
                self._queue.task_done()

    def _deliver(self, item: _Item) -> None:
        shown = redact_url(item.url)
        deadline = time.monotonic() + self._max_delivery_s
        for attempt in range(1, item.max_attempts + 1):
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise _GiveUp(f"not delivered within {self._max_delivery_s:g} s (after {attempt - 1} attempt(s))")
                self._post(item, timeout_s=min(item.timeout_s, left))
                self._count("sent")
                if attempt > 1:
                    log.info("alarm webhook %s: delivered on attempt %d", shown, attempt)
                return
            except _GiveUp as exc:
                self._count("failed", f"{shown}: {exc}")
                log.warning("alarm webhook %s: %s; not retried", shown, exc)
                return
            except _Retry as exc:
                if attempt >= item.max_attempts:
                    self._count("failed", f"{shown}: {exc} (after {attempt} attempts)")
                    log.warning("alarm webhook %s: giving up after %d attempt(s): %s", shown, attempt, exc)
                    return
                delay = min(self._max_backoff_s, item.backoff_s * 2 ** (attempt - 1))
                if time.monotonic() + delay >= deadline:
                    self._count("failed", f"{shown}: {exc} (after {attempt} attempts; no time left within "
                                          f"{self._max_delivery_s:g} s)")
                    log.warning("alarm webhook %s: giving up after %d attempt(s), no time left within %g s: %s",
                                shown, attempt, self._max_delivery_s, exc)
                    return
                self._count("retried")
                log.info("alarm webhook %s: attempt %d/%d failed (%s); retrying in %.3g s",
                         shown, attempt, item.max_attempts, exc, delay)
                if self._abort.wait(delay):
                    self._count("failed", f"{shown}: {exc} (the sender closed during the backoff)")
                    log.warning("alarm webhook %s: not delivered, the sender closed: %s", shown, exc)
                    return

    def _post(self, item: _Item, *, timeout_s: float | None = None) -> None:
        timeout_s = item.timeout_s if timeout_s is None else timeout_s
        try:
            url, headers = _split_credentials(item.url)
            headers.update({"content-type": "application/json", "user-agent": self._user_agent})
            request = urllib.request.Request(url, data=item.body, method="POST", headers=headers)
        except ValueError as exc:  # the message would quote the URL
            raise _GiveUp(f"the URL is not one urllib can send ({type(exc).__name__})") from None
        try:
            with _OPENER.open(request, timeout=timeout_s) as response:
                response.read(65536)
                status = getattr(response, "status", 200)
        except urllib.error.HTTPError as exc:
            code = exc.code
            try:
                exc.close()
            except Exception:
                pass
            if code >= 500 or code in (408, 429):
                raise _Retry(f"HTTP {code}") from None
            if 300 <= code < 400:
                raise _GiveUp(f"answered a redirect (HTTP {code}); webhooks must answer at the configured URL") from None
            raise _GiveUp(f"refused the alarm (HTTP {code})") from None
        except urllib.error.URLError as exc:
            raise _Retry(f"cannot connect: {_reason(exc.reason)}") from None
        except TimeoutError:
            raise _Retry(f"no answer within {timeout_s:g} s (timed out)") from None
        except OSError as exc:  # connection reset mid-answer, remote closed...
            raise _Retry(f"connection failed: {_reason(exc)}") from None
        except ValueError as exc:  # http.client.InvalidURL (a space, a control character): its message quotes the URL
            raise _GiveUp(f"the URL is not one urllib can send ({type(exc).__name__})") from None
        if not 200 <= status < 300:
            raise _GiveUp(f"answered HTTP {status}")


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``http://user:pass@host/...`` -> the URL without them and a Basic ``authorization``
    header (urllib would take the user info for part of the host name)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    netloc = parts.hostname or ""
    if ":" in netloc:  # an IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    user = urllib.parse.unquote(parts.username or "")
    password = urllib.parse.unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc)), {"authorization": f"Basic {token}"}


def _reason(reason: object) -> str:
    """An OS-level reason, never the URL (socket errors carry none; be sure anyway)."""
    if isinstance(reason, TimeoutError):
        return "timed out"
    text = str(reason)
    return text.split("://")[0] if "://" in text else text


# -- raising ----------------------------------------------------------------------------------


def webhook_payload(name: str, kind: str, details: Mapping[str, Any], event: Event) -> dict[str, Any]:
    """The JSON a webhook receives for the alarm recorded as ``event``."""
    return {
        "source": "mlplat",
        "model": name,
        "kind": kind,
        "details": dict(details),
        "event_seq": event.seq,
        "time": datetime.fromtimestamp(event.ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "ts": event.ts,
    }


def raise_alarm(registry: Registry, sender: WebhookSender | None, name: str, kind: str, details: Mapping[str, Any], *,
                policy: AlarmPolicy | None = None, version: int | None = None,
                idempotency_key: str | None = None) -> Event:
    """Record an alarm (one ``alarm_raised`` event on ``model:<name>``) and queue its webhook.

    ``policy``: the model's ``serving_policy.alarms`` when None (read from the registry; a bad
    policy still records the alarm, with the problem in the payload, and sends nothing). The
    webhook goes only when ``kind`` is in the policy's ``on`` and a URL is set; the event
    payload names the (redacted) target and whether it was queued. The call never waits on the
    webhook. ``version``: the model version the alarm is about (the event's ``version``).
    ``idempotency_key``: a replay returns the first event (its webhook is queued again:
    delivery is at least once).
    """
    if kind not in ALARM_KINDS:
        raise ConfigError(f"unknown alarm kind {kind!r}; expected one of {', '.join(ALARM_KINDS)}")
    problem: str | None = None
    if policy is None:
        try:
            policy = AlarmPolicy.from_serving_policy(registry.get_model(name).serving_policy)
        except ConfigError as exc:
            problem = str(exc)
    notify = policy is not None and policy.notifies(kind) and (policy.webhook_url or policy.webhook_url_env)
    payload: dict[str, Any] = {"alarm": kind, "details": dict(details),
                               "webhook": policy.target() if notify and policy is not None else None}
    if problem is not None:
        payload["webhook_error"] = problem
    event = registry.append_event(EVENT_ALARM_RAISED, f"model:{name}", json.loads(json.dumps(payload, default=str)),
                                  version=version, idempotency_key=idempotency_key)
    queued = notify and sender is not None and policy is not None and sender.send(
        webhook_payload(name, kind, details, event), policy=policy)
    if notify and not queued and policy is not None:
        log.warning("alarm %s for model %s (event %d): webhook %s not queued; see the sender's stats",
                    kind, name, event.seq, policy.target())
    log.info("alarm %s raised for model %s (event %d)", kind, name, event.seq)
    return event
