"""The HTTP ingress: Open Inference Protocol v2 + a simple v1 predict, bearer-token auth,
body limits, input validation, version resolution (production, regional production, a sticky
canary share), telemetry, canary stats, pre-warm of ingress-placed models, and the admin
routes (rollback without a Ray driver), in one Serve deployment; OIP v2 over gRPC too
(grpc_ingress.py), through the same transport-neutral inference core (``_admitted``)."""


import asyncio
import functools
import hmac
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.requests import ClientDisconnect
from starlette.requests import Request as StarletteRequest

from mlplat.config import PlatformConfig
from mlplat.errors import MlplatError
from mlplat.serving import http_api as api
from mlplat.serving.admission import Admission, inference_limit
from mlplat.serving.cache import ModelCache
from mlplat.serving.coalesce import Coalescer
from mlplat.serving.deployments import run_prediction
from mlplat.serving.direct import DIRECT_ONGOING_METRIC, DirectServer, direct_app
from mlplat.serving.grpc_ingress import GrpcInference
from mlplat.serving.http_api import http_app
from mlplat.serving.infer_call import InferAnswer, InferCall, first_row, header_map
from mlplat.serving.ingress_routes import ControlRoutes
from mlplat.serving.ingress_routes import error as _error
from mlplat.serving.metrics import UNKNOWN_MODEL, ServingMetrics
from mlplat.serving.oip_binary import HEADER_LENGTH, binary_output_requested, binary_response, decode_request
from mlplat.serving.request import ParsedRequest, RequestError, parse_json_body, parse_v1, parse_v2
from mlplat.serving.routes import ModelRoutes, RegistryReader, Route, RouteTable, actor_registry_reader
from mlplat.serving.runtime import freeze_gc, load_servable, tune_gc
from mlplat.serving.telemetry import (
    MAX_CONTEXT_VALUE_CHARS,
    MAX_HEADER_CHARS,
    TelemetryWriter,
    context_from_headers,
    request_id_of,
)
from mlplat.serving.telemetry_catalog import CatalogSync, catalog_registrar
from mlplat.serving.telemetry_flush import TelemetryFlusher
from mlplat.serving.traffic import VersionStats, request_key, routes_to_canary
from mlplat.serving.warmup import Prewarmer, check_probe, probe_rows, reference_stats_of, replica_identity
from mlplat.storage import open_root

__all__ = ["Ingress", "http_app", "schema_of_bundle", "ingress_deployment_name"]

log = logging.getLogger("mlplat.serving")


#: Starlette's JSONResponse encoding (compact, UTF-8, NaN refused), built once: ``json.dumps``
#: with these options makes a new encoder on every call.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))


class _Json(JSONResponse):
    """A JSONResponse whose body comes from the shared encoder (the same bytes)."""

    def render(self, content: Any) -> bytes:
        return _JSON_ENCODER.encode(content).encode("utf-8")


def schema_of_bundle(storage: Any, name: str, version: int, bundle_sha256: str | None):
    """Read bundle.json only (never weights) and derive the request schema."""
    import json

    from mlplat.features import FeatureEncoder
    from mlplat.models.bundle import BUNDLE_FILE, bundle_dir
    from mlplat.serving.request import InputSchema
    from mlplat.storage import sha256_bytes

    try:
        raw = storage.read_bytes(*bundle_dir(name, version), BUNDLE_FILE)
    except MlplatError as exc:  # storage unreachable, or the registered bundle gone: retry later, never a 500
        log.warning("model %s v%s: cannot read its bundle: %s: %s", name, version, type(exc).__name__, exc)
        raise RequestError(503, f"model {name} v{version} cannot be loaded now (its storage did not answer); "
                                "retry with backoff") from None
    if bundle_sha256 is not None and sha256_bytes(raw) != bundle_sha256:
        raise RequestError(503, f"model {name} v{version}: bundle.json does not match the registry's sha256")
    meta = json.loads(raw)
    encoder = FeatureEncoder.from_json(meta["encoder"]) if meta.get("encoder") else None
    return InputSchema.from_encoder(encoder, int(meta["input_dim"])), meta["spec"]["task"]


#: An ingress replica forgets a canary's stats this long after its last request (it ended).
CANARY_STATS_TTL_S = 600.0


def ingress_deployment_name(region: str | None) -> str:
    """``ingress`` for the global app, ``ingress-<region>`` for a regional cell (the deployer
    reads an app's region from it)."""
    return f"ingress-{region}" if region else "ingress"


def _unavailable(route: Route, exc: BaseException) -> RequestError:
    """A 503 for a model that cannot answer; the cause (paths, internals) goes to the log only."""
    log.warning("model %s cannot serve: %s: %s", route.serving_id, type(exc).__name__, exc)
    return RequestError(503, f"model {route.serving_id} cannot serve now; retry with backoff, or call the "
                             "operator if it persists")


def _registry_of_actor(actor_name: str, namespace: str) -> Any:
    """The synchronous registry over the ingress's registry actor (the flush thread's catalog
    calls); found by name, never created here. Defined above the class: Serve pickles the
    deployment class when it is decorated, with the module globals that exist then."""
    import ray

    from mlplat.registry import ActorRegistry

    return ActorRegistry(ray.get_actor(actor_name, namespace=namespace), retry_s=10.0,
                         description=f"actor {namespace}/{actor_name}")


@serve.deployment(name="ingress")
@serve.ingress(http_app)
class Ingress(ControlRoutes, GrpcInference):
    def __init__(self, config: PlatformConfig, registry_actor: str, pool: Any, dedicated: dict[str, Any],
                 reader: RegistryReader | None = None):
        """``reader``: how routes read the registry; by default the actor named ``registry_actor``
        (a test passes an in-memory reader instead)."""
        tune_gc(config.serve.gc_threshold)
        self._config, self._serve = config, config.serve
        self._token = config.api_token.get_secret_value().encode() if config.api_token else None
        self._admin_token = config.admin_token.get_secret_value().encode() if config.admin_token else None
        self._storage = open_root(config.root, config.s3)
        self._pool, self._dedicated = pool, dict(dedicated)
        calls = self._serve.pool.calls_per_model
        self._pool_calls = Coalescer(self._call_pool, max_in_flight=calls, max_batch=self._serve.pool.max_coalesced) \
            if calls else None
        if reader is None:
            reader = actor_registry_reader(registry_actor, config.namespace)
        self._reader = reader
        self._routes = RouteTable(reader, lambda n, v, sha: schema_of_bundle(self._storage, n, v, sha),
                                  refresh_s=self._serve.route_refresh_s, region=self._serve.region,
                                  wait_s=self._serve.route_wait_s)
        self._telemetry = TelemetryWriter(self._storage, max_rows=self._serve.telemetry_max_rows,
                                          encoded=self._serve.telemetry_encoded) if self._serve.telemetry else None
        self._context_keys = (frozenset(self._serve.telemetry_context_keys)
                              if self._serve.telemetry_context_keys is not None else None)
        self._catalog: CatalogSync | None = None
        if self._telemetry is not None and self._serve.telemetry_catalog:
            # the catalog takes a synchronous Registry: the registry actor, reached from the catalog
            # thread (started with the flush loop), every call under a timeout; never the flush itself
            self._catalog = CatalogSync(
                catalog_registrar(self._storage, lambda: _registry_of_actor(registry_actor, config.namespace),
                                  timeout_s=self._serve.telemetry_catalog_timeout_s),
                interval_s=self._serve.telemetry_catalog_interval_s,
                on_error=functools.partial(self._telemetry.count_error, "catalog"))
        self._flusher = TelemetryFlusher(self._telemetry, self._catalog, flush_s=self._serve.telemetry_flush_s) \
            if self._telemetry is not None else None
        self._metrics = ServingMetrics(telemetry=self._telemetry, interval_s=self._serve.metrics_interval_s,
                                       max_latencies=self._serve.metrics_max_latencies) if self._serve.metrics else None
        if self._metrics is not None:
            self._metrics.start_soon()
        self._local = ModelCache(lambda n, v, sha: load_servable(self._storage, n, v, sha), per_name=2)
        #: deployment id -> version -> live stats of this replica since the canary started
        self._canary_stats: dict[str, dict[int, VersionStats]] = {}
        self._canary_dirty: set[str] = set()
        self._canary_seen: dict[str, float] = {}  # deployment id -> monotonic time of its last request
        try:
            self._target, self._replica = replica_identity()
        except Exception:  # built outside Serve (a unit test)
            self._target, self._replica = f"{self._serve.app_name}/{ingress_deployment_name(self._serve.region)}", "local"
        self._prewarmer = Prewarmer(reader, target=self._target, replica=self._replica, warm=self._warm,
                                    pin_previous=lambda n, v: self._local.pin(n, v, self._serve.keep_previous_s),
                                    unpin=self._local.unpin,
                                    refresh_s=self._serve.route_refresh_s, wait_s=self._serve.route_wait_s)
        self._prewarmer.start_soon()
        self._started: asyncio.Task | None = None
        self._ready = False
        self._admission = Admission(inference_limit(self._serve.ingress_max_ongoing_requests,
                                                    self._serve.ingress_health_headroom))
        self._freeze_pending = False
        self._direct: DirectServer | None = None
        if self._serve.direct_port:
            app = direct_app(self._direct_infer, self._direct_fallback, self._serve.route_prefix)
            self._direct = DirectServer(app, self._serve.host, self._serve.direct_port,
                                        timeout_keep_alive_s=min(5.0, self._serve.haproxy_timeout_client_s),
                                        header_timeout_s=self._serve.body_read_timeout_s,
                                        balance_connections=self._serve.direct_balance_connections)
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # built outside Serve (a unit test): no loop, no direct port
                self._direct = None
            else:
                self._direct.start()  # a port taken by another program fails the replica here

    # -- the direct data plane (serving/direct.py) ---------------------------------------------
    async def _direct_infer(self, request: StarletteRequest, name: str, endpoint: str) -> Response:
        return await self._infer(request, name, None, endpoint)

    async def _direct_fallback(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self._asgi_app(scope, receive, send)  # type: ignore[attr-defined]  # set by @serve.ingress

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's custom autoscaling metrics: this replica's requests in flight on the direct
        port, time-averaged since the previous report (the ingress's policy adds them to the
        requests Serve counted, direct.py)."""
        return {DIRECT_ONGOING_METRIC: self._direct.average_in_flight() if self._direct is not None else 0.0}

    async def __del__(self) -> None:
        """Serve stops the replica: stop the direct port (requests in flight finish)."""
        direct: DirectServer | None = getattr(self, "_direct", None)
        if direct is not None:
            await direct.stop()

    async def _ensure_started(self) -> None:
        if self._ready:
            return
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        await self._routes.start()
        self._prewarmer.ensure_running()
        loop = asyncio.get_running_loop()
        if self._flusher is not None:
            loop.create_task(self._flusher.run())
        if self._catalog is not None:
            self._catalog.start()
        if self._metrics is not None:
            self._metrics.start_soon()
        loop.create_task(self._report_canary_stats())
        self._ready = True
        self._heap_grew()

    def _heap_grew(self) -> None:
        """Start-up or a model load made the long-lived heap grow: freeze it once this turn of
        the event loop is over (``serve.gc_freeze``, runtime.freeze_gc)."""
        if not self._serve.gc_freeze or self._freeze_pending:
            return
        self._freeze_pending = True

        def freeze() -> None:
            self._freeze_pending = False
            freeze_gc()

        asyncio.get_running_loop().call_soon(freeze)

    async def _warm(self, name: str, version: int, bundle_sha256: str | None, feature_set: tuple[str, int] | None) -> None:
        """Pre-warm a version placed in the ingress: load it here, answer the probe, pin it."""
        model = await self._local.get(name, version, bundle_sha256)
        self._heap_grew()
        reference = await asyncio.get_running_loop().run_in_executor(None, reference_stats_of, self._storage, feature_set)
        rows = probe_rows(model.schema, reference)
        # in a thread: a larger model's forward pass must not stall this replica's requests
        predictions = await asyncio.get_running_loop().run_in_executor(None, model.predict_rows, rows)
        check_probe(predictions, len(rows))
        self._local.pin(name, version, self._serve.keep_previous_s)

    async def _report_canary_stats(self) -> None:
        """While canaries run: this replica's cumulative per-version stats, one event per
        deployment every ``canary_report_s`` (the controller keeps the latest per replica)."""
        while True:
            await asyncio.sleep(self._serve.canary_report_s)
            for deployment in sorted(self._canary_dirty):
                versions = self._canary_stats.get(deployment, {})
                try:
                    await self._reader.append_event("canary_stats", f"deployment:{deployment}", {
                        "target": self._target, "replica": self._replica,
                        "versions": {str(v): stats.to_json() for v, stats in versions.items()}})
                    self._canary_dirty.discard(deployment)
                except Exception:  # the registry is restarting: report next time
                    log.debug("canary stats report failed", exc_info=True)
            # Cumulative stats are dropped only when the canary has had no request for a while
            # (it ended): dropping them earlier would make this replica's counts start over.
            idle = time.monotonic() - CANARY_STATS_TTL_S
            for deployment in [d for d, seen in self._canary_seen.items() if seen < idle and d not in self._canary_dirty]:
                self._canary_stats.pop(deployment, None)
                self._canary_seen.pop(deployment, None)

    # -- guards ---------------------------------------------------------------------------
    def _check_auth(self, headers: Mapping[str, str]) -> None:
        """The inference token from ``authorization`` (an HTTP header, or gRPC metadata)."""
        if self._token is None:
            if self._serve.allow_anonymous:
                return
            raise RequestError(401, "no API token is configured on the server (MLPLAT_API_TOKEN); requests are refused")
        header = headers.get("authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), self._token):
            raise RequestError(401, "missing or wrong bearer token: send 'Authorization: Bearer <MLPLAT_API_TOKEN>'")

    async def _read_json(self, request: Request, headers: Mapping[str, str], v2: bool = False) -> Any:
        limit = self._serve.max_request_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"request body is {declared} bytes; the limit is {limit} bytes")
        chunks, size = [], 0
        deadline_s = self._serve.body_read_timeout_s
        try:  # a slow or broken client must not hold a slot: the whole body within the deadline
            async with asyncio.timeout(deadline_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise RequestError(413, f"request body exceeds the limit of {limit} bytes")
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestError(408, f"the request body did not arrive within {deadline_s:g} s "
                                    f"({size} bytes received{f' of {declared}' if declared else ''})") from None
        except ClientDisconnect:
            raise RequestError(400, "the client disconnected before sending the whole request body") from None
        body, split = b"".join(chunks), headers.get(HEADER_LENGTH) if v2 else None
        if split is not None:  # the OIP v2 binary tensor data extension: tensors after the JSON header
            return decode_request(body, split, max_bytes=limit, max_depth=self._serve.max_json_depth)
        return parse_json_body(body, max_bytes=limit, max_depth=self._serve.max_json_depth)

    # -- inference --------------------------------------------------------------------------
    async def _infer(self, request: Request, name: str, version: int | None, endpoint: str) -> Response:
        """An HTTP inference through the transport-neutral core (``_admitted``), as a response."""
        raw_headers = request.scope["headers"]
        headers = header_map(raw_headers)  # one pass; Starlette's Headers scans the list on every get
        call = InferCall(endpoint, headers, raw_headers, lambda: self._read_json(request, headers, endpoint == "v2"))
        try:
            answer = await self._admitted(call, name, version)
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.field, retry_after_s=self._serve.retry_after_s)
        out_headers = {"x-mlplat-model-version": str(answer.version)}
        incoming_id = headers.get("x-request-id")  # Serve sets it, and returns it as the response's x-request-id
        if incoming_id is None or (answer.oip_id is None and answer.request_id != incoming_id):
            out_headers["x-request-id"] = answer.request_id  # outside Serve's proxy, or a header it could not use
        if endpoint == "v1":
            return _Json({"model_name": name, "model_version": str(answer.version), "predictions": answer.predictions},
                         headers=out_headers)
        datatype, shape, flat = answer.output()
        document = {"model_name": name, "model_version": str(answer.version), "id": answer.request_id,
                    "outputs": [{"name": "predictions", "shape": shape, "datatype": datatype, "data": flat}]}
        return binary_response(document, out_headers) if answer.binary_out else _Json(document, headers=out_headers)

    async def _admitted(self, call: InferCall, name: str, version: int | None) -> InferAnswer:
        """Admission first: past the replica's inference limit the answer is an immediate 503
        with Retry-After (the slots above the limit stay free for health and metadata). Raises
        RequestError for every answer but a prediction."""
        if not self._admission.try_enter():
            self._count_request(name, None, 503, time.perf_counter())
            raise RequestError(503, f"the server is at capacity ({self._admission.limit} requests in flight); "
                                    f"retry after {self._serve.retry_after_s} s")
        try:
            return await self._infer_call(call, name, version)
        finally:
            self._admission.leave()

    async def _infer_call(self, call: InferCall, name: str, version: int | None) -> InferAnswer:
        """Token, route (a canary share when one runs), payload, parse, prediction, then the
        telemetry, metrics and canary stats of the answer: HTTP's and gRPC's one inference path."""
        started = time.perf_counter()
        routes: ModelRoutes | None = None
        route: Route | None = None
        arm: str | None = None  # the canary split's choice, when a canary runs
        headers = call.headers
        try:
            self._check_auth(headers)
            await self._ensure_started()
            payload = None
            if version is None:
                routes = await self._routes.routes(name)
                route = routes.production
                if routes.canary is not None:
                    payload = await call.read_payload()
                    key = request_key(headers.get("x-mlplat-caller"), first_row(payload, routes.canary_key),
                                      routes.canary_key)
                    if routes_to_canary(None if key is None else f"{name}:{key}", routes.canary_percent):
                        route = routes.canary
                    arm = "canary" if route is routes.canary else "production"  # counted once answered
            else:
                route = await self._routes.resolve(name, version)
            if payload is None:
                payload = await call.read_payload()
            parse = parse_v1 if call.endpoint == "v1" else parse_v2
            parsed = parse(payload, route.schema, max_instances=self._serve.max_instances)
            binary_out = call.endpoint == "v2" and binary_output_requested(payload)
            try:
                result = await self._call_backend(route, parsed)
            except RequestError:
                raise
            except Exception as exc:  # a model that raises in the ingress: a 503 that counts against its version
                log.warning("model %s failed: %s: %s", route.serving_id, type(exc).__name__, exc)
                raise RequestError(503, f"model {route.serving_id} failed; retry, or call the operator if it persists") from None
        except RequestError as exc:
            if exc.status >= 500 and route is not None and routes is not None and routes.canary_deployment:
                self._record_canary(routes.canary_deployment, route.version, started, ok=False)
            self._count_request(name, route, exc.status, started)
            raise
        except Exception:
            self._count_request(name, route, 503, started)  # the transport answers 503
            raise
        predictions, answered = result["predictions"], result["version"]
        latency_ms = (time.perf_counter() - started) * 1000
        if routes is not None and routes.canary_deployment:
            self._record_canary(routes.canary_deployment, answered, started, ok=True, predictions=predictions)
        request_id = request_id_of(parsed.request_id, headers.get("x-request-id"))
        if self._telemetry is not None:
            self._telemetry.record(
                name, answered, parsed.rows, predictions, request_id=request_id,
                caller=headers.get("x-mlplat-caller", "")[:MAX_HEADER_CHARS] or None, endpoint=call.endpoint,
                latency_ms=latency_ms, region=self._serve.region,
                user_agent=headers.get("user-agent", "")[:MAX_CONTEXT_VALUE_CHARS] or None,
                context=context_from_headers(call.raw_headers, keys=self._context_keys),
                kinds=route.schema.columns, matrix=parsed.matrix, bundle_sha256=route.bundle_sha256)
        if self._metrics is not None:
            self._metrics.request(name, answered, 200, latency_ms)
            if arm is not None:
                self._metrics.canary(name, answered, arm)
        return InferAnswer(name, answered, route.task, request_id, parsed.request_id, predictions, binary_out)

    def _count_request(self, name: str, route: Route | None, status: int, started: float) -> None:
        """A request's metrics; the model tag only for a name that resolved (no series from
        client input), the version only when one was chosen."""
        if self._metrics is not None:
            self._metrics.request(name if route is not None else UNKNOWN_MODEL, route.version if route is not None else 0,
                                  status, (time.perf_counter() - started) * 1000)

    def _record_canary(self, deployment: str, version: int, started: float, *, ok: bool,
                       predictions: list[Any] | None = None) -> None:
        stats = self._canary_stats.setdefault(deployment, {}).setdefault(version, VersionStats())
        stats.record((time.perf_counter() - started) * 1000, ok=ok, predictions=predictions)
        self._canary_dirty.add(deployment)
        self._canary_seen[deployment] = time.monotonic()

    async def _call_backend(self, route: Route, parsed: ParsedRequest) -> dict[str, Any]:
        if route.placement == "ingress":
            model = await self._local_model(route)
            try:
                return {"predictions": run_prediction(model, {"rows": parsed.rows, "matrix": parsed.matrix}),
                        "version": route.version}
            except MlplatError as exc:
                raise _unavailable(route, exc) from None
        body = {"rows": parsed.rows, "matrix": parsed.matrix, "version": route.version, "bundle_sha256": route.bundle_sha256}
        handle = self._dedicated.get(route.name) if route.placement == "dedicated" else None
        deadline = asyncio.get_running_loop().time() + self._serve.backend_timeout_s  # the retry gets what is left
        for attempt in range(2):  # one retry: a replica that died mid-request is replaced
            try:  # queue + inference by the deadline (the timeout cancels the request; no extra task)
                async with asyncio.timeout_at(deadline):
                    if handle is not None:
                        return await handle.predict.remote(body)
                    if self._pool_calls is not None:
                        return await self._pool_calls.submit(route.serving_id, body)
                    return await self._pool.options(multiplexed_model_id=route.serving_id).predict.remote(body)
            except BackPressureError:
                raise RequestError(503, f"model {route.serving_id} is at capacity; retry with backoff") from None
            except TimeoutError:
                raise RequestError(503, f"model {route.serving_id} did not answer within "
                                        f"{self._serve.backend_timeout_s:g} s; retry with backoff") from None
            except RayActorError:
                if attempt:
                    raise RequestError(503, f"model {route.serving_id} backend restarting; retry") from None
            except MlplatError as exc:
                raise _unavailable(route, exc) from None
            except Exception as exc:  # RayTaskError wrapping a load/predict failure
                cause = getattr(exc, "cause", exc)
                if isinstance(cause, RequestError):
                    raise cause from None
                raise _unavailable(route, cause) from None
        raise AssertionError("unreachable")

    async def _call_pool(self, serving_id: str, bodies: list[dict[str, Any]]) -> list[Any]:
        """One pool call for the requests coalesced for a version (serving/coalesce.py)."""
        async with asyncio.timeout(self._serve.backend_timeout_s):
            return await self._pool.options(multiplexed_model_id=serving_id).predict_many.remote(bodies)

    async def _local_model(self, route: Route) -> Any:
        """Models placed in the ingress: loaded once per version per replica (two recent versions
        per name, plus the pinned pre-warmed and previous ones)."""
        model = self._local.get_loaded(route.name, route.version)
        if model is not None:
            return model
        try:
            model = await self._local.get(route.name, route.version, route.bundle_sha256)
        except MlplatError as exc:
            raise _unavailable(route, exc) from None
        self._heap_grew()
        return model

    # -- last: the catch-all (routes match in the order they were declared; ingress_routes.py
    # declares its routes on import, before this class body) ----------------------------------
    @http_app.api_route(api.CATCH_ALL, methods=["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"],
                        include_in_schema=False)
    async def fallback(self, path: str, request: Request) -> JSONResponse:
        """Anything else: a known path with another method is a 405 naming the allowed ones;
        model paths with names that don't parse (traversal, encoded slashes) are a 400, other
        paths a 404 -- all JSON."""
        return api.unmatched_response(request, path)

    async def flush_telemetry(self, catalog_timeout_s: float = 60.0) -> int:
        """Write buffered telemetry now and have the catalog thread register everything queued
        (tests, shutdown: waits up to ``catalog_timeout_s`` for it); returns the rows written."""
        return 0 if self._flusher is None else await self._flusher.flush_now(catalog_timeout_s)

    async def export_metrics(self) -> bool:
        """Hand the counted metrics to Ray now (tests); False when metrics are off."""
        if self._metrics is None:
            return False
        await self._metrics.export_async()
        return True
