"""Operator endpoints beside the S3 API, under `/_petrel/` (no S3 bucket name can start
with `_`, so these paths never shadow a bucket). Signed with SigV4 like any S3 request;
answered in JSON. `petrel stats` and `petrel compact` call them.

    GET  /_petrel/stats                                  objects, bytes, segments, ...
    POST /_petrel/compact?dead-fraction=F&rate=BYTES     compact now; the report
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from aiohttp import web

from petrel.backends.cache import CachedBackend
from petrel.errors import InvalidArgument
from petrel_gateway.authn import authenticate
from petrel_gateway.context import OPERATION, SETTINGS, STORE

PREFIX = "/_petrel"


def _json(document: dict[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(document, indent=2).encode() + b"\n",
                        headers={"Content-Type": "application/json"})


def _authorised(request: web.Request, operation: str) -> None:
    request[OPERATION] = operation
    authenticate(request, request.app[SETTINGS], None, operation)


async def petrel_stats(request: web.Request) -> web.StreamResponse:
    _authorised(request, "petrel_stats")
    store = request.app[STORE]
    document: dict[str, Any] = {"store": asdict(store.stats())}
    if isinstance(store.backend, CachedBackend):
        document["backend_cache"] = asdict(store.backend.stats())
    return _json(document)


def _number(request: web.Request, name: str, kind: type[float] | type[int],
            low: float, high: float) -> Any:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be a number, not {raw!r}") from None
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be in [{low:g}, {high:g}], not {raw}")
    return value


async def petrel_compact(request: web.Request) -> web.StreamResponse:
    _authorised(request, "petrel_compact")
    dead_fraction = _number(request, "dead-fraction", float, 0.0, 1.0)
    rate = _number(request, "rate", int, 64 * 1024, 2**40)
    store = request.app[STORE]
    before = store.stats()
    reports = await store.compact(dead_fraction=dead_fraction, bytes_per_s=rate)
    after = store.stats()
    return _json({
        "segments_compacted": len(reports),
        "records_copied": sum(r.records_copied for r in reports),
        "bytes_reclaimed": sum(r.bytes_reclaimed for r in reports),
        "seconds": round(sum(r.seconds for r in reports), 3),
        "dead_bytes_before": before.dead_bytes,
        "dead_bytes_after": after.dead_bytes,
        "reports": [asdict(r) for r in reports],
    })


def add_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/stats", petrel_stats, allow_head=False)
    app.router.add_post(PREFIX + "/compact", petrel_compact)
