"""How one training step runs on its device: optimizer flags, DDP arguments, the eager step, the
CUDA-graph step (``performance.cuda_graphs``) and the step profiler (``performance.profile_steps``).

Decisions are pure functions (:func:`optimizer_flags`, :func:`graph_mode`, :func:`ddp_kwargs`);
the step objects take ``(x, y)`` and return the batch's loss as a device tensor (never a host
number: no host-device sync per step).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from mlplat.training.config import PerformanceSpec

__all__ = ["optimizer_flags", "graph_mode", "ddp_kwargs", "grad_sync_mode", "FlatGradSync", "EagerStep", "GraphStep", "StepProfiler", "targets",
           "GRAPH_WARMUP_STEPS", "PROFILE_WARMUP_STEPS", "PROFILE_TOP_ROWS"]

#: Eager steps on a side stream before the capture (PyTorch's whole-network capture recipe: the
#: optimizer's lazily built state and cuBLAS workspaces exist before the graph records them).
GRAPH_WARMUP_STEPS = 3
PROFILE_WARMUP_STEPS = 3  # steps before the profiler starts recording (first-step allocations left out)
PROFILE_TOP_ROWS = 15


def targets(y: Any, out: Any, task: str) -> Any:
    return y if task == "multiclass" else y.reshape(out.shape)


def optimizer_flags(name: str, device_type: str, fused: bool, graphs: bool) -> dict[str, Any]:
    """Extra keyword arguments of the optimizer for a device: fused kernels on CUDA (one launch per
    step), or a graph-safe state (``capturable``: step counters on the device) when the step is
    captured as a CUDA graph. Nothing on CPU.

    >>> optimizer_flags("adam", "cpu", True, False), optimizer_flags("adam", "cuda", True, False)
    ({}, {'fused': True})
    >>> optimizer_flags("adamw", "cuda", True, True), optimizer_flags("sgd", "cuda", True, True)
    ({'capturable': True, 'foreach': True}, {'foreach': True})
    """
    if device_type != "cuda":
        return {}
    if graphs:
        return {"capturable": True, "foreach": True} if name in ("adam", "adamw") else {"foreach": True}
    return {"fused": True} if fused else {}


def graph_mode(perf: PerformanceSpec, device_type: str, world: int) -> tuple[bool, str | None]:
    """Whether the step runs as a CUDA graph, and a note when ``cuda_graphs`` was asked but the
    step stays eager (CPU, or DDP: capturing NCCL all-reduces needs settings Ray Train's process
    group does not make).

    >>> graph_mode(PerformanceSpec(cuda_graphs=True), "cuda", 1)
    (True, None)
    >>> graph_mode(PerformanceSpec(cuda_graphs=True), "cuda", 2)[1]
    'performance.cuda_graphs: eager steps with 2 workers (DDP is not captured)'
    >>> graph_mode(PerformanceSpec(), "cuda", 1)
    (False, None)
    """
    if not perf.cuda_graphs:
        return False, None
    if device_type != "cuda":
        return False, f"performance.cuda_graphs: eager steps on {device_type} (graphs need CUDA)"
    if world > 1:
        return False, f"performance.cuda_graphs: eager steps with {world} workers (DDP is not captured)"
    return True, None


def ddp_kwargs(perf: PerformanceSpec, architecture: str) -> dict[str, Any]:
    """DDP's keyword arguments: gradients as views into the all-reduce buckets (one copy less per
    step), the bucket size, and ``static_graph`` (auto: the zoo's models use every parameter every
    step; a ``custom`` module may not).

    >>> ddp_kwargs(PerformanceSpec(), "mlp")
    {'gradient_as_bucket_view': True, 'static_graph': True}
    >>> ddp_kwargs(PerformanceSpec(ddp_bucket_cap_mb=4, ddp_static_graph=False), "mlp")
    {'gradient_as_bucket_view': True, 'bucket_cap_mb': 4.0}
    >>> ddp_kwargs(PerformanceSpec(), "custom")
    {'gradient_as_bucket_view': True}
    """
    kwargs: dict[str, Any] = {"gradient_as_bucket_view": True}
    if perf.ddp_bucket_cap_mb is not None:
        kwargs["bucket_cap_mb"] = float(perf.ddp_bucket_cap_mb)
    static = perf.ddp_static_graph if perf.ddp_static_graph is not None else architecture != "custom"
    if static:
        kwargs["static_graph"] = True
    return kwargs




def grad_sync_mode(perf: PerformanceSpec, world: int, param_bytes: int, dtypes: int, buffers: int) -> str:
    """How ``world`` workers average gradients (``performance.grad_sync``): ``none`` (one
    worker), ``flat`` (:class:`FlatGradSync`) or ``ddp``. ``auto`` picks ``flat`` for parameters
    that fit in one DDP bucket, of one dtype (``dtypes`` distinct), in a model without buffers.

    >>> p = PerformanceSpec()
    >>> grad_sync_mode(p, 1, 10**6, 1, 0), grad_sync_mode(p, 2, 10**6, 1, 0), grad_sync_mode(p, 2, 10**9, 1, 0)
    ('none', 'flat', 'ddp')
    >>> grad_sync_mode(p, 2, 10**6, 1, 2), grad_sync_mode(p, 2, 10**6, 2, 0)  # buffers; mixed dtypes
    ('ddp', 'ddp')
    >>> grad_sync_mode(PerformanceSpec(grad_sync="ddp"), 2, 10**6, 1, 0)
    'ddp'
    >>> grad_sync_mode(PerformanceSpec(grad_sync="flat", ddp_bucket_cap_mb=1), 2, 10**8, 1, 0)
    'flat'
    """
    if world <= 1:
        return "none"
    if perf.grad_sync != "auto":
        if perf.grad_sync == "flat" and dtypes > 1:
            return "ddp"  # one flat buffer holds one dtype
        return perf.grad_sync
    cap_bytes = (perf.ddp_bucket_cap_mb or 25.0) * 2**20
    return "flat" if param_bytes <= cap_bytes and dtypes == 1 and buffers == 0 else "ddp"


class FlatGradSync:
    """Every trainable parameter's gradient as a view into one flat buffer: :meth:`zero` is one
    kernel, :meth:`reduce` one all-reduce and one scale (the mean over workers, as DDP's). At
    construction the parameters are broadcast from rank 0, as DDP does, so every worker starts
    from the same weights. Optimizers must not set the gradients to None (``EagerStep`` zeroes
    through :meth:`zero` instead)."""

    def __init__(self, model: Any, world: int):
        import torch
        import torch.distributed as dist

        params = [p for p in model.parameters() if p.requires_grad]
        self.world = world
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        weights = torch.cat([p.detach().reshape(-1) for p in params])
        dist.broadcast(weights, src=0)
        offset = 0
        with torch.no_grad():
            for p in params:
                n = p.numel()
                p.copy_(weights[offset:offset + n].view_as(p))
                p.grad = self.flat[offset:offset + n].view_as(p)
                offset += n

    def zero(self) -> None:
        self.flat.zero_()

    def reduce(self) -> None:
        import torch.distributed as dist

        dist.all_reduce(self.flat)
        self.flat.mul_(1.0 / self.world)


class EagerStep:
    """One optimizer step per call, run op by op (``sync``: a :class:`FlatGradSync` averages the
    gradients over the workers between the backward pass and the optimizer step)."""

    def __init__(self, model: Any, optimizer: Any, criterion: Any, task: str, sync: FlatGradSync | None = None):
        self.model, self.optimizer, self.criterion, self.task, self.sync = model, optimizer, criterion, task, sync

    def __call__(self, x: Any, y: Any) -> Any:
        out = self.model(x)
        loss = self.criterion(out, targets(y, out, self.task))
        if self.sync is None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:
            self.sync.zero()
            loss.backward()
            self.sync.reduce()
        self.optimizer.step()
        return loss.detach()


class GraphStep:
    """The whole step (forward, backward, optimizer) as one CUDA graph, replayed per batch.

    The first :data:`GRAPH_WARMUP_STEPS` batches are ordinary (eager) steps on a side stream; the
    next one is copied into static input buffers, captured, and replayed -- as is every later
    batch. Every batch must have the capture's shape (the caller drops partial batches). If the
    capture fails, the step stays eager from then on and :attr:`note` says why."""

    def __init__(self, model: Any, optimizer: Any, criterion: Any, task: str):
        self.eager = EagerStep(model, optimizer, criterion, task)
        self._graph: Any = None
        self._static: tuple[Any, Any, Any] | None = None  # x, y, loss
        self._warm = 0
        self.failed = False
        self.note: str | None = None

    def __call__(self, x: Any, y: Any) -> Any:
        import torch

        if self.failed:
            return self.eager(x, y)
        if self._graph is None:
            if self._warm < GRAPH_WARMUP_STEPS:
                self._warm += 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    loss = self.eager(x, y)
                torch.cuda.current_stream().wait_stream(side)
                return loss
            try:
                self._capture(x, y)
            except Exception as exc:  # an op that cannot be captured: stay eager, say so
                self.failed, self._graph = True, None
                self.note = f"performance.cuda_graphs: capture failed, eager steps ({type(exc).__name__}: {exc})"[:500]
                return self.eager(x, y)
        assert self._static is not None
        sx, sy, sloss = self._static
        if x.shape != sx.shape:
            raise ValueError(f"CUDA graph step captured for batches of shape {tuple(sx.shape)}, got {tuple(x.shape)}")
        sx.copy_(x, non_blocking=True)
        sy.copy_(y, non_blocking=True)
        self._graph.replay()
        return sloss.detach().clone()  # the static loss is overwritten by the next replay: a copy

    def _capture(self, x: Any, y: Any) -> None:
        import torch

        sx, sy = x.detach().clone(), y.detach().clone()
        torch.cuda.synchronize()
        eager = self.eager
        eager.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = eager.model(sx)
            sloss = eager.criterion(out, targets(sy, out, eager.task))
            sloss.backward()
            eager.optimizer.step()
        self._graph, self._static = graph, (sx, sy, sloss)


class StepProfiler:
    """``torch.profiler`` over ``steps`` training steps (after :data:`PROFILE_WARMUP_STEPS`):
    call :meth:`step` after each step and :meth:`finish` at the end of the epoch; then
    :attr:`trace` (Chrome trace JSON bytes) and :attr:`table` (top kernels/ops by self time on
    the device, or on the CPU when there is none) hold the result."""

    def __init__(self, steps: int, device_type: str):
        self.steps, self.device_type = steps, device_type
        self.seen = 0
        self.recorded = 0
        self._prof: Any = None
        self.trace: bytes | None = None
        self.table: str | None = None
        self.error: str | None = None  # the profiler failed (e.g. no CUPTI): training goes on without it

    def step(self) -> None:
        self.seen += 1
        if self._prof is not None:
            self.recorded += 1
            if self.recorded >= self.steps:
                self.finish()
        elif self.seen == PROFILE_WARMUP_STEPS and self.trace is None and self.error is None:
            try:
                self._start()
            except Exception as exc:  # a profile is advisory: never fail the step on it
                self._prof, self.error = None, f"{type(exc).__name__}: {exc}"

    def _start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device_type == "cuda" else [])
        self._prof = profile(activities=activities)
        self._prof.__enter__()

    def finish(self) -> None:
        """Stop (if recording) and keep the trace and the table; idempotent."""
        import torch

        if self._prof is None:
            return
        if self.device_type == "cuda":
            torch.cuda.synchronize()
        prof, self._prof = self._prof, None
        try:
            prof.__exit__(None, None, None)
            with tempfile.TemporaryDirectory(prefix="mlplat-profile-") as tmp:
                path = os.path.join(tmp, "trace.json")
                prof.export_chrome_trace(path)
                with open(path, "rb") as handle:
                    self.trace = handle.read()
            self.table = top_table(prof, self.device_type, self.recorded)
        except Exception as exc:  # advisory, as above
            self.error = f"{type(exc).__name__}: {exc}"


def top_table(prof: Any, device_type: str, steps: int) -> str:
    """The top :data:`PROFILE_TOP_ROWS` ops by self device time (CUDA) or self CPU time."""
    averages = prof.key_averages()
    keys = (["self_device_time_total", "self_cuda_time_total"] if device_type == "cuda" else []) + ["self_cpu_time_total"]
    for key in keys:
        try:
            text = averages.table(sort_by=key, row_limit=PROFILE_TOP_ROWS)
        except (AttributeError, KeyError, ValueError, RuntimeError):
            continue
        return f"{steps} steps, sorted by {key}\n{text}"
    return f"{steps} steps (no sortable column)\n{averages.table(row_limit=PROFILE_TOP_ROWS)}"
