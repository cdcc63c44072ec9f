"""The pure helpers of the P1 benchmark (connection splits, CPU sets, medians): their doctests.
bench/ is outside the suite's testpaths, so without this a broken parser would only show as a
wrong row in a benchmark run."""

from __future__ import annotations

import doctest
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench import serving, serving_load


def test_bench_serving_doctests() -> None:
    for module in (serving_load, serving):
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__


def test_the_proc_fallback_counts_a_servers_connections_as_ss_does() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    try:
        for _ in range(100):  # accepted by the server's thread
            if serving_load._proc_split(port) == [3]:
                break
            time.sleep(0.02)
        assert serving_load._proc_split(port) == [3]  # all in this process, server side only
    finally:
        for client in clients:
            client.close()
        server.shutdown()
        server.server_close()
