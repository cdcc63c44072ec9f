"""The ingress's HTTP routes but the catch-all: v1 predict and OIP v2 infer (the work is the
ingress's ``_infer``), health, model metadata and readiness (OIP v2), the admin routes
(rollback and the deployments view, behind the admin token) and the API's own description.
Mixed into :class:`~mlplat.serving.ingress.Ingress`: Serve's ingress takes routes declared on
its base classes, and they match in the order declared here, the ingress's catch-all last."""


import asyncio
import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from mlplat.errors import MlplatError
from mlplat.serving import http_api as api
from mlplat.serving.admission import retry_after_headers
from mlplat.serving.http_api import http_app
from mlplat.serving.infer_call import metadata_document
from mlplat.serving.request import RequestError

if TYPE_CHECKING:
    from mlplat.config import PlatformConfig, ServeSettings
    from mlplat.serving.cache import ModelCache
    from mlplat.serving.routes import RegistryReader, RouteTable
    from mlplat.serving.warmup import Prewarmer

__all__ = ["ControlRoutes", "error"]


def error(status: int, message: str, field: str | None = None, *, retry_after_s: int = 1) -> JSONResponse:
    """The error body every route answers; a 503 (retry later) carries ``Retry-After``."""
    return JSONResponse(RequestError(status, message, field).body(), status_code=status,
                        headers=retry_after_headers(status, retry_after_s))


_error = error


class ControlRoutes:
    """The inference, health, metadata, admin and docs routes of the ingress deployment, declared
    in the order they match (the catch-all, last, is the ingress's own)."""

    if TYPE_CHECKING:
        _config: PlatformConfig
        _serve: ServeSettings
        _admin_token: bytes | None
        _routes: RouteTable
        _reader: RegistryReader
        _local: ModelCache
        _prewarmer: Prewarmer
        _replica: str
        _target: str

        async def _ensure_started(self) -> None: ...

        def _check_auth(self, headers: Mapping[str, str]) -> None: ...

        async def _infer(self, request: Request, name: str, version: int | None, endpoint: str) -> Response: ...

    # -- inference (the work is the ingress's _infer) ---------------------------------------------
    @http_app.post("/v1/models/{name}:predict", **api.V1_PREDICT_DOC)
    async def predict_v1(self, name: str, request: Request) -> Response:
        """Raw feature rows in, predictions out: `{"instances": [{feature: value}]}`."""
        return await self._infer(request, name, None, "v1")

    @http_app.post("/v2/models/{name}/infer", **api.V2_INFER_DOC)
    async def infer_v2(self, name: str, request: Request) -> Response:
        """Open Inference Protocol v2 inference on the production version."""
        return await self._infer(request, name, None, "v2")

    @http_app.post("/v2/models/{name}/versions/{version}/infer", **api.V2_INFER_DOC)
    async def infer_v2_version(self, name: str, version: str, request: Request) -> Response:
        """Open Inference Protocol v2 inference on one version."""
        if not version.isdigit() or not 0 < int(version) < 10**9:
            return _error(400, f"version {version!r} must be a positive integer", "version")
        return await self._infer(request, name, int(version), "v2")

    # -- metadata and health -------------------------------------------------------------------
    @http_app.get("/v2/health/live", **api.LIVE_DOC)
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @http_app.get("/v2/health/ready", **api.HEALTH_READY_DOC)
    async def ready(self) -> JSONResponse:
        try:
            await asyncio.wait_for(self._ensure_started(), timeout=5)
        except Exception:
            return JSONResponse({"ready": False}, status_code=503)
        return JSONResponse({"ready": True})

    async def _metadata_of(self, headers: Mapping[str, str], name: str, version: int | None) -> dict[str, Any]:
        """The metadata document of the model (version), after the token check (HTTP and gRPC)."""
        self._check_auth(headers)
        await self._ensure_started()
        route = await self._routes.resolve(name, version)
        return metadata_document(name, route.version, route.schema, task=route.task, placement=route.placement)

    async def _metadata(self, request: Request, name: str, version: int | None) -> JSONResponse:
        try:
            document = await self._metadata_of(request.headers, name, version)
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.field)
        return JSONResponse(document, headers={"x-mlplat-model-version": document["versions"][0]})

    @http_app.get("/v2/models/{name}", **api.METADATA_DOC)
    async def model_metadata(self, name: str, request: Request) -> JSONResponse:
        return await self._metadata(request, name, None)

    @http_app.get("/v2/models/{name}/versions/{version}", **api.METADATA_DOC)
    async def version_metadata(self, name: str, version: str, request: Request) -> JSONResponse:
        if not version.isdigit() or not 0 < int(version) < 10**9:
            return _error(400, f"version {version!r} must be a positive integer", "version")
        return await self._metadata(request, name, int(version))

    @http_app.get("/v2/models/{name}/ready", **api.READY_DOC)
    async def model_ready(self, name: str, request: Request) -> JSONResponse:
        response = await self._metadata(request, name, None)
        if response.status_code != 200:
            return response
        return JSONResponse({"name": name, "ready": True},
                            headers={"x-mlplat-model-version": response.headers["x-mlplat-model-version"]})

    @http_app.get("/v2/models/{name}/versions/{version}/ready", **api.READY_DOC)
    async def version_ready(self, name: str, version: str, request: Request) -> JSONResponse:
        response = await self.version_metadata(name, version, request)
        if response.status_code != 200:
            return response
        return JSONResponse({"name": name, "ready": True},
                            headers={"x-mlplat-model-version": response.headers["x-mlplat-model-version"]})

    # -- admin: rollout control without a Ray driver ---------------------------------------------
    def _check_admin(self, request: Request) -> str:
        """The admin token guards /admin/*; returns who acts (``x-mlplat-user``, for the event)."""
        if self._admin_token is None:
            raise RequestError(401, "no admin token is configured on the server (MLPLAT_ADMIN_TOKEN); admin routes are off")
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), self._admin_token):
            raise RequestError(401, "missing or wrong admin token: send 'Authorization: Bearer <MLPLAT_ADMIN_TOKEN>'")
        return request.headers.get("x-mlplat-user", "")[:128] or "admin-api"

    @http_app.post("/admin/models/{name}/rollback", **api.ROLLBACK_DOC)
    async def admin_rollback(self, name: str, request: Request, region: str | None = None) -> JSONResponse:
        """Roll ``name`` back (an active canary ends, else production swaps with previous), in
        ``?region=`` when given. Writes through the registry; this replica switches at once,
        the others when the event ends their long poll of the log (``route_wait_s``)."""
        try:
            by = self._check_admin(request)
            await self._ensure_started()
            self._routes.check_name(name)
            if region is not None:
                self._config.check_region(region)
            record = await self._reader.rollback(name, region=region, by=by)
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.field)
        except MlplatError as exc:
            return _error(api.status_of(exc), str(exc), "name")
        self._routes.invalidate(name)
        return JSONResponse({"name": name, "region": region, "production": record.version, "state": record.state.value})

    @http_app.get("/admin/deployments", **api.DEPLOYMENTS_DOC)
    async def admin_deployments(self, request: Request) -> JSONResponse:
        """What this ingress replica routes now: per model, production and canary versions and
        the split, and which versions are loaded or pinned here."""
        try:
            self._check_admin(request)
            await self._ensure_started()
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.field)
        models = {name: {"production": r.production.version, "canary": r.canary.version if r.canary else None,
                         "canary_percent": r.canary_percent, "deployment": r.canary_deployment,
                         "placement": r.production.placement}
                  for name, r in sorted(self._routes.cached_routes().items())}
        return JSONResponse({"replica": self._replica, "target": self._target, "region": self._serve.region,
                             "models": models, "loaded": self._local.loaded(), "pinned": self._local.pinned(),
                             "prewarmed": self._prewarmer.warmed[-20:]})

    # -- the API's own description, behind the token unless serve.public_docs -------------------
    def _docs_allowed(self, request: Request) -> None:
        if not self._serve.public_docs:
            self._check_auth(request.headers)

    @http_app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(self, request: Request) -> JSONResponse:
        try:
            self._docs_allowed(request)
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.field)
        return JSONResponse(api.openapi_document(request.app))

    @http_app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> Response:
        try:
            self._docs_allowed(request)
        except RequestError as exc:
            return _error(exc.status, exc.message, exc.field)
        return api.docs_html(api.openapi_document(request.app))
