"""deploy/: KubeRay manifests valid against our ray.io/v1 schema and consistent with the repo
(Ray pin, serve/config.yaml, secrets, metrics port); the Grafana dashboard's metrics exist."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from functools import cache

import pytest
import yaml
from jsonschema import Draft202012Validator

from tests.conftest import REPO

DEPLOY = REPO / "deploy"
KUBERAY = DEPLOY / "kuberay"
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)
METRICS_PORT = "8080"


def ray_pin() -> str:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    (pin,) = [line.split("==")[1] for line in lines if line.startswith("ray==")]
    return pin


@cache
def manifests() -> list[tuple[str, dict]]:
    """(file name, document) for every YAML document under deploy/."""
    out = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out.append((path.name, doc))
    return out


def ray_manifests() -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in manifests() if doc.get("apiVersion") == "ray.io/v1"]


@cache
def validator() -> Draft202012Validator:
    schema = json.loads((KUBERAY / "schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayService": spec.get("rayClusterConfig"),
    }[doc["kind"]]


def groups(spec: dict) -> list[dict]:
    """The head group and every worker group of a RayClusterSpec."""
    return [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]


def ray_containers(doc: dict) -> list[dict]:
    return [c for g in groups(cluster_spec(doc)) for c in g["template"]["spec"]["containers"]]


def all_containers(doc: dict) -> list[dict]:
    submitter = doc["spec"].get("submitterPodTemplate", {"spec": {"containers": []}})
    return ray_containers(doc) + submitter["spec"]["containers"]


def errors(doc: dict) -> list[tuple[list, str]]:
    return [(list(e.absolute_path), e.message) for e in validator().iter_errors(doc)]


def test_every_yaml_parses_and_opens_with_its_command():
    files = sorted(DEPLOY.rglob("*.y*ml")) + [REPO / "serve" / "config.yaml"]
    for path in files:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# ") and len(first) > 10, f"{path}: no command on line 1"
        assert all(doc for doc in yaml.safe_load_all(path.read_text())), path


def test_the_manifests_we_ship():
    kinds = Counter(doc["kind"] for _, doc in ray_manifests())
    assert kinds == {"RayCluster": 1, "RayJob": 2, "RayService": 1}
    entrypoints = {
        doc["spec"]["entrypoint"].split()[1]
        for _, doc in ray_manifests()
        if doc["kind"] == "RayJob"
    }
    assert entrypoints == {"jobs/train.py", "jobs/tune.py"}
    for _, doc in ray_manifests():
        if doc["kind"] == "RayJob":
            config = doc["spec"]["entrypoint"].split()[2]
            assert (REPO / config).is_file(), config
            assert "data.path=s3://" in doc["spec"]["entrypoint"]
            assert "train.storage_path=s3://" in doc["spec"]["entrypoint"]


def test_every_ray_manifest_validates_against_the_schema():
    for name, doc in ray_manifests():
        assert errors(doc) == [], name


def test_rayservice_serves_exactly_serve_config_yaml():
    (service,) = [doc for _, doc in ray_manifests() if doc["kind"] == "RayService"]
    serve_config = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == serve_config, (
        "rayservice.yaml's serveConfigV2 differs from serve/config.yaml: copy serve/config.yaml "
        "(below its header comment) into it, indented under serveConfigV2: |"
    )


def test_images_and_ray_versions_follow_the_ray_pin():
    ray = ray_pin()
    for name, doc in ray_manifests():
        assert cluster_spec(doc)["rayVersion"] == ray, name
        for container in all_containers(doc):
            image, _, tag = container["image"].rpartition(":")
            assert image.endswith("polymodal") and tag in (ray, f"{ray}-gpu"), (name, tag)
            gpus = container["resources"]["limits"].get("nvidia.com/gpu", 0)
            assert (tag == f"{ray}-gpu") == bool(gpus), (name, container["image"], gpus)


def test_every_container_has_requests_and_limits():
    for name, doc in ray_manifests():
        spec = cluster_spec(doc)
        sidecar = [spec["autoscalerOptions"]] if spec.get("enableInTreeAutoscaling") else []
        for container in all_containers(doc) + sidecar:
            resources = container.get("resources", {})
            assert resources.get("requests") and resources.get("limits"), (name, container)
            assert set(resources["requests"]) <= set(resources["limits"]), (name, container)


def test_gpu_workers_scale_from_zero():
    for name, doc in ray_manifests():
        gpu = [
            g
            for g in cluster_spec(doc).get("workerGroupSpecs", [])
            if any(
                "nvidia.com/gpu" in c["resources"]["limits"]
                for c in g["template"]["spec"]["containers"]
            )
        ]
        assert gpu and all(g["minReplicas"] == 0 for g in gpu), name


def test_secrets_come_from_secret_refs_only():
    (secret,) = [doc for _, doc in manifests() if doc.get("kind") == "Secret"]
    for name, doc in ray_manifests():
        for container in ray_containers(doc):
            env = {e["name"]: e for e in container["env"]}
            for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                ref = env[var]["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"], (name, var)
                assert ref["key"] in secret["stringData"], (name, var)
            assert "AWS_REGION" in env and "AWS_ENDPOINT_URL" in env, name
            assert env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"].get("optional"), name
        for container in all_containers(doc):
            for e in container.get("env", []):
                if SECRET_NAME.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], (name, e)
    assert all(v.startswith("REPLACE_WITH_") for v in secret["stringData"].values())


def test_token_auth_on_and_metrics_exported():
    for name, doc in ray_manifests():
        spec = cluster_spec(doc)
        assert spec["authOptions"]["mode"] == "token", name
        for group in groups(spec):
            assert group["rayStartParams"]["metrics-export-port"] == METRICS_PORT, name
            for container in group["template"]["spec"]["containers"]:
                ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
                assert str(ports["metrics"]) == METRICS_PORT, (name, container["name"])
    (monitor,) = [doc for _, doc in manifests() if doc.get("kind") == "PodMonitor"]
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    files = [
        f
        for job in prometheus["scrape_configs"]
        for sd in job["file_sd_configs"]
        for f in sd["files"]
    ]
    assert files == ["/tmp/ray/prom_metrics_service_discovery.json"]


def raycluster() -> dict:
    (doc,) = [doc for _, doc in ray_manifests() if doc["kind"] == "RayCluster"]
    return copy.deepcopy(doc)


def rayjob() -> dict:
    return copy.deepcopy(next(doc for _, doc in ray_manifests() if doc["kind"] == "RayJob"))


def rayservice() -> dict:
    (doc,) = [doc for _, doc in ray_manifests() if doc["kind"] == "RayService"]
    return copy.deepcopy(doc)


def typo_in_cluster_spec(doc):
    doc["spec"]["workerGroupSpec"] = doc["spec"].pop("workerGroupSpecs")
    return ["spec"]


def typo_in_worker_group(doc):
    doc["spec"]["workerGroupSpecs"][0]["minReplica"] = 1
    return ["spec", "workerGroupSpecs", 0]


def typo_in_rayjob(doc):
    doc["spec"]["shutdownAfterJobFinish"] = doc["spec"].pop("shutdownAfterJobFinishes")
    return ["spec"]


def typo_in_container(doc):
    container = doc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][
        0
    ]
    container["resource"] = container.pop("resources")
    return ["spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0]


def int_start_param(doc):
    doc["spec"]["headGroupSpec"]["rayStartParams"]["metrics-export-port"] = 8080
    return ["spec", "headGroupSpec", "rayStartParams", "metrics-export-port"]


def string_replicas(doc):
    doc["spec"]["workerGroupSpecs"][1]["minReplicas"] = "0"
    return ["spec", "workerGroupSpecs", 1, "minReplicas"]


def unquoted_ray_version(doc):
    doc["spec"]["rayVersion"] = 2.6
    return ["spec", "rayVersion"]


def serve_config_as_object(doc):
    doc["spec"]["serveConfigV2"] = yaml.safe_load(doc["spec"]["serveConfigV2"])
    return ["spec", "serveConfigV2"]


def unknown_auth_mode(doc):
    doc["spec"]["rayClusterSpec"]["authOptions"]["mode"] = "Token"
    return ["spec", "rayClusterSpec", "authOptions", "mode"]


def literal_and_ref(doc):
    env = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"][0]
    env["value"] = "AKIA-LITERAL"
    return ["spec", "headGroupSpec", "template", "spec", "containers", 0, "env", 0]


@pytest.mark.parametrize(
    "load, mutate",
    [
        (raycluster, typo_in_cluster_spec),
        (raycluster, typo_in_worker_group),
        (rayjob, typo_in_rayjob),
        (rayservice, typo_in_container),
        (raycluster, int_start_param),
        (raycluster, string_replicas),
        (raycluster, unquoted_ray_version),
        (rayservice, serve_config_as_object),
        (rayjob, unknown_auth_mode),
        (raycluster, literal_and_ref),
    ],
    ids=lambda f: f.__name__,
)
def test_schema_rejects_a_broken_copy(load, mutate):
    doc = load()
    where = mutate(doc)
    found = errors(doc)
    assert any(path == where for path, _ in found), (where, found)


METRIC = re.compile(r"\bray_(polymodal_\w+)")
# What operators watch; a new metric joins this list when it gets a panel.
ON_DASHBOARD = {
    "polymodal_train_loss",
    "polymodal_train_samples_per_second",
    "polymodal_train_samples",
    "polymodal_train_data_wait_fraction",
    "polymodal_train_gpu_memory_bytes",
    "polymodal_train_epoch",
    "polymodal_http_requests",
    "polymodal_http_request_duration_seconds",
    "polymodal_batch_size",
    "polymodal_queue_depth",
    "polymodal_model_load_seconds",
}
SUFFIX = re.compile(r"_(total|bucket|count|sum)$")


def defined_metrics() -> set[str]:
    files = ["platform/polymodal/serving/metrics.py", "platform/polymodal/train/metrics.py"]
    return {m for f in files for m in re.findall(r"\"(polymodal_\w+)\"", (REPO / f).read_text())}


def dashboard_panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out += panel.get("panels", []) if panel["type"] == "row" else [panel]
    return out


def test_dashboard_panels_query_metrics_we_export():
    text = (DEPLOY / "grafana" / "polymodal-dashboard.json").read_text()
    dashboard = json.loads(text)
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    panels = dashboard_panels(dashboard)
    assert len(panels) >= 10
    for panel in panels:
        assert panel.get("title") and panel.get("targets"), panel.get("title")
        for target in panel["targets"]:
            assert target["expr"] and target["datasource"]["uid"] == "${datasource}", panel["title"]
    used = {SUFFIX.sub("", m) for m in METRIC.findall(text)}
    assert used - defined_metrics() == set(), "queried but not exported"
    assert ON_DASHBOARD - used == set(), "no panel"


def test_dashboard_metric_check_bites():
    defined = defined_metrics()
    assert ON_DASHBOARD <= defined  # both files were read: serving and training names
    assert SUFFIX.sub("", "polymodal_http_request_duration_seconds_bucket") in defined
    assert SUFFIX.sub("", "polymodal_http_request_total") not in defined  # a typo'd name
