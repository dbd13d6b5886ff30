"""Offline checks of the Helm chart, the plain manifests and the images' recipes.

helm and kubectl come from a pinned registry package (tools/chart/fetch_helm.py, cached in
`.cache/helm/`); kubernetes-validate validates against bundled schemas. No cluster is needed.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "stt-pipeline"
DEV_VALUES = CHART / "values-dev.yaml"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
RELEASE = "stt"
NAMESPACE = "stt"

# Oldest and newest Kubernetes the chart supports (Chart.yaml kubeVersion; kubernetes-validate's newest).
KUBE_VERSIONS = ("1.29.0", "1.37.0")
# Kinds whose schemas no offline validator has (CRDs of optional operators), checked by assertions.
ALLOWED_CRDS = frozenset({"ServiceMonitor", "PrometheusRule", "ScaledObject", "TriggerAuthentication"})

# name -> (values files) of every values combination the tests render.
VALUE_SETS: dict[str, tuple[Path, ...]] = {
    "default": (),
    "dev": (DEV_VALUES,),
    "full": (FULL_VALUES,),
}


def load_tool(name: str) -> ModuleType:
    """A script of tools/chart as a module (the folder is not a package)."""
    path = REPO / "tools" / "chart" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"tools_chart_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def k8s_tools() -> dict[str, Path]:
    fetch_helm = load_tool("fetch_helm")
    try:
        return dict(fetch_helm.fetch())
    except fetch_helm.FetchError as exc:
        pytest.fail(f"helm/kubectl unavailable (needs the package registry once): {exc}")


@pytest.fixture(scope="session")
def helm(k8s_tools: dict[str, Path]) -> Path:
    return k8s_tools["helm"]


@pytest.fixture(scope="session")
def kubectl(k8s_tools: dict[str, Path]) -> Path:
    return k8s_tools["kubectl"]


@dataclass
class Rendered:
    text: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [obj for obj in self.of_kind(kind) if obj["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
        return found[0]


def parse_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


class RenderError(Exception):
    pass


Render = Callable[..., Rendered]


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    cache: dict[tuple[object, ...], Rendered] = {}

    def _render(
        values: Iterable[Path] = (), sets: Sequence[str] = (), kube_version: str = KUBE_VERSIONS[-1]
    ) -> Rendered:
        key = (tuple(values), tuple(sets), kube_version)
        if key not in cache:
            cmd = [str(helm), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
            cmd += ["--kube-version", kube_version]
            for path in key[0]:
                cmd += ["-f", str(path)]
            for item in key[1]:
                cmd += ["--set", str(item)]
            result = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RenderError(result.stderr)
            cache[key] = Rendered(result.stdout, parse_documents(result.stdout))
        return cache[key]

    return _render


@pytest.fixture(scope="session", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, render: Render) -> Rendered:
    """The chart rendered with each values combination."""
    return render(VALUE_SETS[request.param])


def kubernetes_validate_command() -> list[str]:
    local = Path(sys.executable).parent / "kubernetes-validate"
    found = str(local) if local.exists() else shutil.which("kubernetes-validate")
    if found is None:
        pytest.fail("kubernetes-validate is not installed (it is a dev dependency)")
    return [found]


def validate_manifests(text: str, kube_version: str) -> None:
    """`kubernetes-validate --strict` over a multi-document stream. Its "Couldn't find schema"
    warning (exit status 0) counts as a failure unless the kind is an allow-listed CRD."""
    result = subprocess.run(
        [*kubernetes_validate_command(), "--strict", "--quiet", "-k", kube_version, "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    problems = []
    for line in (result.stdout + result.stderr).splitlines():
        if not line.strip():
            continue
        if "Couldn't find schema for kind" in line:
            kind = line.split("Couldn't find schema for kind", 1)[1].split()[0]
            if kind in ALLOWED_CRDS:
                continue
        problems.append(line)
    assert not problems, "\n".join(problems)
    assert result.returncode == 0, result.stdout + result.stderr
