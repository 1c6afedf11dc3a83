"""`request.get_response_sender()` of a decoupled model: Triton's InferenceResponseSender.

It wraps the core's ResponseSender for one request (pyserve._core.ResponseSender), which
filters each response's outputs to what the client asked for and hands it to the client's
frontend on the calling thread; any thread may send, during or after `execute`.
"""

from __future__ import annotations

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1

# TritonError code names the core knows; others travel as INTERNAL.
_CODES = {"INVALID_ARG", "NOT_FOUND", "UNAVAILABLE", "INTERNAL", "UNSUPPORTED",
          "ALREADY_EXISTS", "CANCELLED"}


class InferenceResponseSender:
    """send(response=None, flags=0): zero or more responses, then the final flag (alone, or
    with the last response). Errors are Triton's texts, raised as TritonModelException."""

    __slots__ = ("_sender",)

    def __init__(self, sender) -> None:
        self._sender = sender

    def send(self, response=None, flags: int = 0) -> None:
        from triton_python_backend_utils import InferenceResponse, TritonModelException

        if flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL and flags != 0:
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set "
                "to zero.")
        outputs = error = None
        if response is not None:
            if not isinstance(response, InferenceResponse):
                raise TritonModelException(
                    "Expected an 'InferenceResponse' object, found type "
                    f"'{type(response).__name__}'.")
            failure = response.error()
            if failure is not None:
                code = getattr(failure.code(), "name", "INTERNAL")
                error = (code if code in _CODES else "INTERNAL", failure.message())
            else:
                # The raw arrays: BF16 outputs are uint16 bits, which as_numpy() would refuse.
                outputs = {t.name(): t._array for t in response.output_tensors()}
        try:
            self._sender.send(outputs, error, flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as e:  # the core's refusal (closed sender, outputs that do not fit)
            raise TritonModelException(getattr(e, "message", str(e))) from None

    def is_cancelled(self) -> bool:
        """The client cancelled the request, or its stream or connection went away."""
        return self._sender.is_cancelled()
