"""The Kubernetes and KServe manifests, offline: each overlay renders with `kubectl kustomize`
and validates against the Kubernetes schemas (kubernetes-validate, strict); the objects agree
with each other and with pyserve (probes on Triton's health routes, args pyserve's CLI accepts,
a termination grace that covers the drain, autoscaling on metric names a running pyserve really
exports); the KServe objects load through the kserve SDK's models."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import OUTSIDE, ROOT

yaml = pytest.importorskip("yaml")

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]  # oldest and newest this pins schemas for
# Each rendered overlay: the shipped ones, and the base with one component of ../identity.
OVERLAYS = ["cpu", "gpu", "example", "example-keda", "identity/eks", "identity/gke",
            "identity/aks", "identity/gcs-key"]
# What KServe's and Kubernetes' controllers and the Prometheus Operator read (namespace below).
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject"}


def render(overlay: str, tmp_path_factory=None) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (Debian package kubectl)")
    directory = KUBERNETES / overlay
    if overlay.startswith("identity/"):  # a component: rendered in an overlay of cpu
        directory = tmp_path_factory.mktemp("overlay")
        (directory / "deploy").symlink_to(KUBERNETES)
        (directory / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources: [deploy/cpu]\ncomponents: [deploy/{overlay}]\n")
    result = subprocess.run([kubectl, "kustomize", str(directory)],
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
def rendered(request, tmp_path_factory) -> tuple[str, dict[str, dict]]:
    return request.param, by_kind(render(request.param, tmp_path_factory))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_rendered_objects_are_valid_kubernetes(rendered, version):
    validate = pytest.importorskip("kubernetes_validate")
    overlay, kinds = rendered
    assert {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
            "ServiceAccount"} <= set(kinds)
    for kind, doc in kinds.items():
        if kind not in CUSTOM_KINDS:
            validate.validate(doc, version, strict=True)


def custom_resource_check(documents: list[dict]) -> subprocess.CompletedProcess:
    """Validate ServiceMonitor and ScaledObject objects with the npm @kubernetes-models
    packages (in $PYSERVE_K8S_MODELS, default ~/.cache/pyserve-k8s-models/node_modules)."""
    node = shutil.which("node")
    models = Path(os.environ.get("PYSERVE_K8S_MODELS") or
                  Path.home() / ".cache" / "pyserve-k8s-models" / "node_modules")
    if node is None or not (models / "@kubernetes-models" / "keda").is_dir() or \
            not (models / "@kubernetes-models" / "prometheus-operator").is_dir():
        pytest.skip("the custom resource models are not installed: npm install --prefix "
                    "~/.cache/pyserve-k8s-models @kubernetes-models/prometheus-operator@6.0.0 "
                    "@kubernetes-models/keda@2.0.0 (or set PYSERVE_K8S_MODELS)")
    return subprocess.run([node, str(ROOT / "tests" / "k8s_models.js"), str(models)],
                          input=json.dumps(documents), capture_output=True, text=True,
                          timeout=60)


def test_custom_resources_are_valid():
    documents = [doc for overlay in ("example", "example-keda")
                 for doc in render(overlay) if doc["kind"] in CUSTOM_KINDS]
    result = custom_resource_check(documents)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == ["ScaledObject", "ServiceMonitor", "ServiceMonitor"]


def test_custom_resource_check_can_fail():
    (scaled,) = [doc for doc in render("example-keda") if doc["kind"] == "ScaledObject"]
    result = custom_resource_check([{**scaled, "spec": {**scaled["spec"],
                                                        "minReplicaCount": "two"}}])
    assert result.returncode != 0 and "minReplicaCount" in result.stderr


def test_schema_validation_can_fail():
    validate = pytest.importorskip("kubernetes_validate")
    broken = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
              "spec": {"ports": [{"port": "eight thousand"}]}}
    with pytest.raises(validate.ValidationError):
        validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def container(kinds: dict[str, dict]) -> dict:
    (only,) = kinds["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_probes_use_tritons_health_routes_and_survive_a_slow_listing(rendered):
    _, kinds = rendered
    c = container(kinds)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe, path in (("startupProbe", "/v2/health/ready"), ("readinessProbe", "/v2/health/ready"),
                        ("livenessProbe", "/v2/health/live")):
        assert c[probe]["httpGet"]["path"] == path
        assert c[probe]["httpGet"]["port"] in ports
        # A health answer held up by the process's event loop for seconds (a slow
        # object-store listing) is not a failure, nor are a few of them in a row.
        assert c[probe]["timeoutSeconds"] >= 5
        assert c[probe]["failureThreshold"] * c[probe]["periodSeconds"] >= 15


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
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "/tmp" in mounts and options.repository_cache_dir and \
        str(options.repository_cache_dir) in mounts
    # The mirror is bounded, and the scheduler counts it.
    volumes = {v["name"]: v for v in pod["volumes"]}
    cache = volumes[mounts[str(options.repository_cache_dir)]]["emptyDir"]
    limit = sum(parse_quantity(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"]
                if "emptyDir" in v)
    assert parse_quantity(cache["sizeLimit"]) > 0
    assert parse_quantity(c["resources"]["requests"]["ephemeral-storage"]) >= limit


def parse_quantity(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", str(text)).groups()
    return int(number) * 1024 ** (" KMGT".index(unit[0]) if unit else 0)


def test_service_account_and_workload_identity(rendered):
    overlay, kinds = rendered
    pod = kinds["Deployment"]["spec"]["template"]
    account = kinds["ServiceAccount"]
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    annotations = account["metadata"].get("annotations", {})
    expected = {"identity/eks": "eks.amazonaws.com/role-arn",
                "identity/gke": "iam.gke.io/gcp-service-account",
                "identity/aks": "azure.workload.identity/client-id"}.get(overlay)
    assert list(annotations) == ([expected] if expected else [])
    if overlay == "identity/aks":  # the webhook only serves pods that carry this label
        assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    if overlay == "identity/gke":
        assert pod["spec"]["nodeSelector"] == {"iam.gke.io/gke-metadata-server-enabled": "true"}
    env = {e["name"]: e.get("value") for e in container(kinds).get("env", [])}
    if overlay == "identity/gcs-key":
        # A file path, in a volume from the key's Secret.
        path = Path(env["GOOGLE_APPLICATION_CREDENTIALS"])
        (mount,) = [m for m in container(kinds)["volumeMounts"]
                    if path.parent == Path(m["mountPath"])]
        (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] and mount["readOnly"]
    else:
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in env


def test_service_pdb_and_autoscaler_select_the_deployment(rendered):
    overlay, kinds = rendered
    deployment = kinds["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = kinds["Service"]["spec"]
    assert {p["port"]: p["targetPort"] for p in service["ports"]} == {
        8000: "http", 8001: "grpc", 8002: "metrics"}
    assert service["selector"].items() <= labels.items()
    pdb = kinds["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"] and pdb["selector"]["matchLabels"].items() <= labels.items()
    # The autoscaler owns the scale: a replicas field would reset it on every apply.
    assert "replicas" not in deployment["spec"]
    autoscalers = {"example": "HorizontalPodAutoscaler", "example-keda": "ScaledObject"}
    assert set(kinds) & {"HorizontalPodAutoscaler", "ScaledObject"} == (
        {autoscalers[overlay]} if overlay in autoscalers else set())
    if "HorizontalPodAutoscaler" in kinds:
        target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    if "ScaledObject" in kinds:
        target = kinds["ScaledObject"]["spec"]["scaleTargetRef"]
        assert target["name"] == deployment["metadata"]["name"]
        assert target.get("kind", "Deployment") == "Deployment"
    for doc in kinds.values():  # one namespace for all, where the overlay sets one
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == deployment["metadata"].get("namespace")
    if "Namespace" in kinds:
        assert kinds["Namespace"]["metadata"]["name"] == deployment["metadata"]["namespace"]


def test_scraped_once_either_way(rendered):
    """Through the pod annotations (Prometheus' kubernetes-pods job), or through the
    ServiceMonitor (Prometheus Operator), which then removes the annotations."""
    overlay, kinds = rendered
    annotations = kinds["Deployment"]["spec"]["template"]["metadata"].get("annotations", {})
    scrape = {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")}
    if "ServiceMonitor" in kinds:
        assert not scrape
        monitor = kinds["ServiceMonitor"]["spec"]
        service = kinds["Service"]
        assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        (endpoint,) = monitor["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
    else:
        assert scrape == {"prometheus.io/scrape": "true", "prometheus.io/port": "8002",
                          "prometheus.io/path": "/metrics"}


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


def test_keda_and_the_adapter_read_one_prometheus_within_the_namespace():
    (scaled,) = [d for d in render("example-keda") if d["kind"] == "ScaledObject"]
    namespace = scaled["metadata"]["namespace"]
    adapter = yaml.safe_load((KUBERNETES / "autoscaling" / "prometheus-adapter" /
                              "prometheus-adapter-values.yaml").read_text())
    address = f"{adapter['prometheus']['url']}:{adapter['prometheus']['port']}"
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["metadata"]["serverAddress"] == address
        # Every series the query reads is this namespace's, this Deployment's pods'.
        selectors = re.findall(r"\bnv_\w+(\{[^}]*\})?", trigger["metadata"]["query"])
        assert selectors and all(
            f'namespace="{namespace}"' in s and 'pod=~"pyserve-.*"' in s for s in selectors)
    # The adapter's rules: the HPA's namespace and pods come in through <<.LabelMatchers>>.
    for rule in adapter["rules"]["custom"]:
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
        assert all(selector == "{<<.LabelMatchers>>}" for selector in
                   re.findall(r"(?:<<\.Series>>|\bnv_\w+)(\{[^}]*\})", rule["metricsQuery"]))


def test_comments_name_files_that_exist():
    """Every file or folder a manifest's comments point at (../x, x.yaml) is there."""
    for path in KUBERNETES.rglob("*.yaml"):
        for line in path.read_text().splitlines():
            comment = line.partition("#")[2]
            for name in re.findall(r"((?:\.\./)+[\w./-]*\w|[\w-]+\.yaml)\b", comment):
                if name.startswith("../"):
                    assert (path.parent / name).exists(), f"{path}: {name}"
                else:
                    assert list(KUBERNETES.rglob(name)) or (ROOT / name).exists(), f"{path}: {name}"


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
    autoscaling = KUBERNETES / "autoscaling"
    adapter = yaml.safe_load((autoscaling / "prometheus-adapter" /
                              "prometheus-adapter-values.yaml").read_text())
    served = {}  # name the adapter serves -> the series its query reads
    for rule in adapter["rules"]["custom"]:
        served[rule["name"]["as"]] = set(re.findall(r"\bnv_\w+", rule["seriesQuery"] +
                                                    rule["metricsQuery"]))
    for name, series in served.items():
        assert series and series <= exported, f"{name} reads {series - exported}"
    hpa = yaml.safe_load((autoscaling / "prometheus-adapter" / "horizontalpodautoscaler.yaml")
                         .read_text())
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted and wanted <= set(served), wanted - set(served)
    keda = yaml.safe_load((autoscaling / "keda" / "scaledobject.yaml").read_text())
    for trigger in keda["spec"]["triggers"]:
        names = set(re.findall(r"\bnv_\w+", trigger["metadata"]["query"]))
        assert names and names <= exported


# --- KServe --------------------------------------------------------------------------------

def kserve_objects() -> dict[str, dict]:
    """Every KServe object of deploy/kserve, by file name."""
    docs = {}
    for path in sorted((DEPLOY / "kserve").glob("*.yaml")):
        (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
        docs[path.stem] = doc
    assert {d["kind"] for d in docs.values()} == {
        "ClusterServingRuntime", "ServingRuntime", "InferenceService"}
    return docs


def formats(spec: dict) -> dict[str, dict]:
    return {f["name"]: f for f in spec["supportedModelFormats"]}


def test_serving_runtime_declares_only_what_the_cpu_image_serves():
    docs = kserve_objects()
    cluster, namespaced = docs["clusterservingruntime"], docs["servingruntime"]
    # The same runtime but for the selection of formats.
    strip = lambda spec: {**spec, "supportedModelFormats": [  # noqa: E731
        {"name": f["name"], "version": f["version"]} for f in spec["supportedModelFormats"]]}
    assert strip(cluster["spec"]) == strip(namespaced["spec"])
    # The CPU image's extras: onnxruntime, and pyserve's own Python backend.
    extras = re.search(r"^ARG EXTRAS=(\S+)", (DEPLOY / "docker" / "Dockerfile.cpu").read_text(),
                       re.M)[1].split(",")
    assert extras == ["onnx", "s3", "gcs", "azure"]
    assert set(formats(cluster["spec"])) == {"onnx", "python", "triton"}
    assert set(cluster["spec"]["protocolVersions"]) == {"v2", "grpc-v2"}
    # Auto-selected where pyserve should win, with a priority (KServe's minimum is 1) that no
    # default KServe runtime gives the format: its webhook refuses a runtime whose priority
    # equals another's for the same format, version and protocol.
    taken = {("onnx", "1"): {1, 2}, ("triton", "2"): {1}}  # kserve-tritonserver, kserve-openvino
    for name, f in formats(cluster["spec"]).items():
        if f.get("autoSelect"):
            assert f["priority"] >= 1 and f["priority"] not in taken.get((name, f["version"]), ())
        else:
            assert "priority" not in f
    assert formats(cluster["spec"])["onnx"]["autoSelect"]
    assert not formats(cluster["spec"])["triton"].get("autoSelect")  # TensorRT etc. inside
    # A namespace's runtime outranks every ClusterServingRuntime: it selects nothing itself.
    assert not any(f.get("autoSelect") or "priority" in f
                   for f in namespaced["spec"]["supportedModelFormats"])


def runtime_container(doc: dict) -> dict:
    (c,) = doc["spec"]["containers"]
    assert c["name"] == "kserve-container"
    return c


@pytest.mark.parametrize("name", ["clusterservingruntime", "servingruntime",
                                  "torchserve-clusterservingruntime"])
def test_serving_runtime_ports_probe_and_metrics(name):
    runtime = kserve_objects()[name]
    c = runtime_container(runtime)
    options = serve_args(c["args"], {})
    # HTTP first (KServe's Service port 80), gRPC named so that KServe's Service in Standard
    # mode exposes it as h2c.
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("http1", 8080), ("h2c", 9000)]
    assert (options.http_port, options.grpc_port) == (8080, 9000)
    assert options.allow_http and options.allow_grpc
    probe = c["readinessProbe"]
    assert probe["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert probe["timeoutSeconds"] >= 5 and probe["failureThreshold"] >= 3
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(options.metrics_port)
    if options.command == "serve":
        assert options.model_repositories == ["/mnt/models"] or \
            [str(p) for p in options.model_repositories] == ["/mnt/models"]
        # KServe sets no termination grace: the drain (grace included) must end within
        # Kubernetes' default 30 s, and readiness must turn false before connections are refused.
        assert options.drain_grace_secs > 0 and options.exit_timeout_secs < 30
    else:
        assert options.host == "0.0.0.0"


def test_torchserve_runtime_follows_kserves_torchserve_layout():
    runtime = kserve_objects()["torchserve-clusterservingruntime"]
    c = runtime_container(runtime)
    options = serve_args(c["args"], {})
    assert options.command == "torchserve" and options.start
    # KServe's TorchServe runtime: the storageUri holds config/ and model-store/.
    assert str(options.model_store) == "/mnt/models/model-store"
    assert str(options.ts_config) == "/mnt/models/config/config.properties"
    assert {e["name"]: e["value"] for e in c["env"]} == {
        "TS_SERVICE_ENVELOPE": "{{.Labels.serviceEnvelope}}"}
    assert set(formats(runtime["spec"])) == {"pytorch"}
    assert not any(f.get("autoSelect") for f in runtime["spec"]["supportedModelFormats"])


@pytest.mark.parametrize("name", ["inferenceservice", "torchserve-inferenceservice"])
def test_inference_service_uses_the_runtime(name):
    docs = kserve_objects()
    isvc = docs[name]
    model = isvc["spec"]["predictor"]["model"]
    runtimes = {d["metadata"]["name"]: d for d in docs.values()
                if d["kind"] == "ClusterServingRuntime"}
    runtime = runtimes[model["runtime"]]
    assert model["modelFormat"]["name"] in formats(runtime["spec"])
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.match(r"^(s3|gs|https?|pvc)://", model["storageUri"])
    annotations = isvc["metadata"]["annotations"]
    # KServe's current name ("RawDeployment" is deprecated), and Standard mode's scraping:
    # pyserve's port, KServe's queue-proxy switches off (no queue-proxy in Standard mode).
    assert annotations["serving.kserve.io/deploymentMode"] == "Standard"
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "false"
    assert annotations["serving.kserve.io/enable-metric-aggregation"] == "false"
    assert annotations["prometheus.io/port"] == runtime["spec"]["annotations"][
        "prometheus.kserve.io/port"]
    # The comments' URLs follow KServe's domain template {name}-{namespace}.{domain}.
    text = (DEPLOY / "kserve" / f"{name}.yaml").read_text()
    hosts = set(re.findall(r"https?://([\w.-]+)/", text))
    assert hosts and all(h == f"{isvc['metadata']['name']}-NAMESPACE.example.com" for h in hosts)
    assert "RawDeployment" not in text.replace('"RawDeployment" is its deprecated name', "")


def sdk_check(documents: list[dict]) -> subprocess.CompletedProcess:
    """Load documents through the kserve SDK's models in a fresh interpreter: the SDK's own
    `inference.*` protos clash with tritonclient's in one process's descriptor pool. The
    interpreter is $PYSERVE_KSERVE_PYTHON (a venv with the SDK, as .ci/run makes), or this
    one if it has the SDK."""
    python = os.environ.get("PYSERVE_KSERVE_PYTHON")
    if python is None or subprocess.run([python, "-c", "import kserve"]).returncode != 0:
        python = sys.executable
        if importlib.util.find_spec("kserve") is None:  # not imported here: see above
            pytest.skip("the kserve SDK is not installed: pip install 'pyserve[test-kserve]' "
                        "or set PYSERVE_KSERVE_PYTHON")
    return subprocess.run([python, str(ROOT / "tests" / "kserve_models.py")],
                          input=json.dumps(documents), capture_output=True, text=True,
                          timeout=120, cwd=OUTSIDE)


def test_kserve_objects_load_through_the_sdk():
    documents = list(kserve_objects().values())
    assert len(documents) == 5
    result = sdk_check(documents)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "V1alpha1ServingRuntime" if d["kind"] == "ServingRuntime" else
        "V1alpha1ClusterServingRuntime" if d["kind"] == "ClusterServingRuntime" else
        "V1beta1InferenceService" for d in documents]


def test_sdk_check_can_fail():
    document = kserve_objects()["inferenceservice"]
    typo = {**document, "spec": {"predictor": {"model": {
        **document["spec"]["predictor"]["model"], "storageUrl": "s3://x"}}}}
    result = sdk_check([typo])
    assert result.returncode != 0 and "storageUrl" in result.stderr
    runtime = kserve_objects()["servingruntime"]
    nameless = {**runtime, "spec": {**runtime["spec"], "containers": [
        {k: v for k, v in runtime["spec"]["containers"][0].items() if k != "name"}]}}
    result = sdk_check([nameless])
    assert result.returncode != 0 and "name" in result.stderr
