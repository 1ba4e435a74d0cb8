"""Issue 9, item 5: every operation in the route table, the batch API and the operator
endpoints included, refuses a request without a valid signature; a presigned URL works
only for the method and key it was signed for."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from conftest import Gateway
from rawhttp import ACCESS_KEY, send, sign

from petrel_gateway.routes import BUCKET, OBJECT, ROUTES, SERVICE, Route


def _request_of(route: Route, bucket: str) -> tuple[str, str, dict[str, str]]:
    """Method, path with query, extra headers that route a request to `route`."""
    path = {SERVICE: "/", BUCKET: f"/{bucket}", OBJECT: f"/{bucket}/k"}[route.target]
    params = [f"{name}=1" if name in ("partNumber", "uploadId") else name
              for name in route.query]
    if route.query_value is not None:
        params.append("=".join(route.query_value))
    headers = {}
    if route.header is not None:
        headers[route.header] = f"/{bucket}/k"
    return route.method, path + ("?" + "&".join(params) if params else ""), headers


CASES = [pytest.param(route, id=route.name) for route in ROUTES] + [
    pytest.param(None, id="petrel_stats"), pytest.param(None, id="petrel_compact")]


@pytest.mark.parametrize("route", CASES)
def test_unsigned_and_forged_requests_are_refused(gateway: Gateway, bucket: str,
                                                  route: Route | None,
                                                  request: pytest.FixtureRequest) -> None:
    if route is None:
        name = request.node.callspec.id
        method, target, extra = ("GET", "/_petrel/stats", {}) if name == "petrel_stats" \
            else ("POST", "/_petrel/compact", {})
    else:
        method, target, extra = _request_of(route, bucket)
    headers = {"Content-Length": "0", **extra}
    unsigned = send(gateway.port, method, target, headers)
    assert unsigned.status == 403, (target, unsigned.status, unsigned.body[:300])
    if method != "HEAD":
        assert unsigned.code == "AccessDenied", unsigned.body[:300]
    url = f"http://127.0.0.1:{gateway.port}{target}"
    forged = sign(method, url, ACCESS_KEY, "not-the-secret-key-00000000000000", extra)
    forged["Content-Length"] = "0"
    answer = send(gateway.port, method, target, forged)
    assert answer.status == 403, (target, answer.status, answer.body[:300])
    if method != "HEAD":
        assert answer.code == "SignatureDoesNotMatch", answer.body[:300]


def test_a_presigned_url_serves_only_its_method_and_key(gateway: Gateway, bucket: str,
                                                        s3) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="mine", Body=b"kept")
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "mine"},
                                        ExpiresIn=60)
    for method, data in (("PUT", b"overwritten"), ("DELETE", None), ("HEAD", None)):
        attempt = urllib.request.Request(get_url, data=data, method=method)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(attempt, timeout=10)
        assert refused.value.code == 403, method
    other = get_url.replace(f"/{bucket}/mine", f"/{bucket}/other")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(other, timeout=10)
    assert refused.value.code == 403
    assert s3.get_object(Bucket=bucket, Key="mine")["Body"].read() == b"kept"
