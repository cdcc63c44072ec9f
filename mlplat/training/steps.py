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

__all__ = ["optimizer_flags", "graph_mode", "ddp_kwargs", "grad_sync_mode", "FlatGradSync", "step_capture", "EagerStep", "GraphStep", "StepProfiler", "targets",
           "graph_action", "GRAPH_WARMUP_STEPS", "MAX_GRAPH_SHAPES", "PROFILE_WARMUP_STEPS", "PROFILE_TOP_ROWS"]

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


def graph_mode(perf: PerformanceSpec, device_type: str, world: int, sync: str = "none",
               architecture: str = "mlp") -> tuple[bool, str | None]:
    """Whether the step runs as a CUDA graph, and a note when ``cuda_graphs: true`` was asked but
    the step stays eager (CPU, or DDP: its hooks and buckets are not captured). With more than one
    worker the step is captured only with ``sync == "flat"`` (:class:`FlatGradSync`: the
    all-reduce of one static buffer is recorded into the graph). ``auto`` captures where ``true``
    would, for the zoo's architectures only (a ``custom`` module's Python may branch per step),
    and stays eager elsewhere without a note.

    >>> graph_mode(PerformanceSpec(cuda_graphs=True), "cuda", 1)
    (True, None)
    >>> graph_mode(PerformanceSpec(cuda_graphs=True), "cuda", 2, "flat")
    (True, None)
    >>> graph_mode(PerformanceSpec(cuda_graphs=True), "cuda", 2, "ddp")[1]
    'performance.cuda_graphs: eager steps with 2 workers under DDP (graphs need grad_sync flat)'
    >>> graph_mode(PerformanceSpec(), "cuda", 1), graph_mode(PerformanceSpec(), "cuda", 2, "flat")
    ((True, None), (True, None))
    >>> graph_mode(PerformanceSpec(), "cpu", 1), graph_mode(PerformanceSpec(), "cuda", 2, "ddp")
    ((False, None), (False, None))
    >>> graph_mode(PerformanceSpec(), "cuda", 1, architecture="custom")
    (False, None)
    >>> graph_mode(PerformanceSpec(cuda_graphs=True), "cuda", 1, architecture="custom")
    (True, None)
    >>> graph_mode(PerformanceSpec(cuda_graphs=False), "cuda", 1)
    (False, None)
    """
    setting = perf.cuda_graphs
    if setting is False or (setting == "auto" and architecture == "custom"):
        return False, None
    explicit = setting is True
    if device_type != "cuda":
        return False, f"performance.cuda_graphs: eager steps on {device_type} (graphs need CUDA)" if explicit else None
    if world > 1 and sync != "flat":
        note = f"performance.cuda_graphs: eager steps with {world} workers under DDP (graphs need grad_sync flat)"
        return False, note if explicit else None
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


def step_capture(perf: PerformanceSpec, device_type: str, sync: str, dtypes: int, whole_step: bool) -> str:
    """What of an eager step is captured as a CUDA graph: ``"none"``, ``"all_reduce"`` (the
    flat sync's collective, ``performance.capture_grad_sync``) or ``"tail"`` (the collective,
    if any, and the optimizer update, ``performance.capture_optimizer``). Only on CUDA, with one
    worker or ``flat`` sync (DDP's hooks are not captured), gradients of one dtype (one flat
    buffer), and not when the whole step is a graph already (``cuda_graphs``).

    >>> p = PerformanceSpec()
    >>> step_capture(p, "cuda", "flat", 1, False), step_capture(p, "cuda", "none", 1, False)
    ('all_reduce', 'none')
    >>> step_capture(p, "cpu", "flat", 1, False), step_capture(p, "cuda", "ddp", 1, False), step_capture(p, "cuda", "flat", 1, True)
    ('none', 'none', 'none')
    >>> tail = PerformanceSpec(capture_optimizer=True)
    >>> step_capture(tail, "cuda", "none", 1, False), step_capture(tail, "cuda", "flat", 1, False), step_capture(tail, "cuda", "none", 2, False)
    ('tail', 'tail', 'none')
    """
    if device_type != "cuda" or sync not in ("none", "flat") or dtypes != 1 or whole_step:
        return "none"
    if perf.capture_optimizer:
        return "tail"
    return "all_reduce" if sync == "flat" and perf.capture_grad_sync else "none"


class FlatGradSync:
    """Gradients gathered into one flat buffer and, with ``world`` > 1, averaged over the
    workers. At construction (``world`` > 1) the parameters are broadcast from rank 0, as DDP
    does, so every worker starts from the same weights.

    A step is :meth:`zero` (gradients to None: the backward pass then writes fresh gradient
    tensors instead of one accumulate kernel per parameter), the backward pass, :meth:`gather`
    (one ``cat`` into the buffer), :meth:`all_reduce` (one collective that averages it: NCCL's
    AVG; SUM and a scale on gloo) and :meth:`expose` (every ``.grad`` becomes a view into the
    buffer, for the optimizer). The buffer's address never changes, so the all-reduce and the
    optimizer update that reads it can be replayed from a CUDA graph (:class:`EagerStep`)."""

    def __init__(self, model: Any, world: int):
        import torch

        self.params = [p for p in model.parameters() if p.requires_grad]
        self.world = world
        self.flat = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype,
                                device=self.params[0].device)
        self.views = self._split(self.flat)
        self._average = False
        if world > 1:
            import torch.distributed as dist

            weights = torch.cat([p.detach().reshape(-1) for p in self.params])
            dist.broadcast(weights, src=0)
            with torch.no_grad():
                for p, w in zip(self.params, self._split(weights), strict=True):
                    p.copy_(w)
            self._average = dist.get_backend() == "nccl"  # ReduceOp.AVG: NCCL only

    def _split(self, flat: Any) -> list[Any]:
        """``flat`` as one view per parameter, shaped like it."""
        views, offset = [], 0
        for p in self.params:
            views.append(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        return views

    def zero(self) -> None:
        for p in self.params:
            p.grad = None

    def gather(self) -> None:
        """The gradients, flattened into the buffer (one kernel); a parameter the step left
        without a gradient contributes zeros."""
        import torch

        grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel(), dtype=self.flat.dtype,
                                                                             device=self.flat.device)
                 for p in self.params]
        torch.cat(grads, out=self.flat)

    def all_reduce(self) -> None:
        """The buffer's mean over the workers, in place (nothing with one worker)."""
        if self.world <= 1:
            return
        import torch.distributed as dist

        if self._average:
            dist.all_reduce(self.flat, op=dist.ReduceOp.AVG)
        else:
            dist.all_reduce(self.flat)
            self.flat.mul_(1.0 / self.world)

    def expose(self) -> None:
        """Every parameter's gradient is its view into the (averaged) buffer."""
        for p, view in zip(self.params, self.views, strict=True):
            p.grad = view


class EagerStep:
    """One optimizer step per call, run op by op. With ``sync`` (a :class:`FlatGradSync`) the
    gradients go through its flat buffer (averaged over the workers when there are several)
    before the optimizer step.

    ``capture`` (CUDA, with ``sync``; :func:`step_capture`): after :data:`GRAPH_WARMUP_STEPS`
    eager steps (the optimizer's state exists by then), part of the step that reads only the
    buffer is captured once as a CUDA graph and replayed from then on: ``"all_reduce"`` (the
    NCCL call's ~0.2 ms of host time becomes a replay of a few microseconds) or ``"tail"`` (the
    all-reduce and the optimizer update; the optimizer must be built ``capturable``). The
    forward and backward passes stay eager (batches of any shape). Every worker captures at the
    same step (the count is deterministic). :attr:`note` says what was captured, or why the step
    stays eager when the capture fails."""

    def __init__(self, model: Any, optimizer: Any, criterion: Any, task: str, sync: FlatGradSync | None = None,
                 capture: str = "none"):
        self.model, self.optimizer, self.criterion, self.task, self.sync = model, optimizer, criterion, task, sync
        on_cuda = sync is not None and sync.flat.device.type == "cuda"
        self.capture = capture if on_cuda and capture in ("all_reduce", "tail") else "none"
        self._pending = self.capture != "none"
        self._graph: Any = None
        self._eager_steps = 0
        self.note: str | None = None

    @property
    def captured(self) -> bool:
        """Is part of the step replayed from a CUDA graph now?"""
        return self._graph is not None

    def __call__(self, x: Any, y: Any) -> Any:
        out = self.model(x)
        loss = self.criterion(out, targets(y, out, self.task))
        sync = self.sync
        if sync is None:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            return loss.detach()
        sync.zero()
        loss.backward()
        sync.gather()
        if self._graph is None and self._pending and self._eager_steps >= GRAPH_WARMUP_STEPS:
            self._capture_graph()
        if self._graph is not None:
            self._graph.replay()  # (the capture step too: a capture records without running)
            if self.capture == "all_reduce":
                sync.expose()
                self.optimizer.step()
            return loss.detach()
        sync.all_reduce()
        sync.expose()
        self.optimizer.step()
        self._eager_steps += 1
        return loss.detach()

    def _capture_graph(self) -> None:
        import torch

        sync = self.sync
        assert sync is not None
        self._pending = False
        try:
            torch.cuda.synchronize()
            sync.expose()
            graph = torch.cuda.CUDAGraph()
            # thread_local: Ray's and NCCL's own threads may touch CUDA while this one captures
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                sync.all_reduce()
                if self.capture == "tail":
                    self.optimizer.step()
        except Exception as exc:  # stay eager, say so
            self.note = f"performance: capturing the step's {self.capture} failed, eager steps ({type(exc).__name__}: {exc})"[:500]
            return
        self._graph = graph
        setting = "capture_grad_sync" if self.capture == "all_reduce" else "capture_optimizer"
        self.note = f"the step's {self.capture} is replayed from a CUDA graph (performance.{setting})"


#: Batch shapes a :class:`GraphStep` captures (the full batch, an epoch's partial last batch and
#: a validation-free remainder or two); a shape past these steps eagerly.
MAX_GRAPH_SHAPES = 4


class GraphStep:
    """The whole step (forward, backward, optimizer; with ``sync``, the gradients' all-reduce too)
    as one CUDA graph per batch shape, replayed per batch.

    The first :data:`GRAPH_WARMUP_STEPS` batches are ordinary (eager) steps on a side stream; the
    next one is copied into static input buffers, captured, and replayed -- as is every later
    batch of the capture's shape. A batch of another shape (an epoch's last, partial batch: the
    same shape every epoch) is captured into a graph of its own the first time it comes, up to
    :data:`MAX_GRAPH_SHAPES` graphs; past those it steps eagerly (:attr:`eager_batches` counts them). Every graph reads and writes the
    same parameters, optimizer state and (with sync) flat buffer, and each has its own memory
    pool, so they replay in any order. With several workers every one captures at the same step:
    the counts are deterministic and shards hold equal row counts. If a capture fails, the step
    stays eager from then on and :attr:`note` says why."""

    def __init__(self, model: Any, optimizer: Any, criterion: Any, task: str, sync: FlatGradSync | None = None):
        self.eager = EagerStep(model, optimizer, criterion, task, sync)
        self._graphs: dict[tuple[Any, ...], tuple[Any, Any, Any, Any]] = {}  # shape -> graph, x, y, loss
        self._seen: dict[tuple[Any, ...], int] = {}  # eager steps taken per shape, before its capture
        self.failed = False
        self.note: str | None = None
        self.eager_batches = 0  # batches stepped eagerly after the first capture (shapes past the limit)

    @property
    def graph_shapes(self) -> int:
        """How many batch shapes are captured."""
        return len(self._graphs)

    def __call__(self, x: Any, y: Any) -> Any:
        import torch

        if self.failed:
            return self.eager(x, y)
        key = (tuple(x.shape), tuple(y.shape), x.dtype, y.dtype)
        captured = self._graphs.get(key)
        if captured is None:
            action = graph_action(self._seen.get(key, 0), len(self._graphs))
            if action == "eager":
                self.eager_batches += 1
                return self.eager(x, y)
            if action == "warm":
                self._seen[key] = self._seen.get(key, 0) + 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    loss = self.eager(x, y)
                torch.cuda.current_stream().wait_stream(side)
                return loss
            try:
                captured = self._capture(key, x, y)
            except Exception as exc:  # an op that cannot be captured: stay eager, say so
                self.failed = True
                self.note = f"performance.cuda_graphs: capture failed, eager steps ({type(exc).__name__}: {exc})"[:500]
                return self.eager(x, y)
        graph, sx, sy, sloss = captured
        sx.copy_(x, non_blocking=True)
        sy.copy_(y, non_blocking=True)
        graph.replay()
        return sloss.detach().clone()  # the static loss is overwritten by the next replay: a copy

    def _capture(self, key: tuple[Any, ...], x: Any, y: Any) -> tuple[Any, Any, Any, Any]:
        import torch

        sx, sy = x.detach().clone(), y.detach().clone()
        torch.cuda.synchronize()
        eager = self.eager
        sync = eager.sync
        eager.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool
        if sync is not None:
            sync.zero()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            out = eager.model(sx)
            sloss = eager.criterion(out, targets(sy, out, eager.task))
            sloss.backward()
            if sync is not None:  # gather, all-reduce (NCCL records into the graph), views
                sync.gather()
                sync.all_reduce()
                sync.expose()
            eager.optimizer.step()
        captured = (graph, sx, sy, sloss)
        self._graphs[key] = captured
        inside = "forward, backward, all-reduce, optimizer" if sync is not None and sync.world > 1 else "forward, backward, optimizer"
        self.note = f"the whole step ({inside}) is replayed from a CUDA graph (performance.cuda_graphs)"
        return captured


def graph_action(eager_steps_of_shape: int, graphs: int) -> str:
    """What :class:`GraphStep` does with a batch whose shape has no graph yet: ``"warm"`` (an
    eager step on a side stream), ``"capture"`` or ``"eager"`` (past :data:`MAX_GRAPH_SHAPES`).
    The first shape warms up :data:`GRAPH_WARMUP_STEPS` steps (the optimizer's state and the
    capture stream's cuBLAS workspace come to exist); a later shape is captured the first time it
    comes (nothing left to build lazily), so the epoch after the first replays every batch.

    >>> [graph_action(n, 0) for n in range(GRAPH_WARMUP_STEPS + 1)]
    ['warm', 'warm', 'warm', 'capture']
    >>> graph_action(0, 1), graph_action(0, MAX_GRAPH_SHAPES - 1), graph_action(0, MAX_GRAPH_SHAPES)
    ('capture', 'capture', 'eager')
    """
    if graphs >= MAX_GRAPH_SHAPES:
        return "eager"
    if graphs == 0 and eager_steps_of_shape < GRAPH_WARMUP_STEPS:
        return "warm"
    return "capture"


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
