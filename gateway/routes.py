"""The route table: (method, target, selector) -> handler, named after the S3 operation.

S3 multiplexes operations on three targets (the service, a bucket, an object) by HTTP
method, query sub-resources (`?uploads`, `?delete`, `?list-type=2`) and a few headers
(`x-amz-copy-source`). The first row that matches wins, so specific rows come first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from petrel.errors import NotImplementedOperation
from petrel_gateway.handlers import batch, buckets, multipart, objects
from petrel_gateway.handlers.base import Call

Operation = Callable[[Call], Awaitable[web.StreamResponse]]

SERVICE, BUCKET, OBJECT = "service", "bucket", "object"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    target: str
    handler: Operation
    query: tuple[str, ...] = ()  # query parameters that must be present
    query_value: tuple[str, str] | None = None  # a parameter with a required value
    header: str | None = None  # a header that must be present

    @property
    def name(self) -> str:
        return self.handler.__name__

    def matches(self, method: str, target: str, request: web.Request) -> bool:
        if method != self.method or target != self.target:
            return False
        if any(q not in request.query for q in self.query):
            return False
        if self.query_value is not None:
            name, value = self.query_value
            if request.query.get(name) != value:
                return False
        return self.header is None or self.header in request.headers


ROUTES: list[Route] = [
    Route("GET", SERVICE, buckets.list_buckets),
    Route("GET", BUCKET, multipart.list_multipart_uploads, query=("uploads",)),
    Route("POST", OBJECT, multipart.create_multipart_upload, query=("uploads",)),
    Route("POST", OBJECT, multipart.complete_multipart_upload, query=("uploadId",)),
    Route("PUT", OBJECT, multipart.upload_part_copy, query=("partNumber", "uploadId"),
          header="x-amz-copy-source"),
    Route("PUT", OBJECT, multipart.upload_part, query=("partNumber", "uploadId")),
    Route("GET", OBJECT, multipart.list_parts, query=("uploadId",)),
    Route("DELETE", OBJECT, multipart.abort_multipart_upload, query=("uploadId",)),
    Route("GET", BUCKET, buckets.get_bucket_location, query=("location",)),
    Route("GET", BUCKET, buckets.get_bucket_versioning, query=("versioning",)),
    Route("GET", BUCKET, buckets.get_bucket_acl, query=("acl",)),
    Route("GET", OBJECT, objects.get_object_acl, query=("acl",)),
    Route("GET", BUCKET, buckets.list_object_versions, query=("versions",)),
    Route("GET", BUCKET, buckets.list_objects_v2, query_value=("list-type", "2")),
    Route("GET", BUCKET, buckets.list_objects),
    Route("HEAD", BUCKET, buckets.head_bucket),
    Route("PUT", BUCKET, buckets.create_bucket),
    Route("DELETE", BUCKET, buckets.delete_bucket),
    Route("POST", BUCKET, buckets.delete_objects, query=("delete",)),
    # petrel's batch API (docs/wire.md), not part of S3.
    Route("POST", BUCKET, batch.batch_get_objects, query=("batch-get",)),
    Route("POST", BUCKET, batch.batch_put_objects, query=("batch-put",)),
    Route("POST", BUCKET, batch.batch_locate_objects, query=("batch-locate",)),
    Route("PUT", OBJECT, objects.copy_object, header="x-amz-copy-source"),
    Route("PUT", OBJECT, objects.put_object),
    Route("GET", OBJECT, objects.get_object),
    Route("HEAD", OBJECT, objects.head_object),
    Route("DELETE", OBJECT, objects.delete_object),
]

# Sub-resources petrel does not implement: answered 501 NotImplemented, never routed to
# a plain object or bucket operation by mistake.
UNSUPPORTED_SUBRESOURCES = frozenset({
    "accelerate", "analytics", "cors", "encryption", "intelligent-tiering", "inventory",
    "lifecycle", "logging", "metrics", "notification", "object-lock", "ownershipControls",
    "policy", "policyStatus", "publicAccessBlock", "replication", "requestPayment",
    "restore", "retention", "legal-hold", "select", "tagging", "torrent", "website",
    "attributes",
})

# Sub-resources petrel answers only to GET, with fixed read-only answers. Any other
# method on them (PutObjectAcl, PutBucketVersioning, ...) is answered 501: without this
# `PUT /b/k?acl` would fall through to PutObject and replace the object's bytes with the
# ACL request body, and `PUT /b?versioning` would reach CreateBucket.
READ_ONLY_SUBRESOURCES = frozenset({"acl", "location", "versioning", "versions"})


def find_route(method: str, target: str, request: web.Request) -> Route | None:
    """The first matching row, or None. Raises NotImplementedOperation for a method
    other than GET on a read-only sub-resource."""
    if method != "GET" and READ_ONLY_SUBRESOURCES.intersection(request.query.keys()):
        raise NotImplementedOperation()
    if method == "HEAD" and target == SERVICE:
        return None
    for route in _BY_METHOD_TARGET.get((method, target), ()):
        if route.matches(method, target, request):
            return route
    return None


def _index(routes: list[Route]) -> dict[tuple[str, str], tuple[Route, ...]]:
    """Rows grouped by (method, target), in table order: a GET of an object tries the
    three object GET rows, not all twenty-odd."""
    grouped: dict[tuple[str, str], list[Route]] = {}
    for route in routes:
        grouped.setdefault((route.method, route.target), []).append(route)
    return {key: tuple(rows) for key, rows in grouped.items()}


_BY_METHOD_TARGET = _index(ROUTES)
