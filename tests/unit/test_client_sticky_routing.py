"""The sticky-routing header of a sequence reaches the wire through tritonclient, as an HTTP
header and as gRPC metadata, where a proxy hashing on it (Envoy, Istio) can see it."""

from __future__ import annotations

import http.server
import json
import threading
from concurrent import futures

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2

from pyserve.client import SEQUENCE_ID_HEADER, sequence_headers


def test_headers_for_a_sequence():
    assert sequence_headers(42) == {"x-sequence-id": "42"}
    assert sequence_headers("abc", {"a": "b"}) == {"a": "b", "x-sequence-id": "abc"}
    assert sequence_headers(0) == {} and sequence_headers("", {"a": "b"}) == {"a": "b"}


def inputs(module):
    tensor = module.InferInput("X", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.zeros((1, 1), np.int32))
    return [tensor]


def test_http_request_carries_the_header():
    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            seen["header"] = self.headers.get(SEQUENCE_ID_HEADER)
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length)
            json_length = int(self.headers.get("Inference-Header-Content-Length", length))
            seen["body"] = json.loads(body[:json_length])  # then binary tensors
            body = json.dumps({"model_name": "m", "outputs": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with httpclient.InferenceServerClient(f"127.0.0.1:{server.server_port}") as client:
            client.infer("m", inputs(httpclient), sequence_id=7, sequence_start=True,
                         headers=sequence_headers(7))
    finally:
        server.shutdown()
        server.server_close()
    assert seen["header"] == "7"
    assert seen["body"]["parameters"]["sequence_id"] == 7  # the body's ID, the same value


def test_grpc_request_carries_the_metadata():
    seen = {}

    def infer(request, context):
        seen["metadata"] = dict(context.invocation_metadata())
        seen["sequence_id"] = request.parameters["sequence_id"].int64_param
        return service_pb2.ModelInferResponse(model_name="m")

    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(
            infer, request_deserializer=service_pb2.ModelInferRequest.FromString,
            response_serializer=service_pb2.ModelInferResponse.SerializeToString)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
            client.infer("m", inputs(grpcclient), sequence_id=9, sequence_start=True,
                         headers=sequence_headers(9))
    finally:
        server.stop(0)
    assert seen["metadata"][SEQUENCE_ID_HEADER] == "9" and seen["sequence_id"] == 9
