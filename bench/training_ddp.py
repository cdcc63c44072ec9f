"""P6's bare multi-GPU reference: PyTorch's own DDP with the whole step captured as CUDA graphs.

The recipe is the one in PyTorch's CUDA-graphs notes ("Usage with DistributedDataParallel"):
``TORCH_NCCL_ASYNC_ERROR_HANDLING=0`` before the process group, DDP built on a side stream, 11
eager DDP steps before the capture, then one graph per batch shape (the full batch and the
epoch's last, partial one), forward, backward (DDP's all-reduce inside) and optimizer together.
One process per GPU (``torch.multiprocessing``), each on an equal contiguous share of the rows
(as Ray Train's equal split), rows on the GPU, one ``randperm`` per epoch, the same model and
optimizer as :func:`bench.training.bare_graph_loop`. Per epoch, as mlplat's loop: the ranks align
(a one-element all-reduce read on the host) before rank 0 starts its timer, and the timer stops
after the epoch's loss sum is all-reduced and read. So ``efficiency = rate(N) / (N x
bare_graph_loop rate)`` is what the hardware and PyTorch allow this shape, without Ray or mlplat.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from typing import Any

#: DDP's eager steps before a capture (PyTorch's notes: at least 11).
DDP_WARMUP_STEPS = 11
#: A bare DDP run that has not finished by then is stopped (its processes terminated) and gives
#: no rate, so a hang in the reference cannot eat the benchmark's device time.
DDP_TIMEOUT_S = 90.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world: int, port: int, x: Any, y: Any, hidden: list[int], batch_size: int, epochs: int,
            out: str) -> None:
    import faulthandler
    import json

    import torch
    import torch.distributed as dist

    from bench.training import _bare_setup, capture_step

    faulthandler.dump_traceback_later(DDP_TIMEOUT_S - 5)  # where a hung rank waits, before it is stopped

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TORCH_NCCL_ASYNC_ERROR_HANDLING="0")
    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=device)
    share = len(x) // world
    model, opt, crit, xs, ys, generator = _bare_setup(x[rank * share:(rank + 1) * share],
                                                      y[rank * share:(rank + 1) * share], hidden, f"cuda:{rank}",
                                                      graphs=True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rank])
    torch.cuda.current_stream().wait_stream(side)

    graphs = {batch_size: capture_step(ddp, opt, crit, xs, ys, batch_size, DDP_WARMUP_STEPS, side, "thread_local")}
    if len(xs) % batch_size:
        graphs[len(xs) % batch_size] = capture_step(ddp, opt, crit, xs, ys, len(xs) % batch_size, DDP_WARMUP_STEPS,
                                                    side, "thread_local")
    rates = []
    for epoch in range(epochs):
        flag = torch.ones(1, device=device)
        dist.all_reduce(flag)
        flag.item()
        start = time.perf_counter()
        order = torch.randperm(len(xs), generator=generator.manual_seed(epoch + 1000 * rank), device=device)
        xt, yt = xs[order], ys[order]
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, len(xt), batch_size):
            xb, yb = xt[i:i + batch_size], yt[i:i + batch_size]
            graph, sx, sy, sloss = graphs[len(xb)]
            sx.copy_(xb, non_blocking=True)
            sy.copy_(yb, non_blocking=True)
            graph.replay()
            total.add_(sloss.detach(), alpha=len(xb))
        dist.all_reduce(total)
        total.item()
        rates.append(world * len(xt) / (time.perf_counter() - start))
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(rates, handle)
    # Not dist.destroy_process_group(): on 2 H200s it never returned once NCCL calls had been
    # captured into graphs (2026-12-01, both ranks in destroy_process_group); no collective is
    # left, so the process ends and takes its communicator with it.
    os._exit(0)


def bare_graph_ddp(x: Any, y: Any, *, hidden: list[int], batch_size: int, epochs: int, world: int) -> list[float]:
    """Rank 0's samples/s (all ranks' rows) of each epoch of ``world`` bare DDP processes, one per
    GPU; ``[]`` when they have not finished within ``DDP_TIMEOUT_S`` (then they are terminated)."""
    import json

    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="mlplat-bare-ddp-") as tmp:
        out = os.path.join(tmp, "rates.json")
        context = mp.spawn(_worker, args=(world, _free_port(), x, y, hidden, batch_size, epochs, out), nprocs=world,
                           join=False)
        deadline = time.monotonic() + DDP_TIMEOUT_S
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    if process.is_alive():
                        process.kill()
                return []
        with open(out) as handle:
            return list(json.load(handle))
