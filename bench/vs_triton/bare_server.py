"""A bare grpc.aio KServe-v2 server: onnxruntime called directly per request, no batching.

The floor of the comparison: what a minimal Python gRPC server reaches when each request goes
through the asyncio loop and one `InferenceSession.run` (default session options). It answers
what perf_analyzer needs (ServerMetadata, ModelMetadata, ModelConfig, ModelInfer) plus
ServerLive/ServerReady/ModelReady and ModelStatistics (success count, for CPU time per request).

    python bare_server.py --port P --model NAME --config config.pbtxt --onnx model.onnx
"""

import argparse
import asyncio

import grpc
import numpy as np
import onnxruntime as ort
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

TYPES = {mc.TYPE_FP32: ("FP32", np.float32), mc.TYPE_INT64: ("INT64", np.int64),
         mc.TYPE_INT32: ("INT32", np.int32), mc.TYPE_FP16: ("FP16", np.float16)}
NUMPY = {name: dtype for name, dtype in TYPES.values()}


class Bare(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, name: str, config: mc.ModelConfig, onnx: str):
        self.name, self.config, self.success = name, config, 0
        self.session = ort.InferenceSession(onnx)
        batch = [-1] if config.max_batch_size > 0 else []
        self.metadata = pb.ModelMetadataResponse(
            name=name, versions=["1"], platform="onnxruntime_onnx",
            inputs=[pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=TYPES[t.data_type][0], shape=batch + list(t.dims))
                for t in config.input],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=TYPES[t.data_type][0], shape=batch + list(t.dims))
                for t in config.output])
        self.out_types = {t.name: TYPES[t.data_type][0] for t in config.output}

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=request.name == self.name)

    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="bare-grpc-aio", version="0", extensions=[])

    async def ModelMetadata(self, request, context):
        return self.metadata

    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=self.config)

    async def ModelStatistics(self, request, context):
        stats = pb.ModelStatistics(name=self.name, version="1", inference_count=self.success,
                                   execution_count=self.success)
        stats.inference_stats.success.count = self.success
        return pb.ModelStatisticsResponse(model_stats=[stats])

    async def ModelInfer(self, request, context):
        try:
            feed = {t.name: np.frombuffer(raw, NUMPY[t.datatype]).reshape(t.shape)
                    for t, raw in zip(request.inputs, request.raw_input_contents)}
            results = self.session.run(list(self.out_types), feed)
        except Exception as e:  # noqa: BLE001 - any bad request is the client's
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        response = pb.ModelInferResponse(model_name=self.name, model_version="1", id=request.id)
        for (name, datatype), result in zip(self.out_types.items(), results):
            response.outputs.add(name=name, datatype=datatype, shape=result.shape)
            response.raw_output_contents.append(np.ascontiguousarray(result).tobytes())
        self.success += 1
        return response


async def serve(args: argparse.Namespace) -> None:
    config = text_format.Parse(open(args.config).read(), mc.ModelConfig())
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", -1),
                                      ("grpc.max_send_message_length", -1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Bare(args.model, config, args.onnx), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    print(f"bare server on 127.0.0.1:{args.port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for flag in ("--port", "--model", "--config", "--onnx"):
        parser.add_argument(flag, required=True)
    asyncio.run(serve(parser.parse_args()))
