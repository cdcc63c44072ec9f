"""The Open Inference Protocol v2 over gRPC: the service ``inference.GRPCInferenceService``.

``grpc_service.proto`` and ``model_config.proto`` are Triton's (a superset of KServe's
``grpc_predict_v2.proto``, with the same messages and field numbers), kept byte-identical to the
files ``tritonclient`` is built from: protobuf's default descriptor pool refuses a second file
that defines the same ``inference.*`` messages, so KServe's proto (or a different Triton
revision) would make ``import tritonclient.grpc`` and mlplat's gencode exclusive in one process.
Identical files load side by side (and share their message classes).

The ``*_pb2.py``/``*_pb2.pyi`` files are generated and checked in (no grpcio-tools at run time);
regenerate them with ``bash mlplat/serving/oip_grpc/regenerate.sh``. They are imported only
where gRPC is served (Serve's gRPC proxy, the ingress's gRPC methods, :mod:`.convert`).

mlplat serves five RPCs of the service: ServerLive, ServerReady, ModelReady, ModelMetadata and
ModelInfer (the ingress's methods of the same names, :mod:`mlplat.serving.grpc_ingress`).
:func:`add_GRPCInferenceServiceServicer_to_server` registers only those (the generated
registration would register all of Triton's RPCs), so any other RPC is gRPC's own
``UNIMPLEMENTED``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SERVICE", "RPCS", "SERVICER_FUNCTION", "add_GRPCInferenceServiceServicer_to_server"]

SERVICE = "inference.GRPCInferenceService"
#: The RPCs mlplat serves: name -> (request message, response message), names in grpc_service_pb2.
RPCS: dict[str, tuple[str, str]] = {
    "ServerLive": ("ServerLiveRequest", "ServerLiveResponse"),
    "ServerReady": ("ServerReadyRequest", "ServerReadyResponse"),
    "ModelReady": ("ModelReadyRequest", "ModelReadyResponse"),
    "ModelMetadata": ("ModelMetadataRequest", "ModelMetadataResponse"),
    "ModelInfer": ("ModelInferRequest", "ModelInferResponse"),
}
#: The import path Serve's ``gRPCOptions(grpc_servicer_functions=[...])`` takes.
SERVICER_FUNCTION = f"{__name__}.add_GRPCInferenceServiceServicer_to_server"


def add_GRPCInferenceServiceServicer_to_server(servicer: Any, server: Any) -> None:  # noqa: N802 (gRPC's naming)
    """Register :data:`RPCS` (unary-unary) of ``servicer`` on ``server``, as generated
    ``*_pb2_grpc`` code does. Serve's gRPC proxy calls it with a stand-in servicer and replaces
    every handler with one that forwards the request to the app's ingress method of the RPC's name."""
    import grpc

    from mlplat.serving.oip_grpc import grpc_service_pb2 as pb

    handlers = {
        rpc: grpc.unary_unary_rpc_method_handler(getattr(servicer, rpc),
                                                 request_deserializer=getattr(pb, request).FromString,
                                                 response_serializer=getattr(pb, response).SerializeToString)
        for rpc, (request, response) in RPCS.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if hasattr(server, "add_registered_method_handlers"):  # grpcio >= 1.62
        server.add_registered_method_handlers(SERVICE, handlers)
