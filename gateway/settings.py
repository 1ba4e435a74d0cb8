"""Gateway settings: every HTTP-side limit as a named field with a visible number."""

from __future__ import annotations

from dataclasses import dataclass, field

from petrel.limits import KiB, MiB
from petrel_gateway.auth import Credentials
from petrel_gateway.qos import QosConfig


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 9000
    region: str = "us-east-1"
    credentials: Credentials = field(default_factory=lambda: Credentials(()))
    # Several key pairs may be valid at once (key rotation): see Credentials.
    # Buckets anyone may read (GET/HEAD of objects, listing) without signing.
    public_read_buckets: frozenset[str] = frozenset()
    # Host names under which buckets are addressed virtual-hosted style
    # (bucket.DOMAIN); anything else is path style.
    virtual_host_domains: tuple[str, ...] = ("localhost",)
    # HTTP parser limits (aiohttp defaults are 8190; S3 allows 8 KiB of headers).
    header_line_bytes_max: int = 16 * KiB
    header_field_bytes_max: int = 16 * KiB
    headers_max: int = 128
    # XML request bodies (DeleteObjects with 1000 keys of 1 KiB fits in 2 MiB).
    xml_body_bytes_max: int = 2 * MiB
    # Requests being served at once; more are answered 503 SlowDown.
    inflight_requests_max: int = 1024
    # S3 allows 15 minutes of clock skew between client and server.
    clock_skew_s_max: int = 15 * 60
    # Seconds a request body may stall (no byte received) before the request fails with
    # RequestTimeout; a stalled upload never holds a slot forever.
    body_idle_timeout_s: float = 60.0
    # A connection that has no request in progress (none yet, or idle between
    # keep-alive requests, or a request line or headers still arriving) is closed after
    # this long: slow or silent clients cannot pin sockets.
    idle_connection_timeout_s: float = 60.0
    # GETs, HEADs and PUTs of packed objects answered by the fast lane (gateway/fastlane.py)
    # instead of aiohttp's web stack; false sends every request through aiohttp.
    fast_lane: bool = True
    # Seconds in-flight requests get to finish on SIGTERM.
    shutdown_drain_s: float = 30.0
    # Per access key and per bucket rate limits ([qos] in the config file); none by
    # default. See petrel_gateway.qos.
    qos: QosConfig = field(default_factory=QosConfig)
    # HTTPS: a PEM certificate chain and its key (both or neither).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Seconds between checks of the config and credentials files for a live reload.
    reload_interval_s: float = 2.0
    # Serving processes: 1 is one process; N > 1 adds N - 1 reader processes that
    # answer GETs and HEADs of packed objects on the same port and pass every other
    # request to the primary (petrel_gateway.workers). Needs the fast lane, no TLS.
    # (`petrel serve` defaults to one per core: petrel.cli.serve._processes.)
    processes: int = 1
    # Seconds between returns of freed heap memory to the operating system in every
    # serving process (glibc malloc_trim; petrel_gateway.memory); 0 turns it off.
    memory_trim_interval_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"server.port must be 0..65535, got {self.port}")
        if self.inflight_requests_max < 1:
            raise ValueError("server.inflight_requests_max must be >= 1")
        if self.body_idle_timeout_s <= 0:
            raise ValueError("server.body_idle_timeout_s must be > 0")
        if self.idle_connection_timeout_s <= 0:
            raise ValueError("server.idle_connection_timeout_s must be > 0")
        if self.shutdown_drain_s < 0:
            raise ValueError("server.shutdown_drain_s must be >= 0")
        if self.reload_interval_s <= 0:
            raise ValueError("server.reload_interval_s must be > 0")
        if self.memory_trim_interval_s < 0:
            raise ValueError("server.memory_trim_interval_s must be >= 0")
        if self.processes < 1:
            raise ValueError(f"server.processes must be >= 1, got {self.processes}")
        if self.processes > 1 and (self.tls_cert_file or not self.fast_lane):
            raise ValueError("server.processes > 1 needs server.fast_lane and no TLS (a "
                             "reader passes connections on as plain sockets)")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("server.tls_cert_file and server.tls_key_file go together")
