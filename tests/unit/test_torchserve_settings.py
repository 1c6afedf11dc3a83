"""How `pyserve torchserve` reads what TorchServe 0.12 reads: TS_* environment variables,
NettyUtils' integers, Gson's register bodies, metrics.yaml, Java's number format."""

from __future__ import annotations

import pytest

from pyserve.errors import ServerError
from pyserve.torchserve import config
from pyserve.torchserve.api import _gson_value, _java_int
from pyserve.torchserve.metrics import Family, Spec, java_double, load_config, log_line
from pyserve.torchserve.store import ApiError


def test_environment_overrides_only_with_enable_envvars_config():
    env = {"TS_SERVICE_ENVELOPE": "kservev2", "TS_ALLOWED_URLS": "file://.*",
           "TS_OPEN_INFERENCE_PROTOCOL": "grpc", "TS_KEYSTORE_PASS": "secret"}
    assert config.environment_overrides({"service_envelope": "kserve"}, env) == {
        "service_envelope": "kserve"}
    merged = config.environment_overrides({"enable_envvars_config": "true"}, env)
    assert merged["service_envelope"] == "kservev2"
    assert merged["ts_open_inference_protocol"] == "grpc"  # named as it is
    assert merged["keystore_pass"] == "secret"
    assert "allowed_urls" not in merged  # only with use_env_allowed_urls=true
    merged = config.environment_overrides({"enable_envvars_config": "true",
                                           "use_env_allowed_urls": "true"}, env)
    assert merged["allowed_urls"] == "file://.*"


def test_tls_and_metrics_settings():
    options = config.resolve({"keystore": "ks.jks", "keystore_type": "JKS",
                              "metrics_config": "m.yaml", "model_metrics_auto_detect": "true",
                              "metric_time_interval": "5", "default_startup_timeout": "7"})
    assert options.keystore.name == "ks.jks" and options.keystore_type == "JKS"
    assert options.keystore_pass == "changeit"  # TorchServe's default
    assert options.metrics_config.name == "m.yaml" and options.model_metrics_auto_detect
    assert options.metric_time_interval_s == 5 and options.default_startup_timeout_s == 7
    with pytest.raises(ServerError):  # half a PEM pair without a keystore
        config.resolve({"private_key_file": "k.pem"})


@pytest.mark.parametrize("text,expected", [
    (None, 9), ("", 9), ("12", 12), ("-1", -1), ("+3", 3), ("dd", 9), ("1.5", 9), (" 1", 9),
    ("2147483647", 2147483647), ("2147483648", 9), ("١", 9)])
def test_java_int_is_integer_parse_int_or_the_default(text, expected):
    assert _java_int(text, 9) == expected


def test_gson_reads_register_fields():
    assert _gson_value("batch_size", "5", -1) == 5
    assert _gson_value("batch_size", 4.0, -1) == 4
    assert _gson_value("synchronous", "TRUE", True) is True
    assert _gson_value("synchronous", "yes", True) is False
    assert _gson_value("url", 12, None) == "12"
    for key, value, default in (("batch_size", "dd", -1), ("batch_size", 2.5, -1),
                                ("batch_size", True, -1), ("synchronous", 1, True),
                                ("url", ["a"], None)):
        with pytest.raises(ApiError) as refused:
            _gson_value(key, value, default)
        assert (refused.value.status, refused.value.kind) == (500, "JsonSyntaxException")


def test_metrics_yaml_backend_metrics_get_the_hostname(tmp_path):
    frontend, backend = load_config(None)  # TorchServe's default metrics.yaml
    assert frontend["Requests2XX"] == Spec("Requests2XX", "counter", "Count",
                                           ("Level", "Hostname"))
    assert backend["HandlerTime"].dimensions == ("ModelName", "Level", "Hostname")
    path = tmp_path / "metrics.yaml"
    path.write_text("model_metrics:\n  summary:\n    - name: X\n      unit: ms\n"
                    "      dimensions: []\n")
    with pytest.raises(ServerError, match="unknown metric type"):
        load_config(path)


@pytest.mark.parametrize("value,text", [
    (1, "1.0"), (0.25, "0.25"), (0, "0.0"), (12345678.0, "1.2345678E7"), (1e7, "1.0E7"),
    (0.0001, "1.0E-4"), (9999999.0, "9999999.0"), (-2.5e-5, "-2.5E-5"),
    (float("inf"), "+Inf")])
def test_java_double(value, text):
    assert java_double(value) == text


def test_histogram_exposition_and_log_line():
    family = Family(Spec("Latency", "histogram", "s", ("Stage", "Hostname")))
    family.update(("post", "h"), 0.2)
    family.update(("post", "h"), 3.0)
    lines = family.lines()
    assert lines[0] == "# HELP Latency Torchserve prometheus histogram metric with unit: s"
    assert 'Latency_bucket{Stage="post",Hostname="h",le="0.25"} 1.0' in lines
    assert 'Latency_bucket{Stage="post",Hostname="h",le="+Inf"} 2.0' in lines
    assert lines[-2:] == ['Latency_count{Stage="post",Hostname="h"} 2.0',
                          'Latency_sum{Stage="post",Hostname="h"} 3.2']
    with pytest.raises(ValueError):
        family.update(("post",), 1.0)
    line = log_line(Spec("Requests2XX", "counter", "Count", ("Level", "Hostname")),
                    ("Host", "h"), 1)
    assert line.startswith("Requests2XX.Count:1.0|#Level:Host|#hostname:h,timestamp:")


def test_handler_metrics_follow_the_yaml(monkeypatch):
    """A metric metrics.yaml names keeps its type and dimensions whatever the handler's call
    says (TorchServe's frontend applies the backend's line to the yaml's metric)."""
    from pyserve.torchserve import context

    monkeypatch.setattr(context, "_SETTINGS", dict(context._SETTINGS))
    _, backend = load_config(None)
    backend["Lat"] = Spec("Lat", "histogram", "ms", ("ModelName", "Level", "Hostname"))
    context.configure_metrics("prometheus", backend)
    cache = context.MetricsCache("m", hostname="h")
    cache.set_request_ids({0: "r0"})
    cache.add_time("Lat", 3.0)  # a gauge call: observed by the yaml's histogram
    cache.add_time("HandlerTime", 1.5, None, "ms")
    cache.add_time("HandlerTime", 2.5, None, "ms", dimensions=[context.Dimension("X", "y")])
    samples = {name: values for name, _, _, _, values in cache.snapshot()}
    assert samples["Lat"][("m", "Model", "h")][-2:] == [1, 3.0]  # count, sum
    assert samples["HandlerTime"] == {("m", "Model", "h"): 1.5}  # the extra dimension refused
