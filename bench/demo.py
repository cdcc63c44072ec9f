"""P9: `make demo` wall time after install — the whole lifecycle (data, features, training,
validation, promotion, serving, predictions, telemetry, drift, the controller's retrain, canary
rollout and rollback) on an embedded local Ray.

Each repeat runs ``python -m mlplat.demo`` in a fresh process on a fresh storage root and a
free serving port; the row is the median wall time (Ray start-up included).
"""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import row

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(repeats: int = 3) -> list[dict]:
    walls, stages = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-demo-") as root:
            env = {**os.environ, "MLPLAT_ROOT": root, "MLPLAT_SERVE_PORT": str(_free_port())}
            start = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "mlplat.demo"], cwd=HERE.parent, env=env, capture_output=True,
                                 text=True, timeout=900)
            walls.append(time.perf_counter() - start)
            if out.returncode != 0:
                raise RuntimeError(f"demo failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
            stages.append([line for line in out.stdout.splitlines() if line.startswith("[") and not line.endswith("...")])
    breakdown = "; ".join(line.split("]")[0].strip("[") + " " + line.rsplit("(", 1)[-1].rstrip(")") for line in stages[-1])
    return [row("P9", f"make demo wall time after install, median of {repeats} (last run: {breakdown})",
                statistics.median(walls), "s", target="informational")]


if __name__ == "__main__":
    from bench.common import stamp, table

    print(table(stamp(run())))
