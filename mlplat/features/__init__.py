"""Feature sets: encoder specs, fit on Ray Data, JSON fitted encoders, point-in-time joins,
splits and reference statistics.

The apply path (:class:`FeatureEncoder`) is pure pyarrow/Python and imports no Ray, so
serving and validation load it cheaply from ``encoder.json``.
"""

from mlplat.features.encoders import (
    BUILTIN_ENCODERS,
    Encoder,
    NumericEncoder,
    build_encoder,
    encoder_class,
    register_encoder,
    stable_hash,
)
from mlplat.features.feature_encoder import FeatureEncoder

__all__ = [
    "BUILTIN_ENCODERS",
    "Encoder",
    "FeatureEncoder",
    "NumericEncoder",
    "build_encoder",
    "encoder_class",
    "register_encoder",
    "stable_hash",
]
