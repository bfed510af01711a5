"""The cluster manifests parse and carry what cai-ray depends on."""

from pathlib import Path

import yaml

CLUSTERS = Path(__file__).resolve().parents[2] / "clusters"


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def test_kuberay_raycluster():
    doc = yaml.safe_load((CLUSTERS / "kuberay-raycluster.yaml").read_text())
    assert doc["kind"] == "RayCluster" and doc["spec"]["rayVersion"].startswith("2.60")
    head = doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _env(head)["RAY_AUTH_MODE"]["value"] == "token"
    assert "secretKeyRef" in _env(head)["RAY_AUTH_TOKEN"]["valueFrom"]
    workers = doc["spec"]["workerGroupSpecs"]
    gpu = [w for w in workers if "nvidia.com/gpu" in
           w["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu and _env(gpu[0]["template"]["spec"]["containers"][0])["RAY_AUTH_MODE"]["value"] == \
        "token"


def test_kuberay_rayjob():
    doc = yaml.safe_load((CLUSTERS / "kuberay-rayjob.yaml").read_text())
    assert doc["kind"] == "RayJob"
    assert doc["spec"]["entrypoint"].startswith("python -m cai_ray.cli run ")
    spec = doc["spec"]["rayClusterSpec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert _env(head)["RAY_AUTH_MODE"]["value"] == "token"
    assert spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"][
        "limits"]["nvidia.com/gpu"]


def test_cluster_launcher():
    doc = yaml.safe_load((CLUSTERS / "aws-gpu.yaml").read_text())
    types = doc["available_node_types"]
    assert any(t["resources"].get("GPU", 0) > 0 for t in types.values())
    assert doc["head_node_type"] in types
    assert all("RAY_AUTH_MODE=token" in " ".join(doc[k]) for k in
               ("head_start_ray_commands", "worker_start_ray_commands"))
    assert "--dashboard-host=127.0.0.1" in " ".join(doc["head_start_ray_commands"])
    assert "~/.ray/auth_token" in doc["file_mounts"]
