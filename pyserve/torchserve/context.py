"""The `context` a TorchServe handler gets, and the metrics it records through it.

Same attributes and methods as `ts.context.Context` (TorchServe 0.12), so handlers written for
TorchServe, `BaseHandler` among them, run unchanged. One Context per model instance: an
instance runs one batch at a time, so the per-batch fields (request ids, request headers,
response status and headers) are set before each `handle` call and read right after it.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
from typing import Dict, Optional, Tuple

_log = logging.getLogger("pyserve")


class RequestProcessor:
    """One request's headers in, its status and headers out (ts.context.RequestProcessor)."""

    def __init__(self, request_header: dict) -> None:
        self._status_code = 200
        self._reason_phrase = None
        self._response_header: Dict[str, str] = {}
        self._request_header = request_header

    def get_request_property(self, key: str) -> Optional[str]:
        return self._request_header.get(key)

    def report_status(self, code, reason_phrase=None) -> None:
        self._status_code = code
        self._reason_phrase = reason_phrase

    def get_response_status_code(self) -> int:
        return self._status_code

    def get_response_status_phrase(self) -> Optional[str]:
        return self._reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self._response_header[key] = value

    def get_response_headers(self) -> dict:
        return self._response_header

    def get_response_header(self, key: str) -> Optional[str]:
        return self._response_header.get(key)

    def get_request_properties(self) -> dict:
        return self._request_header


class Context:
    def __init__(self, model_name, model_dir, manifest, batch_size, gpu, mms_version,
                 limit_max_image_pixels=True, metrics=None, model_yaml_config=None) -> None:
        self.model_name = model_name
        self.manifest = manifest
        self._system_properties = {
            "model_dir": model_dir,
            "gpu_id": gpu,
            "batch_size": batch_size,
            "server_name": "MMS",
            "server_version": mms_version,
            "limit_max_image_pixels": limit_max_image_pixels,
        }
        self.request_ids = None
        self._request_processor = None
        self._metrics = metrics
        self._limit_max_image_pixels = True
        self.model_yaml_config = model_yaml_config or {}
        self.stopping_criteria = None
        self.cl_socket = None  # set per batch: where send_intermediate_predict_response writes
        self.header_key_sequence_id = os.getenv("TS_REQUEST_SEQUENCE_ID",
                                                "ts_request_sequence_id")
        self.header_key_sequence_start = os.getenv("TS_REQUEST_SEQUENCE_START",
                                                   "ts_request_sequence_start")
        self.header_key_sequence_end = os.getenv("TS_REQUEST_SEQUENCE_END",
                                                 "ts_request_sequence_end")

    @property
    def system_properties(self):
        return self._system_properties

    @property
    def request_processor(self):
        return self._request_processor

    @request_processor.setter
    def request_processor(self, request_processor):
        self._request_processor = request_processor

    @property
    def metrics(self):
        return self._metrics

    @metrics.setter
    def metrics(self, metrics):
        self._metrics = metrics

    def get_request_id(self, idx: int = 0) -> Optional[str]:
        return None if self.request_ids is None else self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> Optional[str]:
        return self._request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> Dict[str, str]:
        return self._request_processor[idx].get_request_properties()

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.set_response_header(idx, "content-type", value)

    def get_response_content_type(self, idx: int) -> Optional[str]:
        return self.get_response_headers(idx).get("content-type")

    def get_response_status(self, idx: int) -> Tuple[int, str]:
        return (self._request_processor[idx].get_response_status_code(),
                self._request_processor[idx].get_response_status_phrase())

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0):
        if self._request_processor is not None and self._request_processor[idx] is not None:
            self._request_processor[idx].report_status(code, reason_phrase=phrase)

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for processor in self._request_processor:
            processor.report_status(code, reason_phrase=phrase)

    def get_response_headers(self, idx: int) -> Dict[str, str]:
        return self._request_processor[idx].get_response_headers()

    def set_response_header(self, idx, key, value):
        self._request_processor[idx].add_response_property(key, value)

    def get_sequence_id(self, idx: int) -> str:
        return self._request_processor[idx].get_request_property(self.header_key_sequence_id)


# --- metrics ---------------------------------------------------------------------------------

class MetricTypes(enum.Enum):
    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


def _type_value(metric_type) -> str:
    return getattr(metric_type, "value", str(metric_type)).lower()


# How handlers' metrics are recorded, set once by `pyserve torchserve` (configure_metrics):
# kept for the metrics API ("prometheus") or written as TorchServe's metric log lines.
_SETTINGS = {"mode": "prometheus", "specs": {}, "auto_detect": True}


def configure_metrics(mode: str, specs: dict, auto_detect: bool = False) -> None:
    """metrics_mode, metrics.yaml's model_metrics (name -> pyserve.torchserve.metrics.Spec,
    Hostname last), which every model's cache starts with, and model_metrics_auto_detect
    (whether metrics it does not name are kept or logged)."""
    _SETTINGS.update(mode=mode, specs=dict(specs), auto_detect=auto_detect)


class Metric:
    """A metric a handler adds (ts.metrics.caching_metric.CachingMetric's interface); its
    samples are kept per label values and exported by the metrics API, or logged."""

    def __init__(self, name: str, unit: str, dimension_names: list, metric_type,
                 lock: threading.Lock) -> None:
        self.metric_name = name
        self.unit = unit
        self.dimension_names = list(dimension_names)
        self.metric_type = metric_type
        self.samples: dict[tuple, object] = {}
        self._lock = lock

    def add_or_update(self, value, dimension_values: list = [], request_id: str = "") -> None:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"metric '{self.metric_name}' value must be int or float, "
                            f"got {type(value).__name__}")
        key = tuple(str(v) for v in dimension_values)
        if len(key) != len(self.dimension_names):  # TorchServe's worker drops it, saying so
            _log.error("[METRICS]Failed to update metric with name:%s and dimensions: %s with "
                       "value: %s: Dimension values: %s should correspond to Dimension names: "
                       "%s", self.metric_name, ",".join(key), value, list(key),
                       self.dimension_names)
            return
        kind = _type_value(self.metric_type)
        if _SETTINGS["mode"] != "prometheus":
            if self.metric_name in _SETTINGS["specs"] or _SETTINGS["auto_detect"]:
                from pyserve.torchserve.metrics import Spec, log_line, model_metrics_log

                spec = Spec(self.metric_name, kind, self.unit, tuple(self.dimension_names))
                model_metrics_log.info(log_line(spec, key, value, request_id or None))
            return
        with self._lock:
            if kind == "counter":
                self.samples[key] = self.samples.get(key, 0.0) + value
            elif kind == "histogram":
                from pyserve.torchserve.metrics import BUCKETS

                counts = self.samples.setdefault(key, [0] * (len(BUCKETS) + 1) + [0.0])
                for index, bound in enumerate(BUCKETS):
                    counts[index] += value <= bound
                counts[len(BUCKETS)] += 1
                counts[-1] += value
            else:
                self.samples[key] = float(value)

    def update(self, value, dimension_values: list = []) -> None:
        self.add_or_update(value, dimension_values)


class Dimension:
    def __init__(self, name, value) -> None:
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"


class MetricsCache:
    """The `context.metrics` object of one model (ts.metrics.metric_cache_abstract's
    interface): add_metric, add_counter, add_time, add_size, add_percent, add_error,
    get_metric, add_metric_to_cache. Shared by the model's instances, hence the lock."""

    def __init__(self, model_name: str, hostname: str | None = None) -> None:
        self.model_name = model_name
        self.hostname = hostname or socket.gethostname()
        self.request_ids = None
        self.cache: dict[tuple[str, str], Metric] = {}
        self._lock = threading.Lock()
        for spec in _SETTINGS["specs"].values():  # metrics.yaml's model_metrics
            self.add_metric_to_cache(spec.name, spec.unit, list(spec.dimensions),
                                     MetricTypes(spec.kind))

    def set_request_ids(self, request_ids) -> None:
        self.request_ids = request_ids

    def _get_req(self, idx):
        req_id = self.request_ids
        if isinstance(req_id, dict):
            req_id = ",".join(self.request_ids.values())
        if idx is not None and isinstance(self.request_ids, dict) and idx in self.request_ids:
            req_id = self.request_ids[idx]
        return req_id

    def _dimensions(self, req_id, dimensions) -> list:
        dimensions = list(dimensions or [])
        names = [d.name for d in dimensions]
        if req_id is None:
            if "Level" not in names:
                dimensions.append(Dimension("Level", "Error"))
        else:
            if "ModelName" not in names:
                dimensions.append(Dimension("ModelName", self.model_name))
            if "Level" not in names:
                dimensions.append(Dimension("Level", "Model"))
        if "Hostname" not in names:
            dimensions.append(Dimension("Hostname", self.hostname))
        return dimensions

    def _record(self, name, value, unit, idx, dimensions, metric_type) -> None:
        request_id = self._get_req(idx)
        dimensions = self._dimensions(request_id, dimensions)
        metric = self._get_or_add(name, unit, [d.name for d in dimensions], metric_type)
        metric.add_or_update(value, [d.value for d in dimensions], request_id or "")

    def add_metric(self, name: str, value, unit: str, idx=None, dimensions: list = [],
                   metric_type=MetricTypes.COUNTER) -> None:
        self._record(name, value, unit, idx, dimensions, metric_type)

    def add_counter(self, name: str, value, idx=None, dimensions: list = []) -> None:
        self._record(name, value, "count", idx, dimensions, MetricTypes.COUNTER)

    def add_time(self, name: str, value, idx=None, unit: str = "ms", dimensions: list = [],
                 metric_type=MetricTypes.GAUGE) -> None:
        if unit not in ("ms", "s"):
            raise ValueError("the unit for a timed metric should be one of ['ms', 's']")
        self._record(name, value, unit, idx, dimensions, metric_type)

    def add_size(self, name: str, value, idx=None, unit: str = "MB", dimensions: list = [],
                 metric_type=MetricTypes.GAUGE) -> None:
        if unit not in ("MB", "kB", "GB", "B"):
            raise ValueError("The unit for size based metric is one of ['MB','kB', 'GB', 'B']")
        self._record(name, value, unit, idx, dimensions, metric_type)

    def add_percent(self, name: str, value, idx=None, dimensions: list = [],
                    metric_type=MetricTypes.GAUGE) -> None:
        self._record(name, value, "percent", idx, dimensions, metric_type)

    def add_error(self, name: str, value, dimensions: list = []) -> None:
        self._record(name, value, "", None, dimensions, MetricTypes.COUNTER)

    def get_metric(self, metric_name: str, metric_type=MetricTypes.COUNTER) -> Metric:
        key = (metric_name, _type_value(metric_type))
        if key not in self.cache:
            raise KeyError(f"Metric of type {_type_value(metric_type)} and name "
                           f"{metric_name} doesn't exist")
        return self.cache[key]

    def add_metric_to_cache(self, metric_name: str, unit: str, dimension_names: list = [],
                            metric_type=MetricTypes.COUNTER) -> Metric:
        names = list(dimension_names)
        key = (metric_name, _type_value(metric_type))
        with self._lock:
            metric = self.cache.get(key)
            if metric is None:
                metric = Metric(metric_name, unit, names, metric_type, self._lock)
                self.cache[key] = metric
        return metric

    def _get_or_add(self, name, unit, dimension_names, metric_type) -> Metric:
        spec = _SETTINGS["specs"].get(name)
        if spec is not None:  # metrics.yaml's type wins, as TorchServe's frontend applies it
            metric_type = MetricTypes(spec.kind)
        try:
            return self.get_metric(name, metric_type)
        except KeyError:
            return self.add_metric_to_cache(name, unit, dimension_names, metric_type)

    def snapshot(self) -> list[tuple[str, str, str, list, dict]]:
        """(name, type, unit, dimension names, {label values: value}) of every metric (a
        histogram's value: its bucket counts, count and sum)."""
        with self._lock:
            return [(m.metric_name, _type_value(m.metric_type), m.unit,
                     list(m.dimension_names),
                     {k: list(v) if isinstance(v, list) else v for k, v in m.samples.items()})
                    for m in self.cache.values()]

