"""Frozen records passed between stages, and the state machines of versions, approvals and runs."""

from mlplat.records.data import *  # noqa: F403
from mlplat.records.data import __all__ as _data_all
from mlplat.records.deploy import *  # noqa: F403
from mlplat.records.deploy import __all__ as _deploy_all
from mlplat.records.model import *  # noqa: F403
from mlplat.records.model import __all__ as _model_all
from mlplat.records.run import *  # noqa: F403
from mlplat.records.run import __all__ as _run_all

__all__ = [*_model_all, *_run_all, *_data_all, *_deploy_all]
