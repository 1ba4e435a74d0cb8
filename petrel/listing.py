"""S3 listing over the ordered index: prefix, delimiter with common prefixes, a start
key (marker / start-after / continuation token) and max-keys.

Keys under a common prefix are skipped with one seek past the prefix, so a listing of
`a/` with delimiter `/` over a million keys under `a/b/` costs one seek, not a million
steps.
"""

from __future__ import annotations

from petrel import format as fmt
from petrel import index as ix
from petrel.model import ListResult, ObjectInfo


def list_objects(index: ix.Index, bucket: str, bucket_id: int, *, prefix: str,
                 delimiter: str, start_after: str, max_keys: int) -> ListResult:
    raw_prefix = prefix.encode()
    raw_delim = delimiter.encode()
    after = start_after.encode()
    objects: list[ObjectInfo] = []
    prefixes: list[str] = []
    last: bytes | None = None
    seek = after
    while True:
        skipped_to: bytes | None = None
        for key, value in index.scan_objects(bucket_id, start_key=seek, prefix=raw_prefix):
            if key <= after:
                continue
            common = _common_prefix(key, raw_prefix, raw_delim)
            if common is not None:
                if common <= after or common == last:
                    skipped_to = ix.prefix_stop(common)
                    break
                if len(objects) + len(prefixes) == max_keys:
                    return ListResult(objects, prefixes, True, last.decode() if last else None)
                prefixes.append(common.decode())
                last = common
                skipped_to = ix.prefix_stop(common)
                break
            if len(objects) + len(prefixes) == max_keys:
                return ListResult(objects, prefixes, True, last.decode() if last else None)
            entry = fmt.decode_index_value(value)
            objects.append(ObjectInfo.from_entry(bucket, key.decode(), entry))
            last = key
        if skipped_to is None:
            return ListResult(objects, prefixes, False, None)
        seek = skipped_to


def _common_prefix(key: bytes, prefix: bytes, delimiter: bytes) -> bytes | None:
    if not delimiter:
        return None
    position = key.find(delimiter, len(prefix))
    if position < 0:
        return None
    return key[: position + len(delimiter)]
