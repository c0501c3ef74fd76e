"""deploy/kuberay-rayservice.yaml checked against its schemas, without a Kubernetes cluster:

- the RayService CRD of a pinned KubeRay release (deploy/kuberay/, see VERSION): its ray.io/v1 openAPIV3Schema,
  with unknown fields rejected as `kubectl apply --validate=strict` does;
- a few of the KubeRay operator's own checks that the schema cannot express (name length and form, replica
  bounds, deprecated fields, token auth needs Ray >= 2.52), taken from its v1.7.0 validation code;
- the embedded serveConfigV2 against Ray's own Serve config schema (ray.serve.schema.ServeDeploySchema), equal
  to deploy/serve-gpu.yaml, and its args accepted by serving.app:build_app;
- GPU resources and autoscaling as the manifest's comments and docs/deploy.md describe them.
"""

from __future__ import annotations

import copy
import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "deploy" / "kuberay-rayservice.yaml"
CRD = ROOT / "deploy" / "kuberay" / "ray.io_rayservices.yaml"
VERSION_NOTE = ROOT / "deploy" / "kuberay" / "VERSION"
SERVE_GPU = ROOT / "deploy" / "serve-gpu.yaml"
# kuberay v1.7.0 ray-operator/apis/ray/v1/rayservice_types.go: "Deprecated: This field is not used anymore."
DEPRECATED_SPEC_FIELDS = {"serviceUnhealthySecondThreshold", "deploymentUnhealthySecondThreshold"}
MAX_RAYSERVICE_NAME_LENGTH = 53 - 6  # kuberay v1.7.0 utils/constant.go: MaxRayClusterNameLength - 6
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def strict(schema: Any) -> Any:
    """The schema with additionalProperties: false on every object that lists its properties and does not keep
    unknown fields: the API server prunes (or, with strict field validation, rejects) fields a structural
    schema does not name, which a plain JSON-schema validator would let through silently."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: the CRD is 1 MB of YAML
    return yaml.load(CRD.read_text(), Loader=loader)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return yaml.safe_load(MANIFEST.read_text())


@pytest.fixture(scope="module")
def serve_config(manifest: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(manifest["spec"]["serveConfigV2"])


def v1_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert version["served"] and version["storage"]
    return strict(version["schema"]["openAPIV3Schema"])


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pinned(requirement_prefix: str, requirements: list[str]) -> str:
    (req,) = [r for r in requirements if r.split("==")[0].split("[")[0] == requirement_prefix]
    return req.split("==")[1]


def test_vendored_crd_matches_its_version_note(crd: dict[str, Any]) -> None:
    note = VERSION_NOTE.read_text()
    assert re.search(r"^KubeRay v\d+\.\d+\.\d+ ", note, re.M), note
    assert hashlib.sha256(CRD.read_bytes()).hexdigest() in note, "CRD file changed without its VERSION note"
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "RayService"


def test_manifest_validates_against_rayservice_crd(crd: dict[str, Any], manifest: dict[str, Any]) -> None:
    group = crd["spec"]["group"]
    assert manifest["apiVersion"] == f"{group}/v1"
    assert manifest["kind"] == crd["spec"]["names"]["kind"]
    validator = jsonschema.Draft202012Validator(v1_schema(crd))
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_strict_schema_catches_a_misspelled_field(crd: dict[str, Any], manifest: dict[str, Any]) -> None:
    """The check above has teeth: a typo and a wrong type are both rejected."""
    validator = jsonschema.Draft202012Validator(v1_schema(crd))
    typo = copy.deepcopy(manifest)
    typo["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 8
    assert any("maxReplica" in e.message for e in validator.iter_errors(typo))
    wrong_type = copy.deepcopy(manifest)
    wrong_type["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplicas"] = "4"
    assert list(validator.iter_errors(wrong_type))


def test_manifest_passes_the_operators_own_checks(manifest: dict[str, Any]) -> None:
    name = manifest["metadata"]["name"]
    assert len(name) <= MAX_RAYSERVICE_NAME_LENGTH and DNS1035_LABEL.match(name), name
    spec = manifest["spec"]
    deprecated = DEPRECATED_SPEC_FIELDS & set(spec)
    assert not deprecated, f"deprecated fields, ignored by KubeRay: {deprecated}"
    cluster = spec["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert group["template"]["spec"]["containers"], "each group needs a container"
        params = group.get("rayStartParams", {})
        assert all(isinstance(v, str) for v in params.values()), "rayStartParams values are strings"
        assert not (group.get("resources") and {"num-cpus", "num-gpus", "memory", "resources"} & set(params))
    for w in cluster["workerGroupSpecs"]:
        assert 0 <= w["minReplicas"] <= w["replicas"] <= w["maxReplicas"], w["groupName"]
    if cluster.get("authOptions", {}).get("mode", "token") == "token" and "authOptions" in cluster:
        major, minor, _ = (int(x) for x in cluster["rayVersion"].split("."))
        assert (major, minor) >= (2, 52), "token auth needs Ray >= 2.52"


def test_versions_match_pyproject(manifest: dict[str, Any]) -> None:
    project = pyproject()["project"]
    ray_version = pinned("ray", project["dependencies"])
    cluster = manifest["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray_version
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert images == {f"stepserve:{project['version']}-gpu"}, images


def check_serve_config(config: dict[str, Any]) -> None:
    """Ray's ServeDeploySchema, plus what it leaves loose: it ignores unknown deployment keys and keeps
    autoscaling_config as a plain dict (Serve validates that only at deploy time), so those are checked here
    with Ray's own DeploymentSchema fields and AutoscalingConfig model."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema, RayActorOptionsSchema, ServeDeploySchema

    ServeDeploySchema.model_validate(config)
    for app in config["applications"]:
        for d in app.get("deployments", []):
            unknown = set(d) - set(DeploymentSchema.model_fields)
            assert not unknown, f"deployment {d['name']}: unknown keys {unknown}"
            unknown = set(d.get("ray_actor_options", {})) - set(RayActorOptionsSchema.model_fields)
            assert not unknown, f"deployment {d['name']}: unknown ray_actor_options {unknown}"
            if "autoscaling_config" in d:
                unknown = set(d["autoscaling_config"]) - set(AutoscalingConfig.model_fields)
                assert not unknown, f"deployment {d['name']}: unknown autoscaling_config keys {unknown}"
                AutoscalingConfig.model_validate(d["autoscaling_config"])


def test_serve_config_v2_validates_with_rays_schema(serve_config: dict[str, Any]) -> None:
    from pydantic import ValidationError

    check_serve_config(serve_config)
    bad = copy.deepcopy(serve_config)
    bad["applications"][0]["deployments"][1]["autoscaling_config"]["min_replicas"] = 9  # > max_replicas 8
    with pytest.raises(ValidationError, match="min_replicas"):
        check_serve_config(bad)
    bad = copy.deepcopy(serve_config)
    bad["applications"][0]["deployments"][1]["max_ongoing_request"] = 64
    with pytest.raises(AssertionError, match="max_ongoing_request"):
        check_serve_config(bad)
    bad = copy.deepcopy(serve_config)
    bad["applications"][0]["deployments"][1]["num_replicas"] = 2  # with autoscaling_config: Ray refuses
    with pytest.raises(ValidationError, match="num_replicas"):
        check_serve_config(bad)


@pytest.mark.parametrize(
    "name", ["serve.yaml", "serve-gpu.yaml", "serve-cluster.yaml", "serve-one-hop.yaml", "serve-latent.yaml"]
)
def test_every_serve_config_in_deploy_validates(name: str) -> None:
    check_serve_config(yaml.safe_load((ROOT / "deploy" / name).read_text()))


def test_serve_config_v2_is_serve_gpu_yaml(serve_config: dict[str, Any]) -> None:
    assert serve_config == yaml.safe_load(SERVE_GPU.read_text())


def test_serve_config_v2_args_build_the_app(serve_config: dict[str, Any]) -> None:
    """The app args go through the entry point the config names (only the models dir differs: the image's path)."""
    from serving.app import build_app

    (app,) = serve_config["applications"]
    assert app["import_path"] == "serving.app:build_app"
    args = copy.deepcopy(app["args"])
    assert args["models_dir"] == "/opt/stepserve/models"  # deploy/Dockerfile's STEPSERVE_MODELS_DIR
    args["models_dir"] = str(ROOT / "models")
    build_app(args)


def test_gpu_resources_and_autoscaling(manifest: dict[str, Any], serve_config: dict[str, Any]) -> None:
    cluster = manifest["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0", "no model replica on the head"
    (gpu,) = cluster["workerGroupSpecs"]
    (container,) = gpu["template"]["spec"]["containers"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    gpus_per_pod = int(limits["nvidia.com/gpu"])
    assert gpus_per_pod >= 1 and requests.get("nvidia.com/gpu") == limits["nvidia.com/gpu"]
    cpus_per_pod = float(limits["cpu"])
    assert cluster["enableInTreeAutoscaling"] is True

    (app,) = serve_config["applications"]
    engine = app["args"]["engine"]
    models = [d for d in app["deployments"] if d["name"] != "Ingress"]
    assert {d["name"] for d in models} == set(app["args"]["models"])
    min_gpus = 0
    for d in models:
        opts, auto = d["ray_actor_options"], d["autoscaling_config"]
        assert opts["num_gpus"] == 1 and opts["num_cpus"] <= cpus_per_pod, d["name"]
        assert app["args"]["models"][d["name"]]["backend_options"]["device"] == "cuda"
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"]
        # scaled and routed on predicted work (serving.autoscale, serving.router); a scaled-down replica drains
        assert auto["policy"]["policy_function"] == "serving.autoscale:WorkPolicy"
        assert auto["policy"]["policy_kwargs"]["target_backlog_s"] < engine["max_wait_s"]
        assert d["request_router_config"]["request_router_class"] == "serving.router:WorkAwareRouter"
        assert d["graceful_shutdown_timeout_s"] > engine["request_timeout_s"]
        # documented in deploy/serve-gpu.yaml: max_ongoing_requests = engine max_in_flight + max_queue + 32
        assert d["max_ongoing_requests"] == engine["max_in_flight"] + engine["max_queue"] + 32
        min_gpus += auto["min_replicas"] * opts["num_gpus"]
    # The minimum replicas of every model fit the worker pods that exist from the start; autoscaling can grow.
    assert gpu["minReplicas"] * gpus_per_pod >= min_gpus
    assert gpu["maxReplicas"] > gpu["minReplicas"]
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    head_cpus = float(head["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    assert ingress["ray_actor_options"]["num_cpus"] <= head_cpus
    assert "num_gpus" not in ingress["ray_actor_options"]
