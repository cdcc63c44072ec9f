"""The direct data plane: each ingress replica also serves its own ASGI app on
``serve.direct_port`` with an in-process uvicorn (httptools on the replica's uvloop), every
replica of the host listening on that one port with ``SO_REUSEPORT`` so the kernel spreads
connections over them. No HAProxy hop and no Serve request path on the way: the request runs
the same handlers (token, limits, validation, routing, telemetry, admission) on the same
event loop as the replica's Serve-routed requests, so both count against one admission limit.

Serve still owns the replicas: it starts and stops them (the server starts with the replica and
stops in its ``__del__``), replaces dead ones and autoscales them; the replica reports its
direct requests in flight through ``record_autoscaling_stats`` (:data:`DIRECT_ONGOING_METRIC`)
and the ingress's autoscaling policy (:func:`direct_aware_policy`) counts them with Serve's own.

A request's headers must arrive within ``header_timeout_s`` of its first byte (of the connection,
for its first request), else the server answers 408 and closes the connection -- what HAProxy's
``timeout http-request`` does on Serve's port. Without it a client that sends a few header bytes
a minute (or nothing at all) would hold a connection and its file descriptor forever; the body
has the app's own deadline (``serve.body_read_timeout_s``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mlplat.serving.direct_balance import ConnectionBalancer

__all__ = ["DirectServer", "direct_app", "reuseport_socket", "DIRECT_ONGOING_METRIC", "direct_aware_policy",
           "DIRECT_POLICY_PATH", "headers_overdue", "request_timeout_response"]

log = logging.getLogger("mlplat.serving")

ASGI = Callable[[dict[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]

#: The custom autoscaling metric: requests in flight on the replica's direct port.
DIRECT_ONGOING_METRIC = "mlplat_direct_ongoing_requests"
#: The import path of :func:`direct_aware_policy` (Serve imports policies by path).
DIRECT_POLICY_PATH = "mlplat.serving.direct:direct_aware_policy"


def reuseport_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` that other processes of this user can bind too
    (``SO_REUSEPORT``: the kernel hands each new connection to one of the listeners)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise OSError("serve.direct_port needs SO_REUSEPORT (Linux, macOS); this platform has none")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


#: The direct port's fast path: exactly the paths of ``predict_v1`` and ``infer_v2`` (a path
#: parameter matches ``[^/]+``, as in Starlette's routing).
_FAST_V1 = re.compile(r"^/v1/models/([^/]+):predict$")
_FAST_V2 = re.compile(r"^/v2/models/([^/]+)/infer$")


def direct_app(infer: Callable[[Any, str, str], Awaitable[Any]], fallback: ASGI, route_prefix: str) -> ASGI:
    """The direct port's ASGI app: the two inference routes straight to ``infer(request, model,
    endpoint)`` (what FastAPI's routing would call for them, without its per-request dependency
    resolution), everything else to ``fallback`` (the same FastAPI app Serve routes to), all
    under ``route_prefix`` as behind Serve's proxy."""
    from starlette.requests import Request

    from mlplat.serving import http_api as api

    prefix = route_prefix.rstrip("/")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if prefix:  # the app lives under serve.route_prefix, as behind Serve's proxy
            if path != prefix and not path.startswith(prefix + "/"):
                await api.error_response(404, f"no route {path[:80]!r}; the API is under {prefix}/")(scope, receive, send)
                return
            scope["root_path"] = scope.get("root_path", "") + prefix
            path = path[len(prefix):]
        if scope["method"] == "POST":
            match = _FAST_V1.match(path)
            endpoint = "v1"
            if match is None:
                match, endpoint = _FAST_V2.match(path), "v2"
            if match is not None:
                try:
                    response = await infer(Request(scope, receive), match.group(1), endpoint)
                except Exception:  # what the app's Exception handler answers (http_api._unexpected)
                    log.exception("unexpected error on %s", scope["path"])
                    response = api.error_response(503, "internal error; the request was not processed: retry, or "
                                                       "call the operator if it persists")
                await response(scope, receive, send)
                return
        await fallback(scope, receive, send)

    return app


def request_timeout_response(timeout_s: float) -> bytes:
    """The 408 a connection gets when its request headers are overdue: the API's one error body
    (``{"error": ...}``), then the connection closes.

    >>> request_timeout_response(10.0).split(b"\\r\\n")[0]
    b'HTTP/1.1 408 Request Timeout'
    """
    import json

    body = json.dumps({"error": f"the request headers did not arrive within {timeout_s:g} s "
                                "(serve.body_read_timeout_s); send the whole request at once"}).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body)


def headers_overdue(started_at: float | None, now: float, timeout_s: float) -> bool:
    """Whether a connection whose request headers began arriving at ``started_at`` (None: not
    reading headers) has run past ``timeout_s`` without completing them.

    >>> headers_overdue(None, 100.0, 10.0), headers_overdue(95.0, 100.0, 10.0), headers_overdue(89.0, 100.0, 10.0)
    (False, False, True)
    """
    return started_at is not None and now - started_at > timeout_s


def _header_deadline_protocol(timeout_s: float, balancer: ConnectionBalancer | None = None) -> type:
    """uvicorn's httptools protocol that notes when a request's headers began (its connection
    opening, then each request's first byte) and when they completed; :meth:`DirectServer._sweep`
    closes the overdue ones. A timestamp per request, no timer per request. With ``balancer``, a
    new connection is first offered to a less-loaded replica (direct_balance.py) and, if one
    takes it, closed here before anything of it is read."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    response = request_timeout_response(timeout_s)

    class HeaderDeadlineProtocol(HttpToolsProtocol):  # type: ignore[misc]
        headers_started_at: float | None = None
        #: Handed over by another replica: served here, never handed on.
        adopted = False
        #: Handed to another replica in connection_made: uvicorn never saw it.
        handed_off = False

        def connection_made(self, transport: Any) -> None:
            if balancer is not None:
                if self.adopted:
                    pass  # counted on arrival (ConnectionBalancer._take)
                elif balancer.offer(transport.get_extra_info("socket").fileno()):
                    self.handed_off = True
                    transport.abort()  # our copy of the socket; the peer's stays open
                    return
                else:
                    balancer.opened()
            super().connection_made(transport)
            self.headers_started_at = self.loop.time()

        def connection_lost(self, exc: Exception | None) -> None:
            if self.handed_off:
                return
            if balancer is not None:
                balancer.closed()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self.headers_started_at is None:
                self.headers_started_at = self.loop.time()

        def on_headers_complete(self) -> None:
            self.headers_started_at = None
            super().on_headers_complete()

        def request_timed_out(self) -> bool:
            """Answer 408 and close; False (nothing done) while an earlier pipelined request's
            response is still being written: the next sweep decides."""
            if self.cycle is not None and not self.cycle.response_complete:
                return False
            self.headers_started_at = None
            if not self.transport.is_closing():
                self.transport.write(response)
                self.transport.close()
            return True

    return HeaderDeadlineProtocol


class DirectServer:
    """One replica's uvicorn on the shared direct port, on the running event loop.

    ``app`` is called per connection scope; ``in_flight`` counts HTTP requests being answered
    (the autoscaling metric); ``timed_out`` counts connections closed for headers that took
    longer than ``header_timeout_s``. With ``balance_connections`` the replicas on the port even
    out their open connections (:class:`ConnectionBalancer`, ``balancer``)."""

    def __init__(self, app: ASGI, host: str, port: int, *, timeout_keep_alive_s: float = 5.0,
                 graceful_s: float = 10.0, header_timeout_s: float = 10.0, balance_connections: bool = True):
        self._app, self._host, self._port = app, host, port
        self.balancer: ConnectionBalancer | None = ConnectionBalancer(host, port) if balance_connections and port else None
        self._adoptions: set[asyncio.Task] = set()
        self._keep_alive_s, self._graceful_s, self._header_timeout_s = timeout_keep_alive_s, graceful_s, header_timeout_s
        self._server: Any = None
        self._task: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self.timed_out = 0
        self.in_flight = 0
        self.served = 0
        now = time.monotonic()
        self._since = self._window_start = now
        self._area = 0.0  # requests in flight x seconds since _window_start

    def _mark(self) -> float:
        now = time.monotonic()
        self._area += self.in_flight * (now - self._since)
        self._since = now
        return now

    def average_in_flight(self) -> float:
        """Requests in flight on average since the previous call (time-weighted), then a new window."""
        now = self._mark()
        window = now - self._window_start
        average = self._area / window if window > 0 else float(self.in_flight)
        self._area, self._window_start = 0.0, now
        return average

    async def _counted(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        self._mark()
        self.in_flight += 1
        try:
            await self._app(scope, receive, send)
        finally:
            self._mark()
            self.in_flight -= 1
            self.served += 1

    def start(self) -> None:
        """Bind and start serving on the running loop (a bind error raises here, in the replica's
        constructor: Serve reports the replica as failed)."""
        import uvicorn

        sock = reuseport_socket(self._host, self._port)
        loop = asyncio.get_running_loop()
        if self.balancer is not None and not self.balancer.start(loop, self._adopt):
            self.balancer = None
        protocol = _header_deadline_protocol(self._header_timeout_s, self.balancer)
        config = uvicorn.Config(self._counted, interface="asgi3", http=protocol, ws="none", lifespan="off",
                                access_log=False,
                                log_config=None, server_header=False, timeout_keep_alive=int(self._keep_alive_s),
                                timeout_graceful_shutdown=int(self._graceful_s))
        self._server = uvicorn.Server(config)
        self._task = loop.create_task(self._server.serve(sockets=[sock]))
        self._task.add_done_callback(self._ended)
        self._sweeper = loop.create_task(self._sweep())
        log.info("direct data plane listening on %s:%s", self._host, self._port)

    def _adopt(self, sock: socket.socket) -> None:
        """Serve a connection another replica handed over, as uvicorn serves the ones it accepts."""
        server = self._server
        config = server.config

        def protocol() -> Any:
            p = config.http_protocol_class(config=config, server_state=server.server_state, app_state=server.lifespan.state)
            p.adopted = True
            return p

        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.connect_accepted_socket(protocol, sock))
        self._adoptions.add(task)
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Task) -> None:
        self._adoptions.discard(task)
        if task.cancelled() or task.exception() is not None:
            if self.balancer is not None:
                self.balancer.closed()  # counted on arrival; no protocol will report it closed
            if not task.cancelled():
                log.warning("direct port: a handed-over connection could not be served: %r", task.exception())

    async def _sweep(self) -> None:
        """Close the connections whose request headers are overdue (:func:`headers_overdue`),
        checking a few times per timeout."""
        loop = asyncio.get_running_loop()
        interval_s = min(1.0, self._header_timeout_s / 4)
        while True:
            await asyncio.sleep(interval_s)
            now = loop.time()
            for connection in list(self._server.server_state.connections):  # each a HeaderDeadlineProtocol
                if headers_overdue(connection.headers_started_at, now, self._header_timeout_s) and connection.request_timed_out():
                    self.timed_out += 1

    def _ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the direct data plane stopped: %r", task.exception())

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to the graceful timeout)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.balancer is not None:
            self.balancer.stop()  # no more connections from peers; ours stay until they finish
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), self._graceful_s + 5)
        except (TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        except Exception:  # already reported by _ended
            pass


def direct_aware_policy(ctx: Any) -> tuple[float, dict[str, Any]]:
    """Serve's default queue-length rule (desired replicas = requests in flight / target per
    replica) over the requests Serve counted itself plus each replica's direct-port requests in
    flight (:data:`DIRECT_ONGOING_METRIC`, from its ``record_autoscaling_stats``, averaged over
    the look-back window). Serve applies min/max, the up/downscale delays and factors around it."""
    if ctx.current_num_replicas == 0:
        return ctx.target_num_replicas, {}
    direct = (ctx.aggregated_metrics or {}).get(DIRECT_ONGOING_METRIC) or {}
    total = float(ctx.total_num_requests) + float(sum(direct.values()))
    return total / ctx.config.get_target_ongoing_requests(), {}
