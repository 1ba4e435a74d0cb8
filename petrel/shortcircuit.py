"""Short-circuit reads: a client on the gateway's machine reads records from the segment
files itself, as HDFS clients read a local datanode's block files.

The gateway still decides what is read: a batch locate (`POST /bucket?batch-locate`,
docs/wire.md) is authenticated and looked up like a batch get, and answers where each
record lies (segment file, offset, length, checksum) instead of its bytes. The client
then reads those bytes with `pread` and checks each record as the gateway would (its
xxh3 checksum against the index's, its key), so a record is never served from the
wrong file, a torn one, or one changed since: such an item is fetched through the
gateway instead, which reports a real corruption as it always does. What a gateway
answering a batch get spends per object (copying the record into its answer, framing,
the socket on both ends) is gone; a read costs the client one `pread` per run of
neighbouring records and the check.

Files are opened per call and closed before it returns: a segment deleted by compaction
is never held open (its disk space kept) by an idle client. A file whose device and
inode differ from what the gateway saw is another machine's (or another mount
namespace's) file of the same name: `Unavailable`, and the client stops trying.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence

from petrel import format as fmt
from petrel import wire
from petrel.errors import CorruptionError

# Records of one segment closer than this are read with one pread (the bytes between
# them are read and dropped); a read covers at most RUN_BYTES_MAX unless one record is
# longer.
RUN_GAP_BYTES = 32 * 1024
RUN_BYTES_MAX = 4 * 1024 * 1024


class Unavailable(Exception):
    """Short-circuit reads cannot work from this process for this gateway: its files
    are not readable here (permissions), or are not the gateway's files (another
    machine)."""


# A record to read: (segment id, offset, length, checksum, start, count, position of
# its key): a LOCATIONS entry with the key's position in place of its status, so a
# plain sort puts reads in file order.
Wanted = tuple[int, int, int, int, int, int, int]


def read_located(bucket: str, keys: Sequence[str], files: Mapping[int, wire.SegmentFile],
                 wanted: list[Wanted]) -> tuple[dict[int, bytes], list[int]]:
    """Read the records `wanted` says where to find, in the `files` of a batch locate:
    (the bytes asked for, by position in `keys`; positions to fetch through the
    gateway instead: a file gone meanwhile, a record that fails its check). Raises
    Unavailable."""
    wanted.sort()
    found: dict[int, bytes] = {}
    refetch: list[int] = []
    prefix = bucket.encode() + b"/"
    start = 0
    while start < len(wanted):
        segment_id = wanted[start][0]
        end = start + 1
        while end < len(wanted) and wanted[end][0] == segment_id:
            end += 1
        _read_segment(files[segment_id], wanted[start:end], keys, prefix, found, refetch)
        start = end
    return found, refetch


def _read_segment(file: wire.SegmentFile, wanted: list[Wanted], keys: Sequence[str],
                  prefix: bytes, found: dict[int, bytes], refetch: list[int]) -> None:
    try:
        # O_NONBLOCK: a path that names a FIFO must not block the open (a regular
        # file's reads ignore the flag).
        fd = os.open(file.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        # Sealed and moved, or compacted away, since the gateway looked: it reads them.
        refetch.extend(item[6] for item in wanted)
        return
    except OSError as exc:
        raise Unavailable(f"cannot open the gateway's segment file {file.path}: "
                          f"{exc.strerror}") from exc
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or \
                (status.st_dev, status.st_ino) != (file.device, file.inode):
            raise Unavailable(f"{file.path} here is not the gateway's file (another "
                              "machine or mount namespace)")
        _read_runs(fd, wanted, keys, prefix, found, refetch)
    finally:
        os.close(fd)


def _read_runs(fd: int, wanted: list[Wanted], keys: Sequence[str], prefix: bytes,
               found: dict[int, bytes], refetch: list[int]) -> None:
    """Read `wanted` (one segment's, in offset order): neighbours closer than
    RUN_GAP_BYTES with one pread, up to RUN_BYTES_MAX (a longer record alone). One pass,
    no list per run: most runs of a shuffled read are one record."""
    check = fmt.checked_payload
    pread = os.pread
    count_wanted = len(wanted)
    first = 0
    while first < count_wanted:
        base = wanted[first][1]
        end = base + wanted[first][2]
        last = first + 1
        while last < count_wanted:
            offset, length = wanted[last][1], wanted[last][2]
            if offset - end > RUN_GAP_BYTES or max(end, offset + length) - base > RUN_BYTES_MAX:
                break
            end = max(end, offset + length)
            last += 1
        data = pread(fd, end - base, base)
        for _, offset, length, checksum, start, count, position in wanted[first:last]:
            try:
                payload = check(data, offset - base, length, checksum,
                                prefix + keys[position].encode())
            except CorruptionError:
                # Cut short or not the record the index holds: the gateway reads it,
                # and reports it if it is corrupt there too.
                refetch.append(position)
                continue
            if start or count != len(payload):
                payload = payload[start : start + count]
            found[position] = payload
        first = last
