"""The `pyserve` command. It only fills ServerOptions and hands them to the server."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pyserve import __version__
from pyserve.options import CONTROL_MODES, ServerOptions


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
                       action="append", required=True, type=Path, metavar="DIR",
                       help="a model repository; repeat for several")
    net = serve.add_argument_group("network")
    net.add_argument("--host", default="0.0.0.0",
                     help="address the gRPC, HTTP and metrics services listen on (default: %(default)s)")
    net.add_argument("--grpc-port", type=int, default=8001,
                     help="gRPC port, 0 for any free one (default: %(default)s)")
    net.add_argument("--http-port", type=int, default=8000,
                     help="HTTP port, 0 for any free one (default: %(default)s)")
    net.add_argument("--metrics-port", type=int, default=8002,
                     help="Prometheus metrics port, 0 for any free one (default: %(default)s)")
    for name in ("grpc", "http", "metrics"):
        net.add_argument(f"--allow-{name}", type=_boolean, default=True, metavar="BOOL",
                         help=f"serve {name} (default: true)")
    net.add_argument("--http-max-input-size", type=int, default=64 * 1024 * 1024,
                     metavar="BYTES", help="largest HTTP request body (default: %(default)s)")
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
    models.add_argument("--backend-config", action="append", default=[],
                        metavar="[BACKEND,]KEY=VALUE",
                        help="backend settings; supported: default-max-batch-size=N")
    models.add_argument("--model-load-thread-count", type=int, default=4, metavar="N",
                        help="models loaded in parallel (default: %(default)s)")
    serve.add_argument("--exit-timeout-secs", type=float, default=30.0, metavar="SECONDS",
                       help="how long shutdown waits for in-flight requests (default: %(default)s)")
    serve.add_argument("--log-verbose", type=int, default=0, metavar="LEVEL",
                       help="verbose logging when > 0 (default: %(default)s)")
    from pyserve.bench.cli import add_bench, add_tune

    add_bench(commands)
    add_tune(commands)
    return parser


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
    if args.command != "serve":  # bench, tune: clients of a running server
        return args.func(args)
    options = ServerOptions(
        model_repositories=args.model_repositories,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        allow_grpc=args.allow_grpc,
        allow_http=args.allow_http,
        allow_metrics=args.allow_metrics,
        http_max_input_size=args.http_max_input_size,
        model_control_mode=args.model_control_mode,
        load_models=args.load_models,
        repository_poll_secs=args.repository_poll_secs,
        strict_readiness=args.strict_readiness,
        exit_on_error=args.exit_on_error,
        auto_complete_config=not (args.disable_auto_complete_config or args.strict_model_config),
        model_config_name=args.model_config_name,
        default_max_batch_size=_default_max_batch_size(args.backend_config),
        model_load_thread_count=args.model_load_thread_count,
        exit_timeout_secs=args.exit_timeout_secs,
        log_verbose=args.log_verbose,
    )
    logging.basicConfig(
        level=logging.DEBUG if options.log_verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    from pyserve.server import run  # imported late: `pyserve --help` stays fast

    return run(options)


if __name__ == "__main__":
    sys.exit(main())
