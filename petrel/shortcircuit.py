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


# Plain ints: compared once per key.
LOCATED, FETCH = int(wire.Where.LOCATED), int(wire.Where.FETCH)

# A record to read, in the order reads are made: (segment id, offset, position of its
# key and LOCATIONS entry).
_Wanted = tuple[int, int, int]


def read_located(bucket: str, keys: Sequence[str], files: Mapping[int, wire.SegmentFile],
                 locations: Sequence[wire.LocateEntry]
                 ) -> tuple[list[bytes | None], list[int]]:
    """Read what the LOCATIONS entries of a batch locate (one per key of `keys`, in
    order) place in its `files`: (the bytes asked for by position, None where nothing
    was read; the positions to fetch through the gateway instead: FETCH entries, a
    file gone meanwhile, a record that fails its check). NOT_FOUND entries stay None.
    Raises Unavailable."""
    results: list[bytes | None] = [None] * len(locations)
    fetch: list[int] = []
    wanted: list[_Wanted] = []
    for position, entry in enumerate(locations):
        if entry[6] == LOCATED:
            wanted.append((entry[0], entry[1], position))
        elif entry[6] == FETCH:
            fetch.append(position)
    wanted.sort()
    prefix = bucket.encode() + b"/"
    first = 0
    while first < len(wanted):
        segment_id = wanted[first][0]
        last = first + 1
        while last < len(wanted) and wanted[last][0] == segment_id:
            last += 1
        _read_segment(files[segment_id], wanted[first:last], locations, keys, prefix,
                      results, fetch)
        first = last
    return results, fetch


def _read_segment(file: wire.SegmentFile, wanted: list[_Wanted],
                  locations: Sequence[wire.LocateEntry], keys: Sequence[str], prefix: bytes,
                  results: list[bytes | None], fetch: list[int]) -> None:
    try:
        # O_NONBLOCK: a path that names a FIFO must not block the open (a regular
        # file's reads ignore the flag).
        fd = os.open(file.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        # Sealed and moved, or compacted away, since the gateway looked: it reads them.
        fetch.extend(position for _, _, position in wanted)
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
        _read_runs(fd, wanted, locations, keys, prefix, results, fetch)
    finally:
        os.close(fd)


def _read_runs(fd: int, wanted: list[_Wanted], locations: Sequence[wire.LocateEntry],
               keys: Sequence[str], prefix: bytes, results: list[bytes | None],
               fetch: list[int]) -> None:
    """Read `wanted` (one segment's, in offset order): neighbours closer than
    RUN_GAP_BYTES with one pread, up to RUN_BYTES_MAX (a longer record alone). One pass,
    no list per run: most runs of a shuffled read are one record."""
    check = fmt.checked_payload
    pread = os.pread
    count_wanted = len(wanted)
    first = 0
    while first < count_wanted:
        _, base, position = wanted[first]
        end = base + locations[position][2]
        last = first + 1
        while last < count_wanted:
            _, offset, position = wanted[last]
            record_end = offset + locations[position][2]
            if offset - end > RUN_GAP_BYTES or max(end, record_end) - base > RUN_BYTES_MAX:
                break
            end = max(end, record_end)
            last += 1
        data = pread(fd, end - base, base)
        for _, offset, position in wanted[first:last]:
            _, _, length, checksum, start, count, _ = locations[position]
            try:
                payload = check(data, offset - base, length, checksum,
                                prefix + keys[position].encode())
            except CorruptionError:
                # Cut short or not the record the index holds: the gateway reads it,
                # and reports it if it is corrupt there too.
                fetch.append(position)
                continue
            if start or count != len(payload):
                payload = payload[start : start + count]
            results[position] = payload
        first = last
