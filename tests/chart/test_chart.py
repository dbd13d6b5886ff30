"""The Helm chart: lint, schema validation, and the properties operators rely on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from stt_common.messages import Topic
from tests.chart.conftest import (
    CHART,
    DEV_VALUES,
    FULL_VALUES,
    KUBE_VERSIONS,
    NAMESPACE,
    RELEASE,
    REPO,
    VALUE_SETS,
    Render,
    Rendered,
    RenderError,
    validate_manifests,
)

COMPONENTS = ("ingest", "chunker", "transcriber", "merger", "notifier")
# What each worker consumes; the runner's consumer group is `stt-<stage>` (stt_common.runner).
CONSUMES = {
    "chunker": Topic.JOBS_SUBMITTED,
    "transcriber": Topic.CHUNKS_READY,
    "merger": Topic.JOBS_TRANSCRIBED,
    "notifier": Topic.JOBS_FINISHED,
}
FULLNAME = f"{RELEASE}-stt-pipeline"
WORK_DIR = "/var/lib/stt/work"
SECRETISH = re.compile(
    r"PASSWORD|PASSWD|SECRET|TOKEN|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|DATABASE_URL|REDIS_URL"
)


def _component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def _config_of(rendered: Rendered, component: str) -> dict[str, str]:
    """The environment a component's container gets from its two ConfigMaps (later wins)."""
    common = rendered.one("ConfigMap", f"{FULLNAME}-config")["data"]
    own = rendered.one("ConfigMap", f"{FULLNAME}-{component}")["data"]
    return {**common, **own}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _render_fails(render: Render, *sets: str, values: tuple[Path, ...] = ()) -> str:
    with pytest.raises(RenderError) as caught:
        render(values, sets)
    return str(caught.value)


# --- lint and schema validation ----------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_helm_lint_strict(helm: Path, values: str) -> None:
    cmd = [str(helm), "lint", "--strict", str(CHART)]
    for path in VALUE_SETS[values]:
        cmd += ["-f", str(path)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout, result.stdout
    assert "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_render_validates_against_kubernetes_schemas(render: Render, values: str, kube_version: str) -> None:
    validate_manifests(render(VALUE_SETS[values], kube_version=kube_version).text, kube_version)


def test_kubernetes_older_than_supported_is_refused(render: Render) -> None:
    with pytest.raises(RenderError, match="kubeVersion"):
        render((), kube_version="1.28.0")


def test_misspelt_value_is_refused_by_the_schema(render: Render) -> None:
    message = _render_fails(render, "components.chunker.replica=2")
    assert "additional properties 'replica' not allowed" in message
    message = _render_fails(render, "maintenance.concurrency=Allow")
    assert "additional properties 'concurrency' not allowed" in message


def test_secret_looking_config_is_refused_by_the_schema(render: Render) -> None:
    _render_fails(render, "config.STT_S3_SECRET_ACCESS_KEY=hunter2")
    _render_fails(render, "components.transcriber.config.STT_OPENAI_API_KEY=sk-123")
    _render_fails(
        render, "components.ingest.extraEnv[0].name=STT_X", "components.ingest.extraEnv[0].value=plain"
    )


# --- workloads ----------------------------------------------------------------------------------


def test_every_component_has_a_deployment_and_service(rendered: Rendered) -> None:
    deployments = {_component(d): d for d in rendered.of_kind("Deployment")}
    assert set(deployments) == set(COMPONENTS)
    services = {_component(s): s for s in rendered.of_kind("Service") if _component(s) in COMPONENTS}
    assert set(services) == set(COMPONENTS)
    for name, deployment in deployments.items():
        assert _container(deployment)["image"].split("/")[-1].startswith(f"stt-{name}")
        port_names = {p["name"] for p in _container(deployment)["ports"]}
        assert {p["targetPort"] for p in services[name]["spec"]["ports"]} <= port_names


def test_probes_point_at_the_real_endpoints_and_port(rendered: Rendered) -> None:
    for deployment in rendered.of_kind("Deployment"):
        name = _component(deployment)
        container = _container(deployment)
        config = _config_of(rendered, name)
        # Ingest serves /healthz, /readyz and /metrics on its HTTP port; workers on the ops port.
        expected = int(config["STT_HTTP_PORT"] if name == "ingest" else config["STT_OPS_PORT"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (
            ("livenessProbe", "/healthz"),
            ("readinessProbe", "/readyz"),
            ("startupProbe", "/healthz"),
        ):
            get = container[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            assert ports[get["port"]] == expected, (name, probe)
        if name != "ingest":
            assert config["STT_OPS_HOST"] == "0.0.0.0"
        else:
            assert config["STT_HTTP_HOST"] == "0.0.0.0"


def test_pods_are_locked_down(rendered: Rendered) -> None:
    templates = [d["spec"]["template"] for d in rendered.of_kind("Deployment")]
    templates += [c["spec"]["jobTemplate"]["spec"]["template"] for c in rendered.of_kind("CronJob")]
    templates += [j["spec"]["template"] for j in rendered.of_kind("Job")]
    assert templates
    for template in templates:
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["runAsNonRoot"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context["seccompProfile"]["type"] == "RuntimeDefault"
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]["memory"]
            # A read-only root needs writable scratch space: temp audio and /tmp on emptyDirs.
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            for path in (WORK_DIR, "/tmp"):
                assert "emptyDir" in volumes[mounts[path]], path


def test_work_dir_setting_matches_the_mount(rendered: Rendered) -> None:
    assert rendered.one("ConfigMap", f"{FULLNAME}-config")["data"]["STT_WORK_DIR"] == WORK_DIR


def test_grace_period_outlasts_the_drain(rendered: Rendered) -> None:
    for deployment in rendered.of_kind("Deployment"):
        name = _component(deployment)
        drain = float(_config_of(rendered, name)["STT_DRAIN_TIMEOUT_SECONDS"])
        spec = deployment["spec"]["template"]["spec"]
        pre_stop = 0.0
        hook = _container(deployment).get("lifecycle", {}).get("preStop", {}).get("exec")
        if hook:
            pre_stop = float(re.findall(r"sleep\((\d+)\)", hook["command"][-1])[0])
        assert spec["terminationGracePeriodSeconds"] > drain + pre_stop, name
        if name == "ingest":
            assert float(_config_of(rendered, name)["STT_HTTP_GRACEFUL_SHUTDOWN_SECONDS"]) == drain


def test_short_grace_period_fails_the_render(render: Render) -> None:
    message = _render_fails(render, "components.merger.terminationGracePeriodSeconds=25")
    assert "terminationGracePeriodSeconds (25) must be greater than drainTimeoutSeconds (25)" in message


def test_topology_spread_and_disruption_budget_by_default(render: Render) -> None:
    rendered = render()
    for deployment in rendered.of_kind("Deployment"):
        keys = {c["topologyKey"] for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]}
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    assert {_component(p) for p in rendered.of_kind("PodDisruptionBudget")} == set(COMPONENTS)


def test_kafka_idempotence_is_on_by_default(rendered: Rendered) -> None:
    assert rendered.one("ConfigMap", f"{FULLNAME}-config")["data"]["STT_KAFKA_ENABLE_IDEMPOTENCE"] == "true"


def test_large_numbers_reach_the_environment_as_integers(render: Render) -> None:
    data = render((FULL_VALUES,)).one("ConfigMap", f"{FULLNAME}-ingest")["data"]
    assert data["STT_MAX_UPLOAD_BYTES"] == "1073741824"


# --- autoscaling --------------------------------------------------------------------------------


def test_keda_scales_on_each_workers_topic_and_group(render: Render) -> None:
    rendered = render((FULL_VALUES,))
    deployments = {d["metadata"]["name"]: d for d in rendered.of_kind("Deployment")}
    scaled = {_component(s): s for s in rendered.of_kind("ScaledObject")}
    assert set(scaled) == {"chunker", "transcriber", "merger"}  # as full-values.yaml asks
    config = rendered.one("ConfigMap", f"{FULLNAME}-config")["data"]
    partitions = {
        Topic.CHUNKS_READY.value: int(config["STT_CHUNKS_TOPIC_PARTITIONS"]),
    }
    for name, obj in scaled.items():
        spec = obj["spec"]
        target = spec["scaleTargetRef"]["name"]
        assert target in deployments
        assert "replicas" not in deployments[target]["spec"]
        trigger = spec["triggers"][0]
        assert trigger["type"] == "kafka"
        assert trigger["metadata"]["topic"] == CONSUMES[name].value
        assert trigger["metadata"]["consumerGroup"] == f"stt-{name}"
        assert trigger["metadata"]["bootstrapServers"] == config["STT_KAFKA_BOOTSTRAP_SERVERS"]
        assert trigger["metadata"]["sasl"] == "scram_sha512"
        assert trigger["metadata"]["tls"] == "enable"
        auth = rendered.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"username", "password"}
        most = partitions.get(CONSUMES[name].value, int(config["STT_TOPIC_PARTITIONS"]))
        assert spec["maxReplicaCount"] <= most
    hpas = {_component(h) for h in rendered.of_kind("HorizontalPodAutoscaler")}
    assert hpas == {"ingest", "notifier"}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            [
                "components.transcriber.autoscaling.mode=keda",
                "components.transcriber.autoscaling.maxReplicas=13",
            ],
            "maxReplicaCount 13 is higher than the 12 partitions of stt.chunks.ready",
        ),
        (
            ["components.chunker.autoscaling.mode=keda", "components.chunker.autoscaling.maxReplicas=4"],
            "maxReplicaCount 4 is higher than the 3 partitions of stt.jobs.submitted",
        ),
        (
            ["components.merger.replicas=5"],
            "maxReplicaCount 5 is higher than the 3 partitions of stt.jobs.transcribed",
        ),
        (["components.ingest.autoscaling.mode=keda"], "keda needs a Kafka topic"),
    ],
)
def test_more_consumers_than_partitions_fails_the_render(
    render: Render, sets: list[str], message: str
) -> None:
    assert message in _render_fails(render, *sets)


def test_more_partitions_allow_more_replicas(render: Render) -> None:
    rendered = render(
        (),
        (
            "kafka.chunksTopicPartitions=24",
            "components.transcriber.autoscaling.mode=keda",
            "components.transcriber.autoscaling.maxReplicas=24",
        ),
    )
    assert rendered.one("ScaledObject", f"{FULLNAME}-transcriber")["spec"]["maxReplicaCount"] == 24


# --- jobs ---------------------------------------------------------------------------------------


def test_maintenance_cronjob(rendered: Rendered) -> None:
    (cron,) = rendered.of_kind("CronJob")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["jobTemplate"]["spec"]["backoffLimit"] >= 0
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    container = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "stt_maintenance", "run"]
    assert container["image"].split("/")[-1].startswith("stt-maintenance")


def test_migrations_and_topics_run_as_hooks(render: Render) -> None:
    for values, phase in (((), "pre-install,pre-upgrade"), ((DEV_VALUES,), "post-install,post-upgrade")):
        jobs = {j["metadata"]["name"]: j for j in render(values).of_kind("Job")}
        migrate = jobs[f"{FULLNAME}-migrate"]
        topics = jobs[f"{FULLNAME}-topics"]
        # Against external services the schema must exist before new pods start; the dev
        # instances are part of the release, so there the hooks can only run after install.
        for job in (migrate, topics):
            assert job["metadata"]["annotations"]["helm.sh/hook"] == phase
        assert int(migrate["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            topics["metadata"]["annotations"]["helm.sh/hook-weight"]
        )
        container = migrate["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", "stt_common.db.migrate", "upgrade"]
        script = topics["spec"]["template"]["spec"]["containers"][0]["command"][-1]
        assert "ensure_topics(settings)" in script
        compile(script, "topics-job", "exec")  # the inline program is valid Python


# --- secrets and config -------------------------------------------------------------------------


def _all_env(rendered: Rendered) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    specs = [d["spec"]["template"]["spec"] for d in rendered.of_kind("Deployment")]
    specs += [j["spec"]["template"]["spec"] for j in rendered.of_kind("Job")]
    specs += [c["spec"]["jobTemplate"]["spec"]["template"]["spec"] for c in rendered.of_kind("CronJob")]
    specs += [s["spec"]["template"]["spec"] for s in rendered.of_kind("StatefulSet")]
    for spec in specs:
        for container in spec["containers"]:
            env.extend(container.get("env", []))
    return env


def test_no_plaintext_secrets(rendered: Rendered) -> None:
    secrets = rendered.of_kind("Secret")
    # Only the dev instances' credentials, generated at install time, never taken from values.
    assert [s["metadata"]["name"] for s in secrets] in ([], [f"{FULLNAME}-dev-credentials"])
    for var in _all_env(rendered):
        if SECRETISH.search(var["name"]):
            assert "value" not in var, var
            assert "secretKeyRef" in var["valueFrom"], var
    for config_map in rendered.of_kind("ConfigMap"):
        for key, value in (config_map.get("data") or {}).items():
            assert not SECRETISH.search(key), (config_map["metadata"]["name"], key)
            assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), (config_map["metadata"]["name"], key)


def test_secrets_are_references_given_least_privilege(render: Render) -> None:
    rendered = render((FULL_VALUES,))

    def secret_env(component: str) -> dict[str, str]:
        container = _container(rendered.one("Deployment", f"{FULLNAME}-{component}"))
        return {
            e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
            for e in container.get("env", [])
            if "valueFrom" in e
        }

    transcriber = secret_env("transcriber")
    assert transcriber["STT_DATABASE_URL"] == "stt-db"
    assert transcriber["STT_OPENAI_API_KEY"] == "stt-providers"
    assert transcriber["STT_KAFKA_SASL_PASSWORD"] == "stt-kafka"
    assert transcriber["STT_S3_SECRET_ACCESS_KEY"] == "stt-s3"
    assert "STT_REDIS_URL" not in transcriber
    ingest = secret_env("ingest")
    assert ingest["STT_REDIS_URL"] == "stt-redis"
    # Ingest never calls a provider, but checks which keys are set (GET /api/v1/providers, refusing jobs).
    assert ingest["STT_OPENAI_API_KEY"] == "stt-providers"
    for worker in ("chunker", "merger", "notifier"):
        assert "STT_OPENAI_API_KEY" not in secret_env(worker), worker


def test_missing_database_secret_fails_the_render(render: Render) -> None:
    assert "secrets.database.existingSecret is required" in _render_fails(
        render, "secrets.database.existingSecret="
    )
    message = _render_fails(render, "kafka.saslMechanism=PLAIN")
    assert "secrets.kafkaSasl.existingSecret is required" in message


def test_dev_instances(render: Render) -> None:
    rendered = render((DEV_VALUES,))
    assert {s["metadata"]["name"] for s in rendered.of_kind("StatefulSet")} == {
        f"{FULLNAME}-{name}" for name in ("kafka", "minio", "postgres", "redis")
    }
    config = rendered.one("ConfigMap", f"{FULLNAME}-config")["data"]
    assert config["STT_KAFKA_BOOTSTRAP_SERVERS"] == f"{FULLNAME}-kafka:9092"
    assert config["STT_S3_ENDPOINT_URL"] == f"http://{FULLNAME}-minio:9000"
    assert config["STT_TOPIC_REPLICATION_FACTOR"] == "1"
    kafka = rendered.one("StatefulSet", f"{FULLNAME}-kafka")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in kafka["env"]}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert {s["metadata"]["name"] for s in render().of_kind("StatefulSet")} == set()


# --- optional objects ---------------------------------------------------------------------------


def test_optional_objects_are_off_by_default(render: Render) -> None:
    kinds = {obj["kind"] for obj in render().objects}
    assert not kinds & {
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "Ingress",
        "ScaledObject",
        "HorizontalPodAutoscaler",
    }


def test_everything_on(render: Render) -> None:
    rendered = render((FULL_VALUES,))
    (monitor,) = rendered.of_kind("ServiceMonitor")
    ports = {p["name"] for s in rendered.of_kind("Service") for p in s["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert all(e["path"] == "/metrics" for e in monitor["spec"]["endpoints"])
    assert rendered.of_kind("PrometheusRule")
    assert {_component(n) for n in rendered.of_kind("NetworkPolicy")} == set(COMPONENTS)
    (ingress,) = rendered.of_kind("Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-ingest", "port": {"name": "http"}}
    image = _container(rendered.one("Deployment", f"{FULLNAME}-transcriber"))["image"]
    assert image.startswith("registry.example.com/stt/stt-transcriber@sha256:")
    assert _container(rendered.one("Deployment", f"{FULLNAME}-chunker"))["image"] == (
        "registry.example.com/stt/stt-chunker:1.2.3"
    )


def test_dashboards_are_configmaps_for_the_grafana_sidecar(render: Render) -> None:
    dashboards = [c for c in render().of_kind("ConfigMap") if "dashboard" in c["metadata"]["name"]]
    assert len(dashboards) == len(list((CHART / "dashboards").glob("*.json"))) >= 4
    for config_map in dashboards:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == NAMESPACE
        (body,) = config_map["data"].values()
        assert '"uid": "stt-' in body


def test_readme_values_table_is_current() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "chart" / "readme_values.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_values_files_exist_for_the_docs() -> None:
    assert DEV_VALUES.exists()
    assert FULL_VALUES.exists()
    assert (CHART / "README.md").exists()
