"""The hand-written protos in protos/ must match Triton's on the wire.

grpc_service.proto and model_config.proto are compiled with grpc_tools.protoc
and their FileDescriptorProtos are compared with the ones tritonclient ships
(tritonclient.grpc.service_pb2 / model_config_pb2). Both sides are normalised
the same way (no source info, no json_name), then compared message by message
so that a failure names the first message / field that differs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PROTOS_DIR = Path(__file__).resolve().parents[2] / "protos"
PROTO_FILES = ("grpc_service.proto", "model_config.proto", "health.proto")

descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
pytest.importorskip("grpc_tools.protoc")
pytest.importorskip("tritonclient.grpc.service_pb2")

from importlib.metadata import version  # noqa: E402

from google.protobuf import text_format  # noqa: E402

from tritonclient.grpc import model_config_pb2, service_pb2  # noqa: E402


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """Compile the three protos; return {file name: FileDescriptorProto}."""
    out = tmp_path_factory.mktemp("protos") / "descriptor_set.pb"
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTOS_DIR}",
        f"--descriptor_set_out={out}",
        "--include_imports",
        *PROTO_FILES,
    ]
    proc = subprocess.run(cmd, cwd=PROTOS_DIR, capture_output=True, text=True)
    assert proc.returncode == 0, f"protoc failed:\n{proc.stdout}\n{proc.stderr}"
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    return {f.name: f for f in fds.file}


def _reference(file_descriptor) -> "descriptor_pb2.FileDescriptorProto":
    fdp = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(fdp)
    return fdp


def _normalise_message(msg) -> None:
    for field in msg.field:
        field.ClearField("json_name")
    for nested in msg.nested_type:
        _normalise_message(nested)


def _normalise(fdp):
    """Copy of fdp without the parts that do not affect the wire/API."""
    out = descriptor_pb2.FileDescriptorProto()
    out.CopyFrom(fdp)
    out.ClearField("source_code_info")
    for msg in out.message_type:
        _normalise_message(msg)
    return out


def _text(proto) -> str:
    return text_format.MessageToString(proto, as_one_line=True) or "<empty>"


def _diff_list(kind, path, ours, theirs, key=lambda x: x.name):
    """Describe the first difference between two repeated descriptor lists."""
    our_names = [key(x) for x in ours]
    their_names = [key(x) for x in theirs]
    if our_names != their_names:
        return (
            f"{path}: {kind} differ (names/order)\n"
            f"  ours:   {our_names}\n  triton: {their_names}"
        )
    for a, b in zip(ours, theirs):
        if a != b:
            return (
                f"{path}.{key(a)}: {kind[:-1]} differs\n"
                f"  ours:   {_text(a)}\n  triton: {_text(b)}"
            )
    return None


def _diff_message(path, ours, theirs):
    """First difference between two DescriptorProtos, or None."""
    # Enums, fields and oneofs first: they name the exact culprit.
    for kind, attr in (
        ("enums", "enum_type"),
        ("fields", "field"),
        ("oneofs", "oneof_decl"),
    ):
        d = _diff_list(kind, path, getattr(ours, attr), getattr(theirs, attr))
        if d:
            return d
    our_nested = [m.name for m in ours.nested_type]
    their_nested = [m.name for m in theirs.nested_type]
    if our_nested != their_nested:
        return (
            f"{path}: nested messages differ (names/order)\n"
            f"  ours:   {our_nested}\n  triton: {their_nested}"
        )
    for a, b in zip(ours.nested_type, theirs.nested_type):
        d = _diff_message(f"{path}.{a.name}", a, b)
        if d:
            return d
    if ours != theirs:  # options, reserved ranges, extensions, ...
        a, b = descriptor_pb2.DescriptorProto(), descriptor_pb2.DescriptorProto()
        a.CopyFrom(ours)
        b.CopyFrom(theirs)
        for m in (a, b):
            for attr in ("field", "nested_type", "enum_type", "oneof_decl"):
                m.ClearField(attr)
        return f"{path}: message differs\n  ours:   {_text(a)}\n  triton: {_text(b)}"
    return None


def _diff_file(ours, theirs):
    """First difference between two FileDescriptorProtos, or None."""
    for attr in ("name", "package", "syntax", "dependency", "options"):
        a, b = getattr(ours, attr), getattr(theirs, attr)
        if a != b:
            return f"file {attr} differs\n  ours:   {a!r}\n  triton: {b!r}"
    d = _diff_list("enums", ours.package, ours.enum_type, theirs.enum_type)
    if d:
        return d
    our_msgs = [m.name for m in ours.message_type]
    their_msgs = [m.name for m in theirs.message_type]
    if our_msgs != their_msgs:
        missing = [n for n in their_msgs if n not in our_msgs]
        extra = [n for n in our_msgs if n not in their_msgs]
        return (
            "top-level messages differ (names/order)\n"
            f"  missing: {missing}\n  extra:   {extra}\n"
            f"  ours:    {our_msgs}\n  triton:  {their_msgs}"
        )
    for a, b in zip(ours.message_type, theirs.message_type):
        d = _diff_message(f"{ours.package}.{a.name}", a, b)
        if d:
            return d
    d = _diff_list("services", ours.package, ours.service, theirs.service)
    if d:
        for a, b in zip(ours.service, theirs.service):
            dm = _diff_list("methods", f"{ours.package}.{a.name}", a.method, b.method)
            if dm:
                return dm
        return d
    if ours != theirs:
        return f"files differ\n  ours:   {_text(ours)}\n  triton: {_text(theirs)}"
    return None


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------


def test_protoc_compiles_all_files(compiled):
    assert set(PROTO_FILES) <= set(compiled)


@pytest.mark.parametrize(
    "file_name, reference",
    [
        ("model_config.proto", model_config_pb2.DESCRIPTOR),
        ("grpc_service.proto", service_pb2.DESCRIPTOR),
    ],
)
def test_descriptor_matches_tritonclient(compiled, file_name, reference):
    ours = _normalise(compiled[file_name])
    theirs = _normalise(_reference(reference))
    diff = _diff_file(ours, theirs)
    assert diff is None, (
        f"{file_name} differs from tritonclient {version('tritonclient')}'s "
        f"(protos/ mirror tritonclient 2.73.0):\n{diff}"
    )
    assert ours == theirs


def test_grpc_service_rpcs(compiled):
    fdp = compiled["grpc_service.proto"]
    assert list(fdp.dependency) == ["model_config.proto"]
    (service,) = fdp.service
    assert service.name == "GRPCInferenceService"
    methods = {m.name: m for m in service.method}
    assert len(methods) == 20
    streaming = [
        n for n, m in methods.items() if m.client_streaming or m.server_streaming
    ]
    assert streaming == ["ModelStreamInfer"]
    stream = methods["ModelStreamInfer"]
    assert stream.client_streaming and stream.server_streaming
    assert stream.input_type == ".inference.ModelInferRequest"
    assert stream.output_type == ".inference.ModelStreamInferResponse"


def test_health_proto(compiled):
    fdp = compiled["health.proto"]
    assert fdp.syntax == "proto3"
    assert fdp.package == "grpc.health.v1"
    assert [s.name for s in fdp.service] == ["Health"]
    (method,) = fdp.service[0].method
    assert method.name == "Check"
    assert method.input_type == ".grpc.health.v1.HealthCheckRequest"
    assert method.output_type == ".grpc.health.v1.HealthCheckResponse"
    assert not method.client_streaming and not method.server_streaming

    msgs = {m.name: m for m in fdp.message_type}
    assert set(msgs) == {"HealthCheckRequest", "HealthCheckResponse"}
    (service_field,) = msgs["HealthCheckRequest"].field
    assert (service_field.name, service_field.number, service_field.type) == (
        "service",
        1,
        descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    )
    response = msgs["HealthCheckResponse"]
    (status_field,) = response.field
    assert (status_field.name, status_field.number) == ("status", 1)
    assert status_field.type_name == (
        ".grpc.health.v1.HealthCheckResponse.ServingStatus"
    )
    (enum,) = response.enum_type
    assert enum.name == "ServingStatus"
    assert [(v.name, v.number) for v in enum.value] == [
        ("UNKNOWN", 0),
        ("SERVING", 1),
        ("NOT_SERVING", 2),
        ("SERVICE_UNKNOWN", 3),
    ]
