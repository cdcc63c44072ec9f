"""Build small servable model versions through the real storage, bundle and registry paths.

The builders live in bench/builders.py (the serving benchmarks use them too); this module keeps
the tests' import path."""

from __future__ import annotations

from bench.builders import ENCODER_SPECS, FAULTS, RAW_ROW, fitted_encoder, register_servable

__all__ = ["ENCODER_SPECS", "FAULTS", "RAW_ROW", "fitted_encoder", "register_servable"]
