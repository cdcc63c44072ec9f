"""Online inference on Ray Serve: one ingress (OIP v2 + v1 predict), a multiplexed pool for
the long tail and dedicated deployments for hot models."""

from mlplat.serving.app import apply_serve_env, build_app, serve_env, serving_status, start_serving, stop_serving
from mlplat.serving.request import InputSchema, RequestError, parse_json_body, parse_v1, parse_v2

__all__ = [
    "build_app",
    "start_serving",
    "serving_status",
    "stop_serving",
    "serve_env",
    "apply_serve_env",
    "InputSchema",
    "RequestError",
    "parse_json_body",
    "parse_v1",
    "parse_v2",
]
