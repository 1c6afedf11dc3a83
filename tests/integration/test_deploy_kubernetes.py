"""The Kubernetes and KServe manifests, offline: each overlay renders with `kubectl kustomize`
and validates against the Kubernetes schemas (kubernetes-validate, strict); the objects agree
with each other and with pyserve (probes on Triton's health routes, args pyserve's CLI accepts,
a termination grace that covers the drain, autoscaling on metric names a running pyserve really
exports); the KServe objects load through the kserve SDK's models."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import urllib.request

import pytest

from conftest import OUTSIDE, ROOT

yaml = pytest.importorskip("yaml")

DEPLOY = ROOT / "deploy"
OVERLAYS = ["cpu", "gpu"]
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]  # oldest and newest this pins schemas for


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian package kubectl)")
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY / "kubernetes" / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = {}
    for doc in docs:
        assert doc["kind"] not in kinds, f"two {doc['kind']} objects"
        kinds[doc["kind"]] = doc
    return kinds


def serve_args(args: list[str], env: dict[str, str]):
    """What pyserve's CLI makes of a container's args ($(VAR) expanded as Kubernetes does)."""
    from pyserve.cli import _parser

    expanded = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], arg) for arg in args]
    return _parser().parse_args(expanded)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, dict[str, dict]]:
    return request.param, by_kind(render(request.param))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_are_valid_kubernetes(rendered, version):
    validate = pytest.importorskip("kubernetes_validate")
    overlay, kinds = rendered
    assert set(kinds) == {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
                          "HorizontalPodAutoscaler"}
    for doc in kinds.values():
        validate.validate(doc, version, strict=True)


def test_schema_validation_can_fail():
    validate = pytest.importorskip("kubernetes_validate")
    broken = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
              "spec": {"ports": [{"port": "eight thousand"}]}}
    with pytest.raises(validate.ValidationError):
        validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def container(kinds: dict[str, dict]) -> dict:
    (only,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_probes_use_tritons_health_routes(rendered):
    _, kinds = rendered
    c = container(kinds)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert c[probe]["httpGet"]["path"] == path
        assert c[probe]["httpGet"]["port"] in ports


def test_args_are_pyserves_and_the_grace_covers_the_drain(rendered):
    _, kinds = rendered
    c = container(kinds)
    options = serve_args(c["args"], kinds["ConfigMap"]["data"])
    assert options.command == "serve"
    assert options.model_repositories == [kinds["ConfigMap"]["data"]["MODEL_REPOSITORY"]]
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(pre_stop[1]) + options.drain_grace_secs + options.exit_timeout_secs
    assert drain < pod["terminationGracePeriodSeconds"], "Kubernetes would kill the drain"
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    # The read-only root leaves pyserve its two writable places: temp files and the mirror.
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts and options.repository_cache_dir and \
        str(options.repository_cache_dir) in mounts


def test_service_pdb_and_hpa_select_the_deployment(rendered):
    _, kinds = rendered
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = kinds["Service"]["spec"]
    assert {p["port"]: p["targetPort"] for p in service["ports"]} == {
        8000: "http", 8001: "grpc", 8002: "metrics"}
    assert service["selector"].items() <= labels.items()
    pdb = kinds["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"] and pdb["selector"]["matchLabels"].items() <= labels.items()
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", kinds["Deployment"]["metadata"]["name"])


def test_gpu_overlay_asks_for_a_gpu(rendered):
    overlay, kinds = rendered
    c = container(kinds)
    limits = c["resources"]["limits"]
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == 1 and c["image"].endswith(":cuda")
        tolerations = kinds["Deployment"]["spec"]["template"]["spec"]["tolerations"]
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    else:
        assert "nvidia.com/gpu" not in limits and c["image"].endswith(":cpu")


# --- autoscaling on the metrics pyserve exports -------------------------------------------

def exported_metric_names(server) -> set[str]:
    """The series names Prometheus stores from pyserve's /metrics: the samples' names (a
    counter's '# TYPE' line may differ from them), after one request so every counter has
    samples."""
    import numpy as np
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.http_url) as client:
        a = np.ones((1, 16), np.int32)
        inputs = [httpclient.InferInput(n, a.shape, "INT32") for n in ("INPUT0", "INPUT1")]
        for tensor in inputs:
            tensor.set_data_from_numpy(a)
        client.infer("simple", inputs)
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics",
                                  timeout=30).read().decode()
    return set(re.findall(r"^(\w+)[{ ]", text, re.M))


def test_autoscaling_uses_metric_names_pyserve_exports(example_server):
    exported = exported_metric_names(example_server)
    assert "nv_inference_pending_request_count" in exported  # the check is not vacuous
    autoscaling = DEPLOY / "kubernetes" / "autoscaling"
    adapter = yaml.safe_load((autoscaling / "prometheus-adapter-values.yaml").read_text())
    served = {}  # name the adapter serves -> the series its query reads
    for rule in adapter["rules"]["custom"]:
        served[rule["name"]["as"]] = set(re.findall(r"\bnv_\w+", rule["seriesQuery"] +
                                                    rule["metricsQuery"]))
    for name, series in served.items():
        assert series and series <= exported, f"{name} reads {series - exported}"
    hpa = yaml.safe_load((DEPLOY / "kubernetes" / "base" / "horizontalpodautoscaler.yaml")
                         .read_text())
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted and wanted <= set(served), wanted - set(served)
    keda = yaml.safe_load((autoscaling / "keda-scaledobject.yaml").read_text())
    for trigger in keda["spec"]["triggers"]:
        names = set(re.findall(r"\bnv_\w+", trigger["metadata"]["query"]))
        assert names and names <= exported


# --- KServe --------------------------------------------------------------------------------

def kserve_objects() -> dict[str, dict]:
    docs = {}
    for path in sorted((DEPLOY / "kserve").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert set(docs) == {"ClusterServingRuntime", "ServingRuntime", "InferenceService"}
    return docs


def test_serving_runtime_declares_pyserves_formats_and_protocols():
    docs = kserve_objects()
    assert docs["ClusterServingRuntime"]["spec"] == docs["ServingRuntime"]["spec"]
    spec = docs["ServingRuntime"]["spec"]
    assert {f["name"] for f in spec["supportedModelFormats"]} == {
        "onnx", "pytorch", "tensorrt", "triton", "python"}
    assert set(spec["protocolVersions"]) == {"v2", "grpc-v2"}
    (c,) = spec["containers"]
    options = serve_args(c["args"], {})
    assert options.model_repositories == ["/mnt/models"] or \
        [str(p) for p in options.model_repositories] == ["/mnt/models"]
    assert (options.http_port, options.grpc_port) == (8080, 9000)
    assert options.allow_http and options.allow_grpc
    assert spec["annotations"]["prometheus.kserve.io/port"] == str(8002)
    # KServe sets no termination grace: the drain (grace included) must end within
    # Kubernetes' default 30 s, and readiness must turn false before connections are refused.
    assert options.drain_grace_secs > 0 and options.exit_timeout_secs < 30


def test_inference_service_uses_the_runtime():
    docs = kserve_objects()
    model = docs["InferenceService"]["spec"]["predictor"]["model"]
    assert model["runtime"] == docs["ClusterServingRuntime"]["metadata"]["name"]
    formats = {f["name"] for f in docs["ClusterServingRuntime"]["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert model["protocolVersion"] in docs["ClusterServingRuntime"]["spec"]["protocolVersions"]
    assert re.match(r"^(s3|gs|https?|pvc)://", model["storageUri"])


def sdk_check(documents: list[dict]) -> subprocess.CompletedProcess:
    """Load documents through the kserve SDK's models in a fresh interpreter: the SDK's own
    `inference.*` protos clash with tritonclient's in one process's descriptor pool."""
    if importlib.util.find_spec("kserve") is None:  # not imported here: see above
        pytest.skip("the kserve SDK is not installed: pip install 'pyserve[test-kserve]'")
    return subprocess.run([sys.executable, str(ROOT / "tests" / "kserve_models.py")],
                          input=json.dumps(documents), capture_output=True, text=True,
                          timeout=120, cwd=OUTSIDE)


def test_kserve_objects_load_through_the_sdk():
    documents = list(kserve_objects().values())
    result = sdk_check(documents)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "V1alpha1ServingRuntime" if d["kind"] == "ServingRuntime" else
        "V1alpha1ClusterServingRuntime" if d["kind"] == "ClusterServingRuntime" else
        "V1beta1InferenceService" for d in documents]


def test_sdk_check_can_fail():
    document = kserve_objects()["InferenceService"]
    typo = {**document, "spec": {"predictor": {"model": {
        **document["spec"]["predictor"]["model"], "storageUrl": "s3://x"}}}}
    result = sdk_check([typo])
    assert result.returncode != 0 and "storageUrl" in result.stderr
    runtime = kserve_objects()["ServingRuntime"]
    nameless = {**runtime, "spec": {**runtime["spec"], "containers": [
        {k: v for k, v in runtime["spec"]["containers"][0].items() if k != "name"}]}}
    result = sdk_check([nameless])
    assert result.returncode != 0 and "name" in result.stderr
