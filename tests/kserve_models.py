"""Load KServe objects (JSON list on stdin) through the kserve SDK's models, strictly; print
each object's model name. Run as a script by tests/integration/test_deploy_kubernetes.py: the
SDK's protos clash with tritonclient's in one process."""

from __future__ import annotations

import json
import re
import sys

MODELS = {"ClusterServingRuntime": "V1alpha1ClusterServingRuntime",
          "ServingRuntime": "V1alpha1ServingRuntime",
          "InferenceService": "V1beta1InferenceService"}


def sdk_load(document, type_name: str):
    """`document` as the kserve SDK's model `type_name` (its Kubernetes parts as the kubernetes
    client's models), strictly: a field a model does not declare, or a value of the wrong
    type, is an error; the models' constructors check required fields and enums."""
    import kserve.models
    import kubernetes.client.models as kubernetes_models

    if document is None:
        return None
    match = re.fullmatch(r"[lL]ist\[(.*)\]", type_name)  # the two clients' spellings
    if match:
        assert isinstance(document, list), (type_name, document)
        return [sdk_load(item, match[1]) for item in document]
    match = re.fullmatch(r"dict\(([^,]*), (.*)\)|Dict\[([^,]*), (.*)\]", type_name)
    if match:
        assert isinstance(document, dict), (type_name, document)
        return {key: sdk_load(value, match[2] or match[4]) for key, value in document.items()}
    primitive = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in primitive:
        assert isinstance(document, primitive[type_name]), (type_name, document)
        return document
    cls = getattr(kserve.models, type_name, None) or getattr(kubernetes_models, type_name)
    assert isinstance(document, dict), (type_name, document)
    attributes = {json_name: name for name, json_name in cls.attribute_map.items()}
    unknown = set(document) - set(attributes)
    assert not unknown, f"{type_name} has no field(s) {sorted(unknown)}"
    return cls(**{attributes[key]: sdk_load(value, cls.openapi_types[attributes[key]])
                  for key, value in document.items()})


def assert_contains(whole, part, where: str = "") -> None:
    """Everything in `part` is in `whole` (the SDK adds its defaults, such as an empty name)."""
    if isinstance(part, dict):
        assert isinstance(whole, dict), where
        for key, value in part.items():
            assert key in whole, f"{where}.{key} lost"
            assert_contains(whole[key], value, f"{where}.{key}")
    elif isinstance(part, list):
        assert isinstance(whole, list) and len(whole) == len(part), where
        for index, (w, p) in enumerate(zip(whole, part)):
            assert_contains(w, p, f"{where}[{index}]")
    else:
        assert whole == part, where


def main() -> None:
    from kserve.api_client import ApiClient

    for document in json.load(sys.stdin):
        model = MODELS[document["kind"]]
        loaded = sdk_load(document, model)
        assert type(loaded).__name__ == model
        assert_contains(ApiClient().sanitize_for_serialization(loaded), document)
        print(model)


if __name__ == "__main__":
    main()
