"""Every limit petrel enforces, in one frozen object (docs/limits.md explains each).

Limits are passed in, never read from module globals: tests shrink them by building a
smaller `Limits`, not by monkeypatching. Names carry their unit last.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Ceilings imposed by the on-disk format's field widths (petrel/format.py). A limit may
# be lowered below these, never raised above them.
FORMAT_KEY_BYTES_MAX = 0xFFFF  # record key_len is u16
FORMAT_META_BYTES_MAX = 0xFFFF  # record meta_len is u16
FORMAT_SEGMENT_BYTES_MAX = 0xFFFF_FFFF  # offsets in index entries are u32
FORMAT_RECORD_PAYLOAD_BYTES_MAX = 0xFFFF_FFFF  # payload_len is u32


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard bounds on what one request, object or segment may contain."""

    # S3: object keys are at most 1024 bytes of UTF-8.
    key_bytes_max: int = 1024
    # S3: bucket names are 3..63 characters.
    bucket_name_bytes_max: int = 63
    # S3: user metadata (x-amz-meta-*) is at most 2 KiB, names and values together.
    user_metadata_bytes_max: int = 2 * KiB
    content_type_bytes_max: int = 1 * KiB
    # S3 single PUT ceiling; multipart objects are bounded separately by the gateway.
    object_bytes_max: int = 5 * GiB
    # Multipart uploads (S3's numbers): every part but the last at least 5 MiB, each at
    # most 5 GiB; the assembled object at most 5 TiB.
    multipart_part_bytes_min: int = 5 * MiB
    multipart_part_bytes_max: int = 5 * GiB
    multipart_object_bytes_max: int = 5 * 1024 * GiB
    # Objects at or under this size are packed into segments; larger ones are stored
    # whole in the backend.
    pack_threshold_bytes: int = 1 * MiB
    # An active segment is sealed before it would grow past this size.
    segment_bytes_max: int = 256 * MiB
    # Batch primitives (get_many / put_many / delete_many): items and payload bytes.
    batch_items_max: int = 1000
    batch_bytes_max: int = 256 * MiB
    # Listing: S3's own ceiling for max-keys.
    list_keys_max: int = 1000

    def __post_init__(self) -> None:
        checks = {
            "key_bytes_max": (1, FORMAT_KEY_BYTES_MAX - self.bucket_name_bytes_max - 1),
            "bucket_name_bytes_max": (3, 255),
            "user_metadata_bytes_max": (0, FORMAT_META_BYTES_MAX // 2),
            "content_type_bytes_max": (1, FORMAT_META_BYTES_MAX // 4),
            "pack_threshold_bytes": (0, min(FORMAT_RECORD_PAYLOAD_BYTES_MAX, 64 * MiB)),
            "segment_bytes_max": (64 * KiB, FORMAT_SEGMENT_BYTES_MAX),
            "batch_items_max": (1, 100_000),
            "list_keys_max": (1, 100_000),
        }
        for name, (low, high) in checks.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"limit {name}={value} outside [{low}, {high}]")
        # A packed record (payload + key + metadata + framing) must fit in one segment.
        record_bytes_max = (
            self.pack_threshold_bytes
            + self.key_bytes_max
            + self.bucket_name_bytes_max
            + self.user_metadata_bytes_max
            + self.content_type_bytes_max
            + 4 * KiB
        )
        if record_bytes_max * 2 > self.segment_bytes_max:
            raise ValueError(
                f"segment_bytes_max={self.segment_bytes_max} must hold at least two "
                f"records of pack_threshold_bytes={self.pack_threshold_bytes}"
            )
        if self.object_bytes_max < self.pack_threshold_bytes:
            raise ValueError("object_bytes_max must be >= pack_threshold_bytes")
