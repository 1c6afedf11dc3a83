"""The `pyserve` command. It only fills ServerOptions and hands them to the server."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from pyserve import (__version__, _core, host_policy, logs, rate_limit, restricted, tracing,
                     triton_flags)
from pyserve.options import (COMPRESSION_LEVELS, CONTROL_MODES, FRONTENDS, LISTEN_BACKLOG,
                             MetricsSettings, ServerOptions, Tls)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyserve",
        description="A Triton-compatible inference server: KServe v2 gRPC and HTTP, "
                    "Triton model repositories and config.pbtxt, a C++ serving core.")
    parser.add_argument("--version", action="version", version=f"pyserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="serve the models of one or more model repositories",
        description="Serve a Triton model repository. Flag names follow tritonserver's, so a "
                    "Triton command line works unchanged.")
    serve.add_argument("--model-repository", "--model-store", dest="model_repositories",
                       action="append", required=True, type=_repository, metavar="DIR|URL",
                       help="a model repository: a folder, or s3://[http[s]://host:port/]bucket/"
                            "path, gs://bucket/path, as://account/container/path; repeat for "
                            "several")
    serve.add_argument("--repository-cache-dir", type=Path, default=None, metavar="DIR",
                       help="where remote repositories are mirrored, kept across restarts "
                            "(default: a temporary folder, or TRITON_AWS/GCS/AZURE_MOUNT_DIRECTORY)")
    _network_flags(serve, "0.0.0.0")
    _cache_and_metrics_flags(serve)
    models = serve.add_argument_group("models")
    models.add_argument("--model-control-mode", choices=CONTROL_MODES, default="none",
                        type=str.lower,
                        help="none: load every model at startup; poll: also reload what changes "
                             "on disk; explicit: load only --load-model names, then use the "
                             "repository API (default: %(default)s)")
    models.add_argument("--load-model", dest="load_models", action="append", default=[],
                        metavar="NAME", help="explicit mode: a model to load at startup; "
                                             "repeat for several, '*' for all")
    models.add_argument("--repository-poll-secs", type=float, default=15.0, metavar="SECONDS",
                        help="poll mode: seconds between repository scans (default: %(default)s)")
    models.add_argument("--model-namespacing", type=_boolean, default=False, metavar="BOOL",
                        help="each repository is a namespace: models of one name in several "
                             "repositories load side by side; a request's name must be in one "
                             "namespace only, an ensemble's steps resolve in its own repository "
                             "first (default: false)")
    models.add_argument("--strict-readiness", type=_boolean, default=True, metavar="BOOL",
                        help="ready only when every model is ready (default: true)")
    models.add_argument("--exit-on-error", type=_boolean, default=True, metavar="BOOL",
                        help="exit when a model fails to load at startup (default: true)")
    models.add_argument("--disable-auto-complete-config", action="store_true",
                        help="use config.pbtxt as written, without filling it from the model")
    models.add_argument("--strict-model-config", type=_boolean, default=None, metavar="BOOL",
                        help=argparse.SUPPRESS)  # deprecated Triton spelling: true disables it
    models.add_argument("--model-config-name", default="", metavar="NAME",
                        help="read configs/NAME.pbtxt instead of config.pbtxt where present")
    models.add_argument("--default-max-queue-size", type=int, default=4096, metavar="N",
                        help="requests a model version queues at most; more are refused at "
                             "once with UNAVAILABLE / 503 (a config's max_queue_size also "
                             "applies; 0 = unbounded) (default: %(default)s)")
    models.add_argument("--model-unload-timeout-secs", type=float, default=60.0,
                        metavar="SECONDS",
                        help="an unloading model answers the requests it accepted; past this, "
                             "those still waiting are refused (UNAVAILABLE) and instances hung "
                             "in execute are abandoned (default: %(default)s)")
    models.add_argument("--pinned-memory-pool-byte-size", type=int, default=256 * 1024 * 1024,
                        metavar="BYTES", help="host memory (pinned when a GPU is present) kept "
                                              "for reuse by batch assembly and outputs "
                                              "(default: %(default)s)")
    models.add_argument("--backend-config", action="append", default=[],
                        metavar="[BACKEND,]KEY=VALUE",
                        help="backend settings; supported: default-max-batch-size=N")
    models.add_argument("--model-load-thread-count", type=int, default=4, metavar="N",
                        help="models loaded in parallel (default: %(default)s)")
    models.add_argument("--model-load-gpu-limit", type=_gpu_limit, action="append", default=[],
                        metavar="DEVICE:FRACTION",
                        help="refuse to create instances on a GPU while more than this "
                             "fraction of its memory is in use")
    models.add_argument("--host-policy", type=_host_policy, action="append", default=[],
                        metavar="NAME,SETTING=VALUE",
                        help="settings of a host policy, which instance groups name "
                             "(default names: cpu, gpu_<device>): cpu-cores=0-3,8 pins "
                             "an instance's threads, numa-node=N binds their memory")
    models.add_argument("--rate-limit", type=_rate_limit_mode, default="off",
                        metavar="off|execution_count",
                        help="execution_count: an instance whose group declares rate_limiter "
                             "resources executes only while it holds them, instances of "
                             "every model competing by priority; off (default): ignored")
    models.add_argument("--rate-limit-resource", type=_rate_limit_resource, action="append",
                        default=[], metavar="NAME:COUNT[:DEVICE]",
                        help="a resource's count (per device, or on DEVICE only); default: "
                             "the most any instance asks")
    models.add_argument("--model-load-retry-count", type=int, default=0, metavar="N",
                        help="times a version whose load failed is loaded again before the "
                             "load fails (default: %(default)s)")
    serve.add_argument("--exit-timeout-secs", type=float, default=30.0, metavar="SECONDS",
                       help="how long shutdown waits for in-flight requests, the drain grace "
                            "included (default: %(default)s)")
    serve.add_argument("--drain-grace-secs", type=float, default=0.0, metavar="SECONDS",
                       help="on SIGTERM, report not ready but keep accepting requests this long "
                            "before refusing new connections, so that load balancers stop "
                            "sending first (default: %(default)s)")
    serve.add_argument("--log-verbose", type=int, default=0, metavar="LEVEL",
                       help="verbose logging when > 0 (default: %(default)s)")
    for severity in ("info", "warning", "error"):
        serve.add_argument(f"--log-{severity}", type=_boolean, default=True, metavar="BOOL",
                           help=f"log {severity} messages (default: true)")
    serve.add_argument("--log-file", default=None, metavar="FILE",
                       help="append the log to FILE instead of stderr")
    serve.add_argument("--log-format", choices=logs.FORMATS, default="default",
                       help="Triton's line formats: default (glog's) or ISO8601 "
                            "(default: %(default)s)")
    serve.add_argument("--id", dest="server_id", default="triton", metavar="NAME",
                       help="the server's name in its metadata (default: %(default)s)")
    tracing.add_flags(serve)
    triton_flags.add_flags(serve)
    _torchserve_parser(commands)
    from pyserve.bench.cli import add_bench, add_tune

    add_bench(commands)
    add_tune(commands)
    return parser


def _network_flags(parser: argparse.ArgumentParser, host: str) -> None:
    """The KServe v2 services' flags, tritonserver's names and defaults."""
    net = parser.add_argument_group("network")
    net.add_argument("--host", default=host,
                     help="address the gRPC, HTTP and metrics services listen on (default: %(default)s)")
    for name, default in (("grpc", "--host"), ("http", "--host"), ("metrics", "--http-address")):
        net.add_argument(f"--{name}-address", default=None, metavar="HOST",
                         help=f"address the {name} service listens on (default: {default})")
    for name in ("grpc", "http"):
        net.add_argument(f"--reuse-{name}-port", type=_boolean, default=False, metavar="BOOL",
                         help=f"let other servers that also ask listen on the {name} port "
                              "(SO_REUSEPORT); otherwise a port in use stops start-up "
                              "(default: false)")
    for flag, (_, what) in _GRPC_CHANNEL_FLAGS.items():
        net.add_argument(flag, type=int, default=None, metavar="N", help=f"gRPC: {what}")
    net.add_argument("--grpc-infer-response-compression-level", type=_compression_level,
                     default="none", metavar="LEVEL",
                     help="gRPC: how inference responses are compressed: none, low, medium or "
                          "high (default: none)")
    for name, what in (("grpc", "gRPC"), ("http", "HTTP (and metrics)")):
        net.add_argument(f"--{name}-use-ssl", type=_boolean, default=False, metavar="BOOL",
                         help=f"{what} over TLS with --{name}-server-cert and "
                              f"--{name}-server-key")
        net.add_argument(f"--{name}-use-ssl-mutual", type=_boolean, default=False,
                         metavar="BOOL", help=f"{what} over TLS, clients' certificates required "
                                              f"and verified against --{name}-root-cert")
    for flag, header in (("--grpc-restricted-protocol", "triton-grpc-protocol-KEY"),
                         ("--http-restricted-api", "KEY")):
        net.add_argument(flag, action="append", default=[], metavar="GROUPS:KEY=VALUE",
                         help=f"answer the groups' endpoints only to requests whose {header} "
                              f"header is VALUE; groups: {', '.join(restricted.GROUPS)}")
    for name in ("grpc", "http"):
        net.add_argument(f"--{name}-header-forward-pattern", type=_pattern, default="",
                         metavar="REGEX", help=f"{name} headers whose name the pattern finds "
                                               "become parameters of inference requests")
    for name, what in (("server-cert", "the server's certificate"),
                       ("server-key", "the server's private key"),
                       ("root-cert", "the CA certificate clients' certificates are verified "
                                     "against")):
        for service in ("grpc", "http"):
            net.add_argument(f"--{service}-{name}", type=Path, default=None, metavar="PEM",
                             help=f"{service} TLS: {what} (a PEM file)")
    net.add_argument("--grpc-port", type=int, default=8001,
                     help="gRPC port, 0 for any free one (default: %(default)s)")
    net.add_argument("--http-port", type=int, default=8000,
                     help="HTTP port, 0 for any free one (default: %(default)s)")
    net.add_argument("--metrics-port", type=int, default=8002,
                     help="Prometheus metrics port, 0 for any free one (default: %(default)s)")
    for name in ("grpc", "http", "metrics"):
        net.add_argument(f"--allow-{name}", type=_boolean, default=True, metavar="BOOL",
                         help=f"serve {name} (default: true)")
    net.add_argument("--grpc-frontend", choices=FRONTENDS, default="auto",
                     help="native: gRPC C++ serves inference (control RPCs still in Python), "
                          "python: grpc.aio serves everything, auto: native when built "
                          "(default: %(default)s)")
    net.add_argument("--http-frontend", choices=FRONTENDS, default="auto",
                     help="native: Boost.Beast serves inference and health (other routes still "
                          "in Python), "
                          "python: aiohttp serves everything, auto: native when built "
                          "(default: %(default)s)")
    net.add_argument("--http-backlog", type=_positive, default=LISTEN_BACKLOG, metavar="N",
                     help="HTTP: connections queued before they are accepted, for bursts of "
                          "new ones; the kernel caps it at net.core.somaxconn "
                          "(default: %(default)s)")
    net.add_argument("--http-thread-count", type=int, default=8, metavar="N",
                     help="native HTTP: event-loop threads serving the connections, which "
                          "they share, however many (default: %(default)s)")
    net.add_argument("--http-max-input-size", type=int, default=64 * 1024 * 1024,
                     metavar="BYTES", help="largest HTTP request body, after decompression; "
                                           "larger ones get 413 (default: %(default)s)")
    net.add_argument("--grpc-max-message-size", type=int, default=2**31 - 1, metavar="BYTES",
                     help="largest gRPC message received or sent; larger ones get "
                          "RESOURCE_EXHAUSTED (default: %(default)s, Triton's)")
    net.add_argument("--request-limit", type=_request_limit, action="append", default=[],
                     dest="request_limits", metavar="NAME=N",
                     help="what one inference message may declare, checked before anything is "
                          "allocated for it; repeatable. NAME is one of "
                          + ", ".join(f"{k} ({v:,})" for k, v in _core.request_limits().items())
                          + " (the defaults)")


def _cache_and_metrics_flags(parser: argparse.ArgumentParser) -> None:
    cache = parser.add_argument_group("response cache")
    cache.add_argument("--cache-config", action="append", default=[], metavar="local,size=BYTES",
                       help="the response cache, used by models whose config enables "
                            "response_cache: Triton's 'local' cache of BYTES, least recently "
                            "used entries evicted")
    cache.add_argument("--response-cache-byte-size", type=int, default=None, metavar="BYTES",
                       help="deprecated: --cache-config local,size=BYTES")
    cache.add_argument("--cache-directory", default=None, metavar="DIR",
                       help="where tritonserver looks for cache libraries; accepted, the local "
                            "cache is built in")
    metrics = parser.add_argument_group("metrics")
    metrics.add_argument("--metrics-config", action="append", default=[], metavar="KEY=VALUE",
                         help="counter_latencies=false drops the *_duration_us counters; "
                              "summary_latencies=true adds the *_summary_us summaries, of "
                              "summary_quantiles=Q:E[,Q:E...] (default: "
                              + ",".join(f"{q}:{e}" for q, e in MetricsSettings.summary_quantiles)
                              + "); repeatable")
    metrics.add_argument("--metrics-interval-ms", type=float, default=2000.0, metavar="MS",
                         help="how often CPU and GPU figures are sampled (default: %(default)s)")
    for kind in ("cpu", "gpu"):
        metrics.add_argument(f"--allow-{kind}-metrics", type=_boolean, default=True,
                             metavar="BOOL", help=f"serve {kind.upper()} metrics (default: true)")


def _cache_byte_size(args: argparse.Namespace) -> int | None:
    """The local cache's size from --cache-config or --response-cache-byte-size, with
    tritonserver's texts; None when neither is given."""
    if args.cache_directory is not None:
        logging.getLogger("pyserve").info(
            "--cache-directory accepted without effect: the local cache is built in")
    if args.cache_config and args.response_cache_byte_size is not None:
        raise SystemExit("pyserve: Incompatible flags --response-cache-byte-size and "
                         "--cache-config both provided. Please provide one or the other.")
    if args.response_cache_byte_size is not None:
        logging.getLogger("pyserve").warning(
            "'--response-cache-byte-size' has been deprecated! This will default to the "
            "'local' cache implementation with the provided byte size for its config. Please "
            "use '--cache-config' instead. The equivalent --cache-config CLI args would be: "
            "'--cache-config=local,size=%d'", args.response_cache_byte_size)
        settings = {"size": str(args.response_cache_byte_size)}
    elif args.cache_config:
        settings = {}
        for text in args.cache_config:
            name, comma, setting = text.partition(",")
            key, equals, value = setting.partition("=")
            if not comma or not name:
                raise SystemExit("pyserve: No cache specified. --cache-config option format is "
                                 f"<cache name>,<setting>=<value>. Got {text}")
            if not (equals and key and value):
                raise SystemExit("pyserve: --cache-config option format is '<cache name>,"
                                 f"<setting>=<value>'. Got {text}")
            if name != "local":
                raise SystemExit(f"pyserve: --cache-config: the '{name}' cache is not "
                                 "supported; pyserve has Triton's 'local' cache")
            settings[key] = value
    else:
        return None
    unknown = set(settings) - {"size"}
    size = settings.get("size", "")
    if unknown or not size.isdigit():
        raise SystemExit("pyserve: the local cache takes one setting, size=BYTES (a whole "
                         f"number), got {', '.join(f'{k}={v}' for k, v in settings.items())}")
    return int(size)


def _metrics_settings(args: argparse.Namespace) -> MetricsSettings:
    """--metrics-config's KEY=VALUE settings (Triton 2.51's keys) and the sampling flags."""
    settings = MetricsSettings(interval_ms=args.metrics_interval_ms,
                               allow_cpu=args.allow_cpu_metrics, allow_gpu=args.allow_gpu_metrics)
    for text in args.metrics_config:
        key, equals, value = text.partition("=")
        if not equals or "," in key:
            raise SystemExit(f"pyserve: --metrics-config option format is <setting>=<value>. "
                             f"Got {text}")
        if key == "counter_latencies":  # as Triton reads them: only "false" turns off,
            settings.counter_latencies = value != "false"
        elif key == "summary_latencies":  # only "true" turns on
            settings.summary_latencies = value == "true"
        elif key == "summary_quantiles":
            try:
                pairs = tuple(tuple(float(x) for x in pair.split(":", 1))
                              for pair in value.split(","))
            except ValueError:
                pairs = ()
            if not pairs or any(len(p) != 2 or not 0 <= p[0] <= 1 for p in pairs):
                raise SystemExit("pyserve: --metrics-config summary_quantiles: expected "
                                 f"<quantile>:<error>[,...] with quantiles in [0, 1], got {value}")
            settings.summary_quantiles = pairs
        else:
            raise SystemExit(f"pyserve: --metrics-config: unknown setting '{key}' (served: "
                             "counter_latencies, summary_latencies, summary_quantiles)")
    if settings.interval_ms <= 0:
        raise SystemExit("pyserve: --metrics-interval-ms must be positive")
    return settings


# tritonserver's keepalive, HTTP/2 ping and connection-age flags: the gRPC channel argument
# each sets, and what it is (gRPC's defaults are Triton's).
_GRPC_CHANNEL_FLAGS = {
    "--grpc-keepalive-time": ("grpc.keepalive_time_ms",
                              "ms between keepalive pings (default: 7200000)"),
    "--grpc-keepalive-timeout": ("grpc.keepalive_timeout_ms",
                                 "ms a keepalive ping waits for its ack (default: 20000)"),
    "--grpc-keepalive-permit-without-calls": (
        "grpc.keepalive_permit_without_calls", "1: keepalive pings without calls (default: 0)"),
    "--grpc-http2-max-pings-without-data": (
        "grpc.http2.max_pings_without_data",
        "pings sent without data frames, 0 = any (default: 2)"),
    "--grpc-http2-min-recv-ping-interval-without-data": (
        "grpc.http2.min_ping_interval_without_data_ms",
        "ms expected between a client's pings without data (default: 300000)"),
    "--grpc-http2-max-ping-strikes": ("grpc.http2.max_ping_strikes",
                                      "bad pings tolerated, 0 = any (default: 2)"),
    "--grpc-max-connection-age": ("grpc.max_connection_age_ms",
                                  "ms a connection may live (default: no limit)"),
    "--grpc-max-connection-age-grace": ("grpc.max_connection_age_grace_ms",
                                        "ms past its age a connection may finish its calls"),
}

_NETWORK = ("host", "grpc_address", "http_address", "metrics_address", "grpc_port",
            "http_port", "metrics_port", "reuse_grpc_port", "reuse_http_port", "allow_grpc",
            "allow_http", "allow_metrics", "grpc_frontend", "http_frontend",
            "http_backlog", "http_thread_count", "http_max_input_size", "grpc_max_message_size",
            "grpc_header_forward_pattern", "http_header_forward_pattern",
            "grpc_infer_response_compression_level")


def _network_options(args: argparse.Namespace) -> dict:
    """The ServerOptions fields of _network_flags' flags."""
    channel_args = {argument: getattr(args, flag[2:].replace("-", "_"))
                    for flag, (argument, _) in _GRPC_CHANNEL_FLAGS.items()}
    return {**{name: getattr(args, name) for name in _NETWORK},
            "grpc_channel_args": {k: v for k, v in channel_args.items() if v is not None},
            "grpc_tls": _tls(args, "grpc"),
            "http_tls": _tls(args, "http"),
            **_restricted(args),
            "request_limits": dict(args.request_limits)}


def _tls(args: argparse.Namespace, service: str) -> Tls | None:
    """TLS as tritonserver's --grpc-use-ssl flags ask (pyserve's --http-use-ssl ones alike):
    mutual preempts --SERVICE-use-ssl."""
    def arg(name: str):
        return getattr(args, f"{service}_{name}")

    mutual = arg("use_ssl_mutual")
    if not (arg("use_ssl") or mutual):
        return None
    flag = f"--{service}-use-ssl-mutual" if mutual else f"--{service}-use-ssl"
    if arg("server_cert") is None or arg("server_key") is None:
        raise SystemExit(f"pyserve: {flag} needs --{service}-server-cert and "
                         f"--{service}-server-key")
    if mutual and arg("root_cert") is None:
        raise SystemExit(f"pyserve: {flag} needs --{service}-root-cert")
    return Tls(arg("server_cert"), arg("server_key"), arg("root_cert"), mutual=mutual)


def _restricted(args: argparse.Namespace) -> dict:
    try:
        return {"grpc_restricted": restricted.parse("--grpc-restricted-protocol",
                                                    args.grpc_restricted_protocol),
                "http_restricted": restricted.parse("--http-restricted-api",
                                                    args.http_restricted_api)}
    except ValueError as e:
        raise SystemExit(f"pyserve: {e}") from None


def _gpu_limit(text: str) -> tuple[int, float]:
    device, colon, fraction = text.partition(":")
    if not colon:  # Triton's text
        raise argparse.ArgumentTypeError(
            "Cannot parse pair option due to incorrect number of inputs.--<pair option> "
            f"argument requires format <first>:<second>. Found: {text}")
    try:
        return int(device), float(fraction)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value: {text}") from None


def _host_policy(text: str) -> tuple[str, str, str]:
    try:
        return host_policy.parse_flag(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _rate_limit_mode(text: str) -> str:
    try:
        return rate_limit.parse_mode(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _rate_limit_resource(text: str) -> tuple[str, int, int]:
    try:
        return rate_limit.parse_resource(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _host_policies(flags: list[tuple[str, str, str]]) -> dict[str, dict[str, str]]:
    policies: dict[str, dict[str, str]] = {}
    for name, key, value in flags:
        policies.setdefault(name, {})[key] = value
    return policies


def _compression_level(text: str) -> str:
    if text.lower() not in COMPRESSION_LEVELS:  # Triton's text
        raise argparse.ArgumentTypeError(
            "invalid argument for --grpc_infer_response_compression_level")
    return text.lower()


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return int(text)


def _pattern(text: str) -> str:
    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"not a regular expression: {e}") from None
    return text


def _request_limit(text: str) -> tuple[str, int]:
    name, _, value = text.partition("=")
    names = _core.request_limits()
    if name not in names or not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(
            f"expected NAME=N with N >= 1 and NAME one of {', '.join(names)}, got '{text}'")
    return name, int(value)


def _repository(text: str) -> Path | str:
    """A local folder as a Path; a remote repository URL kept as text (a Path would fold its
    '//'), checked here so that a typo is a usage error."""
    from pyserve.repository.stores import is_remote, parse  # no cloud library is imported
    from pyserve.errors import ServerError

    if not is_remote(text):
        return Path(text)
    try:
        parse(text)
    except ServerError as e:
        raise argparse.ArgumentTypeError(e.message) from None
    return text

def _torchserve_parser(commands) -> None:
    ts = commands.add_parser(
        "torchserve", help="serve a TorchServe model store (.mar archives, TorchServe's APIs)",
        description="Serve .mar archives with TorchServe's inference, management and metrics "
                    "APIs. Takes `torchserve --start`'s flags, so a torchserve command line "
                    "works with `pyserve torchserve` in its place; runs in the foreground.")
    ts.add_argument("--start", action="store_true", help="accepted; pyserve always starts")
    ts.add_argument("--stop", action="store_true",
                    help="not supported: stop the server with a signal (Ctrl+C, kill PID)")
    ts.add_argument("--foreground", action="store_true", help="accepted; always in foreground")
    ts.add_argument("--ts-config", type=Path, metavar="FILE", help="config.properties")
    ts.add_argument("--model-store", type=Path, metavar="DIR", help="the model store")
    ts.add_argument("--models", nargs="+", default=[], metavar="MODEL",
                    help="NAME=FILE.mar, FILE.mar or 'all': archives to load at startup")
    ts.add_argument("--ncs", "--no-config-snapshots", action="store_true",
                    help="accepted; pyserve writes no config snapshots")
    ts.add_argument("--disable-token-auth", "--dt", action="store_true",
                    help="serve without token authorization")
    ts.add_argument("--enable-model-api", action="store_true",
                    help="allow registering and unregistering models through the API")
    ts.add_argument("--log-config", metavar="FILE", help="accepted and ignored (log4j2)")
    ts.add_argument("--workflow-store", metavar="DIR", help=argparse.SUPPRESS)
    ts.add_argument("--plugins-path", "--ppath", metavar="DIR", help=argparse.SUPPRESS)
    ts.add_argument("--log-verbose", type=int, default=0, metavar="LEVEL",
                    help="verbose logging when > 0 (default: %(default)s)")
    ts.add_argument("--model-repository", dest="model_repositories", action="append",
                    default=[], type=_repository, metavar="DIR|URL",
                    help="also serve a Triton model repository (repeat for several); its models "
                         "and the model store's are all served over KServe v2")
    _network_flags(ts, "127.0.0.1")


def _torchserve(args: argparse.Namespace) -> int:
    logs.configure(args.log_verbose)
    if args.stop:
        raise SystemExit("pyserve torchserve: --stop is not supported; stop the server with a "
                         "signal (Ctrl+C or kill PID)")
    for flag, value in (("--workflow-store", args.workflow_store),
                        ("--plugins-path", args.plugins_path)):
        if value:
            raise SystemExit(f"pyserve torchserve: {flag} is not supported (workflows and "
                             "frontend plugins are TorchServe-only)")
    from pyserve.errors import ServerError
    from pyserve.torchserve import config

    try:
        options = config.load(args.ts_config, model_store=args.model_store, models=args.models,
                              disable_token_auth=args.disable_token_auth,
                              enable_model_api=args.enable_model_api)
    except ServerError as e:
        raise SystemExit(f"pyserve torchserve: {e.message}") from None
    kserve = ServerOptions(model_repositories=args.model_repositories,
                           log_verbose=args.log_verbose, **_network_options(args))
    from pyserve.torchserve.server import run as run_torchserve

    return run_torchserve(options, kserve)


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _default_max_batch_size(settings: list[str]) -> int:
    """--backend-config=[onnxruntime,]default-max-batch-size=N; other settings are refused."""
    value = 4
    for setting in settings:
        key, _, number = setting.rpartition(",")[2].partition("=")
        if key != "default-max-batch-size" or not number.isdigit():
            raise SystemExit(f"pyserve: unsupported --backend-config '{setting}'")
        value = int(number)
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "torchserve":
        return _torchserve(args)
    if args.command != "serve":  # bench, tune: clients of a running server
        return args.func(args)
    logs.configure(args.log_verbose, args.log_info, args.log_warning, args.log_error,
                   args.log_file, args.log_format)  # first: what the flags' parsing logs
    options = ServerOptions(
        **_network_options(args),
        server_id=args.server_id,
        model_repositories=args.model_repositories,
        repository_cache_dir=args.repository_cache_dir,
        default_max_queue_size=args.default_max_queue_size,
        pinned_memory_pool_byte_size=args.pinned_memory_pool_byte_size,
        model_unload_timeout_secs=args.model_unload_timeout_secs,
        response_cache_byte_size=_cache_byte_size(args),
        metrics=_metrics_settings(args),
        model_control_mode=args.model_control_mode,
        load_models=args.load_models,
        repository_poll_secs=args.repository_poll_secs,
        model_namespacing=args.model_namespacing,
        strict_readiness=args.strict_readiness,
        exit_on_error=args.exit_on_error,
        auto_complete_config=not (args.disable_auto_complete_config or args.strict_model_config),
        model_config_name=args.model_config_name,
        default_max_batch_size=_default_max_batch_size(args.backend_config),
        model_load_thread_count=args.model_load_thread_count,
        model_load_retry_count=max(args.model_load_retry_count, 0),
        host_policies=_host_policies(args.host_policy),
        rate_limit=args.rate_limit,
        rate_limit_resources=args.rate_limit_resource,
        model_load_gpu_limits=dict(args.model_load_gpu_limit),
        exit_timeout_secs=args.exit_timeout_secs,
        drain_grace_secs=args.drain_grace_secs,
        log_verbose=args.log_verbose,
    )
    triton_flags.check_flags(args)
    tracing.configure_from_args(args)
    from pyserve.server import run  # imported late: `pyserve --help` stays fast

    return run(options)


if __name__ == "__main__":
    sys.exit(main())
