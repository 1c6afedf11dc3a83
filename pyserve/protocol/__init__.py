"""Triton's protobuf messages, from a private descriptor pool.

The .proto files in protos/ are compiled at build time into one serialized descriptor set
(`_descriptors.py`). Loading it into a pool of our own, rather than importing generated
`_pb2` modules, keeps the package name `inference` and every message identical to Triton's
while letting `tritonclient` (which registers `inference` in protobuf's default pool) live in
the same process. The wire carries only field numbers and the service path, so nothing else
needs the default pool.

Use: `from pyserve.protocol import pb, health`, then `pb.ModelInferRequest()`,
`pb.ModelConfig`, `health.HealthCheckResponse`.
"""

from __future__ import annotations

from types import SimpleNamespace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pyserve.protocol._descriptors import FILE_DESCRIPTOR_SET

POOL = descriptor_pool.DescriptorPool()

_files = list(descriptor_pb2.FileDescriptorSet.FromString(FILE_DESCRIPTOR_SET).file)
_classes = message_factory.GetMessages(_files, pool=POOL)


def _package(prefix: str) -> SimpleNamespace:
    return SimpleNamespace(**{
        full_name[len(prefix):]: cls
        for full_name, cls in _classes.items()
        if full_name.startswith(prefix) and "." not in full_name[len(prefix):]
    })


pb = _package("inference.")
health = _package("grpc.health.v1.")

INFERENCE_SERVICE = POOL.FindServiceByName("inference.GRPCInferenceService")
HEALTH_SERVICE = POOL.FindServiceByName("grpc.health.v1.Health")

__all__ = ["POOL", "pb", "health", "INFERENCE_SERVICE", "HEALTH_SERVICE"]
