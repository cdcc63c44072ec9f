"""Connection balancing among the replicas on one direct port (serving/direct_balance.py), with
real sockets and two in-process servers on one SO_REUSEPORT port, without Ray."""

from __future__ import annotations

import array
import asyncio
import os
import socket

import pytest
import uvloop

from mlplat.serving.direct import DirectServer
from mlplat.serving.direct_balance import MAX_HANDOFFS, PEER_RESCAN_S, ConnectionBalancer, handoff_target
from tests.servers import free_port


@pytest.mark.parametrize(("own", "peers", "target"), [
    (1, {}, None),                       # alone on the port
    (8, {"b": 7}, None),                 # one above: keep
    (9, {"b": 7}, "b"),                  # two above: hand over
    (9, {"b": 8, "c": 3}, "c"),          # to the least loaded
    (5, {"b": 3, "a": 3}, "a"),          # ties: by id, the same choice every time
    (1, {"b": 0}, None),                 # the first connection stays
])
def test_handoff_target(own, peers, target):
    assert handoff_target(own, peers) == target


def _app(name: bytes):
    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        answer = name + b":" + body
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})
    return app


async def _request(reader, writer, body: bytes) -> bytes:
    """One POST on an open connection, the whole request written at once; the answer's body."""
    writer.write(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    return await reader.readexactly(length)


async def _started(*servers: DirectServer) -> None:
    for server in servers:
        server.start()
    await asyncio.sleep(0.2)


def test_a_replica_that_joins_gets_the_new_connections_until_both_have_as_many():
    """6 connections to A alone; B starts (A sees it within PEER_RESCAN_S); 6 more, which the
    kernel spreads over A and B by a hash: A hands its share to B, so both end with 6, and every request (sent together with
    the connection, before any hand-over) is answered whole, where it went."""
    async def scenario() -> None:
        port = free_port()
        a, b = DirectServer(_app(b"a"), "127.0.0.1", port), DirectServer(_app(b"b"), "127.0.0.1", port)
        await _started(a)
        connections = []
        try:
            for i in range(12):
                if i == 6:
                    await _started(b)
                    await asyncio.sleep(PEER_RESCAN_S)  # A lists the port's replicas again
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                connections.append((reader, writer))
                answer = await _request(reader, writer, b"first %d" % i)
                assert answer.endswith(b":first %d" % i)
                assert answer[:1] == (b"a" if i < 6 else b"b")  # from the 7th on, B until it has 6
            assert (a.balancer.open_connections, b.balancer.open_connections) == (6, 6)
            assert a.balancer.handed_off == b.balancer.adopted
            for i, (reader, writer) in enumerate(connections):  # the connections stay usable
                assert (await _request(reader, writer, b"again")) == (b"a" if i < 6 else b"b") + b":again"
        finally:
            for _, writer in connections:
                writer.close()
            await asyncio.sleep(0.2)
            assert (a.balancer.open_connections, b.balancer.open_connections) == (0, 0)
            directory = a.balancer.directory
            await a.stop()
            await b.stop()
        assert not os.path.exists(directory) or os.listdir(directory) == []

    asyncio.run(scenario())


def test_a_burst_of_connections_ends_even_within_two():
    async def scenario() -> None:
        port = free_port()
        a, b = DirectServer(_app(b"a"), "127.0.0.1", port), DirectServer(_app(b"b"), "127.0.0.1", port)
        await _started(a, b)

        async def one(i: int):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            return writer, await _request(reader, writer, b"%d" % i)

        try:
            results = await asyncio.gather(*[one(i) for i in range(16)])
            assert [answer.split(b":")[1] for _, answer in results] == [b"%d" % i for i in range(16)]
            served = sorted(sum(answer[:1] == name for _, answer in results) for name in (b"a", b"b"))
            assert served[1] - served[0] <= 2, served
            assert a.balancer.open_connections + b.balancer.open_connections == 16
        finally:
            for writer, _ in results:
                writer.close()
            await a.stop()
            await b.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the replicas' loop
        runner.run(scenario())


def test_a_dead_replicas_files_are_removed_and_the_connection_kept(tmp_path):
    dead = tmp_path / "123-deadbeef.count"
    dead.write_bytes((0).to_bytes(8, "little"))
    (tmp_path / "123-deadbeef.sock").write_bytes(b"")  # a socket file nobody listens on
    balancer = ConnectionBalancer("127.0.0.1", 1, directory=str(tmp_path))
    loop = asyncio.new_event_loop()
    try:
        assert balancer.start(loop, lambda sock: None)
        balancer.opened(), balancer.opened(), balancer.opened()
        assert balancer.peer_counts() == {"123-deadbeef": 0}
        left, right = socket.socketpair()
        assert balancer.offer(left.fileno()) is False  # three above a dead peer: kept
        assert not dead.exists() and not (tmp_path / "123-deadbeef.sock").exists()
        assert balancer.peer_counts() == {} and balancer.handed_off == 0
        left.close(), right.close()
    finally:
        balancer.stop()
        loop.close()
    assert os.listdir(tmp_path) == []


def test_only_tcp_connections_are_taken_and_hand_overs_are_bounded(tmp_path):
    taken: list[socket.socket] = []
    receiver = ConnectionBalancer("127.0.0.1", 1, directory=str(tmp_path))
    loop = asyncio.new_event_loop()
    try:
        assert receiver.start(loop, taken.append)
        path = os.path.join(str(tmp_path), f"{receiver.id}.sock")
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        left, right = socket.socketpair()  # not a TCP connection
        sender.sendmsg([bytes([1])], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [left.fileno()]))], 0, path)
        loop.run_until_complete(asyncio.sleep(0.05))
        assert taken == [] and receiver.adopted == 0
        # a connection handed over MAX_HANDOFFS times is served, not handed on
        assert receiver.offer(right.fileno(), MAX_HANDOFFS) is False
        sender.close(), left.close(), right.close()
    finally:
        receiver.stop()
        loop.close()


def test_a_socket_path_too_long_turns_balancing_off_and_the_server_still_answers(tmp_path):
    async def scenario() -> None:
        port = free_port()
        server = DirectServer(_app(b"a"), "127.0.0.1", port)
        server.balancer = ConnectionBalancer("127.0.0.1", port, directory=str(tmp_path / ("x" * 120)))
        await _started(server)
        try:
            assert server.balancer is None
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await _request(reader, writer, b"hi") == b"a:hi"
            writer.close()
        finally:
            await server.stop()

    asyncio.run(scenario())
