"""Prometheus metrics, in a registry owned by the app (no module-level collectors).
docs/operations.md lists every metric."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from petrel.backends.cache import CacheStats
from petrel.model import StoreStats
from petrel_gateway.qos import QosConfig

_LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                      2.5, 5.0, 10.0, 30.0)


class _StoreCollector(Collector):
    def __init__(self, stats: Callable[[], StoreStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for name, value, doc in (
            ("petrel_objects", stats.objects, "Objects stored."),
            ("petrel_buckets", stats.buckets, "Buckets."),
            ("petrel_segments", stats.segments, "Segments (active, sealed, compacting)."),
            ("petrel_segments_sealed", stats.sealed_segments, "Sealed segments."),
            ("petrel_live_bytes", stats.live_bytes, "Bytes of records the index points at."),
            ("petrel_dead_bytes", stats.dead_bytes, "Bytes of overwritten or deleted records."),
            ("petrel_corruptions_detected", stats.corruptions_detected,
             "Records that failed their checksum since start."),
            ("petrel_segments_retired", stats.retired_segments,
             "Compacted segments waiting out the delete grace period."),
            ("petrel_retired_bytes", stats.retired_bytes,
             "Bytes of compacted segments waiting out the delete grace period."),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


class _RuntimeCollector(Collector):
    """What changes under the gateway: requests in flight, the data directory's free
    space, the backlog of sealed segments waiting for their upload to the backend."""

    def __init__(self, inflight: Callable[[], int], data_dir: str,
                 backlog: Callable[[], tuple[int, int, int, int]],
                 corruptions: Callable[[], int],
                 read_cache: Callable[[], CacheStats | None]) -> None:
        self._inflight, self._data_dir = inflight, data_dir
        self._backlog, self._corruptions = backlog, corruptions
        self._read_cache = read_cache

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("petrel_inflight_requests", "Requests being served.",
                                value=self._inflight())
        try:
            stat = os.statvfs(self._data_dir)
        except OSError:
            pass
        else:
            yield GaugeMetricFamily("petrel_data_dir_available_bytes",
                                    "Bytes available to petrel on the data directory's "
                                    "filesystem.", value=stat.f_bavail * stat.f_frsize)
            yield GaugeMetricFamily("petrel_data_dir_size_bytes",
                                    "Size of the data directory's filesystem.",
                                    value=stat.f_blocks * stat.f_frsize)
        backlog, backlog_max, uploads, failures = self._backlog()
        yield CounterMetricFamily("petrel_backend_uploads",
                                  "Segments uploaded to the backend and verified.",
                                  value=uploads)
        yield CounterMetricFamily("petrel_backend_upload_failures",
                                  "Failed segment upload attempts (each retry counts).",
                                  value=failures)
        yield GaugeMetricFamily("petrel_upload_backlog_bytes",
                                "Bytes of sealed segments not yet verified in the backend.",
                                value=backlog)
        yield GaugeMetricFamily("petrel_upload_backlog_bytes_max",
                                "The backlog at which writes are refused 503 SlowDown.",
                                value=backlog_max)
        yield CounterMetricFamily("petrel_corruptions",
                                  "Records that failed their checksum on read (a counter: "
                                  "resets with the process).", value=self._corruptions())
        # The S3 backend's on-disk cache of segment blocks (zeros without one).
        cache = self._read_cache()
        for name, value, doc in (
            ("hits", cache.hits if cache else 0, "Blocks served from the read cache."),
            ("misses", cache.misses if cache else 0, "Blocks fetched from the backend."),
            ("fetches", cache.fetches if cache else 0,
             "Ranged reads sent to the backend for cache misses."),
            ("fetched_bytes", cache.bytes_fetched if cache else 0,
             "Bytes fetched from the backend into the read cache."),
            ("evictions", cache.evictions if cache else 0, "Blocks evicted (LRU)."),
        ):
            yield CounterMetricFamily(f"petrel_read_cache_{name}", doc, value=value)
        yield GaugeMetricFamily("petrel_read_cache_bytes", "Bytes held in the read cache.",
                                value=cache.bytes_cached if cache else 0)


class _QosCollector(Collector):
    """The QoS limits in force (they change when the config file is reloaded)."""

    def __init__(self, config: Callable[[], QosConfig]) -> None:
        self._config = config

    def collect(self) -> Iterator[Metric]:
        config = self._config()
        family = GaugeMetricFamily("petrel_qos_limit",
                                   "QoS limits in force (0 = unlimited); name * is the "
                                   "default for keys or buckets not named in the config.",
                                   labels=["scope", "name", "kind"])
        subjects = [("key", "*", config.key_default), ("bucket", "*", config.bucket_default)]
        subjects += [("key", name, limit) for name, limit in sorted(config.keys.items())]
        subjects += [("bucket", name, limit) for name, limit in sorted(config.buckets.items())]
        for scope, name, limit in subjects:
            family.add_metric([scope, name, "requests_per_s"], limit.requests_per_s)
            family.add_metric([scope, name, "bytes_per_s"], limit.bytes_per_s)
            if scope == "key":
                family.add_metric([scope, name, "inflight_max"], limit.inflight_max)
        yield family


class _IndexMemoryCollector(Collector):
    """RocksDB's memory by part (petrel.index.RocksKV.memory_bytes), read when scraped:
    what of the gateway's resident memory is the index's bounded caches."""

    def __init__(self, parts: Callable[[], dict[str, int]]) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("petrel_index_memory_bytes",
                                   "Memory RocksDB holds for the index: memtables (writes "
                                   "not yet flushed), block_cache, table_readers.",
                                   labels=["part"])
        for part, value in sorted(self._parts().items()):
            family.add_metric([part], value)
        yield family


class _FastLaneCollector(Collector):
    """The fast lane's own counts (gateway/fastlane.py), read when scraped."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        served, handed_over = self._counts()
        yield CounterMetricFamily("petrel_fast_lane_requests",
                                  "Requests answered by the fast lane (GET, HEAD and PUT of "
                                  "packed objects) instead of aiohttp's web stack.",
                                  value=served)
        yield CounterMetricFamily("petrel_fast_lane_handovers",
                                  "Connections the fast lane handed to aiohttp's web stack "
                                  "(a request it does not serve).", value=handed_over)


# Families a reader process sends the primary, summed into the primary's on a scrape.
_SUMMED_TYPES = frozenset({"counter", "histogram"})
# (family name, type, documentation, samples as (name, labels, value)).
Samples = list[tuple[str, str, str, list[tuple[str, dict[str, str], float]]]]


def add_samples(total: Samples, more: Samples) -> Samples:
    """`total` and `more` summed sample by sample (families matched by name and type,
    samples by name and labels; `_created` timestamps left out): what the counters of
    processes that have ended add to the gateway's sums."""
    families: dict[tuple[str, str], tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]],
                                                  tuple[str, dict[str, str], float]]]] = {}
    for name, kind, documentation, values in (*total, *more):
        _, samples = families.setdefault((name, kind), (documentation, {}))
        for sample_name, labels, value in values:
            if sample_name.endswith("_created"):
                continue
            slot = (sample_name, tuple(sorted(labels.items())))
            known = samples.get(slot)
            samples[slot] = (sample_name, labels, value + (known[2] if known else 0.0))
    return [(name, kind, documentation, list(samples.values()))
            for (name, kind), (documentation, samples) in families.items()]


class _Families:
    """What generate_latest renders: families already collected."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def _catch_up_families(catch_ups: int, seconds: float) -> Iterator[Metric]:
    yield CounterMetricFamily("petrel_reader_index_catch_ups",
                              "Times reader processes caught up with the primary's index "
                              "(a key they were about to read was written since).",
                              value=catch_ups)
    yield CounterMetricFamily("petrel_reader_index_catch_up_seconds",
                              "Time reader processes spent catching up with the primary's "
                              "index (their event loop waits meanwhile).", value=seconds)


class _ReadersCollector(Collector):
    """Reader processes (server.processes > 1; petrel_gateway.workers)."""

    def __init__(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        running, passed_on, restarts = self._counts()
        yield GaugeMetricFamily("petrel_reader_processes",
                                "Reader processes running beside this one.", value=running)
        yield CounterMetricFamily("petrel_reader_connections_passed_on",
                                  "Connections reader processes passed to this one (a "
                                  "request a reader does not answer: listings, large or "
                                  "multipart uploads, large objects, remote segments).",
                                  value=passed_on)
        yield CounterMetricFamily("petrel_reader_restarts",
                                  "Reader processes started again after they died.",
                                  value=restarts)
        # The primary never catches up: its zero is what the readers' counts add to.
        yield from _catch_up_families(0, 0.0)


class _ReplicaCollector(Collector):
    """A reader process's index catch-ups (petrel.replica.Replica), read when scraped."""

    def __init__(self, counts: Callable[[], tuple[int, float]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        yield from _catch_up_families(*self._counts())


class Metrics:
    def __init__(self, stats: Callable[[], StoreStats] | None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("petrel_requests", "S3 requests by operation and status.",
                                ["operation", "status"], registry=self.registry)
        self.latency = Histogram("petrel_request_seconds", "Request latency by operation.",
                                 ["operation"], buckets=_LATENCY_BUCKETS_S,
                                 registry=self.registry)
        self.bytes_in = Counter("petrel_bytes_received", "Request body bytes received.",
                                registry=self.registry)
        self.bytes_out = Counter("petrel_bytes_sent", "Response body bytes sent.",
                                 registry=self.registry)
        self.rejected = Counter("petrel_requests_rejected",
                                "Requests answered 503 before routing: over the in-flight "
                                "limit, or while draining for shutdown.", ["reason"],
                                registry=self.registry)
        ProcessCollector(registry=self.registry)
        self.throttled = Counter("petrel_qos_throttled",
                                 "Requests refused 503 SlowDown by a QoS limit.",
                                 ["scope", "name", "reason"], registry=self.registry)
        if stats is not None:  # a reader process has no store of its own
            self.registry.register(_StoreCollector(stats))
        self._counters: dict[tuple[str, int], Counter] = {}
        self._histograms: dict[str, Histogram] = {}

    def observe(self, operation: str, status: int, seconds: float, bytes_in: int,
                bytes_out: int) -> None:
        # Label lookups cost microseconds each; the children are cached per label set.
        counter = self._counters.get((operation, status))
        if counter is None:
            counter = self._counters[(operation, status)] = self.requests.labels(
                operation, str(status))
        histogram = self._histograms.get(operation)
        if histogram is None:
            histogram = self._histograms[operation] = self.latency.labels(operation)
        counter.inc()
        histogram.observe(seconds)
        if bytes_in:
            self.bytes_in.inc(bytes_in)
        if bytes_out:
            self.bytes_out.inc(bytes_out)

    def throttle(self, scope: str, name: str, reason: str) -> None:
        """A request refused by QoS: `scope` key or bucket, `name` the configured key or
        bucket ("*" for those under the defaults), `reason` requests, bytes, inflight."""
        self.throttled.labels(scope, name, reason).inc()

    def watch_runtime(self, inflight: Callable[[], int], data_dir: str,
                      backlog: Callable[[], tuple[int, int, int, int]],
                      corruptions: Callable[[], int],
                      read_cache: Callable[[], CacheStats | None]) -> None:
        self.registry.register(_RuntimeCollector(inflight, data_dir, backlog, corruptions,
                                                 read_cache))

    def watch_index_memory(self, parts: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_IndexMemoryCollector(parts))

    def watch_fast_lane(self, counts: Callable[[], tuple[int, int]]) -> None:
        self.registry.register(_FastLaneCollector(counts))

    def watch_readers(self, counts: Callable[[], tuple[int, int, int]]) -> None:
        self.registry.register(_ReadersCollector(counts))

    def watch_replica(self, counts: Callable[[], tuple[int, float]]) -> None:
        self.registry.register(_ReplicaCollector(counts))

    def watch_qos(self, config: Callable[[], QosConfig]) -> None:
        self.registry.register(_QosCollector(config))

    def samples(self) -> Samples:
        """This process's counters and histograms (requests, latency, bytes, QoS,
        the fast lane, CPU): what a reader process sends the primary."""
        return [(family.name, family.type, family.documentation,
                 [(s.name, dict(s.labels), s.value) for s in family.samples])
                for family in self.registry.collect() if family.type in _SUMMED_TYPES]

    def render(self, others: Sequence[Samples] = ()) -> bytes:
        """The exposition text; `others` (reader processes' `samples`) are added to
        this process's counters and histograms, sample by sample."""
        if not others:
            return generate_latest(self.registry)
        families = list(self.registry.collect())
        by_name = {family.name: family for family in families}
        for samples in others:
            for name, kind, documentation, values in samples:
                family = by_name.get(name)
                if family is None:
                    family = by_name[name] = Metric(name, documentation, kind)
                    families.append(family)
                if family.type != kind:
                    continue
                index = {(s.name, tuple(sorted(s.labels.items()))): i
                         for i, s in enumerate(family.samples)}
                for sample_name, labels, value in values:
                    if sample_name.endswith("_created"):
                        continue  # a timestamp: the primary's stands
                    at = index.get((sample_name, tuple(sorted(labels.items()))))
                    if at is None:
                        family.add_sample(sample_name, labels, value)
                    else:
                        old = family.samples[at]
                        family.samples[at] = old._replace(value=old.value + value)
        return generate_latest(_Families(families))
