"""The canary traffic split and per-version live stats, pure (no Ray, no I/O).

:func:`routes_to_canary` sends a fixed share of requests to the canary version. A request with a
key (:func:`request_key`: a configured feature of its first row, else the caller header) is sticky:
the same key always lands on the same side for a given percent, in every replica and process
(:func:`canary_bucket` hashes with blake2b, not the per-process salted ``hash()``); raising the
percent only moves keys from production to the canary. A request without a key is a random draw.

:class:`VersionStats` counts one version's requests, errors, latencies (a fixed log-spaced
histogram, :data:`LATENCY_BUCKETS_MS`) and the running mean/variance of its scalar predictions.
Stats from several replicas merge exactly (:meth:`VersionStats.merged`) and cross process
boundaries as JSON.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "LATENCY_BUCKETS_MS",
    "CANARY_BUCKETS",
    "canary_bucket",
    "routes_to_canary",
    "request_key",
    "VersionStats",
]

#: Upper bounds (ms, inclusive) of the latency histogram: 60 log-spaced buckets from 0.1 ms to
#: 60 s, each about 1.25x the one before (4 significant digits). Slower requests fall in one more
#: overflow bucket. A quantile is known to within one bucket, i.e. about 25%.
LATENCY_BUCKETS_MS: tuple[float, ...] = tuple(float(f"{x:.4g}") for x in np.geomspace(0.1, 60_000.0, 60))
#: :func:`canary_bucket` returns ``0 .. CANARY_BUCKETS - 1``; one bucket is 0.01% of traffic.
CANARY_BUCKETS = 10_000
_STATS_KEYS = ("requests", "errors", "latency_counts", "pred_n", "pred_mean", "pred_m2")


def canary_bucket(key: str) -> int:
    """The key's traffic bucket, ``0 .. 9999``: the same in every process and Python run.

    >>> canary_bucket("alice"), canary_bucket("bob")
    (4287, 2638)
    """
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=b"mlplat-canary").digest()
    return int.from_bytes(digest, "big") % CANARY_BUCKETS


def routes_to_canary(key: str | None, percent: float, *, rng: random.Random | None = None) -> bool:
    """Does this request go to the canary when the canary takes ``percent`` (0-100) of traffic?
    A keyed request is sticky (:func:`canary_bucket`); ``key=None`` draws from ``rng`` (default:
    the module-level :mod:`random`).

    >>> routes_to_canary("k", 0), routes_to_canary("k", 100), routes_to_canary("alice", 42.87), routes_to_canary("alice", 42.88)
    (False, True, False, True)
    >>> routes_to_canary(None, 50, rng=random.Random(0))
    False
    >>> routes_to_canary("k", 101)
    Traceback (most recent call last):
    ...
    ValueError: canary percent must be between 0 and 100, got 101
    """
    if not 0.0 <= percent <= 100.0:  # also rejects NaN
        raise ValueError(f"canary percent must be between 0 and 100, got {percent!r}")
    if percent == 0.0:
        return False
    if percent == 100.0:
        return True
    if key is None:
        return (rng or random).random() * 100.0 < percent
    return canary_bucket(key) < round(percent * 100)


def request_key(caller: str | None, first_row: Mapping[str, Any] | None, key_feature: str | None) -> str | None:
    """The sticky routing key of a request: the ``key_feature`` value of its first row when that
    is present and not null (None or NaN), else the caller header when non-empty, else None.

    >>> request_key("svc-a", {"user_id": 42}, "user_id"), request_key("svc-a", {"user_id": None}, "user_id")
    ('42', 'svc-a')
    >>> request_key("", {"user_id": 42}, None) is None
    True
    """
    if key_feature and first_row is not None:
        value = first_row.get(key_feature)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return str(value)
    return caller or None


def _scalar(prediction: Any) -> float | None:
    """One prediction as a float: a number itself, a row (list/array: multiclass probabilities or
    several outputs) its largest finite element; None when there is no finite number."""
    if isinstance(prediction, (list, tuple, np.ndarray)):
        try:
            row = np.asarray(prediction, dtype=float).ravel()
        except (TypeError, ValueError):
            return None
        row = row[np.isfinite(row)]
        return float(row.max()) if row.size else None
    if isinstance(prediction, (bool, str, bytes)) or prediction is None:
        return None
    try:
        value = float(prediction)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _chan(n_a: int, mean_a: float, m2_a: float, n_b: int, mean_b: float, m2_b: float) -> tuple[int, float, float]:
    """Chan et al.'s parallel merge of two (count, mean, sum of squared deviations) moments."""
    n = n_a + n_b
    if n_b == 0:
        return n_a, mean_a, m2_a
    if n_a == 0:
        return n_b, mean_b, m2_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta * delta * n_a * n_b / n


@dataclass
class VersionStats:
    """One model version's live counters (mutable; one per replica, merged for a decision).

    ``latency_counts[i]`` counts requests with latency <= ``LATENCY_BUCKETS_MS[i]`` (and above the
    previous bound); the last element is the overflow bucket. ``pred_*`` are Welford moments of the
    scalar predictions (see :meth:`record`).

    >>> s = VersionStats(); s.record(12.0, ok=True, predictions=[0.2, 0.4]); s.record(30.0, ok=False)
    >>> s.requests, s.errors, s.error_rate, s.pred_n, round(s.pred_mean, 6), s.latency_quantile_ms(0.5)
    (2, 1, 0.5, 2, 0.3, 14.27)
    """

    requests: int = 0
    errors: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1))
    pred_n: int = 0
    pred_mean: float = 0.0
    pred_m2: float = 0.0

    def record(self, latency_ms: float, *, ok: bool, predictions: Sequence[Any] | None = None) -> None:
        """Count one request. ``predictions``: one entry per row, a number or a row of numbers (for
        a row, its maximum is used: the top-class probability of a classifier). Non-finite and
        non-numeric entries are skipped. A NaN latency counts in the overflow bucket."""
        self.requests += 1
        if not ok:
            self.errors += 1
        index = len(LATENCY_BUCKETS_MS) if math.isnan(latency_ms) else bisect.bisect_left(LATENCY_BUCKETS_MS, latency_ms)
        self.latency_counts[index] += 1
        if predictions is None or len(predictions) == 0:  # not `not predictions`: a numpy array has no truth value
            return
        values = [v for v in (_scalar(p) for p in predictions) if v is not None]
        if values:
            batch = np.asarray(values, dtype=float)
            mean = float(batch.mean())
            m2 = float(((batch - mean) ** 2).sum())
            self.pred_n, self.pred_mean, self.pred_m2 = _chan(self.pred_n, self.pred_mean, self.pred_m2, batch.size, mean, m2)

    def merged(self, other: VersionStats) -> VersionStats:
        """A new object holding both stats (neither input changes).

        >>> a, b = VersionStats(), VersionStats()
        >>> a.record(1.0, ok=True, predictions=[1.0]); b.record(2.0, ok=False, predictions=[3.0])
        >>> m = a.merged(b); m.requests, m.errors, m.pred_mean, m.prediction_std, a.requests
        (2, 1, 2.0, 1.0, 1)
        """
        n, mean, m2 = _chan(self.pred_n, self.pred_mean, self.pred_m2, other.pred_n, other.pred_mean, other.pred_m2)
        return VersionStats(requests=self.requests + other.requests, errors=self.errors + other.errors,
                            latency_counts=[a + b for a, b in zip(self.latency_counts, other.latency_counts, strict=True)],
                            pred_n=n, pred_mean=mean, pred_m2=m2)

    @property
    def error_rate(self) -> float:
        """Errors / requests; 0.0 with no requests.

        >>> VersionStats().error_rate, VersionStats(requests=4, errors=1).error_rate
        (0.0, 0.25)
        """
        return self.errors / self.requests if self.requests else 0.0

    def latency_quantile_ms(self, q: float) -> float | None:
        """The upper bound of the bucket holding the ``q``-quantile (the ``ceil(q * n)``-th smallest
        latency; ``inf`` when that is in the overflow bucket); None with no latencies.

        >>> s = VersionStats()
        >>> for ms in (1.0, 1.0, 1.0, 100.0): s.record(ms, ok=True)
        >>> s.latency_quantile_ms(0.5), s.latency_quantile_ms(0.99), VersionStats().latency_quantile_ms(0.5)
        (1.195, 108.6, None)
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be between 0 and 1, got {q!r}")
        total = sum(self.latency_counts)
        if total == 0:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for index, count in enumerate(self.latency_counts):
            seen += count
            if seen >= rank:
                return LATENCY_BUCKETS_MS[index] if index < len(LATENCY_BUCKETS_MS) else math.inf
        return math.inf  # unreachable: seen reaches total

    @property
    def prediction_std(self) -> float:
        """Population standard deviation of the scalar predictions; 0.0 with none.

        >>> VersionStats(pred_n=4, pred_mean=1.0, pred_m2=4.0).prediction_std
        1.0
        """
        return math.sqrt(self.pred_m2 / self.pred_n) if self.pred_n else 0.0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (:meth:`from_json` reads it back).

        >>> VersionStats.from_json(VersionStats(requests=1, errors=0, latency_counts=[1] + [0] * 60).to_json()).requests
        1
        """
        return {"requests": self.requests, "errors": self.errors, "latency_counts": list(self.latency_counts),
                "pred_n": self.pred_n, "pred_mean": self.pred_mean, "pred_m2": self.pred_m2}

    @classmethod
    def from_json(cls, data: Any) -> VersionStats:
        """Read :meth:`to_json`'s dict back; ValueError naming the first bad key.

        >>> VersionStats.from_json({"requests": 1})
        Traceback (most recent call last):
        ...
        ValueError: version stats: missing key(s) ['errors', 'latency_counts', 'pred_m2', 'pred_mean', 'pred_n']
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"version stats: expected a mapping, got {type(data).__name__}")
        missing, unknown = sorted(set(_STATS_KEYS) - set(data)), sorted(set(data) - set(_STATS_KEYS), key=str)
        if missing or unknown:
            raise ValueError(f"version stats: {'missing' if missing else 'unknown'} key(s) {missing or unknown}")

        def count(key: str, value: Any) -> int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"version stats: {key} must be a non-negative integer, got {value!r}")
            return value

        def real(key: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"version stats: {key} must be a finite number, got {value!r}")
            return float(value)

        buckets = data["latency_counts"]
        if not isinstance(buckets, (list, tuple)) or len(buckets) != len(LATENCY_BUCKETS_MS) + 1:
            got = f"{len(buckets)} counts" if isinstance(buckets, (list, tuple)) else type(buckets).__name__
            raise ValueError(f"version stats: latency_counts must be a list of {len(LATENCY_BUCKETS_MS) + 1} counts, got {got}")
        stats = cls(requests=count("requests", data["requests"]), errors=count("errors", data["errors"]),
                    latency_counts=[count("latency_counts", c) for c in buckets], pred_n=count("pred_n", data["pred_n"]),
                    pred_mean=real("pred_mean", data["pred_mean"]), pred_m2=real("pred_m2", data["pred_m2"]))
        if stats.errors > stats.requests or sum(stats.latency_counts) != stats.requests or stats.pred_m2 < 0:
            raise ValueError(f"version stats: inconsistent counts (requests={stats.requests}, errors={stats.errors}, "
                             f"latencies={sum(stats.latency_counts)}, pred_m2={stats.pred_m2})")
        return stats
