"""The ingress's Open Inference Protocol v2 gRPC methods, ``inference.GRPCInferenceService``
through Serve's gRPC proxy (``serve.grpc_port``): ServerLive, ServerReady, ModelReady,
ModelMetadata and ModelInfer.

Serve calls the ingress method named after the RPC with the request message and a
``grpc_context`` (its invocation metadata in, status code, details and trailing metadata out).
Each method runs the HTTP routes' own internals -- the bearer token (metadata
``authorization: Bearer <token>``), route resolution, :func:`~mlplat.serving.request.parse_v2`,
admission, prediction, telemetry and metrics -- through the transport-neutral core
(:class:`~mlplat.serving.infer_call.InferCall`). An error is the HTTP path's
``RequestError`` as a gRPC status (:func:`~mlplat.serving.oip_grpc.convert.status_code`) with
its message as the details and its field in the trailing metadata ``x-mlplat-error-field``.
Health answers without a token, as over HTTP. The gencode is imported on first use only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from mlplat.serving.infer_call import InferAnswer, InferCall
from mlplat.serving.request import RequestError

if TYPE_CHECKING:
    from mlplat.config import ServeSettings

__all__ = ["GrpcInference", "ERROR_FIELD_KEY"]

log = logging.getLogger("mlplat.serving")

#: Trailing metadata naming the offending input of an error (the HTTP error body's ``field``).
ERROR_FIELD_KEY = "x-mlplat-error-field"


def _modules() -> tuple[Any, Any]:
    from mlplat.serving.oip_grpc import convert
    from mlplat.serving.oip_grpc import grpc_service_pb2 as pb

    return pb, convert


def _serve_request_id() -> str | None:
    """Serve's id of this request (the client's ``request_id`` metadata, or one Serve made),
    which the proxy returns in the trailing metadata ``request_id``; None outside Serve."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:  # a private accessor of Serve's: never fail a request over it
        return None


def _ascii(text: str, limit: int = 256) -> str:
    """Metadata values are printable ASCII."""
    return text[:limit].encode("ascii", "backslashreplace").decode("ascii")


def _fail(context: Any, exc: RequestError, empty: Any, retry_after_s: int) -> Any:
    """Answer ``exc`` as a gRPC status (Serve sends the code and details set on the context
    instead of the returned message)."""
    _, convert = _modules()
    context.set_code(convert.status_code(exc.status))
    context.set_details(exc.message)
    trailing = [(ERROR_FIELD_KEY, _ascii(exc.field))] if exc.field else []
    if exc.status == 503:
        trailing.append(("retry-after", str(retry_after_s)))
    if trailing:
        context.set_trailing_metadata(trailing)
    return empty


class GrpcInference:
    """Mixed into the ingress deployment (the methods it calls are the ingress's)."""

    if TYPE_CHECKING:
        _serve: ServeSettings

        async def _ensure_started(self) -> None: ...

        async def _metadata_of(self, headers: Mapping[str, str], name: str, version: int | None) -> dict[str, Any]: ...

        async def _admitted(self, call: InferCall, name: str, version: int | None) -> InferAnswer: ...

    async def ServerLive(self, request: Any) -> Any:  # noqa: N802 (the RPC's name)
        pb, _ = _modules()
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any) -> Any:  # noqa: N802
        """Ready once the routes are loaded (as ``GET /v2/health/ready``)."""
        pb, _ = _modules()
        try:
            await asyncio.wait_for(self._ensure_started(), timeout=5)
        except Exception:
            return pb.ServerReadyResponse(ready=False)
        return pb.ServerReadyResponse(ready=True)

    async def _answer(self, rpc: str, context: Any, empty: Any, work: Callable[[], Awaitable[Any]]) -> Any:
        """``work``'s response, or its RequestError as a status; an unexpected error is the HTTP
        app's generic 503 (UNAVAILABLE), never a stack trace."""
        try:
            return await work()
        except RequestError as exc:
            return _fail(context, exc, empty, self._serve.retry_after_s)
        except Exception:
            log.exception("unexpected error in %s", rpc)
            return _fail(context, RequestError(503, "internal error; the request was not processed: retry, or call "
                                                    "the operator if it persists"), empty, self._serve.retry_after_s)

    async def ModelReady(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """Ready when the model (version) resolves; an unknown one is NOT_FOUND."""
        pb, convert = _modules()

        async def ready() -> Any:
            headers, _ = convert.call_headers(grpc_context.invocation_metadata())
            await self._metadata_of(headers, request.name, convert.model_version(request.version))
            return pb.ModelReadyResponse(ready=True)

        return await self._answer("ModelReady", grpc_context, pb.ModelReadyResponse(), ready)

    async def ModelMetadata(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """The inputs (one per raw feature, or the encoded ``input``) and the output, as over HTTP."""
        pb, convert = _modules()

        async def metadata() -> Any:
            headers, _ = convert.call_headers(grpc_context.invocation_metadata())
            document = await self._metadata_of(headers, request.name, convert.model_version(request.version))
            return convert.metadata_response(document)

        return await self._answer("ModelMetadata", grpc_context, pb.ModelMetadataResponse(), metadata)

    async def ModelInfer(self, request: Any, grpc_context: Any) -> Any:  # noqa: N802
        """OIP v2 inference on the production version (``model_version`` empty, a canary may
        answer) or on one version; telemetry records it with endpoint ``grpc``, the caller from
        ``x-mlplat-caller`` and the call context from ``x-mlplat-context-*`` metadata."""
        pb, convert = _modules()
        limit = self._serve.max_request_bytes

        async def read_payload() -> dict[str, Any]:
            size = request.ByteSize()
            if size > limit:
                raise RequestError(413, f"the request is {size} bytes; the limit is {limit} bytes: send fewer rows "
                                        "per request")
            return convert.payload_of(request)

        async def infer() -> Any:
            headers, raw_headers = convert.call_headers(grpc_context.invocation_metadata())
            request_id = _serve_request_id()
            if request_id:
                headers["x-request-id"] = request_id
            version = convert.model_version(request.model_version)
            call = InferCall("grpc", headers, raw_headers, read_payload)
            return convert.infer_response(await self._admitted(call, request.model_name, version))

        return await self._answer("ModelInfer", grpc_context, pb.ModelInferResponse(), infer)
