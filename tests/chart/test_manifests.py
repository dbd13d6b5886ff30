"""The plain manifests (k8s/, kustomize) and skaffold.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, KUBE_VERSIONS, REPO, Render, parse_documents, validate_manifests

K8S = REPO / "k8s"
OVERLAYS = ("base", "overlays/dev", "overlays/prod")
SERVICES = sorted(p.parent.name for p in (REPO / "services").glob("*/pyproject.toml"))


@pytest.fixture(scope="module")
def kustomized(kubectl: Path) -> dict[str, str]:
    built = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [str(kubectl), "kustomize", str(K8S / overlay)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
        built[overlay] = result.stdout
    return built


def test_manifests_are_generated_from_the_chart(helm: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "chart" / "gen_k8s.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_build_validates(kustomized: dict[str, str], overlay: str, kube_version: str) -> None:
    validate_manifests(kustomized[overlay], kube_version)


def _by_kind(text: str) -> dict[str, list[dict[str, Any]]]:
    objects: dict[str, list[dict[str, Any]]] = {}
    for obj in parse_documents(text):
        objects.setdefault(obj["kind"], []).append(obj)
    return objects


def test_base_matches_the_charts_defaults(kustomized: dict[str, str], render: Render) -> None:
    base = _by_kind(kustomized["base"])
    chart = _by_kind(render((), ("fullnameOverride=stt",)).text)
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "CronJob", "Job", "ServiceAccount"):
        assert sorted(o["metadata"]["name"] for o in base[kind]) == sorted(
            o["metadata"]["name"] for o in chart[kind]
        )
    for deployment in base["Deployment"]:
        twin = next(d for d in chart["Deployment"] if d["metadata"]["name"] == deployment["metadata"]["name"])
        assert deployment["spec"]["template"]["spec"] == twin["spec"]["template"]["spec"]
    # Plain manifests have no hook ordering; the Jobs read the shared ConfigMap instead.
    for job in base["Job"]:
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["envFrom"] == [{"configMapRef": {"name": "stt-config"}}]
        assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    assert not base.get("Secret")


def test_dev_overlay_points_at_in_cluster_instances(kustomized: dict[str, str]) -> None:
    dev = _by_kind(kustomized["overlays/dev"])
    config = next(c for c in dev["ConfigMap"] if c["metadata"]["name"] == "stt-config")["data"]
    assert config["STT_KAFKA_BOOTSTRAP_SERVERS"] == "stt-kafka:9092"
    assert config["STT_S3_ENDPOINT_URL"] == "http://stt-minio:9000"
    assert {s["metadata"]["name"] for s in dev["StatefulSet"]} == {
        "stt-kafka",
        "stt-minio",
        "stt-postgres",
        "stt-redis",
    }
    assert all(d["spec"]["replicas"] == 1 for d in dev["Deployment"])
    for deployment in dev["Deployment"]:
        env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert {"STT_S3_ACCESS_KEY_ID", "STT_S3_SECRET_ACCESS_KEY", "STT_DATABASE_URL"} <= env
    assert not dev.get("Secret")  # create-secrets.sh makes them in the cluster
    assert (K8S / "overlays" / "dev" / "create-secrets.sh").stat().st_mode & 0o111


def test_prod_overlay(kustomized: dict[str, str]) -> None:
    prod = _by_kind(kustomized["overlays/prod"])
    assert {o["metadata"].get("namespace") for objs in prod.values() for o in objs} == {"stt"}
    (hpa,) = prod["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "stt-ingest"
    ingest = next(d for d in prod["Deployment"] if d["metadata"]["name"] == "stt-ingest")
    assert "replicas" not in ingest["spec"]
    images = {c["image"] for d in prod["Deployment"] for c in d["spec"]["template"]["spec"]["containers"]}
    assert all(image.startswith("registry.example.com/stt/stt-") for image in images)
    assert prod["ServiceMonitor"]
    assert prod["PrometheusRule"]


# --- skaffold ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skaffold() -> dict[str, Any]:
    return dict(yaml.safe_load((REPO / "skaffold.yaml").read_text()))


def test_skaffold_paths_exist(skaffold: dict[str, Any]) -> None:
    for artifact in skaffold["build"]["artifacts"]:
        context = REPO / artifact.get("context", ".")
        assert context.is_dir()
        assert (context / artifact["docker"]["dockerfile"]).is_file(), artifact["image"]
    for release in skaffold["deploy"]["helm"]["releases"]:
        assert (REPO / release["chartPath"]).resolve() == CHART
        for values in release["valuesFiles"]:
            assert (REPO / values).is_file(), values


def test_skaffold_builds_every_service(skaffold: dict[str, Any]) -> None:
    images = [a["image"] for a in skaffold["build"]["artifacts"]]
    assert images == [
        f"stt-{name}" for name in ("ingest", "chunker", "transcriber", "merger", "notifier", "maintenance")
    ]
    assert sorted(images) == sorted(f"stt-{name}" for name in SERVICES)
    profiles = {p["name"]: p for p in skaffold["profiles"]}
    assert "kind" in profiles
    # Patches address artifacts by index: make sure they hit the images they mean.
    for patch in profiles["no-local-model"]["patches"]:
        index = int(patch["path"].split("/")[3])
        assert images[index] == "stt-transcriber"
        assert patch["path"].endswith("/docker/buildArgs/WITH_LOCAL_MODEL")
        assert patch["value"] == "false"
    # One build argument added to each image's, not its whole map replaced (SERVICE would go).
    patched = sorted(int(p["path"].split("/")[3]) for p in profiles["local-base"]["patches"])
    assert patched == list(range(len(images)))
    for patch in profiles["local-base"]["patches"]:
        assert patch["path"].endswith("/docker/buildArgs/BASE_IMAGE")
    for artifact in skaffold["build"]["artifacts"]:
        assert artifact["docker"]["buildArgs"]["SERVICE"] == artifact["image"].removeprefix("stt-")


def test_skaffold_value_templates_are_chart_values(skaffold: dict[str, Any], render: Render) -> None:
    """Every key skaffold sets exists in the chart (the schema would refuse a misspelt one)."""
    (release,) = skaffold["deploy"]["helm"]["releases"]
    keys = release["setValueTemplates"]
    image_keys = {key.rsplit(".", 2)[0] for key in keys}
    assert image_keys >= {
        f"components.{name}" for name in ("ingest", "chunker", "transcriber", "merger", "notifier")
    }
    sets = [f"{key}={'repo/x' if key.endswith('repository') else 'abc123'}" for key in keys]
    rendered = render((CHART / "values-dev.yaml",), tuple(sets))
    images = {
        c["image"]
        for d in rendered.of_kind("Deployment")
        for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"repo/x:abc123"}
