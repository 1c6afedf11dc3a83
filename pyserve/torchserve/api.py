"""TorchServe's REST APIs on aiohttp: inference (8080), management (8081), metrics (8082).

Routes, status codes and bodies follow TorchServe 0.12's frontend: errors are
`{"code", "type", "message"}` with TorchServe's exception type names; a prediction reaches the
handler as TorchServe's worker would give it (raw body as `body`, multipart fields by name,
JSON decoded, text as str) with the request's headers, and goes through the core's batcher and
instances like every other pyserve request.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import re
import secrets
import ssl
import time
import uuid
from pathlib import Path

from aiohttp import web

from pyserve.errors import ServerError
from pyserve.options import LISTEN_BACKLOG
from pyserve.torchserve.config import Address, TorchServeOptions
from pyserve.torchserve.metrics import FrontendMetrics
from pyserve.torchserve.request import (REQUEST_KEY, TorchServeError, TorchServeRequest,
                                        decode_parameter)
from pyserve.torchserve.store import ApiError, ModelStore, bad_request

log = logging.getLogger("pyserve")

NOT_FOUND = ApiError(404, "ResourceNotFoundException",
                     "Requested resource is not found, please refer to API document.")
NOT_ALLOWED = ApiError(405, "MethodNotAllowedException",
                       "Requested method is not allowed, please refer to API document.")
AUTH_FAILED = ("Token Authorization failed. Token either incorrect, expired, or not provided "
               "correctly")


def error_response(error: ApiError) -> web.Response:
    return web.json_response(error.body(), status=error.status, dumps=_pretty)


def status_response(message: str, status: int = 200) -> web.Response:
    return web.json_response({"status": message}, status=status, dumps=_pretty)


def _pretty(value) -> str:
    return json.dumps(value, indent=2)


# --- token authorization ------------------------------------------------------------------

class Tokens:
    """TorchServe 0.12's token authorization: a management key, an inference key (both expire)
    and an API key that renews them, written to key_file.json."""

    def __init__(self, key_file: Path, expiration_min: float) -> None:
        self.key_file = key_file
        self.expiration = datetime.timedelta(minutes=expiration_min)
        self.keys: dict[str, tuple[str, datetime.datetime | None]] = {}
        for kind in ("management", "inference"):
            self.renew(kind, write=False)
        self.keys["API"] = (secrets.token_urlsafe(6), None)
        self.write()

    def renew(self, kind: str, write: bool = True) -> None:
        expires = datetime.datetime.now(datetime.timezone.utc) + self.expiration
        self.keys[kind] = (secrets.token_urlsafe(6), expires)
        if write:
            self.write()

    def check(self, kind: str, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        key, expires = self.keys[kind]
        if not secrets.compare_digest(header[len("Bearer "):].strip(), key):
            return False
        return expires is None or datetime.datetime.now(datetime.timezone.utc) < expires

    def document(self) -> dict:
        out = {}
        for kind, (key, expires) in self.keys.items():
            out[kind] = {"key": key}
            if expires is not None:
                out[kind]["expiration time"] = expires.isoformat().replace("+00:00", "Z")
        return out

    def write(self) -> None:
        self.key_file.write_text(json.dumps(self.document(), indent=2))
        self.key_file.chmod(0o600)

    def remove(self) -> None:
        self.key_file.unlink(missing_ok=True)


# --- the three APIs -----------------------------------------------------------------------

class TorchServeApis:
    def __init__(self, store: ModelStore, options: TorchServeOptions,
                 tokens: Tokens | None, metrics: FrontendMetrics | None = None) -> None:
        self.store = store
        self.options = options
        self.tokens = tokens
        self.metrics = metrics or FrontendMetrics()
        self._background: set[asyncio.Task] = set()
        self._watchdog = _Watchdog()
        self.native = None  # the native inference API (pyserve.torchserve.native), once open

    def attach_native(self, native) -> None:
        """Predictions now arrive natively too: their versions, token and metrics."""
        self.native = native
        self.store.native = native
        self.metrics.sources.append(native.counters)
        self.metrics.status_sources.append(native.status_classes)
        for name in list(self.store.models):
            self.store.publish_native(name)
        self._sync_inference_key()

    def _sync_inference_key(self) -> None:
        if self.native is not None and self.tokens is not None:
            key, expires = self.tokens.keys["inference"]
            self.native.set_inference_key(key, int(expires.timestamp()) if expires else 0)

    def worker_timed_out(self, name: str, version: str | None) -> None:
        """A native prediction ran past its response timeout: new workers, as for the shell's."""
        try:
            entry = self.store.get(name, version)
        except ApiError:
            return  # unregistered meanwhile
        if entry.runner is not None:
            self._restart_workers(entry, entry.runner)

    def _restart_workers(self, entry, stuck) -> None:
        restart = self.store.restart_workers(entry, stuck)
        if restart is not None:
            self._keep(restart)

    # Applications ----------------------------------------------------------------------------

    def inference_app(self) -> web.Application:
        app = self._app("inference")
        app.router.add_route("*", "/{tail:.*}", self._inference)
        return app

    def management_app(self) -> web.Application:
        app = self._app("management")
        app.router.add_route("*", "/{tail:.*}", self._management)
        return app

    def shared_app(self) -> web.Application:
        """Both APIs on one address, as TorchServe serves them when inference_address and
        management_address are the same (KServe's sample config.properties does that):
        /models and /token are management's, the rest inference's."""
        app = self._app("shared")

        async def dispatch(request: web.Request) -> web.StreamResponse:
            if _management_path(request.path):
                return await self._management(request)
            return await self._inference(request)

        app.router.add_route("*", "/{tail:.*}", dispatch)
        return app

    def metrics_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_route("*", "/{tail:.*}", lambda request: _raise(NOT_FOUND))
        app.middlewares.append(_errors)
        app.middlewares.append(_description_middleware("metrics"))
        app.on_response_prepare.append(self._count_response)
        return app

    def _app(self, kind: str) -> web.Application:
        app = web.Application(client_max_size=self.options.max_request_size)
        app.middlewares.append(_errors)
        app.middlewares.append(_description_middleware(kind))
        app.on_response_prepare.append(self._count_response)
        if self.tokens is not None:
            app.middlewares.append(self._token_middleware(kind))
        if self.options.cors_allowed_origin:
            app.on_response_prepare.append(self._cors)
        return app

    def _token_middleware(self, kind: str):
        tokens = self.tokens

        @web.middleware
        async def check(request: web.Request, handler):
            header = request.headers.get("Authorization")
            kind_here = kind
            if kind == "shared":
                kind_here = "management" if _management_path(request.path) else "inference"
            if kind_here == "management" and request.path.rstrip("/") == "/token":
                if not tokens.check("API", header):
                    raise ApiError(400, "InvalidKeyException", AUTH_FAILED.replace(
                        "Authorization", "Authentication"))
                return await handler(request)
            if not tokens.check(kind_here, header):
                raise ApiError(400, "InvalidKeyException", AUTH_FAILED)
            return await handler(request)

        return check

    async def _count_response(self, request: web.Request,
                              response: web.StreamResponse) -> None:
        # Requests2XX/4XX/5XX; the native predictions path answers without Python.
        self.metrics.response(response.status)

    async def _cors(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(cors_headers(self.options))

    # Inference API ---------------------------------------------------------------------------

    async def _inference(self, request: web.Request) -> web.StreamResponse:
        segments = [s for s in request.path.split("/")[1:]]
        head = segments[0]
        if head == "ping" and len(segments) == 1:
            healthy = self.store.healthy()
            return status_response("Healthy" if healthy else "Unhealthy",
                                   200 if healthy else 500)
        if head in ("predictions", "explanations"):
            if len(segments) < 2 or not segments[1]:
                raise NOT_FOUND
            version = segments[2] if len(segments) >= 3 and segments[2] else None
            url_path = "/".join(segments[3:])
            if request.method == "OPTIONS":
                self.store.get(segments[1], version)
                return web.json_response(_openapi("model", segments[1]), dumps=_pretty)
            return await self.predict(request, segments[1], version,
                                      explain=head == "explanations", url_path=url_path)
        if head == "v1" and len(segments) == 3 and segments[1] == "models":
            name, _, verb = segments[2].partition(":")
            if verb in ("predict", "explain"):
                return await self.predict(request, name, None, explain=verb == "explain")
        if head == "v2" and len(segments) == 4 and segments[1] == "models" and \
                segments[3] in ("infer", "explain"):
            return await self.predict(request, segments[2], None,
                                      explain=segments[3] == "explain")
        raise NOT_FOUND

    async def predict(self, request: web.Request, name: str, version: str | None,
                      explain: bool = False, url_path: str = "") -> web.StreamResponse:
        entry = self.store.get(name, version)
        if entry.restarting is not None:  # its workers were stuck: wait for the new ones
            await asyncio.wait((entry.restarting,))
        runner = self.store.runner(name, version)
        parameters, part_headers = await _parse_body(request)
        headers = {k.lower(): v for k, v in request.headers.items()}
        headers.update(part_headers)
        headers["explain"] = "True" if explain else "False"
        headers["url_path"] = url_path
        request_id = str(uuid.uuid4())
        self.metrics.request(name, version)
        loop = asyncio.get_running_loop()
        stream = _Stream(loop)
        ts_request = TorchServeRequest(parameters, headers, request_id, stream.push)
        stream.deadline(ts_request, entry.response_timeout)
        begin = time.perf_counter_ns()
        task = loop.create_task(runner.infer(
            entry.placeholders, request_id=request_id,
            objects={REQUEST_KEY: ts_request}))
        stream.watch(task)
        self._watchdog.add(stream)
        response: web.StreamResponse | None = None
        try:
            while (chunk := await stream.next()) is not None:
                body, status, phrase, chunk_headers = chunk
                if response is None:
                    response = web.StreamResponse(status=status, reason=phrase or None,
                                                  headers=_response_headers(chunk_headers,
                                                                            request_id))
                    response.enable_chunked_encoding()
                    await response.prepare(request)
                await response.write(body)
            task.result()
        except (TorchServeError, ResponseTimeout) as e:
            if isinstance(e, ResponseTimeout):
                # TorchServe kills the worker, answers "Worker died." and starts another.
                self._restart_workers(entry, runner)
                e = TorchServeError("Worker died.", 500)
            if response is not None:
                await response.write_eof()
                return response
            raise ApiError(e.status, "InternalServerException", e.message) from None
        except ServerError as e:
            raise ApiError(503, "ServiceUnavailableException", e.message) from None
        finally:
            self._watchdog.discard(stream)
            if not task.done():
                task.cancel()
        queued = (ts_request.started_ns or time.perf_counter_ns()) - begin
        self.metrics.latency(name, version, (time.perf_counter_ns() - begin) / 1000,
                             queued / 1000)
        if len(ts_request.body) > self.options.max_response_size:
            raise ApiError(507, "InternalServerException",
                           "Response size exceeds the limit (max_response_size)")
        if response is not None:  # the end of a streamed response
            await response.write(ts_request.body)
            await response.write_eof()
            return response
        return web.Response(body=ts_request.body, status=ts_request.status,
                            reason=ts_request.phrase or None,
                            headers=_response_headers(ts_request.response_headers, request_id))

    # Management API --------------------------------------------------------------------------

    async def _management(self, request: web.Request) -> web.StreamResponse:
        segments = request.path.split("/")[1:]
        method = request.method
        if segments[0] == "token" and len(segments) == 1 and self.tokens is not None:
            kind = request.query.get("type", "")
            if kind not in ("management", "inference"):
                raise ApiError(400, "InvalidKeyException", AUTH_FAILED.replace(
                    "Authorization", "Authentication"))
            self.tokens.renew(kind)
            self._sync_inference_key()
            return web.json_response(self.tokens.document(), dumps=_pretty)
        if segments[0] == "v1" and len(segments) == 3 and segments[1] == "models":
            # KServe v1's model readiness, on the management API as in TorchServe
            if method != "GET":
                raise NOT_ALLOWED
            name = segments[2].split(":")[0]
            entry = self.store.get(name)
            return web.json_response({"name": name, "ready": bool(entry.workers)},
                                     dumps=_pretty)
        if segments[0] != "models" or len(segments) > 4:
            raise NOT_FOUND
        if len(segments) == 1 or (len(segments) == 2 and not segments[1]):
            if method == "GET":
                return self._list_models(request)
            if method == "POST" and self.options.enable_model_api:
                return await self._register(request)
            raise NOT_ALLOWED
        name = segments[1]
        version = segments[2] if len(segments) >= 3 and segments[2] else None
        if method == "GET":
            return self._describe(name, version)
        if method == "PUT":
            if len(segments) == 4:
                if segments[3] != "set-default":
                    raise NOT_FOUND
                self.store.set_default(name, segments[2])
                return status_response(f'Default version successfully updated for model '
                                       f'"{name}" to "{segments[2]}"')
            return await self._scale(request, name, version)
        if method == "DELETE" and self.options.enable_model_api and len(segments) <= 3:
            await self.store.unregister(name, version)
            return status_response(f'Model "{name}" unregistered')
        if method == "OPTIONS":
            self.store.get(name, version)
            return web.json_response(_openapi("model", name), dumps=_pretty)
        raise NOT_ALLOWED

    def _list_models(self, request: web.Request) -> web.Response:
        limit = _java_int(request.query.get("limit"), 100)
        token = _java_int(request.query.get("next_page_token"), 0)
        if limit > 100 or limit < 0:
            limit = 100
        token = max(token, 0)
        names = sorted(self.store.models)
        last = min(token + limit, len(names))
        body: dict = {}
        if token + limit < len(names):
            body["nextPageToken"] = str(token + limit)
        body["models"] = [{"modelName": n, "modelUrl": self.store.get(n).url}
                          for n in names[token:last]]
        return web.json_response(body, dumps=_pretty)

    def _describe(self, name: str, version: str | None) -> web.Response:
        if version == "all":
            if name not in self.store.models:
                raise ApiError(404, "ModelNotFoundException", f"Model not found: {name}")
            entries = [self.store.models[name][v] for v in self.store.models[name]]
        else:
            entries = [self.store.get(name, version)]
        return web.json_response([self._description(e) for e in entries], dumps=_pretty)

    def _description(self, entry) -> dict:
        runner = entry.runner
        pending = runner.pending_count if runner is not None else 0
        return {
            "modelName": entry.name,
            "modelVersion": entry.version,
            "modelUrl": entry.url,
            "runtime": entry.runtime,
            "minWorkers": entry.min_workers,
            "maxWorkers": entry.max_workers,
            "batchSize": entry.batch_size,
            "maxBatchDelay": entry.max_batch_delay,
            "responseTimeout": entry.response_timeout,
            "startupTimeout": entry.startup_timeout,
            "loadedAtStartup": entry.loaded_at_startup,
            "workers": [{"id": str(w.id), "startTime": w.start_time, "status": "READY",
                         "memoryUsage": 0, "pid": _pid(), "gpu": bool(entry.device_ids),
                         "gpuUsage": "N/A"} for w in entry.workers],
            "jobQueueStatus": {"remainingCapacity": max(self.options.job_queue_size - pending,
                                                        0),
                               "pendingRequests": pending},
        }

    async def _register(self, request: web.Request) -> web.Response:
        """ApiUtils.registerModel and handleRegister: parameters that are not integers are
        their defaults, workers from model-config.yaml's minWorkers/maxWorkers or
        initial_workers, synchronous unless asked otherwise."""
        params = await self._register_parameters(request)
        url = params["url"]
        if url is None:
            raise bad_request("Parameter url is required.")
        runtime = params["runtime"]
        if runtime is not None and runtime not in ("python", "python3", "LSP"):
            raise bad_request(f"Invalid RuntimeType value: {runtime}")
        batch_size, max_batch_delay = params["batch_size"], params["max_batch_delay"]
        entry = await self.store.register(
            url, model_name=params["model_name"] or "", handler=params["handler"] or "",
            runtime=runtime or "", batch_size=None if batch_size == -1 else batch_size,
            max_batch_delay=None if max_batch_delay == -100 else max_batch_delay,
            response_timeout=params["response_timeout"],
            startup_timeout=params["startup_timeout"])
        yaml = entry.archive.model_yaml()
        min_workers = max_workers = 0
        yaml_min, yaml_max = int(yaml.get("minWorkers") or 0), int(yaml.get("maxWorkers") or 0)
        if yaml_min > 0 and yaml_max >= yaml_min:
            min_workers, max_workers = yaml_min, yaml_max
        initial_workers = params["initial_workers"]
        if initial_workers <= 0 and min_workers == 0:
            return status_response(
                f'Model "{entry.name}" Version: {entry.version} registered with 0 initial '
                "workers. Use scale workers API to add workers for the model.")
        min_workers = min_workers or initial_workers
        max_workers = max_workers or initial_workers
        work = self._start_workers(entry, min_workers, max_workers, entry.version,
                                   unregister_on_error=True)
        if not params["synchronous"]:
            self._keep(work)
            return status_response("Processing worker updates...", 202)
        await work
        return status_response(f'Model "{entry.name}" Version: {entry.version} registered '
                               f"with {min_workers} initial workers")

    async def _register_parameters(self, request: web.Request) -> dict:
        """RegisterModelRequest: from the query (NettyUtils' getIntParameter: a value that is
        not an integer is the default; Boolean.parseBoolean), or from a JSON body as Gson
        reads it (a value of the wrong type is a 500 JsonSyntaxException)."""
        params = {"model_name": None, "runtime": None, "handler": None, "url": None,
                  "batch_size": -1, "max_batch_delay": -100,
                  "initial_workers": self.options.default_workers_per_model,
                  "synchronous": True, "response_timeout": -1, "startup_timeout": -1}
        if request.content_type != "application/json":
            query = request.query
            for key in ("model_name", "runtime", "handler", "url"):
                params[key] = query.get(key)
            for key in ("batch_size", "max_batch_delay", "initial_workers", "response_timeout",
                        "startup_timeout"):
                params[key] = _java_int(query.get(key), params[key])
            params["synchronous"] = query.get("synchronous", "true").lower() == "true"
            return params
        text = await request.text()
        if not text.strip():
            raise ApiError(500, "NullPointerException",
                           'Cannot invoke "org.pytorch.serve.http.messages.RegisterModelRequest'
                           '.getModelUrl()" because "registerModelRequest" is null')
        try:
            body = json.loads(text)
        except ValueError as e:
            raise ApiError(500, "JsonSyntaxException", f"Malformed JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(500, "JsonSyntaxException",
                           f"Expected BEGIN_OBJECT but was {_json_kind(body)}")
        for key, value in body.items():
            if key not in params or value is None:
                continue  # Gson ignores unknown fields; null leaves the default
            params[key] = _gson_value(key, value, params[key])
        return params

    async def _start_workers(self, entry, min_workers: int, max_workers: int,
                             version_label, unregister_on_error: bool = False) -> None:
        """Workers for `entry`; a failure is TorchServe's "Failed to start workers" (with
        pyserve's reason after it) and, for a registration, unregisters the model."""
        try:
            await self.store.scale(entry.name, entry.version, min_workers, max_workers)
        except BaseException as e:
            if unregister_on_error:
                try:
                    await self.store.unregister(entry.name, entry.version)
                except ApiError:
                    pass
            if isinstance(e, ApiError):
                raise
            reason = e.message if isinstance(e, ServerError) else repr(e)
            log.error("failed to start workers for model %s version %s: %s", entry.name,
                      entry.version, reason)
            raise ApiError(500, "InternalServerException",
                           f"Failed to start workers for model {entry.name} version: "
                           f"{'null' if version_label is None else version_label} "
                           f"({reason})") from None

    async def _scale(self, request: web.Request, name: str,
                     version: str | None) -> web.Response:
        """handleScaleModel: min_worker 1 and max_worker min_worker unless given as integers,
        asynchronous unless synchronous=true; workers are added up to min_worker or stopped
        past max_worker."""
        query = request.query
        min_workers = _java_int(query.get("min_worker"), 1)
        max_workers = _java_int(query.get("max_worker"), min_workers)
        version = version or query.get("model_version") or None
        synchronous = query.get("synchronous", "").lower() == "true"
        if max_workers < min_workers:
            raise bad_request("max_worker cannot be less than min_worker.")
        if name not in self.store.models:
            raise ApiError(404, "ModelNotFoundException", f"Model not found: {name}")
        entry = self.store.get(name, version)
        work = self._start_workers(entry, min_workers, max_workers, version)
        if not synchronous and max_workers >= 0:  # TorchServe fails a negative one at once
            self._keep(work)
            return status_response("Processing worker updates...", 202)
        await work
        message = f"Workers scaled to {min_workers} for model: {name}"
        if version is not None:
            message += f", version: {version}"
        return status_response(message)

    def _keep(self, work) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        task.add_done_callback(_log_failure)

    async def drain_background(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # Metrics API -----------------------------------------------------------------------------

    async def _metrics(self, request: web.Request) -> web.Response:
        names = set(request.query.getall("name[]", []))
        return web.Response(body=self.metrics.exposition(names or None).encode("utf-8"),
                            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


class ResponseTimeout(Exception):
    """The handler ran past the model's response timeout."""


class _Stream:
    """One prediction on its way to the client: the chunks a handler streams
    (send_intermediate_predict_response), pushed from the worker thread and read on the loop
    until the request's task ends, and its response timeout."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: collections.deque = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._request: TorchServeRequest | None = None
        self._timeout_ns = 0
        self._last_chunk_ns = 0
        self._expired = False

    def deadline(self, request: TorchServeRequest, timeout_s: float) -> None:
        self._request, self._timeout_ns = request, int(timeout_s * 1e9)

    def watch(self, task: asyncio.Task) -> None:
        self._task = task
        task.add_done_callback(lambda _: self._wake())

    def push(self, body: bytes, status: int, phrase: str, headers: dict) -> None:
        self._loop.call_soon_threadsafe(self._arrived, (body, status, phrase, headers))

    def _arrived(self, chunk) -> None:
        self._last_chunk_ns = time.perf_counter_ns()
        self._chunks.append(chunk)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def check_deadline(self, now_ns: int) -> None:
        """Expire once the handler has run the timeout since its batch started or its last
        chunk, as TorchServe counts it (time in the queue does not count)."""
        since = max(self._request.started_ns, self._last_chunk_ns)
        if since and now_ns - since >= self._timeout_ns:
            self._expired = True
            self._wake()

    async def next(self):
        """The next chunk, or None at the end; ResponseTimeout once expired."""
        while True:
            if self._chunks:
                return self._chunks.popleft()
            if self._task.done():
                return None
            if self._expired:
                raise ResponseTimeout()
            self._waiter = self._loop.create_future()
            await self._waiter


class _Watchdog:
    """Checks the deadlines of the predictions in flight a few times a second, one task for
    all of them (a timer per request costs the loop more than the request's own work);
    TorchServe's timeouts are whole seconds."""

    PERIOD_S = 0.1

    def __init__(self) -> None:
        self._streams: set[_Stream] = set()
        self._task: asyncio.Task | None = None

    def add(self, stream: _Stream) -> None:
        self._streams.add(stream)
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())

    def discard(self, stream: _Stream) -> None:
        self._streams.discard(stream)

    async def _run(self) -> None:
        try:
            while self._streams:
                await asyncio.sleep(self.PERIOD_S)
                now = time.perf_counter_ns()
                for stream in list(self._streams):
                    stream.check_deadline(now)
        finally:
            self._task = None


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e)
    except web.HTTPRequestEntityTooLarge as e:
        return error_response(ApiError(413, "BadRequestException", e.text or "too large"))
    except web.HTTPException:
        raise
    except Exception as e:  # noqa: BLE001 - a bug: answer 500 and keep serving
        log.exception("TorchServe API request %s %s failed", request.method, request.path)
        return error_response(ApiError(500, "InternalServerException", str(e)))


def _raise(error: ApiError):
    raise error


def _description_middleware(kind: str):
    """ApiDescriptionRequestHandler, first on every address (before the token check):
    `OPTIONS /` and `/api-description` describe the address's APIs; `/` otherwise is 405."""
    @web.middleware
    async def describe(request: web.Request, handler):
        if request.path == "/api-description" or (request.path == "/" and
                                                  request.method == "OPTIONS"):
            return web.json_response(_openapi(kind), dumps=_pretty)
        if request.path == "/":
            raise NOT_ALLOWED
        return await handler(request)

    return describe


def _log_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.error("worker update failed: %s", getattr(error, "message", error))


async def _parse_body(request: web.Request) -> tuple[dict, dict]:
    """(the handler's dict for this request, per-part content types), as TorchServe's frontend
    and worker make them."""
    parameters: dict = {}
    part_headers: dict = {}
    content_type = request.content_type
    if content_type.startswith("multipart/"):
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            value = await part.read(decode=False)
            part_type = part.headers.get("Content-Type", "") if part.filename else ""
            parameters[part.name] = decode_parameter(bytes(value), part_type)
            part_headers[part.name] = {"content-type": part_type}
    elif content_type == "application/x-www-form-urlencoded":
        try:
            form = await request.post()
        except (UnicodeDecodeError, ValueError) as e:
            raise bad_request(f"Invalid form data: {e}") from None
        for key, value in form.items():
            parameters[key] = value.encode("utf-8") if isinstance(value, str) else value
            part_headers[key] = {"content-type": ""}
    else:
        body = await request.read()
        mime = content_type if request.headers.get("Content-Type") else ""
        parameters["body"] = decode_parameter(body, mime)
        part_headers["body"] = {"content-type": mime}
    return parameters, part_headers


def cors_headers(options: TorchServeOptions) -> dict[str, str]:
    """The cors_* settings as response headers (none without cors_allowed_origin)."""
    if not options.cors_allowed_origin:
        return {}
    headers = {"Access-Control-Allow-Origin": options.cors_allowed_origin,
               "Access-Control-Allow-Methods": options.cors_allowed_methods,
               "Access-Control-Allow-Headers": options.cors_allowed_headers}
    return {name: value for name, value in headers.items() if value}


def _response_headers(headers: dict, request_id: str) -> dict:
    out = {key: value for key, value in headers.items() if key.lower() != "content-length"}
    out.setdefault("x-request-id", request_id)
    return out


_JAVA_INT = re.compile(r"[+-]?[0-9]+")


def _java_int(value: str | None, default: int) -> int:
    """Java's Integer.parseInt, or `default` where it would throw (NettyUtils'
    getIntParameter)."""
    if value is None or not _JAVA_INT.fullmatch(value):
        return default
    number = int(value)
    return number if -2 ** 31 <= number < 2 ** 31 else default


def _json_kind(value) -> str:
    """Gson's name for a JSON token."""
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, (int, float)):
        return "NUMBER"
    if isinstance(value, str):
        return "STRING"
    return "BEGIN_ARRAY" if isinstance(value, list) else "BEGIN_OBJECT"


def _gson_value(key: str, value, default):
    """A RegisterModelRequest field as Gson sets it: ints from integral numbers or numeric
    strings, booleans from booleans or strings (parseBoolean), strings from scalars."""
    def wrong(expected: str):
        return ApiError(500, "JsonSyntaxException",
                        f"Expected {expected} but was {_json_kind(value)} at path $.{key}")

    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str):
            return value.lower() == "true"
        raise wrong("a boolean")
    if isinstance(default, int):
        if isinstance(value, (bool, list, dict)):
            raise wrong("an int")
        number = None
        if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
            number = int(value)
        elif isinstance(value, str) and _JAVA_INT.fullmatch(value):
            number = int(value)
        elif isinstance(value, str):
            try:
                number = int(float(value)) if float(value).is_integer() else None
            except (ValueError, OverflowError):
                pass
        if number is None or not -2 ** 31 <= number < 2 ** 31:
            raise ApiError(500, "JsonSyntaxException",
                           f'java.lang.NumberFormatException: For input string: "{value}"')
        return number
    if isinstance(value, (list, dict)):
        raise wrong("a string")
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _pid() -> int:
    import os

    return os.getpid()


def _openapi(kind: str, model: str = "") -> dict:
    """OPTIONS /: the API's description (OpenAPI 3.0.1, the routes only)."""
    inference = {
        "/ping": {"get": {"operationId": "ping", "description": "Get TorchServe status."}},
        "/predictions/{model_name}": {"post": {"operationId": "predictions",
                                               "description": "Predictions entry point."}},
        "/predictions/{model_name}/{model_version}": {"post": {
            "operationId": "version_predictions",
            "description": "Predictions entry point for a model version."}},
        "/explanations/{model_name}": {"post": {"operationId": "explanations",
                                                "description": "Explanations entry point."}},
    }
    management = {
        "/models": {"get": {"operationId": "listModels"},
                    "post": {"operationId": "registerModel"}},
        "/models/{model_name}": {"get": {"operationId": "describeModel"},
                                 "put": {"operationId": "setAutoScale"},
                                 "delete": {"operationId": "unregisterModel"}},
        "/models/{model_name}/{model_version}": {"get": {"operationId": "describeModel"},
                                                 "put": {"operationId": "setAutoScale"},
                                                 "delete": {"operationId": "unregisterModel"}},
        "/models/{model_name}/{model_version}/set-default": {
            "put": {"operationId": "setDefault"}},
    }
    metrics = {"/metrics": {"get": {
        "operationId": "metrics",
        "description": "Get TorchServe application metrics in prometheus format."}}}
    paths = {"inference": {**inference, **metrics}, "management": {**management, **metrics},
             "metrics": metrics}.get(kind)
    if paths is None:
        paths = {f"/predictions/{model}": inference["/predictions/{model_name}"]}
    return {"openapi": "3.0.1",
            "info": {"title": "TorchServe APIs (pyserve)", "version": "0.12.0"},
            "paths": paths}


def _management_path(path: str) -> bool:
    return path.split("/")[1] in ("models", "token")


async def start_site(app: web.Application, address: Address,
                     ssl_context: ssl.SSLContext | None) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, address.host, address.port,
                       ssl_context=ssl_context if address.scheme == "https" else None,
                       reuse_address=True, backlog=LISTEN_BACKLOG)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
    return runner, port
