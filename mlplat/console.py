"""What the CLI and ``make demo`` print: their own lines, not Ray's INFO logs; and training
progress (per-epoch lines in a terminal, a tqdm bar in a notebook).

Ray's libraries log INFO lines to the driver's stderr: ``ray.init``'s banner, Ray Data's
execution plan and stats (~50 lines for the demo), Serve's deployment steps, and every worker's
output (``log_to_driver``). :func:`quiet_ray` keeps warnings and errors and drops the rest;
``--verbose`` (or ``MLPLAT_VERBOSE=1``) leaves Ray as it is, progress bars included. Notebooks and
scripts that never call it keep Ray's defaults.

Most of Ray's knobs are read once -- when ``ray.init`` runs, when a library is imported, or in
each worker from its environment -- so :func:`quiet_ray` must run before Ray starts; a Platform
reads :func:`ray_init_options` when it starts Ray.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TextIO

from mlplat.records import Run, RunState

__all__ = ["VERBOSE_ENV", "RAY_LOGGERS", "verbose_requested", "quiet_ray", "is_quiet", "ray_init_options",
           "EpochLines", "EpochBar", "RunWatcher", "format_epoch", "follow_run"]

#: ``MLPLAT_VERBOSE=1`` is the same as ``--verbose``.
VERBOSE_ENV = "MLPLAT_VERBOSE"
#: The loggers of Ray and its libraries in the driver process.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve")

# Read by Ray Data when it configures its loggers (at import, and in each worker, which inherits
# the driver's environment) and when it creates its DataContext: quiet Ray Data everywhere.
_QUIET_ENV = {"RAY_DATA_LOG_LEVEL": "WARNING", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}

_quiet = False


class _DropOurOwnNotice(logging.Filter):
    """Ray Data warns "Progress bars disabled. To enable, set ..." because quiet mode disabled
    them; the way back here is ``--verbose``, so that one warning is not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Progress bars disabled")


class _WarningsAndUp(logging.Filter):
    """On Serve's logger itself: Serve resets that logger's level and handlers when it is
    imported (after :func:`quiet_ray`), but a logger's filters stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


_NOTICE_FILTER = _DropOurOwnNotice()
_SERVE_FILTER = _WarningsAndUp()


def verbose_requested(flag: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """``--verbose`` given, or ``MLPLAT_VERBOSE`` set to a true value (1, true, yes, on).

    >>> verbose_requested(False, {"MLPLAT_VERBOSE": "1"}), verbose_requested(False, {"MLPLAT_VERBOSE": ""})
    (True, False)
    >>> verbose_requested(True, {})
    True
    """
    value = (os.environ if environ is None else environ).get(VERBOSE_ENV, "")
    return flag or value.strip().lower() in ("1", "true", "yes", "on")


def quiet_ray(verbose: bool) -> None:
    """Quiet Ray for this process (``verbose=False``): warnings and errors still show; INFO
    lines, Ray Data's progress bars and the workers' output (still in Ray's log files under
    the session directory) do not. ``verbose=True`` changes nothing: Ray's own defaults.

    Call it before Ray starts (the CLI and the demo call it first thing); environment
    variables a user set (``RAY_DATA_LOG_LEVEL``, ...) win over these defaults.
    """
    global _quiet
    _quiet = not verbose
    if verbose:
        return
    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    # no import of Ray here: loggers by name
    for logger_name, log_filter in (("ray.data._internal.progress", _NOTICE_FILTER), ("ray.serve", _SERVE_FILTER)):
        logger = logging.getLogger(logger_name)
        if log_filter not in logger.filters:
            logger.addFilter(log_filter)
    _settle()


def is_quiet() -> bool:
    """Whether :func:`quiet_ray` quieted this process."""
    return _quiet


def _settle() -> None:
    """Quiet the loggers of Ray libraries imported already (a library configures its loggers
    when imported). Warnings and errors pass."""
    if not _quiet:
        return
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        if name == "ray.data" and "ray.data" in sys.modules:
            # keep its DEBUG file log (ray-data.log); quiet only what reaches the terminal
            for handler in logger.handlers:
                if isinstance(handler, logging.StreamHandler):
                    handler.setLevel(logging.WARNING)
            continue
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    if "ray.data" in sys.modules:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False


def ray_init_options() -> dict[str, Any]:
    """Extra ``ray.init`` arguments for this process's console: when quiet, the driver's ``ray``
    logger at WARNING (no banner) and no worker output relayed to the driver; else none."""
    if not _quiet:
        return {}
    return {"logging_level": logging.WARNING, "log_to_driver": False}


# -- training progress ----------------------------------------------------------------------------


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) and abs(value) >= 1e-3 else f"{value:.4g}"
    return str(value)


def format_epoch(metrics: Mapping[str, Any], epochs: int | None) -> str:
    """One line for one epoch's reported metrics: 1-based epoch of ``epochs``, the losses and
    metrics, the epoch's seconds.

    >>> format_epoch({"epoch": 0, "train_loss": 0.69314, "train_rows": 3200, "epoch_s": 0.91, "val_loss": 0.6}, 5)
    'epoch 1/5  train_loss 0.6931  val_loss 0.6000  (3200 rows, 0.9 s)'
    >>> format_epoch({"epoch": 2, "train_loss": "nan"}, None)
    'epoch 3  train_loss nan'
    """
    epoch = metrics.get("epoch")
    head = f"epoch {epoch + 1}" if isinstance(epoch, int) and not isinstance(epoch, bool) else "epoch ?"
    if epochs:
        head += f"/{epochs}"
    skip = {"epoch", "train_rows", "epoch_s"}
    parts = [head] + [f"{k} {_number(v)}" for k, v in metrics.items()
                      if k not in skip and (isinstance(v, (int, float, str)))]
    tail = []
    if isinstance(metrics.get("train_rows"), int):
        tail.append(f"{metrics['train_rows']} rows")
    if isinstance(metrics.get("epoch_s"), (int, float)):
        tail.append(f"{metrics['epoch_s']:.1f} s")
    line = "  ".join(parts)
    return f"{line}  ({', '.join(tail)})" if tail else line


class RunWatcher(Protocol):
    """What :func:`follow_run` tells as a run goes on."""

    def state(self, run: Run) -> None:
        """The run's state changed (QUEUED -> RUNNING -> ...)."""

    def epoch(self, metrics: Mapping[str, Any], epochs: int | None) -> None:
        """An epoch ended with these metrics (as the training loop reported them)."""

    def close(self) -> None:
        """The run ended, or following it stopped."""


class EpochLines:
    """One line per state change and per epoch, for terminals and logs (the CLI)."""

    def __init__(self, echo: Callable[[str], Any] | None = None, *, indent: str = "  "):
        self._echo = echo or print
        self._indent = indent

    def state(self, run: Run) -> None:
        where = f" (#{run.queue_position} in queue)" if run.state == RunState.QUEUED and run.queue_position else ""
        self._echo(f"{self._indent}run {run.run_id} {run.state.value}{where}")

    def epoch(self, metrics: Mapping[str, Any], epochs: int | None) -> None:
        self._echo(self._indent + format_epoch(metrics, epochs))

    def close(self) -> None:
        pass


class EpochBar:
    """A tqdm bar over the epochs with the last losses beside it (``tqdm.auto``: a widget in
    Jupyter, text in a terminal)."""

    def __init__(self, *, desc: str = "training", file: TextIO | None = None):
        self._desc, self._file = desc, file
        self._bar: Any = None

    def state(self, run: Run) -> None:
        if self._bar is not None:
            self._bar.set_description(f"{self._desc} ({run.state.value.lower()})")

    def epoch(self, metrics: Mapping[str, Any], epochs: int | None) -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=epochs, desc=self._desc, unit="epoch", file=self._file)
        shown = {k: _number(v) for k, v in metrics.items() if k in ("train_loss", "val_loss", "val_accuracy")}
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def follow_run(run_status: Callable[[str], Run], run_id: str, watcher: RunWatcher, *, timeout_s: float | None = None,
               poll_s: float = 1.0) -> Run:
    """Poll ``run_status(run_id)`` (e.g. ``Platform.run_status``: the run record with its live
    progress) until the run ends, telling ``watcher`` each state change and each epoch once;
    returns the final record. Raises TimeoutError after ``timeout_s`` (the run goes on).

    >>> run = p.train("configs/train-example.yaml")                               # doctest: +SKIP
    >>> follow_run(p.run_status, run.run_id, EpochBar())                          # doctest: +SKIP
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    shown: set[int] = set()
    last_state: RunState | None = None
    try:
        while True:
            run = run_status(run_id)
            if run.state != last_state and not run.state.is_terminal:
                watcher.state(run)
                last_state = run.state
            progress = run.progress or {}
            epochs = progress.get("epochs") if isinstance(progress.get("epochs"), int) else None
            for metrics in progress.get("history") or []:
                epoch = metrics.get("epoch") if isinstance(metrics, Mapping) else None
                if isinstance(epoch, int) and epoch not in shown:
                    shown.add(epoch)
                    watcher.epoch(metrics, epochs)
            if run.state.is_terminal:
                return run
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {run.state.value} after {timeout_s:g} s")
            time.sleep(poll_s)
    finally:
        watcher.close()
