"""tritonserver 2.51's flags that `pyserve serve` takes without serving them yet. Each is
refused with one line naming it when given, never ignored; a Triton command line that does
not use them works unchanged. Flags with no counterpart in pyserve's design are accepted with
a line in the log that says so."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("pyserve")

# Refused when given: what is missing.
UNSERVED = {
    "--allow-sagemaker": "SageMaker's API is not served",
    "--sagemaker-port": "SageMaker's API is not served",
    "--sagemaker-safe-port-range": "SageMaker's API is not served",
    "--sagemaker-thread-count": "SageMaker's API is not served",
    "--allow-vertex-ai": "Vertex AI's API is not served",
    "--vertex-ai-port": "Vertex AI's API is not served",
    "--vertex-ai-thread-count": "Vertex AI's API is not served",
    "--vertex-ai-default-model": "Vertex AI's API is not served",
}

# Accepted, with what they mean here.
NO_COUNTERPART = {
    "--backend-directory": "pyserve's backends are built in; the folder is not read",
    "--repoagent-directory": "pyserve has no repository agents; the folder is not read",
    "--buffer-manager-thread-count": "the core copies tensors as it assembles batches, "
                                     "without buffer-manager threads",
    "--cuda-memory-pool-byte-size": "CUDA memory comes from each framework's own allocator",
    "--cuda-virtual-address-size": "CUDA memory comes from each framework's own allocator",
    "--enable-peer-access": "peer access is each framework's own",
    "--min-supported-compute-capability": "models load on any GPU their framework supports",
    "--grpc-infer-allocation-pool-size": "the native gRPC frontend keeps no request pool",
}


def _dest(flag: str) -> str:
    return "triton_" + flag[2:].replace("-", "_")


def add_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "tritonserver flags not served", "refused when given: " + ", ".join(UNSERVED)
        + "; accepted without effect (said in the log): " + ", ".join(NO_COUNTERPART))
    for flag in (*UNSERVED, *NO_COUNTERPART):  # repeatable, as some of Triton's are
        group.add_argument(flag, dest=_dest(flag), action="append", metavar="VALUE",
                           help=argparse.SUPPRESS)


def check_flags(args: argparse.Namespace) -> None:
    """Refuse the unserved flags given; log the accepted ones without effect."""
    for flag, missing in UNSERVED.items():
        if getattr(args, _dest(flag)) is not None:
            raise SystemExit(f"pyserve: {flag} is not supported: {missing}")
    for flag, meaning in NO_COUNTERPART.items():
        if getattr(args, _dest(flag)) is not None:
            log.info("%s accepted without effect: %s", flag, meaning)
