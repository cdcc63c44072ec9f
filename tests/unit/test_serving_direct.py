"""The direct data plane's parts without Ray: the shared SO_REUSEPORT listener, the in-process
uvicorn server (start, serve, count, stop) and the autoscaling policy that adds direct requests."""

from __future__ import annotations

import asyncio
import json
import socket
from types import SimpleNamespace

import httpx
import pytest

from mlplat.serving.direct import (
    DIRECT_ONGOING_METRIC,
    DirectServer,
    direct_app,
    direct_aware_policy,
    reuseport_socket,
)
from tests.servers import free_port


def test_two_listeners_share_one_port_and_a_plain_socket_is_refused():
    port = free_port()
    first, second = reuseport_socket("127.0.0.1", port), reuseport_socket("127.0.0.1", port)
    try:
        plain = socket.socket()
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # a program without SO_REUSEPORT cannot take the port
        plain.close()
    finally:
        first.close()
        second.close()


def test_server_answers_counts_in_flight_and_stops():
    async def scenario() -> None:
        release = asyncio.Event()
        seen: list[int] = []

        async def app(scope, receive, send):
            seen.append(server.in_flight)
            if scope["path"] == "/slow":
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})

        port = free_port()
        server = DirectServer(app, "127.0.0.1", port, graceful_s=2)
        server.start()
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for _ in range(50):  # the server starts on the loop
                try:
                    assert (await client.get("/")).text == "ok"
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            slow = asyncio.create_task(client.get("/slow"))
            while server.in_flight < 1:
                await asyncio.sleep(0.01)
            server.average_in_flight()  # a new window: one request in flight during all of it
            await asyncio.sleep(0.2)
            assert 0.9 <= server.average_in_flight() <= 1.0
            release.set()
            assert (await slow).text == "ok"
        assert server.in_flight == 0 and server.served >= 2 and seen[0] == 1
        assert server.running
        await server.stop()
        assert not server.running
        async with httpx.AsyncClient(timeout=5) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(url)

    asyncio.run(scenario())


def test_headers_that_do_not_arrive_in_time_get_a_408_and_the_connection_closes():
    """Slowloris: partial headers, then nothing; a connection that sends nothing at all. Both
    are closed after ``header_timeout_s``; a whole request on the same server is answered."""

    async def scenario() -> None:
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        port = free_port()
        server = DirectServer(app, "127.0.0.1", port, graceful_s=1, header_timeout_s=0.4)
        server.start()
        for _ in range(50):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        slow_reader, slow_writer = reader, writer
        slow_writer.write(b"POST /v1/models/m:predict HTTP/1.1\r\nhost: x\r\ncontent-")  # and never the rest
        await slow_writer.drain()
        silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
        ok_reader, ok_writer = await asyncio.open_connection("127.0.0.1", port)
        ok_writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await asyncio.wait_for(ok_reader.readuntil(b"ok"), 5)).startswith(b"HTTP/1.1 200")
        answer = await asyncio.wait_for(slow_reader.read(), 5)  # read to EOF: the server closed it
        assert answer.startswith(b"HTTP/1.1 408"), answer
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head
        assert "serve.body_read_timeout_s" in json.loads(body)["error"]
        assert (await asyncio.wait_for(silent_reader.read(), 5)).startswith(b"HTTP/1.1 408")
        assert server.timed_out == 2
        for w in (slow_writer, silent_writer, ok_writer):
            w.close()
        await server.stop()

    asyncio.run(scenario())


def test_the_direct_app_sends_the_two_inference_routes_to_infer_and_the_rest_to_the_app():
    from starlette.responses import JSONResponse

    calls: list[tuple[str, str]] = []
    fallback_paths: list[str] = []

    async def infer(request, name, endpoint):
        if name == "boom":
            raise RuntimeError("a bug")
        calls.append((name, endpoint))
        return JSONResponse({"model": name, "root": request.scope["root_path"]})

    async def fallback(scope, receive, send):
        fallback_paths.append(scope["path"])
        await JSONResponse({"fallback": True})(scope, receive, send)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=direct_app(infer, fallback, "/api/"))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as client:
            v1 = await client.post("/api/v1/models/churn:predict", json={})
            assert v1.json() == {"model": "churn", "root": "/api"}
            assert (await client.post("/api/v2/models/churn/infer", json={})).status_code == 200
            assert (await client.get("/api/v1/models/churn")).json() == {"fallback": True}
            assert (await client.post("/api/v2/models/churn/versions/2/infer", json={})).json() == {"fallback": True}
            outside = await client.post("/v1/models/churn:predict", json={})
            assert outside.status_code == 404 and "/api/" in outside.json()["error"]
            broken = await client.post("/api/v1/models/boom:predict", json={})
            assert broken.status_code == 503 and "retry" in broken.json()["error"] and "Retry-After" in broken.headers
        assert calls == [("churn", "v1"), ("churn", "v2")]
        assert fallback_paths == ["/api/v1/models/churn", "/api/v2/models/churn/versions/2/infer"]

    asyncio.run(scenario())


def _ctx(total: float, direct: dict[str, float] | None, replicas: int = 1, target: float = 2.0):
    return SimpleNamespace(current_num_replicas=replicas, target_num_replicas=replicas, total_num_requests=total,
                           aggregated_metrics={DIRECT_ONGOING_METRIC: direct} if direct is not None else {},
                           config=SimpleNamespace(get_target_ongoing_requests=lambda: target))


def test_policy_counts_direct_requests_beside_serves_own():
    assert direct_aware_policy(_ctx(0, None))[0] == 0  # idle: as few as the bounds allow
    assert direct_aware_policy(_ctx(4, None))[0] == 2  # Serve's own count alone: its default rule
    assert direct_aware_policy(_ctx(0, {"r1": 5.0, "r2": 3.0}, replicas=2))[0] == 4  # direct only: (5 + 3) / 2
    assert direct_aware_policy(_ctx(2, {"r1": 2.0}))[0] == 2
    assert direct_aware_policy(_ctx(0, {"r1": 9.0}, replicas=0)) == (0, {})  # no replica: Serve's cold start decides
