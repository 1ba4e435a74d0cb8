"""The resume journal of `petrel pack`: what has been stored, kept on local disk so that
an interrupted pack, run again, sends each file only once.

One file per (source, destination), JSON Lines, appended and fsynced:

    {"petrel_pack_journal": 1, "run": 2, "source": "dir:/data/x", "dest": "local:s3://b/p/"}
    {"sent": "2.7", "items": [["p/a.jpg", 1024, "<md5>"], ...]}    before batch 7 is sent
    {"done": "2.7", "failed": ["p/b.jpg"]}                          after its answer

A key is stored when a `done` line covers it and it is not in `failed`. A batch `sent`
without `done` (the process died while it was in flight, or right after its answer) is
*uncertain*: `Journal.uncertain` lists its items so that the caller checks each one on
the server (size and ETag = MD5), once, before packing again. At most `--jobs` batches
are ever uncertain, so that check is bounded.

A torn last line (the process died while writing it) is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

VERSION = 1
HEADER_FIELD = "petrel_pack_journal"


@dataclass(frozen=True, slots=True)
class Stored:
    size: int
    md5: str


def default_path(source: str, dest: str) -> str:
    """~/.cache/petrel/pack/<hash of source and destination>.jsonl (XDG_CACHE_HOME
    is honoured)."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    digest = hashlib.sha256(json.dumps([source, dest]).encode()).hexdigest()[:24]
    return os.path.join(cache, "petrel", "pack", f"{digest}.jsonl")


class Journal:
    """Append-only; `stored` and `uncertain` are what earlier runs left."""

    def __init__(self, path: str, source: str, dest: str) -> None:
        self.path = path
        self.stored: dict[str, Stored] = {}
        self.uncertain: dict[str, Stored] = {}
        self.run = 1 + self._load()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._append({HEADER_FIELD: VERSION, "run": self.run, "source": source, "dest": dest})

    def _load(self) -> int:
        """Read an existing journal; returns the number of runs it records."""
        runs = 0
        sent: dict[str, list[tuple[str, Stored]]] = {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                lines = handle.readlines()
        except FileNotFoundError:
            return 0
        for line in lines:
            record = _record(line)
            if record is None:
                continue
            if HEADER_FIELD in record:
                runs = max(runs, int(record.get("run", 0)))
            elif isinstance(record.get("sent"), str):
                sent[record["sent"]] = [(str(key), Stored(int(size), str(md5)))
                                        for key, size, md5 in record.get("items", [])]
            elif isinstance(record.get("done"), str):
                failed = set(record.get("failed", []))
                for key, stored in sent.pop(record["done"], []):
                    if key not in failed:
                        self.stored[key] = stored
        for items in sent.values():
            self.uncertain.update((key, item) for key, item in items
                                  if self.stored.get(key) != item)
        return runs

    def confirm(self, confirmed: Iterable[tuple[str, Stored]]) -> None:
        """Record uncertain items found on the server as stored (as one batch)."""
        items = list(confirmed)
        if items:
            name = f"{self.run}.0"
            self.sent(name, items)
            self.done(name, ())
        for key, stored in items:
            self.stored[key] = stored
        self.uncertain.clear()

    def sent(self, batch: str, items: Sequence[tuple[str, Stored]]) -> None:
        self._append({"sent": batch,
                      "items": [[key, item.size, item.md5] for key, item in items]})

    def done(self, batch: str, failed: Iterable[str]) -> None:
        self._append({"done": batch, "failed": list(failed)})

    def _append(self, record: dict[str, object]) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None  # a torn last line
    return record if isinstance(record, dict) else None
