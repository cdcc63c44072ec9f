"""Load generators for P1 (bench/serving.py): wrk for HTTP (v1 and OIP v2 JSON), and a gRPC
ModelInfer load in its own process (``python -m bench.serving_load PORT SECONDS CONNECTIONS``).

wrk is C and costs little CPU; the gRPC load is Python (grpc.aio), which takes a larger share
of the same two cores, so its row is informational, not a ratio against a wrk row.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TOKEN = "bench-token"
ROW = {"amount": 12.5, "age": 31, "country": "fr"}
V1_PATH = "/v1/models/hot:predict"
V2_PATH = "/v2/models/hot/infer"
_HEADERS = f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {TOKEN}"
"""
V1_BODY = json.dumps({"instances": [ROW]})
#: The same row as OIP v2 JSON: one tensor per feature (the datatypes the model's metadata lists)
V2_BODY = json.dumps({"inputs": [
    {"name": "amount", "shape": [1], "datatype": "FP32", "data": [ROW["amount"]]},
    {"name": "age", "shape": [1], "datatype": "INT64", "data": [ROW["age"]]},
    {"name": "country", "shape": [1], "datatype": "BYTES", "data": [ROW["country"]]},
]})


def wrk(port: int, seconds: int, connections: int = 16, path: str = V1_PATH, body: str = V1_BODY, *,
        split: bool = False) -> dict[str, Any]:
    """req/s, p50/p99 ms and the count of non-2xx answers and socket errors of one wrk run;
    with ``split``, also ``connections_per_process``: how the server's processes held the
    connections 2 s into the run (:func:`connection_split`), since a side whose kernel gave one
    worker most of them answers slower and with a longer tail for it."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_HEADERS + f"wrk.body = {json.dumps(body)}\n")
    load_cpus = cpus_of(os.environ.get("BENCH_LOAD_CPUS", ""))
    seen: list[list[int] | None] = []
    timer = threading.Timer(min(2.0, seconds / 2), lambda: seen.append(connection_split(port))) if split else None
    try:
        # the timer thread starts after the fork (a preexec_fn in a process with threads can hang)
        proc = subprocess.Popen(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name,
                                 f"http://127.0.0.1:{port}{path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=(lambda: os.sched_setaffinity(0, load_cpus)) if load_cpus else None)
        if timer is not None:
            timer.start()
        try:
            text, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    finally:
        if timer is not None:
            timer.cancel()
            if timer.is_alive():
                timer.join(timeout=15)  # ss still counting
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    result: dict[str, Any] = {
        "rps": rps, "p50_ms": _latency(text, "50%"), "p99_ms": _latency(text, "99%"),
        "errors": (int(errors.group(1)) if errors else 0) + (sum(map(int, socket_errors.groups())) if socket_errors else 0)}
    if split:
        result["connections_per_process"] = seen[0] if seen else None
    return result


def connection_split(port: int) -> list[int] | None:
    """Established connections on the server side of ``port``, counted per process, most first:
    from ``ss``, or where it is missing (the device machine has none) from ``/proc/net/tcp*``
    and each process's socket descriptors; None where neither can be read."""
    try:
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return _proc_split(port)
    return split_of(out.stdout) if out.returncode == 0 else _proc_split(port)


def split_of(ss_output: str) -> list[int]:
    """Connections per process in ``ss -tnpH`` output (the first ``pid=`` of each line), most first.

    >>> split_of('0 0 127.0.0.1:8000 127.0.0.1:5000 users:(("python",pid=12,fd=9))\\n'
    ...          '0 0 127.0.0.1:8000 127.0.0.1:5001 users:(("python",pid=12,fd=10))\\n'
    ...          '0 0 127.0.0.1:8000 127.0.0.1:5002 users:(("python",pid=7,fd=9))\\n')
    [2, 1]
    """
    per_process: collections.Counter[str] = collections.Counter()
    for line in ss_output.splitlines():
        found = re.search(r"pid=(\d+)", line)
        if found:
            per_process[found.group(1)] += 1
    return sorted(per_process.values(), reverse=True)


def _proc_split(port: int) -> list[int] | None:
    try:
        tables = [Path(f"/proc/net/{name}").read_text() for name in ("tcp", "tcp6") if os.path.exists(f"/proc/net/{name}")]
    except OSError:
        return None
    if not tables:
        return None
    inodes = server_inodes("".join(tables), port)
    per_process: collections.Counter[str] = collections.Counter()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # gone, or not ours to read
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:  # closed since the listing (the listing's own descriptor is one)
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                per_process[pid] += 1
    return sorted(per_process.values(), reverse=True)


def server_inodes(proc_net_tcp: str, port: int) -> set[str]:
    """Socket inodes of the established connections whose local port is ``port`` in
    ``/proc/net/tcp`` text (state 01 = ESTABLISHED; the inode is the 10th field).

    >>> server_inodes(
    ...     "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\\n"
    ...     "   0: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000 0 0 111 1\\n"
    ...     "   1: 0100007F:C350 0100007F:1F40 01 00000000:00000000 00:00000000 00000000 0 0 222 1\\n"
    ...     "   2: 00000000:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 333 1\\n", 8000)
    {'111'}
    """
    found: set[str] = set()
    for line in proc_net_tcp.splitlines():
        fields = line.split()
        if len(fields) > 9 and fields[3] == "01" and ":" in fields[1] and int(fields[1].rsplit(":", 1)[1], 16) == port:
            found.add(fields[9])
    return found


def cpus_of(text: str) -> set[int]:
    """``"0,1"`` or ``"3-15"`` (or both, comma-separated) -> the set of CPU numbers; ``""`` -> empty.

    >>> sorted(cpus_of("0,1")), sorted(cpus_of("2-4,7")), cpus_of("")
    ([0, 1], [2, 3, 4, 7], set())
    """
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


def _latency(text: str, pct: str) -> float:
    match = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def grpc(port: int, seconds: int, connections: int = 16) -> dict[str, float]:
    """The gRPC load in a child process (this process stays idle, as it does for wrk)."""
    out = subprocess.run([sys.executable, "-m", "bench.serving_load", str(port), str(seconds), str(connections)],
                         capture_output=True, text=True, timeout=seconds + 120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(f"gRPC load failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _infer_request():
    from mlplat.serving.oip_grpc import grpc_service_pb2 as pb

    request = pb.ModelInferRequest(model_name="hot")
    request.inputs.add(name="amount", datatype="FP32", shape=[1]).contents.fp32_contents.append(ROW["amount"])
    request.inputs.add(name="age", datatype="INT64", shape=[1]).contents.int64_contents.append(ROW["age"])
    request.inputs.add(name="country", datatype="BYTES", shape=[1]).contents.bytes_contents.append(ROW["country"].encode())
    return request


async def _grpc_load(port: int, seconds: float, connections: int) -> dict[str, float]:
    import grpc as grpclib

    from mlplat.serving.oip_grpc import grpc_service_pb2 as pb

    request = _infer_request()
    metadata = (("authorization", f"Bearer {TOKEN}"),)
    latencies: list[float] = []
    errors = 0
    async with grpclib.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                    request_serializer=pb.ModelInferRequest.SerializeToString,
                                    response_deserializer=pb.ModelInferResponse.FromString)
        await infer(request, metadata=metadata, timeout=60)  # the channel is up and the model loaded

        async def client(deadline: float) -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    await infer(request, metadata=metadata, timeout=30)
                    latencies.append(time.perf_counter() - start)
                except grpclib.aio.AioRpcError:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client(started + seconds) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)], "errors": errors}


if __name__ == "__main__":
    port, seconds, connections = (int(a) for a in sys.argv[1:4])
    print(json.dumps(asyncio.run(_grpc_load(port, seconds, connections))))
