"""FlatGradSync (performance.grad_sync: flat) against PyTorch DDP: two CPU processes over gloo,
no Ray. The same start (rank 0's weights broadcast), different data per rank, a few SGD steps:
the flat path must end with DDP's weights, and identical weights on both ranks."""

from __future__ import annotations

import os
import socket

import pytest

torch = pytest.importorskip("torch")
mp = pytest.importorskip("torch.multiprocessing")

STEPS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _train(rank: int, world: int, port: int, mode: str, out: dict) -> None:
    import torch.distributed as dist

    from mlplat.models import ModelSpec, build_model, loss_fn
    from mlplat.training.config import PerformanceSpec
    from mlplat.training.steps import EagerStep, FlatGradSync, ddp_kwargs

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different starts: the sync must broadcast rank 0's
        model = build_model(ModelSpec(task="binary", hidden=[16, 8]), 5)
        if mode == "flat-unused":  # a parameter the forward pass never uses: no gradient, zeros in the buffer
            model.unused = torch.nn.Parameter(torch.ones(3))
        sync = None
        if mode == "ddp":
            model = torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs(PerformanceSpec(), "mlp"))
        else:
            sync = FlatGradSync(model, world)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # SGD: sensitive to the gradient scale
        step = EagerStep(model, optimizer, loss_fn("binary"), "binary", sync, capture="all_reduce")  # capture: CUDA only
        gen = torch.Generator().manual_seed(7 + rank)
        for _ in range(STEPS):
            x = torch.randn(32, 5, generator=gen)
            y = (torch.rand(32, generator=gen) > 0.5).float()
            step(x, y)
        net = getattr(model, "module", model)
        if sync is not None:  # the optimizer read the averaged buffer: every .grad is a view of it
            assert all(p.grad.data_ptr() == v.data_ptr() for p, v in zip(sync.params, sync.views, strict=True))
            assert not step.captured
        out[(mode, rank)] = {k: v.detach().clone() for k, v in net.state_dict().items() if k != "unused"}
    finally:
        dist.destroy_process_group()


def _worker(rank: int, world: int, port: int, mode: str, queue) -> None:
    out: dict = {}
    _train(rank, world, port, mode, out)
    queue.put({f"{m}:{r}": {k: v.numpy() for k, v in sd.items()} for (m, r), sd in out.items()})


def _run(mode: str) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(rank, 2, port, mode, queue)) for rank in range(2)]
    for p in procs:
        p.start()
    got: dict = {}
    for _ in procs:
        got.update(queue.get(timeout=120))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return got


def test_flat_grad_sync_matches_ddp_and_keeps_ranks_equal():
    import numpy as np

    flat, ddp, unused = _run("flat"), _run("ddp"), _run("flat-unused")
    for key in flat["flat:0"]:
        np.testing.assert_array_equal(flat["flat:0"][key], flat["flat:1"][key])  # ranks agree exactly
        np.testing.assert_allclose(flat["flat:0"][key], ddp["ddp:0"][key], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(unused["flat-unused:0"][key], ddp["ddp:0"][key], rtol=1e-5, atol=1e-6)
