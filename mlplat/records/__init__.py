"""Frozen records passed between stages, and the model-version state machine."""

from mlplat.records.data import *  # noqa: F403
from mlplat.records.data import __all__ as _data_all
from mlplat.records.model import *  # noqa: F403
from mlplat.records.model import __all__ as _model_all

__all__ = [*_model_all, *_data_all]
