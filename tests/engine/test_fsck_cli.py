"""`petrel fsck` as an operator runs it: verify every record, rebuild the index."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from petrel.store import Store


def _fsck(data_dir: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "petrel", "fsck", "--data", data_dir,
                           "--json", *extra], capture_output=True, text=True, timeout=120)


async def _fill(config, count: int) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    payloads = {f"k{i:04d}": os.urandom(500 + i * 13 % 3000) for i in range(count)}
    async with await Store.open(config) as store:
        await store.create_bucket("fsck")
        await asyncio.gather(*(store.put_object("fsck", k, v) for k, v in payloads.items()))
        await store.committer.wait_for_seals()
    return payloads


def test_fsck_clean_then_rebuild(small_config) -> None:  # type: ignore[no-untyped-def]
    payloads = asyncio.run(_fill(small_config, 300))
    result = _fsck(small_config.data_dir)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["records"] == len(payloads) + 1  # + the bucket record
    assert report["corrupt_segments"] == [] and report["corrupt_ranges"] == []
    rebuilt = _fsck(small_config.data_dir, "--rebuild-index")
    assert rebuilt.returncode == 0 and json.loads(rebuilt.stdout)["rebuilt_objects"] == 300

    async def check() -> None:
        async with await Store.open(small_config) as store:
            for key, value in payloads.items():
                assert (await store.get_object("fsck", key)).body == value

    asyncio.run(check())


def test_fsck_reports_a_flipped_bit(small_config) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(_fill(small_config, 200))
    blobs = os.path.join(small_config.data_dir, "blobs", "segments")
    victim = os.path.join(blobs, sorted(os.listdir(blobs))[0])
    with open(victim, "r+b") as handle:
        handle.seek(300)
        byte = handle.read(1)
        handle.seek(300)
        handle.write(bytes([byte[0] ^ 0x10]))
    result = _fsck(small_config.data_dir)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["corrupt_ranges"] or report["corrupt_segments"]


def test_fsck_quarantines_corrupt_records(small_config, tmp_path) -> None:  # type: ignore[no-untyped-def]
    payloads = asyncio.run(_fill(small_config, 200))
    blobs = os.path.join(small_config.data_dir, "blobs", "segments")
    victim = os.path.join(blobs, sorted(os.listdir(blobs))[0])
    with open(victim, "r+b") as handle:
        handle.seek(300)
        byte = handle.read(1)
        handle.seek(300)
        handle.write(bytes([byte[0] ^ 0x10]))
    quarantine = str(tmp_path / "quarantine")
    result = _fsck(small_config.data_dir, "--quarantine", quarantine)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    lost = report["quarantined_objects"]
    assert lost and all(name.startswith("fsck/") for name in lost)
    with open(os.path.join(quarantine, "quarantine.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    assert manifest["objects"] == lost
    assert manifest["files"] and all(os.path.getsize(f["file"]) > 0 for f in manifest["files"])
    with open(victim, "rb") as handle:
        stored = handle.read()
    for copy in manifest["files"]:  # each file holds exactly the corrupt bytes
        assert copy["start"] <= 300 < (copy["end"] or len(stored))
        with open(copy["file"], "rb") as handle:
            assert handle.read() == stored[copy["start"] : copy["end"] or len(stored)]

    async def check() -> None:
        async with await Store.open(small_config) as store:
            for key, value in payloads.items():
                if f"fsck/{key}" in lost:
                    assert not any(o.key == key for o in
                                   store.list_objects("fsck", prefix=key).objects)
                else:
                    assert (await store.get_object("fsck", key)).body == value

    asyncio.run(check())
    # Quarantined objects are deleted, so a second run finds the same bytes corrupt
    # but no object pointing at them any more.
    again = json.loads(_fsck(small_config.data_dir, "--quarantine", quarantine).stdout)
    assert again["quarantined_objects"] == []
