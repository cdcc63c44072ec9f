"""Load shedding: how much inference an ingress replica admits, and what a shed request hears.

Past capacity a client gets a 503 with ``Retry-After`` at once instead of a place in a queue
that only grows: first from the ingress's own admission count (the error schema of every
other answer), then from Serve's ``max_queued_requests`` on each deployment (a handle that
would queue past it raises ``BackPressureError``; Serve's proxy answers 503 itself when the
ingress's own queue is full). Inference never takes the last ``ingress_health_headroom``
slots of an ingress replica, so health and metadata routes keep answering under overload.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Admission", "inference_limit", "queue_options", "retry_after_headers"]


def inference_limit(max_ongoing_requests: int, health_headroom: int) -> int:
    """Inference requests one ingress replica admits at once: its Serve slots less the
    headroom kept for health and metadata routes, at least one.

    >>> inference_limit(256, 16)
    240
    >>> inference_limit(8, 16)
    1
    """
    return max(1, max_ongoing_requests - health_headroom)


def retry_after_headers(status: int, retry_after_s: int) -> dict[str, str]:
    """``Retry-After`` for a 503 (RFC 9110: integer seconds); nothing for other statuses.

    >>> retry_after_headers(503, 2)
    {'Retry-After': '2'}
    >>> retry_after_headers(408, 2)
    {}
    """
    return {"Retry-After": str(max(0, int(retry_after_s)))} if status == 503 else {}


def queue_options(max_queued_requests: int, retry_after_s: int) -> dict[str, Any]:
    """Serve deployment options that bound the requests each caller queues for a deployment:
    past ``max_queued_requests`` the caller is refused at once (``BackPressureError``; over
    HTTP Serve answers 503 with ``Retry-After: retry_after_s``)."""
    from ray.serve.config import BackpressureConfig

    return {"max_queued_requests": max_queued_requests,
            "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=retry_after_s)}


class Admission:
    """The inference requests in flight in one ingress replica (one event loop: no lock).

    >>> gate = Admission(limit=1)
    >>> gate.try_enter(), gate.try_enter()
    (True, False)
    >>> gate.leave(); gate.in_flight
    0
    """

    def __init__(self, limit: int):
        if limit < 1:
            raise ValueError(f"the admission limit must be >= 1, got {limit}")
        self.limit = limit
        self.in_flight = 0

    def try_enter(self) -> bool:
        """Admit one more request (True), or refuse it because ``limit`` are in flight (False)."""
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def leave(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
