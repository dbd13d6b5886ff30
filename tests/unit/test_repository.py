"""The repository explains itself: no file points outside it, nor cites a document it does not hold.

Checked over every file git tracks (and new files not ignored): no path into a sibling checkout or
to a development machine's work directory, no citation of a design document kept elsewhere (the
patterns are `FORBIDDEN` below); in Markdown, no link to an absolute path or out of the repository and no
`/tmp/…` path outside code blocks; elsewhere (Python aside, whose `../` strings are test data for
path traversal), no relative path that climbs out of the repository.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()

# Written in pieces so that this file does not match itself.
FORBIDDEN = {
    "a path into a sibling checkout": re.compile(r"\.\./" + "shared"),
    "an absolute path of a development machine": re.compile(r"(?<![\w.~-])/" + "work/"),
    "a citation of a design document the repository does not hold": re.compile("DESIGN" + r"\s*§"),
}
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")
TMP_PATH = re.compile(r"(?<![\w.~-])/" + r"tmp/\S")
CLIMB = re.compile(r"(?<![\w.])((?:\.\./)+)[\w.-]")


def _files() -> list[Path]:
    # `make test` runs in a clone (CI clones too): without git there is nothing to check against.
    assert shutil.which("git") is not None, "this check needs git"
    assert (REPO / ".git").exists(), "this check needs a git checkout"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return [REPO / name for name in sorted(set(listed.split("\0"))) if name and (REPO / name).is_file()]


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None


def _outside_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _problems(path: Path, text: str) -> list[str]:
    problems = [f"{what}: {m.group(0)!r}" for what, rx in FORBIDDEN.items() for m in rx.finditer(text)]
    if path.suffix == ".md":
        for target in MARKDOWN_LINK.findall(text):
            if target.startswith(("/", "file:")):
                problems.append(f"a link to an absolute path: {target!r}")
            elif not target.startswith(("http://", "https://", "#", "mailto:")):
                resolved = (path.parent / target.split("#", 1)[0]).resolve()
                if not resolved.is_relative_to(REPO):
                    problems.append(f"a link out of the repository: {target!r}")
        problems += [
            f"a /tmp path as a reference: {m.group(0)!r}"
            for m in TMP_PATH.finditer(_outside_code_blocks(text))
        ]
    if path.suffix != ".py":
        for m in CLIMB.finditer(text):
            if not (path.parent / m.group(1)).resolve().is_relative_to(REPO):
                problems.append(f"a relative path out of the repository: {m.group(0)!r}…")
    return problems


def test_no_file_points_outside_the_repository() -> None:
    found = {}
    for path in _files():
        if path == HERE:
            continue
        text = _text(path)
        if text is not None and (problems := _problems(path, text)):
            found[str(path.relative_to(REPO))] = problems
    assert not found, "files that point outside the repository:\n" + "\n".join(
        f"  {name}: {'; '.join(problems)}" for name, problems in found.items()
    )


def test_the_checks_catch_what_they_should() -> None:
    doc = REPO / "docs" / "example.md"
    assert _problems(doc, "see [it](../../elsewhere/notes.md)")
    assert _problems(doc, "see [it](/home/someone/notes.md)")
    assert _problems(doc, "written to /" + "tmp/report.md")
    assert not _problems(doc, "```sh\ncp a /" + "tmp/rootfs\n```\n")
    assert not _problems(
        doc, "see [the chart](../charts/stt-pipeline/README.md) and [x](https://example.org/a)"
    )
    assert _problems(REPO / "Makefile", "include ../" + "shared/x.mk")
    assert _problems(REPO / "README.md", "as DESIGN" + " §4 says")
    assert _problems(REPO / "k8s" / "x.yaml", "- ../../../outside")
    assert not _problems(REPO / "k8s" / "overlays" / "dev" / "k.yaml", "- ../../base")
    assert not _problems(REPO / "README.md", "STT_WORK_DIR=/var/lib/stt/work/x")
