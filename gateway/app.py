"""The aiohttp application: middlewares, the S3 dispatcher, health and metrics.

    app = build_app(GatewaySettings(...), StoreConfig(data_dir=...))
    web.run_app(app, ...)   # petrel serve does this, on uvloop

App state lives under typed `web.AppKey`s, set up and torn down in `cleanup_ctx`; the
store is opened when the app starts and closed (pending commits flushed, files synced)
when it stops.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web

from petrel.backends.cache import CachedBackend
from petrel.errors import (
    InvalidArgument,
    MethodNotAllowed,
    NotImplementedOperation,
    PetrelError,
    SlowDown,
)
from petrel.index import RocksKV
from petrel.settings import StoreConfig
from petrel.store import Store
from petrel_gateway import admin
from petrel_gateway.authn import VERIFIER, authenticate, make_verifier
from petrel_gateway.context import OPERATION, QOS, REQUEST_ID, SETTINGS, STORE
from petrel_gateway.errors import Handler as Handler
from petrel_gateway.errors import error_response, render_exception
from petrel_gateway.handlers.base import Call
from petrel_gateway.metrics import Metrics
from petrel_gateway.qos import Qos
from petrel_gateway.request import resolve_target
from petrel_gateway.routes import BUCKET, OBJECT, SERVICE, UNSUPPORTED_SUBRESOURCES, find_route
from petrel_gateway.settings import GatewaySettings
from petrel_gateway.xml import Owner

if TYPE_CHECKING:
    from petrel_gateway.workers import Workers

log = logging.getLogger("petrel.gateway")


@dataclass(slots=True)
class Inflight:
    count: int = 0
    draining: bool = False


@dataclass(slots=True)
class RequestIds:
    """Request ids: a random per-process prefix and a counter (uuid4 per request cost
    ~8 us, more than the rest of a 1 KiB GET's routing)."""

    prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8].upper())
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):08X}"


METRICS = web.AppKey("petrel.metrics", Metrics)
# Reader processes (server.processes > 1), set by petrel serve once they start.
WORKERS: web.AppKey[Workers] = web.AppKey("petrel.workers")
INFLIGHT = web.AppKey("petrel.inflight", Inflight)
REQUEST_IDS = web.AppKey("petrel.request_ids", RequestIds)


def build_app(settings: GatewaySettings, store_config: StoreConfig) -> web.Application:
    app = web.Application(
        middlewares=[front_door],
        client_max_size=settings.xml_body_bytes_max,
        handler_args={
            "max_line_size": settings.header_line_bytes_max,
            "max_field_size": settings.header_field_bytes_max,
            "max_headers": settings.headers_max,
        },
    )
    app[SETTINGS] = settings
    app[QOS] = Qos(settings.qos)
    app[INFLIGHT] = Inflight()
    app[REQUEST_IDS] = RequestIds()
    app[VERIFIER] = make_verifier(settings)

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        store = await Store.open(store_config)
        app[STORE] = store
        metrics = app[METRICS] = Metrics(store.stats)
        app[QOS].on_throttle = metrics.throttle
        metrics.watch_qos(lambda: app[QOS].config)
        if isinstance(store.kv, RocksKV):
            metrics.watch_index_memory(store.kv.memory_bytes)
        metrics.watch_runtime(
            lambda: app[INFLIGHT].count, store_config.data_dir,
            lambda: (store.committer.upload_backlog_bytes(),
                     store.config.upload_backlog_bytes_max,
                     store.committer.uploads_done, store.committer.upload_failures),
            lambda: store.corruptions_detected,
            lambda: store.backend.stats() if isinstance(store.backend, CachedBackend) else None)
        log.info("store open at %s", store_config.data_dir)
        yield
        await store.close()
        log.info("store closed")

    app.cleanup_ctx.append(store_ctx)
    app.on_response_prepare.append(_stamp_response)
    app.router.add_get("/livez", livez, allow_head=True)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/metrics", metrics)
    admin.add_routes(app)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


# ----- the front door ----------------------------------------------------------------
@web.middleware
async def front_door(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Everything every request goes through, in one frame (each middleware layer costs
    a coroutine per request): a request id, the in-flight bound (503 SlowDown beyond
    it, or while draining), S3 error rendering (gateway/errors.py), and metrics."""
    app = request.app
    request[REQUEST_ID] = app[REQUEST_IDS].next()
    inflight = app[INFLIGHT]
    if inflight.draining or inflight.count >= app[SETTINGS].inflight_requests_max:
        if METRICS in app:
            app[METRICS].rejected.labels("draining" if inflight.draining
                                         else "inflight_limit").inc()
        refusal = error_response(request, SlowDown())
        if inflight.draining:
            refusal.force_close()
        return refusal
    inflight.count += 1
    started = time.perf_counter()
    try:
        response: web.StreamResponse
        try:
            response = await handler(request)
        except Exception as exc:  # noqa: BLE001 - rendered as S3 errors, unexpected ones logged
            response = render_exception(request, exc)
            if request.body_exists and not request.content.is_eof():
                # Refused with the body unread: close rather than drain what is left.
                response.force_close()
        operation = request.get(OPERATION)
        if operation is not None and METRICS in app:
            # A handler's web.Response is sent after the middlewares return: count its
            # declared length; a streamed response has sent its body already.
            sent = response.body_length if response.prepared else response.content_length or 0
            app[METRICS].observe(operation, response.status, time.perf_counter() - started,
                                 request.content_length or 0, sent)
        return response
    finally:
        inflight.count -= 1


async def _stamp_response(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID, "")
    response.headers["x-amz-request-id"] = request_id
    response.headers["x-amz-id-2"] = request_id
    response.headers["Server"] = "petrel"


def reconfigure(app: web.Application, settings: GatewaySettings) -> list[str]:
    """Apply what can change without a restart (key pairs, QoS limits) from freshly
    loaded settings; returns what changed. Requests in flight are not disturbed."""
    changes = []
    verifier = app[VERIFIER]
    if settings.credentials != verifier.credentials:
        verifier.set_credentials(settings.credentials)
        changes.append(f"credentials ({len(settings.credentials.pairs)} key pairs)")
    qos = app[QOS]
    if settings.qos != qos.config:
        qos.configure(settings.qos)
        changes.append("qos limits")
    if changes and WORKERS in app:
        app[WORKERS].reconfigure(settings)
    return changes


def start_draining(app: web.Application) -> None:
    """Shutdown: refuse new requests (503 SlowDown) while in-flight ones finish."""
    app[INFLIGHT].draining = True


def inflight_requests(app: web.Application) -> int:
    return app[INFLIGHT].count


# ----- endpoints -------------------------------------------------------------------
def _is_probe(request: web.Request) -> bool:
    """/healthz and /metrics are served to unsigned GETs without a query; a signed
    request to those paths addresses a bucket of that name."""
    return "Authorization" not in request.headers and not request.query_string


async def livez(request: web.Request) -> web.StreamResponse:
    """Liveness: the process answers (the event loop runs). Unlike /healthz it stays
    200 while the store refuses writes (a backend outage filling the upload backlog),
    so an orchestrator does not restart a gateway that is waiting on its backend."""
    if not _is_probe(request):
        return await dispatch(request)
    return web.Response(text="ok\n")


async def healthz(request: web.Request) -> web.StreamResponse:
    if not _is_probe(request):
        return await dispatch(request)
    store = request.app[STORE]
    store.committer.check_writable()
    return web.Response(text="ok\n")


async def metrics(request: web.Request) -> web.StreamResponse:
    if not _is_probe(request):
        return await dispatch(request)
    others = await request.app[WORKERS].samples() if WORKERS in request.app else []
    body = request.app[METRICS].render(others)
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


async def dispatch(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    target = resolve_target(request, settings.virtual_host_domains)
    kind = SERVICE if target.bucket is None else BUCKET if target.key is None else OBJECT
    if UNSUPPORTED_SUBRESOURCES.intersection(request.query.keys()):
        raise NotImplementedOperation()
    if request.query.get("versionId", "null") != "null":
        # Buckets are unversioned: every object is its `null` version, as in S3.
        raise InvalidArgument("Invalid version id specified")
    route = find_route(request.method, kind, request)
    if route is None:
        raise MethodNotAllowed()
    request[OPERATION] = route.name
    identity = authenticate(request, settings, target.bucket, route.name)
    call = Call(request=request, store=request.app[STORE], settings=settings,
                bucket=target.bucket or "", key=target.key or "",
                owner=Owner(identity.owner_id, identity.owner_id),
                body_reader=identity.body_reader)
    admission = request.app[QOS].admit(identity.access_key, target.bucket,
                                       request.content_length or 0)
    sent = 0
    try:
        response = await route.handler(call)
        sent = response.body_length if response.prepared else response.content_length or 0
        return response
    except PetrelError as exc:
        if exc.resource is None:
            exc.resource = f"/{target.bucket}/{target.key}" if target.key else \
                f"/{target.bucket or ''}"
        raise
    finally:
        admission.done(sent)
