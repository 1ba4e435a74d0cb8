"""The one exception tree: every error petrel raises to a caller carries its S3 code
and HTTP status as class attributes. The gateway renders them as S3 XML in one place;
the client maps codes back to these classes through `error_for_code`.

Corruption (bytes on disk that fail their checksum or do not parse) is its own branch,
distinct from I/O failure of a backend, as in SeaweedFS's needle package.
"""

from __future__ import annotations


class PetrelError(Exception):
    """Base: an S3 error. Subclasses set `code`, `status` and a default `message`."""

    code: str = "InternalError"
    status: int = 500
    message: str = "We encountered an internal error. Please try again."
    # Seconds a client should wait before retrying (the Retry-After header), if any.
    retry_after_s: int | None = None

    def __init__(self, message: str | None = None, *, resource: str | None = None) -> None:
        self.detail = message or self.message
        self.resource = resource
        super().__init__(self.detail)


# ----- buckets ---------------------------------------------------------------------
class NoSuchBucket(PetrelError):
    code, status, message = "NoSuchBucket", 404, "The specified bucket does not exist."


class BucketAlreadyOwnedByYou(PetrelError):
    code, status = "BucketAlreadyOwnedByYou", 409
    message = "The bucket you tried to create already exists, and you own it."


class BucketNotEmpty(PetrelError):
    code, status, message = "BucketNotEmpty", 409, "The bucket you tried to delete is not empty."


class InvalidBucketName(PetrelError):
    code, status, message = "InvalidBucketName", 400, "The specified bucket is not valid."


# ----- objects ---------------------------------------------------------------------
class NoSuchKey(PetrelError):
    code, status, message = "NoSuchKey", 404, "The specified key does not exist."


class KeyTooLongError(PetrelError):
    code, status, message = "KeyTooLongError", 400, "Your key is too long."


class EntityTooLarge(PetrelError):
    code, status = "EntityTooLarge", 400
    message = "Your proposed upload exceeds the maximum allowed object size."


class MetadataTooLarge(PetrelError):
    code, status = "MetadataTooLarge", 400
    message = "Your metadata headers exceed the maximum allowed metadata size."


class InvalidRange(PetrelError):
    code, status, message = "InvalidRange", 416, "The requested range is not satisfiable."


class InvalidArgument(PetrelError):
    code, status, message = "InvalidArgument", 400, "Invalid Argument."


class InvalidRequest(PetrelError):
    code, status, message = "InvalidRequest", 400, "Invalid Request."


class BadDigest(PetrelError):
    code, status = "BadDigest", 400
    message = "The Content-MD5 you specified did not match what we received."


class IncompleteBody(PetrelError):
    code, status = "IncompleteBody", 400
    message = "You did not provide the number of bytes specified by the Content-Length."


class PreconditionFailed(PetrelError):
    code, status = "PreconditionFailed", 412
    message = "At least one of the preconditions you specified did not hold."


class TooManyItems(PetrelError):
    """A batch request over `Limits.batch_items_max` or `batch_bytes_max`."""

    code, status, message = "InvalidRequest", 400, "The batch exceeds its size limit."


# ----- service ---------------------------------------------------------------------
class MalformedBatch(PetrelError):
    """A batch body that does not decode: bad header, checksum, framing or truncation
    (docs/wire.md)."""

    code, status = "MalformedBatch", 400
    message = "The batch body is not a valid petrel batch stream."


class InternalError(PetrelError):
    pass


class ServiceUnavailable(PetrelError):
    code, status, message = "ServiceUnavailable", 503, "Please reduce your request rate."


class SlowDown(PetrelError):
    code, status, message = "SlowDown", 503, "Please reduce your request rate."
    retry_after_s = 1


class StoreClosed(ServiceUnavailable):
    message = "The store is shutting down."


class InsufficientStorage(PetrelError):
    """The local disk is full (ENOSPC) or over quota (EDQUOT): the write was not stored.

    S3 has no error code for this (AWS never runs out of disk). petrel answers HTTP 507
    Insufficient Storage (RFC 4918) with code "InsufficientStorage": a 503 SlowDown would
    tell clients to retry soon, hiding a condition an operator has to act on, and a 500
    says nothing about the cause. Writes are taken again once space returns.
    """

    code, status = "InsufficientStorage", 507
    message = "The server's disk is full; the write was not stored. Retry once space is freed."


# ----- storage faults ----------------------------------------------------------------
class CorruptionError(PetrelError):
    """Bytes read from disk or a backend failed their checksum or do not parse.

    Never returned as data: the read fails, the event is logged and counted, and other
    objects keep being served.
    """

    code, status = "InternalError", 500
    message = "Stored data failed its integrity check."


class BackendError(PetrelError):
    """A backend could not complete an operation (I/O error, remote store down)."""

    code, status = "ServiceUnavailable", 503
    message = "The storage backend is unavailable. Please retry."


class BlobNotFound(BackendError):
    """A backend blob does not exist (a backend contract result, not an S3 404)."""

    code, status = "InternalError", 500
    message = "A stored blob is missing."


# ----- auth --------------------------------------------------------------------------
# SigV4 verification (gateway/auth.py) and request-body integrity (gateway/chunked.py).
# Codes, statuses and default messages are those S3 returns.
class AccessDenied(PetrelError):
    code, status, message = "AccessDenied", 403, "Access Denied"


class SignatureDoesNotMatch(PetrelError):
    code, status = "SignatureDoesNotMatch", 403
    message = (
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method."
    )


class InvalidAccessKeyId(PetrelError):
    code, status = "InvalidAccessKeyId", 403
    message = "The AWS Access Key Id you provided does not exist in our records."


class RequestTimeTooSkewed(PetrelError):
    code, status = "RequestTimeTooSkewed", 403
    message = "The difference between the request time and the current time is too large."


class AuthorizationHeaderMalformed(PetrelError):
    code, status = "AuthorizationHeaderMalformed", 400
    message = "The authorization header you provided is invalid."


class AuthorizationQueryParametersError(PetrelError):
    code, status = "AuthorizationQueryParametersError", 400
    message = "The authorization query parameters you provided are invalid."


class XAmzContentSHA256Mismatch(PetrelError):
    code, status = "XAmzContentSHA256Mismatch", 400
    message = "The provided 'x-amz-content-sha256' header does not match what was computed."


class InvalidDigest(PetrelError):
    code, status, message = "InvalidDigest", 400, "The Content-MD5 you specified is not valid."


class MissingContentLength(PetrelError):
    code, status = "MissingContentLength", 411
    message = "You must provide the Content-Length HTTP header."


class MalformedTrailerError(PetrelError):
    code, status = "MalformedTrailerError", 400
    message = (
        "The request contained trailing data that was not well-formed or did not conform "
        "to our published schema."
    )


# ----- end auth ----------------------------------------------------------------------


# ----- requests and multipart ----------------------------------------------------------
class MalformedXML(PetrelError):
    code, status = "MalformedXML", 400
    message = "The XML you provided was not well-formed or did not validate against our schema."


class RequestTimeout(PetrelError):
    code, status = "RequestTimeout", 400
    message = ("Your socket connection to the server was not read from or written to "
               "within the timeout period.")


class MethodNotAllowed(PetrelError):
    code, status = "MethodNotAllowed", 405
    message = "The specified method is not allowed against this resource."


class NotImplementedOperation(PetrelError):
    code, status = "NotImplemented", 501
    message = "A header or query you provided implies functionality that is not implemented."


class NoSuchUpload(PetrelError):
    code, status = "NoSuchUpload", 404
    message = ("The specified multipart upload does not exist. The upload ID might be "
               "invalid, or the multipart upload might have been aborted or completed.")


class InvalidPart(PetrelError):
    code, status = "InvalidPart", 400
    message = ("One or more of the specified parts could not be found. The part might not "
               "have been uploaded, or the specified entity tag might not have matched "
               "the part's entity tag.")


class InvalidPartOrder(PetrelError):
    code, status = "InvalidPartOrder", 400
    message = "The list of parts was not in ascending order."


class EntityTooSmall(PetrelError):
    code, status = "EntityTooSmall", 400
    message = "Your proposed upload is smaller than the minimum allowed object size."


class NotServedHere(Exception):
    """A reader process cannot answer this read (petrel.replica); the primary must.
    Not an S3 error: it never reaches a client."""


def _all_subclasses(cls: type[PetrelError]) -> list[type[PetrelError]]:
    found: list[type[PetrelError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


def error_for_code(code: str) -> type[PetrelError]:
    """The class for an S3 error code (the client maps responses back with this).
    Where several classes share a code, the one named after it wins."""
    candidates = [sub for sub in _all_subclasses(PetrelError) if sub.code == code]
    for sub in candidates:
        if sub.__name__ == code:
            return sub
    return candidates[0] if candidates else PetrelError
