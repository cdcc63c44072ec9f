"""Validation metrics: a re-export of :mod:`mlplat.models.metrics` (layer 2), where the code
lives so that monitoring computes the same metrics on live outcomes without importing validation.
"""

from __future__ import annotations

from mlplat.models import metrics as _metrics
from mlplat.models.metrics import *  # noqa: F403
from mlplat.models.metrics import _EPS, _Accumulator, _clean, _Sample  # noqa: F401  (private names, kept importable)

__all__ = list(_metrics.__all__)
