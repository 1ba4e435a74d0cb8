"""`petrel serve`: run the S3 gateway over a data directory.

Settings come from, in increasing precedence: built-in defaults, a TOML file
(`--config`), environment variables (PETREL_*), and command-line flags. An unknown key
or a bad value stops the start with a message naming it.

    [server]            host, port, region, virtual_host_domains, inflight_requests_max,
                        log_level, body_idle_timeout_s, shutdown_drain_s,
                        tls_cert_file, tls_key_file, reload_interval_s,
                        idle_connection_timeout_s, fast_lane, processes,
                        memory_trim_interval_s
    [store]             data, durability, pack_threshold_bytes, segment_bytes_max,
                        compaction_dead_fraction, compaction_bytes_per_s, seal_idle_s,
                        object_bytes_max, io_threads, upload_backlog_bytes_max,
                        upload_retry_delay_s_max, close_upload_timeout_s,
                        read_cache_bytes_max, read_cache_block_bytes, index_cache_bytes
    [auth]              access_key, secret_key, credentials_file, public_read_buckets
    [backend]           url (s3://BUCKET/PREFIX; none: a local directory under data),
                        endpoint, region, path_style, access_key, secret_key
    [qos]               per access key and per bucket rate limits (file only; see
                        petrel_gateway.qos for the keys)

Environment variables are PETREL_<KEY> (PETREL_PORT, PETREL_SEAL_IDLE_S, ...), and
PETREL_BACKEND_<KEY> for the [backend] section (PETREL_BACKEND_URL,
PETREL_BACKEND_ACCESS_KEY, PETREL_BACKEND_SECRET_KEY, ...). The backend's credentials
are read from the environment or the file only, never from flags (a command line is
visible to every user of the machine).

Credentials: --access-key/--secret-key (or PETREL_ACCESS_KEY/PETREL_SECRET_KEY), and/or a
credentials file of `ACCESS_KEY:SECRET_KEY` lines (several pairs may be valid at once).
With none given, a pair is generated, stored in DATA/credentials (mode 0600) and printed
once.

Live reload: on SIGHUP, and whenever the config file or the credentials file changes
(checked every `reload_interval_s`, default 2 s), the key pairs and the [qos] limits are
re-read and replaced without a restart; requests in flight are not disturbed. A reload
that fails validation is logged and changes nothing. Other settings need a restart.

TLS: `tls_cert_file` and `tls_key_file` (or --tls-cert/--tls-key) serve HTTPS.

Processes: `processes` (--processes, default 0 = one per core) serving processes share
the port: the primary owns the store and takes every write; the others are readers
that answer GETs and HEADs of packed objects (petrel_gateway.workers). With TLS or the
fast lane off, the default is one process.
"""

from __future__ import annotations

import argparse
import os
import secrets
import string
import sys
import tomllib
from dataclasses import dataclass, field
from typing import Any

ENV_PREFIX = "PETREL_"
# server.processes = 0 starts one serving process per core, up to this many.
_AUTO_PROCESSES_MAX = 16

# section -> key -> type; the schema of the TOML file and of PETREL_* variables.
SCHEMA: dict[str, dict[str, type]] = {
    "server": {"host": str, "port": int, "region": str, "virtual_host_domains": list,
               "inflight_requests_max": int, "log_level": str,
               "body_idle_timeout_s": float, "shutdown_drain_s": float,
               "tls_cert_file": str, "tls_key_file": str, "reload_interval_s": float,
               "idle_connection_timeout_s": float, "fast_lane": bool, "processes": int,
               "memory_trim_interval_s": float},
    "store": {"data": str, "durability": str, "pack_threshold_bytes": int,
              "segment_bytes_max": int, "compaction_dead_fraction": float,
              "compaction_bytes_per_s": int, "seal_idle_s": float,
              "object_bytes_max": int, "io_threads": int, "upload_backlog_bytes_max": int,
              "upload_retry_delay_s_max": float, "close_upload_timeout_s": float,
              "read_cache_bytes_max": int, "read_cache_block_bytes": int,
              "index_cache_bytes": int},
    "auth": {"access_key": str, "secret_key": str, "credentials_file": str,
             "public_read_buckets": list},
    "backend": {"url": str, "endpoint": str, "region": str, "path_style": bool,
                "access_key": str, "secret_key": str},
}
# Environment variable prefix per section: [backend] access_key is
# PETREL_BACKEND_ACCESS_KEY, not PETREL_ACCESS_KEY (the gateway's own key).
ENV_SECTION_PREFIX = {"backend": ENV_PREFIX + "BACKEND_"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class ConfigError(Exception):
    """A configuration problem, reported to the user as one line."""


@dataclass
class ServeOptions:
    values: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.values.get(section, {}).get(key, default)

    def set(self, section: str, key: str, value: Any) -> None:
        self.values.setdefault(section, {})[key] = value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file")
    parser.add_argument("--data", help="data directory (index, segments, blobs)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 9000)")
    parser.add_argument("--region", help="region reported to clients (default us-east-1)")
    parser.add_argument("--durability", choices=["always", "batch", "none"],
                        help="when writes are acknowledged (default batch)")
    parser.add_argument("--access-key", help="access key (or PETREL_ACCESS_KEY)")
    parser.add_argument("--secret-key", help="secret key (or PETREL_SECRET_KEY)")
    parser.add_argument("--credentials-file", help="file of ACCESS_KEY:SECRET_KEY lines")
    parser.add_argument("--log-level", help="debug, info, warning (default info)")
    parser.add_argument("--processes", type=int,
                        help="serving processes (default 0: one per core): N > 1 adds "
                             "N - 1 reader processes for GET and HEAD")
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    add_backend_arguments(parser)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """The backend flags, shared with `petrel fsck`."""
    parser.add_argument("--backend", metavar="s3://BUCKET/PREFIX",
                        help="store sealed segments and large objects in this S3 bucket "
                             "(default: a local directory under --data)")
    parser.add_argument("--backend-endpoint", metavar="URL",
                        help="S3 endpoint URL of the backend (default: AWS)")
    parser.add_argument("--backend-region", help="region of the backend (default us-east-1)")
    parser.add_argument("--backend-path-style", action=argparse.BooleanOptionalAction,
                        default=None, help="path-style URLs (SeaweedFS, MinIO, Ceph)")


def _coerce(section: str, key: str, value: Any, source: str) -> Any:
    expected = SCHEMA[section][key]
    if expected is list and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if expected in (int, float) and isinstance(value, str):
        try:
            return expected(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: {section}.{key} must be a number, got {value!r}") \
                from exc
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool:
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {section}.{key} must be true or false, "
                              f"got {value!r}")
        return value
    if not isinstance(value, expected) or isinstance(value, bool):
        raise ConfigError(f"{source}: {section}.{key} must be {expected.__name__}, "
                          f"got {value!r}")
    return value


def load_options(args: argparse.Namespace, environ: dict[str, str]) -> ServeOptions:
    options = ServeOptions()
    if args.config:
        try:
            with open(args.config, "rb") as handle:
                document = tomllib.load(handle)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{args.config}: {exc}") from exc
        for section, table in document.items():
            if section == "qos" and isinstance(table, dict):
                options.values["qos"] = table  # nested tables: checked by parse_qos
                continue
            if section not in SCHEMA or not isinstance(table, dict):
                raise ConfigError(f"{args.config}: unknown section [{section}]")
            for key, value in table.items():
                if key not in SCHEMA[section]:
                    raise ConfigError(f"{args.config}: unknown key {section}.{key}")
                options.set(section, key, _coerce(section, key, value, args.config))
    for section, keys in SCHEMA.items():
        for key in keys:
            name = ENV_SECTION_PREFIX.get(section, ENV_PREFIX) + key.upper()
            if name in environ:
                options.set(section, key, _coerce(section, key, environ[name], name))
    # `petrel fsck` shares this loader with fewer flags: absent ones are skipped.
    flags = {("store", "data"): "data", ("server", "host"): "host",
             ("server", "port"): "port", ("server", "region"): "region",
             ("store", "durability"): "durability",
             ("auth", "access_key"): "access_key", ("auth", "secret_key"): "secret_key",
             ("auth", "credentials_file"): "credentials_file",
             ("server", "log_level"): "log_level", ("server", "processes"): "processes",
             ("backend", "url"): "backend",
             ("backend", "endpoint"): "backend_endpoint",
             ("backend", "region"): "backend_region",
             ("backend", "path_style"): "backend_path_style",
             ("server", "tls_cert_file"): "tls_cert", ("server", "tls_key_file"): "tls_key"}
    for (section, key), attribute in flags.items():
        value = getattr(args, attribute, None)
        if value is not None:
            options.set(section, key, value)
    return options


def build_backend(options: ServeOptions) -> Any:
    """The S3BackendConfig that [backend] describes, or None (a local directory).
    Raises ConfigError."""
    from petrel.settings import S3BackendConfig

    url = options.get("backend", "url")
    others = [k for k in SCHEMA["backend"] if k != "url"
              and options.get("backend", k) is not None]
    if not url:
        if others:
            raise ConfigError(f"backend.{others[0]} is set but no backend URL "
                              "(--backend s3://BUCKET/PREFIX)")
        return None
    settings: dict[str, Any] = {
        "endpoint_url": options.get("backend", "endpoint"),
        "access_key": options.get("backend", "access_key"),
        "secret_key": options.get("backend", "secret_key"),
    }
    if options.get("backend", "region") is not None:
        settings["region"] = options.get("backend", "region")
    if options.get("backend", "path_style") is not None:
        settings["path_style"] = options.get("backend", "path_style")
    try:
        return S3BackendConfig.from_url(url, **settings)
    except ValueError as exc:
        raise ConfigError(f"backend: {exc}") from exc


def read_credentials_file(path: str) -> list[tuple[str, str]]:
    pairs = []
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ConfigError(f"credentials file {path}: {exc}") from exc
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        access, sep, secret = line.partition(":")
        if not sep or not access or not secret:
            raise ConfigError(f"{path}:{number}: expected ACCESS_KEY:SECRET_KEY")
        pairs.append((access.strip(), secret.strip()))
    return pairs


def _generate_pair() -> tuple[str, str]:
    upper = string.ascii_uppercase + string.digits
    access = "PK" + "".join(secrets.choice(upper) for _ in range(18))
    secret = secrets.token_urlsafe(30)[:40]
    return access, secret


def resolve_credentials(options: ServeOptions, data_dir: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    access, secret = options.get("auth", "access_key"), options.get("auth", "secret_key")
    if (access is None) != (secret is None):
        raise ConfigError("access key and secret key must be given together")
    if access is not None:
        pairs.append((access, secret))
    path = options.get("auth", "credentials_file")
    if path:
        pairs.extend(read_credentials_file(path))
    if pairs:
        return pairs
    generated = os.path.join(data_dir, "credentials")
    if os.path.exists(generated):
        return read_credentials_file(generated)
    access, secret = _generate_pair()
    os.makedirs(data_dir, exist_ok=True)
    fd = os.open(generated, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"# generated by petrel serve\n{access}:{secret}\n")
    print(f"petrel: generated credentials (stored in {generated}):\n"
          f"  access key: {access}\n  secret key: {secret}", flush=True)
    return [(access, secret)]


def build(options: ServeOptions) -> tuple[Any, Any]:
    """(GatewaySettings, StoreConfig) from resolved options. Raises ConfigError."""
    from petrel.limits import Limits
    from petrel.settings import Durability, StoreConfig
    from petrel_gateway.auth import Credentials, KeyPair
    from petrel_gateway.qos import parse_qos
    from petrel_gateway.settings import GatewaySettings

    data_dir = options.get("store", "data")
    if not data_dir:
        raise ConfigError("a data directory is required: --data DIR (or [store] data)")
    try:
        durability = Durability(options.get("store", "durability", "batch"))
    except ValueError as exc:
        raise ConfigError("store.durability must be always, batch or none") from exc
    limit_fields = {k: options.get("store", k) for k in
                    ("pack_threshold_bytes", "segment_bytes_max", "object_bytes_max")
                    if options.get("store", k) is not None}
    store_fields = {k: options.get("store", k) for k in
                    ("compaction_dead_fraction", "compaction_bytes_per_s", "seal_idle_s",
                     "io_threads", "upload_backlog_bytes_max", "upload_retry_delay_s_max",
                     "close_upload_timeout_s", "read_cache_bytes_max",
                     "read_cache_block_bytes", "index_cache_bytes")
                    if options.get("store", k) is not None}
    backend = build_backend(options)
    try:
        limits = Limits(**limit_fields)
        store_config = StoreConfig(data_dir=os.path.abspath(data_dir), durability=durability,
                                   limits=limits, backend=backend, **store_fields)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    port = options.get("server", "port", 9000)
    if not 0 <= port <= 65535:
        raise ConfigError(f"server.port must be 0..65535, got {port}")
    pairs = resolve_credentials(options, store_config.data_dir)
    settings_fields: dict[str, Any] = {}
    if options.get("server", "inflight_requests_max") is not None:
        settings_fields["inflight_requests_max"] = options.get("server",
                                                               "inflight_requests_max")
    for name in ("body_idle_timeout_s", "shutdown_drain_s", "reload_interval_s",
                 "idle_connection_timeout_s", "fast_lane", "memory_trim_interval_s"):
        if options.get("server", name) is not None:
            settings_fields[name] = options.get("server", name)
    level = str(options.get("server", "log_level", "info")).lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"server.log_level must be one of {', '.join(LOG_LEVELS)}, "
                          f"got {level!r}")
    settings_fields["tls_cert_file"], settings_fields["tls_key_file"] = _tls_files(options)
    settings_fields["processes"] = _processes(options, settings_fields)
    try:
        settings_fields["qos"] = parse_qos(options.values.get("qos", {}))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if options.get("server", "virtual_host_domains") is not None:
        settings_fields["virtual_host_domains"] = tuple(
            options.get("server", "virtual_host_domains"))
    try:
        settings = GatewaySettings(
            host=options.get("server", "host", "127.0.0.1"), port=port,
            region=options.get("server", "region", "us-east-1"),
            credentials=Credentials(tuple(KeyPair(a, s) for a, s in dict(pairs).items())),
            public_read_buckets=frozenset(options.get("auth", "public_read_buckets", [])),
            **settings_fields)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return settings, store_config


def _processes(options: ServeOptions, fields: dict[str, Any]) -> int:
    """server.processes: 0 (the default) is one per core this process may run on, or 1
    where readers cannot work (TLS, no fast lane); N > 0 is N."""
    processes = options.get("server", "processes", 0)
    if processes < 0:
        raise ConfigError(f"server.processes must be >= 0 (0: one per core), got {processes}")
    if processes:
        return int(processes)
    if fields.get("tls_cert_file") or not fields.get("fast_lane", True):
        return 1
    return max(1, min(usable_cores(), _AUTO_PROCESSES_MAX))


def usable_cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """Cores this process may use: its CPU affinity, bounded by a cgroup v2 CPU quota
    (a container's CPU limit) rounded up."""
    cores = len(os.sched_getaffinity(0))
    try:
        with open(cpu_max, encoding="ascii") as handle:
            quota, _, period = handle.read().strip().partition(" ")
    except OSError:
        return cores
    if quota == "max" or not quota.isdigit() or not period.isdigit() or not int(period):
        return cores
    return min(cores, -(-int(quota) // int(period)))


def _tls_files(options: ServeOptions) -> tuple[str | None, str | None]:
    """The certificate and key, checked by loading them. Raises ConfigError."""
    import ssl

    cert, key = options.get("server", "tls_cert_file"), options.get("server", "tls_key_file")
    if not cert and not key:
        return None, None
    if not (cert and key):
        raise ConfigError("server.tls_cert_file and server.tls_key_file go together")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS certificate {cert} / key {key}: {exc}") from exc
    return os.path.abspath(cert), os.path.abspath(key)


def watched_files(options: ServeOptions, config_path: str | None, data_dir: str) -> list[str]:
    """The files whose change triggers a reload: the config and the credentials."""
    files = [config_path] if config_path else []
    credentials = options.get("auth", "credentials_file")
    if credentials:
        files.append(credentials)
    elif options.get("auth", "access_key") is None:
        files.append(os.path.join(data_dir, "credentials"))  # generated
    return [os.path.abspath(f) for f in files]


def run(args: argparse.Namespace) -> int:
    import logging

    try:
        options = load_options(args, dict(os.environ))
        settings, store_config = build(options)
    except ConfigError as exc:
        print(f"petrel serve: configuration error: {exc}", file=sys.stderr)
        return 2
    level = str(options.get("server", "log_level", "info")).upper()
    logging.basicConfig(level=getattr(logging, level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    environ = dict(os.environ)

    def reload() -> Any:
        return build(load_options(args, environ))[0]

    watched = watched_files(options, args.config, store_config.data_dir)
    return serve(settings, store_config, reload, watched)


def serve(settings: Any, store_config: Any, reload: Any = None,
          watched: list[str] | None = None) -> int:
    """Run until SIGTERM/SIGINT: then stop accepting connections, let in-flight requests
    finish for up to `shutdown_drain_s` (new requests on open connections get 503
    SlowDown meanwhile), commit and sync the store, and return 0."""
    import asyncio

    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(_serve(settings, store_config, reload, watched or []))
    except StoreUnavailable as exc:
        print(f"petrel serve: cannot open the store: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


class StoreUnavailable(Exception):
    """The store could not be opened at start (reported as one line, exit 1)."""


async def _serve(settings: Any, store_config: Any, reload: Any, watched: list[str]) -> None:
    import asyncio
    import gc
    import signal
    import time

    from aiohttp import web

    from petrel.index import IndexUnavailable
    from petrel_gateway.app import (
        METRICS,
        WORKERS,
        build_app,
        inflight_requests,
        reconfigure,
        start_draining,
    )
    from petrel_gateway.context import STORE
    from petrel_gateway.fastlane import FastSite
    from petrel_gateway.memory import trim_periodically
    from petrel_gateway.workers import Workers

    app = build_app(settings, store_config)
    # aiohttp's own shutdown cancels requests still reading their body; petrel drains
    # them first, so an upload in flight at SIGTERM completes and is acknowledged.
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=1.0,
                           keepalive_timeout=settings.idle_connection_timeout_s)
    # Signals first: a SIGTERM that arrives while the store opens still drains and exits 0.
    stop = asyncio.Event()
    reload_now = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_now.set)
    try:
        await runner.setup()  # opens the store
    except IndexUnavailable as exc:
        raise StoreUnavailable(str(exc)) from exc
    site: web.TCPSite
    if settings.fast_lane:
        site = FastSite(runner, settings.host, settings.port,
                        idle_timeout_s=settings.idle_connection_timeout_s,
                        ssl_context=_ssl_context(settings),
                        reuse_port=settings.processes > 1)
    else:
        site = web.TCPSite(runner, settings.host, settings.port,
                           ssl_context=_ssl_context(settings))
    await site.start()
    workers = None
    if settings.processes > 1:
        assert isinstance(site, FastSite)
        workers = app[WORKERS] = Workers(site.lane, settings, store_config, app[STORE],
                                         site.port, settings.processes)
        workers.start()
        app[METRICS].watch_readers(workers.counts)
    backend = store_config.backend
    where = "local" if backend is None else \
        f"s3://{backend.bucket}/{backend.key_prefix} at {backend.endpoint_url or 'AWS'}"
    scheme = "https" if settings.tls_cert_file else "http"
    print(f"petrel: serving S3 on {scheme}://{settings.host}:{settings.port} "
          f"(data {store_config.data_dir}, durability {store_config.durability.value}, "
          f"backend {where})", flush=True)
    # Everything built so far (modules, the app, the store) lives as long as the process:
    # out of the cycle collector's way, a full collection under load is shorter (10 KiB
    # PUTs under wrk, one process: p99 22.8 -> 12.9 ms).
    gc.freeze()
    trimmer = asyncio.create_task(trim_periodically(settings.memory_trim_interval_s))
    watcher = asyncio.create_task(_watch(app, reload, watched, settings.reload_interval_s,
                                         reload_now, reconfigure)) if reload else None
    await stop.wait()
    trimmer.cancel()
    if watcher is not None:
        watcher.cancel()
    print("petrel: stopping: draining in-flight requests", flush=True)
    if workers is not None:  # their requests drain first; new ones come here meanwhile
        await workers.stop(settings.shutdown_drain_s + 5.0)
    start_draining(app)
    server = site._server  # the listening socket only; open connections stay
    if server is not None:
        server.close()
    deadline = time.monotonic() + settings.shutdown_drain_s
    while inflight_requests(app) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await runner.cleanup()  # closes connections, then the store (commit, sync)
    print("petrel: stopped", flush=True)


def _ssl_context(settings: Any) -> Any:
    if not settings.tls_cert_file:
        return None
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def _stamp(paths: list[str]) -> tuple[tuple[float, int] | None, ...]:
    stamps: list[tuple[float, int] | None] = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((stat.st_mtime, stat.st_size))
    return tuple(stamps)


async def _watch(app: Any, reload: Any, watched: list[str], interval_s: float,
                 now: Any, reconfigure: Any) -> None:
    """Reload credentials and QoS limits on SIGHUP (`now` is set) or when a watched
    file's mtime or size changes. A reload that fails is logged and changes nothing."""
    import asyncio
    import logging

    log = logging.getLogger("petrel.serve")
    seen = _stamp(watched)
    while True:
        signalled = False
        try:
            async with asyncio.timeout(interval_s):
                await now.wait()
            signalled = True
        except TimeoutError:
            pass
        now.clear()
        stamp = _stamp(watched)
        if stamp == seen and not signalled:
            continue
        seen = stamp
        try:
            settings = reload()
        except (ConfigError, OSError, ValueError) as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            continue
        changes = reconfigure(app, settings)
        log.info("reloaded: %s", ", ".join(changes) if changes else "nothing changed")
