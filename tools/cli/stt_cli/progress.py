"""Progress on stderr: a redrawn bar on a terminal, one line per change otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

BAR_WIDTH = 30


def bar(done: float, total: float, width: int = BAR_WIDTH) -> str:
    filled = min(width, int(width * done / total)) if total > 0 else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def job_line(job: Mapping[str, Any], elapsed: float) -> str:
    """`TRANSCRIBING  [#########.....] 3/5 chunks  12.0 s` (chunk counts once the audio is cut)."""
    progress = job.get("progress") or {}
    done, total = int(progress.get("chunks_done") or 0), int(progress.get("chunks_total") or 0)
    chunks = f"{done}/{total} chunks" if total else "chunks not cut yet"
    line = f"{job['status']:<12} {bar(done, total)} {chunks}  {elapsed:5.1f} s"
    if done and total and done < total and job["status"] == "TRANSCRIBING":
        # A rough estimate from the pace of chunks done so far (parallel chunks finish in bursts).
        started = job.get("_transcribing_since", elapsed)
        rate = (elapsed - started) / done if elapsed > started else 0.0
        if rate > 0:
            line += f"  ~{rate * (total - done):.0f} s left"
    return line


class Progress:
    """Writes progress lines; redraws in place when the stream is a terminal."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = self.stream.isatty()
        self._last = ""
        self._drawn = False
        self.started = time.monotonic()
        self._transcribing_since: float | None = None

    def show(self, line: str, *, key: str | None = None) -> None:
        """Show `line`; without a terminal, only when `key` (default: the line) changed."""
        if self.quiet:
            return
        key = line if key is None else key
        if self.live:
            padding = " " * max(0, len(self._last) - len(line))
            self.stream.write("\r" + line + padding)
            self._drawn = True
            self._last = line
        elif key != self._last:
            self.stream.write(line + "\n")
            self._last = key
        self.stream.flush()

    def upload(self, sent: int, total: int) -> None:
        percent = 100 * sent / total if total else 100.0
        line = f"uploading    {bar(sent, total)} {percent:3.0f}%  {_megabytes(sent)} of {_megabytes(total)}"
        # Off a terminal: a line per 25 %, not per block.
        self.show(line, key=f"upload {int(percent // 25)}")

    def job(self, job: Mapping[str, Any]) -> None:
        elapsed = time.monotonic() - self.started
        if job["status"] == "TRANSCRIBING" and self._transcribing_since is None:
            self._transcribing_since = elapsed
        view = {**job, "_transcribing_since": self._transcribing_since or elapsed}
        progress = job.get("progress") or {}
        key = f"{job['status']} {progress.get('chunks_done')}/{progress.get('chunks_total')}"
        self.show(job_line(view, elapsed), key=key)

    def end(self) -> None:
        """Finish the redrawn line so what follows starts on its own."""
        if self._drawn and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False
        self._last = ""
